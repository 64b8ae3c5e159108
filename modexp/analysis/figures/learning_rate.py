"""Learning-rate transfer: the best LR per model size from an LR grid, and the fitted lr*(N)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .labels import variant_label
from .spec import FigureSpec
from .style import (
    figure_title,
    log_ticks,
    new_axes,
    styled_figure,
    variant_styles,
)


@styled_figure
def lr_transfer(grid: pd.DataFrame, laws: pd.DataFrame | None) -> Figure:
    """Best learning rate against model size per variant (hollow: at the edge of the grid), and lr*(N)."""
    fig, ax = new_axes(None, (8, 5))
    styles = variant_styles(grid["variant"])
    for variant, rows in grid.groupby("variant"):
        style = styles[variant]
        lr = rows["lr_star"].fillna(rows["lr"])
        edge = rows["lr_edge"].astype(bool)
        ax.scatter(
            rows["params"][~edge],
            lr[~edge],
            color=style["colour"],
            marker=style["marker"],
            label=variant_label(variant),
        )
        ax.scatter(
            rows["params"][edge],
            lr[edge],
            facecolors="none",
            edgecolors=style["colour"],
            marker=style["marker"],
        )
        law = laws[laws["variant"] == variant] if laws is not None else pd.DataFrame()
        if len(law):
            law = law.iloc[0]
            n = np.geomspace(rows["params"].min() / 1.3, rows["params"].max() * 1.3, 50)
            ax.plot(
                n,
                law.coefficient * n**law.exponent,
                color=style["colour"],
                ls=style["ls"],
                label=f"{variant_label(variant)}: lr* = {law.coefficient:.3g} N^{law.exponent:.2f}",
            )
    ax.axhspan(
        grid["lr_tried_min"].min(), grid["lr_tried_max"].max(), color="0.9", zorder=0, label="LRs tried"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("best peak learning rate")
    figure_title(
        fig, None, "Learning-rate transfer: best LR per size (hollow: at the grid's edge, not fitted)"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


LR_TRANSFER = FigureSpec(
    "lr_transfer",
    lambda d: None if d.grid is not None and not d.grid.empty else "no LR grid (one learning rate per point)",
    lambda d: lr_transfer(d.grid, d.lr_laws),
)
