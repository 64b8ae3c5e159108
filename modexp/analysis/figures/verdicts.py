"""The verdict per budget: compute multiplier and loss difference at equal compute, with flags."""

from __future__ import annotations

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
    "bound": "bound",
    "extrapolated": "extrap.",
    "beyond_step": ">1 step",
    "reference_2_budgets": "ref. 2 budgets",
    "reference_on_bounds": "ref. on bounds",
    "reference_missing": "ref. interpolated",
}


@styled_figure
def verdict(by_budget: pd.DataFrame) -> Figure:
    """The verdict per budget: compute multiplier (left) and loss difference at equal compute (right)."""
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
        ax.legend(fontsize=8, title="hollow: not an estimate (see its flags)", title_fontsize=7)
    figure_title(
        fig,
        None,
        f"Verdict ({loss_name(by_budget)} loss; bars: 5–95%, each curve's measured noise plus the "
        "reference curve's model error)",
    )
    return fig


VERDICT = FigureSpec(
    "verdict",
    lambda d: None if np.isfinite(d.verdict["multiplier"].to_numpy(float)).any() else "no comparison",
    lambda d: verdict(d.verdict),
)
