"""The model's own small config: shape and routing, nothing about training or data."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ranges import Range, above, first_violation, whole, within

# modexp.variants.register adds a plug-in variant's own routing rule to these two.
ROUTINGS = ["none", "topk", "random", "integrated"]
SKIPPING_ROUTINGS = {"topk", "random"}  # routings whose routed blocks unselected tokens skip whole
ROUTER_WEIGHTS = ("sigmoid", "linear")
CAUSAL_ROUTERS = ("none", "aux_loss", "predictor")
ATTENTIONS = ("sdpa", "math")
MLPS = ("swiglu", "gelu")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {', '.join(allowed)}")


# Every number of ModelConfig and what it may be (ranges.py). Generous but finite: a width of 1e6 or an
# init_std of 0 (a model that learns nothing) is refused before anything is built.
RANGES: dict[str, Range] = {
    "vocab_size": whole(2, 2**24),
    "seq_len": whole(1, 2**20),
    "d_model": whole(1, 2**16),
    "n_layers": whole(1, 1024),
    "n_heads": whole(1, 2**16),
    "d_ff": whole(1, 2**20, nullable=True),
    "capacity": above(0, 1),
    "route_every": whole(1, 1024),
    "experts": whole(1, 1024),
    "expert_capacity": above(0, 1),
    "noop_experts": whole(0, 1024),
    "aux_loss_weight": within(0, 1e3),  # 0 switches the causal loss off (its gradient, for tests)
    "predictor_hidden": whole(1, 2**16, nullable=True),
    "rope_base": above(1, 1e12),  # <= 1: no (or inverted) positional frequencies
    "init_std": above(0, 1),  # 0: every weight zero, nothing is learned
}


@dataclass
class ModelConfig:
    vocab_size: int = 256
    seq_len: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # None: 4 d for GELU, 8/3 d (rounded up to a multiple of 8) for SwiGLU
    mlp: str = "swiglu"
    # Mixture-of-Depths (see docs/mod.md and modexp/model/routing.py)
    # none: dense baseline; topk: learned expert-choice; random: the paper's control; integrated: MoD inside the
    # MoE router of the routed blocks (integrated MoDE, needs moe=true; modexp/model/experts.py)
    routing: str = "none"
    capacity: float = 0.125  # fraction of the sequence a routed block processes
    route_every: int = 2  # every route_every-th block is routed (blocks route_every-1, 2*route_every-1, ...)
    router_weight: str = "sigmoid"  # g in x + g(r) * f(x): sigmoid, or linear (the paper's literal Eq. 1)
    causal_router: str = "predictor"  # how sampling decides per token: predictor | aux_loss | none
    # Mixture-of-experts MLP (modexp/model/experts.py). The values below are the library's "off" defaults; the
    # study's defaults live in conf/model/default.yaml like every other key.
    moe: bool = False  # every block's MLP is a mixture of `experts` MLPs with expert-choice routing
    experts: int = 4  # real MLP experts per block, each as wide as the dense MLP (ffn_dim)
    expert_capacity: float = (
        0.25  # fraction of a block's tokens each expert takes (experts x this = 1: dense cost)
    )
    noop_experts: int = 1  # routing=integrated: no-op experts beside the real ones in a routed block's router
    aux_loss_weight: float = 0.01  # weight of the router's BCE loss (aux_loss) or the predictor's BCE loss
    predictor_hidden: int | None = None  # None: max(8, d_model // 4)
    attention: str = "sdpa"  # sdpa, or math: explicit matmul + softmax (what FLOP counters can see)
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what is allowed."""
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
        _choice("mlp", self.mlp, MLPS)
        _choice("routing", self.routing, tuple(ROUTINGS))
        _choice("router_weight", self.router_weight, ROUTER_WEIGHTS)
        _choice("causal_router", self.causal_router, CAUSAL_ROUTERS)
        _choice("attention", self.attention, ATTENTIONS)
        if (
            isinstance(self.capacity, bool)
            or not isinstance(self.capacity, (int, float))
            or not 0.0 < self.capacity <= 1.0
        ):
            raise ValueError(f"capacity={self.capacity!r} is not allowed: it must lie in (0, 1]")
        if (
            isinstance(self.route_every, bool)
            or not isinstance(self.route_every, int)
            or self.route_every < 1
        ):
            raise ValueError(f"route_every={self.route_every!r} is not allowed: it must be an integer >= 1")
        if self.routing != "none" and self.route_every > self.n_layers:
            raise ValueError(
                f"route_every={self.route_every} is not allowed with n_layers={self.n_layers}: "
                f"it would route no block (use route_every <= n_layers)"
            )
        if not isinstance(self.moe, bool):
            raise ValueError(f"moe={self.moe!r} is not allowed: give true or false")
        for name in ("experts", "noop_experts"):
            value, low = getattr(self, name), 1 if name == "experts" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {low}")
        if (
            isinstance(self.expert_capacity, bool)
            or not isinstance(self.expert_capacity, (int, float))
            or not 0.0 < self.expert_capacity <= 1.0
        ):
            raise ValueError(
                f"expert_capacity={self.expert_capacity!r} is not allowed: it must lie in (0, 1]"
            )
        if self.routing == "integrated" and not (self.moe and self.noop_experts >= 1):
            raise ValueError(
                f"routing=integrated is not allowed with moe={self.moe} and noop_experts={self.noop_experts}: "
                "integrated MoDE routes inside the MoE router, so it needs moe=true and noop_experts >= 1"
            )
        if not self.aux_loss_weight >= 0:
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight!r} is not allowed: it must be >= 0")
        if self.predictor_hidden is not None and (
            isinstance(self.predictor_hidden, bool)
            or not isinstance(self.predictor_hidden, int)
            or self.predictor_hidden < 1
        ):
            raise ValueError(f"predictor_hidden={self.predictor_hidden!r} is not allowed: give >= 1 or null")
        problem = first_violation(self, RANGES)
        if problem:
            raise ValueError(problem)

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

    @property
    def predictor_dim(self) -> int:
        return self.predictor_hidden or max(8, self.d_model // 4)

    def on_route_interval(self, layer: int) -> bool:
        """Block `layer` (from 0) is every route_every-th block, so block 0 is not unless route_every=1."""
        return self.routing != "none" and layer % self.route_every == self.route_every - 1

    def is_routed(self, layer: int) -> bool:
        """Block `layer` is a Mixture-of-Depths block (routing.py): tokens it does not take skip it whole."""
        return self.skips_blocks and self.on_route_interval(layer)

    @property
    def routed_layers(self) -> list[int]:
        return [i for i in range(self.n_layers) if self.is_routed(i)]

    @property
    def skips_blocks(self) -> bool:
        """MoD proper: routed blocks are skipped whole by unselected tokens (topk, random). Integrated MoDE
        routes inside the MoE instead: its routed blocks run attention on every token."""
        return self.routing in SKIPPING_ROUTINGS

    @property
    def has_predictor(self) -> bool:
        return self.routing == "topk" and self.causal_router == "predictor"

    @property
    def has_aux_loss(self) -> bool:
        return self.routing == "topk" and self.causal_router == "aux_loss"

    @property
    def has_expert_predictor(self) -> bool:
        return self.moe and self.causal_router == "predictor"

    def expert_fraction(self, layer: int) -> float:
        """Fraction of the tokens entering block `layer`'s MoE that each real expert takes: expert_capacity,
        times capacity in integrated MoDE's routed blocks (MoD's capacity applied to the MoE's compute)."""
        if self.routing == "integrated" and self.on_route_interval(layer):
            return self.expert_capacity * self.capacity
        return self.expert_capacity

    def noop_experts_in(self, layer: int) -> int:
        """No-op experts in block `layer`'s MoE router: only integrated MoDE's routed blocks have them."""
        return self.noop_experts if self.routing == "integrated" and self.on_route_interval(layer) else 0

    def capacity_tokens(self, seq_len: int | None = None, fraction: float | None = None) -> int:
        """k: tokens a routed block (or, with `fraction`, an expert) takes from a sequence of seq_len tokens.
        Fixed by capacity and length, never by the data."""
        t = self.seq_len if seq_len is None else seq_len
        c = self.capacity if fraction is None else fraction
        # round() first so 0.29 * 100 = 28.999... still gives 29; at least one token, so k never hits 0.
        return max(1, min(t, math.floor(round(c * t, 6))))
