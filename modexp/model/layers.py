"""Dense transformer parts: pre-norm block with rotary attention and a SwiGLU (or GELU) MLP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .parts import MLP

if TYPE_CHECKING:
    from .config import ModelConfig


class Rotary(nn.Module):
    """Rotary position embedding tables, looked up by each token's ORIGINAL position.

    Routed blocks see a subset of tokens; indexing the tables by the original positions (not 0..k-1)
    keeps relative distances right among the selected tokens. A dense block's tokens are at 0..T-1, so it
    asks for a length instead and gets a slice of the tables (no gather).

    The tables are stored for the rotate-half form over the full head width: `cos` = [cos, cos] and
    `sin` = [-sin, sin], so that rotating x = [x1, x2] is x * cos + [x2, x1] * sin, which is bit-for-bit
    [x1 cos - x2 sin, x1 sin + x2 cos] (IEEE a + (-b) is a - b, and addition commutes) in fewer ops.
    Every buffer stays float32 whatever dtype the model is cast to (`_apply`): bf16 tables are coarse, and
    tables rebuilt from a bf16 inv_freq (ensure_length, when decoding runs long) had cos errors of up to 2.0.
    """

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_len)

    def _build(self, length: int) -> None:
        angles = torch.outer(
            torch.arange(length, device=self.inv_freq.device, dtype=torch.float32), self.inv_freq
        )
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Rotary:
        """model.to(device) moves the tables; model.to(torch.bfloat16) / .half() leave them float32."""

        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t.dtype == torch.float32 and out.dtype != torch.float32:
                return t.to(device=out.device)
            return out

        return super()._apply(keep_float32, recurse)

    def ensure_length(self, length: int) -> None:
        """Decoding may run past the training length; checked there, not per step (it would sync the GPU)."""
        if length > self.cos.shape[0]:
            self._build(2 * length)

    def forward(self, positions: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: an int T for positions 0..T-1 (a slice), or a (T,) or (B, T) tensor of positions (a
        gather). Returns float32 cos, sin broadcastable against (B, H, T, head_dim)."""
        if not isinstance(positions, torch.Tensor):  # an int, or a SymInt under torch.compile(dynamic=True)
            if positions > self.cos.shape[0]:
                raise ValueError(
                    f"{positions} positions, but the rotary tables hold {self.cos.shape[0]}: "
                    "call ensure_length first"
                )
            return self.cos[:positions], self.sin[:positions]
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:  # (B, T, hd) -> (B, 1, T, hd)
            return cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., head_dim) by the rotate-half tables of Rotary, in float32, returned in x's dtype."""
    xf = x if x.dtype == torch.float32 else x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    out = xf * cos + torch.cat((x2, x1), dim=-1) * sin
    return out if out.dtype == x.dtype else out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.use_math = cfg.attention == "math"

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> q, k, v (B, H, T, hd) with rotary applied to q and k."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """mask None: plain causal attention over the sequence; else a boolean (B or 1, 1, Tq, Tk) keep-mask."""
        if self.use_math:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is None:
                tq, tk = q.shape[-2], k.shape[-2]
                mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
            scores = scores.masked_fill(~mask, float("-inf"))
            return scores.softmax(dim=-1) @ v
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def attend_all(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of the newest query over every key, with no mask (decoding one token).

        `attend(mask=None)` means causal: right for the math path (its mask is bottom-right aligned, so one
        query sees every key), but SDPA's `is_causal` is top-left aligned and would let a lone query see only
        the first key. So SDPA is called here with no mask at all.
        """
        if self.use_math:
            return self.attend(q, k, v, None)
        return F.scaled_dot_product_attention(q, k, v)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        return self.merge(self.attend(q, k, v, mask))


class KVCache:
    """One block's keys and values while decoding, preallocated: (B, H, max_len, head_dim) each, in `dtype`.

    A dense block's holds every position fed so far; a routed block's (RoutedCache, routing.py) only the tokens
    the block took. `slots` is arange(max_len), shared by the caches of one decoder.
    """

    def __init__(
        self,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        slots: torch.Tensor,
    ) -> None:
        shape = (batch_size, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=slots.device, dtype=dtype)
        self.values = torch.zeros(shape, device=slots.device, dtype=dtype)
        self.slots = slots


class Block(nn.Module):
    """A pre-norm transformer block. `update` gives its residual update; `forward` adds it.

    `mlp`: the block's MLP when its kind gives one (a mixture of experts, experts.py), else a dense MLP. Either
    takes the routing mode, which only an MoE acts on.
    """

    def __init__(
        self, cfg: ModelConfig, rotary: Rotary, layer: int = 0, mlp: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model)
        self.mlp = mlp if mlp is not None else MLP(cfg)
        self._rotary = [rotary]  # shared tables; a list keeps it out of this module's state_dict

    @property
    def rotary(self) -> Rotary:
        return self._rotary[0]

    def update(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        routing_mode: str = "causal",
    ) -> torch.Tensor:
        """Residual update f(x) = attn + mlp, for the tokens in x at their given positions.

        routing_mode reaches a mixture-of-experts MLP only (experts.py): topk (expert choice) or causal.
        """
        # Positions 0..T-1 (a dense block): a slice of the tables; a routed block's (B, k) original positions: a
        # gather.
        cos, sin = self.rotary(x.shape[1] if positions is None else positions)
        return self.finish(x, self.attn(self.attn_norm(x), cos, sin, mask), routing_mode)

    def finish(self, x: torch.Tensor, attn: torch.Tensor, routing_mode: str = "causal") -> torch.Tensor:
        """The update once the attention output is known: attn + mlp(mlp_norm(x + attn)).

        Decoding with a KV cache (`decode`, and RoutedBlock's) computes attention against its cache and finishes
        here, so the block's formula lives in one place; it passes no routing_mode, so an MoE decides causally
        per token.
        """
        return attn + self.mlp(self.mlp_norm(x + attn), routing_mode)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, routing_mode: str = "causal"
    ) -> torch.Tensor:
        return x + self.update(x, positions, routing_mode=routing_mode)

    # -- decoding with a KV cache (modexp.sample): the same block, fed a few positions at a time -----------------
    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, slots: torch.Tensor) -> KVCache:
        return KVCache(batch_size, self.attn.n_heads, self.attn.head_dim, max_len, dtype, slots)

    def prefill(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The prompt (B, T0, d) into an empty cache."""
        return self.decode(x, cache, 0)

    def decode(self, x: torch.Tensor, cache: KVCache, position: int, masked: bool = False) -> torch.Tensor:
        """t new tokens (B, t, d) of every sequence, at positions position .. position+t-1, attending to every
        cached one before them. `masked` concerns routed blocks only: a dense block computes every row."""
        p0, t, slots = position, x.shape[1], cache.slots
        cos, sin = self.rotary(slots[p0 : p0 + t])
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        cache.keys[:, :, p0 : p0 + t] = k
        cache.values[:, :, p0 : p0 + t] = v
        keys, values = cache.keys[:, :, : p0 + t], cache.values[:, :, : p0 + t]  # views: no copy
        if t == 1 and p0 > 0:  # one new query sees every cached key: no mask, so SDPA may use fused kernels
            attn = self.attn.attend_all(q, keys.to(q.dtype), values.to(q.dtype))
        else:
            # The new queries are the last t of p0+t positions: bottom-right causal mask (None: square causal).
            mask = None if p0 == 0 else slots[: p0 + t] <= slots[p0 : p0 + t, None]
            attn = self.attn.attend(q, keys.to(q.dtype), values.to(q.dtype), mask)
        return x + self.finish(x, self.attn.merge(attn))
