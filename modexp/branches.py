"""A branch's ties to its stem (sweep.reuse=branches, docs/schedules.md): the history it inherits and the
stem state it releases once done. The planning is plan.plan_branches; the start, checkpoint.start_from_stem."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from .plan import RunSpec
from .rundir import atomic_write, branch_point, read_json, read_status, stem_dir

log = logging.getLogger("modexp.train")


def copy_stem_history(run_dir: Path, spec: RunSpec) -> None:
    """The branch's metrics.jsonl starts as its stem's records up to the branch point: the run's own history,
    as if it had trained from step 0 (the steps are the same computation)."""
    source = stem_dir(run_dir, spec.stem) / "metrics.jsonl"
    lines = source.read_text().splitlines() if source.exists() else []
    kept = [line for line in lines if _step(line) <= spec.cooldown_start]
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text("".join(f"{x}\n" for x in kept)))


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:
        return float("inf")  # a line cut by a kill


def release_branch_point(run_dir: Path, spec: RunSpec) -> None:
    """Delete the stem's state at this branch's start once no unfinished branch of the study still needs it."""
    for other in run_dir.parent.glob("*/run.json"):
        if other.parent == run_dir:
            continue
        with contextlib.suppress(OSError, ValueError):
            record = read_json(other)
            same = record.get("stem") == spec.stem and record.get("cooldown_start") == spec.cooldown_start
            if same and read_status(other.parent).get("state") != "done":
                return
    path = branch_point(stem_dir(run_dir, spec.stem), spec.cooldown_start)
    with contextlib.suppress(OSError):
        path.unlink()
        log.info("released %s: every branch that starts there is done", path)
