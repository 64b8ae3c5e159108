"""Figures for an isoFLOP study of MoD against baseline (figure numbers: Raposo et al. 2024).

Every function builds a matplotlib Figure directly, without pyplot's global state, so it renders in a
headless process (Agg canvas) and displays in a notebook alike, and returns it; `save` writes PNG + SVG.
Inputs are the tables of modexp.analysis: results (one row per run), points (one per curve, budget and
size), fits, power laws, the verdict, metrics. Curves are keyed by their `curve` label.
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

from modexp.units import sci, si

from .table import BASELINE

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


def isoflop_curves(points: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss against parameters per budget with fitted parabolas and optima (paper Fig. 4, left).

    Points are seed means at the best LR (bars: seed spread; hollow: best LR at the edge of the grid).
    A filled star is a bracketed optimum; a triangle at an end says the optimum lies beyond it.
    """
    fig, ax = _figure(ax, (10, 5.5))
    colours, styles = _budget_colours(points["budget"]), _variant_styles(points["curve"])
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
        if fit.bracketed:
            shown.add("optimum")
            ax.plot(
                fit.n_opt, fit.loss_opt, marker="*", ms=14, color=colour, mec="black", ls="none", zorder=4
            )
        elif fit.bound in ("below", "above"):
            shown.add("bound")
            at = x.min() if fit.bound == "below" else x.max()
            ax.plot(
                at,
                fit.loss_opt,
                marker="<" if fit.bound == "below" else ">",
                ms=11,
                color=colour,
                mec="black",
                ls="none",
                zorder=4,
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel(f"validation loss (nats/token, {_loss_name(fits)})")
    ax.set_title("isoFLOP curves: loss against model size at fixed training FLOPs")
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
    if "lr_edge" in shown:
        extra.append(
            Line2D([], [], marker="o", mfc="none", color="0.3", ls="none", label="best LR at the grid's edge")
        )
    _legend_budget_variant(ax, colours, styles, extra=extra)
    _log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    return fig


def _loss_name(fits: pd.DataFrame) -> str:
    loss = str(fits["loss"].iloc[0]) if "loss" in fits and len(fits) else "topk"
    return "causal routing" if loss == "causal" else "top-k routing"


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
    """Optimal parameters, tokens and loss against budget, with the fitted power laws.

    Only bracketed optima are points; an optimum beyond the sampled sizes is a triangle at the size it
    exceeds (pointing up) or falls below (pointing down), and its loss an upper bound (hollow).
    """
    fig = Figure(figsize=(14, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    styles = _variant_styles(fits["curve"])
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
            _errorbars(
                ax,
                drawn["budget"],
                drawn[quantity],
                drawn[f"{quantity}_lo"],
                drawn[f"{quantity}_hi"],
                style,
                str(curve),
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
                    label=f"{curve}: ∝ C^{law.exponent:.3f} [{law.exponent_lo:.2f}, {law.exponent_hi:.2f}]",
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
        ax.legend(fontsize=7, title="▲▼/hollow: a bound, not fitted", title_fontsize=7)
    fig.suptitle("isoFLOP optima against compute (bars: 5–95% bootstrap)")
    return fig


def verdict(by_budget: pd.DataFrame) -> Figure:
    """The verdict per budget: compute multiplier (left) and loss difference at equal compute (right)."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    pairs = by_budget.assign(pair=by_budget["curve"] + " vs " + by_budget["reference"])
    styles = _variant_styles(pairs["pair"])
    for pair, rows in pairs.groupby("pair"):
        rows = rows.sort_values("budget")
        style = styles[pair]
        for ax, column in ((left, "multiplier"), (right, "delta_loss")):
            drawn = rows[np.isfinite(rows[column])]
            _errorbars(
                ax,
                drawn["budget"],
                drawn[column],
                drawn[f"{column}_lo"],
                drawn[f"{column}_hi"],
                style,
                str(pair),
                drawn["bracketed"] & ~drawn["extrapolated"] if column == "multiplier" else drawn["bracketed"],
            )
            ax.plot(drawn["budget"], drawn[column], color=style["colour"], ls=style["ls"], lw=1)
    left.axhline(1, color="0.4", lw=0.8)
    right.axhline(0, color="0.4", lw=0.8)
    left.set_yscale("log")
    left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    left.yaxis.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}x" if v in (0.5, 0.8, 1.2, 1.5, 2, 3) else "")
    )
    left.set_ylabel("compute multiplier m (reference needs m x C)")
    left.set_title("Compute the reference needs to match (above 1: the variant wins)", fontsize=10)
    right.set_ylabel("dL* = L*(variant) - L*(reference) (nats)")
    right.set_title("Loss difference at equal compute (below 0: the variant wins)", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, flops=True)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="hollow: a bound or extrapolated", title_fontsize=7)
    fig.suptitle(f"Verdict ({_loss_name(by_budget)} loss; bars: 5–95% bootstrap, paired over seeds)")
    return fig


def lr_transfer(grid: pd.DataFrame, laws: pd.DataFrame | None) -> Figure:
    """Best learning rate against model size per variant (hollow: at the edge of the grid), and lr*(N)."""
    fig, ax = _figure(None, (8, 5))
    styles = _variant_styles(grid["variant"])
    for variant, rows in grid.groupby("variant"):
        style = styles[variant]
        lr = rows["lr_star"].fillna(rows["lr"])
        edge = rows["lr_edge"].astype(bool)
        ax.scatter(
            rows["params"][~edge],
            lr[~edge],
            color=style["colour"],
            marker=style["marker"],
            label=str(variant),
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
                label=f"{variant}: lr* = {law.coefficient:.3g} N^{law.exponent:.2f}",
            )
    ax.axhspan(
        grid["lr_tried_min"].min(), grid["lr_tried_max"].max(), color="0.9", zorder=0, label="LRs tried"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("best peak learning rate")
    ax.set_title("Learning-rate transfer: best LR per size (hollow: at the grid's edge, not fitted)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


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


def normalised(points: pd.DataFrame, fits: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Loss and forward FLOPs per token relative to each budget's isoFLOP-optimal baseline (Fig. 4, right)."""
    fig, ax = _figure(ax, (10, 5.5))
    ref = baseline_reference(points, fits)
    data = points[points["budget"].isin(ref.index)].copy()
    data["x"] = data["forward_flops_per_token"] / data["budget"].map(ref["fpt_ref"])
    data["y"] = data["loss"] / data["budget"].map(ref["loss_ref"])
    colours, styles = _budget_colours(data["budget"]), _variant_styles(data["curve"])
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
