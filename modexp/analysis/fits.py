"""isoFLOP fits: the optimum per (curve, budget) with its intervals, power laws, Approach 3.

The method (docs/verdict.md, "Optima" and "Intervals"; Hoffmann et al. 2022, Approaches 2 and 3):

- Per (curve, budget): a weighted quadratic of the points' loss against log10(params) over a window of sizes
  around the lowest point, as wide as the curve stays quadratic within its noise (optimum.py). Its vertex is
  n_opt; d_opt is the vertex of the same window's quadratic against log10(tokens) (no FLOP convention needed).
- Bracketed means the lowest-loss point is interior, with a higher-loss point on each side, and the vertex lies
  inside the window. Otherwise n_opt and d_opt are NaN, loss_opt is the best point's loss (an upper bound on
  L*), the budget is left out of the power laws, and when the lowest point is an end the optimum is a bound:
  `bound` says "below" (N* < smallest size) or "above" (N* > largest).
- Noise: one model per curve (noise.py) from its seeds and local residuals, with the share its WSD stems carry.
- Intervals: N* and D* by Fieller's theorem on the window's quadratic (the vertex is always inside). L* by a
  parametric bootstrap drawn jointly over the curve's budgets (a stem's shared noise enters every budget it
  serves): each replicate adds drawn noise to the fitted curve and reruns the whole estimator, window choice
  included. The vertex value is biased low by noise; L* is reported bias-corrected (the estimate minus the
  replicates' median offset), and its interval is the replicates' 5-95% moved by twice that offset, so the
  reported L* is always inside its own interval. boot_interior is the share of replicates whose vertex lay
  inside their window. Coverage is measured, not assumed: `modexp selfcheck calibration`.
- Per curve: N* = k C^a and D* = k' C^b by weighted least squares over the bracketed budgets (at least 2),
  each weighted by its optimum's interval, widened by the Birge ratio when the optima scatter more than those
  intervals say; the exponent reported is that same weighted slope, so it always sits inside its interval.
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

from .noise import (
    NoiseModel,
    best_lr_index,
    draw_curve,
    draw_rho,
    fit_noise,
    point_variances,
    stem_likelihood,
    variance_scales,
    with_stems,
    z_of,
)
from .optimum import Optimum, alternative, fieller_interval, fit_optimum, locate
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
    "window_min",
    "window_max",
    "n_window",
    "loss_vertex",
    "loss_opt_alt",
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
    "lr_outside_law",
    "noise_sd",
    "noise_slope",
    "noise_terms",
    "noise_dof",
    "noise_source",
    "stem_share",
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


@dataclass
class IsoflopFits:
    """Per (curve, budget) fits, plus each group's bootstrap replicates (n_boot x [log10 n, log10 d, loss,
    interior]); replicate b of every group of one curve comes from one joint draw."""

    table: pd.DataFrame
    boot: dict[tuple[str, float], np.ndarray]
    noise: dict[str, NoiseModel] = field(default_factory=dict)


def _curve_rng(seed: int, curve: str) -> np.random.Generator:
    # A seed per curve: adding a curve leaves every other curve's replicates unchanged.
    return np.random.default_rng([seed, zlib.crc32(str(curve).encode())])


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """5th and 95th percentiles as order statistics: infinite replicates (beyond the sizes) count, NaN do not."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, PERCENTILES, method="inverted_cdf")
    return float(lo), float(hi)


def _exp10(x: float) -> float:
    return float(np.power(10.0, x))  # 0 or inf for a bound at -inf or inf, where 10**x would overflow


@dataclass
class _Budget:
    """One (curve, budget) while it is fitted: its points (sorted by size) and both optima."""

    key: tuple[str, float]
    group: Group
    ok: np.ndarray  # points with a loss
    x: np.ndarray  # log10 params of those points
    xt: np.ndarray  # log10 tokens
    y: np.ndarray
    variance: np.ndarray  # of each point's loss
    dof: np.ndarray
    by_size: Optimum
    by_tokens: Optimum | None


