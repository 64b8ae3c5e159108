"""The model's own small config: the dense transformer every kind is built on, nothing about training or data.

A kind of model (modexp.variants: MoD, random routing, MoE, MoDE, or a plug-in's) subclasses ModelConfig with
its own settings, as levanter's LmConfig subclasses do, and overrides what differs: its checks, which blocks it
routes, its parameter and FLOP counts (modexp.flops asks the config), and the blocks it builds. This class is the
baseline: every block dense. Pure Python: the torch modules are imported only when `make_blocks` builds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flops
from ..ranges import Range, above, first_violation, whole

if TYPE_CHECKING:
    from torch import nn

    from .layers import Rotary

ATTENTIONS = ("sdpa", "math")
MLPS = ("swiglu", "gelu")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}")


def check_whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {low}")


def check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: it must lie in (0, 1]")


def capacity_tokens(seq_len: int, fraction: float) -> int:
    """k: the tokens a fraction of a sequence of seq_len tokens is. Fixed by the fraction and the length, never
    by the data; at least one token, so k never hits 0."""
    # round() first so 0.29 * 100 = 28.999... still gives 29.
    return max(1, min(seq_len, math.floor(round(fraction * seq_len, 6))))


@dataclass
class ModelConfig:
    vocab_size: int = 256
    seq_len: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # None: 4 d for GELU, 8/3 d (rounded up to a multiple of 8) for SwiGLU
    mlp: str = "swiglu"
    routing: str = "none"  # the kind's routing rule (modexp.variants sets it); none: a dense baseline
    attention: str = "sdpa"  # sdpa, or math: explicit matmul + softmax (what FLOP counters can see)
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    init_std: float = 0.02

    # What each number may be (ranges.py), per class: a subclass adds its own settings' ranges. Generous but
    # finite: a width of 1e6 or an init_std of 0 (a model that learns nothing) is refused before anything is built.
    RANGES: ClassVar[dict[str, Range]] = {
        "vocab_size": whole(2, 2**24),
        "seq_len": whole(1, 2**20),
        "d_model": whole(1, 2**16),
        "n_layers": whole(1, 1024),
        "n_heads": whole(1, 2**16),
        "d_ff": whole(1, 2**20, nullable=True),
        "rope_base": above(1, 1e12),  # <= 1: no (or inverted) positional frequencies
        "init_std": above(0, 1),  # 0: every weight zero, nothing is learned
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"mlp": MLPS, "attention": ATTENTIONS}

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def ranges(cls) -> dict[str, Range]:
        """Every range of this class and its bases."""
        table: dict[str, Range] = {}
        for klass in reversed(cls.__mro__):
            table.update(vars(klass).get("RANGES", {}))
        return table

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for klass in reversed(cls.__mro__):
            table.update(vars(klass).get("CHOICES", {}))
        return table

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what is allowed."""
        self.check_shape()
        self.check_settings()
        problem = first_violation(self, self.ranges())
        if problem:
            raise ValueError(problem)
        self.check_fit()

    def check_shape(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size} is not allowed: it must be at least 2")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} is not allowed: it must divide d_model={self.d_model}")
        if self.head_dim % 2:
            raise ValueError(
                f"n_heads={self.n_heads} is not allowed: rotary embeddings need an even head size, "
                f"and d_model/n_heads = {self.head_dim}"
            )
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff < 1):
            raise ValueError(f"d_ff={self.d_ff!r} is not allowed: give a positive integer or null")

    def check_settings(self) -> None:
        """The kind's own settings, each on its own (a subclass extends it, super() first). A config's `model:`
        node is checked with these before any shape is known (modexp.variants.settings_class)."""
        for name, allowed in self.choices().items():
            check_choice(name, getattr(self, name), allowed)

    def check_fit(self) -> None:
        """How the kind's settings fit the shape (MoD: route_every <= n_layers): checked per planned shape."""

    # Derived quantities, in one place so the model and the FLOP count cannot disagree.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 8 * math.ceil(8 * self.d_model / 3 / 8)

    # -- the structure, as planning, memory estimates and sampling ask for it (dense: no routing) -------------
    @property
    def routed_layers(self) -> list[int]:
        """Depth positions where a router chooses which tokens go on (one per MoD routed block, or a plug-in's)."""
        return []

    @property
    def routing_steps(self) -> list[str]:
        """A name for each of routed_layers, as `modexp sample --show-routing` shows them."""
        return [f"block {layer}" for layer in self.routed_layers]

    @property
    def skips_blocks(self) -> bool:
        """Tokens a router does not choose skip a whole block (what the routing figure and sample show)."""
        return False

    def token_fraction(self, layer: int) -> float:
        """The share of a sequence that block `layer` (from 0, in depth order as trained) computes."""
        return 1.0

    def mlp_load(self, layer: int) -> float | None:
        """A mixture of experts' MLP work against one dense MLP per token (None: a dense MLP)."""
        return None

    def capacity_tokens(self, seq_len: int | None = None, fraction: float = 1.0) -> int:
        return capacity_tokens(self.seq_len if seq_len is None else seq_len, fraction)

    # -- the counts (modexp.flops) -----------------------------------------------------------------------------
    def block_params(self, layer: int) -> int:
        """Block `layer`'s parameters: attention and its norms, the MLP, and whatever routes it."""
        return flops.attention_params(self) + flops.mlp_params(self)

    def parameters(self) -> tuple[int, int]:
        """(all parameters, non-embedding parameters), mirroring the modules the model builds."""
        non_embedding = self.d_model + sum(self.block_params(i) for i in range(self.n_layers))  # + final norm
        return non_embedding + flops.embedding_params(self), non_embedding

    def add_block(self, layer: int, t: int, matmuls: flops.Matmuls) -> None:
        """Add the forward matmul FLOPs of block `layer`'s update on t tokens (its attention and its MLP)."""
        matmuls.add(flops.block_flops(self, t))

    def layer_matmuls(self, layer: int, matmuls: flops.Matmuls) -> None:
        """Add block `layer`'s forward matmul FLOPs on one sequence (a routed block: on the tokens it takes)."""
        self.add_block(layer, self.seq_len, matmuls)

    def matmuls(self) -> flops.Matmuls:
        """The forward matmul FLOPs of one sequence: every block, then the LM head."""
        matmuls = flops.Matmuls()
        for layer in range(self.n_layers):
            self.layer_matmuls(layer, matmuls)
        matmuls.by_component["lm_head"] += flops.head_flops(self)
        return matmuls

    # -- the torch modules ---------------------------------------------------------------------------------------
    def make_mlp(self, layer: int) -> nn.Module | None:
        """Block `layer`'s MLP (None: the dense SwiGLU/GELU MLP the block makes itself)."""
        return None

    def make_blocks(self, rotary: Rotary) -> list[nn.Module]:
        """The blocks of the model in depth order (modexp.model.Transformer runs them); dense ones here."""
        from .layers import Block

        return [Block(self, rotary, layer, mlp=self.make_mlp(layer)) for layer in range(self.n_layers)]
