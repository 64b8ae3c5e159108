"""A mixture-of-experts MLP with expert-choice routing, and integrated MoDE's no-op experts.

The same routing as Mixture-of-Depths (routing.py), one level down: there a block picks its tokens, here each
MLP expert does. A block's MoE has `experts` MLPs (each as wide as the dense MLP) and one router, a linear map
d -> experts + no-op experts, giving logits r (B, T, E + N) per token.

Training (expert choice over the sequence, Zhou et al. 2022):
1. p = softmax(r) over all E + N experts; p[..., e] is token i's weight for real expert e. No-op experts take
   softmax mass and nothing else: a token that puts its weight on them is unlikely to be picked by any real
   expert, and weighs little where it is.
2. Each real expert e takes the k_e = fraction * T tokens with the largest p[..., e] (positions sorted, so
   gathers stay in order). Experts choose independently: a token may go to several experts, or to none.
3. out[i] = sum over the experts e that took token i of p[i, e] * expert_e(x[i]); tokens taken by no expert
   get exactly 0, so the block adds no MLP update for them (the residual and the attention update pass
   untouched). The weight p puts the router on the gradient path.
An expert sees only its k_e tokens (one gather), so compute is fixed by the fractions, never by the data.

Where the MoE sits (modexp.variants.MoEConfig.expert_fraction / noop_experts_in):
- moe: every block's MLP, each expert taking expert_capacity of the block's tokens.
- staged MoDE (routing=topk, moe=true): MoD picks a routed block's tokens first (routing.py); the MoE inside
  it sees only those k tokens, and each expert takes expert_capacity of them.
- integrated MoDE (routing=integrated): a routed block runs attention on every token; its MoE router has
  noop_experts no-op experts, and each real expert takes expert_capacity * capacity of the tokens, so MoD's
  capacity sets the compute; a token routed to no real expert skips the MLP.

Expert choice is not causal (whether token i is taken depends on later tokens). For sampling and the causal
validation loss each real expert decides per token from that token alone, as MoD's causal routing does:
predictor (causal_router=predictor: a small MLP d -> h -> E on the detached input, trained by BCE towards
top-k membership; it never changes the LM loss) or the router itself (aux_loss: BCE of r[..., e] towards
membership, taken if r > 0). The causal path computes every expert on every token and keeps the taken ones
(it checks quality, it does not save compute). `routing_mode` defaults to causal, so modexp.sample's decoder,
which calls Block.finish token by token, gets the causal decision without knowing about experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .parts import MLP, causal_loss, make_predictor, predictor_logits

if TYPE_CHECKING:
    from ..variants.moe import MoEConfig


@dataclass
class ExpertRecord:
    """What one block's MoE did to a batch (kept on the module as `last`, read by Transformer.forward)."""

    mask: torch.Tensor  # (B, T, E) bool: token processed by each real expert
    topk_mask: torch.Tensor  # (B, T, E) bool: expert-choice membership, the target of the causal decision
    router_logits: torch.Tensor  # (B, T, E + N) r, no-op experts last
    predictor_logits: torch.Tensor | None  # (B, T, E), or None without a predictor
    aux_loss: torch.Tensor | None  # unweighted BCE of the causal decision's logits against topk_mask


class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig, fraction: float, noop_experts: int = 0) -> None:
        super().__init__()
        self.cfg, self.fraction, self.n_noop = cfg, fraction, noop_experts
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.experts))
        self.router = nn.Linear(cfg.d_model, cfg.experts + noop_experts, bias=False)
        self.predictor = make_predictor(cfg, cfg.experts) if cfg.has_expert_predictor else None
        self.last: ExpertRecord | None = None

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """r (B, T, E + N) in fp32, also under autocast (ties at the top-k cut, as in routing.py)."""
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float())

    def predict(self, x: torch.Tensor) -> torch.Tensor | None:
        """The predictor's logits (B, T, E) on the detached input, its last layer in fp32; None without one."""
        if self.predictor is None:
            return None
        return predictor_logits(self.predictor, x)

    def causal_decision(self, r: torch.Tensor, predictor_logits: torch.Tensor | None) -> torch.Tensor:
        """Per token and real expert, from the token's own input only: (B, T, E) bool."""
        if predictor_logits is not None:
            return predictor_logits > 0
        if self.cfg.causal_router == "aux_loss":
            return r[..., : self.cfg.experts] > 0  # sigmoid(r) > 0.5
        raise ValueError(
            "routing_mode='causal' needs causal_router=predictor or aux_loss (causal_router=none)"
        )

    def forward(self, x: torch.Tensor, routing_mode: str = "causal") -> torch.Tensor:
        """x (B, T, d) -> the MLP update (B, T, d); tokens no expert takes get exactly 0."""
        b, t, d = x.shape
        n_experts = self.cfg.experts
        r = self.router_logits(x)
        weights = r.softmax(dim=-1)[..., :n_experts]  # each real expert's weight; no-op experts hold the rest
        k = self.cfg.capacity_tokens(t, self.fraction)
        # Each expert's top-k tokens over the sequence, positions ascending: (B, k, E).
        topk_idx = weights.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
        topk_mask = torch.zeros(b, t, n_experts, dtype=torch.bool, device=x.device).scatter_(
            1, topk_idx, True
        )
        predictor_logits = self.predict(x)

        out = torch.zeros_like(x)
        if routing_mode == "topk":
            for e, expert in enumerate(self.experts):
                idx = topk_idx[..., e]  # (B, k)
                gather_idx = idx.unsqueeze(-1).expand(b, k, d)
                weight = weights[..., e].gather(1, idx).unsqueeze(-1).to(x.dtype)
                # The expert sees its k tokens only; its weighted output lands on their rows.
                out = out.scatter_add(1, gather_idx, weight * expert(x.gather(1, gather_idx)))
            mask = topk_mask
        elif routing_mode == "causal":
            mask = self.causal_decision(r, predictor_logits)
            for e, expert in enumerate(self.experts):
                weight = weights[..., e : e + 1].to(x.dtype)
                out = out + torch.where(mask[..., e : e + 1], weight * expert(x), 0.0)
        else:
            raise ValueError(f"routing_mode={routing_mode!r} is not allowed: choose topk or causal")

        router_decides = self.cfg.causal_router == "aux_loss"
        aux_loss = causal_loss(predictor_logits, r[..., :n_experts], topk_mask, router_decides)
        self.last = ExpertRecord(mask, topk_mask, r, predictor_logits, aux_loss)
        return out