def _prepare(key: tuple[str, float], group: Group, model: NoiseModel) -> _Budget:
    y, variance, dof = point_variances(group, model)
    ok = np.isfinite(y)
    if not np.isfinite(variance[ok]).all():  # no noise model: equal weights
        variance = np.ones_like(y)
    x, xt = np.log10(group.params[ok]), np.log10(group.tokens[ok])
    by_size = fit_optimum(x, y[ok], variance[ok])
    by_tokens = None
    if by_size.bracketed:
        w = by_size.window
        order = np.argsort(xt[w])
        by_tokens = fit_optimum(xt[w][order], y[ok][w][order], variance[ok][w][order])
    return _Budget(key, group, ok, x, xt, y[ok], variance[ok], dof[ok], by_size, by_tokens)


def _stem_runs(budgets: list[_Budget]) -> list:
    """The runs inside each budget's window with their stems, for the stem share's likelihood."""
    out = []
    for i, b in enumerate(budgets):
        if b.group.stems is None or not b.by_size.bracketed:
            continue
        best = best_lr_index(b.group)
        z = z_of(b.group)
        xs, ys, zs, stems = [], [], [], []
        points = np.flatnonzero(b.ok)[b.by_size.window]
        for p in points:
            for s in np.flatnonzero(np.isfinite(b.group.losses[p, best[p]])):
                xs.append(math.log10(b.group.params[p]))
                ys.append(b.group.losses[p, best[p], s])
                zs.append(z[p])
                stems.append(b.group.stems[p, best[p], s])
        out.append((i, np.array(xs), np.array(ys), np.array(zs), stems))
    return out


def _base_curve(b: _Budget) -> np.ndarray:
    """What replicates add noise to: the window's quadratic inside the window, the measured points outside
    (they only decide, by being higher, that the window stays where it is)."""
    base = b.y.copy()
    if np.isfinite(b.by_size.coef).all():
        w = b.by_size.window
        base[w] = np.polyval(b.by_size.coef, b.x[w])
    return base


def _replicates(b: _Budget, noise: np.ndarray) -> np.ndarray:
    """Rows of [log10 n, log10 d, loss, interior], one per replicate, from the whole estimator rerun."""
    out = np.full((noise.shape[0], 4), np.nan)
    if np.unique(b.x).size < 4:  # 3 sizes leave no residual and no window to choose: no interval
        return out
    ys = _base_curve(b)[None, :] + noise[:, b.ok]
    found = locate(b.x, ys, b.variance)
    interior = found["interior"]
    best = np.nanmin(ys, axis=1)
    out[:, 0] = np.where(
        np.isfinite(found["x_min"]), found["x_min"], np.where(found["lowest"] == 0, -np.inf, np.inf)
    )
    out[:, 2] = np.where(interior, found["y_min"], best)
    out[:, 3] = interior
    for lo, hi in {(int(lo), int(hi)) for lo, hi in zip(found["lo"], found["hi"])}:
        rows = np.flatnonzero((found["lo"] == lo) & (found["hi"] == hi))
        xt = b.xt[lo:hi]
        order = np.argsort(xt)
        if np.unique(xt).size < 3:
            continue
        tok = locate(xt[order], ys[np.ix_(rows, np.arange(lo, hi)[order])], b.variance[lo:hi][order])
        out[rows, 1] = tok["x_min"]
    return out


def _bias_corrected(reps: np.ndarray, estimate: float) -> tuple[np.ndarray, float]:
    """(replicates moved by twice their median's offset from the estimate, the bias-corrected estimate).

    The vertex value is biased low by noise (L* = c0 - c1^2 / 4 c2), and the replicates carry that bias once
    more: moving them by -2 x bias centres the interval on the bias-corrected estimate (as the basic bootstrap
    does), and reporting that corrected estimate keeps it inside its own interval. Replicates beyond the sizes
    (infinite) stay on their side.
    """
    finite = np.isfinite(reps)
    if finite.sum() < reps.size / 2 or not math.isfinite(estimate):
        return reps, estimate
    bias = float(np.median(reps[finite])) - estimate
    return np.where(finite, reps - 2 * bias, reps), estimate - bias


