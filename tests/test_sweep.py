"""`modexp sweep` end to end on CPU: dry run, kill -9 of the whole sweep or of one run, two sweeps on one
folder, --fail-fast, Ctrl-C, and re-running a finished sweep.

Every sweep is the real CLI in a subprocess of its own session (so a test can signal the sweep and its
training children together, as a terminal would), in the test's tmp folder, with W&B disabled.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# One budget, two sizes x two variants: 4 runs of 41-107 steps, a checkpoint every 5 steps (not part of a
# run's identity), two runs at a time. About 30 s for the whole study on 2 CPU cores.
BASE = [
    "sweep=smoke",
    "sweep.budgets=[2e9]",
    "sweep.min_tokens_per_param=0.1",
    "sweep.min_steps=5",
    "launcher.workers=2",
    "device=cpu",
    "train.checkpoint_every=5",
]
CHECKPOINT = Path("checkpoints") / "last.pt"
FRESH_START = re.compile(r" step 1/\d+ loss ")  # the first progress line of a run trained from step 0


# --- helpers ---------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def sweep_argv(runs: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "modexp.cli", "sweep", *flags, *BASE, f"runs_dir={runs}"]


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pgid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
    return int(fields[2]) if fields[1:3] else None


def train_children(sweep_dir: Path) -> dict[str, int]:
    """run_id -> pid of each live process training a run of sweep_dir: `python -m modexp.train
    <sweep_dir>/<run_id>`, or a pool worker (`python -m modexp.launch.worker FD <sweep_dir>`) whose run's
    status.json names it as running (zombies have no cmdline)."""
    found, workers = {}, set()
    prefix = f"{sweep_dir}/"
    for pid in _pids():
        argv = _cmdline(pid)
        if "modexp.launch.worker" in argv and str(sweep_dir) in argv:
            workers.add(pid)
            continue
        if "modexp.train" not in argv:
            continue
        for arg in argv:
            if arg.startswith(prefix):
                found[Path(arg).name] = pid
    for run_dir in sweep_dir.glob("*/"):
        st = status(run_dir)
        if st.get("state") == "running" and st.get("pid") in workers:
            found[run_dir.name] = st["pid"]
    return found


def status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def snapshot(run_dir: Path) -> dict[str, int]:
    """Every file of a run folder with its modification time in ns: equal snapshots = nothing rewritten."""
    return {
        p.relative_to(run_dir).as_posix(): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()
    }


def train_steps(run_dir: Path, kind: str = "train") -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == kind]


def assert_trained_once_per_start(run_dir: Path, run_id: str, resumed_from: int | None) -> None:
    """The run is done; its log shows one fresh start (or one resume at `resumed_from`) and one end."""
    assert status(run_dir).get("state") == "done", status(run_dir)
    log = (run_dir / "train.log").read_text()
    assert len(re.findall(rf" done {re.escape(run_id)} in [\d.]+ s: (causal )?val loss \d", log)) == 1, log
    meta = read_json(run_dir / "meta.json")
    assert meta["resumed_from_step"] == resumed_from, (meta["resumed_from_step"], resumed_from)
    if resumed_from is not None:
        assert f"resuming {run_id} at step {resumed_from} of" in log, log
    steps = train_steps(run_dir)
    assert steps == sorted(set(steps)), steps  # strictly increasing: no step logged twice
    summary = read_json(run_dir / "summary.json")
    assert steps[-1] == summary["steps"]
    assert isinstance(summary["val_loss"], float) and math.isfinite(summary["val_loss"]), summary


def assert_study_complete(sweep_dir: Path, run_ids: list[str]) -> None:
    with (sweep_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in rows) == sorted(run_ids)
    assert all(math.isfinite(float(r["val_loss"])) for r in rows), rows
    pngs = sorted((sweep_dir / "plots").glob("*.png"))
    assert "isoflop.png" in [p.name for p in pngs], pngs
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def poll(cond: Callable[[], Any], timeout: float, what: str, sweep: Sweep | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if sweep is not None and sweep.proc.poll() is not None:
            pytest.fail(
                f"the sweep ended (exit {sweep.proc.returncode}) before {what}:\n{sweep.stderr[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s" + (f":\n{sweep.stderr[-3000:]}" if sweep else ""))
        time.sleep(0.01)


class Sweep:
    """A `modexp sweep` process, leader of its own session; its stdout and stderr go to files."""

    def __init__(self, cwd: Path, name: str, argv: list[str]) -> None:
        self.out, self.err = cwd / f"{name}.out", cwd / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"the sweep did not end within {timeout} s:\n{self.stderr[-3000:]}")

    def group(self) -> list[int]:
        """Live processes of the sweep's process group (the sweep and its training children)."""
        return [pid for pid in _pids() if _pgid(pid) == self.proc.pid and _cmdline(pid)]

    def kill_group(self) -> None:
        for pid in self.group():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)


