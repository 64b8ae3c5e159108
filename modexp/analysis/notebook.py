"""What the notebooks in notebooks/ share: a folder parameter read as the CLI reads it, and the figure only a
notebook draws (two studies' verdicts side by side, notebooks/compare.ipynb)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..units import sci, si
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


# How a notebook shows a column, by name: FLOPs as 1e11, sizes as 13.2k, losses to 4 decimals, m as 1.15x.
_FLOPS = ("budget", "flops", "C")
_SIZES = ("params", "tokens", "n_opt", "d_opt", "n_opt_lo", "n_opt_hi", "d_opt_lo", "d_opt_hi", "params_min")
_SIZES += ("params_max", "bound_params", "k", "coefficient")
_RATIOS = (
    "multiplier",
    "multiplier_lo",
    "multiplier_hi",
    "m_first",
    "m_last",
    "multiplier_fw_lo",
    "multiplier_fw_hi",
)
_PY_FLOAT = re.compile(r"\b\d+(?:\.\d+)?e[+-]\d+\b")


def _cell(column: str, value: object) -> str:
    """One value as a reader wants it: no 1.000000e+11, no 0.000000, no NaN."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–" if value is None or np.isnan(value) else ("∞" if value > 0 else "0")
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)) and column not in _FLOPS + _SIZES:
        return str(value)
    if isinstance(value, (int, np.integer)):
        value = float(value)
    if isinstance(value, (float, np.floating)):
        if column in _FLOPS or "flops" in column:
            return sci(float(value))
        if column in _SIZES:
            return si(float(value))
        if column in _RATIOS:
            return f"{value:.2f}x"
        if "loss" in column or column in ("E", "A", "B"):
            return f"{value:.4f}"
        if abs(value) >= 1e3:
            return si(float(value))
        return sci(float(value)) if value and abs(value) < 1e-3 else f"{value:.3g}"
    text = str(value)
    # Numbers inside text (a verdict note's "left out: 1e+12") as the rest of the table writes them.
    if not column.endswith(("id", "ids")):  # a run id is shown as it is named
        text = _PY_FLOAT.sub(lambda m: sci(float(m.group())), text)
    return "" if text == "nan" else text


def readable(
    frame: pd.DataFrame, columns: list[str] | None = None, index: list[str] | None = None
) -> pd.DataFrame:
    """A table to read, not to compute with: the given columns (those present), each value written as a
    person would (see _cell), variant ids as their labels, `index` columns as the row labels."""
    from .figures.labels import variant_label

    shown = frame[[c for c in (columns or list(frame.columns)) if c in frame]].copy()
    text = pd.DataFrame(
        {c: [_cell(c, v) for v in shown[c]] for c in shown.columns}, index=pd.RangeIndex(len(shown))
    )
    for column in list(
        text.columns
    ):  # x, x_lo, x_hi -> one column "x [5-95%]": the interval beside its value
        lo, hi = f"{column}_lo", f"{column}_hi"
        if lo in text and hi in text:
            both = [
                f"{v} [{a.rstrip('x')}, {b.rstrip('x')}]" if "–" not in (a, b) else v
                for v, a, b in zip(text[column], text[lo], text[hi])
            ]
            text[column] = both
            text = text.drop(columns=[lo, hi]).rename(columns={column: f"{column} [5-95%]"})
    for column in ("curve", "variant", "reference"):
        if column in text:
            text[column] = [variant_label(v) if v else v for v in text[column]]
    keys = [c for c in (index or []) if c in text]
    return text.set_index(keys) if keys else text


def _is_trend(row: pd.Series) -> bool:
    """Whether a headline row is m's trend with compute (no pooled m), as verdict.py reports it."""
    return str(row.get("heterogeneous", "")).lower() in ("true", "1") and np.isfinite(
        float(row.get("m_first", np.nan))
    )


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
    right.set_xlabel(
        "compute multiplier m (pooled over budgets; dashed: from the first budget's to the last's)"
    )
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
            if not row.empty and _is_trend(row.iloc[0]):  # m changes with compute: its two ends, joined
                trend = row.iloc[0]
                right.plot([trend["m_first"], trend["m_last"]], [y, y], color=colours[study], lw=1, ls="--")
                right.scatter([trend["m_first"], trend["m_last"]], [y, y], marker=markers[pair],
                              color=["none", colours[study]], edgecolors=colours[study], zorder=3)  # fmt: skip
                continue
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
