"""What the routers do: which tokens each routed block processes (Fig. 5) and how often the causal router
agrees with top-k over training (Fig. 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .labels import variant_label
from .spec import FigureData, FigureSpec
from .style import (
    PANEL_TITLE_SIZE,
    figure_title,
    styled_figure,
)

TOKEN_GLYPHS = {ord(" "): "␣", ord("\n"): "↵", ord("\t"): "→"}


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


@styled_figure
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
    figure_title(fig, None, "Routing decisions on a held-out sample")
    return fig


@styled_figure
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
    figure_title(fig, None, "Causal routing accuracy: how often the causal router agrees with top-k")
    return fig


def _run_label(run_id: str, info: pd.DataFrame) -> str:
    if run_id not in info.index:
        return str(run_id)
    label = variant_label(info.loc[run_id, "variant"])
    return f"{label} ({info.loc[run_id, 'causal_router']})" if "causal_router" in info else label


def _block(column: str) -> tuple[int, str]:
    suffix = column.split("/", 1)[1]
    return (int(suffix), "") if suffix.isdigit() else (10**9, suffix)


def _causal_acc_skip(data: FigureData) -> str | None:
    metrics = data.metrics
    if data.has_metrics and "causal_acc" in metrics and metrics["causal_acc"].notna().any():
        return None
    return "no causal_acc in any metrics.jsonl"


ROUTING = FigureSpec(
    "routing",
    lambda d: None if d.sample is not None else "no MoD run with a routing_sample.json",
    lambda d: routing(d.sample),
)
CAUSAL_ACC = FigureSpec("causal_acc", _causal_acc_skip, lambda d: causal_accuracy(d.metrics, d.results))
