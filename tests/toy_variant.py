"""A toy variant kind from one module (tests/test_variants.py): MoD whose routed blocks take every n-th token.

The routing rule is fixed, not learned: a routed block takes the tokens at positions n-1, 2n-1, ... with
n = 1 / capacity, so it needs no router and decides causally by position alone. `plugins: [toy_variant]`
(tests/presets/sweep/toy.yaml) imports this module before the config is checked; nothing else in modexp
names it.
"""

from __future__ import annotations

import torch

from modexp import variants
from modexp.model import RoutedBlock, Transformer
from modexp.model.config import ModelConfig


class StridedBlock(RoutedBlock):
    """A routed block whose scores rank the rule's positions first, earlier before later."""

    def router_scores(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        n = max(1, round(1 / self.cfg.capacity))
        pos = torch.arange(t, device=x.device)
        on_rule = (pos % n == n - 1).float()
        return (2 * on_rule - pos / t).expand(x.shape[0], t)  # rule positions in (1, 2], the others <= 0

    def causal_decision(self, r: torch.Tensor, predictor_logits: torch.Tensor | None) -> torch.Tensor:
        return r > 1  # the rule's positions: known from the position alone


@variants.register
class Strided(variants.Variant):
    kind, routing, tag = "strided", "strided", "str"
    # No router: its weight and the causal router's settings do nothing, nor do the expert settings.
    inert = variants.MOE_ONLY + ("router_weight", "causal_router", "aux_loss_weight", "predictor_hidden")
    skips_blocks = True  # unselected tokens skip a routed block whole, as in MoD
    size_shift = True
    lr_family = "mod"  # a preset's MoD LR law serves it too

    def name(self, model: ModelConfig) -> str:
        return f"{self.kind}_c{model.capacity:g}_e{model.route_every}"

    def label(self, variant_id: str) -> str | None:
        parsed = variants.mod_words(variant_id, self.kind)
        return ", ".join([*parsed[0], "every n-th token"]) if parsed and not parsed[1] else None

    def causal_eval(self, model: ModelConfig) -> bool:
        return True

    def build(self, model: ModelConfig) -> Transformer:
        module = Transformer(model)
        for block in module.blocks:
            if isinstance(block, RoutedBlock):
                block.__class__ = StridedBlock  # same parameters (none for routing); only the rule differs
        return module
