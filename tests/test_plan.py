"""FLOP accounting and isoFLOP planning: presets, run ids, comma lists, output formats, bad input."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from modexp.cli import build_study, main
from modexp.config import compose_config, to_typed
from modexp.plan import plan_sweep

PRESETS = ("smoke", "demo", "cpu", "gpu", "paper")
ROW_KEYS = {
    "run_id",
    "variant",
    "budget",
    "shape",
    "params",
    "non_embedding_params",
    "train_flops_per_token",
    "tokens",
    "steps",
    "flops",
    "tokens_per_param",
    "est_time_s",
    "status",
}


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); argparse's SystemExit counts as a return."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def study(tmp_path: Path, *overrides: str):
    return build_study([f"runs_dir={tmp_path / 'runs'}", *overrides])


def by_key(runs) -> dict[tuple[float, str, str], str]:
    """(budget, variant, shape) -> run_id."""
    return {(r.budget, r.variant, r.shape): r.run_id for r in runs}


# --- presets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_plans_within_one_percent(preset: str, tmp_path: Path) -> None:
    s = study(tmp_path, f"sweep={preset}")
    cfg = s.configs[0][1]
    assert cfg.sweep.name == preset
    runs = s.plan.runs
    assert runs
    for r in runs:
        assert abs(r.flops / r.budget - 1) < 0.01, (r.run_id, r.flops, r.budget)
        # tokens and steps are consistent with the FLOPs actually spent
        assert r.flops == pytest.approx(r.tokens * r.accounting["train_flops_per_token"], rel=1e-9)
        assert r.tokens == r.num_sequences * r.model.seq_len
        assert r.steps == math.ceil(r.num_sequences / r.batch_size)
    # every budget has every variant
    assert {r.budget for r in runs} == set(cfg.sweep.budgets)
    for budget in cfg.sweep.budgets:
        variants = {r.variant.split("_")[0] for r in runs if r.budget == budget}
        assert variants == set(cfg.sweep.variants), budget
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_paper_plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(
        ["plan", "sweep=paper", f"runs_dir={tmp_path / 'runs'}", "--format", "json"], capsys
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert rows
    assert {r["budget"] for r in rows} == {6e18, 2e19, 1e20}
    for budget in (6e18, 2e19, 1e20):
        assert {r["variant"] for r in rows if r["budget"] == budget} == {"baseline", "mod_c0.125_e2"}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert abs(r["flops"] / r["budget"] - 1) < 0.01
        assert r["status"] == "pending"
        assert r["tokens"] % 2048 == 0
        assert r["est_time_s"] == pytest.approx(r["flops"] / 4e14, abs=0.1)
    s = study(tmp_path, "sweep=paper")
    assert {spec.run_id for spec in s.plan.runs} == {r["run_id"] for r in rows}
    for run_id, cfg in s.run_configs.items():
        assert cfg.train.batch_size == 128, run_id
        assert cfg.model.seq_len == 2048, run_id
        assert cfg.sweep.name == "paper"


def test_smoke_has_two_budgets_two_variants() -> None:
    s = build_study(["sweep=smoke", "runs_dir=/nonexistent/never"])
    assert sorted({r.budget for r in s.plan.runs}) == [4e9, 1e10]
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2"}
    assert all(r.model.seq_len == 64 and r.batch_size == 8 for r in s.plan.runs)


def test_smoke_has_two_sizes_per_budget_and_variant() -> None:
    s = build_study(["sweep=smoke", "runs_dir=/nonexistent/never"])
    for budget in (4e9, 1e10):
        for variant in ("baseline", "mod_c0.125_e2"):
            shapes = {r.shape for r in s.plan.runs if r.budget == budget and r.variant == variant}
            assert len(shapes) >= 2, (budget, variant, shapes)


@pytest.mark.parametrize("preset", PRESETS)
def test_mod_ladder_reaches_further_up(preset: str) -> None:
    s = build_study([f"sweep={preset}", "runs_dir=/nonexistent/never"])
    for budget in {r.budget for r in s.plan.runs}:
        base = [r.accounting["params"] for r in s.plan.runs if r.budget == budget and r.variant == "baseline"]
        mod = [
            r.accounting["params"] for r in s.plan.runs if r.budget == budget and r.variant.startswith("mod")
        ]
        assert base and mod
        assert max(mod) > max(base), (budget, max(mod), max(base))


@pytest.mark.parametrize("preset", ["demo", "cpu", "gpu", "paper"])
def test_study_presets_plan_at_least_three_sizes(preset: str) -> None:
    s = build_study([f"sweep={preset}", "runs_dir=/nonexistent/never"])
    for budget in s.configs[0][1].sweep.budgets:
        for variant in {r.variant for r in s.plan.runs}:
            n = sum(1 for r in s.plan.runs if r.budget == budget and r.variant == variant)
            assert n >= 3, (preset, budget, variant, n)


def test_left_out_shapes_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = study(tmp_path, "sweep=paper")
    assert s.plan.skipped
    for skip in s.plan.skipped:
        assert set(skip) == {"budget", "variant", "shape", "reason"}
        assert "sweep." in skip["reason"]  # names the setting that left it out
    planned = {(r.budget, r.variant, r.shape) for r in s.plan.runs}
    assert not planned & {(k["budget"], k["variant"], k["shape"]) for k in s.plan.skipped}

    rc, out, err = run_main(["plan", "sweep=paper", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 0, err
    left_out = [line for line in out.splitlines() if line.startswith("left out:")]
    assert len(left_out) == len(s.plan.skipped)
    assert any("tokens/param" in line for line in left_out)


# --- run ids -----------------------------------------------------------------------------------------


def test_run_ids_are_stable_across_fresh_composes(tmp_path: Path) -> None:
    a = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    b = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    assert a == b
    assert len(set(a.values())) == len(a)  # unique
    for (_budget, variant, shape), run_id in a.items():
        assert run_id.startswith(f"{variant}-{shape}-")


@pytest.mark.parametrize(
    "override", ["train.lr=0.001", "seed=1", "model.capacity=0.25", "train.batch_size=4"]
)
def test_run_ids_change_with_what_determines_the_result(tmp_path: Path, override: str) -> None:
    ref = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    other = by_key(study(tmp_path, "sweep=smoke", override).plan.runs)
    mod_ref = {k[::2]: v for k, v in ref.items() if k[1].startswith("mod")}  # (budget, shape) -> id
    mod_other = {k[::2]: v for k, v in other.items() if k[1].startswith("mod")}
    common = mod_ref.keys() & mod_other.keys()
    assert common
    for key in common:
        assert mod_ref[key] != mod_other[key], (override, key)


def test_run_ids_change_with_budget(tmp_path: Path) -> None:
    a = study(tmp_path, "sweep=smoke", "sweep.budgets=[1e10]").plan.runs
    b = study(tmp_path, "sweep=smoke", "sweep.budgets=[1.1e10]").plan.runs
    ids_a = {(r.variant, r.shape): r.run_id for r in a}
    ids_b = {(r.variant, r.shape): r.run_id for r in b}
    common = ids_a.keys() & ids_b.keys()
    assert common
    for key in common:
        assert ids_a[key] != ids_b[key]


@pytest.mark.parametrize(
    "override",
    [
        "tracker.wandb.mode=offline",
        "tracker.wandb.mode=disabled",
        "train.log_every=1",
        "train.checkpoint_every=7",
        "train.eval_every=3",
        "launcher.workers=3",
    ],
)
def test_run_ids_ignore_tracking_paths_and_cadence(tmp_path: Path, override: str) -> None:
    ref = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    assert by_key(study(tmp_path, "sweep=smoke", override).plan.runs) == ref


def test_run_ids_ignore_runs_dir(tmp_path: Path) -> None:
    a = build_study(["sweep=smoke", f"runs_dir={tmp_path / 'a'}"])
    b = build_study(["sweep=smoke", f"runs_dir={tmp_path / 'b' / 'deeper'}"])
    assert by_key(a.plan.runs) == by_key(b.plan.runs)


@pytest.mark.parametrize(
    "override", ["model.capacity=0.5", "model.route_every=4", "model.causal_router=aux_loss"]
)
def test_baseline_ids_ignore_mod_only_settings(tmp_path: Path, override: str) -> None:
    ref = {k: v for k, v in by_key(study(tmp_path, "sweep=smoke").plan.runs).items() if k[1] == "baseline"}
    other = {
        k: v
        for k, v in by_key(study(tmp_path, "sweep=smoke", override).plan.runs).items()
        if k[1] == "baseline"
    }
    assert ref and other == ref


# --- comma lists (Hydra sweep syntax) ----------------------------------------------------------------


def test_comma_list_gives_one_config_per_value(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.capacity=0.125,0.5")
    assert len(s.configs) == 2
    variants = {r.variant for r in s.plan.runs}
    assert {"mod_c0.125_e2", "mod_c0.5_e2"} <= variants
    for budget in (4e9, 1e10):
        for v in ("baseline", "mod_c0.125_e2", "mod_c0.5_e2"):
            assert any(r.budget == budget and r.variant == v for r in s.plan.runs), (budget, v)
    # the c0.125 runs are exactly those of the plain study
    plain = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    swept = by_key(s.plan.runs)
    for key, run_id in plain.items():
        if key[1] == "mod_c0.125_e2":
            assert swept[key] == run_id


def test_comma_list_capacity_dedups_baseline(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.capacity=0.125,0.5")
    plain = study(tmp_path, "sweep=smoke")
    base = sorted((r.budget, r.shape) for r in s.plan.runs if r.variant == "baseline")
    assert base == sorted((r.budget, r.shape) for r in plain.plan.runs if r.variant == "baseline")
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2", "mod_c0.5_e2"}


def test_comma_list_route_every_dedups_baseline(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.route_every=2,4")
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2", "mod_c0.125_e4"}
    base = [(r.budget, r.shape) for r in s.plan.runs if r.variant == "baseline"]
    assert len(base) == len(set(base))


def test_route_every_4_plans_on_four_layer_rungs(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.route_every=4")
    mods = [r for r in s.plan.runs if r.variant == "mod_c0.125_e4"]
    assert mods
    for r in mods:
        assert r.model.n_layers >= 4 and r.model.route_every == 4
        assert r.model.routed_layers == [3]


# --- output formats ----------------------------------------------------------------------------------


def test_csv_parses_with_pandas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(
        ["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}", "--format", "csv"], capsys
    )
    assert rc == 0, err
    frame = pd.read_csv(io.StringIO(out))
    s = study(tmp_path, "sweep=smoke")
    assert len(frame) == len(s.plan.runs)
    assert ROW_KEYS <= set(frame.columns)
    assert list(frame["run_id"]) == [r.run_id for r in s.plan.runs]
    assert ((frame["flops"] / frame["budget"] - 1).abs() < 0.01).all()
    assert (frame["status"] == "pending").all()


def test_table_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run_id", "variant", "budget"]
    s = study(tmp_path, "sweep=smoke")
    for r in s.plan.runs:
        assert any(line.strip().startswith(r.run_id) for line in lines), r.run_id
    assert any(f"{len(s.plan.runs)} runs" in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_planning_is_fast(tmp_path: Path) -> None:
    cfg = to_typed(compose_config(["sweep=paper", f"runs_dir={tmp_path}"]))
    t0 = time.perf_counter()
    plan = plan_sweep([cfg])
    elapsed = time.perf_counter() - t0
    assert plan.runs
    assert elapsed < 5.0, elapsed


# --- bad input ---------------------------------------------------------------------------------------

BAD = [
    (["plan", "sweep=smoke", "sweep.budgets=[-1]"], "-1"),
    (["plan", "sweep=smoke", "sweep.budgets=[0]"], "sweep.budgets"),
    (["plan", "sweep=smoke", "sweep.budgets=[abc]"], "abc"),
    (["train", "sweep=smoke", "budget=-5"], "budget=-5"),
    (["plan", "sweep=smoke", "sweep.budgets=[10]"], "budget 1e1"),
    (["plan", "sweep=smoke", "sweep.budgets=[]"], "sweep.budgets is empty"),
    (["plan", "sweep=smoke", "sweep.variants=[]"], "sweep.variants is empty"),
    (
        ["plan", "sweep=smoke", "model.capacity=abc"],
        "model.capacity=abc is not allowed: model.capacity expects a number",
    ),
    (["plan", "sweep=smoke", "train.batch_size=1.5"], "train.batch_size expects a whole number"),
    (["plan", "sweep=smoke", "model.tie_embeddings=maybe"], "expects true or false"),
    (["plan", "sweep=smoke", "foo"], "'foo' is not an override: key=value expected"),
    (["plan", "sweep=nope"], "choose one of cpu, demo, gpu, paper, smoke"),
    (["plan", "sweep=smoke", "data=nope"], "choose one of stdlib, text, tokens"),
    (["plan", "sweep=smoke", "model.capcity=0.5"], "did you mean model.capacity?"),
    (["plan", "sweep=smoke", "+model.foo=1"], "model.foo is not a modexp setting"),
    (
        ["plan", "sweep=smoke", "data=text", "data.path=/no/such/corpus"],
        "data.path=/no/such/corpus does not exist",
    ),
    (["train", "sweep=smoke", "budget=1e6"], "give budget >= "),
    (["plan", "sweep=smoke", "model.capacity=0"], "model.capacity"),
    (["plan", "sweep=smoke", "model.capacity=1.5"], "1.5"),
    (["plan", "sweep=smoke", "model.route_every=0"], "model.route_every=0"),
    (["plan", "sweep=nope"], "nope"),
    (["plan", "sweep=smoke", "nokey=1"], "nokey"),
    (["plan", "sweep=smoke", "model.nokey=1"], "model.nokey"),
    (["plan", "sweep=smoke", "device=tpu"], "tpu"),
    (["plan", "sweep=smoke", "tracker.wandb.mode=sometimes"], "sometimes"),
    (["sweep", "--dry-run", "sweep=smoke", "sweep.budgets=[-1]"], "-1"),
    (["train", "sweep=smoke", "model.capacity=2", "budget=1e9"], "model.capacity"),
    (["train", "sweep=smoke"], "budget"),
]


@pytest.mark.parametrize(("argv", "names"), BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(
    argv: list[str], names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    rc, out, err = run_main([*argv, f"runs_dir={runs}"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modexp: error:"), err
    assert names in lines[0], err
    assert "Traceback" not in err + out
    assert not runs.exists(), list(runs.rglob("*"))


def test_bad_format_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "--format", "xml", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2
    assert "xml" in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_format_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "--format", "xml", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2
    assert "xml" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_console_script_bad_budget(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "modexp"
    assert exe.exists()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [str(exe), "plan", "sweep.budgets=[-1]", f"runs_dir={tmp_path / 'runs'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sweep.budgets" in lines[0] and "-1" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()
