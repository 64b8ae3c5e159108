"""A run's processes die with the command that started them, whatever signal that command gets.

torchrun starts each rank in a session of its own, so a kill -9 of `modexp train` (or of its process group)
would leave the ranks training and holding the run's lock. Linux's parent-death signal closes that: each
process we start, and each rank at its start, asks the kernel for SIGTERM when its parent dies; SIGTERM is
what makes a trainer mark its run interrupted and stop, and torchrun pass the stop on to its ranks.
Elsewhere (macOS) this is a no-op: there the launcher's own signal handling is all there is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
LAUNCHER_PID = "MODEXP_LAUNCHER_PID"  # the pid of the modexp command that started a run's processes


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned() -> bool:
    """The command that started this run is gone: it died before our parent-death signal was set."""
    pid = os.environ.get(LAUNCHER_PID, "")
    return os.getppid() == 1 or (pid.isdigit() and not _alive(int(pid)))


def stay_tied(sig: int = signal.SIGTERM) -> None:
    """At a trainer's start: die with the parent, and stop now if the launcher already died."""
    if die_with_parent(sig) and orphaned():
        os.kill(os.getpid(), sig)


def end_if_stuck(grace_s: float = 10.0, code: int = 130) -> None:
    """A rank blocked inside a collective cannot run its SIGTERM handler: the call holds the main thread until
    it sees its peer gone, which gloo may not notice while the peer waits in its own teardown. Once the parent
    that started this process is gone, a daemon thread gives it grace_s to stop by itself, then ends it. The
    run stays resumable: a run marked running whose lock nobody holds reads as interrupted."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        time.sleep(grace_s)
        os._exit(code)

    threading.Thread(target=watch, daemon=True, name="modexp-lifeline").start()


def preexec(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A Popen preexec_fn: the child gets `sig` when this process dies (checked once set, as a fork can
    outlive its parent before the prctl)."""
    parent = os.getpid()

    def tie() -> None:
        if die_with_parent(sig) and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return tie


def launcher_env() -> dict[str, str]:
    """What the processes of a run are started with, so a rank can tell its launcher died before it tied."""
    return {LAUNCHER_PID: str(os.getpid())}
