"""Speed, measured and used: the device peak and its cache, the study's MFU, the planner's estimate from what
the machine measured, and the iso-time (wall-clock) verdict on a table with a known time ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_sweep
from helpers import run_main

from modexp import device, estimate, mfu
from modexp.analysis import analyze, isotime
from modexp.analysis.noise import NoiseModel
from modexp.config import compose_config, to_typed
from modexp.sweep import build_study

# -- the device's peak and the machine's cache ------------------------------------------------------------


def test_the_peak_is_probed_once_and_cached_under_the_users_cache_folder(monkeypatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(device, "probe_peak", lambda *a: calls.append(a) or 5e10)
    assert device.peak_flops(torch.device("cpu"), 1, "fp32") == (5e10, "matmul probe")
    peak, source = device.peak_flops(torch.device("cpu"), 1, "fp32")
    assert peak == 5e10 and source.startswith("matmul probe") and len(calls) == 1
    assert (tmp_path / "modexp" / "devices.json").is_file()
    device.peak_flops(torch.device("cpu"), 2, "fp32")  # another thread count is another slot: probed
    assert len(calls) == 2


def test_the_probe_measures_a_real_matmul_rate() -> None:
    assert 1e8 < device.probe_peak(1) < 1e13


def test_known_gpus_take_the_vendors_dense_figure() -> None:
    assert device.vendor_peak("NVIDIA H100 80GB HBM3") == 989.5e12
    assert device.vendor_peak("NVIDIA H100 NVL") == 835.5e12
    assert device.vendor_peak("NVIDIA L40S") == 362e12 and device.vendor_peak("NVIDIA L4") == 121e12
    assert device.vendor_peak("Some Future GPU") is None


# -- the study's MFU ---------------------------------------------------------------------------------------


def test_study_mfu_counts_a_stem_once_and_each_branch_its_own_steps() -> None:
    stem = {"run_id": "s", "flops": 6e12, "train_time": 60.0, "peak_flops": 1e12, "device_kind": "cpu: x"}
    branch = {
        "run_id": "b", "flops": 8e12, "stem": "s", "stem_flops": 6e12, "train_time": 80.0, "inherited_time": 60.0,
        "peak_flops": 1e12, "device_kind": "cpu: x", "cpu_share": 0.5,
    }  # fmt: skip
    scratch = {"run_id": "r", "flops": 2e12, "train_time": 20.0, "peak_flops": 1e12, "device_kind": "cpu: x"}
    result = mfu.study_mfu([stem, branch, scratch])
    assert result["flops_trained"] == pytest.approx(1e13)  # 6e12 + 2e12 + 2e12, not the budgets' 1.6e13
    assert result["train_time"] == pytest.approx(100.0)
    assert result["mfu"] == pytest.approx(0.1)
    text = mfu.describe(result)
    assert text.startswith("study MFU 10.0%") and "loaded" in text  # the branch got half its core


# -- the planner's estimate ----------------------------------------------------------------------------------


def test_the_estimate_reads_step_times_off_what_the_machine_measured() -> None:
    # Measured: 10 ms of overhead plus 1 ns per FLOP (a 1 GFLOP/s device); a run at half the CPU share took
    # twice as long on the wall clock and counts as measured on an idle machine.
    records = [
        {"kind": "baseline", "step_flops": f, "step_time": 0.01 + f * 1e-9, "cpu_share": 1.0}
        for f in (1e6, 4e6, 1.6e7, 6.4e7)
    ] + [{"kind": "baseline", "step_flops": 2e7, "step_time": 2 * (0.01 + 2e7 * 1e-9), "cpu_share": 0.5}]
    pace = estimate.Pace(records, flops_per_second=1e15, startup=1.0, worker_startup=5.0, sweep_overhead=0)
    for f in (4e6, 2e7):  # measured and in between: within 10%
        assert pace.step("baseline", f) == pytest.approx(0.01 + f * 1e-9, rel=0.1)
    assert pace.step("baseline", 1.6e8) > pace.step("baseline", 6.4e7)  # beyond: more FLOPs, more time
    empty = estimate.Pace([], flops_per_second=1e9, startup=1.0, worker_startup=5.0, sweep_overhead=0)
    assert empty.step("mod", 2e9) == pytest.approx(2.0)  # nothing measured: the preset's rate


def test_the_study_estimate_lays_branches_out_after_their_stems_over_the_slots() -> None:
    cfg = to_typed(compose_config(["sweep=smoke", "sweep.reuse=branches"]))
    study = build_study(["sweep=smoke", "sweep.reuse=branches", "runs_dir=/nonexistent"])
    pace = estimate.Pace([], flops_per_second=1e9, startup=0.5, worker_startup=4.0, sweep_overhead=3.0)
    each = {s.run_id: estimate.run_seconds(s, cfg, pace) for s in study.trained}
    one = estimate.study_seconds(study.trained, cfg, pace, 1)
    two = estimate.study_seconds(study.trained, cfg, pace, 2)
    assert one == pytest.approx(4.0 + sum(each.values()) + 3.0)  # one slot: everything in a row
    longest_chain = max(each[s.run_id] + each[b.run_id] for s in study.plan.stems for b in study.plan.runs
                        if b.stem == s.run_id)  # fmt: skip
    assert 4.0 + longest_chain + 3.0 <= two < one  # two slots: no branch before its stem, faster than one
    stem = study.plan.stems[0]
    branch = next(r for r in study.plan.runs if r.stem == stem.run_id)
    # A branch trains its cooldown only; its stem its steps to the last branch point, never evaluated.
    assert each[branch.run_id] < each[stem.run_id] + 0.5 * len(study.plan.runs)


def test_plan_uses_the_measured_pace_once_there_is_one(tmp_path: Path, capsys) -> None:
    cfg = to_typed(compose_config(["sweep=smoke"]))
    kind, key, _ = estimate.slot_of(cfg)
    argv = ["plan", "sweep=smoke", f"runs_dir={tmp_path}", "--format", "json"]
    rc, out, _ = run_main(argv, capsys)
    before = {r["run_id"]: r["est_time_s"] for r in json.loads(out)}
    device.record_runs(kind, key, [
        {"run_id": f"r{i}", "time": i, "kind": k, "step_flops": f, "step_time": f / 1e7, "cpu_share": 1.0,
         "eval_flops": 1e7, "eval_time": 0.1, "checkpoint_time": 0.01, "startup_time": 0.3}
        for i, (k, f) in enumerate([("baseline", 1e7), ("baseline", 4e7), ("mod", 1e7), ("mod", 4e7)])
    ])  # fmt: skip
    rc, out, _ = run_main(argv, capsys)
    assert rc == 0
    for row in json.loads(out):  # 1e7 FLOP/s measured: far slower than the preset's 5e9
        step_flops = row["train_flops_per_token"] * 8 * 64
        assert row["est_time_s"] == pytest.approx(0.3 + row["steps"] * step_flops / 1e7, rel=0.2)
        assert row["est_time_s"] > 10 * before[row["run_id"]]
    rc, out, _ = run_main(argv[:-2], capsys)
    assert "the paces this machine measured (4 earlier runs on cpu: " in out


def test_a_few_runs_held_before_their_first_step_do_not_set_the_start_up(tmp_path: Path) -> None:
    """A run handed over and then held (behind a lock, in a process that did other work first) records a long
    start-up: the estimate takes the lower quartile, so a minority of them does not multiply the plan."""
    cfg = to_typed(compose_config(["sweep=smoke"]))
    kind, key, _ = estimate.slot_of(cfg)
    starts = [0.3, 0.4, 0.3, 0.5, 0.3, 600.0, 750.0, 0.4]
    device.record_runs(kind, key, [
        {"run_id": f"r{i}", "time": i, "kind": "baseline", "step_flops": 1e7, "step_time": 1.0,
         "cpu_share": 1.0, "startup_time": s}
        for i, s in enumerate(starts)
    ])  # fmt: skip
    pace, _ = estimate.pace_of(cfg)
    assert pace.startup == pytest.approx(0.3)


# -- the iso-time verdict ------------------------------------------------------------------------------------


def _timed_table(ratio: float, noise_sd: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """A baseline whose best loss falls as a power of its training seconds, and a variant that reaches each
    loss in 1/ratio of the baseline's time: the time multiplier is `ratio` by construction."""
    rng = np.random.default_rng(seed)

    def loss(seconds: np.ndarray) -> np.ndarray:
        return 1.5 + 4.0 * seconds**-0.3

    rows = []
    for variant, factor, times in (
        ("baseline", 1.0, np.geomspace(10, 3000, 24)),
        ("mod_c0.125_e2", ratio, np.geomspace(30, 600, 8)),
    ):
        for i, t in enumerate(times):
            rows.append({
                "run_id": f"{variant}-{i}", "variant": variant, "budget": 1e12, "params": 1e4 * (1 + i),
                "tokens": 2e5 * (1 + i), "flops": 1e12, "train_time": t, "device_kind": "cpu: test", "threads": 1,
                "cpu_share": 1.0, "val_loss": float(loss(np.array(factor * t))) + noise_sd * rng.standard_normal(),
                "routing": "topk" if variant != "baseline" else "none",
            })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("ratio", [1.5, 0.8])
