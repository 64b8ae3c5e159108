"""isoFLOP fits: a parabola per (curve, budget), its optimum's intervals, power laws, Approach 3.

The method (docs/isoflop.md, "Fitting"; Hoffmann et al. 2022, Approaches 2 and 3):

- Per (curve, budget): a parabola of the points' loss against log10(params). Its vertex is n_opt and
  loss_opt. d_opt is the vertex of a second parabola against log10(tokens) (no FLOP convention needed).
- Bracketed means the lowest-loss point is interior, with a higher-loss point on each side, and the parabola
  opens upward with its vertex inside the sampled sizes. Otherwise n_opt and d_opt are NaN, loss_opt is the
  best point's loss (an upper bound on L*), the budget is left out of the power laws, and when the lowest
  point is an end the optimum is a bound: `bound` says "below" (N* < smallest size) or "above" (N* > largest).
- Intervals: N* and D* by Fieller's theorem on each parabola's vertex (a ratio of fitted coefficients, with
  the curve's noise from noise.py and t quantiles of its degrees of freedom): the interval may be one-sided
  or unbounded where the curvature is not clearly positive. D*'s comes from the tokens parabola, D*'s own
  estimator. L* by a parametric bootstrap: replicate b adds drawn noise to the fitted parabola and refits;
  its bias (the minimum of noisy replicates sits low) is corrected. With only 3 sizes there are no
  residuals and no interval. boot_interior is the share of replicates whose vertex lay inside.
  Coverage is measured, not assumed: `modexp selfcheck calibration`.
- Per curve: N* = k C^a and D* = k' C^b by least squares over the bracketed budgets (at least 2); the
  exponent's interval by weighted least squares with each budget's optimum interval as its error, widened
  by the Birge ratio when the optima scatter more than those errors say.
- Approach 3 cross-check: L = E + A/N^alpha + B/D^beta by a Huber loss (delta 1e-3) on log-loss, L-BFGS from
  Hoffmann's grid of starts; implied a = beta / (alpha + beta).
"""

from __future__ import annotations

import math
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from .noise import NoiseModel, draw_losses, fit_noise, point_variances, variance_scales
from .points import Group, Points, reduce_points

try:  # L-BFGS-B makes many tiny BLAS calls; a multithreaded OpenBLAS makes them ~10x slower on a busy CPU
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it the fit is right, only slower
    threadpool_limits = None

N_BOOT = 200
SEED = 0
PERCENTILES = (5.0, 95.0)
MIN_POWER_LAW_BUDGETS = 2
MIN_A3_POINTS = 10  # Approach 3 has 5 free parameters
MIN_A3_BUDGETS = 2
A3_DELTA = 1e-3
A3_STARTS = 8  # L-BFGS runs from the best points of Hoffmann's grid (4500 points; the best few share a basin)
A3_TOL = 1e-12  # the objective is ~1e-8 near a good fit: scipy's default tolerances would stop at the start

FITS_COLUMNS = [
    "curve",
    "variant",
    "budget",
    "n_opt",
    "d_opt",
    "loss_opt",
    "bracketed",
    "bound",
    "bound_params",
    "n_opt_lo",
    "n_opt_hi",
    "loss_opt_lo",
    "loss_opt_hi",
    "n_points",
    "n_runs",
    "n_seeds",
    "lr_edge_points",
    "d_opt_lo",
    "d_opt_hi",
    "n_sizes",
    "params_min",
    "params_max",
    "n_boot",
    "boot_interior",
    "reason",
    "loss",
    "fit_c2",
    "fit_c1",
    "fit_c0",
    "tok_c2",
    "tok_c1",
    "tok_c0",
    "lr_edge_at_opt",
    "noise_sd",
    "noise_slope",
    "noise_terms",
    "noise_dof",
    "noise_source",
]
POWER_LAW_COLUMNS = [
    "curve",
    "quantity",
    "exponent",
    "coefficient",
    "exponent_lo",
    "exponent_hi",
    "n_budgets",
    "exponent_se",
    "interval",
]
A3_COLUMNS = ["curve", "E", "A", "B", "alpha", "beta", "a_opt", "b_opt", "n_points", "n_budgets", "objective"]


