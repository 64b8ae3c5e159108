"""A run folder is the contract between stages: runs/<sweep>/<run_id>/.

config.yaml     the resolved config the run was trained with
run.json        its RunSpec: variant, budget, shape, steps, tokens, FLOP accounting
meta.json       code version, packages, device, corpus fingerprint, FLOP accounting
status.json     planned | running | done | failed | interrupted (+ reason, step, exit code)
metrics.jsonl   training and validation metrics
summary.json    the final numbers (what `modexp analyze` collects)
checkpoints/    last.pt (model, optimiser, schedule position, RNG)
train.log       the run's log; wandb/ the W&B mirror; routing_sample.json for MoD runs
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import variants
from .data import LOCKS_REFUSED
from .errors import ModexpError
from .files import NotRegular, open_regular, read_text  # noqa: F401 (the run folder's readers)
from .spec import RunSpec

EXIT_LOCKED = 75  # exit status of a training process whose run another process holds (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # stopped by a signal: the run resumes on the next plain rerun
EXIT_RESUMABLE = 74  # stopped by the machine (a full disk), not by the run itself: resumes too (EX_IOERR)


def strict_json(data: Any, **kwargs: Any) -> str:
    """JSON that every reader accepts: NaN and infinities become null (Python's json would write NaN)."""
    return json.dumps(_finite(data), allow_nan=False, default=_jsonable, **kwargs)


def _finite(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (dict, list, tuple)):
        value = value.tolist()  # numpy and torch scalars and arrays
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class DiskFull(ModexpError):
    """No space left (or quota exceeded) while writing a run's file: the run stays resumable."""


def _disk_full(path: Path, exc: BaseException) -> DiskFull:
    why = os.strerror(getattr(exc, "errno", None) or errno.ENOSPC)
    return DiskFull(
        f"no space left on the device writing {path} ({why}): free some space and "
        "rerun the same command to resume from the last checkpoint"
    )


def atomic_write(path: Path, write: Callable[[Path], None], keep: Path | None = None) -> None:
    """Write via a temporary file, fsync it, rename it over `path`, fsync the folder.

    A reader never sees half a file; a kill or a crash leaves the old version (or, after the rename, the new
    one on disk for good). The temporary file is removed on any error; a full disk is one line (DiskFull).
    keep: move the current version there first (a kill between the two renames leaves `keep`).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep is not None and path.exists():
            os.replace(path, keep)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc, path.parent):
            raise _disk_full(path, exc) from None
        raise


# torch.save reports a full disk as RuntimeError("PytorchStreamWriter failed writing file ...: file write
# failed") or with the errno's text: no errno attribute, so its words are all there is to go on.
DISK_FULL_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "No space left", "errno 28")


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    """A full disk or quota, as an OSError or as the RuntimeError torch.save raises for one (its bare "file
    write failed" counts when the folder's filesystem has under 1 MiB left)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    if any(w.lower() in text for w in DISK_FULL_WORDS):
        return True
    return "pytorchstreamwriter failed writing" in text and folder is not None and _space_left(folder) < 2**20


def _space_left(folder: Path) -> float:
    try:
        st = os.statvfs(folder)
    except OSError:
        return float("inf")
    return st.f_bavail * st.f_frsize


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash after it must not bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process killed mid-write (called with the run's lock held)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    """Atomic and durable (see atomic_write); strict JSON (null, never NaN)."""
    text = strict_json(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(read_text(path))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def set_status(run_dir: Path, state: str, **fields: Any) -> None:
    """status.json: planned | running | done | failed | interrupted, with a reason and when."""
    write_json(run_dir / "status.json", {"state": state, "updated": time.time(), **fields})


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict; {"state": "pending"} when it is missing or unreadable (a FIFO is not opened)."""
    try:
        status = read_json(run_dir / "status.json")
    except (OSError, ValueError):  # missing, not a regular file, not UTF-8, not JSON
        return {"state": "pending"}
    return status if isinstance(status, dict) else {"state": "pending"}


def sweep_dir(cfg: Any) -> Path:
    return Path(cfg.runs_dir) / cfg.sweep.name


STEMS = (
    "stems"  # a study's stems (sweep.reuse=branches): <sweep>/stems/<stem_id>/, where analysis never looks
)


def is_run_id(value: object) -> bool:
    """A run id read from a file, usable as a folder name: no path separator, not '.' or '..', no control
    character (a crafted plan.json or summary.json must not point a reader elsewhere)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 255
        and "/" not in value
        and value not in (".", "..")
        and value.isprintable()
    )


def stem_dir(run_dir: Path, stem: str) -> Path:
    """The folder of a branch's stem: beside the branch's own, under its study's stems/."""
    return run_dir.parent / STEMS / stem


def branch_point(stem_folder: Path, step: int) -> Path:
    """The stem's state after `step`: the start of every branch whose cooldown starts there."""
    return stem_folder / "checkpoints" / f"step-{step}.pt"


def write_run(run_dir: Path, cfg: DictConfig, spec: RunSpec) -> bool:
    """Create or refresh the folder's config.yaml and run.json (atomically), holding the run's lock.

    False, writing nothing, when another process holds the run: it trains from the files it has.
    """
    lock = RunLock(run_dir)
    if not lock.acquire():
        return False
    try:
        atomic_write(run_dir / "config.yaml", lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))
        record = asdict(spec)
        inert = variants.of_model(spec.model).inert  # a baseline's record carries no MoD settings
        record["model"] = {k: v for k, v in record["model"].items() if k not in inert}
        write_json(run_dir / "run.json", record)
        if not (run_dir / "status.json").exists():
            write_json(run_dir / "status.json", {"state": "planned"})
    finally:
        lock.release()
    return True


def load_run(run_dir: Path) -> tuple[DictConfig, RunSpec]:
    """The run's config (settings added since it was written take today's defaults) and its RunSpec."""
    from . import plugins
    from .config import with_new_keys

    remedy = "rerun the sweep (or modexp train) that planned it to rewrite it"
    try:
        cfg = OmegaConf.create(read_text(run_dir / "config.yaml"))
        if not isinstance(cfg, DictConfig):
            raise ValueError("not a mapping")
        found = _interpolation(OmegaConf.to_container(cfg, resolve=False))
        if found:  # written resolved: an interpolation here was put in by hand, and is never evaluated
            raise ValueError(f"it holds the interpolation {found[:60]!r}")
    except FileNotFoundError:
        raise ModexpError(f"{run_dir} has no config.yaml: not a run folder, or not yet written") from None
    except Exception as exc:  # YAML syntax, bad encoding, interpolation errors
        raise ModexpError(f"{run_dir / 'config.yaml'} does not parse ({first_line(exc)}): {remedy}") from None
    # Only the plug-ins the user named (its sweep passes them on in MODEXP_PLUGINS), never those the folder names.
    plugins.load_named(source=plugins.ENV)
    try:
        raw = read_json(run_dir / "run.json")
        _known_routing(run_dir, cfg, raw["model"].get("routing", "none"))
        raw["model"] = variants.model_config(raw["model"])  # its kind's config (a plug-in's once loaded)
        spec = RunSpec(**raw)
    except ModexpError:
        raise
    except Exception as exc:  # missing, truncated, edited into another shape
        raise ModexpError(
            f"{run_dir / 'run.json'} is not a run record ({first_line(exc)}): {remedy}"
        ) from None
    return with_new_keys(cfg), spec


def find_run(path: str | Path) -> Path:
    """A run folder by its path, or by the end of its name as `modexp plan` shows it (its id column holds the
    hash at the end of the folder name): runs/demo/6d0b10 -> runs/demo/baseline-d20-l4-1e11-6d0b10c2f1.

    A unique match is the run; several, or none, are one line naming the candidates and where to look."""
    import difflib

    given = Path(path)
    folder, part = given.parent, given.name
    if given.is_dir() or not folder.is_dir() or not part:
        return given  # a folder (or nothing to search): the loader says what is wrong with it
    runs = sorted(c.name for c in folder.iterdir() if (c / "run.json").is_file())
    found = [r for r in runs if r.endswith(part) or r.rsplit("-", 1)[-1].startswith(part)]
    if len(found) == 1:
        return folder / found[0]
    if found:
        shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        raise ModexpError(f"{given} matches {len(found)} run folders ({shown}): give more of the id")
    ends = {r.rsplit("-", 1)[-1]: r for r in runs}
    close = difflib.get_close_matches(part, list(ends) + runs, n=1, cutoff=0.6)
    hint = (
        f": did you mean {folder / ends.get(close[0], close[0])}?"
        if close
        else f" (modexp status {folder} lists its runs)"
    )
    raise ModexpError(f"{given} is not a run folder, and no run in {folder} ends with {part!r}{hint}")


def _interpolation(node: Any) -> str | None:
    """The first `${...}` in a config read back as plain containers, or None."""
    if isinstance(node, str):
        return node if "${" in node else None
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return next((found for child in children if (found := _interpolation(child))), None)


def _known_routing(run_dir: Path, cfg: DictConfig, routing: Any) -> None:
    """A run of a plug-in kind whose plug-in this process was not given: one line saying how to name it."""
    from . import plugins

    if not isinstance(routing, str) or routing in variants.routings():
        return
    listed = OmegaConf.to_container(cfg).get("plugins") if isinstance(cfg, DictConfig) else None
    names = [n for n in listed if plugins.is_module_name(n)] if isinstance(listed, list) else []
    how = f"name it in your config's plugins (a sweep passes them on to its runs) or in {plugins.ENV}"
    raise ModexpError(plugins.unknown_kind(routing, names, f"run {run_dir.name}", how))


def first_line(exc: BaseException) -> str:
    """The gist of an error in one line (a heading such as "Error(s) in loading state_dict:" takes its
    first detail with it, e.g. the size mismatch)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    gist = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{type(exc).__name__}: {gist[:200]}"


def locking() -> str:
    """flock (default) | none: the `locking` setting, which the CLI passes on to every process it starts."""
    return os.environ.get("MODEXP_LOCKING", "flock")


class RunLock:
    """An exclusive flock on <run>/.lock: one process trains a run at a time, across sweeps and machines
    sharing a POSIX filesystem. The kernel drops it when the holder dies, even by kill -9."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ModexpError(f"{self.path.parent} cannot be a run folder: a file is in the way") from None
        if locking() == "none":
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            if exc.errno in LOCKS_REFUSED:
                raise ModexpError(
                    f"the filesystem of {self.path.parent} refuses file locks (flock: {os.strerror(exc.errno)}): "
                    "put runs_dir where locks work (NFS with its lock service, Lustre mounted with -o flock), "
                    "or set locking=none if only one sweep at a time trains into it"
                ) from None
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether a live process holds the lock; only reads (a read-only study folder can be looked at)."""
        if not self.path.exists() or locking() == "none":
            return False
        try:  # O_NONBLOCK: a FIFO planted as .lock must not hang a reader (flock on it fails: not held)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        try:  # shared: refused while a trainer holds it exclusively, and needs no write access
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            return False
        finally:
            os.close(fd)
        return False


def run_state(run_dir: Path) -> str:
    """pending | done | failed | interrupted | running (held by a live process) | planned."""
    if not run_dir.exists():
        return "pending"
    state = read_status(run_dir).get("state", "pending")
    if state in ("done", "failed"):
        return state
    if RunLock(run_dir).held_elsewhere():
        return "running"
    # 'running' with nobody holding the lock: its process died (kill -9, reboot). It resumes from a checkpoint.
    return "interrupted" if state == "running" else state