class Sweeps:
    """Starts sweeps in one folder (runs in <folder>/runs) and kills whatever of them is left at the end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.runs = cwd, cwd / "runs"
        self.sweep_dir = self.runs / "smoke"
        self.started: list[Sweep] = []

    def start(self, name: str, *flags: str) -> Sweep:
        sweep = Sweep(self.cwd, name, sweep_argv(self.runs, *flags))
        self.started.append(sweep)
        return sweep

    def run(self, name: str, *flags: str, timeout: float = 300) -> Sweep:
        sweep = self.start(name, *flags)
        sweep.wait(timeout)
        return sweep

    def close(self) -> None:
        for sweep in self.started:
            sweep.kill_group()


@pytest.fixture
def sweeps(tmp_path: Path) -> Iterator[Sweeps]:
    s = Sweeps(tmp_path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The planned run ids in the order the sweep starts them (what `pending_runs` gives a fresh folder)."""
    from modexp.sweep import build_study, pending_runs

    study = build_study([*BASE, f"runs_dir={tmp_path_factory.mktemp('plan')}"])
    todo, failed = pending_runs(study, retry_failed=False)
    assert not failed
    ids = [spec.run_id for spec in todo]
    assert len(ids) == 4 and len({s.variant for s in todo}) == 2 and len({s.shape for s in todo}) == 2, ids
    return ids


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sweeps, Sweep, Sweep]]:
    """Two `modexp sweep` processes started at once on the same (empty) folder, both run to their end."""
    s = Sweeps(tmp_path_factory.mktemp("concurrent"))
    a, b = s.start("a"), s.start("b")
    a.wait(400)
    b.wait(400)
    yield s, a, b
    s.close()


# --- 1. dry run ------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_creates_nothing(sweeps: Sweeps, queue: list[str]) -> None:
    sweep = sweeps.run("dry", "--dry-run", timeout=120)
    assert sweep.proc.returncode == 0, sweep.stderr
    for run_id in queue:  # each run's row ends in the hash its folder name ends in
        assert run_id.rsplit("-", 1)[1] in sweep.stdout
    assert "4 runs" in sweep.stdout
    assert not sweeps.runs.exists()  # no run folder, no plan.json, no prepared data
    assert sorted(p.name for p in sweeps.cwd.iterdir()) == ["dry.err", "dry.out"]


