"""How every figure looks and how it is written: colours, markers, titles, axes, legends, sizes and files.

Figures are built as matplotlib Figures directly, without pyplot's global state, so they render in a headless
process (Agg canvas) and display in a notebook alike; `save` writes one as PNG + SVG (default) or any of
FORMATS, at its own size or a chosen one.
"""

from __future__ import annotations

import contextlib
import functools
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox
from numpy.typing import ArrayLike

from modexp.units import sci, si

from ..figure_options import DEFAULT_FORMATS, FORMATS, figure_options  # noqa: F401 (checked without matplotlib)
from ..table import BASELINE
from .labels import variant_label

# The one look of every figure, whatever the user's matplotlibrc says: matplotlib's defaults plus these.
# fonttype 42: TrueType fonts in PDF/PS, not Type 3 (which IEEE's and ACM's submission checks reject).
STYLE = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "axes.grid": False,
    "savefig.facecolor": "white",
}


def styled() -> contextlib.AbstractContextManager:
    """rcParams for drawing and saving a figure: matplotlib's defaults and STYLE, restored afterwards."""
    import matplotlib.style

    return matplotlib.style.context(["default", STYLE])


def styled_figure(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """A drawing function that builds its figure under `styled()` (text, fonts and sizes are set then)."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with styled():
            return draw(*args, **kwargs)

    return wrapper


P = ParamSpec("P")
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
# Variant colours: tab10 without its olive and cyan, orange and pink darkened, so that every one keeps a
# contrast of at least 3:1 against white (WCAG's bar for graphics).
VARIANT_COLOURS = ["#1f77b4", "#d95f02", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#c51b7d", "#4d4d4d"]
# Budget colours: plasma from its dark end up to orange, stopping before the yellow that vanishes on white.
BUDGET_CMAP, BUDGET_RANGE = "plasma", (0.0, 0.62)
TITLE_SIZE, PANEL_TITLE_SIZE = 12, 10  # one figure title, panel titles below it: the same in every figure


def variant_order(variants: Iterable[str]) -> list[str]:
    """Baseline first, then the other variants alphabetically."""
    return sorted(set(variants), key=lambda v: (v != BASELINE, v))


def variant_styles(variants: Iterable[str]) -> dict[str, dict]:
    """Marker, line style and colour per variant (or any curve key), handed out in variant_order."""
    return {
        v: {
            "marker": MARKERS[i % len(MARKERS)],
            "ls": LINESTYLES[i % len(LINESTYLES)],
            "colour": VARIANT_COLOURS[i % len(VARIANT_COLOURS)],
        }
        for i, v in enumerate(variant_order(variants))
    }


def budget_colours(budgets: Iterable[float]) -> dict[float, tuple]:
    """The smallest budget darkest; the largest the lightest colour of BUDGET_RANGE (still visible on white)."""
    budgets = sorted(set(budgets))
    cmap, (lo, hi) = colormaps[BUDGET_CMAP], BUDGET_RANGE
    return {b: cmap(lo + (hi - lo) * i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def figure_title(fig: Figure, ax: Axes | None, text: str) -> None:
    """The figure's title, the same size in every figure; on the given axes when drawn into another figure."""
    if ax is not None:
        ax.set_title(text, fontsize=PANEL_TITLE_SIZE)
    else:
        fig.suptitle(text, fontsize=TITLE_SIZE)


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and its figure (a panel of another figure), or a new figure of figsize with one."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def resize(fig: Figure, size: tuple[float, float]) -> None:
    """Give the figure `size` (inches). Shrunk below its own size, its text shrinks too (by the square root
    of the shrink, not below 5 pt) and titles wrap to its width, so a 3-panel figure still reads at 6x4."""
    width, height = fig.get_size_inches()
    shrink = min(1.0, size[0] / width, size[1] / height) ** 0.5
    fig.set_size_inches(size)
    if shrink >= 1.0:
        return
    for text in fig.findobj(Text):
        text.set_fontsize(max(5.0, text.get_fontsize() * shrink))
    if shrink < COMPACT:
        _legends_below(fig, size[0])
    titles = [(fig._suptitle, 1.0)] if fig._suptitle is not None else []
    titles += [(ax.title, ax.get_position().width) for ax in fig.axes if ax.get_title()]
    titles += [(ax.xaxis.label, ax.get_position().width) for ax in fig.axes if ax.get_xlabel()]
    for title, share in titles:
        # Average glyph width ~0.55 em: how many characters fit across the figure (or its panel).
        fit = int(share * size[0] * 72 / (0.55 * title.get_fontsize()))
        lines = title.get_text().split("\n")
        title.set_text("\n".join(textwrap.fill(line, max(fit, 12)) for line in lines))
    _thin_ticks(fig)


COMPACT = 0.8  # shrunk below this (e.g. a 3-panel figure at a paper column's 3.5 in): legends go below


def _legends_below(fig: Figure, width: float) -> None:
    """Every legend of the figure's axes merged into one below them: beside or over small panels they take
    the room the data needs."""
    handles, labels, titles = [], [], []
    for ax in fig.axes:
        found = [a for a in ax.artists if isinstance(a, Legend)] + (
            [ax.get_legend()] if ax.get_legend() else []
        )
        for legend in found:
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                if text.get_text() not in labels:
                    handles.append(handle)
                    labels.append(text.get_text())
            title = legend.get_title().get_text()
            if title and title not in titles and title not in ("variant", "training budget"):
                titles.append(title)
            legend.remove()
    if not handles:
        return
    size = 5.0
    longest = max(len(label) for label in labels)
    ncols = max(1, min(len(labels), int(width * 72 / (0.55 * size * longest + 20))))
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=ncols,
        fontsize=size,
        title=textwrap.fill("; ".join(titles), int(width * 72 / (0.55 * size))) if titles else None,
        title_fontsize=size,
        frameon=False,
    )


