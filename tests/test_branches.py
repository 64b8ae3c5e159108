"""WSD schedules and branching studies (sweep.reuse=branches, docs/schedules.md): a stem per shape, a cooldown
branch per budget. A branch computes what the WSD run of its budget computes from scratch, survives kill -9 of
its stem anywhere, costs the FLOPs of an independent run, and fails in one line when its stem fails."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import child_env, read_metrics

from modexp.config import compose_config, to_typed
from modexp.errors import ModexpError
from modexp.launch.local import LocalPool, make_slots
from modexp.plan import make_run, plan_sweep
from modexp.rundir import branch_point, read_json, read_status, write_run
from modexp.step import Schedule
from modexp.sweep import build_study
from modexp.train import train_run

EXE = Path(sys.executable).parent / "modexp"
# One tiny baseline shape at two budgets: one stem (about 170 steps) and two branches.
STUDY = [
    "sweep=smoke",
    "sweep.variants=[baseline]",
    "sweep.sizes_per_budget=1",
    "sweep.ladder.widths=[16]",
    "sweep.reuse=branches",
    "train.checkpoint_every=20",
    "train.eval_every=1000",
    "train.log_every=5",
]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODEXP_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    os.environ.pop("MODEXP_LOCKING", None)


def planned_study(root: Path):
    study = build_study([*STUDY, f"runs_dir={root}"])
    for spec in study.trained:
        write_run(study.run_dir(spec), study.run_config(spec), spec)
    return study


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def assert_same_losses(run_dir: Path, reference: Path) -> None:
    """Every step the reference logged, run_dir logged with the same loss (a resumed or branched run also
    logs the first step it trains itself)."""
    run, ref = losses(run_dir), losses(reference)
    assert set(ref) <= set(run), sorted(set(ref) - set(run))
    assert {step: run[step] for step in ref} == pytest.approx(ref, abs=1e-5)


def train_all(study) -> dict[str, dict]:
    """The stem, then its branches, in this process; each branch's summary by run id."""
    for stem in study.plan.stems:
        train_run(study.run_dir(stem))
    return {r.run_id: train_run(study.run_dir(r)) for r in study.plan.runs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The study trained without interruption."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEXP_THREADS", "1")
        mp.setenv("WANDB_MODE", "disabled")
        study = planned_study(tmp_path_factory.mktemp("reference") / "runs")
        summaries = train_all(study)
    return study, summaries


# --- the schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_wsd_holds_the_peak_until_its_cooldown_then_decays_to_the_floor(shape: str) -> None:
    steps, start, peak = 100, 80, 1e-2
    wsd = Schedule("wsd", steps, peak, 5, 0.1, start, shape)
    lrs = [wsd.lr(s) for s in range(steps)]
    assert lrs[:5] == pytest.approx([peak * (s + 1) / 5 for s in range(5)])
    assert lrs[5:start] == [peak] * (start - 5)
    cooldown = lrs[start:]
    assert all(a > b for a, b in zip(cooldown, cooldown[1:]))  # strictly falling, every step below the peak
    assert cooldown[0] < peak and cooldown[-1] == pytest.approx(0.1 * peak)
    # Before its cooldown a WSD run's LR does not depend on its length: what lets one stem serve every budget.
    longer = Schedule("wsd", 3 * steps, peak, 5, 0.1, 3 * start, shape)
    assert [longer.lr(s) for s in range(start)] == lrs[:start]


def test_1_sqrt_spends_its_cooldown_lower_than_linear() -> None:
    # Hagele et al. 2024's best shape falls fast at first: its mean LR over the cooldown is below linear's.
    mean = {
        shape: sum(Schedule("wsd", 100, 1.0, 1, 0.0, 50, shape).lr(s) for s in range(50, 100)) / 50
        for shape in ("1-sqrt", "linear")
    }
    assert mean["1-sqrt"] < mean["linear"]


# --- planning ---------------------------------------------------------------------------------------


