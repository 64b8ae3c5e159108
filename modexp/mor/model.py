"""Mixture-of-Recursions' modules: the shared middle block applied recursion by recursion with its routers, and
the recursion-wise KV caches it decodes with (modexp.sample's Decoder calls new_cache, prefill and decode).

RecursionStack sits between the model's first and last blocks (MoRConfig.make_blocks) as one routing block of
the Transformer: it returns one RoutingRecord per recursion that chooses. The method is in docs/mor.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from modexp.model.layers import Block, KVCache, Rotary
from modexp.model.parts import causal_loss, make_predictor, predictor_logits
from modexp.model.routing import RoutingRecord, _true_rows

if TYPE_CHECKING:
    from . import MoRConfig

UNSCORED = -1e4  # a record's router logit for a token that had left: sigmoid 0, and finite for the statistics


class RecursionCache:
    """Decoding state of the recursions: per recursion, one KV cache per shared layer holding, per sequence, only
    the tokens that reached that recursion, packed at the front in causal order (`lens[r]` of them); `taken[r]`
    (B, max_len) records which positions recursion r processed. Every shared layer of a recursion holds the same
    tokens, so the lengths are kept once per recursion."""

    def __init__(
        self, stack: RecursionStack, batch_size: int, max_len: int, dtype: torch.dtype, slots: torch.Tensor
    ):
        n, attn = stack.cfg.recursions, stack.layers[0].attn
        self.levels = [
            [KVCache(batch_size, attn.n_heads, attn.head_dim, max_len, dtype, slots) for _ in stack.layers]
            for _ in range(n)
        ]
        self.lens = torch.zeros(n, batch_size, dtype=torch.long, device=slots.device)
        self.taken = torch.zeros(n, batch_size, max_len, dtype=torch.bool, device=slots.device)
        self.chooses = [stack.router(r) is not None for r in range(n)]
        self.slots = slots
        self.rows = torch.arange(batch_size, device=slots.device)

    def masks(self, length: int) -> list[torch.Tensor]:
        """Per recursion that chooses, in depth order: (B, length) bool, the positions it processed."""
        return [self.taken[r, :, :length] for r, chooses in enumerate(self.chooses) if chooses]


class RecursionStack(nn.Module):
    """The shared block (cfg.shared_layers layers) applied cfg.recursions times, each recursion to the tokens its
    router keeps of those the recursion before it took (hierarchical filtering). A routing block of the
    Transformer (`routes`): forward returns the hidden state and one RoutingRecord per recursion that chooses."""

    routes: ClassVar[bool] = True
    noise_rows: ClassVar[int] = 0  # its routers are learned: no random-routing noise

    def __init__(self, cfg: MoRConfig, rotary: Rotary) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg, rotary, cfg.depth(0) + i) for i in range(cfg.shared_layers))
        chooses = [str(r) for r, c in enumerate(cfg.routed()) if c]
        # One router (and predictor) per recursion that chooses: each recursion is its own expert.
        self.routers = nn.ModuleDict({r: nn.Linear(cfg.d_model, 1, bias=False) for r in chooses})
        self.predictors = nn.ModuleDict({r: make_predictor(cfg, 1) for r in chooses if cfg.has_predictor})
        # Decoding only: every token through every recursion, what a recursion-free model of this depth
        # computes (the decode benchmark's comparison); never set in training.
        self.full_depth = False

    def router(self, r: int) -> nn.Linear | None:
        return self.routers[str(r)] if str(r) in self.routers else None

    # -- the pieces each recursion is made of ------------------------------------------------------------------
    def scores(self, r: int, x: torch.Tensor) -> torch.Tensor:
        """Recursion r's router scores (B, t) in fp32, also under bf16 autocast (ties at the top-k cut)."""
        router = self.router(r)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), router.weight.float()).squeeze(-1)

    def predict(self, r: int, x: torch.Tensor) -> torch.Tensor | None:
        predictor = self.predictors[str(r)] if str(r) in self.predictors else None
        return None if predictor is None else predictor_logits(predictor, x).squeeze(-1)

    def gate(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores) if self.cfg.router_weight == "sigmoid" else scores

    def decide(self, scores: torch.Tensor, predicted: torch.Tensor | None) -> torch.Tensor:
        """The per-token (causal) decision to go on, from the token's own state: (B, t) bool."""
        if predicted is not None:
            return predicted > 0
        if self.cfg.causal_router == "aux_loss":
            return scores > 0  # sigmoid(r) > 0.5
        raise ValueError(
            "routing_mode='causal' needs causal_router=predictor or aux_loss (causal_router=none)"
        )

    def shared(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """The shared block on the tokens in x, at their original positions (None: 0..t-1, every token)."""
        for layer in self.layers:
            x = layer(x, positions)
        return x

    def forward(
        self, x: torch.Tensor, routing_mode: str = "topk", noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[RoutingRecord]]:
        if routing_mode == "topk":
            return self._topk(x)
        if routing_mode == "causal":
            return self._causal(x)
        raise ValueError(f"routing_mode={routing_mode!r} is not allowed: choose topk or causal")

    # -- training: expert choice among the tokens still active --------------------------------------------------
    def _topk(self, x: torch.Tensor) -> tuple[torch.Tensor, list[RoutingRecord]]:
        b, t, d = x.shape
        records = []
        active: torch.Tensor | None = None  # (B, k) original positions of the tokens still active; None: all
        for r, k in enumerate(self.cfg.tokens(t)):
            if self.router(r) is None:  # it takes every token still active
                if active is None:
                    x = self.shared(x, None)
                else:
                    idx = active.unsqueeze(-1).expand(-1, -1, d)
                    x = x.scatter(1, idx, self.shared(x.gather(1, idx), active))
                continue
            xa = x if active is None else x.gather(1, active.unsqueeze(-1).expand(-1, -1, d))
            scores, predicted = self.scores(r, xa), self.predict(r, xa)
            top = scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values  # into the active set
            chosen = top if active is None else active.gather(1, top)  # original positions, ascending
            member = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
            xs = xa.gather(1, top.unsqueeze(-1).expand(-1, -1, d))
            update = self.shared(xs, chosen) - xs
            weight = self.gate(scores.gather(1, top)).unsqueeze(-1).to(x.dtype)
            x = x.scatter(1, chosen.unsqueeze(-1).expand(-1, -1, d), xs + weight * update)
            aux = causal_loss(predicted, scores, member, self.cfg.causal_router == "aux_loss")
            records.append(self._record(r, t, active, chosen, scores, predicted, member, aux))
            active = chosen
        return x, records

    def _record(
        self,
        r: int,
        t: int,
        active: torch.Tensor | None,
        chosen: torch.Tensor,
        scores: torch.Tensor,
        predicted: torch.Tensor | None,
        member: torch.Tensor,
        aux: torch.Tensor | None,
    ) -> RoutingRecord:
        """The recursion's choice over the whole sequence (B, T): what it scored (the active tokens), took, and
        its router's logits there (UNSCORED for a token that had left)."""
        b = scores.shape[0]
        where = torch.arange(t, device=scores.device).expand(b, t) if active is None else active
        full = scores.new_full((b, t), UNSCORED)
        scored = torch.zeros(b, t, dtype=torch.bool, device=scores.device).scatter_(1, where, True)
        mask = torch.zeros_like(scored).scatter_(1, chosen, True)
        logits = full.scatter(1, where, scores)
        predicted = None if predicted is None else full.scatter(1, where, predicted.float())
        return RoutingRecord(
            self.cfg.depth(r), chosen, mask, mask.clone(), logits, predicted, aux, self.cfg.router_weight,
            scored,
        )  # fmt: skip

    # -- the causal (sampling-time) decision on a whole sequence ----------------------------------------------
    def _causal(self, x: torch.Tensor) -> tuple[torch.Tensor, list[RoutingRecord]]:
        """Each recursion takes the tokens still active whose own decision says go on. As in MoD's causal mode, a
        sequence's taken tokens are moved to its front (a stable sort) and run through the shared block there:
        each attends to exactly the taken tokens before it, and the rest are thrown away."""
        b, t, d = x.shape
        records = []
        active = torch.ones(b, t, dtype=torch.bool, device=x.device)
        everyone = True  # no recursion has chosen yet: every token is active
        for r, k in enumerate(self.cfg.tokens(t)):
            if self.router(r) is None and everyone:
                x = self.shared(x, None)
                continue
            take, weight, record = active, None, None
            if self.router(r) is not None:
                scores, predicted = self.scores(r, x), self.predict(r, x)
                take = self.decide(scores, predicted) & active
                top = scores.masked_fill(~active, -torch.inf).topk(k, dim=1).indices
                member = torch.zeros_like(active).scatter_(1, top, True) & active
                weight = self.gate(scores)
                logits = scores.masked_fill(~active, UNSCORED)
                predicted = None if predicted is None else predicted.masked_fill(~active, UNSCORED)
                aux = causal_loss(predicted, scores, member, self.cfg.causal_router == "aux_loss")
                record = RoutingRecord(
                    self.cfg.depth(r),
                    None,
                    take,
                    member,
                    logits,
                    predicted,
                    aux,
                    self.cfg.router_weight,
                    active,
                )
            order = (~take).to(torch.int8).sort(dim=1, stable=True).indices
            idx = order.unsqueeze(-1).expand(-1, -1, d)
            front = x.gather(1, idx)
            new = self.shared(front, order)
            if weight is not None:
                new = front + weight.gather(1, order).unsqueeze(-1).to(x.dtype) * (new - front)
            x = x.scatter(1, idx, torch.where(take.gather(1, order).unsqueeze(-1), new, front))
            records += [record] if record is not None else []
            active, everyone = take, False
        return x, records

    # -- decoding with recursion-wise KV caches (modexp.sample) -----------------------------------------------
    def new_cache(
        self, batch_size: int, max_len: int, dtype: torch.dtype, slots: torch.Tensor
    ) -> RecursionCache:
        return RecursionCache(self, batch_size, max_len, dtype, slots)

    def prefill(self, x: torch.Tensor, cache: RecursionCache) -> torch.Tensor:
        """The prompt (B, T0, d), a position at a time: each token decides and is cached as in decoding."""
        return torch.cat([self.decode(x[:, p : p + 1], cache, p) for p in range(x.shape[1])], dim=1)

    def decode(
        self, x: torch.Tensor, cache: RecursionCache, position: int, masked: bool = False
    ) -> torch.Tensor:
        """One new token per sequence (B, 1, d) at `position`. At each recursion only the sequences whose token
        is still active and decides to go on compute (one host-device sync per recursion: how many, and their
        longest cache), attending to that recursion's cache of the tokens that reached it; a token that left
        costs nothing deeper. `masked` (MoD's option to compute every row) does not apply: rows are selected."""
        take = None  # (B,) bool; None: every sequence
        for r in range(self.cfg.recursions):
            if self.router(r) is not None and not self.full_depth:
                decided = self.decide(self.scores(r, x), self.predict(r, x))[:, 0]
                take = decided if take is None else decided & take
            taking = torch.ones_like(cache.rows, dtype=torch.bool) if take is None else take
            cache.taken[r, :, position] = taking
            lens = cache.lens[r]
            if take is None:  # every sequence: no sync
                rows, n, width = cache.rows, x.shape[0], int(position) + 1
            else:
                n, width = torch.stack([taking.sum(), torch.where(taking, lens + 1, 0).max()]).tolist()
                if n == 0:
                    break  # nobody goes deeper: every later recursion takes nothing
                rows = _true_rows(taking, n)
            x = x.index_copy(
                0, rows, self._decode_rows(r, x.index_select(0, rows), cache, rows, position, width)
            )
            lens.add_(taking.long())
        return x

    def _decode_rows(
        self, r: int, xs: torch.Tensor, cache: RecursionCache, rows: torch.Tensor, position: int, width: int
    ) -> torch.Tensor:
        """Recursion r on the taking rows' tokens xs (n, 1, d): each shared layer writes the token into its cache
        at the row's next free slot and attends over the row's own cached tokens."""
        slot = cache.lens[r].index_select(0, rows)
        mask = (cache.slots[:width] <= slot[:, None]).view(-1, 1, 1, width)
        h = xs
        for layer, kv in zip(self.layers, cache.levels[r]):
            cos, sin = layer.rotary(cache.slots[position : position + 1])
            q, k, v = layer.attn.project(layer.attn_norm(h), cos, sin)
            kv.keys[rows, :, slot] = k[:, :, 0].to(kv.keys.dtype)
            kv.values[rows, :, slot] = v[:, :, 0].to(kv.values.dtype)
            keys = kv.keys[:, :, :width].index_select(0, rows).to(q.dtype)
            values = kv.values[:, :, :width].index_select(0, rows).to(q.dtype)
            h = h + layer.finish(h, layer.attn.merge(layer.attn.attend(q, keys, values, mask)))
        if self.router(r) is None:
            return h.to(xs.dtype)
        weight = self.gate(self.scores(r, xs)).unsqueeze(-1).to(xs.dtype)  # (n, 1, 1)
        return (xs + weight * (h - xs)).to(xs.dtype)