# --- 2. kill -9 of the whole sweep -----------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_the_whole_sweep_then_the_same_command_finishes_it(
    sweeps: Sweeps, queue: list[str]
) -> None:
    sd = sweeps.sweep_dir
    first = sweeps.start("first")

    def one_done_one_midway() -> bool:
        # "done" by its status, written after summary.json: a kill between the two leaves a run to resume.
        done = [r for r in queue if status(sd / r).get("state") == "done"]
        midway = [r for r in queue if r not in done and (sd / r / CHECKPOINT).exists()]
        return bool(done and midway)

    poll(one_done_one_midway, 240, "finished run beside a run with a checkpoint", first)
    os.killpg(first.proc.pid, signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    poll(lambda: not train_children(sd), 10, "end of the training children with their sweep")

    done = [r for r in queue if status(sd / r).get("state") == "done"]
    rest = [r for r in queue if r not in done]
    assert done and rest, [status(sd / r) for r in queue]
    before = {r: snapshot(sd / r) for r in done}
    resume_at = {r: checkpoint_step(sd / r) for r in rest}
    assert any(step is not None for step in resume_at.values()), resume_at

    second = sweeps.run("second")
    assert second.proc.returncode == 0, second.stderr
    assert f"4 runs planned, {len(done)} done, {len(rest)} to run" in second.stderr
    for r in done:  # finished runs untouched: summary, checkpoint, logs, status
        assert snapshot(sd / r) == before[r], r
    for r in rest:  # interrupted runs resumed from their checkpoints, the others started from step 0
        assert_trained_once_per_start(sd / r, r, resume_at[r])
    assert_study_complete(sd, queue)


# --- 3. kill -9 of one training child --------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_one_run_interrupts_it_alone_and_a_plain_rerun_resumes_it(
    sweeps: Sweeps, queue: list[str]
) -> None:
    sd = sweeps.sweep_dir
    first = sweeps.start("first")

    def a_run_past_its_first_checkpoint() -> tuple[str, int] | None:
        for run_id, pid in train_children(sd).items():
            st = status(sd / run_id)
            if st.get("state") == "running" and st.get("pid") == pid and 5 <= st["step"] < st["steps"]:
                return run_id, pid
        return None

    victim, pid = poll(a_run_past_its_first_checkpoint, 240, "run past its first checkpoint", first)
    os.kill(pid, signal.SIGKILL)
    rc = first.wait()
    assert rc == 1, first.stderr
    # Killed from outside, nothing wrong with the run: interrupted, not failed.
    assert not [line for line in first.stderr.splitlines() if line.startswith("[sweep] FAILED")], first.stderr
    stopped = [line for line in first.stderr.splitlines() if line.startswith("[sweep] not finished")]
    assert len(stopped) == 1 and victim in stopped[0] and "SIGKILL" in stopped[0], stopped
    assert "resume when you rerun the same command" in first.stderr

    st = status(sd / victim)
    assert st["state"] == "interrupted"
    assert "SIGKILL" in st["reason"]
    assert st["exit_code"] == -signal.SIGKILL
    assert "step 1/" in st["log_tail"], st  # the run's own log lines
    others = [r for r in queue if r != victim]
    for r in others:
        assert status(sd / r).get("state") == "done", (r, status(sd / r))
    before = {r: snapshot(sd / r) for r in others}
    step = checkpoint_step(sd / victim)
    assert step is not None and step >= 5

    retry = sweeps.run("retry")  # a plain rerun: no --retry-failed needed
    assert retry.proc.returncode == 0, retry.stderr
    assert "4 runs planned, 3 done, 1 to run" in retry.stderr
    for r in others:
        assert snapshot(sd / r) == before[r], r
    assert_trained_once_per_start(sd / victim, victim, step)
    assert_study_complete(sd, queue)


# --- 4. two sweeps at once on one folder -----------------------------------------------------------------


@pytest.mark.slow
def test_two_sweeps_at_once_train_every_run_exactly_once(concurrent, queue: list[str]) -> None:
    s, a, b = concurrent
    for sweep in (a, b):
        assert sweep.proc.returncode == 0, sweep.stderr
        assert "all 4 runs done" in sweep.stdout
        assert "4 runs planned, 0 done, 4 to run" in sweep.stderr  # both raced for every run
    for r in queue:
        run_dir = s.sweep_dir / r
        log = (run_dir / "train.log").read_text()
        assert len(FRESH_START.findall(log)) == 1, log  # started from step 0 once ...
        assert "resuming" not in log, log  # ... and never resumed: no second process trained it
        assert_trained_once_per_start(run_dir, r, None)
    assert_study_complete(s.sweep_dir, queue)


# --- 5. --fail-fast --------------------------------------------------------------------------------------


