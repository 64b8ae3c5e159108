"""What dense blocks, MoD's routed blocks and the MoE's experts share: the MLP, the causal predictor, and the
loss that trains the causal decision. Its own module so that layers.py (a block holds an MoE) and experts.py
(an expert is an MLP) need not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .config import ModelConfig


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # SwiGLU's gate and up projections are separate matrices: one fused d -> 2f matrix split by chunk()
        # made the backward pass copy the halves back together (measured: ~5% slower training on CPU).
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False) if cfg.mlp == "swiglu" else None
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, routing_mode: str = "causal") -> torch.Tensor:
        """routing_mode: what a mixture of experts in its place acts on; a dense MLP takes every token."""
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


def make_predictor(cfg: Any, outputs: int) -> nn.Sequential:
    """A causal predictor d -> h -> outputs. It normalises its (detached) input first: the residual stream
    starts at the embedding scale (init_std 0.02), where an un-normalised MLP sees only its bias, learns the
    base rate and says "skip" for every token. Parameter-free, so the parameter and FLOP counts are unchanged.
    cfg: a config with the causal router's settings (modexp.variants.CausalConfig: predictor_dim)."""
    return nn.Sequential(
        nn.RMSNorm(cfg.d_model, elementwise_affine=False),
        nn.Linear(cfg.d_model, cfg.predictor_dim),
        nn.SiLU(),
        nn.Linear(cfg.predictor_dim, outputs),
    )


def predictor_logits(predictor: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A causal predictor's logits on the detached input (it never changes the LM loss), its last layer in
    fp32 under autocast (ties at the decision threshold). Shared by MoD's routed blocks and the MoE's experts."""
    *body, last = predictor
    h = x.detach()
    for layer in body:
        h = layer(h)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(h.float(), last.weight.float(), last.bias.float())


def causal_loss(
    predictor_logits: torch.Tensor | None,
    router_logits: torch.Tensor,
    topk_mask: torch.Tensor,
    router_decides: bool,
) -> torch.Tensor | None:
    """Unweighted BCE of the causal decision's logits against top-k membership: the predictor's where there is
    one, else the router's own where it decides (causal_router=aux_loss); None where nothing is trained."""
    target = topk_mask.to(router_logits.dtype)
    if predictor_logits is not None:
        return F.binary_cross_entropy_with_logits(predictor_logits, target)
    if router_decides:
        return F.binary_cross_entropy_with_logits(router_logits, target)
    return None
