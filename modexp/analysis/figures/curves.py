"""Figure 4 of the paper: isoFLOP curves (loss against size per budget, left) and the same points relative
to each budget's isoFLOP-optimal baseline (right)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..table import BASELINE
from .spec import FigureData, FigureSpec, never_skipped
from .style import (
    budget_colours,
    figure_title,
    legend_budget_variant,
    log_ticks,
    loss_name,
    new_axes,
    styled_figure,
    variant_styles,
)


@styled_figure
def isoflop_curves(points: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss against parameters per budget with fitted parabolas and optima (paper Fig. 4, left).

    Points are seed means at the best LR (bars: seed spread; hollow: best LR at the edge of the grid).
    A filled star is a bracketed optimum; a triangle at an end says the optimum lies beyond it; a downward
    triangle at the best point, that the parabola did not locate the optimum (L* is at most that loss).
    """
    given = ax
    fig, ax = new_axes(ax, (10, 5.5))
    colours, styles = budget_colours(points["budget"]), variant_styles(points["curve"])
    shown: set[str] = set()
    for (curve, budget), group in points.groupby(["curve", "budget"]):
        colour, style = colours[budget], styles[curve]
        group = group.sort_values("params")
        edge = group["lr_edge"].astype(bool).to_numpy() if "lr_edge" in group else np.zeros(len(group), bool)
        spread = group["loss_std"].fillna(0).to_numpy() if "loss_std" in group else np.zeros(len(group))
        if spread.any():
            ax.errorbar(
                group["params"], group["loss"], yerr=spread, color=colour, ls="none", lw=0.8, capsize=2
            )
        x, y = group["params"].to_numpy(), group["loss"].to_numpy()
        ax.scatter(x[~edge], y[~edge], color=colour, marker=style["marker"], s=28, zorder=3)
        if edge.any():
            shown.add("lr_edge")
            ax.scatter(
                x[edge], y[edge], facecolors="none", edgecolors=colour, marker=style["marker"], s=28, zorder=3
            )
        fit = fits[(fits["curve"] == curve) & (fits["budget"] == budget)]
        if fit.empty:
            continue
        fit = fit.iloc[0]
        if np.isfinite(fit.fit_c2):
            xs = np.linspace(np.log10(x.min()) - 0.1, np.log10(x.max()) + 0.1, 100)
            ax.plot(
                10**xs,
                np.polyval([fit.fit_c2, fit.fit_c1, fit.fit_c0], xs),
                color=colour,
                ls=style["ls"],
                lw=1.2,
            )
        shown.add(_mark_optimum(ax, fit, x, y, colour))
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel(f"validation loss (nats/token, {loss_name(fits)})")
    figure_title(
        fig,
        given,
        f"isoFLOP curves: loss against model size at fixed training FLOPs ({loss_name(fits)} loss)",
    )
    extra = []  # only what the plot shows
    if "optimum" in shown:
        extra.append(
            Line2D([], [], marker="*", ms=12, color="0.3", mec="black", ls="none", label="fitted optimum")
        )
    if "bound" in shown:
        extra.append(
            Line2D(
                [], [], marker=">", ms=9, color="0.3", mec="black", ls="none", label="optimum beyond this end"
            )
        )
    if "not_located" in shown:
        extra.append(
            Line2D(
                [],
                [],
                marker="v",
                ms=9,
                color="0.3",
                mec="black",
                ls="none",
                label="optimum not located: L* at most",
            )
        )
    if "lr_edge" in shown:
        extra.append(
            Line2D([], [], marker="o", mfc="none", color="0.3", ls="none", label="best LR at the grid's edge")
        )
    legend_budget_variant(ax, colours, styles, extra=extra)
    log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    return fig


