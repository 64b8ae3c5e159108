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


# --- every number has a range (issue 25) -------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_cfg():
    from modexp.config import compose_config, to_typed

    return to_typed(compose_config(["sweep=smoke", "train.lr_law={baseline:{coefficient:1,exponent:0}}"]))


def test_every_numeric_setting_has_a_range(smoke_cfg) -> None:
    """A number added to a schema without a range fails here, so none arrives unchecked."""
    from modexp.ranges import RANGES, UNRANGED, numeric_fields

    known = {**RANGES, **{f"model.{k}": r for k, r in _model_ranges().items()}}
    missing = {p for _, p, _ in numeric_fields(smoke_cfg) if p not in known and p not in UNRANGED}
    assert not missing, f"give these a range in RANGES: {sorted(missing)}"
    for _, pattern, value in numeric_fields(smoke_cfg):  # the defaults lie inside their own ranges
        assert known[pattern].allows(value), (pattern, value)


def _model_ranges() -> dict:
    """Every registered kind's ranges (each kind's config class keeps its own settings')."""
    from modexp import variants

    return {k: r for record in variants.records() for k, r in record.config.ranges().items()}


def _set(obj, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(getattr(obj, last), list):
        value = [value]
    setattr(obj, last, value)


BAD = [0, -1, 0.5, math.nan, math.inf, -math.inf, 1e308]  # text and booleans: the typed schema refuses them


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_every_setting_refuses_what_its_range_does_not_hold(smoke_cfg, bad) -> None:
    """Each key in the tables, given values outside its range: one line naming the key and the value."""
    import copy
    from dataclasses import asdict

    from modexp import variants
    from modexp.config import check
    from modexp.errors import ModexpError
    from modexp.ranges import RANGES

    for key, rule in RANGES.items():
        if rule.allows(bad):
            continue
        cfg = copy.deepcopy(smoke_cfg)
        _set(cfg, key.replace("*", "baseline"), bad)
        with pytest.raises(ModexpError) as caught:
            check(cfg)
        assert key.replace("*", "baseline").split(".")[-1] in str(caught.value), (key, str(caught.value))
    for key, rule in _model_ranges().items():
        if rule.allows(bad):
            continue
        fields = {**asdict(smoke_cfg.model), key: bad}
        with pytest.raises(ValueError, match=f"{key}=.* is not allowed"):
            variants.settings_class()(**fields)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("model.init_std=0", "model.init_std=0.0 is not allowed: it must be a number in (0, 1]"),
        ("model.rope_base=nan", "model.rope_base=nan is not allowed"),
        ("model.aux_loss_weight=-1", "model.aux_loss_weight=-1.0 is not allowed"),
        ("sweep.lr_grid=[3e-3,inf]", "sweep.lr_grid"),
        ("train.lr_law={mod:{coefficient:-1,exponent:0}}", "train.lr_law.mod"),
        ("launcher.workers=-2", "launcher.workers=-2 is not allowed"),
        ("sweep.ladder.aspect_ratio=0", "sweep.ladder.aspect_ratio=0.0 is not allowed"),
        ("sweep.ladder.head_dim=0", "sweep.ladder.head_dim=0 is not allowed"),
        ("sweep.ladder.widths=[16,0]", "sweep.ladder.widths[1]=0 is not allowed"),
        ("sweep.tokens_per_param=1e308", "sweep.tokens_per_param=1e+308 is not allowed"),
        ("model.d_model=1000000000", "model.d_model=1000000000 is not allowed"),
    ],
)
def test_the_reported_gaps_are_one_line(
    tmp_path: Path, override: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["plan", "sweep=smoke", override, f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


# --- read-only study folders, disk full from torch.save, sample/prepare flags (issue 25) ---------------


def test_status_reads_locks_without_write_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`modexp status` on a folder it may not write: a free lock reads free, a held one reads held."""
    import fcntl

    from modexp import rundir

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").touch()
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & write_flags:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    holder = real_open(run / ".lock", os.O_RDWR)
    monkeypatch.setattr(rundir.os, "open", read_only)
    for state in ("running", "interrupted", "planned"):
        monkeypatch.setattr(rundir, "read_status", lambda d, s=state: {"state": s})
        assert rundir.run_state(run) == ("interrupted" if state == "running" else state)
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert rundir.run_state(run) == "running"
        fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    assert not rundir.RunLock(tmp_path / "nolock").held_elsewhere()


def test_analyze_with_out_writes_nothing_into_the_sweep(tmp_path: Path) -> None:
    from fixtures_results import make_sweep

    from modexp.analysis import analyze

    sweep = make_sweep(tmp_path / "runs", budgets=(1e11, 1e12), unbracketed_budget=None)
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*")}
    out = tmp_path / "elsewhere"
    analyze(sweep_dir=sweep, out=out, n_boot=20, figures=False)
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*")} == before
    assert (out / "results.csv").exists()


@pytest.mark.parametrize(
    "message",
    [
        "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: "
        "file write failed",
        "PytorchStreamWriter failed writing file version: No space left on device",
        "unexpected pos 1600 vs 1536 ... errno 28",
        "Disk quota exceeded while writing",
    ],
)
def test_torch_save_out_of_space_is_the_disk_full_path(
    tmp_path: Path, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modexp import rundir

    monkeypatch.setattr(rundir, "_space_left", lambda folder: 4096.0)  # the folder's disk is full

    def save(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError(message)

    with pytest.raises(rundir.DiskFull, match="no space left on the device"):
        rundir.atomic_write(tmp_path / "last.pt", save)
    assert list(tmp_path.iterdir()) == []  # the temporary is gone


def test_other_torch_save_errors_stay_what_they_are(tmp_path: Path) -> None:
    from modexp import rundir

    def save(tmp: Path) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    with pytest.raises(RuntimeError, match="file write failed"):  # the disk has room: not a full disk
        rundir.atomic_write(tmp_path / "last.pt", save)
    assert not rundir.is_disk_full(ValueError("No space left"))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--max-new-tokens", "1e11"],
            "--max-new-tokens=1e+11 is not allowed: give a whole number in [0, 100000]",
        ),
        (["--max-new-tokens", "nan"], "--max-new-tokens=nan is not allowed"),
        (["--max-new-tokens", "2.5"], "--max-new-tokens=2.5 is not allowed"),
        (["--temperature", "nan"], "--temperature=nan is not allowed"),
        (["--temperature", "inf"], "--temperature=inf is not allowed"),
        (["--temperature", "-1"], "--temperature=-1.0 is not allowed"),
        (["--top-k", "0"], "--top-k=0 is not allowed"),
    ],
)
def test_sample_flags_are_refused_before_the_model_loads(
    tmp_path: Path, args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["sample", str(tmp_path / "no-such-run"), *args], capsys)
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag", ["--limit-tokens", "--shard-tokens"])
@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "1e30", "2.5"])
def test_prepare_counts_are_refused_in_one_line(
    tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = run_main(
        ["prepare", "stdlib", "--tokenizer", "bytes", "--out", str(out_dir), flag, value], capsys
    )
    assert rc == 2 and f"{flag} " in err and "is not allowed" in err and len(err.strip().splitlines()) == 1, (
        err
    )
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "said",
    ["sbatch: error: Batch job submission failed: Invalid account or account/partition combination", ""],
)
def test_a_refused_sbatch_is_one_line_and_timeouts_keep_requeueing(
    tmp_path: Path, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from modexp.config import compose_config, to_typed
    from modexp.errors import ModexpError
    from modexp.launch import Job, slurm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "check_cluster", lambda cfg: [])
    monkeypatch.setattr(slurm, "queue_states", lambda ids: {})
    cfg = to_typed(compose_config(["sweep=smoke", "launcher=slurm", "device=cpu"]))
    assert slurm.make_executor(tmp_path, cfg)._executor.max_num_timeout == slurm.MAX_TIMEOUTS >= 100
    job = Job(SimpleNamespace(run_id="r1"), tmp_path / "study" / "r1")
    with pytest.raises(ModexpError) as caught:
        slurm.run_slurm([job], cfg, tmp_path / "study", fail_fast=False, detach=True, on_tick=lambda: None)
    line = str(caught.value)
    assert line.startswith("sbatch refused the jobs: ") and "\n" not in line
    assert (said or "FailedJobError") in line
    assert not (tmp_path / "study" / "slurm" / "jobs.json").exists()


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
