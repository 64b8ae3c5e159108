"""Mixture-of-Depths (Raposo et al. 2024) and its random-routing control: their config and records.

MoDConfig holds MoD's settings (capacity, route_every, the router weight and the causal router, docs/mod.md),
which blocks it routes, what a routed block adds to the parameter and FLOP counts (docs/flops.md), and the blocks
it builds (modexp/model/routing.py's RoutedBlock around every route_every-th block). CausalConfig is the causal
router's settings alone, which the mixture of experts (moe.py) and a plug-in's routers reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flops
from ..model.config import ModelConfig, check_fraction, check_whole
from ..ranges import Range, above, whole, within
from .base import Variant, register

if TYPE_CHECKING:
    from torch import nn

    from ..model.layers import Rotary

ROUTER_WEIGHTS = ("sigmoid", "linear")
CAUSAL_ROUTERS = ("none", "aux_loss", "predictor")

# MoD's settings; a model without MoD routing has none of them in its identity.
MOD_ONLY = (
    "capacity",
    "route_every",
    "router_weight",
    "causal_router",
    "aux_loss_weight",
    "predictor_hidden",
)
# How a causal decision is made and trained: MoD's router and the MoE's experts both use these.
CAUSAL_KEYS = ("causal_router", "aux_loss_weight", "predictor_hidden")


@dataclass
class CausalConfig(ModelConfig):
    """The causal router's settings: how a top-k choice over the sequence, which is not causal, is decided per
    token at sampling time (a predictor MLP on the detached input, or the router itself trained by BCE)."""

    causal_router: str = "predictor"  # how sampling decides per token: predictor | aux_loss | none
    aux_loss_weight: float = 0.01  # weight of the router's BCE loss (aux_loss) or the predictor's BCE loss
    predictor_hidden: int | None = None  # None: max(8, d_model // 4)

    RANGES: ClassVar[dict[str, Range]] = {
        "aux_loss_weight": within(0, 1e3),  # 0 switches the causal loss off (its gradient, for tests)
        "predictor_hidden": whole(1, 2**16, nullable=True),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"causal_router": CAUSAL_ROUTERS}

    def check_settings(self) -> None:
        super().check_settings()
        if not self.aux_loss_weight >= 0:
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight!r} is not allowed: it must be >= 0")
        if self.predictor_hidden is not None and (
            isinstance(self.predictor_hidden, bool)
            or not isinstance(self.predictor_hidden, int)
            or self.predictor_hidden < 1
        ):
            raise ValueError(f"predictor_hidden={self.predictor_hidden!r} is not allowed: give >= 1 or null")

    @property
    def predictor_dim(self) -> int:
        return self.predictor_hidden or max(8, self.d_model // 4)


@dataclass
class MoDConfig(CausalConfig):
    """MoD: every route_every-th block takes only the capacity share of the sequence its router picks."""

    routing: str = "topk"  # topk: learned expert choice; random: the paper's control (top-k over noise)
    capacity: float = 0.125  # fraction of the sequence a routed block processes
    route_every: int = 2  # every route_every-th block is routed (blocks route_every-1, 2*route_every-1, ...)
    router_weight: str = "sigmoid"  # g in x + g(r) * f(x): sigmoid, or linear (the paper's literal Eq. 1)

    RANGES: ClassVar[dict[str, Range]] = {"capacity": above(0, 1), "route_every": whole(1, 1024)}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "routing": ("topk", "random"),
        "router_weight": ROUTER_WEIGHTS,
    }

    def check_settings(self) -> None:
        super().check_settings()
        check_fraction("capacity", self.capacity)
        check_whole("route_every", self.route_every, 1)

    def check_fit(self) -> None:
        super().check_fit()
        if self.route_every > self.n_layers:
            raise ValueError(
                f"route_every={self.route_every} is not allowed with n_layers={self.n_layers}: "
                f"it would route no block (use route_every <= n_layers)"
            )

    @property
    def learned_router(self) -> bool:
        """A router to train (topk); random routing draws its scores instead."""
        return self.routing == "topk"

    @property
    def has_predictor(self) -> bool:
        return self.learned_router and self.causal_router == "predictor"

    @property
    def has_aux_loss(self) -> bool:
        return self.learned_router and self.causal_router == "aux_loss"

    def on_route_interval(self, layer: int) -> bool:
        """Block `layer` (from 0) is every route_every-th block, so block 0 is not unless route_every=1."""
        return layer % self.route_every == self.route_every - 1

    def is_routed(self, layer: int) -> bool:
        """Block `layer` is a Mixture-of-Depths block (routing.py): tokens it does not take skip it whole."""
        return self.skips_blocks and self.on_route_interval(layer)

    @property
    def routed_layers(self) -> list[int]:
        return [i for i in range(self.n_layers) if self.is_routed(i)]

    @property
    def skips_blocks(self) -> bool:
        """MoD proper: routed blocks are skipped whole by unselected tokens (integrated MoDE routes inside the
        MoE instead, moe.py)."""
        return True

    def capacity_tokens(self, seq_len: int | None = None, fraction: float | None = None) -> int:
        """k: tokens a routed block (or, with `fraction`, an expert) takes from a sequence of seq_len tokens."""
        return super().capacity_tokens(seq_len, self.capacity if fraction is None else fraction)

    def token_fraction(self, layer: int) -> float:
        return self.capacity if self.is_routed(layer) else 1.0

    # -- counts: a routed block computes k tokens, and adds its router (d -> 1) and predictor (d -> h -> 1) ----
    def block_params(self, layer: int) -> int:
        params = super().block_params(layer)
        if self.is_routed(layer):
            params += self.d_model if self.learned_router else 0  # router d -> 1, no bias
            params += flops.predictor_params(self.d_model, self.predictor_dim) if self.has_predictor else 0
        return params

    def layer_matmuls(self, layer: int, matmuls: flops.Matmuls) -> None:
        if not self.is_routed(layer):
            super().layer_matmuls(layer, matmuls)
            return
        t, d = self.seq_len, self.d_model
        self.add_block(layer, self.capacity_tokens(t), matmuls)
        if self.learned_router:
            matmuls.by_component["router"] += flops.router_flops(t, d)  # it scores every token
        if self.has_predictor:
            forward, detached = flops.predictor_flops(t, d, self.predictor_dim)
            matmuls.by_component["predictor"] += forward
            matmuls.detached += detached

    def make_blocks(self, rotary: Rotary) -> list[nn.Module]:
        from ..model.layers import Block
        from ..model.routing import RoutedBlock

        blocks: list[nn.Module] = []
        for layer in range(self.n_layers):
            block = Block(self, rotary, layer, mlp=self.make_mlp(layer))
            blocks.append(RoutedBlock(self, layer, rotary, block) if self.is_routed(layer) else block)
        return blocks


# -- run ids and labels --------------------------------------------------------------------------------------

_CAUSAL_SUFFIX = {"predictor": "", "aux_loss": "_aux", "none": "_nocausal"}
_WEIGHT_SUFFIX = {"sigmoid": "", "linear": "_lin"}
_CAUSAL_WORDS = {"": "", "_aux": "aux-loss causal router", "_nocausal": "no causal router"}
_WEIGHT_WORDS = {"": "", "_lin": "linear router weight"}


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def every_words(interval: int) -> str:
    return "every block" if interval == 1 else f"every {ordinal(interval)} block"


def mod_part(model: Any) -> str:
    return f"_c{model.capacity:g}_e{model.route_every}"


def mod_words(variant_id: str, kind: str) -> tuple[list[str], str] | None:
    """(["MoD 12.5%", "every 2nd block"], suffixes) from `<kind>_c<capacity>_e<interval><suffixes>`; None if not."""
    head, sep, rest = variant_id.partition("_c")
    if head != kind or not sep:
        return None
    capacity, sep, rest = rest.partition("_e")
    every, suffixes = rest, ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            every, suffixes = rest[:i], rest[i:]
            break
    try:
        fraction, interval = float(capacity), int(every)
    except ValueError:
        return None
    if not sep or not 0 < fraction <= 1 or interval < 1 or every != str(interval):
        return None
    return [f"MoD {100 * fraction:g}%", every_words(interval)], suffixes


@register
class MoD(Variant):
    """Learned expert-choice routing (top-k over the sequence) around every route_every-th block."""

    kind, routing, tag = "mod", "topk", "mod"
    config = MoDConfig
    size_shift = True

    def name(self, model: Any) -> str:
        suffixes = _WEIGHT_SUFFIX[model.router_weight] + _CAUSAL_SUFFIX[model.causal_router]
        return self.kind + mod_part(model) + suffixes

    def label(self, variant_id: str) -> str | None:
        parsed = mod_words(variant_id, self.kind)
        if parsed is None:
            return None
        words, suffixes = parsed
        # name() appends the router weight, then the causal router: "_lin", "_aux", "_lin_nocausal", ...
        for weight, weight_words in _WEIGHT_WORDS.items():
            for causal, causal_words in _CAUSAL_WORDS.items():
                if suffixes == weight + causal:
                    return ", ".join(words + [w for w in (weight_words, causal_words) if w])
        return None


@register
class Random(Variant):
    """The paper's control: top-k over Gaussian noise, no router to train (it decides causally by its noise)."""

    kind, routing, tag = "random", "random", "ran"
    config = MoDConfig
    compared_with = ()
    size_shift = True

    def name(self, model: Any) -> str:
        return self.kind + mod_part(model)

    def label(self, variant_id: str) -> str | None:
        parsed = mod_words(variant_id, self.kind)
        if parsed is None or parsed[1]:
            return None
        return ", ".join([*parsed[0], "random routing"])

    def causal_eval(self, model: Any) -> bool:
        return True

    def causal_router(self, model: Any) -> str:
        return "none"  # its causal decision is its noise's tail: nothing is trained
