"""Figures of an isoFLOP study of MoD against baseline (figure numbers: Raposo et al. 2024), one module per
concern:

- labels.py: variant ids as readable labels; style.py: colours, titles, axes, legends, sizes and `save`;
  render.py: every figure of a study drawn and written, in parallel where the cores allow.
- spec.py: what a figure is (FigureSpec: name, skip, draw) and what it is drawn from (FigureData).
- curves.py (isoFLOP curves, normalised), optima.py, envelope.py (Approach 1), isotime.py (loss against
  training seconds), verdicts.py, learning_rate.py, training.py, routers.py:
  the figures, each drawing function beside its FigureSpec. Each returns a matplotlib Figure, shown in a
  notebook or written by `save`.

FIGURES is the registry `modexp analyze` draws from, in this order. A new figure is a new module (its drawing
function and its FigureSpec) and one entry in FIGURES; a re-export below if notebooks draw it too.
"""

from .curves import ISOFLOP, NORMALISED, baseline_reference, isoflop_curves, normalised
from .envelope import ENVELOPE, envelope
from .isotime import ISOTIME, isotime
from .labels import pair_label, variant_label
from .learning_rate import LR_TRANSFER, lr_transfer
from .optima import OPTIMAL, optimal_scaling
from .render import draw_all
from .routers import CAUSAL_ACC, ROUTING, TOKEN_GLYPHS, causal_accuracy, routing
from .spec import FigureData, FigureSpec
from .style import (
    BUDGET_CMAP,
    BUDGET_RANGE,
    DEFAULT_FORMATS,
    FORMATS,
    LINESTYLES,
    MARKERS,
    PANEL_TITLE_SIZE,
    STYLE,
    TITLE_SIZE,
    VARIANT_COLOURS,
    budget_colours,
    figure_options,
    save,
    styled,
    variant_order,
    variant_styles,
)
from .training import LEARNING_CURVES, learning_curves
from .verdicts import FLAG_LABELS, VERDICT, verdict

FIGURES: tuple[FigureSpec, ...] = (
    ISOFLOP,
    OPTIMAL,
    ENVELOPE,
    VERDICT,
    NORMALISED,
    LR_TRANSFER,
    LEARNING_CURVES,
    ROUTING,
    CAUSAL_ACC,
    ISOTIME,
)

__all__ = [
    "BUDGET_CMAP",
    "BUDGET_RANGE",
    "DEFAULT_FORMATS",
    "FIGURES",
    "FLAG_LABELS",
    "FORMATS",
    "LINESTYLES",
    "MARKERS",
    "PANEL_TITLE_SIZE",
    "STYLE",
    "TITLE_SIZE",
    "TOKEN_GLYPHS",
    "VARIANT_COLOURS",
    "FigureData",
    "FigureSpec",
    "baseline_reference",
    "budget_colours",
    "causal_accuracy",
    "draw_all",
    "envelope",
    "figure_options",
    "isotime",
    "isoflop_curves",
    "learning_curves",
    "lr_transfer",
    "normalised",
    "optimal_scaling",
    "pair_label",
    "routing",
    "save",
    "styled",
    "variant_label",
    "variant_order",
    "variant_styles",
    "verdict",
]
