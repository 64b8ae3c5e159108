"""The verdict per budget: compute multiplier and loss difference at equal compute, with flags."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .labels import pair_label
from .spec import FigureSpec
from .style import (
    PANEL_TITLE_SIZE,
    errorbars,
    figure_title,
    log_ticks,
    loss_name,
    multiplier_ticks,
    styled_figure,
    variant_styles,
)

FLAG_LABELS = {
    "lr_edge": "LR edge",
    "lr_outside_law": "LR extrap.",
    "epochs": "epochs",
    "bound": "bound",
    "extrapolated": "extrap.",
    "beyond_step": ">1 step",
    "reference_2_budgets": "ref. 2 budgets",
    "reference_on_bounds": "ref. on bounds",
    "reference_missing": "ref. interpolated",
}


def _trend(ax, overall: pd.DataFrame | None, styles: dict) -> None:
    """m's trend with compute over the headline's budgets: the fitted line, and a fan of the slope's interval
    through its centre."""
    if overall is None or "m_slope" not in overall:
        return
    for pair in overall.itertuples():
        label = pair_label(pair.curve, pair.reference)
        if label not in styles or not np.isfinite(pair.m_slope):
            continue
        c0, c1 = pair.budget_first, pair.budget_last
        centre_c, centre_m = np.sqrt(c0 * c1), np.sqrt(pair.m_first * pair.m_last)
        cs = np.geomspace(c0, c1, 20)
        colour = styles[label]["colour"]
        ax.plot(cs, centre_m * (cs / centre_c) ** pair.m_slope, color=colour, ls="--", lw=1.2, alpha=0.9)
        if np.isfinite(pair.m_slope_lo) and np.isfinite(pair.m_slope_hi):
            lo = centre_m * (cs / centre_c) ** pair.m_slope_lo
            hi = centre_m * (cs / centre_c) ** pair.m_slope_hi
            ax.fill_between(cs, np.minimum(lo, hi), np.maximum(lo, hi), color=colour, alpha=0.12, lw=0)


def _has_trend(overall: pd.DataFrame | None) -> bool:
    return overall is not None and "m_slope" in overall and bool(np.isfinite(overall["m_slope"]).any())


def headline_title(overall: pd.DataFrame | None, loss: str) -> str:
    """The figure's title: the headline of each comparison in words (report.headline_line)."""
    from ..report import headline_line

    if overall is None or overall.empty:
        return f"Verdict ({loss} loss)"
    lines = [textwrap.fill(headline_line(pair), 110) for pair in overall.itertuples()]
    return "\n".join(lines[:3]) + (f"\n(+{len(lines) - 3} more in summary.txt)" if len(lines) > 3 else "")


@styled_figure
def verdict(by_budget: pd.DataFrame, overall: pd.DataFrame | None = None) -> Figure:
    """The verdict per budget: compute multiplier (left, with m's trend) and loss difference at equal compute
    (right); the title says the headline in words."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    pairs = by_budget.assign(
        pair=[pair_label(c, r) for c, r in zip(by_budget["curve"], by_budget["reference"])]
    )
    styles = variant_styles(pairs["pair"])
    for pair, rows in pairs.groupby("pair"):
        rows = rows.sort_values("budget")
        style = styles[pair]
        for ax, column in ((left, "multiplier"), (right, "delta_loss")):
            drawn = rows[np.isfinite(rows[column])]
            if column == "multiplier":
                # Filled: an estimate, the only rows the headline averages; older verdicts lack the column.
                filled = (
                    drawn["estimate"].astype(bool)
                    if "estimate" in drawn
                    else drawn["bracketed"] & ~drawn["extrapolated"]
                )
            else:
                filled = drawn["bracketed"]
            errorbars(
                ax,
                drawn["budget"],
                drawn[column],
                drawn[f"{column}_lo"],
                drawn[f"{column}_hi"],
                style,
                str(pair),
                filled,
            )
            ax.plot(drawn["budget"], drawn[column], color=style["colour"], ls=style["ls"], lw=1)
            if column == "multiplier" and "flags" in drawn:
                for budget, value, flags in zip(drawn["budget"], drawn[column], drawn["flags"]):
                    if isinstance(flags, str) and flags:
                        ax.annotate(
                            ", ".join(FLAG_LABELS.get(f, f) for f in flags.split(";")),
                            (budget, value),
                            textcoords="offset points",
                            xytext=(4, -9),
                            fontsize=6,
                            color=style["colour"],
                        )
    _trend(left, overall, styles)
    left.axhline(1, color="0.4", lw=0.8)
    right.axhline(0, color="0.4", lw=0.8)
    left.set_yscale("log")
    multiplier_ticks(left.yaxis)
    left.set_ylabel("compute multiplier m (reference needs m x C)")
    left.set_title(
        "Compute the reference needs to match (above 1: the variant wins)", fontsize=PANEL_TITLE_SIZE
    )
    right.set_ylabel("dL* = L*(variant) - L*(reference) (nats)")
    right.set_title("Loss difference at equal compute (below 0: the variant wins)", fontsize=PANEL_TITLE_SIZE)
    for ax in (left, right):
        ax.set_xscale("log")
        log_ticks(ax.xaxis, flops=True)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(
            fontsize=8,
            title="hollow: not in the headline (see its flags)"
            + ("\ndashed: m's trend, band: its slope's 90%" if ax is left and _has_trend(overall) else ""),
            title_fontsize=7,
        )
    figure_title(fig, None, headline_title(overall, loss_name(by_budget)))
    return fig


VERDICT = FigureSpec(
    "verdict",
    lambda d: None if np.isfinite(d.verdict["multiplier"].to_numpy(float)).any() else "no comparison",
    lambda d: verdict(d.verdict, d.verdict_overall),
)
