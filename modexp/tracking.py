"""What a run records: local files (the source of truth) and a Weights & Biases mirror.

Local files are what every later stage reads: W&B offline runs cannot be read back from Python
(../shared/notes/hydra-wandb-facts.md, 2.2). A W&B failure is a warning, never a lost run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from .rundir import strict_json

log = logging.getLogger(__name__)

PACKAGES = ("torch", "numpy", "hydra-core", "omegaconf", "wandb", "pandas", "modexp")


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
