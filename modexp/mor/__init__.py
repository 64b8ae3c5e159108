"""Mixture-of-Recursions (Bae et al. 2025, arXiv 2507.10524) as a plug-in variant kind: `plugins: [modexp.mor]`.

Nothing else in modexp names this package: it is one kind registered the way docs/extending.md says, its config
here (torch-free, so planning stays light) and its modules in model.py. The method, its settings and how the
counts were checked are in docs/mor.md. In short:

- Middle-Cycle sharing: the first and the last block are the model's own; the n_layers - 2 blocks between them
  are one shared block of (n_layers - 2) / recursions layers, applied `recursions` times. n_layers is the depth a
  token at full depth passes through, so a model of the same shape as a baseline has fewer parameters.
- Expert choice per recursion, with hierarchical filtering: recursion r takes k_r tokens of each sequence, the
  top-k_r by its own router among the tokens the recursion before it took (a token that leaves is never routed
  deeper). k_r falls linearly from the whole sequence at recursion 1 to recursion_capacity of it at the last
  (default 1 / recursions: 1, 2/3, 1/3 for three). A recursion that takes every token still active needs no
  router. A routed recursion's update is gated as MoD's: x + g(r) * (F(x) - x), F its shared layers.
- Sampling decides per token, as MoD does (a predictor on the detached state, or the router trained with an aux
  BCE), at each recursion among the tokens still active; decoding keeps one KV cache per recursion holding only
  the tokens that reached it (recursion-wise caching), so a token that left early costs nothing deeper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from modexp import flops, variants
from modexp.model.config import capacity_tokens, check_whole
from modexp.ranges import Range, above, whole
from modexp.variants.mod import _CAUSAL_SUFFIX, _CAUSAL_WORDS, _WEIGHT_SUFFIX, _WEIGHT_WORDS, ROUTER_WEIGHTS

if TYPE_CHECKING:
    from torch import nn

    from modexp.model.layers import Rotary


@dataclass
class MoRConfig(variants.CausalConfig):
    routing: str = "recursion"
    recursions: int = 3  # N_r: how often the shared middle block is applied at full depth
    recursion_capacity: float | None = (
        None  # share of the sequence the last recursion takes; null: 1/recursions
    )
    router_weight: str = "sigmoid"  # g in x + g(r) * (F(x) - x): sigmoid, or linear (as MoD's)

    RANGES: ClassVar[dict[str, Range]] = {
        "recursions": whole(1, 64),
        "recursion_capacity": above(0, 1, nullable=True),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "routing": ("recursion",),
        "router_weight": ROUTER_WEIGHTS,
    }

    def check_settings(self) -> None:
        super().check_settings()
        check_whole("recursions", self.recursions, 1)

    def check_fit(self) -> None:
        super().check_fit()
        middle = self.n_layers - 2
        if middle < 1 or middle % self.recursions:
            raise ValueError(
                f"n_layers={self.n_layers} is not allowed with recursions={self.recursions}: Middle-Cycle shares "
                "the n_layers - 2 blocks between the first and the last as one block applied `recursions` "
                "times, so recursions must divide n_layers - 2"
            )

    # -- the structure -----------------------------------------------------------------------------------------
    @property
    def shared_layers(self) -> int:
        """Layers in the shared block (m)."""
        return (self.n_layers - 2) // self.recursions

    @property
    def capacities(self) -> list[float]:
        """The share of the sequence each recursion takes: linear from 1 at the first to recursion_capacity at
        the last (1, 2/3, 1/3 for three recursions by default, the paper's schedule)."""
        n = self.recursions
        last = 1.0 / n if self.recursion_capacity is None else self.recursion_capacity
        return [1.0 - (1.0 - last) * r / (n - 1) if n > 1 else 1.0 for r in range(n)]

    def tokens(self, seq_len: int | None = None) -> list[int]:
        """k_r: tokens each recursion takes from a sequence, never more than the recursion before it took."""
        t = self.seq_len if seq_len is None else seq_len
        ks, previous = [], t
        for c in self.capacities:
            previous = min(previous, capacity_tokens(t, c))
            ks.append(previous)
        return ks

    def routed(self, seq_len: int | None = None) -> list[bool]:
        """Whether recursion r chooses (takes fewer tokens than the one before it): only those have a router."""
        ks = self.tokens(seq_len)
        return [k < before for k, before in zip(ks, [seq_len or self.seq_len, *ks])]

    def depth(self, recursion: int) -> int:
        """The depth position of recursion r's first layer (block 0 is the first unique block)."""
        return 1 + recursion * self.shared_layers

    @property
    def routed_layers(self) -> list[int]:
        return [self.depth(r) for r, chooses in enumerate(self.routed()) if chooses]

    @property
    def routing_steps(self) -> list[str]:
        return [f"recursion {r + 1}" for r, chooses in enumerate(self.routed()) if chooses]

    @property
    def skips_blocks(self) -> bool:
        return True

    def token_fraction(self, layer: int) -> float:
        if 1 <= layer <= self.n_layers - 2:
            return self.tokens()[(layer - 1) // self.shared_layers] / self.seq_len
        return 1.0

    # -- counts: every shared layer once in the parameters, and per recursion on the tokens it took ----------
    @property
    def has_predictor(self) -> bool:
        return self.causal_router == "predictor"

    def router_params(self) -> int:
        """One recursion's router (d -> 1, no bias) and, with one, its predictor (d -> h -> 1)."""
        predictor = flops.predictor_params(self.d_model, self.predictor_dim) if self.has_predictor else 0
        return self.d_model + predictor

    def parameters(self) -> tuple[int, int]:
        block = flops.attention_params(self) + flops.mlp_params(self)
        routers = sum(self.routed()) * self.router_params()
        non_embedding = self.d_model + (2 + self.shared_layers) * block + routers  # + the final norm
        return non_embedding + flops.embedding_params(self), non_embedding

    def matmuls(self) -> flops.Matmuls:
        """The first and last blocks on the whole sequence; recursion r's shared layers on its k_r tokens; its
        router and predictor on the tokens still active before it (k_{r-1}); the LM head."""
        t, d = self.seq_len, self.d_model
        matmuls = flops.Matmuls()
        for _ in range(2):
            matmuls.add(flops.block_flops(self, t))
        before = t
        for k, chooses in zip(self.tokens(), self.routed()):
            for _ in range(self.shared_layers):
                matmuls.add(flops.block_flops(self, k))
            if chooses:
                matmuls.by_component["router"] += flops.router_flops(before, d)
                if self.has_predictor:
                    forward, detached = flops.predictor_flops(before, d, self.predictor_dim)
                    matmuls.by_component["predictor"] += forward
                    matmuls.detached += detached
            before = k
        matmuls.by_component["lm_head"] += flops.head_flops(self)
        return matmuls

    def make_blocks(self, rotary: Rotary) -> list[nn.Module]:
        from modexp.model.layers import Block

        from .model import RecursionStack

        return [Block(self, rotary, 0), RecursionStack(self, rotary), Block(self, rotary, self.n_layers - 1)]


_IDS = re.compile(
    r"mor_r(?P<n>\d+)(?:_c(?P<capacity>\d+(?:\.\d+)?(?:e-?\d+)?))?(?P<lin>_lin)?(?P<causal>_aux|_nocausal)?"
)


def _capacity_part(model: Any) -> str:
    return "" if model.recursion_capacity is None else f"_c{model.recursion_capacity:g}"


@variants.register
class MoR(variants.Variant):
    """Mixture-of-Recursions: Middle-Cycle sharing, expert choice per recursion with hierarchical filtering."""

    kind, routing, tag = "mor", "recursion", "mor"
    config = MoRConfig
    compared_with = ("mod",)  # beside the baseline: the other way of routing depth at equal FLOPs

    def name(self, model: Any) -> str:
        suffixes = _WEIGHT_SUFFIX[model.router_weight] + _CAUSAL_SUFFIX[model.causal_router]
        return f"{self.kind}_r{model.recursions}{_capacity_part(model)}{suffixes}"

    def label(self, variant_id: str) -> str | None:
        match = _IDS.fullmatch(variant_id)
        if match is None or match["n"] != str(int(match["n"])):
            return None
        words = [f"MoR {match['n']} recursions"]
        if match["capacity"]:
            words.append(f"the last takes {100 * float(match['capacity']):g}%")
        weight, causal = _WEIGHT_WORDS[match["lin"] or ""], _CAUSAL_WORDS[match["causal"] or ""]
        return ", ".join(words + [w for w in (weight, causal) if w])

    def active_size(self, model: Any) -> float:
        """What its FLOPs per token buy in dense parameters: the baseline of its shape, scaled by their training
        FLOPs per token (its shared layers make its own parameter count far smaller than what it computes)."""
        dense = variants.get("baseline").model_config(vars(model))
        return dense.parameters()[0] * flops.count(model).train_per_token / flops.count(dense).train_per_token

    def record(self, model: Any) -> dict[str, Any]:
        """capacity: the share of the sequence the last recursion takes; route_every: 0 (no MoD interval)."""
        return {**super().record(model), "capacity": model.capacities[-1], "route_every": 0}


__all__ = ["MoR", "MoRConfig"]
