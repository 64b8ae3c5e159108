"""modexp.data: corpora prepared once into a cache, stateless train batches, a fixed val set."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from modexp import data
from modexp.data import Corpus, DataConfig, load_corpus
from modexp.errors import ModexpError

SEQ = 32


def text_file(i: int, n_lines: int = 40) -> bytes:
    """Unique, recognisable content for file i (no line is shared between files)."""
    return "".join(
        f"file {i:03d} line {j:03d}: {'abcdefghij'[i % 10] * (j % 17)}\n" for j in range(n_lines)
    ).encode()


def make_text_dir(root: Path, n_files: int = 30) -> dict[str, bytes]:
    contents = {}
    for i in range(n_files):
        rel = f"sub{i % 3}/doc{i:03d}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(text_file(i))
        contents[rel] = text_file(i)
    return contents


def write_shard(path: Path, tokens: np.ndarray, dtype: str, llmc_version: int | None = None) -> None:
    with open(path, "wb") as f:
        if llmc_version is not None:
            header = np.zeros(256, dtype="<i4")
            header[:3] = [20240520, llmc_version, len(tokens)]
            f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())


def cfg_for(cache: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(cache), **kw)


def cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory) -> Corpus:
    return load_corpus(cfg_for(tmp_path_factory.mktemp("cache")), 256)


# --- stdlib ---------------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    assert asdict(DataConfig()) == {
        "name": "stdlib",
        "path": None,
        "vocab_size": 256,
        "token_dtype": "uint16",
        "val_fraction": 0.05,
        "cache_dir": "runs/_data",
    }


def test_stdlib_loads_into_the_cache_layout(stdlib):
    d = stdlib.description
    assert stdlib.vocab_size == 256 and d["vocab_size"] == 256
    assert stdlib.train.dtype == np.uint8 and isinstance(stdlib.train, np.memmap)
    assert len(stdlib.train) > 5_000_000 and len(stdlib.val) > 100_000
    assert len(stdlib.val) < 0.2 * len(stdlib.train)
    assert len(stdlib.fingerprint) == 40 and d["fingerprint"] == stdlib.fingerprint
    assert stdlib.path.name == f"stdlib-{stdlib.fingerprint[:16]}"
    assert sorted(p.name for p in stdlib.path.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert json.loads((stdlib.path / "meta.json").read_text()) == d
    assert (d["n_train"], d["n_val"], d["dtype"]) == (len(stdlib.train), len(stdlib.val), "uint8")
    assert d["files"]["train"] > 500 and d["files"]["val"] > 10
    assert hashlib.sha1(stdlib.train.tobytes()).hexdigest() == d["sha1"]["train"]
    assert b"def " in stdlib.train[:100_000].tobytes()


def test_stdlib_is_deterministic(stdlib, tmp_path):
    again = load_corpus(cfg_for(tmp_path), 256)
    assert again.path != stdlib.path
    assert again.fingerprint == stdlib.fingerprint
    assert np.array_equal(again.train, stdlib.train) and np.array_equal(again.val, stdlib.val)


def test_stdlib_split_is_by_file(stdlib):
    _, files = data._list_text(DataConfig())
    val_rels = data._split_by_file([rel for rel, _ in files], 0.05)
    train_bytes, val_bytes = stdlib.train.tobytes(), stdlib.val.tobytes()
    by_size = sorted(files, key=lambda f: f[1].stat().st_size, reverse=True)
    val_big = [p.read_bytes() for rel, p in by_size if rel in val_rels][:3]
    train_big = [p.read_bytes() for rel, p in by_size if rel not in val_rels][:3]
    assert len(val_big) == 3 and len(train_big) == 3
    for content in val_big:
        assert content in val_bytes and content not in train_bytes
    for content in train_big:
        assert content in train_bytes and content not in val_bytes


# --- text -----------------------------------------------------------------------------------------


def test_text_dir_is_split_by_file_deterministically(tmp_path):
    contents = make_text_dir(tmp_path / "src")
    c = load_corpus(
        cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"), val_fraction=0.2), SEQ
    )
    train, val = c.train.tobytes(), c.val.tobytes()
    val_rels = {rel for rel in contents if data._is_val_file(rel, 0.2)}
    assert 0 < len(val_rels) < len(contents)  # the hash rule itself picked a mix here
    for rel, content in contents.items():
        assert (content in val) == (rel in val_rels) and (content in train) == (rel not in val_rels)
    assert len(train) + len(val) == sum(len(b) + 1 for b in contents.values())  # + one separator each
    assert c.description["files"] == {"train": 30 - len(val_rels), "val": len(val_rels), "skipped": 0}
    assert c.description["split"] == "by_file_sha1"


def test_text_split_never_leaves_val_empty(tmp_path):
    (tmp_path / "src").mkdir()
    for i in range(3):
        (tmp_path / "src" / f"{i}.txt").write_bytes(text_file(i, 200))
    rels = ["0.txt", "1.txt", "2.txt"]
    assert not any(data._is_val_file(r, 0.01) for r in rels)  # so the fallback is what is tested
    c = load_corpus(
        cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"), val_fraction=0.01), SEQ
    )
    assert c.description["files"] == {"train": 2, "val": 1, "skipped": 0}


def test_text_single_file_is_split_by_position(tmp_path):
    content = b"".join(text_file(i) for i in range(5))
    (tmp_path / "one.txt").write_bytes(content)
    c = load_corpus(cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "one.txt")), SEQ)
    n_val = int(len(content) * 0.05)
    assert c.val.tobytes() == content[-n_val:] and c.train.tobytes() == content[:-n_val]
    assert c.description["split"] == "tail_of_file"


def test_text_dir_skips_binary_and_hidden_files(tmp_path, caplog):
    contents = make_text_dir(tmp_path / "src", 10)
    (tmp_path / "src" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "src" / "latin1.txt").write_bytes("café".encode("latin-1") * 50)
    (tmp_path / "src" / ".git").mkdir()
    (tmp_path / "src" / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main SECRET-MARKER\n")
    cache = tmp_path / "src" / "cache"  # inside the source tree: must not be read as a source
    with caplog.at_level(logging.WARNING, logger="modexp.data"):
        c = load_corpus(cfg_for(cache, name="text", path=str(tmp_path / "src")), SEQ)
    assert c.description["files"]["skipped"] == 2
    assert c.description["files"]["train"] + c.description["files"]["val"] == len(contents)
    assert "skipped 2" in caplog.text and "image.png" in caplog.text
    everything = c.train.tobytes() + c.val.tobytes()
    assert b"SECRET-MARKER" not in everything and b"PNG" not in everything
    assert (
        load_corpus(cfg_for(cache, name="text", path=str(tmp_path / "src")), SEQ).fingerprint == c.fingerprint
    )


def test_cache_is_reused_without_reading_sources(tmp_path, monkeypatch):
    make_text_dir(tmp_path / "src")
    cfg = cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"))
    first = load_corpus(cfg, SEQ)
    meta_mtime = (first.path / "meta.json").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("sources were read again")

    monkeypatch.setattr(data.load, "_prepare_text", boom)
    monkeypatch.setattr(Path, "read_bytes", boom)
    second = load_corpus(cfg, SEQ)
    assert second.fingerprint == first.fingerprint and second.path == first.path
    assert (second.path / "meta.json").stat().st_mtime_ns == meta_mtime
    assert np.array_equal(second.train, first.train)
    assert cache_entries(tmp_path / "cache") == [first.path.name]


def test_fingerprint_changes_when_a_source_changes(tmp_path):
    make_text_dir(tmp_path / "src")
    cfg = cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"))
    before = load_corpus(cfg, SEQ)
    with open(tmp_path / "src" / "sub0" / "doc000.txt", "ab") as f:
        f.write(b"an edit made after the first load\n")
    after = load_corpus(cfg, SEQ)
    assert after.fingerprint != before.fingerprint
    assert b"an edit made after the first load" in after.train.tobytes() + after.val.tobytes()
    assert cache_entries(tmp_path / "cache") == sorted([before.path.name, after.path.name])
    # The split settings are part of the fingerprint too.
    assert load_corpus(
        cfg_for(tmp_path / "cache", name="text", path=cfg.path, val_fraction=0.3), SEQ
    ).fingerprint not in {
        before.fingerprint,
        after.fingerprint,
    }


def test_concurrent_loads_prepare_one_folder(tmp_path):
    make_text_dir(tmp_path / "src", 60)
    cfg = cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"))
    results, errors = [], []

    def load():
        try:
            results.append(load_corpus(cfg, SEQ))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({c.fingerprint for c in results}) == 1 and len(results) == 6
    assert cache_entries(tmp_path / "cache") == [results[0].path.name]
    assert all(np.array_equal(c.train, results[0].train) for c in results)


def test_a_folder_renamed_into_place_first_wins(tmp_path):
    final = tmp_path / "text-0123456789abcdef"
    tmp_path.joinpath("winner").mkdir()

    def prepare(out: Path) -> dict:
        # Another process (one that got past the lock) finishes first.
        (tmp_path / "winner" / "meta.json").write_text('{"who": "winner"}')
        (tmp_path / "winner").rename(final)
        (out / "train.bin").write_bytes(b"loser")
        return {"who": "loser", "n_train": 5, "n_val": 0}

    data._prepare_once(final, prepare)
    assert json.loads((final / "meta.json").read_text()) == {"who": "winner"}
    assert cache_entries(tmp_path) == [final.name]


def test_a_killed_preparers_temp_folder_is_removed(tmp_path):
    make_text_dir(tmp_path / "src")
    cfg = cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "src"))
    fingerprint_folder = load_corpus(cfg, SEQ).path
    shutil.rmtree(fingerprint_folder)
    host = socket.gethostname()
    dead = tmp_path / "cache" / f".tmp-{fingerprint_folder.name}-{host}-4194305-abcd1234"  # > pid_max
    alive = tmp_path / "cache" / f".tmp-{fingerprint_folder.name}-{host}-{os.getpid()}-abcd1234"
    elsewhere = tmp_path / "cache" / f".tmp-{fingerprint_folder.name}-other-node-1-abcd1234"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"half written")
    assert load_corpus(cfg, SEQ).path == fingerprint_folder
    assert cache_entries(tmp_path / "cache") == sorted([fingerprint_folder.name, alive.name, elsewhere.name])


# --- batches --------------------------------------------------------------------------------------


def test_train_batch_shapes_shift_and_offsets(stdlib):
    x, y = stdlib.train_batch(step=7, batch_size=4, seq_len=64, seed=123)
    assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = np.random.default_rng([123, 7]).integers(0, len(stdlib.train) - 64, size=4)
    for row, s in enumerate(starts):
        assert np.array_equal(x[row].numpy(), stdlib.train[s : s + 64])
        assert np.array_equal(y[row].numpy(), stdlib.train[s + 1 : s + 65])


def test_train_batch_is_stateless(stdlib):
    a = stdlib.train_batch(5, 8, 32, seed=0)
    for step in range(5):  # anything drawn in between must not matter
        stdlib.train_batch(step, 8, 32, seed=0)
    torch.manual_seed(99)
    np.random.seed(99)
    b = stdlib.train_batch(5, 8, 32, seed=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], stdlib.train_batch(6, 8, 32, seed=0)[0])
    assert not torch.equal(a[0], stdlib.train_batch(5, 8, 32, seed=1)[0])


def test_val_batches_are_fixed_and_spread(stdlib):
    batches = stdlib.val_batches(batch_size=16, seq_len=128, n_tokens=10_000)
    n_windows = math.ceil(10_000 / 128)
    assert [len(x) for x, _ in batches] == [16] * (n_windows // 16) + [n_windows % 16]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.dtype == torch.int64 and torch.equal(xs[:, 1:], ys[:, :-1])
    assert np.array_equal(xs[0].numpy(), stdlib.val[:128])  # spread from the very start ...
    n_slots = (len(stdlib.val) - 1) // 128
    last = (n_windows - 1) * n_slots // n_windows * 128  # ... to the end of the val split
    assert last > 0.9 * len(stdlib.val)
    assert np.array_equal(xs[-1].numpy(), stdlib.val[last : last + 128])
    stdlib.train_batch(3, 4, 128, seed=42)
    torch.manual_seed(1)
    again = stdlib.val_batches(batch_size=16, seq_len=128, n_tokens=10_000)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True)
    )


def test_val_batches_use_all_windows_of_a_short_val(tmp_path):
    content = b"".join(text_file(i) for i in range(6))
    (tmp_path / "one.txt").write_bytes(content)
    c = load_corpus(cfg_for(tmp_path / "cache", name="text", path=str(tmp_path / "one.txt")), SEQ)
    batches = c.val_batches(batch_size=4, seq_len=SEQ, n_tokens=10**9)
    n_windows = (len(c.val) - 1) // SEQ
    ys = torch.cat([y for _, y in batches])
    assert len(ys) == n_windows
    # Non-overlapping targets that tile the val split from its start.
    assert np.array_equal(ys.flatten().numpy(), c.val[1 : 1 + n_windows * SEQ])


# --- tokens ---------------------------------------------------------------------------------------


def test_tokens_uint16_with_val_shard(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 5000), rng.integers(0, 50257, 800)
    (tmp_path / "toks").mkdir()
    write_shard(tmp_path / "toks" / "train.bin", train, "uint16")
    write_shard(tmp_path / "toks" / "val.bin", val, "uint16")
    cfg = cfg_for(tmp_path / "cache", name="tokens", path=str(tmp_path / "toks"), vocab_size=50257)
    c = load_corpus(cfg, SEQ)
    assert c.train.dtype == np.uint16 and c.description["dtype"] == "uint16" and c.vocab_size == 50257
    assert np.array_equal(c.train, train) and np.array_equal(c.val, val)
    assert c.description["split"] == "val_shards" and c.description["files"] == {
        "train": 1,
        "val": 1,
        "skipped": 0,
    }
    x, y = c.train_batch(0, 2, SEQ, seed=0)
    assert x.dtype == torch.int64 and int(x.max()) < 50257


def test_tokens_uint32_tail_split_across_shards(tmp_path):
    tokens = np.arange(100_000, 100_000 + 3000) * 3
    (tmp_path / "toks").mkdir()
    write_shard(tmp_path / "toks" / "shard_001.bin", tokens[1000:], "uint32")
    write_shard(tmp_path / "toks" / "shard_000.bin", tokens[:1000], "uint32")
    cfg = cfg_for(
        tmp_path / "cache", name="tokens", path=str(tmp_path / "toks"), vocab_size=2**20, token_dtype="uint32"
    )
    c = load_corpus(cfg, SEQ)
    n_val = int(3000 * 0.05)
    assert c.train.dtype == np.uint32
    assert np.array_equal(c.train, tokens[:-n_val]) and np.array_equal(c.val, tokens[-n_val:])
    assert c.description["split"] == "tail_of_tokens"


@pytest.mark.parametrize("version,dtype", [(1, "uint16"), (2, "uint32")])
def test_tokens_llmc_header(tmp_path, version, dtype):
    rng = np.random.default_rng(version)
    train, val = rng.integers(0, 60000, 4000), rng.integers(0, 60000, 500)
    (tmp_path / "toks").mkdir()
    write_shard(tmp_path / "toks" / "fineweb_train_000001.bin", train, dtype, llmc_version=version)
    write_shard(tmp_path / "toks" / "fineweb_val_000000.bin", val, dtype, llmc_version=version)
    # token_dtype is left at uint16: the header decides.
    c = load_corpus(
        cfg_for(tmp_path / "cache", name="tokens", path=str(tmp_path / "toks"), vocab_size=60000), SEQ
    )
    assert c.train.dtype == np.dtype(dtype) and c.description["dtype"] == dtype
    assert np.array_equal(c.train, train) and np.array_equal(c.val, val)


# --- errors ---------------------------------------------------------------------------------------


def _bad_text_dir(tmp_path: Path) -> str:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.dat").write_bytes(b"\x00\x01\x02" * 100)
    return str(tmp_path / "bin")


def _empty_dir(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _tiny_file(tmp_path: Path) -> str:
    (tmp_path / "tiny.txt").write_bytes(b"hello world\n" * 3)
    return str(tmp_path / "tiny.txt")


def _short_val_file(tmp_path: Path) -> str:
    (tmp_path / "short.txt").write_bytes(text_file(0, 200)[:3000])  # 5% of it is 150 bytes < SEQ+1=257
    return str(tmp_path / "short.txt")


def _latin1_file(tmp_path: Path) -> str:
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 100)
    return str(tmp_path / "latin1.txt")


def _shards(tmp_path: Path, **shards: tuple[np.ndarray, str, int | None]) -> str:
    (tmp_path / "toks").mkdir()
    for name, (tokens, dtype, version) in shards.items():
        write_shard(tmp_path / "toks" / f"{name}.bin", tokens, dtype, version)
    return str(tmp_path / "toks")


def _prepared_bytes(tmp_path: Path, tokens: np.ndarray) -> str:
    """A hand-made `modexp prepare` folder (bytes tokenizer, vocab 256) holding the given ids."""
    path = _shards(tmp_path, train=(tokens, "uint16", None))
    tok = {"spec": "bytes", "kind": "bytes", "file": None, "vocab_size": 256, "eot_id": 0}
    meta = {"format": "modexp-tokens", "vocab_size": 256, "dtype": "uint16", "tokenizer": tok}
    (Path(path) / "meta.json").write_text(json.dumps({**meta, "shards": {"train.bin": len(tokens)}}))
    return path


def _odd_sized_shard(tmp_path: Path) -> str:
    (tmp_path / "toks").mkdir()
    (tmp_path / "toks" / "train.bin").write_bytes(b"\x01\x00" * 1000 + b"\x01")
    return str(tmp_path / "toks")


def _truncated_llmc(tmp_path: Path) -> str:
    path = _shards(tmp_path, train=(np.arange(1000), "uint16", 1))
    with open(Path(path) / "train.bin", "r+b") as f:
        f.truncate(1024 + 1000)
    return path


TOKS = np.arange(2000) % 200

ERROR_CASES = {
    # id: (config overrides, path factory or None, seq_len, strings the message must hold)
    "unknown name": ({"name": "wiki"}, None, SEQ, ["data.name='wiki'", "stdlib, text, tokens"]),
    "unknown dtype": (
        {"name": "tokens", "token_dtype": "int8"},
        None,
        SEQ,
        ["data.token_dtype='int8'", "uint16"],
    ),
    "text without path": ({"name": "text"}, None, SEQ, ["data.path is not set", "text"]),
    "tokens without path": ({"name": "tokens"}, None, SEQ, ["data.path is not set", "*.bin"]),
    "val_fraction 0": ({"val_fraction": 0.0}, None, SEQ, ["data.val_fraction=0.0"]),
    "val_fraction 1.5": ({"val_fraction": 1.5}, None, SEQ, ["data.val_fraction=1.5"]),
    "byte vocab too small": ({"vocab_size": 100}, None, SEQ, ["data.vocab_size=100", ">= 256"]),
    "bad seq_len": ({}, None, 0, ["seq_len=0"]),
    "missing text path": ({"name": "text"}, lambda p: str(p / "nope"), SEQ, ["nope", "does not exist"]),
    "missing tokens path": ({"name": "tokens"}, lambda p: str(p / "nope"), SEQ, ["nope", "does not exist"]),
    "empty text dir": ({"name": "text"}, _empty_dir, SEQ, ["empty", "no UTF-8 text"]),
    "only binary files": ({"name": "text"}, _bad_text_dir, SEQ, ["bin", "1 skipped"]),
    "single non-UTF-8 file": ({"name": "text"}, _latin1_file, SEQ, ["latin1.txt", "not UTF-8"]),
    "train too small": ({"name": "text"}, _tiny_file, 256, ["tiny.txt", "seq_len=256", "training"]),
    "val too small": ({"name": "text"}, _short_val_file, 256, ["short.txt", "seq_len=256", "validation"]),
    "stdlib too small": ({}, None, 10**9, ["data.name=stdlib", "seq_len=1000000000"]),
    "no shards": ({"name": "tokens"}, _empty_dir, SEQ, ["empty", "no *.bin shards"]),
    "empty shards": (
        {"name": "tokens"},
        lambda p: _shards(p, train=(TOKS[:0], "uint16", None)),
        SEQ,
        ["no tokens"],
    ),
    "token >= vocab": (
        {"name": "tokens", "vocab_size": 150},
        lambda p: _shards(p, train=(TOKS, "uint16", None)),
        SEQ,
        ["train.bin", "token id 199", "data.vocab_size=150"],
    ),
    "prepared token >= vocab": (
        {"name": "tokens", "vocab_size": 256},
        lambda p: _prepared_bytes(p, np.arange(2000) % 300),
        SEQ,
        ["train.bin", "token id 299", "data.vocab_size=256", "prepare the corpus again"],
    ),
    "only val shards": (
        {"name": "tokens"},
        lambda p: _shards(p, val=(TOKS, "uint16", None)),
        SEQ,
        ["only validation"],
    ),
    "odd-sized shard": ({"name": "tokens"}, _odd_sized_shard, SEQ, ["train.bin", "2001 bytes", "uint16"]),
    "truncated llm.c shard": ({"name": "tokens"}, _truncated_llmc, SEQ, ["train.bin", "1000 uint16 tokens"]),
    "mixed dtypes": (
        {"name": "tokens"},
        lambda p: _shards(p, a=(TOKS, "uint16", 1), b=(TOKS, "uint32", 2)),
        SEQ,
        ["uint16", "uint32"],
    ),
    "unknown llm.c version": (
        {"name": "tokens"},
        lambda p: _shards(p, train=(TOKS, "uint16", 3)),
        SEQ,
        ["version 3"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_errors_name_the_value_and_leave_no_cache(tmp_path, case):
    overrides, make_path, seq_len, needles = ERROR_CASES[case]
    if make_path is not None:
        overrides = {**overrides, "path": make_path(tmp_path)}
    cache = tmp_path / "cache"
    with pytest.raises(ModexpError) as info:
        load_corpus(cfg_for(cache, **overrides), seq_len)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    assert cache_entries(cache) == []


def test_seq_len_too_long_for_a_cached_corpus_keeps_the_cache(tmp_path):
    path = _short_val_file(tmp_path)
    ok = load_corpus(cfg_for(tmp_path / "cache", name="text", path=path), SEQ)
    with pytest.raises(ModexpError, match="seq_len=256"):
        load_corpus(cfg_for(tmp_path / "cache", name="text", path=path), 256)
    assert cache_entries(tmp_path / "cache") == [ok.path.name]
    with pytest.raises(ModexpError, match="seq_len=4096"):
        ok.train_batch(0, 2, 4096, seed=0)
