"""A toy variant kind from one module (tests/test_variants.py): MoD whose router is a small MLP.

Everything modexp knows about the kind is here, as docs/extending.md's recipe says: its config (MoD's settings
plus its own `router_hidden`, as model.router_hidden), its parameter and FLOP counts (the two-layer router
replaces MoD's linear one), its block class (a RoutedBlock whose router is d -> router_hidden -> 1) and its
record (id, label, LR law). The causal decision, gate, top-k and residual are MoD's (modexp/model/routing.py).
`plugins: [toy_variant]` (tests/presets/sweep/toy.yaml) imports this module before the config is checked;
nothing else in modexp names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from modexp import flops, variants
from modexp.model.routing import RoutedBlock
from modexp.ranges import Range, whole


@dataclass
class DeepRouterConfig(variants.MoDConfig):
    routing: str = "deep"
    router_hidden: int = 16  # the router's hidden width: d -> router_hidden -> 1

    RANGES: ClassVar[dict[str, Range]] = {"router_hidden": whole(1, 2**16)}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"routing": ("deep",)}

    @property
    def learned_router(self) -> bool:
        return True

    def router_params(self) -> int:
        return flops.predictor_params(self.d_model, self.router_hidden)  # same shape as a predictor

    def block_params(self, layer: int) -> int:
        linear = self.d_model if self.is_routed(layer) else 0  # what MoD counts for its d -> 1 router
        return super().block_params(layer) - linear + (self.router_params() if self.is_routed(layer) else 0)

    def layer_matmuls(self, layer: int, matmuls: flops.Matmuls) -> None:
        super().layer_matmuls(layer, matmuls)
        if self.is_routed(layer):  # replace MoD's 2 T d router with the MLP's 2 T (d h + h)
            t, d, h = self.seq_len, self.d_model, self.router_hidden
            matmuls.by_component["router"] += 2 * t * (d * h + h) - 2 * t * d

    def make_blocks(self, rotary) -> list[nn.Module]:
        from modexp.model.layers import Block

        return [
            DeepRoutedBlock(self, i, rotary) if self.is_routed(i) else Block(self, rotary, i)
            for i in range(self.n_layers)
        ]


def _make_router(cfg: DeepRouterConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(cfg.d_model, cfg.router_hidden), nn.SiLU(), nn.Linear(cfg.router_hidden, 1)
    )


class DeepRoutedBlock(RoutedBlock):
    """MoD's routed block with a two-layer router, scored in fp32 like MoD's."""

    def __init__(self, cfg: DeepRouterConfig, layer: int, rotary) -> None:
        super().__init__(cfg, layer, rotary)
        self.router = _make_router(cfg)

    def router_scores(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.router(x.float()).squeeze(-1)  # the router's weights stay fp32 under autocast


@variants.register
class DeepRouter(variants.Variant):
    kind, routing, tag = "deeprouter", "deep", "dpr"
    config = DeepRouterConfig
    size_shift = True
    lr_family = "mod"  # a preset's MoD LR law serves it too

    def name(self, model: DeepRouterConfig) -> str:
        return f"{self.kind}_c{model.capacity:g}_e{model.route_every}_h{model.router_hidden}"

    def label(self, variant_id: str) -> str | None:
        head, sep, hidden = variant_id.rpartition("_h")
        parsed = variants.mod_words(head, self.kind) if sep and hidden.isdigit() else None
        return ", ".join([*parsed[0], f"{hidden}-wide MLP router"]) if parsed and not parsed[1] else None
