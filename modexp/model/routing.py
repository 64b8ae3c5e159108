"""Mixture-of-Depths routing (Raposo et al. 2024), all in one place.

A routed block wraps an ordinary transformer Block. Per sequence of length T it lets a router pick k = capacity * T
tokens (expert choice, top-k over the sequence). Only those tokens pass through the block, attending causally among
themselves at their original positions; each gets x + g(r) * f(x). Every other token leaves the block bit-for-bit
unchanged. The rules, and the bugs we avoid, are in ../shared/spec/mod-method.md.

Top-k over the sequence is not causal (whether token i is picked depends on later tokens), so sampling needs a
per-token decision: either the router itself trained with a BCE "aux loss" towards top-k membership (processed
if sigmoid(r) > 0.5), or a small predictor MLP on the detached hidden state (it never changes the LM loss).
`routing_mode="causal"` runs that decision on a whole sequence; modexp.sample does it token by token with a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import Block, Rotary


@dataclass
class RoutingRecord:
    """What one routed block did to a batch."""

    layer: int  # block index in model.blocks
    indices: torch.Tensor | None  # (B, k) positions processed, ascending; None in causal mode (k varies)
    mask: torch.Tensor  # (B, T) bool: token processed by this block
    topk_mask: torch.Tensor  # (B, T) bool: top-k membership, the target of the causal router
    router_logits: torch.Tensor  # (B, T) r (for random routing: the Gaussian noise)
    predictor_logits: torch.Tensor | None  # (B, T), or None without a predictor
    aux_loss: torch.Tensor | None  # unweighted BCE of the causal router against topk_mask


class RoutedBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rotary: Rotary) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.block = Block(cfg, rotary)
        # One router per routed block (sharing one across layers is a known bug). Random routing has none.
        self.router = nn.Linear(cfg.d_model, 1, bias=False) if cfg.routing == "topk" else None
        # The predictor normalises its (detached) input first: the residual stream starts at the embedding scale
        # (init_std 0.02), where an un-normalised MLP sees only its bias, learns the base rate and says "skip"
        # for every token. Parameter-free, so the parameter and FLOP counts are unchanged.
        self.predictor = (
            nn.Sequential(
                nn.RMSNorm(cfg.d_model, elementwise_affine=False),
                nn.Linear(cfg.d_model, cfg.predictor_dim),
                nn.SiLU(),
                nn.Linear(cfg.predictor_dim, 1),
            )
            if cfg.has_predictor
            else None
        )

    def router_scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.router is None:  # the paper's random-routing control: top-k over Gaussian noise
            return torch.randn(x.shape[:2], device=x.device, dtype=x.dtype)
        return self.router(x).squeeze(-1)

    def gate(self, r: torch.Tensor) -> torch.Tensor:
        """g(r): puts the router on the gradient path. Random routing has no router, so no gate."""
        if self.router is None:
            return torch.ones_like(r)
        return torch.sigmoid(r) if self.cfg.router_weight == "sigmoid" else r

    def causal_decision(self, r: torch.Tensor, predictor_logits: torch.Tensor | None) -> torch.Tensor:
        """Per-token choice that depends only on the token's own hidden state: (B, T) bool."""
        if self.router is None:
            return torch.rand_like(r, dtype=torch.float32) < self.cfg.capacity
        if predictor_logits is not None:
            return predictor_logits > 0
        if self.cfg.causal_router == "aux_loss":
            return r > 0  # sigmoid(r) > 0.5
        raise ValueError(
            "routing_mode='causal' needs causal_router=predictor or aux_loss (causal_router=none)"
        )

    def forward(self, x: torch.Tensor, routing_mode: str = "topk") -> tuple[torch.Tensor, RoutingRecord]:
        b, t, d = x.shape
        r = self.router_scores(x)
        k = self.cfg.capacity_tokens(t)
        # Top-k, then sort the indices so the selected tokens keep their causal order.
        topk_idx = r.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
        topk_mask = torch.zeros(b, t, dtype=torch.bool, device=x.device).scatter_(1, topk_idx, True)
        predictor_logits = self.predictor(x.detach()).squeeze(-1) if self.predictor is not None else None

        if routing_mode == "topk":
            idx = topk_idx.unsqueeze(-1).expand(b, k, d)
            x_sel = x.gather(1, idx)
            # Positions are the ORIGINAL ones: rotary embeddings see real distances between selected tokens.
            delta = self.block.update(x_sel, positions=topk_idx)
            weight = self.gate(r.gather(1, topk_idx)).unsqueeze(-1).to(x.dtype)
            out = x.scatter(1, idx, x_sel + weight * delta)  # all other rows are copied untouched
            indices, mask = topk_idx, topk_mask
        elif routing_mode == "causal":
            mask = self.causal_decision(r, predictor_logits)
            # A skipped token is neither query nor key here: queries see only processed keys (each row keeps
            # its own diagonal so no softmax row is empty; rows of skipped tokens are thrown away below).
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            keep = causal & (mask[:, None, :] | torch.eye(t, dtype=torch.bool, device=x.device))
            delta = self.block.update(x, mask=keep.unsqueeze(1))
            weight = self.gate(r).unsqueeze(-1).to(x.dtype)
            out = torch.where(mask.unsqueeze(-1), x + weight * delta, x)
            indices = None
        else:
            raise ValueError(f"routing_mode={routing_mode!r} is not allowed: choose topk or causal")

        aux_loss = None
        target = topk_mask.to(r.dtype)
        if predictor_logits is not None:
            aux_loss = F.binary_cross_entropy_with_logits(predictor_logits.float(), target.float())
        elif self.cfg.has_aux_loss:
            aux_loss = F.binary_cross_entropy_with_logits(r.float(), target.float())
        record = RoutingRecord(self.layer, indices, mask, topk_mask, r, predictor_logits, aux_loss)
        return out, record
