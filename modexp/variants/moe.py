"""Mixture of experts and the paper's two MoDE forms (Raposo et al. 2024, section 3.6): configs and records.

MoEConfig makes every block's MLP a mixture of `experts` MLPs with expert-choice routing (modexp/model/
experts.py); staged MoDE puts MoD's routed blocks around such blocks; integrated MoDE routes inside the MoE
router of the routed blocks, with no-op experts. See docs/mode.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .. import flops
from ..model.config import check_fraction, check_whole
from ..ranges import Range, above, whole
from .base import Variant, get, register
from .mod import (
    _CAUSAL_SUFFIX,
    _CAUSAL_WORDS,
    _WEIGHT_SUFFIX,
    _WEIGHT_WORDS,
    MOD_ONLY,
    CausalConfig,
    MoDConfig,
    every_words,
    mod_part,
)

if TYPE_CHECKING:
    from torch import nn

# The mixture-of-experts settings; a run without moe has none of them in its identity (so adding them kept
# every earlier run's id). noop_experts matters for integrated MoDE only.
MOE_ONLY = ("moe", "experts", "expert_capacity", "noop_experts")


@dataclass
class MoEConfig(CausalConfig):
    """Every block's MLP is a mixture of `experts` MLPs, each taking expert_capacity of the block's tokens."""

    moe: bool = True
    experts: int = 4  # real MLP experts per block, each as wide as the dense MLP (ffn_dim)
    expert_capacity: float = (
        0.25  # fraction of a block's tokens each expert takes (experts x this = 1: dense cost)
    )

    RANGES: ClassVar[dict[str, Range]] = {"experts": whole(1, 1024), "expert_capacity": above(0, 1)}

    def check_settings(self) -> None:
        super().check_settings()
        if not isinstance(self.moe, bool):
            raise ValueError(f"moe={self.moe!r} is not allowed: give true or false")
        check_whole("experts", self.experts, 1)
        check_fraction("expert_capacity", self.expert_capacity)

    @property
    def has_expert_predictor(self) -> bool:
        return self.causal_router == "predictor"

    def expert_fraction(self, layer: int) -> float:
        """Fraction of the tokens entering block `layer`'s MoE that each real expert takes."""
        return self.expert_capacity

    def noop_experts_in(self, layer: int) -> int:
        """No-op experts in block `layer`'s MoE router: only integrated MoDE's routed blocks have them."""
        return 0

    def mlp_load(self, layer: int) -> float | None:
        return self.experts * self.expert_fraction(layer)

    def block_params(self, layer: int) -> int:
        """Every expert, the MoE's router d -> E + N (no bias) and its predictor d -> h -> E."""
        d, e = self.d_model, self.experts
        params = (
            flops.attention_params(self) + e * flops.mlp_params(self) + d * (e + self.noop_experts_in(layer))
        )
        if self.has_expert_predictor:
            params += flops.predictor_params(d, self.predictor_dim, e)
        return params

    def add_block(self, layer: int, t: int, matmuls: flops.Matmuls) -> None:
        """Its experts each run on their k_e = fraction * t tokens; its router scores all t tokens for every
        expert (no-op ones included) and its predictor, if any, reads all t."""
        d, e = self.d_model, self.experts
        k_e = self.capacity_tokens(t, self.expert_fraction(layer))
        matmuls.add(
            {
                **flops.attention_flops(self, t),
                "mlp": e * flops.mlp_flops(self, k_e),
                "router": flops.router_flops(t, d, e + self.noop_experts_in(layer)),
            }
        )
        if self.has_expert_predictor:
            forward, detached = flops.predictor_flops(t, d, self.predictor_dim, e)
            matmuls.by_component["predictor"] += forward
            matmuls.detached += detached

    def make_mlp(self, layer: int) -> nn.Module:
        from ..model.experts import MoE

        return MoE(self, self.expert_fraction(layer), self.noop_experts_in(layer))


@dataclass
class StagedMoDEConfig(MoDConfig, MoEConfig):
    """MoD's routed blocks around blocks whose MLP is an MoE: the MoE sees the k tokens a routed block took."""

    # MoDConfig's methods come first and call on to MoEConfig's (cooperative super()): a routed block's count
    # is the MoE block's on the k tokens it took, plus MoD's router and predictor.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"routing": ("topk",)}


@dataclass
class IntegratedMoDEConfig(StagedMoDEConfig):
    """MoD inside the MoE router of the routed blocks: no-op experts beside the real ones, and each real expert
    takes expert_capacity x capacity of the tokens there; attention runs on every token."""

    routing: str = "integrated"
    noop_experts: int = 1  # no-op experts beside the real ones in a routed block's router

    RANGES: ClassVar[dict[str, Range]] = {"noop_experts": whole(0, 1024)}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"routing": ("integrated",)}

    def check_settings(self) -> None:
        super().check_settings()
        check_whole("noop_experts", self.noop_experts, 0)
        if self.noop_experts < 1:
            raise ValueError(
                f"routing=integrated is not allowed with moe={self.moe} and noop_experts={self.noop_experts}: "
                "integrated MoDE routes inside the MoE router, so it needs moe=true and noop_experts >= 1"
            )

    @property
    def skips_blocks(self) -> bool:
        return False  # its routed blocks run attention on every token

    @property
    def learned_router(self) -> bool:
        return False  # it routes inside the MoE's router

    def expert_fraction(self, layer: int) -> float:
        """MoD's capacity applied to the MoE's compute in the routed blocks."""
        if self.on_route_interval(layer):
            return self.expert_capacity * self.capacity
        return self.expert_capacity

    def noop_experts_in(self, layer: int) -> int:
        return self.noop_experts if self.on_route_interval(layer) else 0


