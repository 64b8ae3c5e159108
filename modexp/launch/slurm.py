"""SLURM through submitit: one job per run (a job array), training into the same run folders.

The run folders stay the source of truth, exactly as with the local pool: a job runs `modexp.train` on its run
folder, which takes the run's lock, resumes from its checkpoint and records its status. This module only
submits, remembers which job trains which run (<sweep>/slurm/jobs.json, so a second `modexp sweep` reattaches
instead of submitting twice) and watches the queue. A job hitting its time limit or preempted is requeued by
submitit (Checkpointable) and resumes from the run's last checkpoint.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from ..config import Config, LauncherConfig, processes_per_run
from ..errors import ModexpError
from ..rundir import EXIT_LOCKED, read_json, read_status, run_state, set_status, stem_dir, write_json
from . import Job, Options, register
from .local import log_tail

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "PREEMPTED",
}


class TrainJob(submitit.helpers.Checkpointable):
    """What a SLURM job runs. Checkpointable: on timeout or preemption submitit requeues this same call,
    and training resumes from the run's last checkpoint (at most checkpoint_every steps are redone)."""

    def __init__(self, run_dir: str, threads: int) -> None:
        self.run_dir = run_dir
        self.threads = threads
        # The plug-ins the sweep's config names (plugins.py): the job imports those, never its folder's list.
        self.plugins = os.environ.get("MODEXP_PLUGINS", "")

    def __call__(self) -> str:
        os.environ["MODEXP_THREADS"] = str(self.threads)
        if getattr(self, "plugins", ""):  # a job pickled before this attribute existed has none
            os.environ["MODEXP_PLUGINS"] = self.plugins
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            # One task per process of the run (srun started them): torchrun's environment from SLURM's.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from ..train import main

        code = main([self.run_dir])
        if code == EXIT_LOCKED:
            return "locked"  # another process trains it; the sweep waits on the run folder itself
        if code != 0:
            status = read_status(Path(self.run_dir))
            raise RuntimeError(f"training exited with {code}: {status.get('reason')}")
        return "done"


SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:=@%+/-]{1,256}")  # one sbatch word: no spaces, quotes or newlines


def check_sbatch_words(launcher: LauncherConfig) -> None:
    """Values that are written into sbatch scripts: one `#SBATCH --key=value` line each, nothing more."""
    words = {"launcher.partition": launcher.partition, "launcher.account": launcher.account}
    for key, value in launcher.extra.items():
        if not SBATCH_KEY.fullmatch(str(key)):
            raise ModexpError(
                f"launcher.extra.{key} is not allowed: sbatch option names are letters, digits, _ and -"
            )
        if isinstance(value, (dict, list)) or value is None:
            raise ModexpError(
                f"launcher.extra.{key}={value} is not allowed: give one word, number or true/false"
            )
        words[f"launcher.extra.{key}"] = value if isinstance(value, str) else None
    for key, value in words.items():
        if value is not None and not SBATCH_VALUE.fullmatch(str(value)):
            raise ModexpError(
                f"{key}={value!r} is not allowed: it goes into an sbatch script, so one word of letters, "
                "digits and _ . , : = @ % + / - (no spaces, quotes or newlines)"
            )


def check_cluster(cfg: Config) -> list[str]:
    """Fail before submitting anything: sbatch must exist and the partition must be one the cluster has."""
    if shutil.which("sbatch") is None:
        raise ModexpError(
            "launcher=slurm needs SLURM's sbatch on PATH (for a local test cluster: make slurm-up)"
        )
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModexpError(f"launcher=slurm: sinfo failed ({exc}); is the cluster up?") from None
    if out.returncode != 0:
        raise ModexpError(f"launcher=slurm: sinfo failed: {out.stderr.strip().splitlines()[:1]}")
    partitions = [p.rstrip("*") for p in out.stdout.split()]
    task_layout(cfg)
    if cfg.device == "cuda" and not cfg.launcher.gpus_per_run:
        raise ModexpError(
            "device=cuda with launcher=slurm needs launcher.gpus_per_run >= 1: with 0 the jobs get no GPU"
        )
    if cfg.launcher.partition and cfg.launcher.partition not in partitions:
        raise ModexpError(
            f"launcher.partition={cfg.launcher.partition} is not a partition of this cluster: "
            f"choose one of {', '.join(partitions)}"
        )
    if cfg.device == "auto" and not cfg.launcher.gpus_per_run:
        print("[slurm] launcher.gpus_per_run=0: the jobs get no GPU and train on the CPU", file=sys.stderr)
    return partitions


MAX_TIMEOUTS = 1000


