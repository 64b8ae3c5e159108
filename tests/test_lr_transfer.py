"""The learning-rate transfer recipe end to end at smoke scale: an LR-grid study, then a study whose every run
takes its LR from the grid's fitted lr*(N) per variant (docs/learning-rates.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from modexp import analysis

GRID = "[1e-3,3e-3,1e-2,3e-2,1e-1]"
SMALL = [
    "sweep=smoke",
    "sweep.budgets=[1e10]",
    "sweep.sizes_per_budget=3",
    "launcher.workers=2",
    "device=cpu",
]


def modexp(runs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "modexp.cli", *args, f"runs_dir={runs}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow
def test_lr_grid_then_transfer(tmp_path: Path) -> None:
    grid = modexp(tmp_path, "sweep", *SMALL, f"sweep.lr_grid={GRID}", "sweep.name=lr-grid")
    assert grid.returncode == 0, grid.stderr[-3000:]
    grid_dir = tmp_path / "lr-grid"
    results = pd.read_csv(grid_dir / "results.csv")
    assert len(results) == 2 * 3 * 5 and set(results["lr"]) == {1e-3, 3e-3, 1e-2, 3e-2, 1e-1}
    assert (results["lr_rule"] == "sweep.lr_grid").all()
    laws = pd.read_csv(grid_dir / "lr_laws.csv").set_index("variant")
    assert set(laws.index) == {"baseline", "mod_c0.125_e2"}
    assert (grid_dir / "plots" / "lr_transfer.png").is_file()
    assert "lr* = " in (grid_dir / "summary.txt").read_text()

    # The study: same ladder, each run's LR from the law, nothing else changed.
    plan = modexp(tmp_path, "plan", *SMALL, f"train.lr_from={grid_dir}", "--format", "json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    runs = json.loads(plan.stdout)
    assert len(runs) == 2 * 3
    for run in runs:
        law = laws.loc[run["variant"]]
        assert run["lr"] == pytest.approx(law["coefficient"] * run["params"] ** law["exponent"])
        assert run["lr_rule"].startswith("lr = ") and str(grid_dir) in run["lr_rule"]
    # A per-size LR: the law gives different LRs to different sizes (not one LR for the ladder).
    assert len({round(r["lr"], 12) for r in runs}) == len(runs)

    study = modexp(tmp_path, "sweep", *SMALL, f"train.lr_from={grid_dir}", "sweep.name=study")
    assert study.returncode == 0, study.stderr[-3000:]
    study_dir = tmp_path / "study"
    plan_json = json.loads((study_dir / "plan.json").read_text())
    assert plan_json["lr_laws"][0]["source"] == str(grid_dir)
    trained = pd.read_csv(study_dir / "results.csv")
    by_id = {r["run_id"]: r for r in runs}
    for row in trained.itertuples():
        assert math.isclose(row.lr, by_id[row.run_id]["lr"], rel_tol=1e-9)
    summary = (study_dir / "summary.txt").read_text()
    assert "Learning rates of this study:" in summary and str(grid_dir) in summary
    result = analysis.load_or_analyze(study_dir)
    assert (result.points["n_lrs"] == 1).all() and not result.points["lr_edge"].any()


def test_lr_from_a_folder_without_a_grid_is_one_line(tmp_path: Path) -> None:
    missing = modexp(tmp_path, "plan", "sweep=smoke", f"train.lr_from={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr


def test_lr_law_in_the_config_sets_each_runs_lr(tmp_path: Path) -> None:
    law = "train.lr_law={baseline:{coefficient:2.0,exponent:-0.4},mod:{coefficient:3.0,exponent:-0.5}}"
    plan = modexp(tmp_path, "plan", "sweep=smoke", law, "--format", "json")
    assert plan.returncode == 0, plan.stderr
    for run in json.loads(plan.stdout):
        k, e = (2.0, -0.4) if run["variant"] == "baseline" else (3.0, -0.5)
        assert run["lr"] == pytest.approx(k * run["params"] ** e) and "train.lr_law" in run["lr_rule"]
    # The law is not part of a run's identity, the LR it gives is: the same LR is the same run.
    plain = json.loads(modexp(tmp_path, "plan", "sweep=smoke", "--format", "json").stdout)
    assert {r["run_id"] for r in plain}.isdisjoint(r["run_id"] for r in json.loads(plan.stdout))
    # A grid wins over the preset's law: an LR-grid study needs no `train.lr_law={}` (demo_lr is the demo's
    # preset, law included, with a grid). A law given beside a grid would do nothing: refused.
    grid = modexp(tmp_path, "plan", "sweep=demo_lr", "sweep.lr_grid=[1e-3,1e-2]", "--format", "json")
    assert {r["lr"] for r in json.loads(grid.stdout)} == {1e-3, 1e-2}
    both = modexp(tmp_path, "plan", "sweep=smoke", law, "sweep.lr_grid=[1e-3,1e-2]")
    assert both.returncode == 2 and "sweep.lr_grid sets every run's learning rate" in both.stderr


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            ["train.lr_law={baseline:{coefficient:1.0,exponent:-0.4}}"],
            "no learning-rate law for variant mod_c0.125_e2",
        ),
        (["train.lr_law={basline:{coefficient:1.0,exponent:-0.4}}"], "train.lr_law.basline is not allowed"),
        (
            ["sweep.lr_grid=[1e-3,3e-3]", "train.lr_from=runs/x"],
            "sweep.lr_grid and train.lr_from are both set",
        ),
        (["sweep.lr_grid=[1e-3,0]"], "sweep.lr_grid contains 0.0"),
        (
            [
                "train.lr_law={baseline:{coefficient:1.0,exponent:-0.4},mod:{coefficient:1.0,exponent:-0.4}}",
                "train.lr=1e-3,3e-3",
            ],
            "train.lr=0.001 does nothing here: train.lr_law sets every run's learning rate",
        ),
    ],
)
def test_bad_lr_rules_are_one_line(tmp_path: Path, overrides: list[str], says: str) -> None:
    out = modexp(tmp_path, "plan", "sweep=smoke", *overrides)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_an_empty_lr_law_clears_the_presets(tmp_path: Path) -> None:
    out = modexp(tmp_path, "plan", "sweep=demo", "train.lr_law={}", "train.lr=2e-3", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert {(r["lr"], r["lr_rule"]) for r in json.loads(out.stdout)} == {(2e-3, "train.lr")}
