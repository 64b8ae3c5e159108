"""Analysis of an isoFLOP study, one job per module, no import cycle:

- table.py: a sweep folder's runs (or an external CSV) as one table; metrics and routing samples.
- points.py: runs -> points of the curves (seeds averaged, best learning rate, nothing else pooled).
- fits.py: parabolas per budget with honest bracketing and bootstrap intervals; power laws; Approach 3.
- verdict.py: the compute multiplier and the loss difference against the baseline and the random control.
- lrlaw.py: lr*(N) per variant from an LR-grid study, for learning-rate transfer.
- report.py: the text summary. figures/: the figures (matplotlib, imported only when drawing), a registry.
- notebook.py: what the notebooks share (a folder parameter, the figure comparing two studies).
- study.py: `analyze`, which runs them in that order and writes every output.
"""

from .fits import (
    FITS_COLUMNS,
    N_BOOT,
    PERCENTILES,
    fit_approach3,
    fit_approach3_points,
    fit_isoflops,
    fit_parabola,
    fit_power_laws,
)
from .lrlaw import LrLaw, fit_lr_laws, lr_law_from_study
from .points import DEFAULT_LOSS, LOSSES, reduce_points
from .study import AnalysisResult, analyze, load_or_analyze
from .table import (
    BASELINE,
    SWEEP_ENV,
    collect,
    load_metrics,
    load_routing_sample,
    load_table,
    pick_routing_run,
    resolve_sweep_dir,
    scan_sweep,
)
from .verdict import compute_multiplier, compute_verdict

__all__ = [
    "BASELINE",
    "DEFAULT_LOSS",
    "FITS_COLUMNS",
    "LOSSES",
    "N_BOOT",
    "PERCENTILES",
    "SWEEP_ENV",
    "AnalysisResult",
    "LrLaw",
    "analyze",
    "collect",
    "compute_multiplier",
    "compute_verdict",
    "fit_approach3",
    "fit_approach3_points",
    "fit_isoflops",
    "fit_lr_laws",
    "fit_parabola",
    "fit_power_laws",
    "load_metrics",
    "load_or_analyze",
    "load_routing_sample",
    "load_table",
    "lr_law_from_study",
    "pick_routing_run",
    "reduce_points",
    "resolve_sweep_dir",
    "scan_sweep",
]