def make_executor(folder: Path, cfg: Config) -> submitit.AutoExecutor:
    launcher = cfg.launcher
    # Each requeue after a time limit resumes from the last checkpoint, so timeouts keep requeueing (submitit's
    # default of 3 failed a run on its fourth); the cap only stops a run that can never reach a checkpoint.
    executor = submitit.AutoExecutor(
        folder=str(folder / "jobs"), cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUTS
    )
    params: dict[str, Any] = {
        "timeout_min": launcher.time_min,
        "cpus_per_task": launcher.cpus_per_run,
        "mem_gb": launcher.mem_gb,
        "slurm_array_parallelism": launcher.array_parallelism,
        "name": f"modexp-{cfg.sweep.name}",
    }
    params.update(task_layout(cfg))
    if launcher.partition:
        params["slurm_partition"] = launcher.partition
    if launcher.account:
        params["slurm_account"] = launcher.account
    if launcher.extra:
        params["slurm_additional_parameters"] = dict(launcher.extra)
    executor.update_parameters(**params)
    return executor


def task_layout(cfg: Config) -> dict[str, int]:
    """Nodes, tasks and GPUs of one run's job: one task (process) per GPU, spanning nodes when a run asks
    for more GPUs than a node has. device=cpu with gpus_per_run=N: N CPU tasks, no GPUs (gloo)."""
    processes = processes_per_run(cfg)
    per_node = min(processes, cfg.launcher.gpus_per_node)
    layout = {"nodes": math.ceil(processes / per_node), "tasks_per_node": per_node}
    if cfg.launcher.gpus_per_run and cfg.device != "cpu":
        layout["gpus_per_node"] = per_node
    if processes > 1 and processes % per_node:
        raise ModexpError(
            f"launcher.gpus_per_run={processes} does not fill whole nodes of launcher.gpus_per_node="
            f"{cfg.launcher.gpus_per_node}: use a multiple of it, or at most one node's worth"
        )
    return layout


def resources(cfg: Config) -> str:
    lc = cfg.launcher
    layout = task_layout(cfg)
    return (
        f"partition={lc.partition or '(default)'} nodes={layout['nodes']} "
        f"tasks_per_node={layout['tasks_per_node']} gpus_per_node={layout.get('gpus_per_node', 0)} "
        f"cpus={lc.cpus_per_run} per task "
        f"mem={lc.mem_gb:g}GB time={lc.time_min}min array_parallelism={lc.array_parallelism}"
        + (f" account={lc.account}" if lc.account else "")
        + (f" extra={dict(lc.extra)}" if lc.extra else "")
    )


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> SLURM state, for the jobs still known to squeue (array tasks listed one by one)."""
    if not job_ids:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    states = dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)
    return {j: states[j] for j in job_ids if j in states}


def final_state(job_id: str) -> str:
    """The state of a job that left the queue: scontrol remembers it for MinJobAge, sacct when accounting is on."""
    for cmd in (
        ["scontrol", "-o", "show", "job", job_id],
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode != 0 or not out.stdout.strip():
            continue
        if cmd[0] == "scontrol":
            for field in out.stdout.split():
                if field.startswith("JobState="):
                    return field.split("=", 1)[1]
        else:
            return out.stdout.split()[0].split("|")[0]
    return "UNKNOWN"


def run_slurm(
    jobs: list[Job],
    cfg: Config,
    study_dir: Path,
    fail_fast: bool,
    detach: bool,
    on_tick: Callable[[], None],
    retry_failed: bool = False,
) -> bool:
    """Submit what is missing, reattach to what is queued, then watch. Returns False when detached."""
    check_cluster(cfg)
    folder = (study_dir / "slurm").resolve()
    jobs_file = folder / "jobs.json"
    folder.mkdir(parents=True, exist_ok=True)
    job_ids: dict[str, str] = read_json(jobs_file) if jobs_file.exists() else {}
    queued = queue_states(list(job_ids.values()))
    if not retry_failed:
        # A run whose job left the queue unfinished (cancelled, failed, node lost) is a failure to report,
        # not something to submit again behind the user's back: --retry-failed does that.
        ended = [j for j in jobs if j.run_id in job_ids and job_ids[j.run_id] not in queued]
        for job in ended:
            if run_state(job.run_dir) not in ("done", "running"):
                _record_failed(study_dir, job, job_ids[job.run_id])
        jobs = [j for j in jobs if j not in ended]
    to_submit = [j for j in jobs if job_ids.get(j.run_id) not in queued]
    attached = [j for j in jobs if job_ids.get(j.run_id) in queued]
    if attached:
        print(f"[slurm] reattached to {len(attached)} queued or running jobs", file=sys.stderr)
    if to_submit:
        try:
            submitted = submit_in_order(to_submit, job_ids, folder, cfg)
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
            raise ModexpError(f"sbatch refused the jobs: {_why(exc)}") from None
        for job, job_id in submitted:
            job_ids[job.run_id] = job_id
            set_status(job.run_dir, "planned", slurm_job=job_id)
        write_json(jobs_file, job_ids)
        waiting = sum(bool(j.after) for j, _ in submitted)
        print(
            f"[slurm] submitted {len(submitted)} jobs ({resources(cfg)})"
            + (f", {waiting} of them after the job of the run they start from" if waiting else ""),
            file=sys.stderr,
        )
    if detach:
        print(
            f"[slurm] detached; run the same command again to follow and collect ({study_dir})",
            file=sys.stderr,
        )
        return False
    watch(study_dir, jobs, job_ids, fail_fast, on_tick)
    return True


def submit_in_order(
    jobs: list[Job], job_ids: dict[str, str], folder: Path, cfg: Config
) -> list[tuple[Job, str]]:
    """Submit jobs as arrays: those that wait on nothing first, then each group that waits on the same runs,
    with `--dependency=afterok` on their jobs (SLURM starts them only once those succeeded, and cancels them
    when those fail: --kill-on-invalid-dep). A run to wait on with no job here (done already) is no wait."""
    submitted: list[tuple[Job, str]] = []
    known = dict(job_ids)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.after), []).append(job)
    for after in sorted(groups, key=len):  # () first: the jobs the others wait on
        executor = make_executor(folder, cfg)
        waits = [known[r] for r in after if r in known]
        if waits:
            extra = dict(cfg.launcher.extra or {})
            extra.update(dependency="afterok:" + ":".join(waits), kill_on_invalid_dep="yes")
            executor.update_parameters(slurm_additional_parameters=extra)
        with executor.batch():
            handles = [
                (j, executor.submit(TrainJob(str(j.run_dir.resolve()), cfg.launcher.cpus_per_run)))
                for j in groups[after]
            ]
        for job, handle in handles:
            known[job.run_id] = str(handle.job_id)
            submitted.append((job, str(handle.job_id)))
    return submitted


def _why(exc: BaseException) -> str:
    """sbatch's own message (its stderr or output), on one line."""
    text = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines)[:300] or type(exc).__name__


