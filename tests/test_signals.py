"""Signals: SIGTERM/SIGHUP stop a sweep as Ctrl-C does (runs marked interrupted, one line, non-zero exit,
the rerun resumes), and no process of a run outlives the command that started it, even a kill -9 of it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import child_env, run_main, start_detached, trainer_pids

from modexp import lifeline
from modexp.rundir import RunLock, run_state

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")

EXE = Path(sys.executable).parent / "modexp"
TINY = [
    "sweep=smoke",
    "sweep.min_tokens_per_param=0.1",
    "model.d_model=16",
    "model.n_heads=2",
    "model.n_layers=2",
    "train.log_every=1",
    "train.eval_every=10",
]


def trainers(run_dir: Path) -> list[int]:
    """Pids of live `python -m modexp.train` processes of runs under run_dir."""
    return trainer_pids(run_dir, inside=True)


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} not within {limit} s: {log.read_text()[-3000:]}"
        time.sleep(0.05)


def states(runs: Path) -> dict[str, str]:
    return {d.name: run_state(d) for d in (runs / "smoke").iterdir() if (d / "run.json").exists()}


def training(runs: Path) -> bool:
    for status in (runs / "smoke").glob("*/status.json"):
        with contextlib.suppress(ValueError, OSError):
            if json.loads(status.read_text()).get("state") == "running":
                return True
    return False


def gone_within(seconds: float, run_dir: Path) -> bool:
    deadline = time.monotonic() + seconds
    while trainers(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not trainers(run_dir)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_signalled_sweep_stops_its_runs_as_interrupted_and_says_so(tmp_path: Path) -> None:
    """What timeout, SLURM and container stops send (to the sweep alone): children stopped and marked
    interrupted, one line, exit 128+signal; nothing left training; the next rerun resumes them. (SIGHUP takes
    the same path: see the next test.)"""
    sig = signal.SIGTERM
    runs = tmp_path / "runs"
    log = tmp_path / "sweep.log"
    # A sweep takes its shapes from sweep.ladder: the model's shape settings would do nothing there (refused).
    study = [a for a in TINY if not a.startswith("model.")]
    cmd = [str(EXE), "sweep", *study, "launcher.workers=2", f"runs_dir={runs}"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(tmp_path), cwd=tmp_path
        )
    try:
        wait_for(lambda: (runs / "smoke").is_dir() and training(runs), "a running run", proc, log)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
        assert gone_within(5, runs)
    finally:
        kill_all([proc.pid, *trainers(runs)])
    said = log.read_text().splitlines()
    assert (
        said[-1]
        == f"[sweep] stopped by {signal.Signals(sig).name}: running runs were stopped and resume on the next run"
    )
    assert "Traceback" not in log.read_text()
    found = states(runs)
    assert "interrupted" in found.values() and "running" not in found.values(), found
    assert set(found.values()) <= {"interrupted", "planned", "done"}, found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_any_command_signalled_says_one_line_and_restores_handlers(
    sig: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside a sweep's pool too (planning, analysing): one line, 128+signal, no traceback; a second signal
    while stopping is ignored; main() leaves the caller's handlers as they were."""
    from modexp import cli

    def signalled(args, overrides) -> int:
        os.kill(os.getpid(), sig)
        time.sleep(5)
        return 0

    before = signal.getsignal(sig)
    monkeypatch.setattr(cli, "cmd_plan", signalled)
    rc, out, err = run_main(["plan"], capsys)
    assert rc == 128 + sig
    assert err.strip() == f"modexp: stopped by {signal.Signals(sig).name}: rerun the same command to resume"
    assert signal.getsignal(sig) == before


def test_kill_9_of_a_two_process_train_takes_its_ranks_with_it(tmp_path: Path) -> None:
    """torchrun gives its ranks sessions of their own: a kill -9 of `modexp train`'s process group used to
    leave both ranks training and holding the lock. Now they stop within seconds, mark the run interrupted,
    and the lock is free for the rerun that resumes it."""
    runs = tmp_path / "runs"
    log = tmp_path / "train.log"
    argv = [*TINY, "budget=3e9", f"runs_dir={runs}", "launcher.gpus_per_run=2", "device=cpu"]
    with log.open("w") as out:
        proc = start_detached([str(EXE), "train", *argv], out, tmp_path)
    try:
        wait_for(lambda: (runs / "smoke").is_dir() and training(runs), "ranks training", proc, log)
        ranks = trainers(runs)
        assert len(ranks) >= 2, ranks  # torchrun's two workers (torchrun's own argv names the folder too)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # A rank inside a gloo collective takes its SIGTERM once the collective sees its peer gone: seconds,
        # more on a loaded machine (10 s failed about 1 run in 8 beside a busy core). Left training, the
        # ranks would finish the run instead: the state check below tells the two apart.
        assert gone_within(30, runs), trainers(runs)
    finally:
        kill_all([*trainers(runs)])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    (run_dir,) = [d for d in (runs / "smoke").iterdir() if d.is_dir()]
    lock = RunLock(run_dir)
    assert lock.acquire(), "a rank still holds the run's lock"
    lock.release()
    assert run_state(run_dir) == "interrupted"  # what the rerun resumes from its last checkpoint


def _tied_grandchild(tmp_path: Path, sig: int) -> tuple[subprocess.Popen, int]:
    """A middle process that starts a sleeping child through lifeline.preexec, then prints its pid."""
    code = (
        "import subprocess, sys, time; from modexp import lifeline; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        f"preexec_fn=lifeline.preexec({sig})); print(p.pid, flush=True); time.sleep(60)"
    )
    middle = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return middle, int(middle.stdout.readline())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_process_started_through_preexec_dies_with_its_starter(tmp_path: Path, sig: int) -> None:
    middle, child = _tied_grandchild(tmp_path, sig)
    try:
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait(timeout=10)
        deadline = time.monotonic() + 5
        while lifeline._alive(child) and not Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            assert time.monotonic() < deadline, "the grandchild outlived its parent"
            time.sleep(0.02)
    finally:
        kill_all([middle.pid, child])


@pytest.mark.parametrize("launcher", ["dead", "alive"])
def test_a_rank_whose_launcher_died_before_it_tied_stops_at_once(launcher: str) -> None:
    """The gap between a rank's fork and its prctl: a launcher already gone means stop now."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid = dead.pid if launcher == "dead" else os.getpid()
    code = "import time; from modexp import lifeline; lifeline.stay_tied(); time.sleep(0.3); print('alive')"
    env = {**os.environ, lifeline.LAUNCHER_PID: str(pid)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    if launcher == "dead":
        assert done.returncode == -signal.SIGTERM and "alive" not in done.stdout
    else:
        assert done.returncode == 0 and done.stdout.strip() == "alive"


def test_a_rank_that_cannot_take_its_signal_ends_after_a_grace_once_its_parent_is_gone() -> None:
    """A rank blocked in a collective never runs its SIGTERM handler (here: the signal ignored, the main
    thread asleep): once the process that started it is gone, it ends by itself after the grace period."""
    code = (
        "import signal, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; from modexp import lifeline; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); lifeline.end_if_stuck(0.5, 7); time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    middle = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(middle.stdout.readline())
    try:
        time.sleep(1.5)  # its parent alive: it stays
        assert lifeline._alive(child)
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait(timeout=10)
        deadline = time.monotonic() + 10
        while lifeline._alive(child) and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the stuck child outlived its parent past the grace"
            time.sleep(0.05)
    finally:
        kill_all([middle.pid, child])
