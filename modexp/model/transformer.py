"""The decoder-only transformer: embeddings, a stack of dense and routed blocks, the LM head."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .experts import ExpertRecord, MoE
from .layers import Block, Rotary
from .routing import RoutedBlock, RoutingRecord


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
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(
            RoutedBlock(cfg, i, self.rotary) if cfg.is_routed(i) else Block(cfg, self.rotary, i)
            for i in range(cfg.n_layers)
        )
        self.norm = nn.RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Recompute each block's activations in the backward pass instead of keeping them (a training setting,
        # not part of the model: the results are the same).
        self.activation_checkpointing = False
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._init_weights()

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
        return sum(isinstance(block, RoutedBlock) for block in self.blocks)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        routing_mode: str = "topk",
        routing_noise: torch.Tensor | None = None,
    ) -> ModelOutput:
        """routing_mode: "topk" (training: expert choice over the sequence) or "causal" (per-token decision).

        routing_noise (B, routed blocks, T): random routing's scores, drawn by the caller per sequence so that a
        run's routing does not depend on how its batch is split into micro-batches or processes; None: drawn here.
        """
        x = self.tok_emb(tokens)
        routing: list[RoutingRecord] = []
        experts: list[ExpertRecord] = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if isinstance(block, RoutedBlock):
                noise = routing_noise[:, len(routing)] if routing_noise is not None else None
                if recompute:
                    x, record = checkpoint(block, x, routing_mode, noise, use_reentrant=False)
                else:
                    x, record = block(x, routing_mode=routing_mode, noise=noise)
                routing.append(record)
            elif recompute:
                x = checkpoint(block, x, None, routing_mode, use_reentrant=False)
            else:
                x = block(x, routing_mode=routing_mode)
            moe = block.block.mlp if isinstance(block, RoutedBlock) else block.mlp
            if isinstance(moe, MoE):
                experts.append(moe.last)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        aux_terms = [r.aux_loss for r in [*routing, *experts] if r.aux_loss is not None]
        aux_loss = self.cfg.aux_loss_weight * torch.stack(aux_terms).mean() if aux_terms else None
        return ModelOutput(logits, loss, aux_loss, routing, experts)