def test_fail_fast_stops_at_the_first_failed_run(sweeps: Sweeps, queue: list[str]) -> None:
    """The run started first has an unreadable checkpoint (a corrupt run folder): it fails when it loads it."""
    sd = sweeps.sweep_dir
    bad = queue[0]
    (sd / bad / CHECKPOINT).parent.mkdir(parents=True)
    (sd / bad / CHECKPOINT).write_bytes(b"not a checkpoint")

    sweep = sweeps.run("ff", "--fail-fast", timeout=180)
    assert sweep.proc.returncode == 1, sweep.stderr
    assert f"[sweep] FAILED {bad}: no checkpoint of" in sweep.stderr  # the run's own one-line reason
    assert status(sd / bad)["state"] == "failed"
    assert not train_children(sd)
    # The run started beside it was stopped (or never got going, or finished first).
    beside = status(sd / queue[1]).get("state")
    assert beside in ("planned", "interrupted", "done"), status(sd / queue[1])
    # A slot freed before the failure may start the next run, which is then stopped; nothing starts after it.
    started = [r for r in queue[2:] if (sd / r / "stdout.log").exists()]
    assert started == queue[2 : 2 + len(started)] and len(started) <= (beside == "done"), (beside, started)
    for r in queue[2:]:
        assert status(sd / r).get("state") in ("planned", "interrupted" if r in started else "planned"), r
        assert not (sd / r / CHECKPOINT).exists(), r  # stopped before it trained a checkpoint's worth
        if r not in started:
            assert not (sd / r / "train.log").exists()