@dataclass(frozen=True)
class Parabola:
    """loss = c2 x^2 + c1 x + c0 with x = log10(size); vertex at (x_min, y_min); bound: below | above | ''."""

    coef: tuple[float, float, float]
    x_min: float
    y_min: float
    bracketed: bool
    reason: str
    bound: str


@dataclass
class IsoflopFits:
    """Per (curve, budget) fits, plus each group's bootstrap replicates (n_boot x [log10 n, log10 d, loss, interior])."""

    table: pd.DataFrame
    boot: dict[tuple[str, float], np.ndarray]
    noise: dict[str, NoiseModel] = field(default_factory=dict)


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares parabola; vertex (nan, nan) when under 3 distinct x or not opening upward."""
    if np.unique(x).size < 3:
        return np.full(3, np.nan), math.nan, math.nan
    coef = np.polyfit(x, y, 2)
    if not coef[0] > 0:
        return coef, math.nan, math.nan
    x_min = -coef[1] / (2 * coef[0])
    return coef, float(x_min), float(np.polyval(coef, x_min))


def fit_parabola(x, y) -> Parabola:
    """Fit loss against log10(size); bracketed only when the lowest point is interior and the vertex lies inside."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    coef, x_min, y_min = _vertex(x, y)
    lowest = x[np.argmin(y)]
    bound = "below" if lowest == x.min() else "above" if lowest == x.max() else ""
    if np.unique(x).size < 3:
        reason = "fewer than 3 distinct sizes"
    elif bound:
        reason = f"lowest loss at the {'smallest' if bound == 'below' else 'largest'} size"
    elif not coef[0] > 0:
        reason = "parabola opens downward"
    elif not x.min() < x_min < x.max():
        # The runs bracket a minimum, but the parabola puts it elsewhere: a poor fit, not a bound on either side.
        reason = "best run interior but the parabola's vertex outside the sizes (a poor fit)"
    else:
        reason = ""
    return Parabola(
        tuple(float(c) for c in coef), x_min, y_min, bracketed=not reason, reason=reason, bound=bound
    )


