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

import errno
import fcntl
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .model.config import ModelConfig
from .plan import MOD_ONLY, RunSpec
from .tracking import read_json, read_status, write_json

EXIT_LOCKED = 75  # exit status of a training process whose run another process holds (EX_TEMPFAIL)


def sweep_dir(cfg: Any) -> Path:
    return Path(cfg.runs_dir) / cfg.sweep.name


def write_run(run_dir: Path, cfg: DictConfig, spec: RunSpec) -> None:
    """Create the folder with the run's config and spec (atomically: a reader sees all or nothing)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".config.yaml.{os.getpid()}.tmp"
    OmegaConf.save(cfg, tmp, resolve=True)
    os.replace(tmp, run_dir / "config.yaml")
    record = asdict(spec)
    if spec.model.routing == "none":  # a baseline has no router: its record carries no inert MoD settings
        record["model"] = {k: v for k, v in record["model"].items() if k not in MOD_ONLY}
    write_json(run_dir / "run.json", record)
    if not (run_dir / "status.json").exists():
        write_json(run_dir / "status.json", {"state": "planned"})


def load_run(run_dir: Path) -> tuple[DictConfig, RunSpec]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert isinstance(cfg, DictConfig)
    raw = read_json(run_dir / "run.json")
    raw["model"] = ModelConfig(**raw["model"])
    return cfg, RunSpec(**raw)


class RunLock:
    """An exclusive flock on <run>/.lock: one process trains a run at a time, across sweeps and machines
    sharing a POSIX filesystem. The kernel drops it when the holder dies, even by kill -9."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> bool:
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


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
