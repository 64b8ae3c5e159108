"""Approach 1 (Hoffmann et al. 2022): every run's final loss against its compute, and each variant's lower
envelope. A run's end is a valid (compute, loss) point of its shape whatever budget planned it, so the
envelope needs no parabola: a check on the isoFLOP fits, and the natural view of a branching study, whose
branches end at every budget of every shape it trains."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..points import DEFAULT_LOSS, run_losses
from .labels import variant_label
from .spec import FigureSpec
from .style import PANEL_TITLE_SIZE, figure_title, log_ticks, loss_name, variant_styles


def lower_envelope(flops: pd.Series, loss: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The lowest loss reached with at most C FLOPs, at each C where it improves: (C, loss) as steps."""
    order = np.argsort(flops.to_numpy(), kind="stable")
    c, best = flops.to_numpy()[order], np.minimum.accumulate(loss.to_numpy()[order])
    keep = np.r_[True, best[1:] < best[:-1]]
    return c[keep], best[keep]


def envelope(results: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """Final validation loss of every run against its training FLOPs, sized by parameters, with each
    variant's lower envelope; the fitted isoFLOP optima (L* at each budget) drawn over it."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    results = results.assign(loss=run_losses(results, _loss(fits))).dropna(subset=["loss", "flops"])
    styles = variant_styles(results["variant"])
    sizes = np.log10(results["params"].astype(float))
    area = 15 + 60 * (sizes - sizes.min()) / max(1e-9, sizes.max() - sizes.min())
    for variant, runs in results.groupby("variant"):
        style = styles[variant]
        ax.scatter(runs["flops"], runs["loss"], s=area[runs.index], color=style["colour"], alpha=0.35, lw=0)
        c, best = lower_envelope(runs["flops"], runs["loss"])
        ax.step(
            c, best, where="post", color=style["colour"], ls=style["ls"], label=f"{variant_label(variant)}"
        )
        optima = fits[fits["curve"] == variant] if len(fits) else fits
        optima = (
            optima[optima["bracketed"].astype(bool) & np.isfinite(optima["loss_opt"])]
            if len(optima)
            else optima
        )
        if len(optima):
            ax.scatter(
                optima["budget"], optima["loss_opt"], marker="*", s=120, color=style["colour"], zorder=3
            )
    ax.set_xscale("log")
    log_ticks(ax.xaxis, flops=True)
    ax.set_xlabel("training FLOPs of the run")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("dots: runs (size: parameters); line: lowest loss within the compute; ★: isoFLOP L* (bracketed)",
                 fontsize=PANEL_TITLE_SIZE)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="variant (lower envelope)", title_fontsize=8)
    figure_title(fig, None, f"Approach 1: final losses against compute ({loss_name(fits)} loss)")
    return fig


def _loss(fits: pd.DataFrame) -> str:
    return str(fits["loss"].iloc[0]) if "loss" in fits and len(fits) else DEFAULT_LOSS


ENVELOPE = FigureSpec(
    "envelope",
    lambda d: None if d.results["budget"].nunique() >= 2 else "one budget: no envelope across compute",
    lambda d: envelope(d.results, d.fits),
)
