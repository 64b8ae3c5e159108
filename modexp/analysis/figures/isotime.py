"""The wall-clock view (analysis/isotime.py): every run's final loss against its training seconds, and each
variant's lower envelope, the least loss reached within t seconds of training on this device."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..isotime import lower_envelope
from ..points import DEFAULT_LOSS, run_losses
from .labels import variant_label
from .spec import FigureData, FigureSpec
from .style import PANEL_TITLE_SIZE, figure_title, log_ticks, loss_name, styled_figure, variant_styles


def _timed(results: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    loss = str(fits["loss"].iloc[0]) if "loss" in fits and len(fits) else DEFAULT_LOSS
    runs = results.assign(
        loss=run_losses(results, loss), train_time=pd.to_numeric(results["train_time"], errors="coerce")
    )
    return runs[(runs["train_time"] > 0) & runs["loss"].notna()]


@styled_figure
def isotime(results: pd.DataFrame, fits: pd.DataFrame, device: str | None = None) -> Figure:
    """Final validation loss of every run against its training seconds (evaluation, checkpoints and start-up
    left out), sized by parameters, with each variant's lower envelope."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    runs = _timed(results, fits)
    styles = variant_styles(runs["variant"])
    sizes = np.log10(runs["params"].astype(float))
    area = 15 + 60 * (sizes - sizes.min()) / max(1e-9, sizes.max() - sizes.min())
    for variant, members in runs.groupby("variant"):
        style = styles[variant]
        ax.scatter(members["train_time"], members["loss"], s=area[members.index], color=style["colour"],
                   alpha=0.35, lw=0)  # fmt: skip
        t, y = members["train_time"].to_numpy(float), members["loss"].to_numpy(float)
        env = lower_envelope(t, y)
        ax.step(
            t[env], y[env], where="post", color=style["colour"], ls=style["ls"], label=variant_label(variant)
        )
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("training seconds of the run (steps only; a branch's stem share included)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(f"dots: runs (size: parameters); line: lowest loss within the time{f'; {device}' if device else ''}",
                 fontsize=PANEL_TITLE_SIZE)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="variant (lower envelope)", title_fontsize=8)
    figure_title(fig, None, f"Iso-time: final losses against training time ({loss_name(fits)} loss)")
    return fig


def _skip(data: FigureData) -> str | None:
    results = data.results
    if "train_time" not in results or not (pd.to_numeric(results["train_time"], errors="coerce") > 0).any():
        return "no run recorded its training seconds (train_time)"
    kinds = (
        results.loc[pd.to_numeric(results["train_time"], errors="coerce") > 0, "device_kind"]
        .dropna()
        .unique()
        if "device_kind" in results
        else []
    )
    if len(kinds) > 1:
        return f"runs timed on {len(kinds)} device kinds: training seconds compare only on one"
    return None


def _device(results: pd.DataFrame) -> str | None:
    kinds = results["device_kind"].dropna().unique() if "device_kind" in results else []
    return str(kinds[0]) if len(kinds) == 1 else None


ISOTIME = FigureSpec("isotime", _skip, lambda d: isotime(d.results, d.fits, _device(d.results)))
