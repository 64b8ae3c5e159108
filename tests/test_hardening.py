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
