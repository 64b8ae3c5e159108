"""The verdict: how much more compute a reference (the baseline, or the random-routing control) needs to reach
a variant's optimal loss, and the loss difference at equal compute (shared spec, "the verdict").

- The reference's optimal loss L*_ref(C) is known at its (bracketed) budgets; between them it is interpolated
  in log C by a monotone cubic (PCHIP; a straight line with two budgets), after taking the running minimum:
  more compute never makes the optimum worse. The multiplier at budget C is m = C' / C where
  L*_ref(C') = L*_variant(C). Past the reference's budgets, the end segment is extended as a straight line
  and the row is marked extrapolated.
- dL(C) = L*_variant(C) - L*_ref(C) at a budget both trained (negative: the variant is better).
- The headline per pair is the geometric mean of m over the budgets inside the reference's curve (over all
  budgets, flagged, when none is).
- Intervals: the same bootstrap replicates as the fits (seeds drawn once for all curves, so the two sides
  are paired over seeds), 5th-95th percentiles.
- `bracketed` is False when either optimum at C is only a bound (its loss then is the best run's, an upper
  bound on L*): such a row is reported, but flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from .fits import percentiles
from .points import reference_curve
from .table import BASELINE

RANDOM = "random"
MOE, MODE = "moe_", "mode_"  # variant ids of modexp.plan.variant_name
VERDICT_COLUMNS = [
    "curve",
    "reference",
    "budget",
    "loss_opt",
    "reference_loss_opt",
    "multiplier",
    "multiplier_lo",
    "multiplier_hi",
    "extrapolated",
    "delta_loss",
    "delta_loss_lo",
    "delta_loss_hi",
    "bracketed",
    "bound",
    "multiplier_bound",
    "loss",
]


def is_random(variant: str) -> bool:
    return variant.startswith(RANDOM)


def comparisons(fits: pd.DataFrame) -> list[tuple[str, str]]:
    """(curve, reference curve) pairs: every variant against the baseline, learned routing against random,
    and each MoDE form against the mixture of experts it is built on (the paper's Fig. 7)."""
    curves = fits.drop_duplicates("curve").set_index("curve")["variant"]
    pairs = []
    for curve, variant in curves.items():
        if variant == BASELINE:
            continue
        references = [BASELINE] + (
            [] if is_random(variant) else sorted(v for v in set(curves) if is_random(v))
        )
        if str(variant).startswith(MODE):
            references += sorted(v for v in set(curves) if str(v).startswith(MOE))
        for reference in references:
            ref_curve = reference_curve(str(curve), variant, reference)
            if ref_curve in curves.index:
                pairs.append((str(curve), ref_curve))
    return pairs


def compute_multiplier(
    ref_log_c: np.ndarray, ref_loss: np.ndarray, log_c: float, loss: float
) -> tuple[float, bool]:
    """(C'/C, extrapolated) with L_ref(C') = loss; see the module docstring for the interpolation."""
    order = np.argsort(ref_log_c)
    xs, ys = np.asarray(ref_log_c, float)[order], np.minimum.accumulate(np.asarray(ref_loss, float)[order])
    keep = np.concatenate([[True], np.diff(ys) < 0])  # a flat stretch: the least compute reaching that loss
    xs, ys = xs[keep], ys[keep]
    if xs.size < 2 or not (math.isfinite(loss) and np.isfinite(ys).all()):
        return math.nan, False
    if ys[-1] <= loss <= ys[0]:
        # L*(log C) is convex; a straight line between budgets would overstate the reference's loss
        # between them (by ~2% in m at half-decade spacing). A monotone cubic follows the curvature.
        grid = np.linspace(xs[0], xs[-1], 4001)
        curve = PchipInterpolator(xs, ys)(grid) if xs.size > 2 else np.interp(grid, xs, ys)
        log_c_ref = float(np.interp(-loss, -curve, grid))
        return 10 ** (log_c_ref - log_c), False
    (x0, x1), (y0, y1) = (xs[-2:], ys[-2:]) if loss < ys[-1] else (xs[:2], ys[:2])
    log_c_ref = x0 + (loss - y0) * (x1 - x0) / (y1 - y0)
    return 10 ** (log_c_ref - log_c), True


def _replicates(boot: dict, curve: str, budgets: np.ndarray) -> np.ndarray:
    """(budgets, n_boot) replicate optimal losses of one curve."""
    return np.stack([boot[(curve, float(b))][:, 2] for b in budgets])


OVERALL_COLUMNS = [
    "curve",
    "reference",
    "multiplier",
    "multiplier_lo",
    "multiplier_hi",
    "n_budgets",
    "extrapolated",
    "bracketed",
    "loss",
]


@dataclass
class Verdict:
    """by_budget: one row per (curve, reference, budget); overall: the geometric mean over budgets per pair."""

    by_budget: pd.DataFrame
    overall: pd.DataFrame


def _pair(fits: pd.DataFrame, boot: dict, curve: str, reference: str) -> tuple[list[dict], dict]:
    mine = fits[fits["curve"] == curve].set_index("budget").sort_index()
    ref = fits[fits["curve"] == reference].set_index("budget").sort_index()
    bracketed = ref["bracketed"].astype(bool)
    # An unbracketed reference optimum is only an upper bound on its L*: it would make the reference look
    # worse than it is and inflate m. Its curve uses the bracketed budgets when there are two or more.
    on_curve = ref[bracketed] if bracketed.sum() >= 2 else ref
    curve_on_bounds = not on_curve["bracketed"].astype(bool).all()
    ref_log_c, ref_losses = np.log10(on_curve.index.to_numpy(float)), on_curve["loss_opt"].to_numpy(float)
    curve_reps = _replicates(boot, reference, on_curve.index.to_numpy(float))
    ref_reps = dict(zip(ref.index, _replicates(boot, reference, ref.index.to_numpy(float))))
    rows, all_reps = [], []
    for budget, fit in mine.iterrows():
        log_c = math.log10(budget)
        m, extrapolated = compute_multiplier(ref_log_c, ref_losses, log_c, fit["loss_opt"])
        mine_reps = boot[(curve, float(budget))][:, 2]
        m_reps = np.array(
            [
                compute_multiplier(ref_log_c, curve_reps[:, b], log_c, mine_reps[b])[0]
                for b in range(mine_reps.size)
            ]
        )
        all_reps.append(m_reps)
        shared = budget in ref.index
        ref_bound = shared and not bool(bracketed[budget])  # a budget the reference lacks is no bound
        d_reps = mine_reps - ref_reps[budget] if shared else np.array([math.nan])
        rows.append(
            {
                "curve": curve,
                "reference": reference,
                "budget": float(budget),
                "loss_opt": float(fit["loss_opt"]),
                "reference_loss_opt": float(ref.loc[budget, "loss_opt"]) if shared else math.nan,
                "multiplier": m,
                "multiplier_lo": percentiles(m_reps)[0],
                "multiplier_hi": percentiles(m_reps)[1],
                "extrapolated": extrapolated,
                "delta_loss": float(fit["loss_opt"] - ref.loc[budget, "loss_opt"]) if shared else math.nan,
                "delta_loss_lo": percentiles(d_reps)[0],
                "delta_loss_hi": percentiles(d_reps)[1],
                "bracketed": bool(fit["bracketed"]) and not ref_bound and len(on_curve) >= 2,
                # Whose optimum is only an upper bound on its L*: the variant's makes m a lower bound and dL an
                # upper one; the reference's (at this budget) makes dL a lower bound.
                "bound": {(True, True): "both", (True, False): "variant", (False, True): "reference"}.get(
                    (not bool(fit["bracketed"]), ref_bound), ""
                ),
                # The reference's curve built on bounds (too few bracketed budgets) sits too high: m too large.
                "multiplier_bound": {(True, True): "?", (True, False): ">=", (False, True): "<="}.get(
                    (not bool(fit["bracketed"]), curve_on_bounds), ""
                ),
                "loss": fit["loss"],
            }
        )
    # The headline averages the budgets the reference's curve covers; extrapolated ones only when none is.
    used = [i for i, r in enumerate(rows) if not r["extrapolated"]] or list(range(len(rows)))
    ms = np.array([rows[i]["multiplier"] for i in used])
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.stack([all_reps[i] for i in used]) if used else np.full((1, 1), math.nan)
        rep_means = np.exp(np.log(reps).mean(axis=0))
    summary = {
        "curve": curve,
        "reference": reference,
        "multiplier": float(np.exp(np.log(ms).mean())) if ms.size and np.isfinite(ms).all() else math.nan,
        "multiplier_lo": percentiles(rep_means)[0],
        "multiplier_hi": percentiles(rep_means)[1],
        "n_budgets": len(used),
        "extrapolated": any(rows[i]["extrapolated"] for i in used),
        "bracketed": all(rows[i]["bracketed"] for i in used),
        "loss": rows[0]["loss"] if rows else "",
    }
    return rows, summary


def compute_verdict(fits: pd.DataFrame, boot: dict[tuple[str, float], np.ndarray]) -> Verdict:
    """See the module docstring."""
    rows, overall = [], []
    for curve, reference in comparisons(fits):
        pair_rows, summary = _pair(fits, boot, curve, reference)
        rows += pair_rows
        overall.append(summary)
    return Verdict(
        pd.DataFrame(rows, columns=VERDICT_COLUMNS), pd.DataFrame(overall, columns=OVERALL_COLUMNS)
    )
