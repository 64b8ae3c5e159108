"""`modexp sweep launcher=slurm` end to end on the single-node cluster of `make slurm-up`.

Each test runs the real CLI in a subprocess, in a fresh runs_dir, under a sweep name of its own (so that its
SLURM job name, modexp-<name>, is its own too: other test sessions may share the cluster). Without a cluster
the tests are skipped, except under CI (CI=true), where its absence is a failure.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm]

IN_CI = os.environ.get("CI", "").lower() == "true"
READY_STATES = {"idle", "mixed", "allocated", "completing"}
# Two budgets x two sizes x two variants, each run a few dozen steps (modexp plan: 8 runs).
CHEAP = ["sweep.budgets=[2e9,4e9]", "sweep.min_tokens_per_param=0.1", "sweep.min_steps=5"]
# One budget, one size, both variants: runs of several hundred steps, a checkpoint every 20.
LONG = [
    "sweep.budgets=[3e10]",
    "sweep.sizes_per_budget=1",
    "train.checkpoint_every=20",
    "train.eval_every=100000",
]


@functools.lru_cache(maxsize=1)
def _probe() -> str:
    """'' when a node is ready to run jobs, else why there is no usable cluster."""
    for tool in ("sbatch", "sinfo", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    try:
        ping = _run(["scontrol", "ping"])
        if "is UP" not in ping.stdout:
            first = (ping.stdout.strip() or ping.stderr.strip() or "no output").splitlines()[0]
            return f"slurmctld is not answering (`scontrol ping`: {first})"
        res = _run(["sinfo", "-h", "-N", "-o", "%N %T"])
    except subprocess.TimeoutExpired as e:
        return f"`{' '.join(e.cmd)}` did not answer within {e.timeout:.0f} s"
    if res.returncode != 0:
        return f"`sinfo` failed: {(res.stderr or res.stdout).strip()}"
    nodes = [line.split() for line in res.stdout.splitlines() if line.strip()]
    if not any(len(n) >= 2 and n[1].rstrip("*~#!%$@^-") in READY_STATES for n in nodes):
        return f"no node ready to run jobs (sinfo: {res.stdout.strip() or 'empty'})"
    return ""


def _require_cluster() -> None:
    reason = _probe()
    if reason:
        if IN_CI:
            pytest.fail(f"SLURM cluster required under CI=true: {reason} (start it with `make slurm-up`)")
        pytest.skip(f"no SLURM cluster: {reason} (start one with `make slurm-up`)")


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class Sweep:
    """One sweep of a test: its runs_dir, its unique name, and the CLI called on it."""

    def __init__(self, root: Path, name: str, overrides: list[str]) -> None:
        self.root, self.name, self.overrides = root, name, overrides
        self.dir = root / "runs" / name
        self.env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}

    @property
    def job_name(self) -> str:
        return f"modexp-{self.name}"

    def cmd(self, *flags: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "modexp.cli",
            "sweep",
            "sweep=smoke",
            f"runs_dir={self.root / 'runs'}",
            f"sweep.name={self.name}",
            "launcher=slurm",
            *self.overrides,
            *flags,
        ]

    def run(self, *flags: str, timeout: float = 150, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(*flags),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=env or self.env,
        )

    def start(self, *flags: str) -> tuple[subprocess.Popen, Path]:
        """The sweep in the background; its stderr goes to a file (read it with .read_text())."""
        err = self.root / f"sweep-{time.monotonic_ns()}.err"
        with err.open("w") as f:
            proc = subprocess.Popen(
                self.cmd(*flags), stdout=subprocess.DEVNULL, stderr=f, cwd=self.root, env=self.env
            )
        return proc, err

    @property
    def jobs(self) -> dict[str, str]:
        return json.loads((self.dir / "slurm" / "jobs.json").read_text())

    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in json.loads((self.dir / "plan.json").read_text())["runs"]]

    def status(self, run_id: str) -> dict:
        return json.loads((self.dir / run_id / "status.json").read_text())

    def meta(self, run_id: str) -> dict:
        return json.loads((self.dir / run_id / "meta.json").read_text())

    def queued(self) -> dict[str, str]:
        """job id -> state of this sweep's jobs still in the queue."""
        out = _run(["squeue", "-h", "-r", "-n", self.job_name, "-o", "%i %T"])
        assert out.returncode == 0, out.stderr
        return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


