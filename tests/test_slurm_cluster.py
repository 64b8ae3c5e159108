"""The single-node SLURM cluster of `make slurm-up` answers and runs jobs, alone and through submitit.

Without a cluster these tests are skipped, except under CI (CI=true), where the cluster is started
before the tests (`bash .ci/run`) and its absence is a failure.
"""

from __future__ import annotations

import functools
import operator
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(90)]

IN_CI = os.environ.get("CI", "").lower() == "true"
READY_STATES = {"idle", "mixed", "allocated", "completing"}


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    """(name of a node ready to run jobs, None) or (None, why there is no usable cluster)."""
    for tool in ("sbatch", "sinfo", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return None, f"`{tool}` is not on PATH"
    try:
        # `scontrol ping` answers at once; `sinfo` retries for ~10 s when slurmctld is down.
        ping = _run(["scontrol", "ping"])
        if "is UP" not in ping.stdout:
            first = (ping.stdout.strip() or ping.stderr.strip() or "no output").splitlines()[0]
            return None, f"slurmctld is not answering (`scontrol ping`: {first})"
        res = _run(["sinfo", "-h", "-N", "-o", "%N %T %P"])
    except subprocess.TimeoutExpired as e:
        return None, f"`{' '.join(e.cmd)}` did not answer within {e.timeout:.0f} s"
    if res.returncode != 0:
        return None, f"`sinfo` failed: {(res.stderr or res.stdout).strip()}"
    nodes = [line.split() for line in res.stdout.splitlines() if line.strip()]
    ready = [n[0] for n in nodes if len(n) >= 2 and n[1].rstrip("*~#!%$@^-") in READY_STATES]
    if not ready:
        return None, f"no node ready to run jobs (sinfo: {res.stdout.strip() or 'empty'})"
    return ready[0], ""


def _require_cluster() -> str:
    """The name of a ready node. Skips the test without a usable cluster, fails it instead under CI=true."""
    node, reason = _probe()
    if node is None:
        if IN_CI:
            pytest.fail(f"SLURM cluster required under CI=true: {reason} (start it with `make slurm-up`)")
        pytest.skip(f"no SLURM cluster: {reason} (start one with `make slurm-up`)")
    return node


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_sinfo_answers() -> None:
    _require_cluster()
    res = _run(["sinfo", "-h", "-o", "%P %a"])
    assert res.returncode == 0, res.stderr
    partitions = dict(line.split() for line in res.stdout.splitlines() if line.strip())
    assert partitions, res.stdout
    # The default partition is marked with '*' and must be up.
    default = [p for p in partitions if p.endswith("*")]
    assert default and partitions[default[0]] == "up", res.stdout


def test_sbatch_wrap_runs_to_completion(tmp_path: Path) -> None:
    _require_cluster()
    out = tmp_path / "job.out"
    res = _run(
        [
            "sbatch",
            "--parsable",
            "--wait",  # block until the job ends; the exit status is the job's
            "--job-name=modexp-test",
            "--ntasks=1",
            "--cpus-per-task=1",
            "--mem=100M",
            "--time=1",
            f"--chdir={tmp_path}",
            f"--output={out}",
            "--wrap",
            'echo "hello from $SLURM_JOB_ID on $(hostname -s) in $PWD"',
        ],
        timeout=60,
    )
    assert res.returncode == 0, f"sbatch --wait failed ({res.returncode}): {res.stdout} {res.stderr}"
    job_id = res.stdout.strip().split(";")[0]
    text = out.read_text()
    assert f"hello from {job_id} " in text and str(tmp_path) in text, text
    show = _run(["scontrol", "show", "job", "-o", job_id])
    # Finished jobs stay visible for MinJobAge seconds; without accounting this is the only record.
    if show.returncode == 0:
        assert "JobState=COMPLETED" in show.stdout, show.stdout


def test_submitit_returns_result(tmp_path: Path) -> None:
    _require_cluster()
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    assert executor.cluster == "slurm"
    # Default partition; submitit's default `--signal=USR2@90` would hit a job this short-limited at once.
    executor.update_parameters(cpus_per_task=1, mem_gb=1, timeout_min=2, slurm_signal_delay_s=10)
    # A stdlib function unpickles in the job without this test module being importable there.
    job = executor.submit(operator.mul, 6, 7)
    deadline = time.monotonic() + 60
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after 60 s; stderr: {job.stderr()}")
        time.sleep(0.5)
    assert job.result() == 42
