"""Learning curves against FLOPs and wall-clock, and training speed per run (paper Fig. 3, right)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .labels import variant_label
from .spec import FigureSpec
from .style import (
    PANEL_TITLE_SIZE,
    figure_title,
    log_ticks,
    styled_figure,
    variant_styles,
)


def _steps_per_s(df: pd.DataFrame) -> pd.Series:
    """1 / median step time; steps / wall time for runs that did not record a step time."""
    nan = pd.Series(np.nan, index=df.index)
    per_step = 1.0 / pd.to_numeric(df["step_time"], errors="coerce") if "step_time" in df else nan
    overall = df["steps"] / df["wall_time"] if {"steps", "wall_time"} <= set(df) else nan
    return per_step.fillna(overall)


@styled_figure
def learning_curves(metrics: pd.DataFrame, df: pd.DataFrame) -> Figure:
    """Val and train loss against FLOPs and wall-clock per run, and training speed per run (Fig. 3, right)."""
    fig = Figure(figsize=(15, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    variant_of = df.set_index("run_id")["variant"].to_dict()
    styles = variant_styles(df["variant"])
    panels = [
        (grid[0, 0], "val", "val_loss", "flops", "validation loss against training FLOPs"),
        (grid[0, 1], "val", "val_loss", "wall_time", "validation loss against wall-clock"),
        (grid[1, 0], "train", "loss", "flops", "training loss against training FLOPs"),
        (grid[1, 1], "train", "loss", "wall_time", "training loss against wall-clock"),
    ]
    for cell, kind, y, x, title in panels:
        ax = fig.add_subplot(cell)
        lines = metrics[(metrics["kind"] == kind) & metrics["run_id"].isin(variant_of)]
        for run_id, run in lines.groupby("run_id"):
            if y not in run or x not in run or run[y].isna().all():
                continue
            run = run.sort_values("step")
            # Train loss is noisy per step; a short rolling mean keeps many overlaid runs readable.
            values = run[y].rolling(5, min_periods=1).mean() if kind == "train" else run[y]
            ax.plot(run[x], values, color=styles[variant_of[run_id]]["colour"], lw=0.9, alpha=0.7)
        ax.set_xscale("log" if x == "flops" else "linear")
        if x == "flops":  # matplotlib labels minor ticks over under a decade, and they collide ("2x10^3x10^")
            log_ticks(ax.xaxis, flops=True)
        ax.set_xlabel("training FLOPs" if x == "flops" else "wall-clock time (s)")
        ax.set_ylabel(f"{'validation' if kind == 'val' else 'training'} loss (nats/token)")
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=s["colour"], label=variant_label(v)) for v, s in styles.items()]
    fig.axes[0].legend(handles=handles, title="variant (one line per run)", fontsize=8)

    ax = fig.add_subplot(grid[:, 2])
    speed = _steps_per_s(df)
    for variant, runs in df.groupby("variant"):
        style = styles[variant]
        ax.scatter(
            runs["params"],
            speed[runs.index],
            color=style["colour"],
            marker=style["marker"],
            label=variant_label(variant),
        )
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("training steps per second (median step)")
    ax.set_title("Training speed per run", fontsize=PANEL_TITLE_SIZE)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure_title(fig, None, "Learning curves and training speed (one line per run)")
    return fig


LEARNING_CURVES = FigureSpec(
    "learning_curves",
    lambda d: None if d.has_metrics else "no metrics.jsonl (external table or no metrics written)",
    lambda d: learning_curves(d.metrics, d.results),
)