@pytest.fixture
def make_sweep(tmp_path: Path) -> Iterator[Callable[[list[str]], Sweep]]:
    """Sweeps under a fresh folder and a unique name; their jobs still queued at the end are cancelled."""
    _require_cluster()
    made: list[Sweep] = []

    def make(overrides: list[str]) -> Sweep:
        sweep = Sweep(tmp_path, f"slt{uuid.uuid4().hex[:8]}", overrides)
        made.append(sweep)
        return sweep

    yield make
    for sweep in made:
        subprocess.run(["scancel", "-n", sweep.job_name], capture_output=True, timeout=30)


def _wait_for(what: str, predicate: Callable[[], object], timeout: float, proc=None, err=None):
    """Poll until predicate() is truthy; fail naming `what` (and the sweep's stderr) after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"sweep exited ({proc.returncode}) while waiting for {what}: {_tail(err)}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {_tail(err)}")


def _tail(err: Path | None, lines: int = 30) -> str:
    return "\n".join(err.read_text().splitlines()[-lines:]) if err and err.exists() else ""


def _wait_exit(proc: subprocess.Popen, err: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=30)
        pytest.fail(f"sweep still running after {timeout:.0f} s: {_tail(err)}")


def _mid_run(sweep: Sweep, run_id: str) -> bool:
    """The run has a checkpoint and is still training (far from its last step)."""
    run_dir = sweep.dir / run_id
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return False
    try:
        status = sweep.status(run_id)
    except (OSError, json.JSONDecodeError):
        return False
    return status.get("state") == "running" and 0 < (status.get("step") or 0) < status["steps"] - 100


def _longest(sweep: Sweep) -> str:
    runs = json.loads((sweep.dir / "plan.json").read_text())["runs"]
    return max(runs, key=lambda r: r["steps"])["run_id"]


def _assert_results(sweep: Sweep, out: subprocess.CompletedProcess | None = None) -> None:
    detail = f"{out.stdout}\n{out.stderr[-3000:]}" if out is not None else ""
    with (sweep.dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["run_id"] for r in rows} >= set(sweep.run_ids()), detail
    assert sorted(p.name for p in (sweep.dir / "plots").glob("*.png")), detail
    for run_id in sweep.run_ids():
        assert sweep.status(run_id)["state"] == "done", (run_id, sweep.status(run_id))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sweep_on_slurm_completes_and_draws_figures(make_sweep) -> None:
    sweep = make_sweep(CHEAP)
    out = sweep.run()
    assert out.returncode == 0, out.stderr[-3000:]
    run_ids = sweep.run_ids()
    assert len(run_ids) == 8, run_ids
    assert "[slurm] submitted 8 jobs" in out.stderr
    assert f"all 8 runs done. Table: {sweep.dir / 'results.csv'}" in out.stdout
    jobs = sweep.jobs
    assert set(jobs) == set(run_ids) and len(set(jobs.values())) == 8, jobs
    _assert_results(sweep, out)
    pngs = {p.stem for p in (sweep.dir / "plots").glob("*.png")}
    assert {"isoflop", "learning_curves"} <= pngs, pngs
    # Every run was trained by its own SLURM job (submitit's log of that job is there).
    for run_id, job_id in jobs.items():
        logs = list((sweep.dir / "slurm" / "jobs").glob(f"{job_id}_*log.out"))
        assert logs, (run_id, job_id, sorted(p.name for p in (sweep.dir / "slurm" / "jobs").iterdir()))
    assert sweep.queued() == {}


@pytest.mark.timeout(60)
def test_dry_run_shows_resources_and_submits_nothing(make_sweep) -> None:
    sweep = make_sweep(CHEAP + ["launcher.mem_gb=2", "launcher.time_min=7"])
    out = sweep.run("--dry-run", timeout=50)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("would submit")]
    assert len(lines) == 1, out.stdout
    assert "cpus=1" in lines[0] and "mem=2GB" in lines[0] and "time=7min" in lines[0], lines[0]
    assert "8 runs" in out.stdout
    assert not sweep.dir.exists()  # no plan.json, no run folders, no slurm/jobs.json
    assert sweep.queued() == {}


def _no_sbatch_env(sweep: Sweep) -> dict:
    empty = sweep.root / "empty-bin"
    empty.mkdir(exist_ok=True)
    return {**sweep.env, "PATH": str(empty)}  # sys.executable is an absolute path: python still runs


BAD_LAUNCHERS = {
    "partition": (["launcher.partition=nope"], None, ["launcher.partition=nope", "choose one of debug"]),
    "no-sbatch": ([], _no_sbatch_env, ["launcher=slurm needs SLURM's sbatch on PATH"]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD_LAUNCHERS))
def test_bad_launcher_fails_before_submitting(make_sweep, case: str) -> None:
    extra, env_of, words = BAD_LAUNCHERS[case]
    sweep = make_sweep(CHEAP + extra)
    out = sweep.run(timeout=50, env=env_of(sweep) if env_of else None)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("modexp: error: ") and all(w in last for w in words), out.stderr
    assert "Traceback" not in out.stderr
    assert not (sweep.dir / "slurm" / "jobs.json").exists()
    assert sweep.queued() == {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD_LAUNCHERS))
def test_bad_launcher_is_one_line_and_leaves_no_run_folders(make_sweep, case: str) -> None:
    extra, env_of, words = BAD_LAUNCHERS[case]
    sweep = make_sweep(CHEAP + extra)
    out = sweep.run(timeout=50, env=env_of(sweep) if env_of else None)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    run_dirs = [p.name for p in sweep.dir.glob("*") if p.is_dir()] if sweep.dir.exists() else []
    assert run_dirs == [], run_dirs


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_detach_then_reattach_submits_nothing_new(make_sweep) -> None:
    sweep = make_sweep(["sweep.budgets=[2e9]", "sweep.min_tokens_per_param=0.1", "sweep.min_steps=5"])
    t0 = time.monotonic()
    first = sweep.run("--detach", timeout=60)
    assert first.returncode == 0, first.stderr
    assert time.monotonic() - t0 < 30, "--detach should return once the jobs are submitted"
    assert "[slurm] submitted 4 jobs" in first.stderr and "detached" in first.stderr, first.stderr
    jobs = sweep.jobs
    assert len(jobs) == 4 and set(jobs) == set(sweep.run_ids()), jobs
    still_queued = {r: j for r, j in jobs.items() if j in sweep.queued()}
    assert still_queued, "every job already left the queue: nothing left to reattach to"

    second = sweep.run(timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reattached to" in second.stderr, second.stderr
    assert "[slurm] submitted" not in second.stderr, second.stderr
    assert sweep.jobs == jobs  # no run got a new job
    _assert_results(sweep, second)
    assert sweep.queued() == {}


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_scancelled_job_is_recorded_failed_and_retry_resumes_it(make_sweep) -> None:
    sweep = make_sweep(LONG)
    proc, err = sweep.start()
    _wait_for("plan.json", lambda: (sweep.dir / "plan.json").exists(), 60, proc, err)
    victim = _longest(sweep)
    _wait_for("jobs.json", lambda: (sweep.dir / "slurm" / "jobs.json").exists(), 60, proc, err)
    job_id = sweep.jobs[victim]
    _wait_for(f"a checkpoint of {victim}", lambda: _mid_run(sweep, victim), 90, proc, err)
    cancel = _run(["scancel", job_id])
    assert cancel.returncode == 0, cancel.stderr
    rc = _wait_exit(proc, err, 120)
    stderr = err.read_text()
    assert rc == 1, stderr[-3000:]
    assert f"[sweep] FAILED {victim}: SLURM job {job_id} ended CANCELLED" in stderr, stderr[-3000:]
    status = sweep.status(victim)
    assert status["state"] == "failed" and status["slurm_state"].startswith("CANCELLED"), status
    assert status["slurm_job"] == job_id, status
    others = [r for r in sweep.run_ids() if r != victim]
    assert others and all(sweep.status(r)["state"] == "done" for r in others)

    # --retry-failed submits it again, and it resumes from its checkpoint.
    retry = sweep.run("--retry-failed", timeout=120)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "[slurm] submitted 1 jobs" in retry.stderr, retry.stderr
    assert sweep.jobs[victim] != job_id
    resumed = sweep.meta(victim)["resumed_from_step"]
    assert resumed and resumed % 20 == 0, resumed
    _assert_results(sweep, retry)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_requeued_job_resumes_from_its_checkpoint(make_sweep) -> None:
    sweep = make_sweep(LONG)
    proc, err = sweep.start()
    _wait_for("jobs.json", lambda: (sweep.dir / "slurm" / "jobs.json").exists(), 60, proc, err)
    victim = _longest(sweep)
    job_id = sweep.jobs[victim]
    _wait_for(f"a checkpoint of {victim}", lambda: _mid_run(sweep, victim), 90, proc, err)
    requeue = _run(["scontrol", "requeue", job_id])
    assert requeue.returncode == 0, requeue.stderr
    _wait_for(
        f"{victim} to be interrupted by the requeue",
        lambda: sweep.status(victim)["state"] == "interrupted",
        30,
        proc,
        err,
    )
    rc = _wait_exit(proc, err, 150)
    stderr = err.read_text()
    assert rc == 0, stderr[-3000:]
    assert sweep.jobs[victim] == job_id  # the same job, restarted by SLURM
    resumed = sweep.meta(victim)["resumed_from_step"]
    assert resumed and resumed % 20 == 0, resumed
    log = (sweep.dir / victim / "train.log").read_text()
    assert f"resuming {victim} at step {resumed}" in log, log[-2000:]
    _assert_results(sweep)


@pytest.mark.timeout(240)
def test_one_run_on_two_tasks_is_one_job_and_one_run_folder(make_sweep) -> None:
    """launcher.gpus_per_run=2 device=cpu: one job of 2 tasks (srun starts both, gloo between them) trains
    one run folder, with the same losses as one process would."""
    one_run = ["sweep.budgets=[2e9]", "sweep.sizes_per_budget=1", "sweep.variants=[baseline]", *CHEAP[1:]]
    sweep = make_sweep([*one_run, "launcher.gpus_per_run=2", "device=cpu", "launcher.mem_gb=2"])
    out = sweep.run(timeout=220)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tasks_per_node=2" in out.stderr and "[slurm] submitted 1 jobs" in out.stderr, out.stderr
    (run_id,) = sweep.run_ids()
    (job_id,) = sweep.jobs.values()
    script = (sweep.dir / "slurm" / "jobs" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script, script
    assert "--gpus" not in script  # device=cpu: two CPU tasks, no GPU asked for
    logs = sorted(p.name for p in (sweep.dir / "slurm" / "jobs").glob(f"{job_id}_*_log.out"))
    assert logs == [f"{job_id}_0_log.out", f"{job_id}_1_log.out"], logs
    assert sorted(p.name for p in sweep.dir.iterdir() if (p / "run.json").exists()) == [run_id]
    summary = json.loads((sweep.dir / run_id / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["parallel"] == "ddp"
    _assert_results(sweep, out)

    # The same run trained by one process, outside SLURM, from the same run.json and config.yaml.
    local = sweep.root / "local" / run_id
    local.mkdir(parents=True)
    for name in ("run.json", "config.yaml"):
        shutil.copy(sweep.dir / run_id / name, local / name)
    proc = subprocess.run(
        [sys.executable, "-m", "modexp.train", str(local)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=sweep.root,
        env={**sweep.env, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def train_losses(run_dir: Path) -> list[float]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]

    assert train_losses(sweep.dir / run_id) == pytest.approx(train_losses(local), rel=1e-4, abs=1e-4)


@pytest.mark.timeout(240)
def test_branches_on_slurm_wait_on_their_stems_job(make_sweep) -> None:
    """sweep.reuse=branches: each stem is a job, its branches one array that SLURM starts after it (afterok);
    every stem and branch trains in its own folder."""
    sweep = make_sweep(CHEAP + ["sweep.reuse=branches", "sweep.variants=[baseline]"])
    out = sweep.run(timeout=220)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads((sweep.dir / "plan.json").read_text())
    stems = [s["run_id"] for s in plan["stems"]]
    branches = {r["run_id"]: r["stem"] for r in plan["runs"] if r["stem"]}
    assert stems and branches, plan
    jobs = sweep.jobs
    assert set(jobs) == set(stems) | set(sweep.run_ids()) and len(set(jobs.values())) == len(jobs), jobs
    assert "after the job of the run they start from" in out.stderr, out.stderr
    for run_id, stem in branches.items():
        array = jobs[run_id].split("_")[0]  # an array task's id is <array>_<task>; one script per array
        script = (sweep.dir / "slurm" / "jobs" / f"{array}_submission.sh").read_text()
        assert f"--dependency=afterok:{jobs[stem]}" in script, script
        assert "--kill-on-invalid-dep=yes" in script
        assert sweep.status(run_id)["state"] == "done"
        assert json.loads((sweep.dir / run_id / "summary.json").read_text())["stem"] == stem
    for stem in stems:
        assert json.loads((sweep.dir / "stems" / stem / "status.json").read_text())["state"] == "done"
    _assert_results(sweep, out)
