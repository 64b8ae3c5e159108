"""What the notebooks in notebooks/ share: a folder parameter read as the CLI reads it, and the figure only a
notebook draws (two studies' verdicts side by side, notebooks/compare.ipynb)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .figures.labels import pair_label
from .figures.style import (
    MARKERS,
    PANEL_TITLE_SIZE,
    VARIANT_COLOURS,
    errorbars,
    figure_title,
    log_ticks,
    multiplier_ticks,
)
from .table import BASELINE


def resolve_folder(path: str | Path) -> Path:
    """A folder named by a parameter, as modexp's CLI reads it: a relative path is relative to the working
    directory (in a notebook the kernel's: Path.cwd())."""
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{path!r}: no folder {folder}; a relative path is taken from the working directory {Path.cwd()} "
            "(give an absolute path, or the path from where you ran modexp)"
        )
    return folder


def compare_verdicts(by_budget: dict[str, pd.DataFrame], overall: dict[str, pd.DataFrame]) -> Figure:
    """Two (or more) studies' verdicts side by side: m per budget (left), the headline m per pair (right).

    by_budget and overall map a study's name to its verdict.csv and verdict_overall.csv rows (one loss).
    Colour: the study; marker: the pair (variant vs reference). Hollow: a bound or extrapolated.
    """
    fig = Figure(figsize=(13, 6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1])
    studies = list(by_budget)
    colours = {s: VARIANT_COLOURS[i % len(VARIANT_COLOURS)] for i, s in enumerate(studies)}
    pairs = sorted(
        {
            (c, r)
            for table in [*by_budget.values(), *overall.values()]
            for c, r in zip(table["curve"], table["reference"])
        },
        key=lambda p: (p[1] != BASELINE, p),
    )
    markers = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(pairs)}
    for study in studies:
        table = by_budget[study]
        for (curve, reference), rows in table.groupby(["curve", "reference"]):
            rows = rows[np.isfinite(rows["multiplier"].to_numpy(float))].sort_values("budget")
            if rows.empty:
                continue
            style = {"colour": colours[study], "marker": markers[(curve, reference)]}
            filled = rows["bracketed"].astype(bool) & ~rows["extrapolated"].astype(bool)
            errorbars(
                left,
                rows["budget"],
                rows["multiplier"],
                rows["multiplier_lo"],
                rows["multiplier_hi"],
                style,
                None,
                filled,
            )
            left.plot(rows["budget"], rows["multiplier"], color=colours[study], lw=1, alpha=0.7)
    left.set_xscale("log")
    log_ticks(left.xaxis, flops=True)
    left.set_xlabel("training budget C (FLOPs)")
    left.set_title("Compute multiplier per budget", fontsize=PANEL_TITLE_SIZE)

    _headline_panel(right, pairs, studies, overall, colours, markers)
    right.set_ylim(len(pairs) * (len(studies) + 1) - 0.5, -0.5)
    right.set_xscale("log")
    right.set_xlabel("compute multiplier m (geometric mean over budgets)")
    right.set_title("Headline per pair (bars: 5–95% bootstrap)", fontsize=PANEL_TITLE_SIZE)
    left.set_yscale("log")
    left.axhline(1, color="0.4", lw=0.8)
    right.axvline(1, color="0.4", lw=0.8)
    for axis in (left.yaxis, right.xaxis):
        multiplier_ticks(axis)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("compute multiplier m (reference needs m x C)")
    study_handles = [Line2D([], [], color=colours[s], marker="o", label=s) for s in studies]
    pair_handles = [
        Line2D([], [], color="0.3", marker=markers[p], ls="none", label=pair_label(*p)) for p in pairs
    ]
    first = left.legend(handles=study_handles, title="study", fontsize=8, loc="best")
    left.add_artist(first)
    left.legend(
        handles=pair_handles,
        title="pair (hollow: a bound or extrapolated)",
        title_fontsize=8,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
    )
    losses = sorted({str(v) for t in by_budget.values() if "loss" in t for v in t["loss"].dropna().unique()})
    loss = f"{' / '.join(losses)} loss; " if losses else ""
    figure_title(fig, None, f"Verdicts compared: {' vs '.join(studies)} ({loss}above 1: the variant wins)")
    return fig


def _headline_panel(
    right: Any,
    pairs: list[tuple[str, str]],
    studies: list[str],
    overall: dict[str, pd.DataFrame],
    colours: dict[str, Any],
    markers: dict[tuple[str, str], str],
) -> None:
    """compare_verdicts' right panel: each pair's headline m per study, grouped by pair."""
    ticks, labels = [], []
    for i, pair in enumerate(pairs):
        for j, study in enumerate(studies):
            rows = overall[study]
            row = rows[(rows["curve"] == pair[0]) & (rows["reference"] == pair[1])]
            y = i * (len(studies) + 1) + j + 1
            ticks.append(y)
            labels.append(study)
            if j == 0:  # the pair heads its group
                right.text(
                    0.01,
                    y - 1,
                    pair_label(*pair),
                    transform=right.get_yaxis_transform(),
                    fontsize=8,
                    va="center",
                )
            if row.empty or not np.isfinite(float(row["multiplier"].iloc[0])):
                right.text(1, y, "  no verdict", va="center", fontsize=8, color="0.4")
                continue
            row = row.iloc[0]
            m = float(row["multiplier"])
            lo, hi = (
                float(row[k]) if np.isfinite(float(row[k])) else m for k in ("multiplier_lo", "multiplier_hi")
            )
            solid = bool(row["bracketed"]) and not bool(row["extrapolated"])
            right.errorbar(
                [m], [y], xerr=[[max(m - lo, 0)], [max(hi - m, 0)]], color=colours[study], capsize=3, lw=1
            )
            right.scatter(
                [m],
                [y],
                marker=markers[pair],
                color=colours[study] if solid else "none",
                edgecolors=colours[study],
                zorder=3,
            )
    right.set_yticks(ticks, labels, fontsize=8)
