"""`modexp analyze`'s figure options, checked before anything is read or written, without loading matplotlib
(the figures are drawn in workers that import it: figure_pool.py)."""

from __future__ import annotations

import numpy as np

from modexp.errors import ModexpError

FORMATS = ("png", "svg", "pdf")
DEFAULT_FORMATS = ("png", "svg")


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
