"""A loaded corpus: its train and val splits as token arrays, and the batches a training loop draws from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch  # imported where batches are made: planning reads corpora without paying for torch

from modexp.errors import ModexpError


class TokenView:
    """Tokens [start, stop) of memory-mapped shards read in place, as one sequence: len(), slices, dtype.

    A slice reads only the tokens it spans (joining neighbouring shards where it crosses a boundary), so a
    corpus of many shards is never copied or concatenated.
    """

    def __init__(self, shards: list[np.ndarray], start: int = 0, stop: int | None = None) -> None:
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(a) for a in shards])  # shard i holds [offsets[i], offsets[i+1])
        self.start, self.stop = start, int(self.offsets[-1]) if stop is None else stop
        self.dtype = shards[0].dtype if shards else np.dtype("<u2")

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a TokenView takes contiguous slices only")
        lo, hi, _ = index.indices(len(self))
        lo, hi = self.start + lo, self.start + max(lo, hi)
        pieces, i = [], int(np.searchsorted(self.offsets, lo, side="right")) - 1
        while lo < hi:
            take = min(hi, int(self.offsets[i + 1])) - lo
            first = lo - int(self.offsets[i])
            pieces.append(np.asarray(self.shards[i][first : first + take]))
            lo, i = lo + take, i + 1
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # np.asarray(view): the whole range, copied
        out = self[0 : len(self)] if len(self) else np.zeros(0, self.dtype)
        return out if dtype is None else out.astype(dtype)


Tokens = np.ndarray | TokenView  # a split: a cached memmap (byte-level corpora) or shards read in place


@dataclass(eq=False)
class Corpus:
    train: Tokens = field(repr=False)
    val: Tokens = field(repr=False)
    vocab_size: int
    fingerprint: str  # full sha1 hex digest of the sources and settings
    description: dict[str, Any]  # the contents of meta.json; recorded in every run's meta
    path: Path  # the cache folder holding train.bin, val.bin and meta.json

    def train_batch(
        self, step: int, batch_size: int, seq_len: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of the train split; x, y int64 (batch_size, seq_len), y = x shifted by one.

        Stateless: the offsets depend only on (seed, step), so a run resumed at step s sees exactly
        the batches an uninterrupted run would have.
        """
        if len(self.train) <= seq_len + 1:
            raise ModexpError(
                f"seq_len={seq_len} is too long for this corpus: the train split has {len(self.train)} tokens"
            )
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.train) - seq_len, size=batch_size)
        return _windows(self.train, starts, seq_len)

    def val_batches(
        self, batch_size: int, seq_len: int, n_tokens: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed held-out set of about n_tokens target tokens, in batches of at most batch_size.

        Non-overlapping windows spread evenly over the whole val split, no randomness: every run on the
        same corpus with the same seq_len and n_tokens is scored on exactly the same tokens. A val split
        shorter than n_tokens gives all of its complete windows.
        """
        if n_tokens < 1:
            raise ModexpError(f"n_tokens={n_tokens} is not allowed for validation: it must be positive")
        n_slots = (len(self.val) - 1) // seq_len  # window k covers val[k*seq_len : (k+1)*seq_len + 1]
        if n_slots < 1:
            raise ModexpError(
                f"seq_len={seq_len} is too long for this corpus: the val split has {len(self.val)} tokens"
            )
        n_windows = min(math.ceil(n_tokens / seq_len), n_slots)
        starts = (np.arange(n_windows) * n_slots // n_windows) * seq_len
        return [
            _windows(self.val, starts[i : i + batch_size], seq_len) for i in range(0, n_windows, batch_size)
        ]


def _windows(data: Tokens, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Index only the windows: the memmap itself is never copied.
    buf = np.stack([data[int(s) : int(s) + seq_len + 1] for s in starts]).astype(np.int64)
    import torch

    x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))
    return x, y
