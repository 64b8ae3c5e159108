"""`modexp prepare SOURCE --tokenizer SPEC --out DIR`: text to llm.c token shards, once, atomically.

SOURCE is one of
- ``stdlib``: the embedded corpus (this Python's standard library, one document per file);
- a text file or a folder of them (one document per file; binary and non-UTF-8 files are skipped);
- a ``.jsonl`` / ``.json`` / ``.parquet`` file or a folder of them (one document per row, its ``--text-field``),
  read by Hugging Face ``datasets``, streamed;
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face hub dataset through the same ``datasets.load_dataset`` call,
  streamed (split ``train`` unless given), for machines that reach the hub.

Each document is tokenised (in batches, on all cores: the tokenizers' own threads), followed by the
tokenizer's end-of-text token, and lands in the validation split when sha1(document) falls in the lowest
``--val-fraction`` (stable and independent of order, like the byte-level corpora's split by file). A source
of too few documents to split that way is split by position: the last val_fraction of its tokens.

DIR gets llm.c shards (``train_000000.bin``, ``val_000000.bin``, ...: a 256 x int32 header with magic
20240520 and version 1 for uint16 or 2 for uint32 ids, then the ids), the tokenizer (tokenizer.json) and a
meta.json (source, tokenizer, vocabulary, end-of-text id, token counts per split and per shard, a fingerprint of
the shards' bytes). Everything is written into a temporary folder beside DIR and renamed into place, so a killed
prepare leaves no DIR a run could read; the next prepare removes what it left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import tokenizer as tokenizers
from .data import (
    LLMC_HEADER_BYTES,
    LLMC_MAGIC,
    PREPARED_FORMAT,
    PREPARED_META,
    DataConfig,
    _is_text,
    _list_text,
    _prepare_once,
)
from .errors import ModexpError

log = logging.getLogger(__name__)

STRUCTURED = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # suffix -> datasets builder
BATCH_DOCUMENTS = 512  # documents per encode_batch call: enough for the tokenizer's threads to share
BATCH_BYTES = 8 << 20  # ... or fewer, when documents are long: bounded memory
SHARD_TOKENS = 100_000_000  # llm.c's own shard size
BPE_TRAIN_BYTES = 1 << 30  # bpe:N learns its merges from at most this much of the source's text
VERSION = 1


# --- sources --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A source of documents: documents() gives a fresh iterator each call (bpe:N reads the source twice)."""

    spec: str
    description: dict[str, Any]
    identity: list[Any]  # what the output depends on: file stats, or the hub dataset's name
    documents: Callable[[], Iterator[str]]
    skipped: list[str] = field(default_factory=list)


def open_source(spec: str, text_field: str) -> Source:
    if spec == "stdlib":
        root, files = _list_text(DataConfig(name="stdlib"))
        return _text_source(spec, root, files, {"kind": "stdlib", "python": sys.version.split()[0]})
    if spec.startswith("hf:"):
        return _hub_source(spec, text_field)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModexpError(
            f"source {spec} does not exist: give a text, .jsonl, .json or .parquet file or folder, stdlib, "
            "or hf:NAME[:CONFIG][@SPLIT]"
        )
    root = path.resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if _visible(p, root))
    structured = [p for p in files if p.suffix.lower() in STRUCTURED]
    if structured:
        builders = {STRUCTURED[p.suffix.lower()] for p in structured}
        if len(builders) > 1:
            raise ModexpError(f"source {spec} mixes JSON and Parquet files: give a folder of one kind")
        return _dataset_source(spec, builders.pop(), structured, text_field)
    rels = [(p.relative_to(root).as_posix() if root.is_dir() else p.name, p) for p in files]
    return _text_source(spec, root, rels, {"kind": "text", "path": str(root)})


def _visible(path: Path, root: Path) -> bool:
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)