def _lr_flag(group_rows: pd.DataFrame, column: str, y: np.ndarray) -> bool:
    """Whether a point that places the minimum (the lowest and its neighbours) carries `column`: its loss is
    then an upper bound (best LR at the grid's edge) or its LR extrapolated (outside the law's sizes)."""
    if column not in group_rows:
        return False
    values = group_rows[column]
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        flags = values.astype(float).fillna(0.0).astype(bool)
    else:  # text: an explanation where the flag holds, empty where not
        flags = values.map(
            lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else isinstance(v, str) and v.strip() != ""
        )
    best = int(np.argmin(y))
    return bool(flags.to_numpy()[max(best - 1, 0) : best + 2].any())


def _union(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The smallest interval holding both (NaN ends ignored)."""
    lo = [v for v in (a[0], b[0]) if not math.isnan(v)]
    hi = [v for v in (a[1], b[1]) if not math.isnan(v)]
    return (min(lo) if lo else math.nan), (max(hi) if hi else math.nan)


def _including(interval: tuple[float, float], value: float) -> tuple[float, float]:
    lo, hi = interval
    if not math.isfinite(value) or math.isnan(lo) or math.isnan(hi):
        return interval
    return min(lo, value), max(hi, value)


def _fit_row(b: _Budget, rows: pd.DataFrame, boot: np.ndarray, model: NoiseModel, loss: str) -> dict:
    opt, tok = b.by_size, b.by_tokens
    ok = opt.bracketed
    w = opt.window
    loss_alt = math.nan
    if ok:
        boot[:, 2], loss_opt = _bias_corrected(boot[:, 2], opt.y_min)
        loss_alt = alternative(b.x, b.y, b.variance, opt)[1] + (loss_opt - opt.y_min)
    else:
        loss_opt = float(b.y.min())
    l_lo, l_hi = _including(percentiles(boot[:, 2]), loss_alt)
    measurable = np.isfinite(boot[:, 2]).any()
    n_lo = n_hi = d_lo = d_hi = math.nan
    if measurable:
        (n_lo, n_hi), (d_lo, d_hi) = percentiles(boot[:, 0]), percentiles(boot[:, 1])
    if measurable and ok and w.stop - w.start > 3:
        dof = float(np.min(b.dof[w]))
        n_lo, n_hi = _union((n_lo, n_hi), fieller_interval(b.x[w], b.y[w], b.variance[w], dof))
        n_lo, n_hi = _including((n_lo, n_hi), alternative(b.x, b.y, b.variance, opt)[0])
        if tok is not None and tok.bracketed:
            order = np.argsort(b.xt[w])
            xt, yt, vt = b.xt[w][order], b.y[w][order], b.variance[w][order]
            d_lo, d_hi = _union((d_lo, d_hi), fieller_interval(xt, yt, vt, dof))
            d_lo, d_hi = _including((d_lo, d_hi), alternative(xt, yt, vt, tok)[0])
    params = 10**b.x
    sizes = np.unique(params)
    return {
        "curve": b.key[0],
        "variant": str(rows["variant"].iloc[0]),
        "budget": b.key[1],
        "n_opt": 10**opt.x_min if ok else math.nan,
        "d_opt": 10**tok.x_min if ok and tok is not None and tok.bracketed else math.nan,
        "loss_opt": loss_opt,
        "bracketed": ok,
        "bound": opt.bound,
        # Lowest at an end: a unimodal curve has its minimum before the next size in, not before the end.
        "bound_params": float(sizes[min(1, sizes.size - 1)])
        if opt.bound == "below"
        else float(sizes[max(-2, -sizes.size)])
        if opt.bound == "above"
        else math.nan,
        "n_opt_lo": _exp10(n_lo),
        "n_opt_hi": _exp10(n_hi),
        "loss_opt_lo": l_lo,
        "loss_opt_hi": l_hi,
        "n_points": int(b.y.size),
        "n_runs": int(rows["n_runs"].sum()),
        "n_seeds": int(rows["n_seeds"].max()),
        "lr_edge_points": int(rows["lr_edge"].sum()),
        "lr_edge_at_opt": _lr_flag(rows, "lr_edge", b.y),
        "lr_outside_law": _lr_flag(rows, "lr_domain", b.y),
        "d_opt_lo": _exp10(d_lo),
        "d_opt_hi": _exp10(d_hi),
        "n_sizes": int(sizes.size),
        "params_min": float(params.min()),
        "params_max": float(params.max()),
        "window_min": float(params[w].min()),
        "window_max": float(params[w].max()),
        "n_window": int(w.stop - w.start),
        "loss_vertex": opt.y_min if ok else math.nan,
        "loss_opt_alt": loss_alt,
        "n_boot": int(np.isfinite(boot[:, 2]).sum()),
        "boot_interior": float(np.nanmean(boot[:, 3])) if np.isfinite(boot[:, 3]).any() else math.nan,
        "reason": opt.reason,
        "loss": loss,
        **dict(zip(("fit_c2", "fit_c1", "fit_c0"), opt.coef)),
        **dict(zip(("tok_c2", "tok_c1", "tok_c0"), tok.coef if tok is not None else (math.nan,) * 3)),
        "noise_sd": model.sd,
        "noise_slope": model.c1,
        "noise_terms": len(model.coef),
        "noise_dof": model.dof,
        "noise_source": model.source,
        "stem_share": model.rho if model.stem_pairs else math.nan,
    }


def _fit_curve(
    curve: str, keys: list, points: Points, n_boot: int, seed: int
) -> tuple[list[dict], dict, NoiseModel]:
    groups = [points.groups[k] for k in keys]
    # Windows need the noise and the noise is best read off the windows' residuals: local contrasts give a
    # first noise model, whose windows give the residuals of the final one.
    first = fit_noise(groups)
    windows = [_prepare(k, g, first).by_size.window for k, g in zip(keys, groups)]
    model = fit_noise(groups, windows) if math.isfinite(first.coef[0]) else first
    if not math.isfinite(
        model.coef[0]
    ):  # windows of 3 sizes leave no residual: the contrasts are all there is
        model = first
    budgets = [_prepare(k, g, model) for k, g in zip(keys, groups)]
    model = with_stems(model, *stem_likelihood(_stem_runs(budgets), model))
    rng = _curve_rng(seed, curve)
    scales = variance_scales(model, n_boot, rng)
    rhos = draw_rho(model, n_boot, rng)
    boot = {}
    if np.isfinite(scales).all():
        noises = draw_curve(groups, model, scales, rhos, rng)
        for b, noise in zip(budgets, noises):
            boot[b.key] = _replicates(b, noise)
    rows = []
    table = points.table
    for b in budgets:
        boot.setdefault(b.key, np.full((n_boot, 4), np.nan))
        group_rows = table[(table["curve"] == curve) & (table["budget"] == b.key[1])].sort_values("params")
        group_rows = group_rows[b.ok] if len(group_rows) == b.ok.size else group_rows
        rows.append(_fit_row(b, group_rows, boot[b.key], model, points.loss))
    return rows, boot, model


def fit_isoflops(points: Points | pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> IsoflopFits:
    """The optimum per (curve, budget) with intervals; see the module docstring.

    Given runs (a DataFrame) rather than Points, reduces them first under the top-k loss (val_loss).
    """
    if isinstance(points, pd.DataFrame):
        points = reduce_points(points, "topk")
    rows, boot, noise = [], {}, {}
    for curve, curve_rows in points.table.groupby("curve", sort=True):
        keys = [(str(curve), float(b)) for b in sorted(curve_rows["budget"].unique())]
        curve_fit, curve_boot, noise[str(curve)] = _fit_curve(str(curve), keys, points, n_boot, seed)
        rows += curve_fit
        boot.update(curve_boot)
    table = pd.DataFrame(rows, columns=FITS_COLUMNS)
    return IsoflopFits(
        table=table.sort_values(["curve", "budget"]).reset_index(drop=True), boot=boot, noise=noise
    )


def _weighted_slope(log_c: np.ndarray, used: pd.DataFrame, quantity: str) -> dict | None:
    """The exponent by weighted least squares, weights 1/se^2 from each budget's optimum interval, its
    interval widened by the Birge ratio when the optima scatter more than their errors say (a power law
    that does not quite hold), with t quantiles of the noise's dof. None with fewer than 2 usable budgets."""
    with np.errstate(divide="ignore"):  # an interval reaching 0 (unbounded below) has no finite se
        lo = np.log10(used[f"{quantity}_lo"].to_numpy(float))
        hi = np.log10(used[f"{quantity}_hi"].to_numpy(float))
    dof = used["noise_dof"].to_numpy(float) if "noise_dof" in used else np.full(len(used), np.inf)
    t = stats.t.ppf(PERCENTILES[1] / 100, np.where(dof > 0, dof, np.inf))
    with np.errstate(invalid="ignore"):
        se = (hi - lo) / (2 * t)
    ok = np.isfinite(se) & (se > 0)
    if ok.sum() < 2 or np.unique(log_c[ok]).size < 2:
        return None
    x, y, w = log_c[ok], np.log10(used[quantity].to_numpy(float))[ok], 1 / se[ok] ** 2
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    slope = float(np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2))
    se_slope = math.sqrt(1 / np.sum(w * (x - xm) ** 2))
    if ok.sum() > 2:
        chi2 = float(np.sum(w * (y - ym - slope * (x - xm)) ** 2))
        se_slope *= math.sqrt(max(1.0, chi2 / (ok.sum() - 2)))
    half = float(stats.t.ppf(PERCENTILES[1] / 100, max(float(np.min(dof[ok])), 1.0))) * se_slope
    return {
        "exponent": slope,
        "coefficient": float(10 ** (ym - slope * xm)),
        "exponent_lo": slope - half,
        "exponent_hi": slope + half,
        "exponent_se": se_slope,
        "interval": f"weighted least squares over the {int(ok.sum())} budgets' optimum intervals",
    }


