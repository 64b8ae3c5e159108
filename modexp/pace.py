"""What a finished sweep says about this machine's pace: its last line (the study's MFU), and its own seconds
besides training (start, planning, the data check, the final analysis) kept in the machine's cache for the
planner (modexp/estimate.py)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from . import device as devices
from .config import Config
from .mfu import sweep_line

MAX_SWEEPS = 50  # the newest sweeps' own seconds kept


def sweep_done(study_dir: Path, cfg: Config, trained: set[str], training: float) -> str:
    """Record the sweep's own seconds (its wall time less the training) and return its MFU line."""
    from .estimate import slot_of

    wall = time.time() - devices.process_started()
    kind, key, slots = slot_of(cfg)
    if trained:  # a sweep with nothing to train is not the planner's case
        with contextlib.suppress(Exception):
            devices.record_values(kind, "sweeps", max(0.0, wall - training), MAX_SWEEPS)
    return sweep_line(study_dir, training, slots, trained)
