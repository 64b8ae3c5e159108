"""FLOP accounting: one analytic count for the planner, the trainer and the run records.

Each kind of model counts itself: its config (modexp.model.config.ModelConfig, and each variant kind's subclass
in modexp.variants or a plug-in) gives its parameters and the forward matmul FLOPs of one sequence, built from
the pieces below; count() turns them into per-token forward and training FLOPs under a convention. The formula
and a worked example are in docs/flops.md. Only matmul FLOPs are counted (2 per multiply-add; bias adds, softmax,
norms, activations, rotary and the losses are not), which is exactly what
torch.utils.flop_counter.FlopCounterMode sees on the model's math attention path; tests/test_flops.py holds the
two to each other for every registered kind. Everything here is plain integer arithmetic on the config: the
planner calls count() thousands of times, so no torch and no model building.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modexp.model.config import ModelConfig

CONVENTIONS = ("exact", "6N", "chinchilla")
COMPONENTS = ("qkv", "attention", "out", "mlp", "lm_head", "router", "predictor", "embedding")


@dataclass(frozen=True)
class FlopCount:
    params: int
    non_embedding_params: int  # as Transformer.num_params(non_embedding=True): no token embedding, no LM head
    forward_per_token: float  # forward FLOPs per token of a cfg.seq_len sequence
    train_per_token: float  # training FLOPs per token: one optimiser step's FLOPs / tokens in it
    by_component: dict[str, float]  # forward FLOPs per token, keys COMPONENTS (0 where absent)
    convention: str


@dataclass
class Matmuls:
    """The forward matmul FLOPs of one sequence by component, kept as integers so sums stay exact, and
    `detached`: those of them whose input needs no gradient (a predictor's first layer reads x.detach()), so
    that the backward pass does not double them."""

    by_component: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))
    detached: int = 0

    def add(self, flops: dict[str, int]) -> None:
        for name, value in flops.items():
            self.by_component[name] += value


# -- the pieces every kind is made of ------------------------------------------------------------------------


def mlp_params(cfg: ModelConfig) -> int:
    """A dense SwiGLU (gate, up, down) or GELU (up, down) MLP, no biases."""
    d, f = cfg.d_model, cfg.ffn_dim
    return d * (2 if cfg.mlp == "swiglu" else 1) * f + f * d


def attention_params(cfg: ModelConfig) -> int:
    """A block's attention half with both norms: two RMSNorm weights, the fused qkv and the output projection."""
    d, d_a = cfg.d_model, cfg.n_heads * cfg.head_dim
    return 2 * d + d * 3 * d_a + d_a * d


def mlp_flops(cfg: ModelConfig, t: int) -> int:
    """A dense MLP on t tokens: SwiGLU's up is d -> 2f, GELU's d -> f; down f -> d."""
    return 2 * t * cfg.d_model * cfg.ffn_dim * (3 if cfg.mlp == "swiglu" else 2)


def attention_flops(cfg: ModelConfig, t: int) -> dict[str, int]:
    """A block's attention on t tokens attending among themselves: the full t x t square for QK^T and AV, as the
    math path computes it (a causal flash kernel does about half)."""
    d, d_a = cfg.d_model, cfg.n_heads * cfg.head_dim
    return {"qkv": 2 * t * d * 3 * d_a, "attention": 2 * 2 * t * t * d_a, "out": 2 * t * d_a * d}


def block_flops(cfg: ModelConfig, t: int) -> dict[str, int]:
    """A dense block's update on t tokens."""
    return {**attention_flops(cfg, t), "mlp": mlp_flops(cfg, t)}


def router_flops(t: int, d: int, outputs: int = 1) -> int:
    """A linear router d -> outputs scoring t tokens (no bias)."""
    return 2 * t * d * outputs


def predictor_params(d: int, h: int, outputs: int = 1) -> int:
    """A causal predictor d -> h -> outputs, both layers with biases."""
    return d * h + h + h * outputs + outputs


def predictor_flops(t: int, d: int, h: int, outputs: int = 1) -> tuple[int, int]:
    """(forward FLOPs, detached FLOPs) of a predictor on t tokens: it reads x.detach(), so its first layer has a
    weight gradient only (2 t d h instead of 4 t d h in the backward pass)."""
    return 2 * t * (d * h + h * outputs), 2 * t * d * h


def head_flops(cfg: ModelConfig) -> int:
    """The LM head on a whole sequence."""
    return 2 * cfg.seq_len * cfg.d_model * cfg.vocab_size


def embedding_params(cfg: ModelConfig) -> int:
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


# -- the count --------------------------------------------------------------------------------------------------


def count(cfg: ModelConfig, convention: str = "exact") -> FlopCount:
    """Parameters and FLOPs per token of cfg at its seq_len. convention: exact (default), 6N or chinchilla."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not allowed: choose one of {', '.join(CONVENTIONS)}")
    t, d, v = cfg.seq_len, cfg.d_model, cfg.vocab_size
    params, non_embedding = cfg.parameters()
    matmuls = cfg.matmuls()  # the kind's own count of one sequence's forward
    fwd = dict(matmuls.by_component)
    fwd["embedding"] = 2 * t * d * v if convention == "chinchilla" else 0  # a lookup: no FLOPs but here

    # Backward = 2 x forward (input grad + weight grad) for every matmul whose input needs a gradient.
    train = 3 * sum(fwd.values()) - matmuls.detached

    forward_per_token = sum(fwd.values()) / t
    train_per_token = train / t
    if convention == "6N":  # Kaplan's approximation; ignores attention, the LM head and routing capacity
        forward_per_token, train_per_token = 2.0 * non_embedding, 6.0 * non_embedding
    # 6N has no breakdown of its own: by_component stays the exact matmul breakdown for reference.
    by_component = {name: fwd[name] / t for name in COMPONENTS}
    return FlopCount(params, non_embedding, forward_per_token, train_per_token, by_component, convention)


def describe(cfg: ModelConfig) -> dict[str, float | int]:
    """Flat record of the exact count for run records and tables."""
    c = count(cfg)
    record: dict[str, float | int] = {
        "params": c.params,
        "non_embedding_params": c.non_embedding_params,
        "forward_flops_per_token": c.forward_per_token,
        "train_flops_per_token": c.train_per_token,
    }
    record.update({f"flops_{name}": value for name, value in c.by_component.items()})
    return record
