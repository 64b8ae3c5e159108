"""What a run records: local files (the source of truth) and a Weights & Biases mirror.

Local files are what every later stage reads: W&B offline runs cannot be read back from Python
(../shared/notes/hydra-wandb-facts.md, 2.2). A W&B failure is a warning, never a lost run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import socket
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGES = ("torch", "numpy", "hydra-core", "omegaconf", "wandb", "pandas", "modexp")


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


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader never sees half a file, and a kill leaves the old version."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(strict_json(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def set_status(run_dir: Path, state: str, **fields: Any) -> None:
    """status.json: planned | running | done | failed | interrupted, with a reason and when."""
    write_json(run_dir / "status.json", {"state": state, "updated": time.time(), **fields})


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return read_json(run_dir / "status.json")
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "pending"}


def code_version() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {"git_commit": commit or None, "git_dirty": dirty}


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        **code_version(),
        "packages": versions,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()
        self._file = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(strict_json(record) + "\n")

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:
        return float("inf")  # a line cut by a kill: drop it


def wandb_mode(requested: str) -> str:
    """auto -> online when an API key is configured, else offline. WANDB_MODE in the environment wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class WandbMirror:
    """Mirrors metrics to W&B. Any W&B error turns it off with a warning; training never depends on it."""

    def __init__(
        self, run_dir: Path, run_id: str, settings: Any, group: str, job_type: str, config: dict[str, Any]
    ) -> None:
        self.run = None
        self.mode = wandb_mode(settings.mode)
        if self.mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                id=run_id,
                name=run_id,
                group=group,
                job_type=job_type,
                tags=list(settings.tags) + [job_type],
                config=config,
                dir=str(run_dir),
                mode=self.mode,
                resume="allow",
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=60, console="off", silent=True),
            )
            self.run.define_metric("val/loss", summary="min")
        except Exception as exc:  # noqa: BLE001 - a tracker must never take the run down
            warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}", stacklevel=2)
            self.run = None

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(record, step=step)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B logging failed, mirror off: {exc}", stacklevel=2)
            self.run = None

    def finish(self, summary: dict[str, Any] | None, exit_code: int) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B finish failed: {exc}", stacklevel=2)
        self.run = None