def test_the_iso_time_verdict_finds_a_known_time_ratio(ratio: float) -> None:
    noise = {c: NoiseModel((math.log(0.003**2),), 30.0, "seeds") for c in ("baseline", "mod_c0.125_e2")}
    verdict = isotime.time_verdict(_timed_table(ratio, 0.0), "topk", noise)
    overall = verdict.table[verdict.table["row"] == "overall"].iloc[0]
    assert overall["multiplier"] == pytest.approx(ratio, rel=0.02)
    assert overall["multiplier_lo"] < ratio < overall["multiplier_hi"]
    runs = verdict.table[verdict.table["row"] == "run"]
    assert len(runs) == 8 and (runs["bound"] == "").all()
    assert runs["multiplier"].to_numpy() == pytest.approx(ratio, rel=0.02)
    lines = "\n".join(isotime.summary_lines(verdict, "topk"))
    assert (
        f"MoD 12.5%, every 2nd block vs baseline: t = {ratio:.2f}x [" in lines
        and "cpu: test, 1 thread" in lines
    )


def test_the_iso_time_interval_covers_the_truth_under_noise() -> None:
    noise = {c: NoiseModel((math.log(0.01**2),), 30.0, "seeds") for c in ("baseline", "mod_c0.125_e2")}
    covered = 0
    for seed in range(10):
        verdict = isotime.time_verdict(_timed_table(1.5, 0.01, seed), "topk", noise, seed=seed)
        overall = verdict.table[verdict.table["row"] == "overall"].iloc[0]
        covered += overall["multiplier_lo"] <= 1.5 <= overall["multiplier_hi"]
    assert covered >= 7  # a 90% interval, 10 studies