def _power_law_row(curve: str, quantity: str, used: pd.DataFrame) -> dict:
    log_c = np.log10(used["budget"].to_numpy(float))
    row = {"curve": curve, "quantity": quantity, "n_budgets": int(len(used))}
    weighted = (
        _weighted_slope(log_c, used, quantity)
        if f"{quantity}_lo" in used and np.isfinite(used[f"{quantity}_lo"].to_numpy(float)).any()
        else None
    )
    if weighted is not None:
        return {**row, **weighted}
    reg = stats.linregress(log_c, np.log10(used[quantity].to_numpy(float)))
    row.update(exponent=float(reg.slope), coefficient=float(10**reg.intercept))
    if len(used) > 2:
        half = stats.t.ppf(PERCENTILES[1] / 100, len(used) - 2) * reg.stderr
        row.update(
            exponent_lo=reg.slope - half,
            exponent_hi=reg.slope + half,
            exponent_se=float(reg.stderr),
            interval=f"t {PERCENTILES[1] - PERCENTILES[0]:g}% from the regression's standard error",
        )
    else:
        row.update(
            exponent_lo=math.nan,
            exponent_hi=math.nan,
            exponent_se=math.nan,
            interval="none (2 budgets and no optimum intervals)",
        )
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
                rows.append(_power_law_row(str(curve), quantity, used))
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
