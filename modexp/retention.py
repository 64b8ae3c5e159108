"""What a finished run keeps of its checkpoints (train.keep), applied once it is done.

A done run is never resumed (train_run returns its summary.json), so its optimiser state and previous.pt only
take space: AdamW's two moments make last.pt about 3x the weights, previous.pt doubles that again.

- all: keep last.pt and previous.pt as they are;
- last: keep last.pt whole (weights, optimiser, RNG: training can be continued from it), drop previous.pt;
- final-weights (default): last.pt becomes the final weights alone (what `modexp sample` and
  `modexp export` read), previous.pt is dropped.

Only the run's own last.pt and previous.pt are touched: other files in checkpoints/ (e.g. step-*.pt branch
points) are someone else's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import LAST, PREVIOUS, load_checkpoint
from .config import KEEP
from .errors import ModexpError
from .rundir import atomic_write

log = logging.getLogger("modexp.train")

# What a final-weights checkpoint keeps: the model and what it belongs to (checked by sample and export).
WEIGHTS_KEYS = ("model", "step", "steps", "wall_time", "model_config", "run_id")


def check_keep(keep: str) -> None:
    if keep not in KEEP:
        raise ModexpError(f"train.keep={keep} is not allowed: choose {', '.join(KEEP)}")


def retain_checkpoints(run_dir: Path, keep: str) -> None:
    """Apply train.keep to a done run's checkpoints/last.pt and previous.pt."""
    check_keep(keep)
    folder = Path(run_dir) / "checkpoints"
    last = folder / LAST
    if keep == "all":
        return
    if keep == "final-weights" and last.is_file():
        state = load_checkpoint(last)
        if set(state) - set(WEIGHTS_KEYS):  # not already stripped
            weights = {k: state[k] for k in WEIGHTS_KEYS if k in state}
            atomic_write(last, lambda tmp: torch.save(weights, tmp))
    (folder / PREVIOUS).unlink(missing_ok=True)  # after last.pt is final: a kill before leaves a fallback
    log.info("checkpoints kept: %s (train.keep=%s)", last, keep)