# -- records -------------------------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
_EXPERT_IDS = re.compile(
    rf"(?P<kind>moe|mode_staged|mode_integrated)(?:_c{_NUMBER}_e(\d+))?_x(\d+)_k{_NUMBER}(?:_n(\d+))?"
    r"(?P<lin>_lin)?(?P<causal>_aux|_nocausal)?"
)


def _experts_part(model: Any) -> str:
    return f"_x{model.experts}_k{model.expert_capacity:g}"


def _expert_words(variant_id: str, kind: str) -> tuple[re.Match, str] | None:
    """The parsed MoE/MoDE id and its "MoE 4 experts x 25%" words; None unless it is one of kind's ids."""
    match = _EXPERT_IDS.fullmatch(variant_id)
    if match is None or match["kind"] != kind:
        return None
    capacity, noop = match.group(2), match.group(6)
    if (capacity is not None) != (kind != "moe") or (noop is not None) != (kind == "mode_integrated"):
        return None
    if match["lin"] and kind != "mode_staged":
        return None
    return match, f"MoE {match.group(4)} experts x {100 * float(match.group(5)):g}%"


def _with_suffixes(words: list[str], match: re.Match) -> str:
    lin, causal = _WEIGHT_WORDS[match["lin"] or ""], _CAUSAL_WORDS[match["causal"] or ""]
    return ", ".join(words + [w for w in (lin, causal) if w])


@register
class MoE(Variant):
    """A mixture of experts in every block, no MoD (an MoE still decides causally with the causal keys)."""

    kind, routing, moe, tag = "moe", "none", True, "moe"
    config = MoEConfig

    def name(self, model: Any) -> str:
        return self.kind + _experts_part(model) + _CAUSAL_SUFFIX[model.causal_router]

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        return _with_suffixes([parsed[1]], parsed[0]) if parsed else None

    def active_size(self, model: Any) -> float:
        """What its FLOPs per token buy in dense parameters: total parameters count every expert, but a token
        pays for expert_capacity x experts of them, so a ladder centred on total parameters would sit far too
        small. The same model with a dense MLP, times the ratio of their training FLOPs per token: with experts
        x expert_capacity = 1 about the dense model's size (a compute-matched MoE); integrated MoDE's saved MLP
        FLOPs make it larger, as MoD's routed FLOPs do (so it takes no sweep.mod_size_shift on top)."""
        mod = isinstance(model, MoDConfig) and model.skips_blocks  # staged MoDE: the same MoD, dense MLPs
        dense = get("mod" if mod else "baseline").model_config(vars(model))
        dense_count, moe_count = flops.count(dense), flops.count(model)
        return dense_count.params * moe_count.train_per_token / dense_count.train_per_token


@register
class MoDEStaged(MoE):
    """MoD around blocks whose MLP is an MoE (the paper's staged MoDE)."""

    kind, routing, moe, tag = "mode_staged", "topk", True, "mds"
    config = StagedMoDEConfig
    compared_with = ("random", "moe")
    size_shift = True

    def name(self, model: Any) -> str:
        suffixes = _WEIGHT_SUFFIX[model.router_weight] + _CAUSAL_SUFFIX[model.causal_router]
        return self.kind + mod_part(model) + _experts_part(model) + suffixes

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        if parsed is None:
            return None
        match, moe = parsed
        mod = f"staged MoDE: MoD {100 * float(match.group(2)):g}% {every_words(int(match.group(3)))}"
        return _with_suffixes([mod, moe], match)


@register
class MoDEIntegrated(MoE):
    """MoD as no-op experts in the MoE router of the routed blocks (the paper's integrated MoDE)."""

    kind, routing, moe, tag = "mode_integrated", "integrated", True, "mdi"
    config = IntegratedMoDEConfig
    compared_with = ("random", "moe")

    def name(self, model: Any) -> str:
        mod, experts = mod_part(model), _experts_part(model)
        return f"{self.kind}{mod}{experts}_n{model.noop_experts}" + _CAUSAL_SUFFIX[model.causal_router]

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        if parsed is None:
            return None
        match, moe = parsed
        noop = match.group(6)
        noops = f"{noop} no-op expert{'s' if noop != '1' else ''}"
        where = every_words(int(match.group(3)))
        return _with_suffixes(
            [f"integrated MoDE: {moe}", f"{100 * float(match.group(2)):g}% of it {where} with {noops}"], match
        )


__all__ = ["MOD_ONLY", "MOE_ONLY", "IntegratedMoDEConfig", "MoEConfig", "StagedMoDEConfig"]
