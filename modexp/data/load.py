"""Loading a corpus: its identity (a fingerprint of settings and sources), its cache prepared if needed, the
size checks; and the training split's size for planning, counted without writing anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from modexp.errors import ModexpError

from .cache import _open, _prepare_once
from .config import DataConfig, _check_settings, _where
from .corpus import Corpus
from .shards import PREPARED_META, _check_tokens, _open_shard, _shard_split
from .sources import DOC_SEP, _accepted_texts, _list_shards, _list_text, _split_by_file, _stat, _train_part
from .text import _prepare_text

FORMAT_VERSION = 1  # bump when the prepared layout or split rules change: old caches are then ignored
TOKENS_FORMAT_VERSION = 2  # 2: shards are read in place; the cache holds only their check (1 copied them)


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
