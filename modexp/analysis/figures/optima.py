"""Optimal parameters, tokens and loss against budget, with their fitted power laws."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .labels import variant_label
from .spec import FigureSpec
from .style import (
    PANEL_TITLE_SIZE,
    errorbars,
    figure_title,
    log_ticks,
    loss_name,
    styled_figure,
    variant_styles,
)


@styled_figure
def optimal_scaling(fits: pd.DataFrame, power_laws: pd.DataFrame) -> Figure:
    """Optimal parameters, tokens and loss against budget, with the fitted power laws.

    Only bracketed optima are points; an optimum beyond the sampled sizes is a triangle at the size it
    exceeds (pointing up) or falls below (pointing down), and its loss an upper bound (hollow).
    """
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    styles = variant_styles(fits["curve"])
    panels = [
        ("n_opt", "optimal parameters N*", "N* (parameters)"),
        ("d_opt", "optimal training tokens D*", "D* (tokens)"),
        ("loss_opt", "loss at the optimum", "L* (nats/token)"),
    ]
    for ax, (quantity, title, ylabel) in zip(axes, panels):
        for curve, group in fits.groupby("curve"):
            style = styles[curve]
            group = group.sort_values("budget")
            drawn = group[np.isfinite(group[quantity])]
            errorbars(
                ax,
                drawn["budget"],
                drawn[quantity],
                drawn[f"{quantity}_lo"],
                drawn[f"{quantity}_hi"],
                style,
                variant_label(curve),
                drawn["bracketed"],
            )
            if quantity == "n_opt":
                for bound, marker in (("below", "v"), ("above", "^")):
                    rows = group[~group["bracketed"].astype(bool) & (group["bound"] == bound)]
                    ax.scatter(
                        rows["budget"], rows["bound_params"], marker=marker, color=style["colour"], s=40
                    )
            law = power_laws[(power_laws["curve"] == curve) & (power_laws["quantity"] == quantity)]
            fitted = group[group["bracketed"].astype(bool)]["budget"]
            if len(law) and len(fitted):
                law = law.iloc[0]
                c = np.geomspace(fitted.min() / 1.5, fitted.max() * 1.5, 50)
                ax.plot(
                    c,
                    law.coefficient * c**law.exponent,
                    color=style["colour"],
                    ls=style["ls"],
                    label=f"{variant_label(curve)}: ∝ C^{law.exponent:.3f} "
                    f"[{law.exponent_lo:.2f}, {law.exponent_hi:.2f}]",
                )
        ax.set_xscale("log")
        log_ticks(ax.xaxis, flops=True)
        if quantity != "loss_opt":
            ax.set_yscale("log")
            log_ticks(ax.yaxis)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="▲▼/hollow: a bound, not fitted", title_fontsize=7)
    figure_title(fig, None, f"Optima against compute ({loss_name(fits)} loss; bars: 5–95% bootstrap)")
    return fig


OPTIMAL = FigureSpec(
    "optimal",
    lambda d: None if d.fits["bracketed"].any() else "no budget has a bracketed optimum",
    lambda d: optimal_scaling(d.fits, d.power_laws),
)
