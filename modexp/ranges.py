"""What each number of a config may be: one table per schema, checked by one walk over every numeric field.

A field with no entry is a bug the tests catch (tests/test_hardening.py walks every schema), so a new number
cannot arrive unchecked. Bounds are generous (what any study could mean), but finite: 0, a negative, nan, inf
or 1e308 where they mean nothing is refused in one line naming the key, the value and the range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # (low, ...: low itself is not allowed
    whole: bool = False  # an integer
    nullable: bool = False  # null (None) is allowed too

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        span = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{kind} in {span}" + (" or null" if self.nullable else "")


def whole(low: int, high: int, nullable: bool = False) -> Range:
    return Range(low, high, whole=True, nullable=nullable)


def above(low: float, high: float, nullable: bool = False) -> Range:
    """A positive-style range: low itself excluded."""
    return Range(low, high, low_open=True, nullable=nullable)


def within(low: float, high: float) -> Range:
    return Range(low, high)


def numeric_fields(obj: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, table key, value) of every numeric leaf of a dataclass tree, list items and dict values
    included: train.lr_law.baseline.coefficient is looked up as train.lr_law.*.coefficient, and
    sweep.ladder.widths[2] as sweep.ladder.widths."""
    out: list[tuple[str, str, Any]] = []
    for f in dataclasses.fields(obj):
        name = f"{prefix}{f.name}"
        out += _leaves(name, name, getattr(obj, f.name), f.type)
    return out


def _leaves(key: str, pattern: str, value: Any, declared: Any) -> list[tuple[str, str, Any]]:
    if dataclasses.is_dataclass(value):
        return [
            (f"{key}{k[len(key) :]}", f"{pattern}{p[len(key) :]}", v)
            for k, p, v in numeric_fields(value, f"{key}.")
        ]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", f"{pattern}.*", v, None)]
    if isinstance(value, (list, tuple)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(f"{key}[{i}]", pattern, v, None)]
    if _numeric(value) or (value is None and _numeric_type(declared)):
        return [(key, pattern, value)]
    return []


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_type(declared: Any) -> bool:
    text = str(declared)
    return "int" in text or "float" in text


def first_violation(obj: Any, table: dict[str, Range], prefix: str = "") -> str | None:
    """The first numeric field outside its range, as one line; None when every one is inside."""
    for key, pattern, value in numeric_fields(obj):
        rule = table.get(pattern)
        if rule is not None and not rule.allows(value):
            return f"{prefix}{key}={value!r} is not allowed: it must be {rule.describe()}"
    return None