# --- 6. Ctrl-C -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_next_sweep_resumes(sweeps: Sweeps, queue: list[str]) -> None:
    sd = sweeps.sweep_dir
    first = sweeps.start("first")

    def training_past_a_checkpoint() -> bool:
        return any(
            status(sd / r).get("state") == "running" and status(sd / r).get("step", 0) >= 5
            for r in train_children(sd)
        )

    poll(training_past_a_checkpoint, 240, "run past its first checkpoint", first)
    os.killpg(first.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert first.wait(90) == 130, first.stderr
    assert "interrupted" in first.stderr
    assert not train_children(sd)  # the sweep waited for its children
    assert not first.group()

    states = {r: status(sd / r).get("state") for r in queue}
    resume_at = {r: checkpoint_step(sd / r) for r in queue if states[r] != "done"}
    for r, step in resume_at.items():
        # A run that trained is marked interrupted; one stopped while still starting up stays planned.
        expected = ("interrupted",) if step is not None else ("planned", "interrupted")
        assert states[r] in expected, (r, step, status(sd / r))
    assert any(step is not None for step in resume_at.values()), resume_at

    second = sweeps.run("second")
    assert second.proc.returncode == 0, second.stderr
    for r, step in resume_at.items():
        assert_trained_once_per_start(sd / r, r, step)
    assert_study_complete(sd, queue)


# --- 7. re-running a finished sweep ----------------------------------------------------------------------


@pytest.mark.slow
def test_rerun_of_a_finished_sweep_trains_nothing_and_redraws(concurrent, queue: list[str]) -> None:
    s, _, _ = concurrent
    sd = s.sweep_dir
    assert all(status(sd / r).get("state") == "done" for r in queue)
    before = {r: snapshot(sd / r) for r in queue}
    (sd / "results.csv").unlink()
    shutil.rmtree(sd / "plots")

    t0 = time.monotonic()
    again = s.run("again")
    elapsed = time.monotonic() - t0
    assert again.proc.returncode == 0, again.stderr
    assert "4 runs planned, 4 done, 0 to run" in again.stderr
    assert "all 4 runs done" in again.stdout
    for r in queue:  # no child started: it would have appended to stdout.log at least
        assert snapshot(sd / r) == before[r], r
    assert_study_complete(sd, queue)
    assert elapsed < 120


# --- resume of a run killed between its last checkpoint and its summary ----------------------------------


@pytest.mark.slow
def test_run_killed_after_its_last_checkpoint_resumes_to_its_val_loss(
    concurrent, queue: list[str], tmp_path: Path
) -> None:
    """What kill -9 leaves in that window: the final checkpoint, status 'running', no summary.json."""
    s, _, _ = concurrent
    run_id = queue[0]
    original = read_json(s.sweep_dir / run_id / "summary.json")
    run_dir = tmp_path / "smoke" / run_id
    shutil.copytree(s.sweep_dir / run_id, run_dir)
    assert checkpoint_step(run_dir) == original["steps"]
    st = status(run_dir)
    (run_dir / "status.json").write_text(json.dumps({**st, "state": "running", "pid": 1}))
    (run_dir / "summary.json").unlink()

    proc = subprocess.run(
        [sys.executable, "-m", "modexp.train", str(run_dir)],
        cwd=tmp_path,
        env={**child_env(), "MODEXP_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["val_loss"] is not None, "val_loss null after resuming at the last step"
    assert abs(summary["val_loss"] - original["val_loss"]) < 1e-5
    assert "Logging error" not in proc.stderr


# --- Ctrl-C: the sweep's SIGTERM landing while a child records its interruption -------------------------


def test_sigterm_during_the_interrupt_record_still_marks_the_run_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process and deterministic: SIGINT at step 10 (Ctrl-C), then the sweep's SIGTERM arrives just as
    the run writes status 'interrupted' (in a terminal both reach the child within a millisecond)."""
    import logging

    import torch

    import modexp.train as train_mod
    from modexp.config import compose_config, to_typed
    from modexp.plan import single_run
    from modexp.rundir import sweep_dir, write_run
    from modexp.sweep import run_config

    dict_cfg = compose_config(
        ["sweep=smoke", "budget=2e9", "model.d_model=16", "model.n_heads=2", f"runs_dir={tmp_path}"]
    )
    spec = single_run(to_typed(dict_cfg))
    run_dir = sweep_dir(to_typed(dict_cfg)) / spec.run_id
    write_run(run_dir, run_config(dict_cfg, spec), spec)

    real_update, real_set_status = train_mod._Progress.update, train_mod.set_status
    sent: list[int] = []

    def update(self, step: int, loss: float, *pace: float) -> None:  # pace: tokens/s, step time
        real_update(self, step, loss, *pace)
        if step >= 10 and not sent:
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    def set_status(run_dir: Path, state: str, **fields: Any) -> None:
        if state == "interrupted" and signal.SIGTERM not in sent:
            sent.append(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        real_set_status(run_dir, state, **fields)

    monkeypatch.setattr(train_mod._Progress, "update", update)
    monkeypatch.setattr(train_mod, "set_status", set_status)
    monkeypatch.setenv("MODEXP_THREADS", "1")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    log_handlers, threads = list(logging.getLogger().handlers), torch.get_num_threads()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = train_mod.main([str(run_dir)])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        for h in list(logging.getLogger().handlers):
            if h not in log_handlers:
                logging.getLogger().removeHandler(h)
                h.close()
        torch.set_num_threads(threads)
    assert sent == [signal.SIGINT, signal.SIGTERM]
    assert rc == 130
    assert status(run_dir)["state"] == "interrupted", status(run_dir)


def test_plan_json_remembers_every_run_planned_into_the_folder(tmp_path: Path) -> None:
    """A second sweep adding a capacity to the same folder keeps the first one's runs in the study."""
    from modexp.sweep import build_study, write_plan

    common = ["sweep=smoke", f"runs_dir={tmp_path}"]
    first = build_study([*common, "model.capacity=0.125"])
    write_plan(first, ["model.capacity=0.125"])
    second = build_study([*common, "model.capacity=0.5"])
    write_plan(second, ["model.capacity=0.5"])
    plan = json.loads((second.dir / "plan.json").read_text())
    assert plan["overrides"] == ["model.capacity=0.5"]
    assert {r["run_id"] for r in plan["runs"]} == {s.run_id for s in second.plan.runs}
    every = {s.run_id for s in first.plan.runs} | {s.run_id for s in second.plan.runs}
    assert set(plan["planned_ids"]) == every and len(every) > len(second.plan.runs)
