"""`modexp prepare`: sources, tokenizers, llm.c shards with meta.json, atomic output, one-line refusals; and
training and sampling on what it writes (vocab from meta.json, text decoded by the run's tokenizer)."""

from __future__ import annotations

import json
import os
import socket
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from modexp import data, prepare
from modexp.data import LLMC_HEADER_BYTES, LLMC_MAGIC, DataConfig, load_corpus
from modexp.errors import ModexpError
from modexp.tokenizer import for_data

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "sweep=smoke", "budget=3e10"]


def stdlib_docs(n: int = 40) -> list[str]:
    """Real, varied text (Python sources) without a download: enough for a BPE to find 1024 tokens."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(errors="replace") for p in sorted(root.glob("*.py"))[:n]]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    with open(path, "w") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, field: doc}) + "\n")
    return path


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    header = np.fromfile(path, dtype="<i4", count=256)
    dtype = {1: "<u2", 2: "<u4"}[int(header[1])]
    return header, np.fromfile(path, dtype=dtype, offset=LLMC_HEADER_BYTES)


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything a prepare of parent/name left beside it: the folder, temporary folders, lock files."""
    return sorted(p.name for p in parent.iterdir() if name in p.name)


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("jsonl")
    source = write_jsonl(root / "docs.jsonl", stdlib_docs())
    meta = prepare.prepare(str(source), "bpe:1024", root / "out")
    return root / "out", meta


def test_jsonl_with_bpe_writes_llmc_shards_tokenizer_and_meta(jsonl_corpus) -> None:
    out, meta = jsonl_corpus
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["format"] == "modexp-tokens" and meta["vocab_size"] == 1024 and meta["dtype"] == "uint16"
    assert meta["tokenizer"]["spec"] == "bpe:1024" and (out / "tokenizer.json").is_file()
    assert meta["source"]["kind"] == "json" and meta["source"]["text_field"] == "text"
    assert meta["split"] == "by_document_sha1" and meta["documents"]["val"] >= 1
    assert sorted(os.listdir(out)) == sorted(["meta.json", "tokenizer.json", *meta["shards"]])
    eot = meta["eot_id"]
    total = 0
    for name, count in meta["shards"].items():
        header, ids = read_shard(out / name)
        assert header[0] == LLMC_MAGIC and header[1] == 1 and header[2] == count == len(ids)
        assert int(ids.max()) < meta["vocab_size"]
        total += count
    assert total == sum(meta["tokens"].values())
    # Every document ends with end-of-text: as many as there are documents.
    n_eot = sum(int((read_shard(out / name)[1] == eot).sum()) for name in meta["shards"])
    assert n_eot == meta["documents"]["train"] + meta["documents"]["val"]
    # The tokens decode back to the documents, in order, each closed by end-of-text.
    tok = for_data("tokens", str(out))
    ids = read_shard(out / "train_000000.bin")[1].tolist()
    ends = [i for i, t in enumerate(ids) if t == eot][:3]
    train_docs = [d for d in stdlib_docs() if not prepare._in_val(d, 0.05)]
    for k, (start, end) in enumerate(zip([-1, *ends], ends)):
        assert tok.decode(ids[start + 1 : end]) == train_docs[k]


def test_train_without_vocab_override_then_sample_prints_subword_text(jsonl_corpus, tmp_path, capsys) -> None:
    """The issue's must-show: prepare (above), train with data=tokens data.path=DIR and no vocab, sample."""
    out, meta = jsonl_corpus
    runs = tmp_path / "runs"
    args = ["train", *TINY, "model.routing=topk", "data=tokens", f"data.path={out}", f"runs_dir={runs}"]
    rc, _, err = run_main(args, capsys)
    assert rc == 0, err
    (run_dir,) = [p for p in (runs / "smoke").iterdir() if p.is_dir()]
    config = (run_dir / "config.yaml").read_text()
    assert "vocab_size: 1024" in config  # from meta.json, no override given
    rc, text, err = run_main(["sample", str(run_dir), "--prompt", "def ", "--max-new-tokens", "30"], capsys)
    assert rc == 0, err
    assert text.startswith("def ") and len(text) > 30  # subword pieces: more characters than tokens
    rc, shown, err = run_main(["sample", str(run_dir), "--max-new-tokens", "20", "--show-routing"], capsys)
    assert rc == 0 and "block 1 |" in shown, err
    sample = json.loads((run_dir / "routing_sample.json").read_text())
    assert sample["tokenizer"] == "bpe:1024" and len(sample["pieces"]) == len(sample["tokens"])
    assert any(len(piece) > 1 for piece in sample["pieces"])  # subwords, not bytes
    # The shards were read where they lie: the data cache holds only their check, no copy.
    cached = [p for p in (runs / "_data").rglob("*") if p.is_file()]
    assert [p.name for p in cached] == ["meta.json"]


