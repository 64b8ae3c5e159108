"""Bad input is refused before anything is written: names that would escape runs_dir, numbers out of range,
budgets that are not finite; and what a run writes is strict JSON (issue 15, first part)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from modexp.rundir import strict_json, write_json


def modexp(runs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modexp.cli", *args, f"runs_dir={runs}"],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("sweep.name=../escaped", "sweep.name='../escaped' is not allowed"),
        ("sweep.name=/tmp/abs", "sweep.name='/tmp/abs' is not allowed"),
        ("sweep.name=a/b", "sweep.name='a/b' is not allowed"),
        ("sweep.name=", "sweep.name='' is not allowed"),
        ("sweep.name=_data", "sweep.name='_data' is not allowed"),
        ("variant=../../x", "variant='../../x' is not allowed"),
        ("train.grad_clip=-1", "train.grad_clip=-1.0 is not allowed"),
        ("train.beta1=1", "train.beta1=1.0 is not allowed"),
        ("train.beta2=-0.5", "train.beta2=-0.5 is not allowed"),
        ("train.weight_decay=-0.1", "train.weight_decay=-0.1 is not allowed"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio=1.5 is not allowed"),
        ("train.warmup_fraction=-0.1", "train.warmup_fraction=-0.1 is not allowed"),
        ("seed=-3", "seed=-3 is not allowed"),
        ("budget=inf", "budget=inf is not allowed"),
        ("sweep.budgets=[1e10,inf]", "sweep.budgets contains inf"),
        ("sweep.min_tokens_per_param=600", "is not below sweep.max_tokens_per_param"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "train"])
def test_bad_values_are_one_line_and_write_nothing(
    tmp_path: Path, command: str, override: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["budget=1e10"] if command == "train" and not override.startswith("budget") else []
    rc, out, err = run_main(
        [command, "sweep=smoke", *extra, override, f"runs_dir={tmp_path / 'runs'}"], capsys
    )
    assert rc == 2, err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def test_train_applies_the_sweep_limits(tmp_path: Path) -> None:
    out = modexp(tmp_path / "runs", "train", "sweep=smoke", "budget=1e30")
    assert out.returncode == 2 and "tokens/param > sweep.max_tokens_per_param" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_json_written_by_runs_is_strict(tmp_path: Path) -> None:
    data = {
        "val_loss": float("nan"),
        "step_time": np.float64("inf"),
        "losses": np.array([1.0, np.nan]),
        "ok": 2,
    }
    write_json(tmp_path / "summary.json", data)
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert back == {"val_loss": None, "step_time": None, "losses": [1.0, None], "ok": 2}
    assert json.loads(strict_json({"x": math.nan})) == {"x": None}


def _bytes_corpus(folder: Path, **tokenizer: object) -> Path:
    """A hand-made `modexp prepare` folder (bytes, vocab 256), its tokenizer entry changed by `tokenizer`
    (a value of None drops the key)."""
    folder.mkdir()
    ids = np.frombuffer(b"def f(x):\n    return x + 1\n" * 400, dtype=np.uint8).astype("<u2")
    ids.tofile(folder / "train.bin")
    ids[:2000].tofile(folder / "val.bin")
    tok = {"spec": "bytes", "kind": "bytes", "file": None, "vocab_size": 256, "eot_id": 0} | tokenizer
    meta = {
        "format": "modexp-tokens",
        "vocab_size": 256,
        "dtype": "uint16",
        "shards": {"train.bin": len(ids), "val.bin": 2000},
        "tokenizer": {k: v for k, v in tok.items() if v is not None},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


TINY_MOD = [
    "train",
    "sweep=smoke",
    "budget=1.5e9",
    "model.d_model=16",
    "model.n_heads=2",
    "model.routing=topk",
]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"kind": None}, "records tokenizer kind None"),
        ({"kind": "sentencepiece"}, "records tokenizer kind 'sentencepiece'"),
        ({"spec": 7}, "records tokenizer spec 7"),
        ({"vocab_size": 50257}, "records a tokenizer of vocab_size=50257 for a corpus of vocab_size=256"),
        ({"vocab_size": "256"}, "vocab_size='256'"),
        ({"kind": "tokenizers", "file": "tokenizer.json"}, "'tokenizer.json', which is not in"),
        ({"eot_id": 999}, "end-of-text id 999"),
        ("bytes", "has tokenizer='bytes'"),
    ],
)
def test_a_malformed_tokenizer_entry_is_refused_before_training(
    tmp_path: Path, entry: object, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 25: such an entry crashed the run after its last step (no summary, state "running")."""
    corpus = _bytes_corpus(tmp_path / "toks")
    if isinstance(entry, dict):
        corpus = _bytes_corpus(tmp_path / "toks2", **entry)
    else:  # the whole entry of the wrong type
        meta = json.loads((corpus / "meta.json").read_text())
        (corpus / "meta.json").write_text(json.dumps({**meta, "tokenizer": entry}))
    runs = tmp_path / "runs"
    rc, out, err = run_main([*TINY_MOD, "data=tokens", f"data.path={corpus}", f"runs_dir={runs}"], capsys)
    assert rc == 2, err
    assert says in err and "meta.json" in err and "prepare the corpus again" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not list(runs.glob("smoke/*/"))  # nothing trained, no run folder


def test_a_tokenizer_that_fails_to_decode_at_the_end_keeps_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The corpus's tokenizer loads but raises when decoding the routing sample: a warning, and the run ends."""
    from modexp import tokenizer as tokenizers

    def broken(self: object, ids: object) -> str:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(tokenizers.ByteTokenizer, "decode", broken)
    corpus = _bytes_corpus(tmp_path / "toks")
    runs = tmp_path / "runs"
    rc, _, err = run_main([*TINY_MOD, "data=tokens", f"data.path={corpus}", f"runs_dir={runs}"], capsys)
    assert rc == 0, err
    (run_dir,) = runs.glob("smoke/*/")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert (run_dir / "summary.json").is_file()
    sample = json.loads((run_dir / "routing_sample.json").read_text())
    assert sample["tokenizer"] is None and sample["text"] == "" and len(sample["tokens"]) == 64
    assert (
        "does not decode its tokens (RuntimeError: decoder exploded)" in (run_dir / "train.log").read_text()
    )
