"""Data repetition across a study's variants: at equal FLOPs MoD trains on more tokens than the baseline, so on
a small corpus it repeats its data more often. Light on purpose (no config, no torch): `modexp analyze` notes it
without loading what planning needs."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .units import sci

EPOCH_SPREAD = 1.5  # variants at one budget repeating their data this differently see different data regimes


def epoch_spread_notes(runs: Iterable[tuple[str, float, float]]) -> list[str]:
    """A note per budget where variants' median epochs differ by more than EPOCH_SPREAD x.

    runs: (variant, budget, epochs). At equal FLOPs MoD trains on more tokens than the baseline, so it repeats
    a small corpus more often: a difference in loss may then be a difference in repetition.
    """
    by_point: dict[float, dict[str, list[float]]] = {}
    for variant, budget, epochs in runs:
        if epochs is not None and math.isfinite(epochs) and epochs > 0:
            by_point.setdefault(float(budget), {}).setdefault(str(variant), []).append(float(epochs))
    notes = []
    for budget, by_variant in sorted(by_point.items()):
        medians = {v: sorted(e)[len(e) // 2] for v, e in by_variant.items()}
        low, high = min(medians, key=medians.get), max(medians, key=medians.get)
        # Under one pass nothing repeats: the spread matters only once some variant sees its data again.
        if medians[high] > 1 and medians[high] > EPOCH_SPREAD * medians[low]:
            notes.append(
                f"budget {sci(budget)}: {high} repeats its training data {medians[high] / medians[low]:.1f}x as "
                f"often as {low} (median epochs {medians[high]:.3g} vs {medians[low]:.3g}): part of a loss "
                "difference there may be repetition, not the architecture"
            )
    return notes