def _text_source(spec: str, root: Path, files: list[tuple[str, Path]], description: dict) -> Source:
    skipped: list[str] = []

    def documents() -> Iterator[str]:
        skipped.clear()
        for rel, path in files:
            data = path.read_bytes()
            if not _is_text(data):
                skipped.append(rel)
            elif data:
                yield data.decode("utf-8")

    identity = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files]
    return Source(spec, {**description, "files": len(files)}, identity, documents, skipped)


def _dataset_source(spec: str, builder: str, files: list[Path], text_field: str) -> Source:
    identity = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    description = {
        "kind": builder,
        "path": str(Path(spec).expanduser().resolve()),
        "files": len(files),
        "text_field": text_field,
    }
    return Source(
        spec,
        description,
        identity,
        lambda: _rows(spec, text_field, builder, data_files=[str(p) for p in files], split="train"),
    )


def _hub_source(spec: str, text_field: str) -> Source:
    rest, _, split = spec.removeprefix("hf:").partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise ModexpError(
            f"source {spec} names no dataset: hf:NAME[:CONFIG][@SPLIT], e.g. hf:roneneldan/TinyStories"
        )
    split = split or "train"
    description = {
        "kind": "huggingface",
        "name": name,
        "config": config or None,
        "split": split,
        "text_field": text_field,
    }
    return Source(
        spec,
        description,
        [name, config, split],
        lambda: _rows(spec, text_field, name, config or None, split=split),
    )


def _rows(spec: str, text_field: str, *args: Any, **kwargs: Any) -> Iterator[str]:
    """The text field of each row, streamed: local files and hub datasets through the same datasets call."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        rows = datasets.load_dataset(*args, streaming=True, **kwargs)
        for i, row in enumerate(rows):
            if text_field not in row:
                raise ModexpError(
                    f"source {spec} has no text field {text_field!r} (its fields: {', '.join(map(str, row))}): "
                    "name the field with --text-field"
                )
            text = row[text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise ModexpError(
                    f"source {spec}: row {i}'s {text_field!r} is a {type(text).__name__}, not text: "
                    "name a text field with --text-field"
                )
            yield text
    except ModexpError:
        raise
    except StopIteration:  # datasets' schema inference on an empty file: no rows
        return
    except Exception as exc:  # noqa: BLE001 - a bad file, no network, an unknown dataset: one line
        raise ModexpError(
            f"source {spec} could not be read ({type(exc).__name__}: {tokenizers.first_words(exc)})"
        ) from None


# --- shards ---------------------------------------------------------------------------------------------


class ShardWriter:
    """llm.c shards of one split: a header (magic, version, count), then the ids; a new shard every
    shard_tokens ids. Hashes each shard's ids as it writes them (the corpus fingerprint, without a re-read)."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.counts: dict[str, int] = {}
        self.sha1s: dict[str, Any] = {}
        self.file = None
        self.name = ""

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None or self.counts[self.name] >= self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.counts[self.name]
            part, ids = ids[:room], ids[room:]
            data = part.astype(self.dtype).tobytes()
            self.file.write(data)
            self.sha1s[self.name].update(data)
            self.counts[self.name] += len(part)

    def _next_shard(self) -> None:
        self.close()
        self.name = f"{self.split}_{len(self.counts):06d}.bin"
        self.counts[self.name] = 0
        self.sha1s[self.name] = hashlib.sha1()
        self.file = open(self.folder / self.name, "wb")
        self.file.write(b"\0" * LLMC_HEADER_BYTES)  # the header is written on close, when the count is known

    def close(self) -> None:
        if self.file is None:
            return
        header = np.zeros(256, dtype="<i4")
        header[:3] = (LLMC_MAGIC, 1 if self.dtype.itemsize == 2 else 2, self.counts[self.name])
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None


def _read_shards(folder: Path, counts: dict[str, int], dtype: np.dtype) -> Iterator[np.ndarray]:
    for name, n in counts.items():
        if n:
            yield np.fromfile(folder / name, dtype=dtype, offset=LLMC_HEADER_BYTES, count=n)


# --- preparing ------------------------------------------------------------------------------------------


