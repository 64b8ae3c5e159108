"""The verdict: how much more compute a reference (the baseline, the random-routing control, an MoE) needs to
reach a variant's optimal loss, and the loss difference at equal compute (docs/verdict.md).

- The reference's optimal loss L*_ref(C) is known at its located (bracketed) budgets. Two models join them:
  a monotone cubic in log C (PCHIP, after a running minimum: more compute never makes the optimum worse) and a
  curve, L*(C) = E + k C^-g fitted to the optima (3 or more budgets) or, with 2 budgets, the minimum over
  sizes of the reference's Approach-3 law (a straight line between two budgets is biased for a convex
  L*(C)). Where the curve gives the estimate it is first bent through the end optima by adding a line
  (same curvature, anchored to what was measured). m = C'/C where L*_ref(C') = L*_variant(C). The estimate
  is the cubic's inside the reference's budgets with 3 or more of them, the curve's otherwise; the other
  model's value widens the interval to include it (model error).
- Past the reference's budgets m is read along the curve, never further than one budget step (the median
  spacing of the reference's budgets); beyond that m is only a bound (">=" or "<=").
- dL(C) = L*_variant(C) - L*_ref(C); at a budget the reference did not train, L*_ref(C) is read off its
  curve and the row says so.
- The estimand is fixed before the data: a budget enters the headline when the design lets both optima be
  read there (both located, no point shaping either optimum at its LR grid's edge or with an LR extrapolated
  beyond its law's sizes, no variant repeating its data far more than the other, the reference's curve on
  located budgets), never because of the side of 1 its m falls on (extrapolation is no reason to leave a
  budget out: it widens the interval instead). `estimate` marks those rows.
- The headline per pair: m's geometric mean over those budgets, and its trend with compute, the least-squares
  slope of ln m on ln C with its interval, and a test of heterogeneity (chi^2 of the per-budget ln m against
  their pooled value, with their covariance from the replicates). Where m differs across budgets (the test at
  p < HETEROGENEITY_P, or a slope whose interval excludes 0) the headline is the trend (m at the first and last
  budget, the slope) and no pooled mean is given: it would hide whether MoD's advantage grows or shrinks.
- Intervals: replicates from fits.py (each curve drawn jointly over its budgets from its own measured noise,
  stems shared; curves are not paired), 5th-95th percentiles centred on the estimate, widened to include the
  other model's value. With several comparisons each interval holds at 90% alone; the family-wise columns
  (Bonferroni) hold for all of them at once.
- Flags per row (the `flags` column, ';'-separated): lr_edge, lr_outside_law, epochs, bound, extrapolated,
  beyond_step (m only a bound), reference_2_budgets, reference_on_bounds, reference_missing.
- Where m and dL disagree in direction, `believe` says which one to trust and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.interpolate import PchipInterpolator

from modexp import variants
from modexp.units import sci

from .fits import PERCENTILES, fit_approach3_points, percentiles
from .points import reference_curve
from .table import BASELINE

FLAGS = (
    "lr_edge",
    "lr_outside_law",
    "epochs",
    "bound",
    "extrapolated",
    "beyond_step",
    "reference_2_budgets",
    "reference_on_bounds",
    "reference_missing",
)
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
    "estimate",
    "flags",
    "lr_edge",
    "reference_missing",
    "reference_budgets",
    "model_error",
    "believe",
]
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
    "n_budgets_total",
    "note",
    "multiplier_bound",
    "budgets",
    "m_slope",
    "m_slope_lo",
    "m_slope_hi",
    "heterogeneous",
    "heterogeneity_p",
    "m_first",
    "m_last",
    "budget_first",
    "budget_last",
    "n_comparisons",
    "multiplier_fw_lo",
    "multiplier_fw_hi",
]
GRID = 2001  # points of the cubic per replicate when it is inverted
NOMINAL = (PERCENTILES[1] - PERCENTILES[0]) / 100
HETEROGENEITY_P = 0.05
MATERIAL = 1.05  # m must move by more than 5% across the budgets to be called a trend
EPOCH_SPREAD = 1.5  # as the plan's note: one variant repeating its data this many times more often
# Flags that take a budget out of the headline: properties of the design, never of which variant won.
DESIGN_FLAGS = ("lr_edge", "lr_outside_law", "epochs", "bound", "reference_on_bounds")


def comparisons(fits: pd.DataFrame) -> list[tuple[str, str]]:
    """(curve, reference curve) pairs: every variant against the baseline, then against the kinds its record
    names (modexp.variants: learned routing against random, each MoDE form against the mixture of experts it
    is built on, the paper's Fig. 7)."""
    curves = fits.drop_duplicates("curve").set_index("curve")["variant"]
    kinds = {v: getattr(variants.of_id(str(v)), "kind", None) for v in set(curves)}
    pairs = []
    for curve, variant in curves.items():
        if variant == BASELINE:
            continue
        references = [BASELINE]
        for kind in variants.references(str(variant)):
            references += sorted(v for v in set(curves) if kinds[v] == kind)
        for reference in references:
            ref_curve = reference_curve(str(curve), variant, reference)
            if ref_curve in curves.index:
                pairs.append((str(curve), ref_curve))
    return pairs


# ------------------------------------------------------------------------------------- the reference's L*(C)


def _monotone(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(xs)
    xs, ys = np.asarray(xs, float)[order], np.minimum.accumulate(np.asarray(ys, float)[order])
    keep = np.concatenate([[True], np.diff(ys) < 0])  # a flat stretch: the least compute reaching that loss
    return xs[keep], ys[keep]


def _line_log_c(xs: np.ndarray, ys: np.ndarray, loss: float) -> float:
    """log10 C' where the straight line through the end segment nearest `loss` reaches it."""
    (x0, x1), (y0, y1) = (xs[-2:], ys[-2:]) if loss < ys[-1] else (xs[:2], ys[:2])
    return float(x0 + (loss - y0) * (x1 - x0) / (y1 - y0))


def _cubic_log_c(xs: np.ndarray, ys: np.ndarray, loss: float) -> float:
    """log10 C' on the monotone cubic (a line with 2 budgets), or the straight end segment outside it."""
    if not ys[-1] <= loss <= ys[0]:
        return _line_log_c(xs, ys, loss)
    # L*(log C) is convex; a straight line between budgets overstates the reference's loss between them.
    grid = np.linspace(xs[0], xs[-1], GRID)
    curve = PchipInterpolator(xs, ys)(grid) if xs.size > 2 else np.interp(grid, xs, ys)
    return float(np.interp(-loss, -curve, grid))


def compute_multiplier(
    ref_log_c: np.ndarray, ref_loss: np.ndarray, log_c: float, loss: float
) -> tuple[float, bool]:
    """(C'/C, extrapolated) on the monotone cubic through the reference's optima (straight end segments
    outside them): the model-free half of the verdict; see the module docstring."""
    xs, ys = _monotone(ref_log_c, ref_loss)
    if xs.size < 2 or not (math.isfinite(loss) and np.isfinite(ys).all()):
        return math.nan, False
    return 10 ** (_cubic_log_c(xs, ys, loss) - log_c), not ys[-1] <= loss <= ys[0]


@dataclass
class Curve:
    """A smooth, convex L*(log10 C) with its inverse; None where it could not be fitted."""

    at: object  # log_c -> loss
    inverse: object  # loss -> log_c (nan where the curve never reaches it)
    name: str


def _power_curve(xs: np.ndarray, ys: np.ndarray) -> Curve | None:
    """L = E + exp(p - g ln(10) (x - x0)), least squares on the optima (E = 0 with 2 of them)."""
    x0 = float(xs.mean())
    if xs.size == 2:
        g = math.log(ys[0] / ys[1]) / (math.log(10) * (xs[1] - xs[0]))
        e, p = 0.0, math.log(ys[0]) + g * math.log(10) * (xs[0] - x0)
    else:

        def resid(theta: np.ndarray) -> np.ndarray:
            return theta[0] + np.exp(theta[1] - theta[2] * math.log(10) * (xs - x0)) - ys

        start = [0.5 * ys.min(), math.log(ys.mean() / 2), 0.1]
        upper = [max(ys.min() - 1e-9, 1e-9), 10.0, 5.0]
        try:
            e, p, g = optimize.least_squares(resid, start, bounds=([0.0, -30.0, 1e-6], upper)).x
        except ValueError:
            return None
    if not g > 0:
        return None
    at = lambda x: e + np.exp(p - g * math.log(10) * (np.asarray(x, float) - x0))  # noqa: E731

    def inverse(loss: float) -> float:
        return x0 + (p - math.log(loss - e)) / (g * math.log(10)) if loss > e else math.inf

    return Curve(at, inverse, "E + k C^-g" if xs.size > 2 else "k C^-g")


def _approach3_curve(points: pd.DataFrame | None, reference: str) -> Curve | None:
    """min over N of the reference's Approach-3 law at each budget: a curved L*(C) from every run, for when
    its optima are too few for a curve of their own."""
    if points is None:
        return None
    rows = points[points["curve"] == reference]
    if len(rows) < 8:
        return None
    params, tokens = rows["params"].to_numpy(float), rows["tokens"].to_numpy(float)
    law = fit_approach3_points(params, tokens, rows["loss"].to_numpy(float))
    alpha, beta = law["alpha"], law["beta"]
    if not (alpha > 0 and beta > 0):
        return None
    ratio = float(np.median(rows["budget"].to_numpy(float) / (params * tokens)))  # FLOPs per param-token
    g = (alpha * law["A"] / (beta * law["B"])) ** (1 / (alpha + beta))

    def at(x):
        budget = 10 ** np.asarray(x, float)
        n = g * (budget / ratio) ** (beta / (alpha + beta))
        return law["E"] + law["A"] / n**alpha + law["B"] / (budget / (ratio * n)) ** beta

    def inverse(loss: float) -> float:
        if loss <= law["E"]:
            return math.inf
        return float(optimize.brentq(lambda x: float(at(x)) - loss, -10.0, 60.0))

    return Curve(at, inverse, "Approach 3")


def _through_ends(curve: Curve | None, xs: np.ndarray, ys: np.ndarray) -> Curve | None:
    """The curve plus the straight line that makes it pass through the first and last optima.

    A fitted curve need not pass through the reference's measured optima (Approach 3 is fitted to every run,
    E + k C^-g by least squares): read as the estimate, it could then say the variant is worse at a budget
    where the measured optima say it is better. Adding a line keeps the curve's curvature (its reason to
    exist: a straight segment is biased for a convex L*(C)) while anchoring it to what was measured.
    """
    if curve is None or xs.size < 2:
        return curve
    raw = np.array([float(curve.at(x)) for x in (xs[0], xs[-1])])
    if not np.isfinite(raw).all():
        return None
    slope = ((ys[-1] - raw[1]) - (ys[0] - raw[0])) / (xs[-1] - xs[0])
    offset = ys[0] - raw[0] - slope * xs[0]
    at = lambda x: curve.at(x) + offset + slope * np.asarray(x, float)  # noqa: E731
    # Invert on the decreasing stretch around the budgets (a line added to a convex curve can turn back up
    # far away): past it, the curve never reaches the loss.
    grid = np.linspace(xs[0] - 4.0, xs[-1] + 4.0, 1601)
    values = np.asarray(at(grid), float)
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    falling = np.diff(values) < 0
    start = int(np.argmax(inside))
    lo = start
    while lo > 0 and falling[lo - 1]:
        lo -= 1
    hi = start
    while hi < falling.size and falling[hi]:
        hi += 1
    gx, gy = grid[lo : hi + 1], values[lo : hi + 1]

    def inverse(loss: float) -> float:
        if not math.isfinite(loss) or gx.size < 2:
            return math.nan
        if loss < gy[-1]:
            return math.inf
        if loss > gy[0]:
            return -math.inf
        return float(optimize.brentq(lambda x: float(at(x)) - loss, gx[0], gx[-1]))

    return Curve(at, inverse, f"{curve.name} through the end optima")


@dataclass
class Reference:
    """The reference curve a pair is read against."""

    xs: np.ndarray  # log10 budgets on the curve (located ones, or all when fewer than 2 are)
    ys: np.ndarray  # their optimal losses, running minimum
    reps: np.ndarray  # (budgets on the curve, B) replicate losses
    curve: Curve | None  # the fitted curve: the other model where the cubic is the estimate
    anchored: Curve | None  # the same through the end optima: the estimate where the curve is used
    on_bounds: bool
    step: float  # one budget step in log10 C
    ys_alt: np.ndarray | None = None  # the optima by each window's second model (optimum.alternative)

    @property
    def n(self) -> int:
        return int(self.xs.size)


def _reference(fits: pd.DataFrame, boot: dict, reference: str, points: pd.DataFrame | None) -> Reference:
    ref = fits[fits["curve"] == reference].set_index("budget").sort_index()
    bracketed = ref["bracketed"].astype(bool)
    # An unbracketed optimum is only an upper bound on L*: it would make the reference look worse than it is.
    on_curve = ref[bracketed] if bracketed.sum() >= 2 else ref
    log_c, losses = np.log10(on_curve.index.to_numpy(float)), on_curve["loss_opt"].to_numpy(float)
    # The running minimum drops a budget no better than a cheaper one: the least compute reaching that loss.
    keep = np.concatenate([[True], np.diff(np.minimum.accumulate(losses)) < 0])
    xs, ys = log_c[keep], np.minimum.accumulate(losses)[keep]
    n_boot = next(iter(boot.values())).shape[0]
    reps = np.stack(
        [boot[(reference, float(b))][:, 2] for b in on_curve.index[keep]] or [np.full(n_boot, np.nan)]
    )
    curve = None
    if xs.size >= 3:
        curve = _power_curve(xs, ys)
    elif xs.size == 2:
        curve = _approach3_curve(points, reference) or _power_curve(xs, ys)
    step = float(np.median(np.diff(xs))) if xs.size >= 2 else math.nan
    anchored = _through_ends(curve, xs, ys)
    alt = (
        on_curve["loss_opt_alt"].to_numpy(float)[keep]
        if "loss_opt_alt" in on_curve
        else np.full(xs.size, np.nan)
    )
    ys_alt = np.where(np.isfinite(alt), alt, ys)
    return Reference(
        xs, ys, reps, curve, anchored, not on_curve["bracketed"].astype(bool).all(), step, ys_alt
    )


def _placement_log_c(ref: Reference, loss_alt: float, shift: float) -> float:
    """log10 C' read with every optimum from its window's second model (the placement sensitivity), moved by
    the same `shift` the estimate's model adds to the cubic's reading."""
    if ref.ys_alt is None or ref.n < 2 or not math.isfinite(loss_alt):
        return math.nan
    xs, ys = _monotone(ref.xs, ref.ys_alt)
    if xs.size < 2:
        return math.nan
    return _cubic_log_c(xs, ys, loss_alt) + shift


def _model_log_c(ref: Reference, loss: float) -> tuple[float, float, bool, str]:
    """(estimate, other model, extrapolated, operator) for log10 C' where L*_ref(C') = loss."""
    inside = ref.ys[-1] <= loss <= ref.ys[0]
    cubic = _cubic_log_c(ref.xs, ref.ys, loss)
    smooth = ref.anchored.inverse(loss) if ref.anchored is not None else math.nan
    if inside:
        if ref.n > 2:  # the cubic is the estimate, the fitted curve as it stands the other model
            fitted = ref.curve.inverse(loss) if ref.curve is not None else math.nan
            return cubic, fitted, False, "="
        estimate, other = (smooth, cubic) if math.isfinite(smooth) else (cubic, math.nan)
        return estimate, other, False, "="
    estimate, other = (smooth, cubic) if math.isfinite(smooth) else (cubic, math.nan)
    top, bottom = ref.xs[-1] + ref.step, ref.xs[0] - ref.step
    if loss < ref.ys[-1] and not estimate <= top:
        return top, math.nan, True, ">="
    if loss > ref.ys[0] and not estimate >= bottom:
        return bottom, math.nan, True, "<="
    return estimate, other, True, "="


def _cubic_reps(ref: Reference, losses: np.ndarray) -> np.ndarray:
    """log10 C' per replicate on each replicate's own cubic (straight ends outside it).

    Replicates whose monotone points fall on the same budgets share one interpolator (one PCHIP over all of
    them, evaluated once on the grid): the same numbers as one cubic per replicate, in a fraction of the time.
    """
    out = np.full(losses.size, np.nan)
    order = np.argsort(ref.xs)
    xs_all = np.asarray(ref.xs, float)[order]
    ys_all = np.minimum.accumulate(np.asarray(ref.reps, float)[order], axis=0)
    keep = np.vstack([np.ones((1, ys_all.shape[1]), bool), np.diff(ys_all, axis=0) < 0])  # as in _monotone
    usable = np.isfinite(losses) & (np.isfinite(ys_all) | ~keep).all(axis=0) & (keep.sum(axis=0) >= 2)
    masks, group = np.unique(keep[:, usable].T, axis=0, return_inverse=True)
    columns = np.flatnonzero(usable)
    for g, mask in enumerate(masks):
        cols = columns[group.ravel() == g]
        xs, ys = xs_all[mask], ys_all[mask][:, cols]
        grid = np.linspace(xs[0], xs[-1], GRID)
        if xs.size > 2:
            curves = PchipInterpolator(xs, ys, axis=0)(grid)
        else:
            curves = np.column_stack([np.interp(grid, xs, ys[:, j]) for j in range(len(cols))])
        for j, b in enumerate(cols):
            loss = losses[b]
            if ys[-1, j] <= loss <= ys[0, j]:
                out[b] = float(np.interp(-loss, -curves[:, j], grid))
            else:
                out[b] = _line_log_c(xs, ys[:, j], loss)
    return out


def _reference_loss_at(ref: Reference, log_c: float) -> tuple[float, np.ndarray, bool]:
    """L*_ref at a budget it did not train: (estimate, replicates, within one step of its budgets)."""
    reach = ref.n >= 2 and ref.xs[0] - ref.step <= log_c <= ref.xs[-1] + ref.step
    if not reach:
        return math.nan, np.full(ref.reps.shape[1], math.nan), False
    inside = ref.xs[0] <= log_c <= ref.xs[-1]
    if inside and ref.n > 2:
        value = float(PchipInterpolator(ref.xs, ref.ys)(log_c))
        reps = PchipInterpolator(ref.xs, ref.reps, axis=0)(log_c)
    else:
        value = float(ref.anchored.at(log_c)) if ref.anchored else float(np.interp(log_c, ref.xs, ref.ys))
        end = slice(-2, None) if log_c > ref.xs[-1] else slice(0, 2)
        slope = np.polyfit(ref.xs[end], ref.reps[end], 1)
        line = slope[0] * log_c + slope[1]
        # The replicates' straight end segment, moved onto the curve's value there.
        reps = line + (value - np.polyval(np.polyfit(ref.xs[end], ref.ys[end], 1), log_c))
    return value, np.asarray(reps, float), True


# ------------------------------------------------------------------------------------------------- pairs


@dataclass
class Verdict:
    """by_budget: one row per (curve, reference, budget); overall: the headline per pair."""

    by_budget: pd.DataFrame
    overall: pd.DataFrame


def _interval(reps: np.ndarray, shift: float, others) -> tuple[float, float]:
    """Percentiles of log-space replicates moved by `shift`, widened to include each other model's value."""
    lo, hi = percentiles(reps + shift)
    for other in np.atleast_1d(np.asarray(others, float)):
        if math.isfinite(other) and math.isfinite(lo):
            lo, hi = min(lo, other), max(hi, other)
    return lo, hi


def _believe(m: float, m_op: str, dl: float, d_op: str, shared: bool) -> str:
    """Which of m and dL to trust where they point in different directions (m > 1 means dL < 0)."""
    if not (math.isfinite(m) and math.isfinite(dl)) or (m > 1) == (dl < 0) or m == 1 or dl == 0:
        return ""
    if m_op == "=" and d_op != "=":
        return f"believe m: dL is only a bound (dL {d_op} {dl:+.4f}) and gives no direction"
    if d_op == "=" and m_op != "=":
        return f"believe dL: m is only a bound (m {m_op} {m:.2f}x)"
    if m_op == "=" and d_op == "=":
        if shared:
            return "believe dL: measured at this budget, while m leans on the reference's interpolated curve"
        return "believe m: dL here reads the reference's curve at a budget it did not train"
    return "neither is an estimate here: no direction"


def _epoch_imbalance(points: pd.DataFrame | None, curve: str, reference: str, budget: float) -> bool:
    """Whether one of the two repeats its training data more than EPOCH_SPREAD x as often as the other at this
    budget (median epochs over its points), with more than one pass: a loss difference may then be
    repetition, not the architecture."""
    if points is None or "epochs" not in points:
        return False
    rows = points[points["budget"] == budget]
    medians = []
    for name in (curve, reference):
        epochs = pd.to_numeric(rows.loc[rows["curve"] == name, "epochs"], errors="coerce").dropna()
        if epochs.empty:
            return False
        medians.append(float(epochs.median()))
    low, high = min(medians), max(medians)
    return bool(high > 1 and low > 0 and high > EPOCH_SPREAD * low)


def _row(
    curve: str,
    reference: str,
    fit: pd.Series,
    ref_fits: pd.DataFrame,
    ref: Reference,
    boot: dict,
    epochs: bool,
) -> dict:
    budget = float(fit.name)
    log_c = math.log10(budget)
    mine_reps = boot[(curve, budget)][:, 2]
    loss = float(fit["loss_opt"])
    est, other, extrapolated, m_op = (
        _model_log_c(ref, loss) if ref.n >= 2 and math.isfinite(loss) else (math.nan, math.nan, False, "")
    )
    cubic_est = _cubic_log_c(ref.xs, ref.ys, loss) if ref.n >= 2 and math.isfinite(loss) else math.nan
    cubic_reps = _cubic_reps(ref, mine_reps) if m_op == "=" else None
    loss_alt = float(fit.get("loss_opt_alt", math.nan)) if bool(fit["bracketed"]) else math.nan
    placed = _placement_log_c(ref, loss_alt if math.isfinite(loss_alt) else loss, est - cubic_est)
    if cubic_reps is not None:
        m_lo, m_hi = _interval(cubic_reps, est - cubic_est, [other, placed])
    else:
        m_lo = m_hi = math.nan  # a bound has no interval
    shared = budget in ref_fits.index
    ref_bracketed = shared and bool(ref_fits.loc[budget, "bracketed"])
    if shared:
        ref_loss, ref_reps, reach = (
            float(ref_fits.loc[budget, "loss_opt"]),
            boot[(reference, budget)][:, 2],
            True,
        )
    else:
        ref_loss, ref_reps, reach = _reference_loss_at(ref, log_c)
    mine_bound, ref_bound = not bool(fit["bracketed"]), shared and not ref_bracketed

    def either(column: str) -> bool:
        return bool(fit.get(column, False)) or (shared and bool(ref_fits.loc[budget].get(column, False)))

    flags = {
        "lr_edge": either("lr_edge_at_opt"),
        "lr_outside_law": either("lr_outside_law"),
        "epochs": epochs,
        "bound": mine_bound or ref_bound,
        "extrapolated": extrapolated,
        "beyond_step": m_op in (">=", "<="),
        "reference_2_budgets": ref.n == 2,
        "reference_on_bounds": ref.on_bounds,
        "reference_missing": not shared,
    }
    if mine_bound:  # the variant's L* is only an upper bound: m is then a lower bound
        m_op = {"=": ">=", ">=": ">=", "<=": "?"}.get(m_op, m_op)
    if ref.on_bounds and m_op == "=":  # a curve through bounds sits too high: m too large
        m_op = "<="
    elif ref.on_bounds and m_op == ">=":
        m_op = "?"
    # In the headline by design: both optima readable here. Not by outcome: extrapolation only widens.
    eligible = ref.n >= 2 and not any(flags[f] for f in DESIGN_FLAGS)
    estimate = eligible and m_op == "=" and math.isfinite(est)
    dl = loss - ref_loss
    d_op = "?" if mine_bound and ref_bound else "<=" if mine_bound else ">=" if ref_bound else "="
    with np.errstate(invalid="ignore"):
        d_reps = mine_reps - ref_reps
    m = 10 ** (est - log_c) if math.isfinite(est) else math.nan
    d_lo, d_hi = percentiles(d_reps)
    ref_alt = float(ref_fits.loc[budget].get("loss_opt_alt", math.nan)) if shared else math.nan
    if math.isfinite(loss_alt) and math.isfinite(ref_alt) and math.isfinite(d_lo):  # placement sensitivity
        d_lo, d_hi = min(d_lo, loss_alt - ref_alt), max(d_hi, loss_alt - ref_alt)
    return {
        "curve": curve,
        "reference": reference,
        "budget": budget,
        "loss_opt": loss,
        "reference_loss_opt": ref_loss,
        "multiplier": m,
        "multiplier_lo": 10 ** (m_lo - log_c) if math.isfinite(m_lo) else math.nan,
        "multiplier_hi": 10 ** (m_hi - log_c) if math.isfinite(m_hi) else math.nan,
        "extrapolated": extrapolated,
        "delta_loss": dl if reach else math.nan,
        "delta_loss_lo": d_lo if reach else math.nan,
        "delta_loss_hi": d_hi if reach else math.nan,
        "bracketed": not mine_bound and not ref_bound and ref.n >= 2,
        # Whose optimum is only an upper bound on its L*: the variant's makes m a lower bound and dL an
        # upper one; the reference's (at this budget) makes dL a lower bound.
        "bound": {(True, True): "both", (True, False): "variant", (False, True): "reference"}.get(
            (mine_bound, ref_bound), ""
        ),
        "multiplier_bound": "" if m_op == "=" else m_op,
        "loss": fit["loss"],
        "estimate": estimate,
        "flags": ";".join(f for f in FLAGS if flags[f]),
        "lr_edge": flags["lr_edge"],
        "reference_missing": not shared,
        "reference_budgets": ref.n,
        "model_error": abs(est - other) if math.isfinite(est) and math.isfinite(other) else 0.0,
        "believe": _believe(m, m_op, dl if reach else math.nan, d_op, shared),
        "_eligible": eligible,
        "_reps": cubic_reps + (est - cubic_est) - log_c if cubic_reps is not None else None,
        "_others": [v - log_c for v in (other, placed)],
    }


def _why_no_estimate(rows: list[dict]) -> str:
    reasons = sorted({f for r in rows for f in r["flags"].split(";") if f in DESIGN_FLAGS})
    if any(r["_eligible"] and r["multiplier_bound"] for r in rows):
        reasons.append("m only a bound")
    return "no budget gives an estimate of m (" + ", ".join(reasons or ["m not computable"]) + ")"


def _centred(reps: np.ndarray, estimate: float) -> np.ndarray:
    """Replicates moved so that their median is the estimate: the interval then belongs to the estimate."""
    finite = np.isfinite(reps)
    if not finite.any() or not math.isfinite(estimate):
        return reps
    return reps - (float(np.median(reps[finite])) - estimate)


def _alternatives(used: list[dict], log_m: np.ndarray, scale: float) -> np.ndarray:
    """(models, budgets): each other model's log m per budget (the estimate where a model has none)."""
    values = np.array([[v * scale for v in r["_others"]] for r in used]).T
    return np.where(np.isfinite(values), values, log_m[None, :])


def _trend(used: list[dict]) -> dict:
    """ln m against ln C over the headline's budgets: slope, interval, heterogeneity (see the module docstring)."""
    ln_c = np.log([r["budget"] for r in used])
    ln_m = np.log([r["multiplier"] for r in used])
    reps = np.stack([r["_reps"] for r in used]) * math.log(10)  # (budgets, B), ln m
    others = _alternatives(used, ln_m, math.log(10))  # (models, budgets)
    x = ln_c - ln_c.mean()
    weights = x / np.sum(x**2)
    slope = float(weights @ ln_m)
    slope_reps = _centred(weights @ reps, slope)
    lo, hi = _interval(slope_reps, 0.0, others @ weights)
    # Heterogeneity: GLS mean with the replicates' covariance (plus each budget's model error, squared).
    finite = np.isfinite(reps).all(axis=0)
    p_value = math.nan
    if finite.sum() > len(used) + 2:
        cov = np.cov(reps[:, finite]) + np.diag(np.max((ln_m - others) ** 2, axis=0))
        cov = np.atleast_2d(cov)
        inv = np.linalg.pinv(cov)
        ones = np.ones(len(used))
        pooled = float(ones @ inv @ ln_m / (ones @ inv @ ones))
        resid = ln_m - pooled
        q = float(resid @ inv @ resid)
        p_value = float(stats.chi2.sf(q, len(used) - 1))
    fitted = ln_m.mean() + slope * x
    return {
        "m_slope": slope,
        "m_slope_lo": lo,
        "m_slope_hi": hi,
        "heterogeneity_p": p_value,
        # Either test: the budgets' m disagree beyond their errors, or m's slope with compute excludes 0;
        # and m moves by more than MATERIAL across the budgets (a noise-free table's 0.1% is no trend).
        "heterogeneous": bool(
            ((math.isfinite(p_value) and p_value < HETEROGENEITY_P) or lo > 0 or hi < 0)
            and abs(fitted[-1] - fitted[0]) > math.log(MATERIAL)
        ),
        "m_first": float(math.exp(fitted[0])),
        "m_last": float(math.exp(fitted[-1])),
        "budget_first": float(used[0]["budget"]),
        "budget_last": float(used[-1]["budget"]),
    }


def _summary(curve: str, reference: str, rows: list[dict]) -> dict:
    eligible = [r for r in rows if r["_eligible"]]
    used = [r for r in eligible if r["estimate"]]
    summary = {
        "curve": curve,
        "reference": reference,
        "multiplier": math.nan,
        "multiplier_lo": math.nan,
        "multiplier_hi": math.nan,
        "n_budgets": len(used),
        "extrapolated": any(r["extrapolated"] for r in used),
        "bracketed": bool(used),
        "loss": rows[0]["loss"] if rows else "",
        "n_budgets_total": len(rows),
        "note": "",
        "multiplier_bound": "",
        "budgets": ";".join(f"{r['budget']:.6g}" for r in used),
        "m_slope": math.nan,
        "m_slope_lo": math.nan,
        "m_slope_hi": math.nan,
        "heterogeneous": False,
        "heterogeneity_p": math.nan,
        "m_first": math.nan,
        "m_last": math.nan,
        "budget_first": math.nan,
        "budget_last": math.nan,
        "_reps": None,
    }
    left_out = [r for r in rows if not r["_eligible"]]
    notes = []
    if left_out:
        notes.append(
            "left out by design: " + ", ".join(f"{r['budget']:.3g} ({_design_reasons(r)})" for r in left_out)
        )
    bounds = [r for r in eligible if not r["estimate"]]
    if bounds:  # an eligible budget whose m is only a bound: the pooled m is a bound too, or nothing
        ops = {r["multiplier_bound"] for r in bounds}
        said = ", ".join(
            f"{sci(r['budget'])} ({r['multiplier_bound']} {r['multiplier']:.2f}x)" for r in bounds
        )
        values = [r["multiplier"] for r in eligible]
        if len(ops) == 1 and ops <= {">=", "<="} and all(math.isfinite(v) and v > 0 for v in values):
            summary.update(
                multiplier=float(np.exp(np.mean(np.log(values)))),
                multiplier_bound=ops.pop(),
                budgets=";".join(f"{r['budget']:.6g}" for r in eligible),
            )
            notes.append(f"m is only a bound at {said}, beyond one budget step of the reference's curve")
        else:
            notes.append(f"m is only a bound at {said}, in both directions: no pooled estimate")
        summary["note"] = "; ".join(notes)
        return summary
    if not used:
        summary["note"] = "; ".join(notes + [_why_no_estimate(rows)])
        return summary
    log_m = np.array([math.log10(r["multiplier"]) for r in used])
    reps = _centred(np.stack([r["_reps"] for r in used]).mean(axis=0), float(log_m.mean()))
    others = _alternatives(used, log_m, 1.0)
    lo, hi = _interval(reps, 0.0, others.mean(axis=1))
    summary.update(
        multiplier=10 ** float(log_m.mean()),
        multiplier_lo=10**lo if math.isfinite(lo) else math.nan,
        multiplier_hi=10**hi if math.isfinite(hi) else math.nan,
        _reps=reps,
        _others=others.mean(axis=1),
    )
    if len(used) >= 2:
        summary.update(_trend(used))
    if summary["heterogeneous"]:
        notes.append(
            f"m differs across budgets (slope {summary['m_slope']:+.2f} [{summary['m_slope_lo']:+.2f}, "
            f"{summary['m_slope_hi']:+.2f}], heterogeneity p = {summary['heterogeneity_p']:.3g}): the trend is "
            "the headline, a pooled mean would mislead"
        )
        summary.update(multiplier=math.nan, multiplier_lo=math.nan, multiplier_hi=math.nan, _reps=None)
    summary["note"] = "; ".join(notes)
    return summary


def _design_reasons(row: dict) -> str:
    reasons = [f for f in row["flags"].split(";") if f in DESIGN_FLAGS]
    if row["reference_budgets"] < 2:
        reasons.append("reference curve on fewer than 2 budgets")
    return ", ".join(reasons) or "not readable"


def _pair(fits: pd.DataFrame, boot: dict, curve: str, reference: str, points) -> tuple[list[dict], dict]:
    mine = fits[fits["curve"] == curve].set_index("budget").sort_index()
    ref_fits = fits[fits["curve"] == reference].set_index("budget").sort_index()
    ref = _reference(fits, boot, reference, points)
    rows = [
        _row(curve, reference, fit, ref_fits, ref, boot, _epoch_imbalance(points, curve, reference, float(b)))
        for b, fit in mine.iterrows()
    ]
    summary = _summary(curve, reference, rows)
    for row in rows:
        row.pop("_reps"), row.pop("_others"), row.pop("_eligible")
    return rows, summary


def _family_wise(overall: list[dict]) -> None:
    """Bonferroni: with k comparisons, each headline's (1 - 0.10 / k) interval; all hold together at 90%.

    Each side of the 90% interval is stretched by z(1 - 0.05/k) / z(0.95) in log m: 200 replicates cannot place
    a 1% tail (it would rest on two replicates), and the stretch keeps the interval's asymmetry."""
    k = len(overall)
    stretch = float(stats.norm.ppf(1 - (1 - NOMINAL) / 2 / max(k, 1)) / stats.norm.ppf(1 - (1 - NOMINAL) / 2))
    for s in overall:
        s["n_comparisons"] = k
        s["multiplier_fw_lo"] = s["multiplier_fw_hi"] = math.nan
        s.pop("_reps", None), s.pop("_others", None)
        m, lo, hi = s["multiplier"], s["multiplier_lo"], s["multiplier_hi"]
        if all(math.isfinite(v) and v > 0 for v in (m, lo, hi)):
            s["multiplier_fw_lo"] = m * (lo / m) ** stretch
            s["multiplier_fw_hi"] = m * (hi / m) ** stretch


def compute_verdict(
    fits: pd.DataFrame, boot: dict[tuple[str, float], np.ndarray], points: pd.DataFrame | None = None
) -> Verdict:
    """See the module docstring. `points` (the reduced table) lets a reference with 2 located budgets use its
    Approach-3 law as the curve between them, and tells the epochs each point trained."""
    rows, overall = [], []
    for curve, reference in comparisons(fits):
        pair_rows, summary = _pair(fits, boot, curve, reference, points)
        rows += pair_rows
        overall.append(summary)
    _family_wise(overall)
    return Verdict(
        pd.DataFrame(rows, columns=VERDICT_COLUMNS), pd.DataFrame(overall, columns=OVERALL_COLUMNS)
    )
