"""The verdict: how much more compute a reference (the baseline, the random-routing control, an MoE) needs to
reach a variant's optimal loss, and the loss difference at equal compute (docs/verdict.md).

- The reference's optimal loss L*_ref(C) is known at its located (bracketed) budgets. Two models join them:
  a monotone cubic in log C (PCHIP, after a running minimum: more compute never makes the optimum worse) and a
  curve, L*(C) = E + k C^-g fitted to the optima (3 or more budgets) or, with 2 budgets, the minimum over
  sizes of the reference's Approach-3 law (a straight line between two budgets is biased for a convex
  L*(C)). Where the curve gives the estimate it is first bent through the end optima by adding a line
  (same curvature, anchored to what was measured). m = C'/C where L*_ref(C') = L*_variant(C). The estimate
  is the cubic's with 3 or more budgets and the curve's with 2; the other model's value widens the interval
  to include it (model error).
- Past the reference's budgets m is extrapolated along the curve, never further than one budget step (the
  median spacing of the reference's budgets); beyond that m is only a bound (">=" or "<=").
- dL(C) = L*_variant(C) - L*_ref(C); at a budget the reference did not train, L*_ref(C) is read off its
  curve and the row says so.
- Intervals: replicates from fits.py (each curve drawn from its own measured noise; curves are not paired),
  5th-95th percentiles, shifted to the estimate's model and widened to include the other model's value.
- Flags per row (the `flags` column, ';'-separated): lr_edge (a point shaping either optimum had its best LR
  at the grid's edge), bound (either optimum only a bound), extrapolated, beyond_step (m only a bound),
  reference_2_budgets, reference_on_bounds (fewer than 2 located budgets: its curve runs through bounds),
  reference_missing (dL read off the reference's curve). `estimate` is True where m is an estimate: both
  optima located, not extrapolated, no LR edge, the reference's curve on located budgets. The headline per
  pair is the geometric mean of m over those rows only; with none it is NaN and `note` says why.
- Where m and dL disagree in direction, `believe` says which one to trust and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.interpolate import PchipInterpolator

from modexp import variants

from .fits import fit_approach3_points, percentiles
from .points import reference_curve
from .table import BASELINE

FLAGS = (
    "lr_edge",
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
]
GRID = 2001  # points of the cubic per replicate when it is inverted


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
    return Reference(xs, ys, reps, curve, anchored, not on_curve["bracketed"].astype(bool).all(), step)


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


def _interval(reps: np.ndarray, shift: float, other: float) -> tuple[float, float]:
    """Percentiles of log-space replicates moved by `shift`, widened to include the other model's value."""
    lo, hi = percentiles(reps + shift)
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


def _row(
    curve: str, reference: str, fit: pd.Series, ref_fits: pd.DataFrame, ref: Reference, boot: dict
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
    if cubic_reps is not None:
        m_lo, m_hi = _interval(cubic_reps, est - cubic_est, other)
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
    lr_edge = bool(fit.get("lr_edge_at_opt", False)) or (
        shared and bool(ref_fits.loc[budget].get("lr_edge_at_opt", False))
    )
    flags = {
        "lr_edge": lr_edge,
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
    estimate = (
        m_op == "=" and not any(flags[f] for f in ("lr_edge", "bound", "extrapolated")) and math.isfinite(est)
    )
    dl = loss - ref_loss
    d_op = "?" if mine_bound and ref_bound else "<=" if mine_bound else ">=" if ref_bound else "="
    with np.errstate(invalid="ignore"):
        d_reps = mine_reps - ref_reps
    m = 10 ** (est - log_c) if math.isfinite(est) else math.nan
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
        "delta_loss_lo": percentiles(d_reps)[0] if reach else math.nan,
        "delta_loss_hi": percentiles(d_reps)[1] if reach else math.nan,
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
        "lr_edge": lr_edge,
        "reference_missing": not shared,
        "reference_budgets": ref.n,
        "model_error": abs(est - other) if math.isfinite(est) and math.isfinite(other) else 0.0,
        "believe": _believe(m, m_op, dl if reach else math.nan, d_op, shared),
        "_reps": cubic_reps + (est - cubic_est) - log_c if cubic_reps is not None else None,
        "_other": other - log_c if math.isfinite(other) else math.nan,
    }


def _why_no_estimate(rows: list[dict]) -> str:
    reasons = sorted(
        {f for r in rows for f in r["flags"].split(";") if f in ("lr_edge", "bound", "extrapolated")}
    )
    if any(r["multiplier_bound"] for r in rows):
        reasons.append("m only a bound")
    return "no budget gives an estimate of m (" + ", ".join(reasons or ["m not computable"]) + ")"


def _summary(curve: str, reference: str, rows: list[dict]) -> dict:
    used = [r for r in rows if r["estimate"]]
    summary = {
        "curve": curve,
        "reference": reference,
        "multiplier": math.nan,
        "multiplier_lo": math.nan,
        "multiplier_hi": math.nan,
        "n_budgets": len(used),
        "extrapolated": False,
        "bracketed": bool(used),
        "loss": rows[0]["loss"] if rows else "",
        "n_budgets_total": len(rows),
        "note": "",
    }
    if not used:
        summary["note"] = _why_no_estimate(rows)
        return summary
    log_m = np.array([math.log10(r["multiplier"]) for r in used])
    reps = np.stack([r["_reps"] for r in used]).mean(axis=0)
    others = np.array([r["_other"] if math.isfinite(r["_other"]) else lm for r, lm in zip(used, log_m)])
    lo, hi = _interval(reps, 0.0, float(others.mean()))
    left_out = [r for r in rows if not r["estimate"]]
    summary.update(
        multiplier=10 ** float(log_m.mean()),
        multiplier_lo=10**lo if math.isfinite(lo) else math.nan,
        multiplier_hi=10**hi if math.isfinite(hi) else math.nan,
        note=(
            "left out: "
            + ", ".join(f"{r['budget']:.3g} ({r['flags'] or 'm only a bound'})" for r in left_out)
            if left_out
            else ""
        ),
    )
    return summary


def _pair(fits: pd.DataFrame, boot: dict, curve: str, reference: str, points) -> tuple[list[dict], dict]:
    mine = fits[fits["curve"] == curve].set_index("budget").sort_index()
    ref_fits = fits[fits["curve"] == reference].set_index("budget").sort_index()
    ref = _reference(fits, boot, reference, points)
    rows = [_row(curve, reference, fit, ref_fits, ref, boot) for _, fit in mine.iterrows()]
    summary = _summary(curve, reference, rows)
    for row in rows:
        row.pop("_reps"), row.pop("_other")
    return rows, summary


def compute_verdict(
    fits: pd.DataFrame, boot: dict[tuple[str, float], np.ndarray], points: pd.DataFrame | None = None
) -> Verdict:
    """See the module docstring. `points` (the reduced table) lets a reference with 2 located budgets use its
    Approach-3 law as the curve between them."""
    rows, overall = [], []
    for curve, reference in comparisons(fits):
        pair_rows, summary = _pair(fits, boot, curve, reference, points)
        rows += pair_rows
        overall.append(summary)
    return Verdict(
        pd.DataFrame(rows, columns=VERDICT_COLUMNS), pd.DataFrame(overall, columns=OVERALL_COLUMNS)
    )
