"""Issue 26's small items: --version, sample's option help, the summary's word for an unbounded m, papermill in
the dev extras, notebooks in the package, status of what `modexp train` made, the idle-causal-routing warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import run_main

from modexp.cli import parser

ROOT = Path(__file__).resolve().parent.parent


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(["--version"], capsys)
    assert rc == 0 and out.startswith("modexp 0.1.0 (commit ") and "from " in out


def test_every_sample_option_has_help() -> None:
    sample = parser()._subparsers._group_actions[0].choices["sample"]
    options = [a for a in sample._actions if a.dest != "help"]
    assert options and all(a.help for a in options), [a.dest for a in options if not a.help]


def test_an_unbounded_multiplier_is_said_in_words() -> None:
    from modexp.analysis.report import _verdict_row

    row = SimpleNamespace(
        flags="", bound="both", multiplier_bound="?", believe="", multiplier=1.56, multiplier_lo=float("nan"),
        multiplier_hi=float("nan"), delta_loss=0.01, delta_loss_lo=float("nan"), delta_loss_hi=float("nan"),
        reference_loss_opt=2.0, estimate=False, budget=1e12, loss_opt=2.01,
    )  # fmt: skip
    text = _verdict_row(row)
    assert "m unknown (bounds give 1.56x)" in text and "m ?" not in text


def test_papermill_is_a_dev_extra_and_notebooks_ship_in_the_package(tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("papermill") for dep in project["optional-dependencies"]["dev"])
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    shipped = {p.name for p in (tmp_path / "modexp" / "notebooks").glob("*.ipynb")}
    assert shipped == {"isoflop.ipynb", "routing.ipynb", "compare.ipynb"}


def test_status_reads_what_modexp_train_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "smoke" / "baseline-d16-l4-1e10-0123456789"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"run_id": run_dir.name, "variant": "baseline", "steps": 10})
    )
    (run_dir / "status.json").write_text(json.dumps({"state": "done", "step": 10, "steps": 10}))
    (run_dir / "summary.json").write_text(json.dumps({"val_loss": 2.5}))
    for folder in (run_dir.parent, run_dir):  # the sweep-name folder, or the run folder train printed
        rc, out, err = run_main(["status", str(folder), "--format", "json"], capsys)
        assert rc == 0, err
        (row,) = json.loads(out)
        assert row["run_id"] == run_dir.name and row["state"] == "done"


def test_a_verdict_on_idle_causal_routing_warns() -> None:
    from modexp.analysis.study import _idle_causal_notes

    df = pd.DataFrame({"run_id": ["mod-a", "mod-b", "baseline"], "val_causal_frac": [0.0, 0.12, None]})
    (note,) = _idle_causal_notes(df)
    assert note.startswith("WARNING: causal routing processed 0% of tokens in 1 run(s) (e.g. mod-a)")
    assert _idle_causal_notes(df.iloc[1:]) == []
