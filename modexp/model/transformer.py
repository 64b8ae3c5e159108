"""The decoder-only transformer: embeddings, the stack of blocks its kind builds, the LM head."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .experts import ExpertRecord, MoE
from .layers import Rotary
from .routing import RoutingRecord


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None  # LM cross-entropy, None without targets
    aux_loss: torch.Tensor | None  # weighted causal-router loss (aux_loss or predictor), None where off
    routing: list[RoutingRecord] = field(default_factory=list)  # one per routed block, in depth order
    experts: list[ExpertRecord] = field(
        default_factory=list
    )  # one per block's MoE (moe=true), in depth order


class Transformer(nn.Module):
    """Embeddings, the blocks its config builds (cfg.make_blocks: its kind's dense, routed or shared blocks, in
    depth order), the final norm and the LM head.

    A block is either a plain one (`block(x, routing_mode=...)` returns the hidden state) or a routing one, with
    `routes = True`: `block(x, routing_mode, noise)` returns the hidden state and its routing record(s), and
    `noise_rows` says how many rows of the caller's random-routing noise it takes. A mixture of experts anywhere
    in the stack leaves its record on itself (`last`), collected here in depth order.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(cfg.make_blocks(self.rotary))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Recompute each block's activations in the backward pass instead of keeping them (a training setting,
        # not part of the model: the results are the same).
        self.activation_checkpointing = False
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._init_weights()
        self._moes = [m for m in self.blocks.modules() if isinstance(m, MoE)]  # depth order; not submodules

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # Depth-scaled init of the projections that write into the residual stream (GPT-2).
        for name, param in self.named_parameters():
            if name.endswith(("attn.out.weight", "down.weight")):  # the MLP's, or each expert's
                nn.init.normal_(param, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layers))

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters; non_embedding leaves out the token embedding and the LM head (once when tied)."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied matrix once
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    @property
    def n_routed(self) -> int:
        """Routing blocks in the stack (MoD's routed blocks, a plug-in's)."""
        return sum(getattr(block, "routes", False) for block in self.blocks)

    @property
    def noise_rows(self) -> int:
        """Rows of random-routing noise per sequence its blocks take (0: it needs none; see step.routing_noise)."""
        return sum(
            getattr(block, "noise_rows", 0) for block in self.blocks if getattr(block, "routes", False)
        )

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        routing_mode: str = "topk",
        routing_noise: torch.Tensor | None = None,
    ) -> ModelOutput:
        """routing_mode: "topk" (training: expert choice over the sequence) or "causal" (per-token decision).

        routing_noise (B, noise_rows, T): random routing's scores, drawn by the caller per sequence so that a
        run's routing does not depend on how its batch is split into micro-batches or processes; None: drawn here.
        """
        x = self.tok_emb(tokens)
        routing: list[RoutingRecord] = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        row = 0  # the next row of routing_noise
        for block in self.blocks:
            if not getattr(block, "routes", False):
                if recompute:
                    x = checkpoint(block, x, None, routing_mode, use_reentrant=False)
                else:
                    x = block(x, routing_mode=routing_mode)
                continue
            rows, noise = block.noise_rows, None
            if rows and routing_noise is not None:
                noise = routing_noise[:, row] if rows == 1 else routing_noise[:, row : row + rows]
            row += rows
            if recompute:
                x, made = checkpoint(block, x, routing_mode, noise, use_reentrant=False)
            else:
                x, made = block(x, routing_mode=routing_mode, noise=noise)
            routing += made if isinstance(made, list) else [made]
        experts: list[ExpertRecord] = [moe.last for moe in self._moes]
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        aux_terms = [r.aux_loss for r in [*routing, *experts] if r.aux_loss is not None]
        aux_weight = getattr(self.cfg, "aux_loss_weight", 0.0)
        aux_loss = aux_weight * torch.stack(aux_terms).mean() if aux_terms else None
        return ModelOutput(logits, loss, aux_loss, routing, experts)