def test_plan_counts_stems_once_and_names_each_runs_stem(tmp_path: Path) -> None:
    out = subprocess.run(
        [EXE, "plan", "sweep=demo", "sweep.reuse=branches", f"runs_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "FLOPs spent" in out.stdout and "budgeted" in out.stdout and "Stems" in out.stdout
    rows = json.loads(
        subprocess.run(
            [EXE, "plan", "sweep=demo", "sweep.reuse=branches", f"runs_dir={tmp_path}", "--format", "json"],
            capture_output=True,
            text=True,
            env=child_env(tmp_path),
        ).stdout
    )
    runs = [r for r in rows if r["role"] == "run"]
    stems = {r["run_id"]: r for r in rows if r["role"] == "stem"}
    assert runs and stems and all("stem" in r for r in runs)
    assert {r["stem"] for r in runs if r["stem"]} == set(stems)
    # A shape trained at one budget only has nothing to share: it trains from scratch.
    assert any(r["stem"] is None for r in runs)
    for run in runs:
        if run["stem"]:
            stem = stems[run["stem"]]
            assert run["cooldown_start"] in stem["branch_points"] and run["warmup"] == stem["warmup"]
    spent = sum(s["flops"] for s in stems.values()) + sum(r["flops"] - r["stem_flops"] for r in runs)
    budgeted = sum(r["flops"] for r in runs)
    assert 0.6 < spent / budgeted < 0.9  # the demo's budgets: about a quarter less


@pytest.mark.parametrize("budgets, sizes", [("[4e9,1e10]", 2), ("[3e9,6e9,1.2e10]", 3), ("[2e9,2.1e9]", 1)])
def test_each_branch_costs_what_an_independent_run_of_its_budget_costs(budgets: str, sizes: int) -> None:
    base = ["sweep=smoke", f"sweep.budgets={budgets}", f"sweep.sizes_per_budget={sizes}"]
    scratch = plan_sweep([to_typed(compose_config([*base, "train.schedule=wsd"]))])
    branched = plan_sweep([to_typed(compose_config([*base, "sweep.reuse=branches"]))])
    assert branched.stems
    alone = {(r.variant, r.shape, r.budget): r for r in scratch.runs}
    for run in branched.runs:
        twin = alone[(run.variant, run.shape, run.budget)]
        assert (run.flops, run.tokens, run.steps, run.num_sequences) == (
            twin.flops,
            twin.tokens,
            twin.steps,
            twin.num_sequences,
        )
        assert run.cooldown_start == twin.cooldown_start
    assert branched.flops_spent < branched.flops_budgeted == pytest.approx(scratch.flops_budgeted)
    stems = {s.run_id: s for s in branched.stems}
    for run in branched.runs:
        if run.stem:  # the stem's share: its steps up to the branch point, full batches only
            assert run.cooldown_start < run.steps and run.stem_flops < run.flops
            assert stems[run.stem].steps == max(stems[run.stem].branch_points)


def test_cosine_ids_do_not_move_and_branches_keep_the_smallest_runs_id() -> None:
    cfg = to_typed(compose_config(["sweep=smoke"]))
    run = plan_sweep([cfg]).runs[0]
    # The WSD keys are not part of a cosine run's identity: studies planned before WSD keep their ids.
    assert make_run(
        replace(cfg, train=replace(cfg.train, cooldown_fraction=0.5)), run.model, run.budget
    ).run_id == (run.run_id)
    wsd = {
        r.run_id for r in plan_sweep([to_typed(compose_config(["sweep=smoke", "train.schedule=wsd"]))]).runs
    }
    branched = plan_sweep([to_typed(compose_config(["sweep=smoke", "sweep.reuse=branches"]))]).runs
    smallest = min(r.budget for r in branched)
    assert {r.run_id for r in branched if r.budget == smallest} <= wsd  # same warm-up: the same run
    assert not wsd & {r.run_id for r in branched if r.budget > smallest}  # a shorter warm-up: other runs


@pytest.mark.parametrize(
    "override, says",
    [
        (["train.schedule=cosine", "sweep.reuse=branches"], "sweep.reuse=branches needs train.schedule=wsd"),
        (["train.schedule=linear"], "train.schedule=linear is not allowed"),
        (["train.cooldown_fraction=1.0"], "train.cooldown_fraction=1.0 is not allowed"),
        (["train.cooldown_fraction=0"], "train.cooldown_fraction=0"),
        (["train.cooldown_shape=exp"], "train.cooldown_shape=exp is not allowed"),
        (["sweep.reuse=stems"], "sweep.reuse=stems is not allowed"),
        (["sweep.seeds=0"], "sweep.seeds=0"),
    ],
)
def test_bad_schedule_settings_are_one_line(override: list[str], says: str) -> None:
    with pytest.raises(ModexpError, match=says.replace("(", r"\(")):
        to_typed(compose_config(["sweep=smoke", *override]))


def test_extra_seeds_go_to_the_sizes_nearest_each_optimum() -> None:
    plan = plan_sweep(
        [
            to_typed(
                compose_config(["sweep=demo", "sweep.seeds=3", "sweep.seed_sizes=2", "sweep.reuse=branches"])
            )
        ]
    )
    by_point: dict[tuple, set[int]] = {}
    for run in plan.runs:
        by_point.setdefault((run.variant, run.budget, run.shape), set()).add(run.seed)
    for (variant, budget), n in _count(by_point).items():
        assert n == 2, (variant, budget)  # two sizes per ladder have seeds 0, 1, 2; the others seed 0
    assert {s.seed for s in plan.stems} == {0, 1, 2}
    # A point's seeds differ in their seed only: the same warm-up, though a second seed may train the shape at
    # fewer budgets than the first (sizes nearest the optimum differ per budget) or at one, from scratch.
    warmups: dict[tuple, set[int]] = {}
    for run in plan.runs:
        warmups.setdefault((run.variant, run.budget, run.shape), set()).add(run.warmup)
    assert all(len(w) == 1 for w in warmups.values()), {k: w for k, w in warmups.items() if len(w) > 1}
    assert any(run.stem is None and run.seed > 0 for run in plan.runs)  # the case that once differed


def _count(by_point: dict[tuple, set[int]]) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for (variant, budget, _), seeds in by_point.items():
        counts[(variant, budget)] = counts.get((variant, budget), 0) + (seeds == {0, 1, 2})
        assert seeds in ({0}, {0, 1, 2})
    return counts


# --- training ---------------------------------------------------------------------------------------


def test_a_branch_is_the_wsd_run_of_its_budget_trained_from_scratch(tmp_path: Path, reference) -> None:
    study, summaries = reference
    stem = study.plan.stems[0]
    assert len(study.plan.runs) == 2 and all(r.stem == stem.run_id for r in study.plan.runs)
    assert not any(branch_point(study.run_dir(stem), p).exists() for p in stem.branch_points)  # released
    for run in study.plan.runs:
        # The same run folder without its stem: same id (a stem is not part of what a run computes).
        alone = tmp_path / "runs" / "alone" / run.run_id
        alone.mkdir(parents=True)
        shutil.copy(study.run_dir(run) / "config.yaml", alone / "config.yaml")
        record = read_json(study.run_dir(run) / "run.json")
        (alone / "run.json").write_text(json.dumps({**record, "stem": None, "stem_flops": 0.0}))
        summary = train_run(alone)
        assert_same_losses(study.run_dir(run), alone)
        assert summary["val_loss"] == pytest.approx(summaries[run.run_id]["val_loss"], abs=1e-5)
        assert summary["flops"] == summaries[run.run_id]["flops"] and summary["tokens"] == run.tokens
        assert summaries[run.run_id]["stem"] == stem.run_id and summaries[run.run_id]["schedule"] == "wsd"


def test_a_branch_after_kill_9_of_its_stem_at_a_random_step_gives_the_same_losses(
    tmp_path: Path, reference
) -> None:
    ref_study, ref_summaries = reference
    study = planned_study(tmp_path / "runs")
    stem_dir = study.run_dir(study.plan.stems[0])
    kill_at = random.Random().randrange(25, study.plan.stems[0].steps - 5)
    log = (tmp_path / "stem.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modexp.train", str(stem_dir)], stdout=log, stderr=subprocess.STDOUT,
        env=child_env(tmp_path),
    )  # fmt: skip
    try:
        while proc.poll() is None:
            steps = (
                [r["step"] for r in read_metrics(stem_dir)] if (stem_dir / "metrics.jsonl").exists() else []
            )
            if steps and steps[-1] >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the stem ended before step {kill_at}"
    summaries = train_all(study)  # the stem resumes from its last checkpoint, then the branches run
    for run in study.plan.runs:
        assert_same_losses(study.run_dir(run), ref_study.run_dir(run))
        assert summaries[run.run_id]["val_loss"] == pytest.approx(
            ref_summaries[run.run_id]["val_loss"], abs=1e-5
        )


def test_a_failed_stem_fails_its_branches_in_one_line_naming_it(tmp_path: Path) -> None:
    study = planned_study(tmp_path / "runs")
    stem = study.plan.stems[0]
    (study.run_dir(stem) / "run.json").write_text("{broken")  # the stem's trainer fails at once
    pool = LocalPool(make_slots("cpu", 1))
    pool.run(study.jobs(study.trained))
    assert read_status(study.run_dir(stem))["state"] == "failed"
    for run in study.plan.runs:
        status = read_status(study.run_dir(run))
        assert status["state"] == "failed" and stem.run_id in status["reason"], status
        assert "\n" not in status["reason"]
        assert not (study.run_dir(run) / "metrics.jsonl").exists()  # never started


def test_smoke_sweep_with_branches_resumes_after_kill_9_and_ends_in_the_verdict(tmp_path: Path) -> None:
    args = [EXE, "sweep", *STUDY[:1], "sweep.reuse=branches", f"runs_dir={tmp_path / 'runs'}"]
    env = child_env(tmp_path)
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sweep = tmp_path / "runs" / "smoke"
    try:
        while proc.poll() is None and not list(sweep.glob("stems/*/checkpoints/*.pt")):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every trainer it started
    finally:
        proc.wait(timeout=60)
    plan = read_json(sweep / "plan.json")
    assert plan["flops_spent"] < plan["flops_budgeted"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Verdict" in done.stderr + done.stdout
    for row in plan["runs"]:
        assert read_status(sweep / row["run_id"])["state"] == "done"
    assert math.isclose(
        read_json(sweep / "plan.json")["flops_spent"],
        sum(s["flops"] for s in plan["stems"]) + sum(r["flops"] - r["stem_flops"] for r in plan["runs"]),
    )


# --- a branch is the continuation of its own stem, or refused ----------------------------------------------


def _write_corpus(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    rng = random.Random(seed)
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(12000)) + "\n")
    return folder


@pytest.fixture
def trained_stem(tmp_path: Path):
    """A branching study on a text corpus whose stem is done and whose branches have not started (as after
    kill -9 of the sweep once its stem finished): (the sweep's arguments, the study)."""
    args = [*STUDY, "data=text", f"data.path={_write_corpus(tmp_path / 'corpus', 0)}",
            f"data.cache_dir={tmp_path / 'cache'}", f"runs_dir={tmp_path / 'runs'}"]  # fmt: skip
    study = build_study(args)
    for spec in study.trained:
        write_run(study.run_dir(spec), study.run_config(spec), spec)
    train_run(study.run_dir(study.plan.stems[0]))
    return args, study


def _refusals(study) -> list[str]:
    reasons = []
    for run in study.plan.runs:
        status = read_status(study.run_dir(run))
        assert status["state"] == "failed" and "\n" not in status["reason"], status
        assert not (study.run_dir(run) / "metrics.jsonl").exists()  # never started
        reasons.append(status["reason"])
    return reasons


def test_a_branch_never_continues_a_stem_trained_on_another_corpus(trained_stem, capsys) -> None:
    from helpers import run_main

    args, study = trained_stem
    _write_corpus(Path(args[-3].split("=", 1)[1]), seed=1)  # the text at the same path changes
    rc, _, err = run_main(["sweep", *args], capsys)
    assert rc != 0
    for reason in _refusals(study):
        assert f"is not the continuation of stem {study.plan.stems[0].run_id}" in reason, reason
        assert "corpus fingerprint" in reason and "--retry-failed" in reason, reason


@pytest.mark.slow
def test_the_remedy_a_refused_branch_names_trains_the_stem_again(trained_stem, capsys) -> None:
    """Delete the stem and rerun with --retry-failed: the stem trains again on this corpus, then the branches."""
    from helpers import run_main

    args, study = trained_stem
    _write_corpus(Path(args[-3].split("=", 1)[1]), seed=1)
    assert run_main(["sweep", *args], capsys)[0] != 0
    shutil.rmtree(study.run_dir(study.plan.stems[0]))
    rc, _, err = run_main(["sweep", *args, "--retry-failed"], capsys)
    assert rc == 0, err
    assert all(read_status(study.run_dir(r))["state"] == "done" for r in study.plan.runs)


def _record_in_states(study, edit) -> None:
    """Edit what the stem's states record of its training (as a stem copied in under this id would differ)."""
    stem = study.plan.stems[0]
    for point in stem.branch_points:
        state = torch.load(branch_point(study.run_dir(stem), point), weights_only=True)
        edit(state)
        torch.save(state, branch_point(study.run_dir(stem), point))


def _set(path: str, value):
    def edit(state: dict) -> None:
        *parents, key = path.split(".")
        node = state["trajectory"]
        for parent in parents:
            node = node[parent]
        node[key] = value

    return edit


def test_a_branch_never_continues_a_stem_that_trained_with_other_settings(trained_stem, capsys) -> None:
    """Every setting of the stem's trajectory that is not the branch's is named (here the seed and beta2), and
    nothing trains."""
    from helpers import run_main

    args, study = trained_stem
    _record_in_states(study, lambda state: (_set("seed", 7)(state), _set("train.beta2", 0.5)(state)))
    rc, _, _ = run_main(["sweep", *args], capsys)
    assert rc != 0
    for reason in _refusals(study):
        assert "seed=7" in reason and "train.beta2=0.5" in reason and "not the continuation" in reason, reason


@pytest.mark.parametrize(
    "path, value",
    [("data.path", "/elsewhere"), ("model.rope_base", 500.0), ("train.lr", 1.0), ("train.warmup_steps", 97)],
)
def test_any_setting_of_the_stems_trajectory_is_checked(trained_stem, path: str, value) -> None:
    args, study = trained_stem
    _record_in_states(study, _set(path, value))
    with pytest.raises(ModexpError, match=rf"not the continuation of stem .*{path}={value!r}"):
        train_run(study.run_dir(study.plan.runs[0]))
    assert not (study.run_dir(study.plan.runs[0]) / "checkpoints").exists()


def test_a_stem_state_saved_without_its_record_is_checked_against_the_stem_folder(
    trained_stem, capsys
) -> None:
    """States written before they recorded their settings: the stem folder's meta.json and config.yaml say."""
    args, study = trained_stem

    def forget(state: dict) -> None:
        del state["trajectory"], state["corpus_fingerprint"]

    _record_in_states(study, forget)
    _write_corpus(Path(args[-3].split("=", 1)[1]), seed=2)
    with pytest.raises(ModexpError, match="corpus fingerprint"):
        train_run(study.run_dir(study.plan.runs[0]))
