"""Figures for an isoFLOP study of MoD against baseline (figure numbers: Raposo et al. 2024).

Every function builds a matplotlib Figure directly, without pyplot's global state, so it renders in a
headless process (Agg canvas) and displays in a notebook alike, and returns it; `save` writes PNG + SVG.
Inputs are the tables of modexp.analysis: results (one row per run), fits, power laws, metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from modexp.analysis import BASELINE, baseline_reference
from modexp.units import sci, si

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
TOKEN_GLYPHS = {ord(" "): "␣", ord("\n"): "↵", ord("\t"): "→"}


def variant_order(variants) -> list[str]:
    """Baseline first, then the other variants alphabetically."""
    return sorted(set(variants), key=lambda v: (v != BASELINE, v))


def _variant_styles(variants) -> dict[str, dict]:
    colours = colormaps["tab10"].colors
    return {
        v: {
            "marker": MARKERS[i % len(MARKERS)],
            "ls": LINESTYLES[i % len(LINESTYLES)],
            "colour": colours[i % 10],
        }
        for i, v in enumerate(variant_order(variants))
    }


def _budget_colours(budgets) -> dict[float, tuple]:
    budgets = sorted(set(budgets))
    cmap = colormaps["viridis"]
    return {b: cmap(0.85 * i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def _figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save(fig: Figure, out_dir: Path, name: str) -> Path:
    """Write <out_dir>/<name>.png and .svg; return the PNG path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")  # legends sit beside the axes: keep them whole
    fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight")
    return png


def _legend_budget_variant(ax: Axes, colours: dict, styles: dict, extra: list | None = None) -> None:
    """Two legends beside the axes (right), never over the points."""
    budget_handles = [Line2D([], [], color=c, lw=2, label=f"C = {sci(b)} FLOPs") for b, c in colours.items()]
    variant_handles = [
        Line2D([], [], color="0.3", marker=s["marker"], ls=s["ls"], label=v) for v, s in styles.items()
    ]
    first = ax.legend(
        handles=budget_handles,
        title="training budget",
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
        fontsize=8,
    )
    ax.add_artist(first)
    ax.legend(
        handles=variant_handles + (extra or []),
        title="variant",
        loc="lower left",
        bbox_to_anchor=(1.02, 0),
        fontsize=8,
    )


def _log_ticks(axis, flops: bool = False) -> None:
    """Labels at 1, 2 and 5 per decade (1 only over wide ranges): matplotlib's default labels only decades,
    often just two on a sweep's axis. FLOPs read as 2e11, sizes as 20k."""
    lo, hi = axis.get_view_interval()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: sci(v, 2) if flops else si(v)))
    axis.set_minor_formatter(NullFormatter())


