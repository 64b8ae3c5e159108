"""Draw and write a study's figures, on every core the process may use.

Laying out and writing a figure is most of what `modexp analyze` spends (text metrics for every tick label,
once per format), and figures do not depend on each other, so each is drawn in a worker process forked from
this one: the data is inherited, not pickled, and only file paths and notes come back. Where fork is not
available, on one core, or if a worker dies, they are drawn here one after another.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import current_process, get_all_start_methods, get_context
from pathlib import Path

from .spec import FigureData, FigureSpec
from .style import save

logger = logging.getLogger(__name__)

Outcome = tuple[Path | None, str | None]  # the first file written, or a note saying why none was
# What forked workers draw from: set by draw_all for the duration of one pool, inherited by fork.
_JOB: tuple[Sequence[FigureSpec], FigureData, Path, object, object] | None = None


def draw_one(spec: FigureSpec, data: FigureData, out_dir: Path, formats, size) -> Outcome:
    """One figure written, or why not: a figure must never cost the fits and tables already computed."""
    try:
        return save(spec.draw(data), out_dir, spec.name, formats, size), None
    except Exception as err:
        logger.warning("figure %s failed", spec.name, exc_info=True)
        return None, f"figure {spec.name}.png failed: {type(err).__name__}: {err}"


def _draw_job(index: int) -> Outcome:
    specs, data, out_dir, formats, size = _JOB
    return draw_one(specs[index], data, out_dir, formats, size)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def draw_all(
    specs: Sequence[FigureSpec], data: FigureData, out_dir: Path, formats=None, size=None
) -> list[Outcome]:
    """Each spec's outcome, in the order given."""
    global _JOB
    workers = min(len(specs), usable_cores())
    # A daemonic process (a pool's worker) may not start processes of its own.
    if workers < 2 or "fork" not in get_all_start_methods() or current_process().daemon:
        return [draw_one(spec, data, out_dir, formats, size) for spec in specs]
    _JOB = (specs, data, out_dir, formats, size)
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            return list(pool.map(_draw_job, range(len(specs))))
    except BrokenProcessPool:
        logger.warning("a figure worker died; drawing the figures in this process")
        return [draw_one(spec, data, out_dir, formats, size) for spec in specs]
    finally:
        _JOB = None