def _batches(documents: Iterator[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if len(batch) >= BATCH_DOCUMENTS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _in_val(doc: str, val_fraction: float) -> bool:
    digest = hashlib.sha1(doc.encode("utf-8", errors="surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < val_fraction * 2**64


def _limited(documents: Iterator[str], max_bytes: int) -> Iterator[str]:
    seen = 0
    for doc in documents:
        if seen >= max_bytes:
            return
        seen += len(doc)
        yield doc


def _check_out(out: Path, inputs: str) -> dict[str, Any] | None:
    """The existing corpus in out when it is this very one (nothing to do), else None; refuses another one."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ModexpError(f"--out {out} is a file: give a folder for the shards")
    meta_path = out / PREPARED_META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("inputs") == inputs:
            return meta
        raise ModexpError(
            f"--out {out} already holds a different corpus ({meta.get('source', {}).get('spec', '?')} with "
            f"{meta.get('tokenizer', {}).get('spec', '?')}): choose another --out, or delete that folder first"
        )
    if any(out.iterdir()):
        raise ModexpError(
            f"--out {out} is not empty and holds no prepared corpus: choose an empty or new folder"
        )
    out.rmdir()  # an empty folder: the finished one is renamed into its place
    return None


def prepare(
    source: str,
    tokenizer: str,
    out: str | Path,
    text_field: str = "text",
    val_fraction: float = 0.05,
    limit_tokens: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Prepare the corpus and return its meta.json contents (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise ModexpError(f"--val-fraction {val_fraction} is not allowed: it must be between 0 and 1")
    if limit_tokens is not None and limit_tokens < 1:
        raise ModexpError(
            f"--limit-tokens {limit_tokens} is not allowed: it must be a positive number of tokens"
        )
    if shard_tokens < 1:
        raise ModexpError(f"--shard-tokens {shard_tokens} is not allowed: it must be positive")
    tokenizers.check_spec(tokenizer)
    src = open_source(source, text_field)
    out = Path(out).expanduser().absolute()
    tokenizer_file = Path(tokenizer).expanduser() if tokenizer.endswith(".json") else None
    inputs = hashlib.sha1(
        json.dumps(
            [
                VERSION,
                source,
                src.identity,
                tokenizer,
                _file_sha1(tokenizer_file),
                text_field,
                val_fraction,
                limit_tokens,
                shard_tokens,
            ]
        ).encode()
    ).hexdigest()
    done = _check_out(out, inputs)
    if done is not None:
        log.info(
            "%s already holds this corpus (%s tokens): nothing to do",
            out,
            f"{sum(done['tokens'].values()):,}",
        )
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}

    def build(tmp: Path) -> dict[str, Any]:
        result.update(_build_shards(src, tokenizer, tmp, val_fraction, limit_tokens, shard_tokens, progress))
        return {"format": PREPARED_FORMAT, "version": VERSION, "inputs": inputs, **result}

    _prepare_once(out, build)
    return json.loads((out / PREPARED_META).read_text())


def _file_sha1(path: Path | None) -> str | None:
    return hashlib.sha1(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def _build_shards(
    src: Source,
    spec: str,
    tmp: Path,
    val_fraction: float,
    limit_tokens: int | None,
    shard_tokens: int,
    progress: bool | None,
) -> dict[str, Any]:
    from tqdm import tqdm

    started = time.perf_counter()
    train_cap = BPE_TRAIN_BYTES if limit_tokens is None else min(BPE_TRAIN_BYTES, 8 * limit_tokens)
    tok = tokenizers.from_spec(spec, lambda: _limited(src.documents(), train_cap))
    trained_s = time.perf_counter() - started
    if tok.vocab_size > tokenizers.MAX_VOCAB:
        raise ModexpError(f"--tokenizer {spec} has {tok.vocab_size} tokens: more than uint32 ids can hold")
    dtype = np.dtype("<u2") if tok.vocab_size <= 2**16 else np.dtype("<u4")
    file = tok.save(tmp)
    train, val = (ShardWriter(tmp, split, dtype, shard_tokens) for split in ("train", "val"))
    docs = {"train": 0, "val": 0}
    bar = tqdm(
        total=limit_tokens,
        unit="tok",
        unit_scale=True,
        desc="tokenising",
        mininterval=1.0,
        disable=not sys.stderr.isatty() if progress is None else not progress,
    )
    with bar:
        for batch in _batches(src.documents()):
            for doc, ids in zip(batch, tok.encode_batch(batch), strict=True):
                if tok.eot_id is not None:
                    ids = [*ids, tok.eot_id]
                ids = np.asarray(ids, dtype=np.int64)
                if limit_tokens is not None:
                    ids = ids[: limit_tokens - train.n - val.n]
                if not len(ids):
                    continue
                split = "val" if _in_val(doc, val_fraction) else "train"
                (val if split == "val" else train).write(ids)
                docs[split] += 1
                bar.update(len(ids))
            if limit_tokens is not None and train.n + val.n >= limit_tokens:
                break
    train.close()
    val.close()
    if not train.n + val.n:
        raise ModexpError(
            f"source {src.spec} holds no text ({src.description.get('files', 0)} file(s), {len(src.skipped)} "
            "skipped as binary or not UTF-8): give text, or the right --text-field"
        )
    split = "by_document_sha1"
    if not train.n or not val.n:  # too few documents to split by document: the last val_fraction of tokens
        split = "tail_of_tokens"
        train, val = _split_by_position(tmp, train, val, dtype, val_fraction, shard_tokens)
    seconds = time.perf_counter() - started
    return {
        "source": {"spec": src.spec, **src.description},
        "tokenizer": tok.describe(file),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "split": split,
        "documents": {**docs, "skipped": len(src.skipped)},
        "tokens": {"train": train.n, "val": val.n},
        "limit_tokens": limit_tokens,
        "shards": {**train.counts, **val.counts},
        "fingerprint": _fingerprint(train, val),
        "seconds": {"total": round(seconds, 2), "tokenizer": round(trained_s, 2)},
        "tokens_per_second": round((train.n + val.n) / max(seconds - trained_s, 1e-9)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _split_by_position(
    tmp: Path, train: ShardWriter, val: ShardWriter, dtype: np.dtype, val_fraction: float, shard_tokens: int
) -> tuple[ShardWriter, ShardWriter]:
    """Rewrite both splits' tokens, in document order, as train then the last val_fraction as val."""
    every = list(_read_shards(tmp, train.counts, dtype)) + list(_read_shards(tmp, val.counts, dtype))
    for name in [*train.counts, *val.counts]:
        (tmp / name).unlink()
    tokens = np.concatenate(every)
    cut = len(tokens) - int(len(tokens) * val_fraction)
    new_train, new_val = (ShardWriter(tmp, split, dtype, shard_tokens) for split in ("train", "val"))
    new_train.write(tokens[:cut])
    new_val.write(tokens[cut:])
    new_train.close()
    new_val.close()
    return new_train, new_val


def _fingerprint(*writers: ShardWriter) -> str:
    """sha1 over each shard's (name, count, sha1 of its ids): the same ids in the same shards, the same value."""
    shards = sorted((name, w.counts[name], w.sha1s[name].hexdigest()) for w in writers for name in w.counts)
    return hashlib.sha1(json.dumps(shards).encode()).hexdigest()


def summary(meta: dict[str, Any], out: Path) -> str:
    tokens = meta["tokens"]
    return (
        f"prepared {out}: {tokens['train']:,} train + {tokens['val']:,} val tokens "
        f"({meta['documents']['train'] + meta['documents']['val']:,} documents, {len(meta['shards'])} shard(s), "
        f"{meta['dtype']}) with {meta['tokenizer']['spec']} (vocab {meta['vocab_size']:,}) in "
        f"{meta['seconds']['total']:.1f} s, {meta['tokens_per_second']:,} tokens/s\n"
        f"train on it: modexp sweep data=tokens data.path={out}"
    )
