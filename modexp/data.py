"""Corpora as token memmaps, and the batches a training loop draws from them.

Three sources (``data.name``):

- ``stdlib``: the running interpreter's own standard library ``.py`` files, as bytes (vocab 256).
  Nothing to download, tens of MB, identical on every machine with the same Python.
- ``text``: a UTF-8 text file or a directory of them (recursively), as bytes. Hidden files and
  folders (``.git``, ...) and the cache folder itself are not read.
- ``tokens``: pre-tokenised ``*.bin`` shards in a directory (or one such file): nanoGPT style (raw
  little-endian uint16 or uint32) or llm.c style (a 256 x int32 header starting with magic 20240520;
  its version decides the dtype, 1 = uint16 and 2 = uint32, whatever ``data.token_dtype`` says).

Byte-level corpora (stdlib, text) skip files that are not UTF-8 or hold a NUL byte (taken for binary;
logged). Several files are joined with a NUL byte after each: the byte-level end-of-text, unambiguous
since no accepted file contains one. Their ``vocab_size`` may exceed 256 (padding) but not be less.

Splits. A directory of >= 2 text files is split BY FILE: sha1(relative path) puts about
``val_fraction`` of the files in val, independently per file, so adding a file never moves another
across the split. One text file is split by position: its last ``val_fraction`` of bytes is val.
Shards whose name contains ``val`` are the validation split; without any, the last ``val_fraction``
of all tokens is.

Every corpus is prepared once into ``<cache_dir>/<name>-<fingerprint[:16]>/{train.bin,val.bin,meta.json}``.
The fingerprint is a sha1 over the source location, every source file's (relative path, size,
mtime_ns), the split and vocab settings and a format version: a stat per file, so a later load
never re-reads the sources, yet an edited, added or removed file gives a new folder.
Preparation writes into a temporary folder beside the final one and renames it into place, under a
file lock so that concurrent jobs wait for one preparer instead of all doing the work.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch

from modexp.errors import ModexpError

log = logging.getLogger(__name__)

NAMES = ("stdlib", "text", "tokens")
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
BYTE_DTYPE = np.dtype("u1")
FORMAT_VERSION = 1  # bump when the prepared layout or split rules change: old caches are then ignored
TOKENS_FORMAT_VERSION = 2  # 2: shards are read in place; the cache holds only their check (1 copied them)
PREPARED_META = "meta.json"  # what `modexp prepare` writes beside its shards
PREPARED_FORMAT = "modexp-tokens"
DOC_SEP = b"\x00"  # byte-level <|endoftext|>: never inside accepted text, so file boundaries stay visible
LLMC_MAGIC = 20240520
LLMC_HEADER_BYTES = 256 * 4
LLMC_VERSIONS = {1: "uint16", 2: "uint32"}
CHUNK_TOKENS = 1 << 24  # stream shards in 16M-token pieces: bounded memory for any corpus size
DECODE_CHUNK_BYTES = 1 << 24


@dataclass
class DataConfig:
    name: str = "stdlib"  # "stdlib" | "text" | "tokens"
    path: str | None = None  # FILE_OR_DIR for text; DIR of *.bin shards for tokens; unused for stdlib
    vocab_size: int = 256  # 256 for byte-level; for tokens: the tokenizer's vocab
    token_dtype: str = "uint16"  # for tokens: "uint16" | "uint32"
    val_fraction: float = 0.05  # share of FILES (stdlib/text dir) or of tokens (one file, shards) held out
    cache_dir: str = "runs/_data"  # where prepared memmaps are cached (one subfolder per fingerprint)


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
    x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))
    return x, y


def _identify(cfg: DataConfig) -> tuple[Path, list, dict[str, Any], str, Path]:
    """(root, files, settings, fingerprint, cache folder) of the corpus cfg describes."""
    root, files = _list_shards(cfg) if cfg.name == "tokens" else _list_text(cfg)
    sources = [(rel, *_stat(path)) for rel, path in files]
    if cfg.name == "tokens" and root.is_dir() and (root / PREPARED_META).is_file():
        sources.append((PREPARED_META, *_stat(root / PREPARED_META)))
    settings = {
        "format": FORMAT_VERSION if cfg.name != "tokens" else TOKENS_FORMAT_VERSION,
        "name": cfg.name,
        "root": str(root),
        "vocab_size": int(cfg.vocab_size),
        "val_fraction": float(cfg.val_fraction),
    }
    if cfg.name == "tokens":
        settings["token_dtype"] = cfg.token_dtype
    fingerprint = hashlib.sha1(json.dumps([settings, sources]).encode()).hexdigest()
    final = Path(cfg.cache_dir).expanduser().absolute() / f"{cfg.name}-{fingerprint[:16]}"
    return root, files, settings, fingerprint, final


def is_prepared(cfg: DataConfig) -> bool:
    """Whether the corpus cfg describes is already in its cache (so loading it writes nothing)."""
    _check_settings(cfg, 1)
    return (_identify(cfg)[4] / "meta.json").exists()


def load_corpus(cfg: DataConfig, seq_len: int) -> Corpus:
    """Load the corpus ``cfg`` describes, preparing its cache first if needed.

    Raises ModexpError (one line, no half-written cache) for a bad setting or unusable data, including
    splits too small for windows of seq_len + 1 tokens.
    """
    _check_settings(cfg, seq_len)
    root, files, settings, fingerprint, final = _identify(cfg)
    cache_dir = final.parent
    if not (final / "meta.json").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)

        def prepare(out: Path) -> dict[str, Any]:
            prepare_source = _check_tokens if cfg.name == "tokens" else _prepare_text
            meta = prepare_source(cfg, root, files, out)
            _check_sizes(cfg, meta["n_train"], meta["n_val"], seq_len)  # before the rename: no unusable cache
            return {"fingerprint": fingerprint, **settings, **meta}

        _prepare_once(final, prepare)
    corpus = _open(final, fingerprint, cfg.token_dtype)
    _check_sizes(cfg, len(corpus.train), len(corpus.val), seq_len)
    return corpus


# --- settings and sources ---------------------------------------------------------------------------


def prepared_meta(path: str | Path | None) -> dict[str, Any] | None:
    """The meta.json that `modexp prepare` wrote in a shard folder (vocab, dtype, tokenizer), or None for
    raw shards (nanoGPT / llm.c files made elsewhere) and for anything that is not a folder."""
    if not path:
        return None
    meta_path = Path(path).expanduser() / PREPARED_META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModexpError(f"{meta_path} is not readable JSON ({exc}): prepare the corpus again") from exc
    if not isinstance(meta, dict) or meta.get("format") != PREPARED_FORMAT:
        return None  # someone else's meta.json: the shards are raw
    return meta


def _where(cfg: DataConfig) -> str:
    return f"data.path={cfg.path}" if cfg.name != "stdlib" else "data.name=stdlib"


def _source_kind(cfg: DataConfig) -> str:
    return "a UTF-8 text file or a directory of them" if cfg.name == "text" else "a directory of *.bin shards"


def _check_settings(cfg: DataConfig, seq_len: int, need_path: bool = True) -> None:
    if cfg.name not in NAMES:
        raise ModexpError(f"data.name={cfg.name!r} is not known: use one of {', '.join(NAMES)}")
    if cfg.token_dtype not in TOKEN_DTYPES:
        raise ModexpError(f"data.token_dtype={cfg.token_dtype!r} is not supported: use one of uint16, uint32")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ModexpError(f"data.val_fraction={cfg.val_fraction} is not allowed: it must be between 0 and 1")
    min_vocab = 256 if cfg.name != "tokens" else 2
    if isinstance(cfg.vocab_size, bool) or not isinstance(cfg.vocab_size, int) or cfg.vocab_size < min_vocab:
        raise ModexpError(
            f"data.vocab_size={cfg.vocab_size!r} is not allowed for data.name={cfg.name}: "
            f"it must be an integer >= {min_vocab}"
        )
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ModexpError(f"seq_len={seq_len!r} is not allowed: it must be a positive integer")
    if need_path and cfg.name != "stdlib" and not cfg.path:
        raise ModexpError(f"data.path is not set: data.name={cfg.name} needs {_source_kind(cfg)}")


def check_data(cfg: DataConfig, seq_len: int) -> None:
    """The cheap checks, for planning: the settings are allowed and a given data.path exists (nothing is read).

    A plan needs no data (`modexp plan sweep=paper` before the corpus is tokenised), so an unset path passes
    here; loading the corpus refuses it.
    """
    _check_settings(cfg, seq_len, need_path=False)
    if cfg.name != "stdlib" and cfg.path and not Path(cfg.path).expanduser().exists():
        raise ModexpError(f"data.path={cfg.path} does not exist: give {_source_kind(cfg)}")


# (settings, every source's stat) -> training tokens: a process planning many times reads each corpus once.
_TRAIN_TOKENS: dict[tuple[Any, ...], int] = {}


def train_split_tokens(cfg: DataConfig) -> int | None:
    """Tokens in the corpus's training split, counted by the preparation's own split rules, writing nothing.

    For planning (how often a run repeats its data): byte-level sources are read (tens of MB), shards only
    stat'ed. None while data.path is unset, since a plan needs no data; a bad source refuses as loading would.
    """
    if cfg.name != "stdlib" and not cfg.path:
        return None
    root, files = _list_shards(cfg) if cfg.name == "tokens" else _list_text(cfg)
    key = (cfg.name, str(root), cfg.val_fraction, cfg.token_dtype, tuple((r, *_stat(p)) for r, p in files))
    if key not in _TRAIN_TOKENS:
        count = _count_shard_train if cfg.name == "tokens" else _count_text_train
        _TRAIN_TOKENS[key] = count(cfg, root, files)
    return _TRAIN_TOKENS[key]


def _count_text_train(cfg: DataConfig, root: Path, files: list[tuple[str, Path]]) -> int:
    texts, _ = _accepted_texts(cfg, root, files)
    if len(texts) == 1:
        return _train_part(len(texts[0][1]), cfg.val_fraction)
    val = _split_by_file([rel for rel, _ in texts], cfg.val_fraction)
    return sum(len(data) + len(DOC_SEP) for rel, data in texts if rel not in val)


def _count_shard_train(cfg: DataConfig, root: Path, files: list[tuple[str, Path]]) -> int:
    shards = [path for _, path in files]
    lengths = [len(_open_shard(path, cfg)) for path in shards]
    is_val, n_train = _shard_split(cfg, shards, sum(lengths))
    if n_train is None:
        n_train = sum(n for n, in_val in zip(lengths, is_val, strict=True) if not in_val)
    return n_train


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _list_text(cfg: DataConfig) -> tuple[Path, list[tuple[str, Path]]]:
    """The source files as (POSIX relative path, path), sorted by relative path."""
    if cfg.name == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        skip_dirs, suffix = {"site-packages", "__pycache__"}, ".py"
    else:
        root = Path(cfg.path).expanduser().resolve()
        if not root.exists():
            raise ModexpError(
                f"data.path={cfg.path} does not exist: give a UTF-8 text file or a directory of them"
            )
        if root.is_file():
            return root, [(root.name, root)]
        skip_dirs, suffix = set(), ""
    cache_dir = Path(cfg.cache_dir).expanduser().resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Prune in place: os.walk then never descends there (the cache would otherwise feed itself).
        dirnames[:] = [
            d for d in dirnames if d not in skip_dirs and not d.startswith(".") and here / d != cache_dir
        ]
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                path = here / name
                files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    return root, files


def _list_shards(cfg: DataConfig) -> tuple[Path, list[tuple[str, Path]]]:
    """The shards as (file name, path), sorted by name."""
    root = Path(cfg.path).expanduser().resolve()
    if not root.exists():
        raise ModexpError(
            f"data.path={cfg.path} does not exist: give a directory of pre-tokenised *.bin shards"
        )
    shards = [root] if root.is_file() else sorted(p for p in root.glob("*.bin") if p.is_file())
    if not shards:
        raise ModexpError(
            f"data.path={cfg.path} has no *.bin shards: give a directory of pre-tokenised *.bin shards "
            "(raw uint16/uint32 or llm.c format)"
        )
    return root, [(p.name, p) for p in shards]


def _is_val_file(rel: str, val_fraction: float) -> bool:
    # A stable hash (not Python's salted hash()) so the split is the same in every process.
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") < val_fraction * 2**64


def _split_by_file(rels: list[str], val_fraction: float) -> set[str]:
    """The val members of rels (>= 2 of them): about val_fraction of them, never none or all."""
    val = {r for r in rels if _is_val_file(r, val_fraction)}
    if not val or len(val) == len(rels):
        # Few files: the hash may pick none (or all); fall back, still deterministically, on hash order.
        by_hash = sorted(rels, key=lambda r: hashlib.sha1(r.encode()).digest())
        val = {by_hash[0]} if not val else set(by_hash[:-1])
    return val


# --- preparation ------------------------------------------------------------------------------------


class _Sink:
    """A binary output file that counts its items and hashes its bytes as they are written."""

    def __init__(self, path: Path, itemsize: int) -> None:
        self.file = open(path, "wb")  # closed by the caller's with-block
        self.itemsize = itemsize
        self.n = 0
        self.sha1 = hashlib.sha1()

    def write(self, buf: bytes | memoryview | np.ndarray) -> None:
        data = memoryview(buf).cast("B")
        self.file.write(data)
        self.sha1.update(data)
        self.n += len(data) // self.itemsize


def _is_text(data: bytes) -> bool:
    """UTF-8 without NUL bytes; decoded in pieces so a large file never becomes one huge str."""
    if b"\x00" in data:  # binary (and NUL is DOC_SEP, which must stay unambiguous)
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for i in range(0, len(view), DECODE_CHUNK_BYTES):
            decoder.decode(view[i : i + DECODE_CHUNK_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _accepted_texts(
    cfg: DataConfig, root: Path, files: list[tuple[str, Path]]
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The non-empty UTF-8 files as (relative path, bytes), and the skipped ones; refuses a corpus of no text."""
    # Byte-level corpora are small (tens of MB), so the accepted files are held in memory at once.
    texts, skipped = [], []
    for rel, path in files:
        data = path.read_bytes()
        if _is_text(data):
            if data:
                texts.append((rel, data))
        else:
            skipped.append(rel)
    if cfg.name == "text" and root.is_file() and skipped:
        raise ModexpError(
            f"data.path={cfg.path} is not UTF-8 text: give a UTF-8 text file or a directory of them"
        )
    if not texts:
        raise ModexpError(
            f"{_where(cfg)} holds no UTF-8 text ({len(files)} file(s), {len(skipped)} skipped as binary "
            "or not UTF-8): give a UTF-8 text file or a directory of them"
        )
    return texts, skipped