def _mark_optimum(ax: Axes, fit: pd.Series, x: np.ndarray, y: np.ndarray, colour: str) -> str:
    """The optimum of one curve: a star where located; a triangle at the end it lies beyond; a downward triangle
    at the best point where that point is interior but the parabola's vertex is not (L* at most its loss)."""
    style = {"color": colour, "mec": "black", "ls": "none", "zorder": 4}
    if fit.bracketed:
        ax.plot(fit.n_opt, fit.loss_opt, marker="*", ms=14, **style)
        return "optimum"
    if fit.bound in ("below", "above"):
        below = fit.bound == "below"
        ax.plot(x.min() if below else x.max(), fit.loss_opt, marker="<" if below else ">", ms=11, **style)
        return "bound"
    ax.plot(x[int(np.argmin(y))], fit.loss_opt, marker="v", ms=11, **style)
    return "not_located"


def baseline_reference(points: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Per budget, the isoFLOP-optimal baseline: loss and forward FLOPs/token at its fitted optimum.

    Uses the bracketed parabola vertex (FLOPs/token interpolated in log-log between the baseline points);
    where the baseline fit is unbracketed, the best baseline point stands in. Indexed by budget.
    """
    rows = []
    base = points[points["curve"] == BASELINE]
    for budget, group in base.groupby("budget"):
        group = group.sort_values("params")
        fit = fits[(fits["curve"] == BASELINE) & (fits["budget"] == budget)]
        if len(fit) and bool(fit["bracketed"].iloc[0]):
            n_opt, loss = float(fit["n_opt"].iloc[0]), float(fit["loss_opt"].iloc[0])
            fpt = np.log10(group["forward_flops_per_token"])
            log_fpt = np.interp(np.log10(n_opt), np.log10(group["params"]), fpt)
            rows.append({"budget": budget, "loss_ref": loss, "fpt_ref": 10**log_fpt})
        else:
            best = group.loc[group["loss"].idxmin()]
            rows.append(
                {"budget": budget, "loss_ref": best["loss"], "fpt_ref": best["forward_flops_per_token"]}
            )
    return pd.DataFrame(rows, columns=["budget", "loss_ref", "fpt_ref"]).set_index("budget")


@styled_figure
def normalised(points: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss and forward FLOPs per token relative to each budget's isoFLOP-optimal baseline (Fig. 4, right)."""
    given = ax
    fig, ax = new_axes(ax, (10, 5.5))
    ref = baseline_reference(points, fits)
    data = points[points["budget"].isin(ref.index)].copy()
    data["x"] = data["forward_flops_per_token"] / data["budget"].map(ref["fpt_ref"])
    data["y"] = data["loss"] / data["budget"].map(ref["loss_ref"])
    colours, styles = budget_colours(data["budget"]), variant_styles(data["curve"])
    for (curve, budget), group in data.groupby(["curve", "budget"]):
        group = group.sort_values("params")
        style = styles[curve]
        ax.plot(
            group["x"], group["y"], color=colours[budget], marker=style["marker"], ls=style["ls"], lw=1, ms=5
        )
    ax.axhline(1, color="0.5", lw=0.8)
    ax.axvline(1, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # ratios: 0.2, 0.5, 1, 2
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("forward FLOPs per token ÷ optimal baseline's")
    ax.set_ylabel("validation loss ÷ optimal baseline's")
    figure_title(
        fig,
        given,
        f"Relative to each budget's isoFLOP-optimal baseline ({loss_name(fits)} loss)\n"
        "below 1: lower loss; left of 1: cheaper per token",
    )
    legend_budget_variant(ax, colours, styles)
    ax.grid(alpha=0.3, which="both")
    return fig


def _normalised_skip(data: FigureData) -> str | None:
    fpt = "forward_flops_per_token"
    if BASELINE not in set(data.points["variant"]):
        return "no baseline runs"
    if fpt not in data.points or data.points[fpt].isna().all():
        return f"the table has no {fpt} column"
    return None


ISOFLOP = FigureSpec("isoflop", never_skipped, lambda d: isoflop_curves(d.points, d.fits))
NORMALISED = FigureSpec("normalised", _normalised_skip, lambda d: normalised(d.points, d.fits))
