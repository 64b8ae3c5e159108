"""Figures for an isoFLOP study of MoD against baseline (figure numbers: Raposo et al. 2024).

Every function builds a matplotlib Figure directly, without pyplot's global state, so it renders in a
headless process (Agg canvas) and displays in a notebook alike, and returns it; `save` writes it as PNG + SVG
(default) or any of FORMATS, at its own size or a chosen one. Inputs are the tables of modexp.analysis: results
(one row per run), points (one per curve, budget and size), fits, power laws, the verdict, metrics. Curves are
keyed by their `curve` id and shown under `variant_label` ("MoD 12.5%, every 2nd block").
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from modexp import variants as variant_kinds  # `variants` is a common local name here
from modexp.errors import ModexpError
from modexp.units import sci, si

from .table import BASELINE

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
TOKEN_GLYPHS = {ord(" "): "␣", ord("\n"): "↵", ord("\t"): "→"}
# Variant colours: tab10 without its olive and cyan, orange and pink darkened, so that every one keeps a
# contrast of at least 3:1 against white (WCAG's bar for graphics).
VARIANT_COLOURS = ["#1f77b4", "#d95f02", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#c51b7d", "#4d4d4d"]
# Budget colours: plasma from its dark end up to orange, stopping before the yellow that vanishes on white.
BUDGET_CMAP, BUDGET_RANGE = "plasma", (0.0, 0.62)
FORMATS = ("png", "svg", "pdf")
DEFAULT_FORMATS = ("png", "svg")
TITLE_SIZE, PANEL_TITLE_SIZE = 12, 10  # one figure title, panel titles below it: the same in every figure


def variant_label(variant: str) -> str:
    """A readable label for a variant id of modexp.plan.variant_name (or a split curve "<id> [col=value]").

    "baseline" -> "baseline"; "mod_c0.125_e2" -> "MoD 12.5%, every 2nd block"; "random_c0.125_e2" ->
    "MoD 12.5%, every 2nd block, random routing"; "_lin" adds "linear router weight", "_aux" "aux-loss
    causal router", "_nocausal" "no causal router". "moe_x4_k0.25" -> "MoE 4 experts x 25%";
    "mode_staged_c0.125_e2_x4_k0.25" -> "staged MoDE: MoD 12.5% every 2nd block, MoE 4 experts x 25%";
    "mode_integrated_c0.125_e2_x4_k0.25_n1" -> "integrated MoDE: MoE 4 experts x 25%, 12.5% of it every 2nd
    block with 1 no-op expert". Any other id (an external table's) is shown as it is.
    """
    variant = str(variant)
    base, sep, split = variant.partition(" [")
    label = variant_kinds.label(base)
    if label is None:
        return variant
    return f"{label} [{split}" if sep else label


def pair_label(curve: str, reference: str) -> str:
    """A verdict pair: "MoD 12.5%, every 2nd block vs baseline"."""
    return f"{variant_label(curve)} vs {variant_label(reference)}"


def figure_options(
    formats: str | tuple[str, ...] | list[str] | None = None,
    size: str | tuple[float, float] | list[float] | None = None,
) -> tuple[tuple[str, ...], tuple[float, float] | None]:
    """Check and normalise the figure options of `modexp analyze`: formats ("pdf", "png,svg" or a sequence;
    None: PNG + SVG) and size in inches ("6x4", (6, 4); None: each figure's own). Raises ModexpError."""
    if formats is None:
        formats = DEFAULT_FORMATS
    if isinstance(formats, str):
        formats = tuple(f for f in formats.replace(" ", "").split(",") if f)
    formats = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ModexpError(
            f"figure format {','.join(bad) or '(none)'}: choose one or more of {', '.join(FORMATS)} "
            "(comma-separated, e.g. pdf or png,svg)"
        )
    if size is None:
        return formats, None
    text = size if isinstance(size, str) else "x".join(map(str, size))
    try:
        parts = tuple(float(v) for v in (size.lower().split("x") if isinstance(size, str) else size))
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 2 or not all(np.isfinite(v) and 0 < v <= 100 for v in parts):
        raise ModexpError(
            f"figure size {text}: give width x height in inches, each above 0 and at most 100 (e.g. 6x4)"
        )
    return formats, (parts[0], parts[1])


def variant_order(variants) -> list[str]:
    """Baseline first, then the other variants alphabetically."""
    return sorted(set(variants), key=lambda v: (v != BASELINE, v))


def _variant_styles(variants) -> dict[str, dict]:
    return {
        v: {
            "marker": MARKERS[i % len(MARKERS)],
            "ls": LINESTYLES[i % len(LINESTYLES)],
            "colour": VARIANT_COLOURS[i % len(VARIANT_COLOURS)],
        }
        for i, v in enumerate(variant_order(variants))
    }


def _budget_colours(budgets) -> dict[float, tuple]:
    """The smallest budget darkest; the largest the lightest colour of BUDGET_RANGE (still visible on white)."""
    budgets = sorted(set(budgets))
    cmap, (lo, hi) = colormaps[BUDGET_CMAP], BUDGET_RANGE
    return {b: cmap(lo + (hi - lo) * i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def _title(fig: Figure, ax: Axes | None, text: str) -> None:
    """The figure's title, the same size in every figure; on the given axes when drawn into another figure."""
    if ax is not None:
        ax.set_title(text, fontsize=PANEL_TITLE_SIZE)
    else:
        fig.suptitle(text, fontsize=TITLE_SIZE)


def _figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _resize(fig: Figure, size: tuple[float, float]) -> None:
    """Give the figure `size` (inches). Shrunk below its own size, its text shrinks too (by the square root
    of the shrink, not below 5 pt) and titles wrap to its width, so a 3-panel figure still reads at 6x4."""
    width, height = fig.get_size_inches()
    shrink = min(1.0, size[0] / width, size[1] / height) ** 0.5
    fig.set_size_inches(size)
    if shrink >= 1.0:
        return
    for text in fig.findobj(Text):
        text.set_fontsize(max(5.0, text.get_fontsize() * shrink))
    titles = [(fig._suptitle, 1.0)] if fig._suptitle is not None else []
    titles += [(ax.title, ax.get_position().width) for ax in fig.axes if ax.get_title()]
    for title, share in titles:
        # Average glyph width ~0.55 em: how many characters fit across the figure (or its panel).
        fit = int(share * size[0] * 72 / (0.55 * title.get_fontsize()))
        lines = title.get_text().split("\n")
        title.set_text("\n".join(textwrap.fill(line, max(fit, 20)) for line in lines))


def save(
    fig: Figure,
    out_dir: Path,
    name: str,
    formats: str | tuple[str, ...] | None = None,
    size: str | tuple[float, float] | None = None,
) -> Path:
    """Write <out_dir>/<name>.<format> for each format (default PNG + SVG); return the first file's path.

    Without a size, the file is cropped to what the figure draws (legends beside the axes kept whole). With
    a size (width, height in inches), the file is exactly that size: the constrained layout fits the axes
    and their legends into it.
    """
    formats, size = figure_options(formats, size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if size is not None:
        _resize(fig, size)
    bbox = "tight" if size is None else None
    paths = [out_dir / f"{name}.{fmt}" for fmt in formats]
    for path, fmt in zip(paths, formats):
        fig.savefig(path, dpi=150, bbox_inches=bbox, format=fmt)
    return paths[0]


def _legend_budget_variant(ax: Axes, colours: dict, styles: dict, extra: list | None = None) -> None:
    """Two legends beside the axes (right), never over the points."""
    budget_handles = [Line2D([], [], color=c, lw=2, label=f"C = {sci(b)} FLOPs") for b, c in colours.items()]
    variant_handles = [
        Line2D([], [], color="0.3", marker=s["marker"], ls=s["ls"], label=variant_label(v))
        for v, s in styles.items()
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
    given = ax
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
    _title(
        fig,
        given,
        f"isoFLOP curves: loss against model size at fixed training FLOPs ({_loss_name(fits)} loss)",
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
        _log_ticks(ax.xaxis, flops=True)
        if quantity != "loss_opt":
            ax.set_yscale("log")
            _log_ticks(ax.yaxis)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=PANEL_TITLE_SIZE)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="▲▼/hollow: a bound, not fitted", title_fontsize=7)
    _title(fig, None, f"Optima against compute ({_loss_name(fits)} loss; bars: 5–95% bootstrap)")
    return fig


FLAG_LABELS = {
    "lr_edge": "LR edge",
    "bound": "bound",
    "extrapolated": "extrap.",
    "beyond_step": ">1 step",
    "reference_2_budgets": "ref. 2 budgets",
    "reference_on_bounds": "ref. on bounds",
    "reference_missing": "ref. interpolated",
}


def verdict(by_budget: pd.DataFrame) -> Figure:
    """The verdict per budget: compute multiplier (left) and loss difference at equal compute (right)."""
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    pairs = by_budget.assign(
        pair=[pair_label(c, r) for c, r in zip(by_budget["curve"], by_budget["reference"])]
    )
    styles = _variant_styles(pairs["pair"])
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
            _errorbars(
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
    _multiplier_ticks(left.yaxis)
    left.set_ylabel("compute multiplier m (reference needs m x C)")
    left.set_title(
        "Compute the reference needs to match (above 1: the variant wins)", fontsize=PANEL_TITLE_SIZE
    )
    right.set_ylabel("dL* = L*(variant) - L*(reference) (nats)")
    right.set_title("Loss difference at equal compute (below 0: the variant wins)", fontsize=PANEL_TITLE_SIZE)
    for ax in (left, right):
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, flops=True)
        ax.set_xlabel("training budget C (FLOPs)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="hollow: not an estimate (see its flags)", title_fontsize=7)
    _title(
        fig,
        None,
        f"Verdict ({_loss_name(by_budget)} loss; bars: 5–95%, each curve's measured noise plus the "
        "reference curve's model error)",
    )
    return fig


def _multiplier_ticks(axis) -> None:
    """A log axis of compute multipliers labelled 0.95x, 1x, 1.05x ... (1-2-5 per decade over wide ranges):
    log-scale default labels only decades, and m rarely spans one. Call once the data is drawn."""
    axis.axes.autoscale_view()
    lo, hi = axis.get_view_interval()
    wide = lo > 0 and hi / lo > 10
    locator = (
        LogLocator(base=10, subs=(1.0, 2.0, 5.0)) if wide else MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
    )
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    axis.set_minor_formatter(NullFormatter())


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
    _log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("best peak learning rate")
    _title(fig, None, "Learning-rate transfer: best LR per size (hollow: at the grid's edge, not fitted)")
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
    given = ax
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
    _title(
        fig,
        given,
        f"Relative to each budget's isoFLOP-optimal baseline ({_loss_name(fits)} loss)\n"
        "below 1: lower loss; left of 1: cheaper per token",
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
    _log_ticks(ax.xaxis)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("training steps per second (median step)")
    ax.set_title("Training speed per run", fontsize=PANEL_TITLE_SIZE)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _title(fig, None, "Learning curves and training speed (one line per run)")
    return fig


def _token_labels(sample: dict, window: int) -> list[str]:
    pieces = sample.get("pieces")
    if pieces:  # each token's text by the run's tokenizer: subwords as they read, whitespace visible
        return [
            "".join(TOKEN_GLYPHS.get(ord(ch), ch if ch.isprintable() else "·") for ch in piece) or "·"
            for piece in pieces[:window]
        ]
    tokens = sample.get("tokens")
    if tokens and not sample.get("tokenizer") and max(tokens[:window], default=0) < 256:
        # Byte tokens: printable ASCII as is, whitespace as visible glyphs, other bytes as a dot.
        return [TOKEN_GLYPHS.get(t, chr(t) if 32 < t < 127 else "·") for t in tokens[:window]]
    if tokens:  # raw shards: no tokenizer is known, so the ids themselves
        return [str(t) for t in tokens[:window]]
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
    vertical = max(map(len, labels), default=1) > 1  # subword pieces and ids: one column per token still
    top.set_xticks(range(len(labels)), labels, fontsize=7, family="monospace", rotation=90 if vertical else 0)
    top.set_yticks(range(len(layers)), [f"block {layer}" for layer in layers], fontsize=8)
    top.set_xlabel(f"sequence position (first {window} tokens; ␣ space, ↵ newline)")
    top.set_ylabel("routed block")
    capacity = sample.get("capacity")
    cap = f", capacity {capacity:g}" if capacity is not None else ""
    top.set_title(
        f"Which tokens each block processes (dark: through the block{cap})", fontsize=PANEL_TITLE_SIZE
    )

    if sample.get("router_weights"):
        weights = np.asarray(sample["router_weights"], float)
        chosen = selected.astype(bool)
        bins = np.linspace(np.nanmin(weights), np.nanmax(weights) + 1e-9, 40)
        bottom.hist(weights[chosen], bins=bins, alpha=0.7, color="indigo", label="selected (top-k)")
        bottom.hist(weights[~chosen], bins=bins, alpha=0.5, color="0.6", label="skipped (residual only)")
        bottom.set_xlabel("router weight g(r) (all routed blocks, all positions of the sample)")
        bottom.set_ylabel("tokens")
        bottom.set_title("Router weights of selected and skipped tokens", fontsize=PANEL_TITLE_SIZE)
        bottom.legend(fontsize=8)
    else:
        bottom.set_axis_off()
        bottom.text(
            0.5, 0.5, "no router_weights in routing_sample.json", ha="center", transform=bottom.transAxes
        )
    _title(fig, None, "Routing decisions on a held-out sample")
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
    left.set_title("Mean over routed blocks, every MoD run", fontsize=PANEL_TITLE_SIZE)

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
    right.set_title(f"Per routed block, run {run_id}", fontsize=PANEL_TITLE_SIZE)
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.set_ylabel("causal routing accuracy (vs top-k)")
        ax.grid(alpha=0.3)
    _title(fig, None, "Causal routing accuracy: how often the causal router agrees with top-k")
    return fig


def _run_label(run_id: str, info: pd.DataFrame) -> str:
    if run_id not in info.index:
        return str(run_id)
    label = variant_label(info.loc[run_id, "variant"])
    return f"{label} ({info.loc[run_id, 'causal_router']})" if "causal_router" in info else label


def _block(column: str) -> tuple[int, str]:
    suffix = column.split("/", 1)[1]
    return (int(suffix), "") if suffix.isdigit() else (10**9, suffix)


def compare_verdicts(by_budget: dict[str, pd.DataFrame], overall: dict[str, pd.DataFrame]) -> Figure:
    """Two (or more) studies' verdicts side by side: m per budget (left), the headline m per pair (right).

    by_budget and overall map a study's name to its verdict.csv and verdict_overall.csv rows (one loss).
    Colour: the study; marker: the pair (variant vs reference). Hollow: a bound or extrapolated.
    """
    fig = Figure(figsize=(13, 6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1])
    studies = list(by_budget)
    colours = {s: VARIANT_COLOURS[i % len(VARIANT_COLOURS)] for i, s in enumerate(studies)}
    pairs = sorted(
        {
            (c, r)
            for table in [*by_budget.values(), *overall.values()]
            for c, r in zip(table["curve"], table["reference"])
        },
        key=lambda p: (p[1] != BASELINE, p),
    )
    markers = {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(pairs)}
    for study in studies:
        table = by_budget[study]
        for (curve, reference), rows in table.groupby(["curve", "reference"]):
            rows = rows[np.isfinite(rows["multiplier"].to_numpy(float))].sort_values("budget")
            if rows.empty:
                continue
            style = {"colour": colours[study], "marker": markers[(curve, reference)]}
            filled = rows["bracketed"].astype(bool) & ~rows["extrapolated"].astype(bool)
            _errorbars(
                left,
                rows["budget"],
                rows["multiplier"],
                rows["multiplier_lo"],
                rows["multiplier_hi"],
                style,
                None,
                filled,
            )
            left.plot(rows["budget"], rows["multiplier"], color=colours[study], lw=1, alpha=0.7)
    left.set_xscale("log")
    _log_ticks(left.xaxis, flops=True)
    left.set_xlabel("training budget C (FLOPs)")
    left.set_title("Compute multiplier per budget", fontsize=PANEL_TITLE_SIZE)

    ticks, labels = [], []
    for i, pair in enumerate(pairs):
        for j, study in enumerate(studies):
            rows = overall[study]
            row = rows[(rows["curve"] == pair[0]) & (rows["reference"] == pair[1])]
            y = i * (len(studies) + 1) + j + 1
            ticks.append(y)
            labels.append(study)
            if j == 0:  # the pair heads its group
                right.text(
                    0.01,
                    y - 1,
                    pair_label(*pair),
                    transform=right.get_yaxis_transform(),
                    fontsize=8,
                    va="center",
                )
            if row.empty or not np.isfinite(float(row["multiplier"].iloc[0])):
                right.text(1, y, "  no verdict", va="center", fontsize=8, color="0.4")
                continue
            row = row.iloc[0]
            m = float(row["multiplier"])
            lo, hi = (
                float(row[k]) if np.isfinite(float(row[k])) else m for k in ("multiplier_lo", "multiplier_hi")
            )
            solid = bool(row["bracketed"]) and not bool(row["extrapolated"])
            right.errorbar(
                [m], [y], xerr=[[max(m - lo, 0)], [max(hi - m, 0)]], color=colours[study], capsize=3, lw=1
            )
            right.scatter(
                [m],
                [y],
                marker=markers[pair],
                color=colours[study] if solid else "none",
                edgecolors=colours[study],
                zorder=3,
            )
    right.set_yticks(ticks, labels, fontsize=8)
    right.set_ylim(len(pairs) * (len(studies) + 1) - 0.5, -0.5)
    right.set_xscale("log")
    right.set_xlabel("compute multiplier m (geometric mean over budgets)")
    right.set_title("Headline per pair (bars: 5–95% bootstrap)", fontsize=PANEL_TITLE_SIZE)
    left.set_yscale("log")
    left.axhline(1, color="0.4", lw=0.8)
    right.axvline(1, color="0.4", lw=0.8)
    for axis in (left.yaxis, right.xaxis):
        _multiplier_ticks(axis)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("compute multiplier m (reference needs m x C)")
    study_handles = [Line2D([], [], color=colours[s], marker="o", label=s) for s in studies]
    pair_handles = [
        Line2D([], [], color="0.3", marker=markers[p], ls="none", label=pair_label(*p)) for p in pairs
    ]
    first = left.legend(handles=study_handles, title="study", fontsize=8, loc="best")
    left.add_artist(first)
    left.legend(
        handles=pair_handles,
        title="pair (hollow: a bound or extrapolated)",
        title_fontsize=8,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
    )
    losses = sorted({str(v) for t in by_budget.values() if "loss" in t for v in t["loss"].dropna().unique()})
    loss = f"{' / '.join(losses)} loss; " if losses else ""
    _title(fig, None, f"Verdicts compared: {' vs '.join(studies)} ({loss}above 1: the variant wins)")
    return fig