def _train_part(n: int, val_fraction: float) -> int:
    """Tokens before the tail split's cut: the last val_fraction of n is val."""
    return n - int(n * val_fraction)


def _prepare_text(cfg: DataConfig, root: Path, files: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    texts, skipped = _accepted_texts(cfg, root, files)
    if skipped:
        level = logging.INFO if cfg.name == "stdlib" else logging.WARNING
        log.log(
            level, "skipped %d binary or non-UTF-8 file(s) under %s, e.g. %s", len(skipped), root, skipped[:3]
        )

    train, val = _Sink(out / "train.bin", 1), _Sink(out / "val.bin", 1)
    with train.file, val.file:
        if len(texts) >= 2:
            val_rels = _split_by_file([rel for rel, _ in texts], cfg.val_fraction)
            for rel, data in texts:
                sink = val if rel in val_rels else train
                sink.write(data)
                sink.write(DOC_SEP)
            split, n_val_files = "by_file_sha1", len(val_rels)
        else:
            data = texts[0][1]
            cut = _train_part(len(data), cfg.val_fraction)
            train.write(memoryview(data)[:cut])
            val.write(memoryview(data)[cut:])
            split, n_val_files = "tail_of_file", 0
    return {
        "source": ("python stdlib " + sys.version.split()[0]) if cfg.name == "stdlib" else "utf-8 text",
        "dtype": "uint8",
        "split": split,
        "n_train": train.n,
        "n_val": val.n,
        "files": {"train": len(texts) - n_val_files, "val": n_val_files, "skipped": len(skipped)},
        "sha1": {"train": train.sha1.hexdigest(), "val": val.sha1.hexdigest()},
    }


def _open_shard(path: Path, cfg: DataConfig) -> np.ndarray:
    """The shard's tokens as a read-only memmap (llm.c header detected and skipped)."""
    size = path.stat().st_size
    if size >= LLMC_HEADER_BYTES:
        header = np.fromfile(path, dtype="<i4", count=256)
        if header[0] == LLMC_MAGIC:
            version, n = int(header[1]), int(header[2])
            if version not in LLMC_VERSIONS:
                raise ModexpError(
                    f"shard {path} has llm.c header version {version}: only versions 1 (uint16) and 2 (uint32) are known"
                )
            dtype = TOKEN_DTYPES[LLMC_VERSIONS[version]]
            if size != LLMC_HEADER_BYTES + n * dtype.itemsize:
                raise ModexpError(
                    f"shard {path} is {size} bytes but its llm.c header promises {n} {dtype.name} tokens: "
                    "the file is truncated or not an llm.c shard"
                )
            if n == 0:
                return np.zeros(0, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=LLMC_HEADER_BYTES, shape=(n,))
    dtype = TOKEN_DTYPES[cfg.token_dtype]
    if size % dtype.itemsize:
        raise ModexpError(
            f"shard {path} is {size} bytes, not a whole number of data.token_dtype={cfg.token_dtype} tokens: "
            "set data.token_dtype to the dtype it was written with (uint16 or uint32)"
        )
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)