def watch(
    study_dir: Path, jobs: list[Job], job_ids: dict[str, str], fail_fast: bool, on_tick: Callable[[], None]
) -> None:
    """Until every job has left the queue; a run whose job ended unfinished is recorded as failed."""
    waiting = {j.run_id: j for j in jobs}
    while waiting:
        states = queue_states([job_ids[r] for r in waiting if r in job_ids])
        for run_id, job in list(waiting.items()):
            job_id = job_ids.get(run_id)
            if job_id in states:
                continue
            del waiting[run_id]
            if run_state(job.run_dir) in ("done", "running"):
                continue  # "running": another sweep's process holds it
            _record_failed(study_dir, job, job_id)
            if fail_fast:
                subprocess.run(
                    ["scancel", *[job_ids[r] for r in waiting if r in job_ids]], capture_output=True
                )
                return
        on_tick()
        time.sleep(2)


def _record_failed(study_dir: Path, job: Job, job_id: str | None) -> None:
    state = final_state(job_id) if job_id else "NOT_SUBMITTED"
    slurm_log = _slurm_log_tail(study_dir / "slurm", job_id)
    reason = f"SLURM job {job_id} ended {state} before the run finished"
    failed = [r for r in job.after if run_state(stem_dir(job.run_dir, r)) == "failed"]
    if failed:  # SLURM cancelled it (--kill-on-invalid-dep): say which run it waited on, and why that failed
        why = read_status(stem_dir(job.run_dir, failed[0])).get("reason")
        reason = f"{failed[0]}, which it starts from, failed: {why}"
    set_status(
        job.run_dir,
        "failed",
        reason=reason,
        slurm_state=state,
        slurm_job=job_id,
        log_tail=slurm_log or log_tail(job.run_dir),
    )


def _slurm_log_tail(folder: Path, job_id: str | None, lines: int = 20) -> str:
    if not job_id:
        return ""
    jobs = folder / "jobs"
    for path in sorted(jobs.glob(f"{job_id}_*log.err")) + sorted(jobs.glob(f"{job_id}_*log.out")):
        text = path.read_text(errors="replace").splitlines()
        if text:
            return "\n".join(text[-lines:])
    return ""


@register("slurm")
class Slurm:
    """A job array through submitit; the sweep follows the queue, or detaches and collects on its next call."""

    # The launcher.* keys it reads (workers is the local pool's): see modexp/unused.py.
    reads = (
        "name", "partition", "account", "extra", "gpus_per_run", "gpus_per_node", "gpu_mem_gb", "cpus_per_run",
        "mem_gb", "time_min", "array_parallelism", "startup_s",
    )  # fmt: skip

    def validate(self, cfg: Config) -> None:
        if cfg.device == "cuda" and not cfg.launcher.gpus_per_run:
            raise ModexpError(
                "device=cuda with launcher=slurm and launcher.gpus_per_run=0 would ask SLURM for no GPU: "
                "set launcher.gpus_per_run >= 1, or device=cpu for CPU nodes"
            )
        check_sbatch_words(cfg.launcher)

    def check(self, cfg: Config) -> None:
        check_cluster(cfg)  # bad cluster settings fail before anything is prepared or written

    def describe(self, cfg: Config) -> str | None:
        check_cluster(cfg)
        return f"would submit the runs not yet done as one SLURM job array: {resources(cfg)}"

    def run(self, jobs: list[Job], cfg: Config, folder: Path, options: Options) -> int | None:
        finished = run_slurm(
            jobs,
            cfg,
            folder,
            fail_fast=options.fail_fast,
            detach=options.detach,
            on_tick=options.on_tick,
            retry_failed=options.retry_failed,
        )
        return None if finished else 0