def test_an_explicit_vocab_that_disagrees_is_refused(jsonl_corpus, tmp_path, capsys) -> None:
    out, _ = jsonl_corpus
    args = ["plan", "sweep=smoke", "data=tokens", f"data.path={out}", "data.vocab_size=50257"]
    rc, _, err = run_main([*args, f"runs_dir={tmp_path}"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "data.vocab_size=50257 disagrees" in err and "1024" in err
    assert not list(tmp_path.iterdir())
    # The same value as meta.json's is fine, and a preset's vocab (paper: 32000) gives way to meta.json.
    rc, _, err = run_main(["plan", *args[:-1], "data.vocab_size=1024", f"runs_dir={tmp_path}"], capsys)
    assert "disagrees" not in err
    rc, _, err = run_main(["plan", "sweep=paper", f"data.path={out}", f"runs_dir={tmp_path}"], capsys)
    assert "disagrees" not in err


def test_preparing_again_is_a_no_op_and_another_corpus_is_refused(jsonl_corpus, capsys) -> None:
    out, meta = jsonl_corpus
    source = Path(meta["source"]["path"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare.prepare(str(source), "bpe:1024", out) == meta
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    rc, _, err = run_main(["prepare", str(source), "--tokenizer", "bpe:512", "--out", str(out)], capsys)
    assert rc == 2 and "already holds a different corpus" in err and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "case",
    [
        "missing text field",
        "empty source",
        "no tokenizer file",
        "vocab beyond uint32",
        "bpe too small",
        "no source",
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, case) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", ["hello world " * 50] * 30)
    argv = {
        "missing text field": [str(source), "--tokenizer", "bytes", "--text-field", "body"],
        "empty source": [str(write_jsonl(tmp_path / "empty.jsonl", [])), "--tokenizer", "bytes"],
        "no tokenizer file": [str(source), "--tokenizer", str(tmp_path / "nope" / "tokenizer.json")],
        "vocab beyond uint32": [str(source), "--tokenizer", f"bpe:{2**32 + 1}"],
        "bpe too small": [str(source), "--tokenizer", "bpe:100"],
        "no source": [str(tmp_path / "missing.jsonl"), "--tokenizer", "bytes"],
    }[case]
    expected = {
        "missing text field": ["no text field 'body'", "id, text", "--text-field"],
        "empty source": ["holds no text"],
        "no tokenizer file": ["does not exist", "tokenizer.json"],
        "vocab beyond uint32": [f"bpe:{2**32 + 1}", "uint32"],
        "bpe too small": ["bpe:100", "257"],
        "no source": ["missing.jsonl does not exist"],
    }[case]
    rc, out, err = run_main(["prepare", *argv, "--out", str(tmp_path / "out")], capsys)
    assert rc == 2, (out, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("modexp: error: ") and "Traceback" not in err
    for words in expected:
        assert words in line, (words, line)
    assert leftovers(tmp_path, "out") == []


def test_a_failure_mid_way_leaves_nothing_and_a_killed_prepares_folder_is_removed(
    tmp_path, monkeypatch
) -> None:
    source = write_jsonl(tmp_path / "docs.jsonl", stdlib_docs(8))
    calls = []

    def fail_after_one(self, texts):
        calls.append(len(texts))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "BATCH_DOCUMENTS", 2)
    monkeypatch.setattr("modexp.tokenizer.ByteTokenizer.encode_batch", fail_after_one)
    with pytest.raises(OSError):
        prepare.prepare(str(source), "bytes", tmp_path / "out")
    assert calls and leftovers(tmp_path, "out") == []
    monkeypatch.undo()
    # A prepare killed (SIGKILL) mid-way leaves its temporary folder; the next one removes it and finishes.
    dead = tmp_path / f".tmp-out-{socket.gethostname()}-{2**22 + 12345}-abcd"
    dead.mkdir()
    (dead / "train_000000.bin").write_bytes(b"half")
    meta = prepare.prepare(str(source), "bytes", tmp_path / "out")
    assert leftovers(tmp_path, "out") == ["out"] and meta["vocab_size"] == 256


def test_text_folder_stdlib_and_a_tail_split(tmp_path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, doc in enumerate(stdlib_docs(12)):
        (folder / f"{i}.txt").write_text(doc)
    (folder / "blob.bin").write_bytes(b"\x00\xff" * 100)  # binary: skipped
    meta = prepare.prepare(str(folder), "bytes", tmp_path / "bytes")
    assert meta["source"]["kind"] == "text" and meta["documents"]["skipped"] == 1
    assert meta["eot_id"] == 0 and meta["vocab_size"] == 256
    # One document cannot be split by document: the last val_fraction of its tokens is val.
    (tmp_path / "one.txt").write_text(stdlib_docs(1)[0])
    meta = prepare.prepare(str(tmp_path / "one.txt"), "bytes", tmp_path / "one", val_fraction=0.1)
    assert meta["split"] == "tail_of_tokens"
    total = sum(meta["tokens"].values())
    assert meta["tokens"]["val"] == int(total * 0.1)
    train = read_shard(tmp_path / "one" / "train_000000.bin")[1]
    val = read_shard(tmp_path / "one" / "val_000000.bin")[1]
    assert bytes(np.concatenate([train, val]).astype(np.uint8)) == (tmp_path / "one.txt").read_bytes() + b"\0"
    # The embedded corpus, cut short, in several shards.
    meta = prepare.prepare("stdlib", "bytes", tmp_path / "std", limit_tokens=50_000, shard_tokens=20_000)
    assert sum(meta["tokens"].values()) == 50_000 and meta["source"]["kind"] == "stdlib"
    assert len([s for s in meta["shards"] if s.startswith("train_")]) >= 2


def test_parquet_and_a_tokenizer_file_with_a_uint32_vocabulary(tmp_path) -> None:
    import pandas as pd
    from tokenizers import Tokenizer, models, pre_tokenizers

    docs = [" ".join(f"w{(i * 7 + j) % 70_000}" for j in range(300)) for i in range(60)]
    pd.DataFrame({"content": docs}).to_parquet(tmp_path / "docs.parquet")
    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000, "</s>": 70_001}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    meta = prepare.prepare(
        str(tmp_path / "docs.parquet"),
        str(tmp_path / "tokenizer.json"),
        tmp_path / "out",
        text_field="content",
    )
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_002 and meta["eot_id"] == 70_001
    header, ids = read_shard(tmp_path / "out" / "train_000000.bin")
    assert header[1] == 2 and ids.max() >= 2**16  # version 2: uint32 ids
    corpus = load_corpus(
        DataConfig(
            name="tokens", path=str(tmp_path / "out"), vocab_size=70_002, cache_dir=str(tmp_path / "cache")
        ),
        64,
    )
    assert corpus.train.dtype == np.uint32 and len(corpus.train) == meta["tokens"]["train"]


def test_raw_shards_are_read_in_place(tmp_path) -> None:
    """nanoGPT/llm.c shards made elsewhere: memory-mapped where they lie, never copied under runs/."""
    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 50_000, 3000).astype("<u2") for _ in range(3)]
    for i, part in enumerate(parts):
        part.tofile(shards / f"train_{i}.bin")
    cfg = DataConfig(
        name="tokens", path=str(shards), vocab_size=50_257, cache_dir=str(tmp_path / "runs" / "_data")
    )
    corpus = load_corpus(cfg, 64)
    every = np.concatenate(parts)
    n_val = int(len(every) * cfg.val_fraction)
    assert np.array_equal(np.asarray(corpus.train), every[:-n_val])
    assert np.array_equal(np.asarray(corpus.val), every[-n_val:])
    assert all(isinstance(a, np.memmap) and Path(a.filename).parent == shards for a in corpus.train.shards)
    cached = sum(p.stat().st_size for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert cached < 4096  # the check's meta.json only
    # Windows that cross a shard boundary read both shards.
    assert np.array_equal(corpus.train[2990:3010], every[2990:3010])


def test_edited_prepared_shards_are_refused(jsonl_corpus, tmp_path) -> None:
    out, meta = jsonl_corpus
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "val_000000.bin").unlink()
    cfg = DataConfig(name="tokens", path=str(copy), vocab_size=1024, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModexpError, match="do not match its meta.json"):
        data.load_corpus(cfg, 64)


def test_hub_datasets_go_through_the_same_streamed_call_as_local_files(tmp_path, monkeypatch) -> None:
    """Nothing is downloaded here: the hub call is intercepted, and must be the local files' call."""
    import datasets

    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] == "org/corpus":
            return iter([{"text": doc} for doc in stdlib_docs(6)])
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    meta = prepare.prepare("hf:org/corpus:en@validation", "bytes", tmp_path / "hub")
    assert meta["source"] == {
        "spec": "hf:org/corpus:en@validation",
        "kind": "huggingface",
        "name": "org/corpus",
        "config": "en",
        "split": "validation",
        "text_field": "text",
    }
    source = write_jsonl(tmp_path / "docs.jsonl", stdlib_docs(6))
    local = prepare.prepare(str(source), "bytes", tmp_path / "local")
    (hub_args, hub_kwargs), (local_args, local_kwargs) = calls
    assert hub_args == ("org/corpus", "en") and local_args == ("json",)
    assert hub_kwargs == {"split": "validation", "streaming": True}
    assert local_kwargs == {"data_files": [str(source)], "split": "train", "streaming": True}
    assert meta["tokens"] == local["tokens"] and meta["fingerprint"] == local["fingerprint"]  # same documents
    with pytest.raises(ModexpError, match="names no dataset"):
        prepare.prepare("hf:", "bytes", tmp_path / "none")
