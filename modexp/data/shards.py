"""Token shards (nanoGPT raw or llm.c with a header), read where they lie: their format, split and check, and
the meta.json that `modexp prepare` writes beside them."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import numpy as np

from modexp.errors import ModexpError

from .config import TOKEN_DTYPES, DataConfig
from .corpus import TokenView
from .sources import _train_part

PREPARED_META = "meta.json"  # what `modexp prepare` writes beside its shards
PREPARED_FORMAT = "modexp-tokens"
LLMC_MAGIC = 20240520
LLMC_HEADER_BYTES = 256 * 4
LLMC_VERSIONS = {1: "uint16", 2: "uint32"}
CHUNK_TOKENS = 1 << 24  # stream shards in 16M-token pieces: bounded memory for any corpus size


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
    problem = _meta_problem(meta, meta_path.parent)
    if problem:  # refused before any training: a run must not find out at its end that it cannot show text
        raise ModexpError(f"{meta_path} {problem}: prepare the corpus again with `modexp prepare`")
    return meta


TOKENIZER_KINDS = ("bytes", "tokenizers", "tiktoken")  # what tokenizer.load rebuilds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: dict[str, Any], folder: Path) -> str | None:
    """What is wrong with a prepared corpus's meta.json (the keys training and decoding read), or None."""
    vocab, dtype, shards, tok = (
        meta.get("vocab_size"),
        meta.get("dtype"),
        meta.get("shards"),
        meta.get("tokenizer"),
    )
    if not _is_int(vocab) or not 1 <= vocab <= 2**32:
        return f"has vocab_size={vocab!r}: an integer from 1 to 2**32 is needed"
    if dtype not in ("uint16", "uint32"):
        return f"has dtype={dtype!r}: uint16 or uint32 is needed"
    if not isinstance(shards, dict) or not all(_is_int(n) and n >= 0 for n in shards.values()):
        return "has no shards entry mapping each shard to its token count"
    if not isinstance(tok, dict):
        return f"has tokenizer={tok!r}: a record with kind, spec, file and vocab_size is needed"
    kind, spec, file, tok_vocab = tok.get("kind"), tok.get("spec"), tok.get("file"), tok.get("vocab_size")
    if kind not in TOKENIZER_KINDS:
        return f"records tokenizer kind {kind!r}: one of {', '.join(TOKENIZER_KINDS)} is needed"
    if not isinstance(spec, str) or not spec:
        return f"records tokenizer spec {spec!r}: a tokenizer SPEC (text) is needed"
    if tok_vocab != vocab or not _is_int(tok_vocab):
        return f"records a tokenizer of vocab_size={tok_vocab!r} for a corpus of vocab_size={vocab}"
    if kind == "bytes" and vocab != 256:
        return f"records the bytes tokenizer with vocab_size={vocab}: bytes has 256"
    if kind == "tokenizers":
        if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
            return f"records tokenizer file {file!r}: the name of a file beside the shards is needed"
        if not (folder / file).is_file():
            return f"records tokenizer file {file!r}, which is not in {folder}"
    eot = tok.get("eot_id")
    if eot is not None and (not _is_int(eot) or not 0 <= eot < vocab):
        return f"records end-of-text id {eot!r}: an id below vocab_size={vocab}, or null, is needed"
    return None


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


def _largest_id(arr: np.ndarray) -> int:
    """The shard's largest token id, read in bounded pieces (-1 for an empty shard)."""
    return max((int(arr[i : i + CHUNK_TOKENS].max()) for i in range(0, len(arr), CHUNK_TOKENS)), default=-1)


def _check_tokens(cfg: DataConfig, root: Path, files: list[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """The split and token counts of shards that stay where they are (nothing is copied), checked once.

    Shards written by `modexp prepare` are checked against their meta.json (each shard's count); every shard is
    read once here for its largest id, which must be below data.vocab_size (the cache keeps the result).
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
    for path, arr in zip(shards, arrays, strict=True):  # prepared ones too: a meta.json vouches for no id
        top = _largest_id(arr)
        if top >= cfg.vocab_size:
            why = (
                f"its meta.json's tokenizer ({prepared['tokenizer']['spec']}) has {prepared['vocab_size']} tokens, so "
                "the shards are not the ones `modexp prepare` wrote: prepare the corpus again"
                if prepared
                else f"set data.vocab_size to the tokenizer's vocabulary size (more than {top})"
            )
            raise ModexpError(
                f"shard {path} holds token id {top}, not below data.vocab_size={cfg.vocab_size} (the model's "
                f"embedding): {why}"
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
