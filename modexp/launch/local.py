"""The local device pool: one run per GPU, or `workers` CPU runs sharing the cores.

Each slot keeps a persistent worker (modexp/launch/worker.py) that imports torch and modexp once and trains the
slot's runs one after another, each isolated as if in a process of its own; a run that fails, crashes or is
killed ends its worker, and the slot gets a fresh one. A run of several processes (launcher.gpus_per_run > 1)
gets processes of its own (`python -m modexp.train RUN_DIR`, through torchrun). Either way a crash, OOM or kill
never takes the sweep down, and the run's own lock (rundir.RunLock) guarantees no run is trained by two
processes at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import lifeline
from ..config import Config, processes_per_run
from ..errors import ModexpError, Terminated
from ..plan import RunSpec
from ..rundir import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_RESUMABLE,
    RunLock,
    read_status,
    run_state,
    set_status,
)
from . import Job, Options, register
from .slots import Slot, make_slots, visible_gpus  # noqa: F401 (the pool's slots, importable from here)

log = logging.getLogger(__name__)


class Worker:
    """The pool's side of a slot's persistent worker: `python -m modexp.launch.worker FD STUDY_DIR`, runs
    handed over on its stdin, results read from a pipe (launch/worker.py has the protocol)."""

    def __init__(self, slot: Slot, folder: Path | None) -> None:
        read, write = os.pipe()
        env = {**os.environ, **slot.env, **lifeline.launcher_env(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modexp.launch.worker", str(write), str(folder or ".")],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # a run's output goes to its stdout.log; the worker's own errors to ours
            env=env,
            pass_fds=(write,),
            text=True,
            preexec_fn=lifeline.preexec(),  # a kill -9 of the sweep stops its workers too
        )
        os.close(write)
        os.set_blocking(read, False)
        self.replies, self.pending = read, b""
        self.ready_s: float | None = None  # its start-up: interpreter, torch and modexp imported
        self.codes: dict[str, int] = {}

    def submit(self, run_dir: Path) -> bool:
        """Hand over one run; False when the worker is gone (its end is read like a killed run's)."""
        try:
            self.proc.stdin.write(json.dumps({"run_dir": str(run_dir), "dispatched": time.time()}) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.replies, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if "ready" in message:
                        # On a loaded machine a start-up's wall clock is mostly waiting for a core: its CPU
                        # time, with a margin for reading files, is what an idle machine takes.
                        cpu = float(message.get("cpu", math.inf))
                        self.ready_s = min(float(message["ready"]), 1.2 * cpu + 0.3)
                    elif "run_dir" in message:
                        self.codes[message["run_dir"]] = int(message["code"])

    def result(self, run_dir: Path) -> int | None:
        """The run's exit code: what the worker said, or, where it died without saying, its own."""
        self._read()
        if str(run_dir) in self.codes:
            return self.codes.pop(str(run_dir))
        code = self.proc.poll()
        if code is None:
            return None
        self._read()  # it may have said it just before ending
        return self.codes.pop(str(run_dir), code if code != 0 else 1)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, timeout: float = 30) -> None:
        """Let an idle worker end (end of its input), or make sure it has."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.replies)


@dataclass
class Child:
    spec: RunSpec
    run_dir: Path
    slot: Slot
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    worker: Worker | None = None  # the slot's worker training it (None: a process of its own)

    def poll(self) -> int | None:
        """The run's exit code once it has ended."""
        return self.worker.result(self.run_dir) if self.worker is not None else self.proc.poll()


def train_command(run_dir: Path, processes: int) -> list[str]:
    """The command that trains one run: one process, or `processes` of them through torchrun."""
    if processes <= 1:
        return [sys.executable, "-m", "modexp.train", str(run_dir)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a private rendezvous on a free port: several runs share one machine
        f"--nproc-per-node={processes}",
        "-m",
        "modexp.train",
        str(run_dir),
    ]


def log_tail(run_dir: Path, lines: int = 20) -> str:
    for name in ("stdout.log", "train.log"):
        path = run_dir / name
        if path.exists():
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalPool:
    """Runs RunSpecs on slots until all are done, failed, or (fail_fast) the first one fails."""

    def __init__(
        self,
        slots: list[Slot],
        fail_fast: bool = False,
        on_tick: Callable[[LocalPool], None] | None = None,
        retry_failed: bool = False,
        processes_per_run: int = 1,
        persistent: bool = False,
        folder: Path | None = None,
    ) -> None:
        self.slots = slots
        self.processes_per_run = processes_per_run
        # One persistent worker per slot (one process per run: a run of several gets processes of its own).
        self.persistent = persistent and processes_per_run <= 1
        self.folder = folder
        self.workers: dict[str, Worker] = {}
        self.worker_starts: list[float] = []  # each worker's start-up (s), for the planner's estimate
        self.fail_fast = fail_fast
        self.retry_failed = retry_failed
        self.on_tick = on_tick or (lambda pool: None)
        self.running: list[Child] = []
        self.failed: list[str] = []
        self.interrupted: list[str] = []  # stopped by a signal or the machine: resume on the next rerun
        self.elsewhere: dict[str, Job] = {}  # held by another sweep's process
        self.blocked: list[str] = []  # not started: a run they come after failed or was interrupted
        self.finished: list[Child] = []  # every child that has ended, for the runs that come after it

    def run(self, queue: list[Job]) -> None:
        queue = list(queue)
        try:
            while queue or self.running or self.elsewhere:
                free = [s for s in self.slots if all(c.slot is not s for c in self.running)]
                for job in [j for j in queue if self._ready(j, queue)]:
                    if not free:
                        break
                    queue.remove(job)
                    state = run_state(job.run_dir)
                    if state == "done" or (state == "failed" and not self.retry_failed):
                        continue  # failed since the queue was built (e.g. by another sweep): report it
                    if state == "running":
                        self.elsewhere[job.run_id] = job
                        continue
                    self.running.append(self._start(job.spec, job.run_dir, free.pop(0)))
                self._reap(queue)
                if self.fail_fast and self.failed:
                    self.stop()
                    return
                self._check_elsewhere(queue)
                self._drop_blocked(queue)
                self.on_tick(self)
                time.sleep(0.05 if self.persistent else 0.2)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self._close_workers()

    def _waiting_on(self, job: Job, queue: list[Job]) -> list[str]:
        """The runs job comes after that are not done yet (queued, running here or elsewhere)."""
        pending = {j.run_id for j in queue} | {c.spec.run_id for c in self.running} | set(self.elsewhere)
        return [run_id for run_id in job.after if run_id in pending]

    def _ready(self, job: Job, queue: list[Job]) -> bool:
        return not self._waiting_on(job, queue) and not set(job.after) & set(self.failed)

    def _drop_blocked(self, queue: list[Job]) -> None:
        """A job after a failed (or interrupted) run cannot start this time: it is left for a rerun."""
        ended = set(self.failed) | set(self.interrupted)
        dirs = {c.spec.run_id: c.run_dir for c in self.finished}
        for job in [j for j in queue if set(j.after) & ended]:
            queue.remove(job)
            self.blocked.append(job.run_id)
            failed = [r for r in job.after if r in self.failed]
            if failed:  # a failed stem fails its branches, saying which and why
                why = read_status(dirs[failed[0]]).get("reason") if failed[0] in dirs else None
                with contextlib.suppress(OSError, ModexpError):
                    set_status(
                        job.run_dir, "failed", reason=f"{failed[0]}, which it starts from, failed: {why}"
                    )
                self.failed.append(job.run_id)

    def _start(self, spec: RunSpec, run_dir: Path, slot: Slot) -> Child:
        if self.persistent:
            worker = self.workers.get(slot.name)
            if worker is None or not worker.alive:
                worker = self.workers[slot.name] = Worker(slot, self.folder)
            worker.submit(run_dir)  # a worker gone meanwhile: its end is read as this run's
            log.debug("handed %s to the worker of %s (pid %d)", spec.run_id, slot.name, worker.proc.pid)
            return Child(spec, run_dir, slot, worker.proc, worker=worker)
        out = (run_dir / "stdout.log").open("ab")
        env = {**os.environ, **slot.env, **lifeline.launcher_env(), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            train_command(run_dir, self.processes_per_run),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=lifeline.preexec(),  # a kill -9 of the sweep stops its runs too
        )
        out.close()
        log.debug("started %s on %s (pid %d)", spec.run_id, slot.name, proc.pid)
        return Child(spec, run_dir, slot, proc)

    def _reap(self, queue: list[Job]) -> None:
        for child in list(self.running):
            code = child.poll()
            if code is None:
                continue
            self.running.remove(child)
            self.finished.append(child)
            if child.worker is not None and child.worker.ready_s is not None:
                self.worker_starts.append(child.worker.ready_s)
                child.worker.ready_s = None  # counted once
            if child.worker is not None and code not in (0, EXIT_LOCKED):
                self._retire(child.worker)  # it ends itself; the slot gets a fresh one
            if code == 0:
                continue
            if code == EXIT_LOCKED:  # another sweep got there first: wait for it, train nothing twice
                self.elsewhere[child.spec.run_id] = Job(child.spec, child.run_dir)
                continue
            status = read_status(child.run_dir)
            # A signal, a kill -9 or a full disk stops a run without anything being wrong with it: it stays
            # resumable, and the next plain rerun resumes it. Only a run that failed by itself needs
            # --retry-failed.
            stopped = (
                code < 0 or code in (EXIT_INTERRUPTED, EXIT_RESUMABLE) or status.get("state") == "interrupted"
            )
            state = "interrupted" if stopped else "failed"
            reason = status.get("reason") if status.get("state") in ("failed", "interrupted") else None
            with contextlib.suppress(OSError, ModexpError):  # a full disk must not take the sweep down
                set_status(
                    child.run_dir,
                    state,
                    reason=reason or describe_exit(code),
                    exit_code=code,
                    step=status.get("step"),
                    log_tail=log_tail(child.run_dir),
                )
            (self.interrupted if stopped else self.failed).append(child.spec.run_id)

    def _check_elsewhere(self, queue: list[Job]) -> None:
        for run_id, job in list(self.elsewhere.items()):
            if RunLock(job.run_dir).held_elsewhere():
                continue
            del self.elsewhere[run_id]
            if run_state(job.run_dir) in ("interrupted", "planned", "pending"):
                queue.append(job)  # its holder died: resume it here

    def stop(self) -> None:
        """Ctrl-C or fail-fast: ask children to stop (they mark themselves interrupted), then make sure."""
        for child in self.running:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in self.running:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self._reap([])  # each stopped run's status says interrupted (or failed), with its exit code
        self._close_workers()

    def _retire(self, worker: Worker) -> None:
        for name, held in list(self.workers.items()):
            if held is worker:
                del self.workers[name]
        worker.close()

    def _close_workers(self) -> None:
        """Idle workers end once their input closes; one that does not within 30 s is killed."""
        for worker in list(self.workers.values()):
            self._retire(worker)


@register("local")
class Local:
    """The device pool of this machine: one child process per run, on the GPUs or CPU cores at hand."""

    # The launcher.* keys it reads: any other given with launcher=local is refused (modexp/unused.py).
    reads = ("name", "workers", "gpus_per_run", "gpu_mem_gb", "startup_s")

    def __init__(self) -> None:
        self.slots: list[Slot] = []

    def validate(self, cfg: Config) -> None:
        return None

    def check(self, cfg: Config) -> None:
        # device=cuda without GPUs is refused here, before anything is written
        self.slots = make_slots(cfg.device, cfg.launcher.workers, processes_per_run(cfg))

    def describe(self, cfg: Config) -> str | None:
        return None

    def run(self, jobs: list[Job], cfg: Config, folder: Path, options: Options) -> int | None:
        if not self.slots:
            self.check(cfg)
        if cfg.device == "auto" and self.slots[0].name.startswith("cpu"):
            print(
                "[sweep] no GPU visible: training on the CPU (device=cuda refuses instead)", file=sys.stderr
            )
        pool = LocalPool(
            self.slots,
            fail_fast=options.fail_fast,
            on_tick=lambda p: options.on_tick(),
            retry_failed=options.retry_failed,
            processes_per_run=processes_per_run(cfg),
            persistent=True,
            folder=folder,
        )
        self.pool = pool
        try:
            pool.run(jobs)
            _remember_worker_starts(cfg, pool.worker_starts)
        except KeyboardInterrupt as exc:
            why = f"stopped by {exc}" if isinstance(exc, Terminated) else "interrupted"
            print(f"[sweep] {why}: running runs were stopped and resume on the next run", file=sys.stderr)
            return exc.exit_code if isinstance(exc, Terminated) else 130
        return None


def _remember_worker_starts(cfg: Config, starts: list[float]) -> None:
    """Each worker's start-up, for the planner's estimate on this machine (modexp/estimate.py)."""
    from .. import device
    from ..estimate import slot_of

    with contextlib.suppress(Exception):  # the cache costs the planner, never the sweep
        kind, key, _ = slot_of(cfg)
        device.record_values(kind, "workers", starts, 50, key=key)


def train_processes(run_dir: Path, cfg: Config) -> int:
    """One run on launcher.gpus_per_run processes (torchrun; gloo on the CPU), as the pool starts it; the
    trainer's exit code."""
    slot = make_slots(cfg.device, 1, processes_per_run(cfg))[0]
    env = {**os.environ, **slot.env, **lifeline.launcher_env()}
    return subprocess.call(
        train_command(run_dir, processes_per_run(cfg)), env=env, preexec_fn=lifeline.preexec()
    )
