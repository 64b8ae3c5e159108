"""Mixture-of-Depths routing (Raposo et al. 2024), all in one place.

A routed block wraps an ordinary transformer Block. Per sequence of length T it lets a router pick k = capacity * T
tokens (expert choice, top-k over the sequence). Only those tokens pass through the block, attending causally among
themselves at their original positions; each gets x + g(r) * f(x). Every other token leaves the block bit-for-bit
unchanged. The rules, and the bugs we avoid, are in ../shared/spec/mod-method.md.

Top-k over the sequence is not causal (whether token i is picked depends on later tokens), so sampling needs a
per-token decision: either the router itself trained with a BCE "aux loss" towards top-k membership (processed
if sigmoid(r) > 0.5), or a small predictor MLP on the detached hidden state (it never changes the LM loss).
`routing_mode="causal"` runs that decision on a whole sequence; modexp.sample does it token by token with a cache.

The block's MLP may be a mixture of experts with its own expert-choice routing (staged MoDE); that routing, and
integrated MoDE's no-op experts, are in experts.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .experts import predictor_logits
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
        self.block = Block(cfg, rotary, layer)  # staged MoDE: its MLP is an MoE over the k tokens
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

    def router_scores(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """r (B, T) in fp32, also under bf16 autocast: bf16 logits tie at the top-k cut in 29-58% of sequences
        (gpu-readiness.md), and CPU and CUDA break ties differently. d -> 1 costs nothing in fp32."""
        if self.router is None:  # the paper's random-routing control: top-k over Gaussian noise
            # The caller may pass the noise so that it depends on the sequence, not on how a batch is split
            # into micro-batches or processes.
            return noise.float() if noise is not None else torch.randn(x.shape[:2], device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float()).squeeze(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor | None:
        """The predictor's logits (B, T) on the detached hidden state, its last layer in fp32; None without one."""
        if self.predictor is None:
            return None
        return predictor_logits(self.predictor, x).squeeze(-1)

    def gate(self, r: torch.Tensor) -> torch.Tensor:
        """g(r): puts the router on the gradient path. Random routing has no router, so no gate."""
        if self.router is None:
            return torch.ones_like(r)
        return torch.sigmoid(r) if self.cfg.router_weight == "sigmoid" else r

    def causal_decision(self, r: torch.Tensor, predictor_logits: torch.Tensor | None) -> torch.Tensor:
        """Per-token choice that depends only on the token's own hidden state: (B, T) bool."""
        if self.router is None:
            # r is standard normal noise: r < Phi^-1(capacity) takes each token with probability `capacity`,
            # from the same draw as top-k (no second stream of random numbers to keep in step).
            return r < NormalDist().inv_cdf(min(self.cfg.capacity, 1 - 1e-12))
        if predictor_logits is not None:
            return predictor_logits > 0
        if self.cfg.causal_router == "aux_loss":
            return r > 0  # sigmoid(r) > 0.5
        raise ValueError(
            "routing_mode='causal' needs causal_router=predictor or aux_loss (causal_router=none)"
        )

    def forward(
        self, x: torch.Tensor, routing_mode: str = "topk", noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RoutingRecord]:
        """noise (B, T): random routing's scores, when the caller draws them (see Transformer.forward)."""
        b, t, d = x.shape
        r = self.router_scores(x, noise)
        k = self.cfg.capacity_tokens(t)
        # Top-k, then sort the indices so the selected tokens keep their causal order.
        topk_idx = r.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
        topk_mask = torch.zeros(b, t, dtype=torch.bool, device=x.device).scatter_(1, topk_idx, True)
        predictor_logits = self.predict(x)

        if routing_mode == "topk":
            idx = topk_idx.unsqueeze(-1).expand(b, k, d)
            x_sel = x.gather(1, idx)
            # Positions are the ORIGINAL ones: rotary embeddings see real distances between selected tokens.
            delta = self.block.update(x_sel, positions=topk_idx, routing_mode="topk")
            weight = self.gate(r.gather(1, topk_idx)).unsqueeze(-1).to(x.dtype)
            out = x.scatter(1, idx, x_sel + weight * delta)  # all other rows are copied untouched
            indices, mask = topk_idx, topk_mask
        elif routing_mode == "causal":
            mask = self.causal_decision(r, predictor_logits)
            # A skipped token is neither query nor key. Sequences take different numbers of tokens, so move each
            # sequence's processed tokens to its front, in order (a stable sort), and run plain causal attention
            # at their original positions: a processed token then sees exactly the processed tokens before it,
            # skipped ones sit behind every processed one, and their rows are thrown away. No (B, T, T) mask,
            # so the fused attention kernels apply, and no host sync for the counts.
            order = (~mask).to(torch.int8).sort(dim=1, stable=True).indices
            idx = order.unsqueeze(-1).expand(b, t, d)
            x_front = x.gather(1, idx)
            delta = self.block.update(x_front, positions=order, routing_mode="causal")
            weight = self.gate(r.gather(1, order)).unsqueeze(-1).to(x.dtype)
            taken = mask.gather(1, order).unsqueeze(-1)
            out = x.scatter(1, idx, torch.where(taken, x_front + weight * delta, x_front))
            indices = None
        else:
            raise ValueError(f"routing_mode={routing_mode!r} is not allowed: choose topk or causal")

        aux_loss = None
        target = topk_mask.to(r.dtype)
        if predictor_logits is not None:
            aux_loss = F.binary_cross_entropy_with_logits(predictor_logits, target)
        elif self.cfg.has_aux_loss:
            aux_loss = F.binary_cross_entropy_with_logits(r, target)
        record = RoutingRecord(self.layer, indices, mask, topk_mask, r, predictor_logits, aux_loss)
        return out, record
