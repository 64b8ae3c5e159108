"""The data settings (`data.*`) and their cheap checks: what planning validates without reading any data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modexp.errors import ModexpError

NAMES = ("stdlib", "text", "tokens")
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
BYTE_DTYPE = np.dtype("u1")


@dataclass
class DataConfig:
    name: str = "stdlib"  # "stdlib" | "text" | "tokens"
    path: str | None = None  # FILE_OR_DIR for text; DIR of *.bin shards for tokens; unused for stdlib
    vocab_size: int = 256  # 256 for byte-level; for tokens: the tokenizer's vocab
    token_dtype: str = "uint16"  # for tokens: "uint16" | "uint32"
    val_fraction: float = 0.05  # share of FILES (stdlib/text dir) or of tokens (one file, shards) held out
    cache_dir: str = "runs/_data"  # where prepared memmaps are cached (one subfolder per fingerprint)


# The data.* keys each kind reads. A key outside its kind's set does nothing for it, so giving one is refused
# (modexp/unused.py) instead of recorded in every run's identity and ignored.
READS = {
    "stdlib": ("name", "vocab_size", "val_fraction", "cache_dir"),
    "text": ("name", "path", "vocab_size", "val_fraction", "cache_dir"),
    "tokens": ("name", "path", "vocab_size", "token_dtype", "val_fraction", "cache_dir"),
}
_WHAT = {
    "stdlib": "the embedded corpus of Python's standard library",
    "text": "byte-level text",
    "tokens": "token shards",
}


def unused_key(name: str, key: str) -> str | None:
    """Why data.<key> does nothing for data=<name> (None when it is read), with the fix, in a few words."""
    if name not in READS or key in READS[name]:
        return None
    if key == "path":
        return (
            f"data={name} is {_WHAT[name]} and reads no path: add data=text for a text file or folder, or "
            "data=tokens for token shards (modexp prepare), or drop data.path"
        )
    kinds = " or ".join(f"data={k}" for k, keys in READS.items() if key in keys)
    return f"data={name} ({_WHAT[name]}) does not read it; only {kinds} does"


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
    if cfg.name == "stdlib" and cfg.path:  # the corpus would be stdlib whatever the path says
        raise ModexpError(f"data.path={cfg.path} does nothing here: {unused_key('stdlib', 'path')}")
    if need_path and cfg.name != "stdlib" and not cfg.path:
        raise ModexpError(missing_path(cfg))


def require_path(cfg: DataConfig) -> None:
    """Before planning anything to train: data=text and data=tokens need data.path, said first."""
    if cfg.name != "stdlib" and not cfg.path:
        raise ModexpError(missing_path(cfg))


def missing_path(cfg: DataConfig) -> str:
    """The one line for data=text or data=tokens without data.path."""
    example = "data/mine (made by modexp prepare)" if cfg.name == "tokens" else "corpus.txt"
    return f"data.path is not set: data={cfg.name} needs {_source_kind(cfg)}, e.g. data.path={example}"


def check_data(cfg: DataConfig, seq_len: int) -> None:
    """The cheap checks, for planning: the settings are allowed and a given data.path exists (nothing is read).

    A plan needs no data (`modexp plan sweep=paper` before the corpus is tokenised), so an unset path passes
    here; loading the corpus refuses it.
    """
    _check_settings(cfg, seq_len, need_path=False)
    if cfg.name != "stdlib" and cfg.path and not Path(cfg.path).expanduser().exists():
        raise ModexpError(f"data.path={cfg.path} does not exist: give {_source_kind(cfg)}")
