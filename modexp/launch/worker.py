"""A persistent training worker: one process per slot of the local pool that imports torch and modexp once and
then trains the runs it is handed, one after another, so that a study of small runs does not pay a process's
start-up (seconds of imports, W&B's service) for each of them.

Each run is still isolated as if it had a process of its own: its own folder, lock, log and stdout.log (the
worker's standard output and error are pointed at the run's file while it trains), its seed and the global
random generators reseeded, torch's thread count set, warnings shown afresh, its own W&B run (finished when
the run ends), its peak memory measured from its own start, and compiled graphs dropped afterwards. A run that
ends in anything but success (or a lock held elsewhere) ends the worker too: the pool starts a fresh one for
the next run, so nothing a failed run left behind can reach another.

Protocol (pool <-> worker): the pool writes one JSON line per run to the worker's stdin,
{"run_dir": ..., "dispatched": time.time()}; the worker writes JSON lines to the file descriptor named on its
command line: {"ready": seconds since the worker started, "cpu": its CPU seconds, "pid": ...} once, then {"run_dir": ..., "code": exit code} per run, the codes of
`python -m modexp.train` (train.run_one). SIGTERM, SIGINT and SIGHUP stop the run in hand as interrupted
(resumable), and the worker then exits with EXIT_INTERRUPTED; a kill -9 loses what the run did since its last
checkpoint, as it would for a process of its own.

    python -m modexp.launch.worker REPLY_FD STUDY_DIR

(STUDY_DIR is not read: it names the study on the worker's command line, for ps and pgrep. The module imports
nothing heavy before its signal handlers are set.)
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

EXIT_INTERRUPTED = 130  # as modexp.rundir, without importing it before the signal handlers are set


def serve(reply: IO[str], requests: IO[str]) -> int:
    """Train each run named on `requests` until it closes; the worker's exit code."""
    from modexp import lifeline, train
    from modexp.rundir import EXIT_LOCKED

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, train._raise_interrupt)
    lifeline.stay_tied()
    ready_at = time.time()
    _send(
        reply, {"ready": ready_at - train.process_started(), "cpu": time.process_time(), "pid": os.getpid()}
    )
    try:
        for line in requests:
            if not line.strip():
                continue
            job = json.loads(line)
            run_dir = Path(job["run_dir"])
            # A run queued while the worker was importing starts its clock once the worker is ready.
            code = train_isolated(run_dir, max(float(job.get("dispatched", 0.0)), ready_at))
            _send(reply, {"run_dir": str(run_dir), "code": code})
            if code not in (0, EXIT_LOCKED):
                return code  # a fresh worker for the next run: nothing of this one's end reaches it
    except KeyboardInterrupt:  # stopped between runs
        return EXIT_INTERRUPTED
    return 0


def train_isolated(run_dir: Path, dispatched: float) -> int:
    """One run, as `python -m modexp.train RUN_DIR` would train it in a process of its own."""
    from modexp import train

    _reset_process_state()
    try:
        with _output_to(run_dir / "stdout.log"), warnings.catch_warnings():
            try:
                return train.run_one(run_dir, started=dispatched)
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - what an uncaught error prints and exits with in its own process
                traceback.print_exc()
                return 1
    finally:
        _release_run_state()


def _reset_process_state() -> None:
    """What a fresh process would start a run with: seeded global generators (the run seeds torch itself
    from its config), the slot's thread count, and the run's own one-time notices."""
    import numpy as np
    import torch

    from modexp import tracking

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    if os.environ.get("MODEXP_THREADS"):
        torch.set_num_threads(int(os.environ["MODEXP_THREADS"]))
    tracking._SAID_OFFLINE.clear()  # "W&B is not reachable" is said once per run, as in its own process


def _release_run_state() -> None:
    """Drop what a run held: compiled graphs (keyed by code, they would outlive their model), autocast's
    cache, cached device memory."""
    import torch

    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    torch.clear_autocast_cache()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point this process's standard output and error (the file descriptors, so that torch's and W&B's own
    writes follow) at the run's stdout.log, appending, as the pool did for a run's own process."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def _send(reply: IO[str], message: dict[str, Any]) -> None:
    reply.write(json.dumps(message) + "\n")
    reply.flush()


def main(argv: list[str]) -> int:
    """`python -m modexp.launch.worker REPLY_FD STUDY_DIR` (argv: what follows the module)."""
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m modexp.launch.worker REPLY_FD STUDY_DIR", file=sys.stderr)
        return 2
    # Until modexp's handlers are set (its imports take seconds), a stop signal ends the idle worker at once.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda s, f: sys.exit(EXIT_INTERRUPTED))
    try:
        with os.fdopen(int(argv[0]), "w", buffering=1) as reply:
            return serve(reply, sys.stdin)
    except KeyboardInterrupt:  # Ctrl-C while it was importing
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the pool is gone
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
