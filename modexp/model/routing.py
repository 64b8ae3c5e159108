"""Mixture-of-Depths routing (Raposo et al. 2024), all in one place.

A routed block wraps an ordinary transformer Block. Per sequence of length T it lets a router pick k = capacity * T
tokens (expert choice, top-k over the sequence). Only those tokens pass through the block, attending causally among
themselves at their original positions; each gets x + g(r) * f(x). Every other token leaves the block bit-for-bit
unchanged. The rules, and the bugs we avoid, are in docs/mod.md.

Top-k over the sequence is not causal (whether token i is picked depends on later tokens), so sampling needs a
per-token decision: either the router itself trained with a BCE "aux loss" towards top-k membership (processed
if sigmoid(r) > 0.5), or a small predictor MLP on the detached hidden state (it never changes the LM loss).
`routing_mode="causal"` runs that decision on a whole sequence; `RoutedBlock.prefill` and `decode` make it token by
token with a KV cache (RoutedCache), for modexp.sample's decoder.

The block's MLP may be a mixture of experts with its own expert-choice routing (staged MoDE); that routing, and
integrated MoDE's no-op experts, are in experts.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Block, KVCache, Rotary
from .parts import causal_loss, make_predictor, predictor_logits

if TYPE_CHECKING:
    from ..variants.mod import MoDConfig


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
    router_weight: str = "sigmoid"  # how the gate g(r) reads router_logits: sigmoid | linear
    # (B, T) bool: the tokens the router scored, where it chose among fewer than all (a router deeper in a
    # hierarchy chooses among the tokens still active); None: every token. Statistics of its choice use these.
    scored: torch.Tensor | None = None

    def weights(self) -> torch.Tensor:
        """g(r), the router's weight on each token's update (for statistics and figures)."""
        r = self.router_logits.detach().float()
        return torch.sigmoid(r) if self.router_weight == "sigmoid" else r


class RoutedCache(KVCache):
    """A routed block's cache: per sequence only the tokens the block took (`lens[i]` of them, packed at the front
    in causal order; slots past `lens[i]` hold nothing that is ever attended to). `taken` (B, max_len) records
    which positions it processed; `bound` is a host-side bound on every sequence's length (the prompt's longest,
    plus one per step), so the masked path attends over that many slots without asking the device."""

    def __init__(self, *args, **kwargs) -> None:  # KVCache's arguments
        super().__init__(*args, **kwargs)
        batch_size, _, max_len, _ = self.keys.shape
        self.lens = torch.zeros(batch_size, dtype=torch.long, device=self.slots.device)
        self.taken = torch.zeros(batch_size, max_len, dtype=torch.bool, device=self.slots.device)
        self.bound = 0
        self.rows = torch.arange(batch_size, device=self.slots.device)

    def masks(self, length: int) -> list[torch.Tensor]:
        """(B, length) bool: which of the first `length` positions the block processed."""
        return [self.taken[:, :length]]


class RoutedBlock(nn.Module):
    """MoD's routed block around `block` (default: a dense Block; staged MoDE's has an MoE MLP over the k tokens).

    Transformer.forward calls it as a routing block (`routes`): it returns its record beside the hidden state,
    and takes `noise_rows` rows of the caller's random-routing noise (one for random routing, none otherwise).
    """

    routes: ClassVar[bool] = True

    def __init__(self, cfg: MoDConfig, layer: int, rotary: Rotary, block: Block | None = None) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.block = block if block is not None else Block(cfg, rotary, layer)
        # One router per routed block (sharing one across layers is a known bug). Random routing has none.
        self.router = nn.Linear(cfg.d_model, 1, bias=False) if cfg.learned_router else None
        self.predictor = make_predictor(cfg, 1) if cfg.has_predictor else None

    @property
    def noise_rows(self) -> int:
        """Rows of random-routing noise per sequence it takes from the caller (Transformer.forward)."""
        return 1 if self.router is None else 0

    def router_scores(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """r (B, T) in fp32, also under bf16 autocast: bf16 logits tie at the top-k cut in 29-58% of sequences
        (measured on an H200), and CPU and CUDA break ties differently. d -> 1 costs nothing in fp32."""
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
            # r is standard normal noise: r > Phi^-1(1 - capacity) takes each token with probability
            # `capacity`, from the same draw as top-k and from the same (upper) tail, so that causal_acc
            # measures agreement with top-k rather than with its complement.
            return r > NormalDist().inv_cdf(max(1 - self.cfg.capacity, 1e-12))
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

        aux_loss = causal_loss(predictor_logits, r, topk_mask, self.cfg.has_aux_loss)
        record = RoutingRecord(
            self.layer, indices, mask, topk_mask, r, predictor_logits, aux_loss, self.cfg.router_weight
        )
        return out, record

    # -- decoding with a KV cache (modexp.sample): causal routing, one token at a time --------------------------
    # A routed block computes only the tokens it takes and caches only those: each sequence's cache holds just the
    # tokens the block processed, exactly as in `forward(routing_mode="causal")`, where a skipped token is no key.
    # Sequences take different numbers of tokens, so the cache keeps a length per sequence and attention masks
    # the unused slots. That skipped work is where MoD's sampling speed-up comes from.

    def new_cache(
        self, batch_size: int, max_len: int, dtype: torch.dtype, slots: torch.Tensor
    ) -> RoutedCache:
        attn = self.block.attn
        return RoutedCache(batch_size, attn.n_heads, attn.head_dim, max_len, dtype, slots)

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router scores and the causal per-token decision, both (B, t), as `forward`'s causal mode makes them."""
        r = self.router_scores(x)
        return r, self.causal_decision(r, self.predict(x))

    def prefill(self, x: torch.Tensor, cache: RoutedCache) -> torch.Tensor:
        """The prompt (B, T0, d) into an empty cache: each sequence's taken tokens, packed, attend causally."""
        d = x.shape[2]
        r, take = self.decide(x)
        cache.taken[:, : x.shape[1]] = take
        counts = take.sum(dim=1)
        cache.lens.copy_(counts)
        # One sync for the prompt: how many sequences take a prompt token, and the most any of them takes.
        n, c = torch.stack([(counts > 0).sum(), counts.max()]).tolist()
        cache.bound = c
        if n == 0:
            return x
        rows = _true_rows(counts > 0, n)  # sequences that take at least one prompt token
        take_rows = take.index_select(0, rows)
        # Each sequence's taken positions first, ascending (stable sort of "skipped"), padded to c with skipped
        # positions; `valid` marks the real ones, a prefix of each row.
        idx = (~take_rows).to(torch.uint8).argsort(dim=1, stable=True)[:, :c]  # (n, c)
        valid = take_rows.gather(1, idx)
        gather_idx = idx.unsqueeze(-1).expand(-1, -1, d)
        x_rows = x.index_select(0, rows)
        xs = x_rows.gather(1, gather_idx)  # (n, c, d)
        inner = self.block
        cos, sin = inner.rotary(idx)  # original positions
        q, k, v = inner.attn.project(inner.attn_norm(xs), cos, sin)
        dtype = cache.keys.dtype  # under autocast k and v come in bf16; index_put needs the cache's dtype
        cache.keys[rows, :, :c] = k.to(dtype)  # padding slots lie past lens and are never attended to
        cache.values[rows, :, :c] = v.to(dtype)
        # Taken tokens attend causally among themselves; a padding query keeps its own diagonal so no softmax
        # row is empty (its output is dropped below).
        eye = torch.eye(c, dtype=torch.bool, device=x.device)
        mask = (eye.logical_not().tril() & valid[:, None, :]) | eye
        attn = inner.attn.merge(inner.attn.attend(q, k, v, mask.unsqueeze(1)))
        delta = inner.finish(xs, attn)
        weight = self.gate(r.index_select(0, rows).gather(1, idx)).unsqueeze(-1).to(x.dtype)
        new = torch.where(valid.unsqueeze(-1), xs + weight * delta, xs)  # padding rows written back unchanged
        return x.index_copy(0, rows, x_rows.scatter(1, gather_idx, new.to(x.dtype)))

    def decode(
        self, x: torch.Tensor, cache: RoutedCache, position: int, masked: bool = False
    ) -> torch.Tensor:
        """One new token per sequence (B, 1, d) at `position`, two ways with the same result up to rounding:

        - masked (no host-device sync): every sequence computes the block and `torch.where` keeps the update
          only where the block took the token; the skipped rows' FLOPs are spent and thrown away.
        - select: only the sequences that take the token compute (one sync: how many there are), and a token
          that no sequence takes skips the block. That is where MoD's decoding FLOPs are saved.
        """
        if masked:
            return self._decode_masked(x, cache, position)
        return self._decode_select(x, cache, position)

    def _decode_select(self, x: torch.Tensor, cache: RoutedCache, position: int) -> torch.Tensor:
        """The block's matmuls run on the taking rows of the batch only, at the cost of one host-device sync (the
        number of taking rows, and their longest cache)."""
        r, take = self.decide(x)
        take = take[:, 0]
        cache.taken[:, position] = take
        cache.bound += 1
        held_all = cache.lens + take.long()  # cache lengths once this token is written
        n, width = torch.stack([take.sum(), torch.where(take, held_all, 0).max()]).tolist()
        if n == 0:
            return x
        rows = _true_rows(take, n)
        inner = self.block
        xs = x.index_select(0, rows)  # (n, 1, d)
        cos, sin = inner.rotary(cache.slots[position : position + 1])
        q, k, v = inner.attn.project(inner.attn_norm(xs), cos, sin)  # (n, H, 1, hd)
        slot = cache.lens.index_select(0, rows)  # each taking sequence's next free slot
        dtype = cache.keys.dtype
        cache.keys[rows, :, slot] = k[:, :, 0].to(dtype)
        cache.values[rows, :, slot] = v[:, :, 0].to(dtype)
        held = slot + 1
        cache.lens.copy_(held_all)
        # Attend over the longest selected cache only, not all max_len slots; each sequence its own tokens only.
        keys = cache.keys[:, :, :width].index_select(0, rows).to(q.dtype)
        values = cache.values[:, :, :width].index_select(0, rows).to(q.dtype)
        mask = (cache.slots[:width] < held[:, None]).view(n, 1, 1, width)
        attn = inner.attn.merge(inner.attn.attend(q, keys, values, mask))
        delta = inner.finish(xs, attn)
        weight = self.gate(r.index_select(0, rows)).unsqueeze(-1).to(x.dtype)  # (n, 1, 1)
        return x.index_copy(0, rows, (xs + weight * delta).to(x.dtype))

    def _decode_masked(self, x: torch.Tensor, cache: RoutedCache, position: int) -> torch.Tensor:
        """Every sequence computes the block; the update is kept only where the block takes the token. A sequence
        that skips it still writes its k/v into its next free slot (`lens`), which stays past its length (so it
        is never attended to) until the sequence next takes a token and overwrites it."""
        r, take = self.decide(x)
        take = take[:, 0]
        cache.taken[:, position] = take
        cache.bound += 1
        width = cache.bound  # >= every lens + 1, known on the host
        inner = self.block
        cos, sin = inner.rotary(cache.slots[position : position + 1])
        q, k, v = inner.attn.project(inner.attn_norm(x), cos, sin)  # (B, H, 1, hd)
        lens = cache.lens
        dtype = cache.keys.dtype
        cache.keys[cache.rows, :, lens] = k[:, :, 0].to(dtype)
        cache.values[cache.rows, :, lens] = v[:, :, 0].to(dtype)
        # Slots 0..lens: the sequence's own taken tokens and this one (a skipping sequence's row is dropped
        # below; it attends to its own key so that no softmax row is empty).
        mask = (cache.slots[:width] <= lens[:, None]).view(-1, 1, 1, width)
        keys = cache.keys[:, :, :width].to(q.dtype)
        values = cache.values[:, :, :width].to(q.dtype)
        attn = inner.attn.merge(inner.attn.attend(q, keys, values, mask))
        delta = inner.finish(x, attn)
        weight = self.gate(r).unsqueeze(-1).to(x.dtype)  # (B, 1, 1)
        lens.add_(take)
        return torch.where(take.view(-1, 1, 1), x + weight * delta, x).to(x.dtype)


def _true_rows(flags: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n True entries of a (B,) bool tensor, ascending; n is known, so no sync (unlike nonzero)."""
    return (~flags).to(torch.uint8).argsort(stable=True)[:n]