def test_runs_on_two_device_kinds_are_refused_and_a_loaded_machine_is_named() -> None:
    table = _timed_table(1.5)
    mixed = table.assign(device_kind=np.where(table.index % 2, "cpu: a", "cpu: b"))
    verdict = isotime.time_verdict(mixed, "topk", {})
    assert verdict.table.empty and "2 device kinds" in verdict.notes[0]
    loaded = table.assign(cpu_share=np.where(table.index == 3, 0.4, 1.0))
    verdict = isotime.time_verdict(loaded, "topk", {})
    assert any("loaded" in note and "40%" in note for note in verdict.notes)
    untimed = table.drop(columns=["train_time"])
    assert "no run recorded its training seconds" in isotime.time_verdict(untimed, "topk", {}).notes[0]


def test_analyze_writes_the_time_verdict_its_figure_and_the_study_mfu(tmp_path: Path) -> None:
    from modexp.analysis import figures

    sweep = make_sweep(tmp_path, budgets=(1e11, 1e12), n_sizes=4, unbracketed_budget=None)
    result = analyze(sweep, n_boot=20, figures=False)
    assert (sweep / "verdict_time.csv").is_file()
    data = SimpleNamespace(results=result.results)
    assert figures.ISOTIME.skip(data) is None and figures.isotime(result.results, result.fits).axes
    assert "Wall-clock verdict (iso-time" in result.summary and "study MFU" in result.summary
    table = pd.read_csv(sweep / "verdict_time.csv")
    assert list(table.columns) == isotime.COLUMNS and (table["row"] == "overall").sum() == 1


