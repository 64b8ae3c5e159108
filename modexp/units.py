"""How modexp writes numbers for people: FLOP counts, SI sizes, durations."""

from __future__ import annotations

import math


def sci(value: float, digits: int = 3) -> str:
    """A FLOP count as people write it: 1e11, 2.5e11, 3.47e9 (no '+', no padded exponent)."""
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}"


def si(value: float | None, unit: str = "") -> str:
    """17k (params), 329 kFLOP, 55.7k tok/s; n/a for missing values."""
    if value is None or not math.isfinite(value):
        return "n/a"
    space = " " if unit else ""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{space}{prefix}{unit}"
    return f"{value:.3g}{space}{unit}"


def duration(seconds: float) -> str:
    """45 s, 12 min, 3.4 h, 2.1 days: the unit a person would pick."""
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def count(n: int, noun: str) -> str:
    """1 run, 3 runs."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def escaped(text: str) -> str:
    """Text read from files, safe to print on one line: control and format characters (newlines, terminal
    escapes, bidi overrides) written as Python escapes (\\n, \\x1b, \\u202e)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