def replicate_minimum(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[float, float, bool]:
    """(x*, loss*, interior) of one bootstrap replicate, not clamped to [lo, hi] (see the module docstring)."""
    if np.unique(x).size < 3:
        return math.nan, math.nan, False
    coef = np.polyfit(x, y, 2)
    edges = np.polyval(coef, [lo, hi])
    if not coef[0] > 0:  # no minimum: the loss keeps falling past the lower edge
        return (
            (-math.inf, float(edges[0]), False) if edges[0] < edges[1] else (math.inf, float(edges[1]), False)
        )
    x_min = -coef[1] / (2 * coef[0])
    if lo < x_min < hi:
        return float(x_min), float(np.polyval(coef, x_min)), True
    return float(x_min), float(edges[0] if x_min <= lo else edges[1]), False


def _replicate_minima(x: np.ndarray, ys: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """replicate_minimum for each row of ys (B, n): (B, 3) of x*, loss*, interior."""
    coef = np.linalg.lstsq(_design(x), ys.T, rcond=None)[0].T  # (B, 3): c2, c1, c0
    c2, c1, c0 = coef.T
    edge_lo, edge_hi = c2 * lo**2 + c1 * lo + c0, c2 * hi**2 + c1 * hi + c0
    with np.errstate(divide="ignore", invalid="ignore"):
        x_min = np.where(c2 > 0, -c1 / (2 * c2), np.where(edge_lo < edge_hi, -np.inf, np.inf))
    interior = (lo < x_min) & (x_min < hi)
    at_vertex = c0 - c1**2 / (4 * np.where(c2 != 0, c2, np.nan))
    loss = np.where(interior, at_vertex, np.where(x_min <= lo, edge_lo, edge_hi))
    return np.stack([x_min, loss, interior.astype(float)], axis=1)


def _design(x: np.ndarray) -> np.ndarray:
    return np.stack([x**2, x, np.ones_like(x)], axis=1)


def _group_rng(seed: int, curve: str, budget: float) -> np.random.Generator:
    # A seed per group: adding a curve or a budget leaves every other group's replicates unchanged.
    return np.random.default_rng([seed, zlib.crc32(f"{curve}|{budget:.9g}".encode())])


def _bootstrap(group: Group, model: NoiseModel, scales: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of [log10 n, log10 d, loss, interior], one per replicate (see noise.py and the module docstring).

    Each replicate adds drawn noise to the fitted parabola in log10 params (for N* and L*) and to the fitted
    parabola in log10 tokens (for D*: the same estimator as D* itself), and refits both.
    """
    out = np.full((scales.size, 4), np.nan)
    noise, y = draw_losses(group, model, scales, rng)
    ok = np.isfinite(y)
    x_n, x_d = np.log10(group.params[ok]), np.log10(group.tokens[ok])
    if np.unique(x_n).size < 4 or not np.isfinite(scales).all():  # 3 sizes leave no residual: no interval
        return out
    for column, x in ((0, x_n), (1, x_d)):
        fitted = _design(x) @ np.linalg.lstsq(_design(x), y[ok], rcond=None)[0]
        minima = _replicate_minima(x, fitted + noise[:, ok], x.min(), x.max())
        out[:, column] = minima[:, 0]
        if column == 0:
            # As for the estimate itself: an optimum beyond the sizes has the best run's loss.
            best = (fitted + noise[:, ok]).min(axis=1)
            out[:, 2] = np.where(minima[:, 2] > 0, minima[:, 1], best)
            out[:, 3] = minima[:, 2]
            estimate = _replicate_minima(x, fitted[None, :], x.min(), x.max())[0]
            if estimate[2] > 0:
                out[:, 2] = _bias_corrected(out[:, 2], float(estimate[1]))
    return out


def _bias_corrected(reps: np.ndarray, estimate: float) -> np.ndarray:
    """Replicates moved by twice their median's offset from the estimate.

    A vertex is a non-linear function of the fit (L* = c0 - c1^2 / 4 c2 is biased low by noise): the
    replicates carry the estimate's bias once more, so a plain percentile interval would count it twice.
    Moving them by -2 x bias centres the interval on the bias-corrected value, as the basic bootstrap does,
    while keeping replicates beyond the sizes (infinite) on their side.
    """
    finite = np.isfinite(reps)
    if finite.sum() < reps.size / 2:
        return reps
    bias = float(np.median(reps[finite])) - estimate
    return np.where(finite, reps - 2 * bias, reps)


def fieller_interval(x: np.ndarray, y: np.ndarray, variance: np.ndarray, dof: float) -> tuple[float, float]:
    """The 90% confidence set of a least-squares parabola's vertex by Fieller's theorem, as (lo, hi).

    The vertex is where the slope 2 c2 x + c1 is zero; x belongs to the set when the fitted slope there is
    within t(dof) standard errors of zero. That is exact for normal noise of the given variances (up to one
    common factor estimated with `dof` degrees of freedom), where a bootstrap of the vertex, a ratio, is too
    narrow whenever the curvature happens to be overestimated. With the curvature not clearly positive the
    set is unbounded: (-inf, inf).
    """
    X = _design(x)
    pinv = np.linalg.pinv(X)
    c2, c1, _ = pinv @ y
    cov = pinv @ np.diag(variance) @ pinv.T  # OLS under heteroscedastic noise
    t = stats.t.ppf(PERCENTILES[1] / 100, dof) if math.isfinite(dof) else stats.norm.ppf(PERCENTILES[1] / 100)
    a = 4 * c2**2 - 4 * t**2 * cov[0, 0]
    b = 4 * c2 * c1 - 4 * t**2 * cov[0, 1]
    c = c1**2 - t**2 * cov[1, 1]
    disc = b * b - 4 * a * c
    if not a > 0 or disc < 0:
        return -math.inf, math.inf
    root = math.sqrt(disc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """5th and 95th percentiles as order statistics: infinite replicates (beyond the sizes) count, NaN do not."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, PERCENTILES, method="inverted_cdf")
    return float(lo), float(hi)


def _bound_params(params: np.ndarray, bound: str) -> float:
    sizes = np.unique(params)
    if bound == "below":
        return float(sizes[min(1, sizes.size - 1)])
    if bound == "above":
        return float(sizes[max(-2, -sizes.size)])
    return math.nan


def _exp10(x: float) -> float:
    return float(np.power(10.0, x))  # 0 or inf for a bound at -inf or inf, where 10**x would overflow


def _lr_edge_at_optimum(lr_edge: np.ndarray, y: np.ndarray) -> bool:
    """Whether a point that places the minimum (the lowest and its neighbours) had its best LR at the grid's
    edge: its loss is then an upper bound, and so is the optimum it shapes."""
    best = int(np.argmin(y))
    return bool(lr_edge[max(best - 1, 0) : best + 2].any())


def _fit_group(curve: str, budget: float, rows: pd.DataFrame, boot: np.ndarray, loss: str) -> dict:
    x_n, x_d = np.log10(rows["params"].to_numpy(float)), np.log10(rows["tokens"].to_numpy(float))
    y = rows["loss"].to_numpy(float)
    by_size, by_tokens = fit_parabola(x_n, y), fit_parabola(x_d, y)
    (n_lo, n_hi), (d_lo, d_hi), (l_lo, l_hi) = (percentiles(boot[:, k]) for k in range(3))
    ok = by_size.bracketed
    return {
        "curve": curve,
        "variant": str(rows["variant"].iloc[0]),
        "budget": budget,
        "n_opt": 10**by_size.x_min if ok else math.nan,
        "d_opt": 10**by_tokens.x_min if ok and by_tokens.bracketed else math.nan,
        "loss_opt": by_size.y_min if ok else float(y.min()),
        "bracketed": ok,
        "bound": by_size.bound,
        # Lowest at an end: a unimodal curve has its minimum before the next size in, not before the end.
        "bound_params": _bound_params(rows["params"].to_numpy(float), by_size.bound),
        "n_opt_lo": _exp10(n_lo),
        "n_opt_hi": _exp10(n_hi),
        "loss_opt_lo": l_lo,
        "loss_opt_hi": l_hi,
        "n_points": int(y.size),
        "n_runs": int(rows["n_runs"].sum()),
        "n_seeds": int(rows["n_seeds"].max()),
        "lr_edge_points": int(rows["lr_edge"].sum()),
        "lr_edge_at_opt": _lr_edge_at_optimum(rows["lr_edge"].to_numpy(bool), y),
        "d_opt_lo": _exp10(d_lo),
        "d_opt_hi": _exp10(d_hi),
        "n_sizes": int(np.unique(x_n).size),
        "params_min": float(10 ** x_n.min()),
        "params_max": float(10 ** x_n.max()),
        "n_boot": int(np.isfinite(boot[:, 2]).sum()),
        "boot_interior": float(np.nanmean(boot[:, 3])) if np.isfinite(boot[:, 3]).any() else math.nan,
        "reason": by_size.reason,
        "loss": loss,
        **dict(zip(("fit_c2", "fit_c1", "fit_c0"), by_size.coef)),
        **dict(zip(("tok_c2", "tok_c1", "tok_c0"), by_tokens.coef)),
    }


def fit_isoflops(points: Points | pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> IsoflopFits:
    """Parabola fits per (curve, budget) with bootstrap intervals; see the module docstring.

    Given runs (a DataFrame) rather than Points, reduces them first under the top-k loss (val_loss).
    """
    if isinstance(points, pd.DataFrame):
        points = reduce_points(points, "topk")
    rows, boot, noise = [], {}, {}
    for curve, curve_rows in points.table.groupby("curve", sort=True):
        keys = [(str(curve), float(b)) for b in sorted(curve_rows["budget"].unique())]
        model = noise[str(curve)] = fit_noise([points.groups[k] for k in keys])
        scales = variance_scales(
            model, n_boot, np.random.default_rng([seed, zlib.crc32(str(curve).encode())])
        )
        for key in keys:
            boot[key] = _bootstrap(points.groups[key], model, scales, _group_rng(seed, *key))
            group_rows = curve_rows[curve_rows["budget"] == key[1]].sort_values("params")
            row = {**_fit_group(*key, group_rows, boot[key], points.loss), **_noise_columns(model)}
            rows.append(
                {
                    **row,
                    **_vertex_intervals(points.groups[key], model, bool(np.isfinite(boot[key][:, 2]).any())),
                }
            )
    table = pd.DataFrame(rows, columns=FITS_COLUMNS)
    return IsoflopFits(
        table=table.sort_values(["curve", "budget"]).reset_index(drop=True), boot=boot, noise=noise
    )


def _vertex_intervals(group: Group, model: NoiseModel, measurable: bool) -> dict:
    """N* and D* intervals by Fieller's theorem on each parabola (see fieller_interval)."""
    if not measurable:
        return {}
    y, variance, dof = point_variances(group, model)
    ok = np.isfinite(y)
    out = {}
    for name, x in (("n_opt", np.log10(group.params)), ("d_opt", np.log10(group.tokens))):
        lo, hi = fieller_interval(x[ok], y[ok], variance[ok], float(np.min(dof[ok])))
        out[f"{name}_lo"], out[f"{name}_hi"] = _exp10(lo), _exp10(hi)
    return out


def _noise_columns(model: NoiseModel) -> dict:
    return {
        "noise_sd": model.sd,
        "noise_slope": model.c1,
        "noise_terms": len(model.coef),
        "noise_dof": model.dof,
        "noise_source": model.source,
    }


def _slope_interval(log_c: np.ndarray, used: pd.DataFrame, quantity: str) -> tuple[float, float, str]:
    """The exponent's interval from each budget's own optimum interval: weighted least squares with
    weights 1/se^2 (se from the optimum's 90% interval), widened by the Birge ratio when the optima scatter
    more than their errors say (a power law that does not quite hold), with t quantiles of the noise's dof."""
    with np.errstate(divide="ignore"):  # an interval reaching 0 (unbounded below) has no finite se
        lo = np.log10(used[f"{quantity}_lo"].to_numpy(float))
        hi = np.log10(used[f"{quantity}_hi"].to_numpy(float))
    dof = used["noise_dof"].to_numpy(float) if "noise_dof" in used else np.full(len(used), np.inf)
    t = stats.t.ppf(PERCENTILES[1] / 100, np.where(dof > 0, dof, np.inf))
    with np.errstate(invalid="ignore"):
        se = (hi - lo) / (2 * t)
    ok = np.isfinite(se) & (se > 0)
    if ok.sum() < 2 or np.unique(log_c[ok]).size < 2:
        return math.nan, math.nan, "none (fewer than 2 budgets with a bounded optimum interval)"
    x, y, w = log_c[ok], np.log10(used[quantity].to_numpy(float))[ok], 1 / se[ok] ** 2
    xm = np.average(x, weights=w)
    slope = float(np.sum(w * (x - xm) * (y - np.average(y, weights=w))) / np.sum(w * (x - xm) ** 2))
    se_slope = math.sqrt(1 / np.sum(w * (x - xm) ** 2))
    if ok.sum() > 2:
        chi2 = float(np.sum(w * (y - np.average(y, weights=w) - slope * (x - xm)) ** 2))
        se_slope *= math.sqrt(max(1.0, chi2 / (ok.sum() - 2)))
    half = float(stats.t.ppf(PERCENTILES[1] / 100, max(float(np.min(dof[ok])), 1.0))) * se_slope
    return slope - half, slope + half, f"weighted by the {ok.sum()} budgets' optimum intervals"


def _power_law_row(curve: str, quantity: str, used: pd.DataFrame, boot: dict | None) -> dict:
    log_c = np.log10(used["budget"].to_numpy(float))
    log_q = np.log10(used[quantity].to_numpy(float))
    reg = stats.linregress(log_c, log_q)
    row = {
        "curve": curve,
        "quantity": quantity,
        "exponent": float(reg.slope),
        "coefficient": float(10**reg.intercept),
        "n_budgets": int(len(used)),
        "exponent_se": float(reg.stderr) if len(used) > 2 else math.nan,
    }
    if f"{quantity}_lo" in used and np.isfinite(used[f"{quantity}_lo"].to_numpy(float)).any():
        lo, hi, how = _slope_interval(log_c, used, quantity)
        # The interval is centred on the weighted slope; keep the least-squares exponent inside it.
        row["exponent_lo"], row["exponent_hi"] = min(lo, reg.slope), max(hi, reg.slope)
        row["interval"] = how
    elif len(used) > 2:
        half = stats.t.ppf(PERCENTILES[1] / 100, len(used) - 2) * reg.stderr
        row["exponent_lo"], row["exponent_hi"] = reg.slope - half, reg.slope + half
        row["interval"] = f"t {PERCENTILES[1] - PERCENTILES[0]:g}% from the regression's standard error"
    else:
        row["exponent_lo"] = row["exponent_hi"] = math.nan
        row["interval"] = "none (2 budgets and no optimum intervals)"
    return row


def fit_power_laws(
    fits: pd.DataFrame, boot: dict[tuple[str, float], np.ndarray] | None = None
) -> pd.DataFrame:
    """N* = k C^a and D* = k' C^b per curve over bracketed budgets (curves with fewer are left out)."""
    rows = []
    for curve, group in fits.groupby("curve", sort=True):
        for quantity in ("n_opt", "d_opt"):
            used = group[
                group["bracketed"].astype(bool) & np.isfinite(group[quantity]) & (group[quantity] > 0)
            ]
            if len(used) >= MIN_POWER_LAW_BUDGETS:
                rows.append(_power_law_row(str(curve), quantity, used, boot))
    return pd.DataFrame(rows, columns=POWER_LAW_COLUMNS)


def _a3_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple:
    """Hoffmann's objective: sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L), and gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lse = np.logaddexp.reduce(terms, axis=0)
    resid = lse - log_l
    weights = np.exp(terms - lse)  # d LSE / d term
    dres = np.clip(resid, -A3_DELTA, A3_DELTA)  # d Huber / d resid
    grad = np.array(
        [
            np.sum(dres * weights[0]),
            np.sum(dres * weights[1]),
            np.sum(dres * weights[2]),
            -np.sum(dres * weights[0] * log_n),
            -np.sum(dres * weights[1] * log_d),
        ]
    )
    return float(np.sum(special.huber(A3_DELTA, resid))), grad


def _a3_grid() -> np.ndarray:
    # Hoffmann et al. (2022), appendix D.2: the grid of initialisations for (a, b, e, alpha, beta).
    ab, e, exps = np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5), np.arange(0, 2.01, 0.5)
    return np.array(np.meshgrid(ab, ab, e, exps, exps, indexing="ij")).reshape(5, -1).T


def _a3_grid_losses(grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    a, b, e, alpha, beta = (grid[:, k, None] for k in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:1] + log_n.shape)])
    resid = np.logaddexp.reduce(terms, axis=0) - log_l
    return special.huber(A3_DELTA, resid).sum(axis=1)


def fit_approach3_points(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray) -> dict:
    """Fit L = E + A/N^alpha + B/D^beta to points; returns E, A, B, alpha, beta, a_opt, b_opt, objective."""
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(loss)
    grid = _a3_grid()
    starts = grid[np.argsort(_a3_grid_losses(grid, log_n, log_d, log_l))[:A3_STARTS]]
    with threadpool_limits(1) if threadpool_limits else nullcontext():
        runs = [
            optimize.minimize(
                _a3_objective,
                start,
                args=(log_n, log_d, log_l),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": 5000, "ftol": A3_TOL, "gtol": A3_TOL},
            )
            for start in starts
        ]
    best = min(runs, key=lambda res: res.fun)
    a, b, e, alpha, beta = best.x
    return {
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": alpha,
        "beta": beta,
        "a_opt": beta / (alpha + beta) if alpha + beta else math.nan,
        "b_opt": alpha / (alpha + beta) if alpha + beta else math.nan,
        "objective": float(best.fun),
    }


def fit_approach3(points: pd.DataFrame) -> pd.DataFrame:
    """Approach 3 per curve with at least MIN_A3_POINTS points over MIN_A3_BUDGETS budgets."""
    rows = []
    for curve, group in points.groupby("curve", sort=True):
        if len(group) < MIN_A3_POINTS or group["budget"].nunique() < MIN_A3_BUDGETS:
            continue
        fit = fit_approach3_points(*(group[c].to_numpy(float) for c in ("params", "tokens", "loss")))
        rows.append(
            {"curve": str(curve), **fit, "n_points": len(group), "n_budgets": group["budget"].nunique()}
        )
    return pd.DataFrame(rows, columns=A3_COLUMNS)
