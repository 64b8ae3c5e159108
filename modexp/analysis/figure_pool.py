"""The figure workers of one `modexp analyze`, forked as it begins: they import matplotlib and the figure
modules (~2 s of CPU) while this process reads the runs and fits, instead of this process importing them after.
The tables are then sent to them (pickled); each worker decides skips and draws figures of the registry
(figures.FIGURES, as it stood at the fork) by name, through figures/render.py's draw_one. This process never
imports matplotlib.

Light on purpose: nothing here imports matplotlib until a worker does.
"""

from __future__ import annotations

import atexit
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import current_process, get_all_start_methods, get_context
from pathlib import Path
from typing import Any

_POOL: ProcessPoolExecutor | None = None
Outcome = tuple[str, Path | None, str | None]  # figure name, its first file (None: not drawn), a note


def usable_cores() -> int:
    render = sys.modules.get("modexp.analysis.figures.render")  # a test may have narrowed the figures' cores
    if render is not None:
        return render.usable_cores()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _warm() -> None:
    import modexp.analysis.figures  # noqa: F401 - matplotlib and every figure, before there is anything to draw


def start() -> None:
    """Fork one figure worker per usable core now (none on one core, without fork, or inside a worker)."""
    global _POOL
    stop()
    workers = usable_cores()
    if workers < 2 or "fork" not in get_all_start_methods() or current_process().daemon:
        return
    _POOL = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_warm)
    _POOL.submit(int)  # a forked pool starts all its workers at its first task


def stop() -> None:
    """Let the workers of an analysis that ended before drawing go."""
    global _POOL
    pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(stop)


def _data(fields: dict[str, Any]) -> Any:
    from .figures import FigureData

    return FigureData(**fields)


def _skips(fields: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(name, why it is skipped or None) of every registered figure, in order."""
    from .figures import FIGURES

    data = _data(fields)
    return [(spec.name, spec.skip(data)) for spec in FIGURES]


def _draw(name: str, fields: dict[str, Any], out_dir: Path, formats, size) -> tuple[Path | None, str | None]:
    from .figures import FIGURES
    from .figures.render import draw_one

    spec = next(s for s in FIGURES if s.name == name)
    return draw_one(spec, _data(fields), out_dir, formats, size)


def draw(fields: dict[str, Any], out_dir: Path, formats, size) -> list[Outcome] | None:
    """Every registered figure drawn by the workers start() forked (fields: figures.FigureData's), or why it
    was skipped; None where there are no workers or they broke (the caller then draws them itself). Every skip
    is decided before anything is drawn: a skip check that raises does so here, before any file."""
    global _POOL
    pool, _POOL = _POOL, None
    if pool is None:
        return None
    try:
        skips = pool.submit(_skips, fields).result()
        futures = {
            name: pool.submit(_draw, name, fields, out_dir, formats, size) for name, why in skips if not why
        }
        return [
            (name, None, f"figure {name}.png skipped: {why}") if why else (name, *futures[name].result())
            for name, why in skips
        ]
    except BrokenProcessPool:
        return None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