def _thin_ticks(fig: Figure, rounds: int = 3) -> None:
    """Fewer ticks on an axis whose tick labels run into each other at this size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for level in range(rounds):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw_without_rendering()
        crowded = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) if _crowded(axis, renderer)]
        if not crowded:
            return
        for axis in crowded:
            n = 4 - level
            if axis.get_scale() == "log":
                axis.set_major_locator(LogLocator(base=10, subs=(1.0,), numticks=n + 1))
            else:
                axis.set_major_locator(MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]))


def _crowded(axis: Axis, renderer) -> bool:
    lo, hi = sorted(axis.get_view_interval())
    boxes = [
        label.get_window_extent(renderer)
        for tick, label in zip(axis.get_major_ticks(), axis.get_majorticklabels())
        if label.get_visible() and label.get_text() and lo <= tick.get_loc() <= hi
    ]
    boxes = [b.padded(1) for b in boxes]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


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
    with styled():
        if size is not None:
            resize(fig, size)
        engine = fig.get_layout_engine()
        crop = _lay_out_once(fig)
        paths = [out_dir / f"{name}.{fmt}" for fmt in formats]
        try:
            for path, fmt in zip(paths, formats):
                # Without a size, cropped to what the figure draws; with one, exactly that size.
                fig.savefig(path, dpi=150, bbox_inches=crop if size is None else None, format=fmt)
        finally:
            fig.set_layout_engine(engine)  # laid out again if a notebook shows it or saves it at another size
    return paths[0]


def _lay_out_once(fig: Figure) -> Bbox:
    """Lay the figure out and measure what it draws once, for every format it is saved in.

    savefig(bbox_inches="tight") draws a figure twice (once to measure, once to write) and the constrained
    layout runs at each draw: with two formats that is four layouts of the same figure, most of the time
    `modexp analyze` spends. Here the layout runs once, is then kept (layout engine off until `save` puts
    it back), and the crop box is measured once; each format then draws once.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return fig.get_tightbbox(renderer).padded(mpl.rcParams["savefig.pad_inches"])


def legend_budget_variant(ax: Axes, colours: dict, styles: dict, extra: list | None = None) -> None:
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


def log_ticks(axis: Axis, flops: bool = False) -> None:
    """Labels at 1, 2 and 5 per decade (1 only over wide ranges): matplotlib's default labels only decades,
    often just two on a sweep's axis. FLOPs read as 2e11, sizes as 20k."""
    lo, hi = axis.get_view_interval()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: sci(v, 2) if flops else si(v)))
    axis.set_minor_formatter(NullFormatter())


def multiplier_ticks(axis: Axis) -> None:
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


def errorbars(
    ax: Axes,
    x: ArrayLike,
    y: ArrayLike,
    lo: ArrayLike,
    hi: ArrayLike,
    style: dict,
    label: str | None,
    filled: ArrayLike,
) -> None:
    """Points with bars from lo to hi (a missing bound: no bar), filled where `filled`, hollow elsewhere."""
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


def loss_name(fits: pd.DataFrame) -> str:
    """The loss a table was fitted on, in words for titles."""
    loss = str(fits["loss"].iloc[0]) if "loss" in fits and len(fits) else "topk"
    return "causal routing" if loss == "causal" else "top-k routing"
