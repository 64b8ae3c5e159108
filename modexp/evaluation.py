"""Scoring a run's model: the validation losses (top-k and causal routing) and the routing sample of one window."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from . import distributed, variants
from . import tokenizer as tokenizers
from .data import Corpus
from .distributed import SINGLE, World, chunks
from .errors import ModexpError
from .model import ModelConfig, Transformer
from .step import noise_seed, routing_noise
from .tokenizer import Tokenizer

log = logging.getLogger("modexp.train")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list,
    device: torch.device,
    autocast: Any,
    seed: int,
    micro_batch: int | None = None,
    world: World = SINGLE,
) -> dict[str, float]:
    """Validation loss on the fixed held-out set, token-weighted; for MoD also with causal routing.

    The run's processes share the batches (i % processes); every process runs the same number of forwards
    (FSDP gathers parameters in each), the spare ones on batch 0 with weight 0.
    """
    model.eval()
    cfg: ModelConfig = getattr(model, "cfg", None) or model.module.cfg  # type: ignore[union-attr]
    modes = ["topk"]
    # Causal routing where top-k is not causal: MoD's routers and every MoE's expert choice (experts.py).
    if variants.has_causal_mode(cfg):
        modes.append("causal")
    result = {}
    rounds = math.ceil(len(batches) / world.size)
    for mode in modes:
        # total loss, tokens, tokens processed and agreeing with top-k, tokens decided: summed on the device
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        for j in range(rounds):
            i = j * world.size + world.rank
            weight = 1.0 if i < len(batches) else 0.0
            x_all, y_all = batches[i if weight else 0]
            noise_all = routing_noise(_unwrap(model), len(x_all), device, noise_seed(seed, 1, i))
            for lo, hi in chunks(0, len(x_all), micro_batch):
                x, y = x_all[lo:hi].to(device), y_all[lo:hi].to(device)
                noise = noise_all[lo:hi] if noise_all is not None else None
                with autocast:
                    out = model(x, y, routing_mode=mode, routing_noise=noise)
                sums[0] += weight * out.loss.double() * y.numel()
                sums[1] += weight * y.numel()
                if mode == "causal":
                    for rec in out.routing:  # over the tokens each router chose among (see RoutingRecord)
                        scored = torch.ones_like(rec.mask) if rec.scored is None else rec.scored
                        sums[2] += weight * (rec.mask & scored).sum()
                        sums[3] += weight * ((rec.mask == rec.topk_mask) & scored).sum()
                        sums[4] += weight * scored.sum()
        total, count, processed, agreed, decided = distributed.all_sum(sums, world).tolist()
        result["val_loss" if mode == "topk" else "val_loss_causal"] = total / count
        if decided:
            # What causal routing really did at validation: the share of tokens the routed blocks processed
            # (top-k processes exactly `capacity`) and how often it agreed with top-k membership.
            result["val_causal_frac"] = processed / decided
            result["val_causal_acc"] = agreed / decided
    model.train()
    return result


def _unwrap(model: nn.Module) -> Transformer:
    """The Transformer inside a DDP wrapper or a torch.compile'd module."""
    while not isinstance(model, Transformer):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def run_tokenizer(cfg: Any) -> Tokenizer | None:
    """The tokenizer of the run's data, to show its tokens as text; the fallback (a warning) when it does not
    load: a corpus's meta.json is checked at the start, but its tokenizer may have changed since."""
    try:
        return tokenizers.for_data(cfg.data.name, cfg.data.path)
    except Exception as exc:  # noqa: BLE001 - the sample's text must never cost a trained run its end
        fallback = _fallback(cfg.data.vocab_size)
        log.warning(
            "routing sample %s: the corpus's tokenizer does not load (%s)",
            "decoded as bytes" if fallback else "without text",
            exc if isinstance(exc, ModexpError) else f"{type(exc).__name__}: {tokenizers.first_words(exc)}",
        )
        return fallback


def _fallback(vocab_size: int) -> Tokenizer | None:
    """Bytes where every id is a byte; otherwise none (ids only: bytes would show a subword corpus wrongly)."""
    return tokenizers.ByteTokenizer() if vocab_size <= 256 else None


def _as_text(
    tok: Tokenizer | None, tokens: list[int], vocab_size: int
) -> tuple[str, list[str] | None, str | None]:
    """(text, pieces, tokenizer spec) of the sample's tokens; a tokenizer that fails to decode is a warning."""
    for candidate in (tok, _fallback(vocab_size)):
        if candidate is None:
            break
        try:
            return candidate.decode(tokens), candidate.pieces(tokens), candidate.spec
        except Exception as exc:  # noqa: BLE001 - as in run_tokenizer
            log.warning(
                "routing sample: tokenizer %s does not decode its tokens (%s: %s); falling back",
                candidate.spec,
                type(exc).__name__,
                tokenizers.first_words(exc),
            )
    return "", None, None


def routing_sample(
    model: Transformer, corpus: Corpus, device: torch.device, tok: Tokenizer | None = None
) -> dict[str, Any] | None:
    """Which tokens each routed block took on one held-out window (the paper's Fig. 5), with each token's
    text by the run's tokenizer (tok; None for raw shards, whose tokenizer is unknown: ids only)."""
    if not model.cfg.skips_blocks:  # no block is skipped whole (integrated MoDE routes inside the MoE)
        return None
    x, _ = corpus.val_batches(1, model.cfg.seq_len, model.cfg.seq_len)[0]
    model.eval()
    with torch.no_grad():
        out = model(x.to(device))
    model.train()
    tokens = x[0].tolist()
    text, pieces, spec = _as_text(tok, tokens, model.cfg.vocab_size)
    return {
        "tokens": tokens,
        "text": text,
        "pieces": pieces,
        "tokenizer": spec,
        "layers": [r.layer for r in out.routing],
        "selected": [r.mask[0].int().tolist() for r in out.routing],
        "router_weights": [r.weights()[0].tolist() for r in out.routing],
        "capacity": getattr(model.cfg, "capacity", None),  # one capacity for all routed blocks (MoD's)
    }
