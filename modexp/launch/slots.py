"""Where runs can train on this machine: GPUs (per CUDA_VISIBLE_DEVICES or nvidia-smi) or CPU processes sharing
the cores. Without torch: the planner's estimate reads it too (modexp/estimate.py)."""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass

from ..errors import ModexpError


@dataclass
class Slot:
    name: str  # "cuda:0" or "cpu:1"
    env: dict[str, str]


def visible_gpus() -> list[str]:
    """GPU ids this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",")]
        # CUDA stops at the first invalid entry ("-1" hides every GPU); "0, 1" means GPUs 0 and 1.
        return list(itertools.takewhile(lambda g: g not in ("", "-1"), ids))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def make_slots(device: str, workers: int, per_run: int = 1) -> list[Slot]:
    """Places a run can train: `per_run` GPUs each, or CPU processes sharing the cores.

    device=cuda never falls back to the CPU: no (or too few) GPUs is an error, said before anything starts.
    """
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    cores = os.cpu_count() or 1
    if device == "cuda" and len(gpus) < per_run:
        raise ModexpError(
            f"device=cuda but {len(gpus)} GPU(s) visible here and launcher.gpus_per_run={per_run}: "
            "use a machine with GPUs, fewer gpus_per_run, or device=cpu"
        )
    if len(gpus) >= per_run > 0 and gpus:
        groups = [gpus[i : i + per_run] for i in range(0, len(gpus) - per_run + 1, per_run)]
        threads = str(max(1, cores // len(gpus)))  # a GPU run's data loading must not take every core
        return [
            Slot(f"cuda:{','.join(g)}", {"CUDA_VISIBLE_DEVICES": ",".join(g), "OMP_NUM_THREADS": threads})
            for g in groups
        ]
    # Default: one process per core, one thread each; the small models CPU studies use gain little from threads.
    n = workers if workers > 0 else max(1, cores // per_run)
    threads = max(1, cores // (n * per_run))
    env = {"CUDA_VISIBLE_DEVICES": "", "MODEXP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return [Slot(f"cpu:{i}", dict(env)) for i in range(n)]