def isoflop_curves(df: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss against parameters per budget with fitted parabolas and optima (paper Fig. 4, left)."""
    fig, ax = _figure(ax, (10, 5.5))
    colours, styles = _budget_colours(df["budget"]), _variant_styles(df["variant"])
    optima: set[str] = set()
    for (variant, budget), runs in df.groupby(["variant", "budget"]):
        colour, style = colours[budget], styles[variant]
        runs = runs.sort_values("params")
        ax.scatter(runs["params"], runs["val_loss"], color=colour, marker=style["marker"], s=28, zorder=3)
        fit = fits[(fits["variant"] == variant) & (fits["budget"] == budget)]
        if fit.empty or not np.isfinite(fit["fit_c2"].iloc[0]):
            continue
        fit = fit.iloc[0]
        x = np.linspace(np.log10(runs["params"].min()) - 0.1, np.log10(runs["params"].max()) + 0.1, 100)
        ax.plot(
            10**x, np.polyval([fit.fit_c2, fit.fit_c1, fit.fit_c0], x), color=colour, ls=style["ls"], lw=1.2
        )
        if np.isfinite(fit.n_opt):
            optima.add("bracketed" if fit.bracketed else "unbracketed")
            ax.plot(
                fit.n_opt,
                fit.loss_opt,
                marker="*",
                ms=14,
                color=colour,
                mfc=colour if fit.bracketed else "none",
                mec="black" if fit.bracketed else colour,
                ls="none",
                zorder=4,
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("isoFLOP curves: loss against model size at fixed training FLOPs")
    stars = []  # only what the plot shows: no star entry where no parabola has a minimum
    if "bracketed" in optima:
        stars.append(
            Line2D([], [], marker="*", ms=12, color="0.3", mec="black", ls="none", label="fitted optimum")
        )
    if "unbracketed" in optima:
        stars.append(
            Line2D(
                [],
                [],
                marker="*",
                ms=12,
                color="0.3",
                mfc="none",
                ls="none",
                label="unbracketed (extrapolated)",
            )
        )
    _legend_budget_variant(ax, colours, styles, extra=stars)
    _log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    return fig


def _errorbars(ax: Axes, x, y, lo, hi, style: dict, label: str, filled) -> None:
    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
    yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    yerr = np.where(np.isfinite(yerr), yerr, 0)
    ax.errorbar(x, y, yerr=yerr, color=style["colour"], ls="none", capsize=3, lw=1)
    filled = np.asarray(filled, bool)
    ax.scatter(
        np.asarray(x)[filled], y[filled], marker=style["marker"], color=style["colour"], label=label, zorder=3
    )
    ax.scatter(
        np.asarray(x)[~filled],
        y[~filled],
        marker=style["marker"],
        facecolors="none",
        edgecolors=style["colour"],
    )


def optimal_scaling(fits: pd.DataFrame, power_laws: pd.DataFrame) -> Figure:
    """Optimal parameters, tokens and loss against budget, with the fitted power laws."""
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    styles = _variant_styles(fits["variant"])
    panels = [
        ("n_opt", "optimal parameters N*", "N* (parameters)"),
        ("d_opt", "optimal training tokens D*", "D* (tokens)"),
        ("loss_opt", "loss at the optimum", "L* (nats/token)"),
    ]
    for ax, (quantity, title, ylabel) in zip(axes, panels):
        for variant, group in fits.groupby("variant"):
            group = group[np.isfinite(group[quantity])].sort_values("budget")
            style = styles[variant]
            _errorbars(
                ax,
                group["budget"],
                group[quantity],
                group[f"{quantity}_lo"],
                group[f"{quantity}_hi"],
                style,
                str(variant),
                group["bracketed"],
            )
            law = power_laws[(power_laws["variant"] == variant) & (power_laws["quantity"] == quantity)]
            fitted = group[group["bracketed"].astype(bool)]["budget"]
            if len(law) and len(fitted):
                law = law.iloc[0]
                c = np.geomspace(fitted.min() / 1.5, fitted.max() * 1.5, 50)
                ax.plot(
                    c,
                    law.coefficient * c**law.exponent,
                    color=style["colour"],
                    ls=style["ls"],
                    label=f"{variant}: ∝ C^{law.exponent:.3f} [{law.exponent_lo:.2f}, {law.exponent_hi:.2f}]",
                )
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, flops=True)
        if quantity != "loss_opt":
            ax.set_yscale("log")
            _log_ticks(ax.yaxis)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="hollow: unbracketed, not fitted", title_fontsize=7)
    fig.suptitle("isoFLOP optima against compute (bars: 5–95% bootstrap over runs)")
    return fig


def normalised(df: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss and forward FLOPs per token relative to each budget's isoFLOP-optimal baseline (Fig. 4, right)."""
    fig, ax = _figure(ax, (10, 5.5))
    ref = baseline_reference(df, fits)
    data = df[df["budget"].isin(ref.index)].copy()
    data["x"] = data["forward_flops_per_token"] / data["budget"].map(ref["fpt_ref"])
    data["y"] = data["val_loss"] / data["budget"].map(ref["loss_ref"])
    colours, styles = _budget_colours(data["budget"]), _variant_styles(data["variant"])
    for (variant, budget), runs in data.groupby(["variant", "budget"]):
        runs = runs.sort_values("params")
        style = styles[variant]
        ax.plot(
            runs["x"], runs["y"], color=colours[budget], marker=style["marker"], ls=style["ls"], lw=1, ms=5
        )
    ax.axhline(1, color="0.5", lw=0.8)
    ax.axvline(1, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # ratios: 0.2, 0.5, 1, 2
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("forward FLOPs per token ÷ optimal baseline's")
    ax.set_ylabel("validation loss ÷ optimal baseline's")
    ax.set_title(
        "Relative to the isoFLOP-optimal baseline of each budget\n(below 1: better; left of 1: cheaper per token)"
    )
    _legend_budget_variant(ax, colours, styles)
    ax.grid(alpha=0.3, which="both")
    return fig


def _steps_per_s(df: pd.DataFrame) -> pd.Series:
    """1 / median step time; steps / wall time for runs that did not record a step time."""
    nan = pd.Series(np.nan, index=df.index)
    per_step = 1.0 / pd.to_numeric(df["step_time"], errors="coerce") if "step_time" in df else nan
    overall = df["steps"] / df["wall_time"] if {"steps", "wall_time"} <= set(df) else nan
    return per_step.fillna(overall)


def learning_curves(metrics: pd.DataFrame, df: pd.DataFrame) -> Figure:
    """Val and train loss against FLOPs and wall-clock per run, and training speed per run (Fig. 3, right)."""
    fig = Figure(figsize=(15, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    variant_of = df.set_index("run_id")["variant"].to_dict()
    styles = _variant_styles(df["variant"])
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
        ax.set_xlabel("training FLOPs" if x == "flops" else "wall-clock time (s)")
        ax.set_ylabel(f"{'validation' if kind == 'val' else 'training'} loss (nats/token)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=s["colour"], label=v) for v, s in styles.items()]
    fig.axes[0].legend(handles=handles, title="variant (one line per run)", fontsize=8)

    ax = fig.add_subplot(grid[:, 2])
    speed = _steps_per_s(df)
    for variant, runs in df.groupby("variant"):
        style = styles[variant]
        ax.scatter(
            runs["params"], speed[runs.index], color=style["colour"], marker=style["marker"], label=variant
        )
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("training steps per second (median step)")
    ax.set_title("Training speed per run", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.suptitle("Learning curves and speed")
    return fig


def _token_labels(sample: dict, window: int) -> list[str]:
    tokens = sample.get("tokens")
    if tokens:
        # Byte tokens: printable ASCII as is, whitespace as visible glyphs, other bytes as a dot.
        return [TOKEN_GLYPHS.get(t, chr(t) if 32 < t < 127 else "·") for t in tokens[:window]]
    text = sample.get("text", "")
    return [TOKEN_GLYPHS.get(ord(ch), ch if ch.isprintable() else "·") for ch in text[:window]]


def routing(sample: dict, window: int = 80) -> Figure:
    """Which tokens each routed block processes on a held-out sample, and router weights (Fig. 5)."""
    selected = np.asarray(sample["selected"], float)
    layers = list(sample["layers"])
    window = min(window, selected.shape[1])
    fig = Figure(figsize=(max(10.0, window * 0.16), 3.5 + 0.35 * len(layers)), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[max(1.5, 0.4 * len(layers)), 2])
    top.imshow(selected[:, :window], aspect="auto", cmap="Purples", vmin=0, vmax=1.4, interpolation="nearest")
    labels = _token_labels(sample, window)
    top.set_xticks(range(len(labels)), labels, fontsize=7, family="monospace")
    top.set_yticks(range(len(layers)), [f"block {layer}" for layer in layers], fontsize=8)
    top.set_xlabel(f"sequence position (first {window} tokens; ␣ space, ↵ newline)")
    top.set_ylabel("routed block")
    capacity = sample.get("capacity")
    cap = f", capacity {capacity:g}" if capacity is not None else ""
    top.set_title(f"Routing decisions on a held-out sample (dark: the token goes through the block{cap})")

    if sample.get("router_weights"):
        weights = np.asarray(sample["router_weights"], float)
        chosen = selected.astype(bool)
        bins = np.linspace(np.nanmin(weights), np.nanmax(weights) + 1e-9, 40)
        bottom.hist(weights[chosen], bins=bins, alpha=0.7, color="indigo", label="selected (top-k)")
        bottom.hist(weights[~chosen], bins=bins, alpha=0.5, color="0.6", label="skipped (residual only)")
        bottom.set_xlabel("router weight g(r) (all routed blocks, all positions of the sample)")
        bottom.set_ylabel("tokens")
        bottom.set_title("Router weights")
        bottom.legend(fontsize=8)
    else:
        bottom.set_axis_off()
        bottom.text(
            0.5, 0.5, "no router_weights in routing_sample.json", ha="center", transform=bottom.transAxes
        )
    return fig


def causal_accuracy(
    metrics: pd.DataFrame, df: pd.DataFrame | None = None, run_id: str | None = None
) -> Figure:
    """Accuracy of the causal routing decision against top-k membership over training (Fig. 6).

    Left: the mean over routed blocks for every MoD run; right: per block for one run (default: the
    run of the largest budget with the lowest loss among those logging causal_acc).
    """
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    train = metrics[(metrics["kind"] == "train") & metrics["causal_acc"].notna()]
    info = df.set_index("run_id") if df is not None else pd.DataFrame()
    labels = {rid: _run_label(rid, info) for rid in train["run_id"].unique()}
    palette = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels.values()))}
    for rid, run in train.groupby("run_id"):
        left.plot(run["step"], run["causal_acc"], color=palette[labels[rid]], lw=0.9, alpha=0.7)
    handles = [Line2D([], [], color=colour, label=label) for label, colour in palette.items()]
    left.legend(handles=handles, fontsize=8, title="variant (causal router)")
    left.set_title("mean over routed blocks, every MoD run", fontsize=10)

    if run_id is None:
        ranked = info.loc[[r for r in info.index if r in labels]] if len(info) else pd.DataFrame()
        run_id = (
            ranked.sort_values(["budget", "val_loss"], ascending=[False, True]).index[0]
            if len(ranked)
            else next(iter(labels))
        )
    run = train[train["run_id"] == run_id].sort_values("step")
    per_block = sorted(
        (c for c in run.columns if c.startswith("causal_acc/") and run[c].notna().any()), key=_block
    )
    for column in per_block:
        right.plot(run["step"], run[column], lw=1, label=f"block {column.split('/', 1)[1]}")
    if per_block:
        right.legend(fontsize=8)
    right.set_title(f"per routed block, run {run_id}", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.set_ylabel("causal routing accuracy (vs top-k)")
        ax.grid(alpha=0.3)
    fig.suptitle("Does the causal router/predictor agree with top-k routing?")
    return fig


def _run_label(run_id: str, info: pd.DataFrame) -> str:
    if run_id not in info.index:
        return str(run_id)
    label = str(info.loc[run_id, "variant"])
    return f"{label} ({info.loc[run_id, 'causal_router']})" if "causal_router" in info else label


def _block(column: str) -> tuple[int, str]:
    suffix = column.split("/", 1)[1]
    return (int(suffix), "") if suffix.isdigit() else (10**9, suffix)