# -- `modexp status` of a branching study -------------------------------------------------------------------


def test_status_counts_the_flops_a_branching_study_trains(tmp_path: Path) -> None:
    from modexp.status import run_rows, totals

    stem = {"run_id": "stem-a", "role": "stem", "flops": 6e12, "steps": 600, "variant": "baseline"}
    runs = [
        {"run_id": "b1", "flops": 8e12, "stem": "stem-a", "stem_flops": 6e12, "cooldown_start": 600, "steps": 800},
        {"run_id": "b2", "flops": 7e12, "stem": "stem-a", "stem_flops": 6e12, "cooldown_start": 600, "steps": 700},
        {"run_id": "r", "flops": 1e12, "steps": 100},
    ]  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps({"runs": runs, "stems": [stem], "planned_ids": []}))
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "status.json").write_text(json.dumps({"state": "interrupted", "step": 700}))
    rows = run_rows(tmp_path)
    t = totals(rows, tmp_path)
    assert t["runs"] == 3 and t["stems"] == 1
    assert t["flops_total"] == pytest.approx(6e12 + 2e12 + 1e12 + 1e12)  # not the budgets' 1.6e13
    assert t["flops_done"] == pytest.approx(1e12)  # b1: half of its own 200 steps


# -- the pool's persistent workers ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_trains_runs_as_their_own_processes_would_and_a_failure_replaces_it(tmp_path: Path) -> None:
    """Three runs in one worker (a broken one between two good ones) give what each gives alone."""
    from modexp.launch import Job, local
    from modexp.rundir import read_json, write_run
    from modexp.sweep import run_config

    overrides = ["sweep=smoke", "sweep.min_tokens_per_param=0.1", f"runs_dir={tmp_path / 'pool'}",
                 "train.eval_every=1000"]  # fmt: skip
    study = build_study([*overrides, "sweep.budgets=[1e9]"])
    specs = study.plan.runs[:2]
    dirs = []
    for spec in specs:
        write_run(study.run_dir(spec), study.run_config(spec), spec)
        dirs.append(study.run_dir(spec))
    broken = tmp_path / "pool" / "smoke" / "broken"
    write_run(broken, run_config(study.run_sources[specs[0].run_id], specs[0]), specs[0])
    (broken / "run.json").write_text("{not json")
    # One slot takes the queue in order: a good run, the broken one, another good run.
    jobs = [Job(specs[0], dirs[0]), Job(SimpleNamespace(run_id="broken"), broken), Job(specs[1], dirs[1])]
    pool = local.LocalPool(local.make_slots("cpu", 1), persistent=True, folder=tmp_path / "pool")
    pool.run(jobs)
    assert pool.failed == ["broken"] and len(pool.worker_starts) == 2  # the failure ended the first worker
    pooled = [read_json(d / "summary.json") for d in dirs]
    # Each again in a process of its own (what a pool without workers did): the same losses, bit for bit.
    alone = tmp_path / "alone"
    for spec in specs:
        fresh = alone / spec.run_id
        write_run(fresh, study.run_config(spec), spec)
        assert local.train_processes(fresh, to_typed(study.run_config(spec))) == 0
    for spec, row in zip(specs, pooled):
        single = read_json(alone / spec.run_id / "summary.json")
        assert row["val_loss"] == single["val_loss"] and row["val_loss_causal"] == single["val_loss_causal"]
        assert row["startup_time"] < 30 and row["train_time"] > 0 and row["peak_memory_gb"] > 0
