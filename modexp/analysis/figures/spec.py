"""What a figure of `modexp analyze` is (FigureSpec: a name, when it is skipped and why, how it is drawn)
and what every figure is drawn from (FigureData)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure


@dataclass(frozen=True)
class FigureData:
    """An analysis's tables, and what only a sweep folder has (None there for an external table)."""

    results: pd.DataFrame  # one row per run
    points: pd.DataFrame  # one row per (curve, budget, size)
    fits: pd.DataFrame
    power_laws: pd.DataFrame
    verdict: pd.DataFrame  # by budget
    lr_laws: pd.DataFrame | None
    grid: pd.DataFrame | None  # points of an LR grid (lrlaw.grid_points); empty without one
    metrics: pd.DataFrame | None  # every run's metrics.jsonl
    sample: dict | None  # the routing_sample.json of the run the routing figure shows
    verdict_overall: pd.DataFrame | None = None  # the headline per pair

    @property
    def has_metrics(self) -> bool:
        return self.metrics is not None and not self.metrics.empty


@dataclass(frozen=True)
class FigureSpec:
    """One figure: written as <name>.<format>; skipped, with the reason in the summary, where `skip` gives
    one; else drawn by `draw`."""

    name: str
    skip: Callable[[FigureData], str | None]
    draw: Callable[[FigureData], Figure]


def never_skipped(data: FigureData) -> None:
    """For a figure every analysis can draw."""
    return None
