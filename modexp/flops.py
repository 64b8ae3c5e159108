"""FLOP accounting: one analytic formula for the planner, the trainer and the run records.

The formula and a worked example are in docs/flops.md. Only matmul FLOPs are counted (2 per multiply-add; bias adds,
softmax, norms, activations, rotary and the losses are not), which is exactly what
torch.utils.flop_counter.FlopCounterMode sees on the model's math attention path; tests/test_flops.py holds the
two to each other. Everything here is plain integer arithmetic on the config: the planner calls count() thousands
of times, so no torch and no model building.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _mlp_params(cfg: ModelConfig, layer: int) -> int:
    """One block's MLP: a dense SwiGLU/GELU MLP, or every expert of its MoE plus the MoE's router and predictor."""
    d, f, h = cfg.d_model, cfg.ffn_dim, cfg.predictor_dim
    mlp = d * (2 if cfg.mlp == "swiglu" else 1) * f + f * d  # up (and gate), down
    if not cfg.moe:
        return mlp
    params = cfg.experts * mlp + d * (cfg.experts + cfg.noop_experts_in(layer))  # router d -> E + N, no bias
    if cfg.has_expert_predictor:
        params += d * h + h + h * cfg.experts + cfg.experts  # Linear(d, h) and Linear(h, E), both with bias
    return params


def _params(cfg: ModelConfig) -> tuple[int, int]:
    """(all parameters, non-embedding parameters), mirroring the modules the model builds."""
    d, h, v = cfg.d_model, cfg.predictor_dim, cfg.vocab_size
    d_a = cfg.n_heads * cfg.head_dim
    attention = 2 * d + d * 3 * d_a + d_a * d  # two RMSNorm weights, qkv, out
    routed = d if cfg.routing == "topk" else 0  # router d -> 1, no bias; random routing has none
    if cfg.has_predictor:
        routed += d * h + h + h + 1  # Linear(d, h) and Linear(h, 1), both with bias
    non_embedding = d  # the final RMSNorm
    for layer in range(cfg.n_layers):
        non_embedding += attention + _mlp_params(cfg, layer) + (routed if cfg.is_routed(layer) else 0)
    embedding = v * d * (1 if cfg.tie_embeddings else 2)
    return non_embedding + embedding, non_embedding


def _block_forward(cfg: ModelConfig, layer: int, t: int) -> dict[str, int]:
    """Forward matmul FLOPs of block `layer`'s update on t tokens (t = k for a routed block).

    An MoE's experts each run on their k_e = fraction * t tokens; its router scores all t tokens for every
    expert (no-op ones included) and its predictor, if any, reads all t. Forward only: see count() for training.
    """
    d, f, h = cfg.d_model, cfg.ffn_dim, cfg.predictor_dim
    d_a = cfg.n_heads * cfg.head_dim
    m = 3 if cfg.mlp == "swiglu" else 2  # SwiGLU: up is d -> 2f, down f -> d
    flops = {
        "qkv": 2 * t * d * 3 * d_a,
        "attention": 2 * 2 * t * t * d_a,  # QK^T and AV over the full t x t square, as the math path computes
        "out": 2 * t * d_a * d,
        "mlp": 2 * t * d * f * m,
        "router": 0,
        "predictor": 0,
    }
    if cfg.moe:
        k_e = cfg.capacity_tokens(t, cfg.expert_fraction(layer))
        flops["mlp"] = cfg.experts * 2 * k_e * d * f * m
        flops["router"] = 2 * t * d * (cfg.experts + cfg.noop_experts_in(layer))
        if cfg.has_expert_predictor:
            flops["predictor"] = 2 * t * (d * h + h * cfg.experts)  # d -> h -> E, biases free
    return flops


def count(cfg: ModelConfig, convention: str = "exact") -> FlopCount:
    """Parameters and FLOPs per token of cfg at its seq_len. convention: exact (default), 6N or chinchilla."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not allowed: choose one of {', '.join(CONVENTIONS)}")
    t, d, h, v = cfg.seq_len, cfg.d_model, cfg.predictor_dim, cfg.vocab_size
    params, non_embedding = _params(cfg)

    # Per-sequence FLOPs, kept as integers until the end so sums are exact. A routed MoD block sees k tokens.
    k = cfg.capacity_tokens(t)
    fwd = dict.fromkeys(COMPONENTS, 0)
    detached = 0  # FLOPs of predictor first layers, whose input is detached (no input-gradient matmul)
    for layer in range(cfg.n_layers):
        routed = cfg.is_routed(layer)
        tokens = k if routed else t
        for name, value in _block_forward(cfg, layer, tokens).items():
            fwd[name] += value
        if cfg.has_expert_predictor:
            detached += 2 * tokens * d * h
        if routed:
            fwd["router"] += 2 * t * d if cfg.routing == "topk" else 0  # scores every token, d -> 1
            if cfg.has_predictor:
                fwd["predictor"] += 2 * t * (d * h + h)  # d -> h -> 1, biases free
                detached += 2 * t * d * h
    fwd["lm_head"] = 2 * t * d * v
    fwd["embedding"] = 2 * t * d * v if convention == "chinchilla" else 0  # a lookup: no FLOPs but here

    # Backward = 2 x forward (input grad + weight grad) for every matmul whose input needs a gradient. A
    # predictor reads x.detach(), so its first layer has a weight grad only: 2 t d h, not 4 t d h.
    train = 3 * sum(fwd.values()) - detached

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
