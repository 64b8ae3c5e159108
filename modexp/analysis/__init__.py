"""Analysis of an isoFLOP study, one job per module, no import cycle:

- table.py: a sweep folder's runs (or an external CSV) as one table; metrics and routing samples.
- points.py: runs -> points of the curves (seeds averaged, best learning rate, nothing else pooled).
- optimum.py: where one budget's curve has its minimum (a quadratic over the sizes around the lowest point).
- noise.py: the noise of one run's loss per curve (seeds, local residuals, shared stems), and replicates.
- fits.py: the optimum per budget with honest bracketing and bootstrap intervals; power laws; Approach 3.
- verdict.py: the compute multiplier and the loss difference against the baseline and the random control,
  m's trend with compute; simulate.py and calibration.py: `modexp selfcheck calibration`.
- lrlaw.py: lr*(N) per variant from an LR-grid study, for learning-rate transfer.
- report.py: the text summary. figures/: the figures (matplotlib, imported only when drawing), a registry.
- notebook.py: what the notebooks share (a folder parameter, the figure comparing two studies).
- study.py: `analyze`, which runs them in that order and writes every output.

The names below are imported on first use (PEP 562): `modexp plan` reads a preset's LR law from lrlaw.py and
should not pay for scipy and the fits to do so.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fits": [
        "FITS_COLUMNS",
        "N_BOOT",
        "PERCENTILES",
        "fit_approach3",
        "fit_approach3_points",
        "fit_isoflops",
        "fit_power_laws",
    ],
    "optimum": ["fit_optimum"],
    "lrlaw": ["LrLaw", "fit_lr_laws", "lr_law_from_study"],
    "points": ["DEFAULT_LOSS", "LOSSES", "reduce_points"],
    "study": ["AnalysisResult", "analyze", "load_or_analyze"],
    "table": [
        "BASELINE",
        "SWEEP_ENV",
        "collect",
        "load_metrics",
        "load_routing_sample",
        "load_table",
        "pick_routing_run",
        "resolve_sweep_dir",
        "scan_sweep",
    ],
    "verdict": ["compute_multiplier", "compute_verdict"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