def _shard_split(cfg: DataConfig, shards: list[Path], total: int) -> tuple[list[bool], int | None]:
    """Which shards are val, and (when none is) how many leading tokens are train; refuses unusable splits."""
    is_val = [fnmatch.fnmatch(p.name, "*val*") for p in shards]
    if total == 0:
        raise ModexpError(f"data.path={cfg.path} holds no tokens: its *.bin shards are empty")
    if not any(is_val):
        return is_val, _train_part(total, cfg.val_fraction)
    if all(is_val):
        raise ModexpError(
            f"data.path={cfg.path} has only validation shards (*val*): add training shards beside them"
        )
    return is_val, None


def _check_tokens(cfg: DataConfig, root: Path, files: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """The split and token counts of shards that stay where they are (nothing is copied), checked once.

    Shards written by `modexp prepare` are vouched for by their meta.json (the tokenizer, the vocabulary, each
    shard's count); any other shards are read once here to check every token id against data.vocab_size.
    """
    shards = [path for _, path in files]
    arrays = [_open_shard(p, cfg) for p in shards]
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise ModexpError(
            f"data.path={cfg.path} mixes token dtypes {sorted(d.name for d in dtypes)}: "
            "all shards must be uint16 or all uint32"
        )
    prepared = prepared_meta(cfg.path)
    if prepared is not None:
        counts = {rel: len(a) for (rel, _), a in zip(files, arrays, strict=True)}
        if counts != prepared.get("shards"):
            raise ModexpError(
                f"the shards in data.path={cfg.path} do not match its meta.json (shards added, removed or "
                "cut short since `modexp prepare` wrote them): prepare the corpus again"
            )
    else:
        for path, arr in zip(shards, arrays, strict=True):
            for i in range(0, len(arr), CHUNK_TOKENS):
                top = int(arr[i : i + CHUNK_TOKENS].max())
                if top >= cfg.vocab_size:
                    raise ModexpError(
                        f"shard {path} has token {top} >= data.vocab_size={cfg.vocab_size}: "
                        f"set data.vocab_size to the tokenizer's vocabulary size (more than {top})"
                    )
    is_val, n_train = _shard_split(cfg, shards, sum(len(a) for a in arrays))
    total = sum(len(a) for a in arrays)
    if n_train is None:  # val shards: the train split is the other shards, in name order
        n_train = sum(len(a) for a, v in zip(arrays, is_val, strict=True) if not v)
    return {
        "source": "token shards, read in place" + (" (modexp prepare)" if prepared else ""),
        "dtype": arrays[0].dtype.name,
        "split": "tail_of_tokens" if not any(is_val) else "val_shards",
        "n_train": n_train,
        "n_val": total - n_train,
        "files": {"train": is_val.count(False), "val": is_val.count(True), "skipped": 0},
        "shards": [[rel, len(a), v] for (rel, _), a, v in zip(files, arrays, is_val, strict=True)],
        "tokenizer": (prepared or {}).get("tokenizer"),
    }


def _open_in_place(meta: dict[str, Any], cfg_dtype: str) -> tuple[TokenView, TokenView]:
    """The train and val splits of shards read where they lie, as meta (from _check_tokens) describes them."""
    root = Path(meta["root"])
    cfg = DataConfig(name="tokens", path=str(root), token_dtype=cfg_dtype)
    paths = [root if root.is_file() else root / rel for rel, _, _ in meta["shards"]]
    arrays = [_open_shard(p, cfg) for p in paths]
    if [len(a) for a in arrays] != [n for _, n, _ in meta["shards"]]:
        raise ModexpError(f"the shards in {root} changed since they were checked: run again to re-check them")
    if meta["split"] == "tail_of_tokens":
        every = TokenView(arrays)
        return TokenView(arrays, 0, meta["n_train"]), TokenView(arrays, meta["n_train"], len(every))
    train = [a for a, (_, _, v) in zip(arrays, meta["shards"], strict=True) if not v]
    val = [a for a, (_, _, v) in zip(arrays, meta["shards"], strict=True) if v]
    return TokenView(train), TokenView(val)


def _check_sizes(cfg: DataConfig, n_train: int, n_val: int, seq_len: int) -> None:
    if n_train <= seq_len + 1:
        raise ModexpError(
            f"{_where(cfg)} gives {n_train} training tokens: seq_len={seq_len} needs more than {seq_len + 1}; "
            "use a larger corpus or a shorter seq_len"
        )
    if n_val < seq_len + 1:
        raise ModexpError(
            f"{_where(cfg)} gives {n_val} validation tokens: seq_len={seq_len} needs at least {seq_len + 1}; "
            "use a larger corpus, a larger data.val_fraction or a shorter seq_len"
        )


# flock refused by the filesystem itself (NFS without lockd, Lustre without -o flock, some FUSE mounts).
LOCKS_REFUSED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _prepare_once(final: Path, prepare: Callable[[Path], dict[str, Any]]) -> None:
    """Make ``final`` by running prepare(tmp_dir) -> meta.json contents and renaming tmp_dir, at most once.

    The lock only saves duplicate work; correctness comes from the rename, which is atomic and fails if
    another process got there first (then its folder is used). That also makes removing the lock file
    afterwards safe: a process that raced past it merely prepares the same data again.
    """
    lock_path = final.parent / f".{final.name}.lock"
    lock = filelock.FileLock(str(lock_path))
    locked = os.environ.get("MODEXP_LOCKING", "flock") != "none"
    try:
        if locked:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                log.info("waiting for another process to prepare %s", final)
                lock.acquire()
            except OSError as exc:
                if exc.errno not in LOCKS_REFUSED:
                    raise
                locked = False  # a filesystem without locks: the rename alone keeps this correct
        try:
            if not (final / "meta.json").exists():
                _remove_dead_tmp(final)
                _build(final, prepare)
        finally:
            if locked:
                lock.release()
    finally:
        lock_path.unlink(missing_ok=True)


def _tmp_prefix(final: Path) -> str:
    return f".tmp-{final.name}-"


def _build(final: Path, prepare: Callable[[Path], dict[str, Any]]) -> None:
    started = time.perf_counter()
    log.info("preparing %s", final)
    # Host and pid in the name let a later preparer remove what a killed one left (_remove_dead_tmp).
    # Not tempfile.mkdtemp: its 0700 mode would keep a shared cache from other users.
    tmp = final.parent / f"{_tmp_prefix(final)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        meta = prepare(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "meta.json").exists():
            raise
        log.info("%s was prepared by another process first; using that", final)
        return
    if "n_train" in meta:  # `modexp prepare` reports its own summary
        seconds = time.perf_counter() - started
        log.info(
            "prepared %s: %d train + %d val tokens in %.1fs", final, meta["n_train"], meta["n_val"], seconds
        )


def _remove_dead_tmp(final: Path) -> None:
    """Remove temp folders for ``final`` whose preparer (on this host) was killed before its rename."""
    prefix, host = _tmp_prefix(final), socket.gethostname()
    for tmp in final.parent.glob(prefix + "*"):
        parts = tmp.name[len(prefix) :].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _alive(int(parts[1])):
            log.warning("removing %s, left by a process that died while preparing it", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _open(folder: Path, fingerprint: str, token_dtype: str = "uint16") -> Corpus:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if "shards" in meta:  # token shards: read where they lie, the cache holds only their check
            train, val = _open_in_place(meta, token_dtype)
        else:
            dtype = BYTE_DTYPE if meta["dtype"] == "uint8" else TOKEN_DTYPES[meta["dtype"]]
            train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
            val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
    except (OSError, ValueError, KeyError) as e:
        raise ModexpError(
            f"the data cache {folder} is damaged ({e}): delete that folder to prepare it again"
        ) from e
    if meta.get("fingerprint") != fingerprint or (len(train), len(val)) != (meta["n_train"], meta["n_val"]):
        raise ModexpError(
            f"the data cache {folder} does not match its meta.json: delete that folder to prepare it again"
        )
    return Corpus(
        train=train,
        val=val,
        vocab_size=int(meta["vocab_size"]),
        fingerprint=fingerprint,
        description=meta,
        path=folder,
    )
