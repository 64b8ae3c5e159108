"""Where one budget's isoFLOP curve has its minimum: a quadratic over the sizes around the lowest point.

A parabola through every size of a ladder assumes the curve is a parabola from end to end. Real isoFLOP
curves are not: they are asymmetric (steeper on the small-model side) and flatten far from the optimum, so on a
wide ladder (10-16 sizes over 2-3 decades) the vertex of one parabola lands up to 0.17 nats from the minimum,
and its misfit is then read as noise. Near its minimum any smooth curve is a quadratic, so modexp fits one only
there (docs/verdict.md, "Optima"):

- The window starts as the sizes within MAX_REACH = 0.6 decades (4x) of the lowest point: farther out, the
  asymmetry of real curves biases a quadratic's vertex more than the noise can show (a lack-of-fit test misses
  a misfit of about the noise's size that still moves the vertex by 0.005-0.01 nats). While the quadratic
  through it does not fit within the noise (the weighted residual sum of squares exceeds what chi^2 with
  n - 3 degrees of freedom allows at p = LOF_P), the size farther from the lowest point is dropped, down to 4
  sizes, and to the lowest point and its two neighbours if even 4 do not fit. On the presets' narrow ladders
  (6 sizes over a decade) the window is most of the ladder and the estimate is the least-squares parabola it
  always was; on wide ones it closes in on the minimum. Measured in docs/verdict.md against the alternatives
  (one parabola through every size, Akima interpolation as Porian et al. 2024 read optima, a cubic, a
  Lepski-type window choice).
- The fit is weighted by each point's noise variance (the curve's noise model: more seeds, less variance).
- Bracketed: the lowest point is interior (a higher point on each side) and the vertex lies inside the window.
- The same rule runs on every bootstrap replicate, so the interval includes the window's own variability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LOF_P = 0.05  # a window whose quadratic misfits at this level is narrowed
MAX_REACH = (
    0.6  # decades from the lowest point: farther, a real curve's asymmetry biases a quadratic's vertex
)
MIN_FIT = 4  # the smallest window with a residual to test; below it, the lowest point and its neighbours


@dataclass(frozen=True)
class Optimum:
    """One curve's minimum: quadratic coefficients (c2, c1, c0) in x over points[lo:hi] (sorted by x)."""

    coef: tuple[float, float, float]
    lo: int
    hi: int
    x_min: float
    y_min: float
    bracketed: bool
    reason: str
    bound: str  # below | above | ''

    @property
    def window(self) -> slice:
        return slice(self.lo, self.hi)


def design(x: np.ndarray) -> np.ndarray:
    return np.stack([x**2, x, np.ones_like(x)], axis=-1)


def _wls(x: np.ndarray, ys: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares quadratics for each row of ys (B, n): (coefficients (B, 3), chi^2 (B,))."""
    w = 1 / variance
    X = design(x)
    XtW = X.T * w
    proj = np.linalg.pinv(XtW @ X) @ XtW  # (3, n)
    coef = ys @ proj.T
    resid = ys - coef @ X.T
    return coef, (resid**2 * w).sum(axis=1)


def windows(x: np.ndarray, lowest: int) -> list[tuple[int, int]]:
    """The nested windows [lo, hi) tried around `lowest`, widest first: the sizes within MAX_REACH decades of
    it (at least it and its neighbours), then each drops the end farther from it."""
    near = np.flatnonzero(np.abs(x - x[lowest]) <= MAX_REACH + 1e-9)
    first = min(max(lowest - 1, 0), x.size - 3)  # at least the lowest point and the two sizes nearest it
    lo, hi = int(min(near.min(), first)), int(max(near.max() + 1, first + 3))
    out = [(lo, hi)]
    while hi - lo > 3:
        if lowest - lo >= 1 and (hi - 1 == lowest or x[lowest] - x[lo] >= x[hi - 1] - x[lowest]):
            lo += 1
        else:
            hi -= 1
        out.append((lo, hi))
    return out


def _vertex(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c2, c1, c0 = coef[..., 0], coef[..., 1], coef[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x_min = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
        y_min = np.where(c2 > 0, c0 - c1**2 / (4 * c2), np.nan)
    return x_min, y_min


def vertex_of(x: np.ndarray, y: np.ndarray, variance: np.ndarray) -> tuple[float, float]:
    """(x, y) of the vertex of the weighted quadratic through exactly these points (NaN if it opens down)."""
    coef, _ = _wls(x, y[None, :], variance)
    x_min, y_min = _vertex(coef[0])
    return float(x_min), float(y_min)


def locate(x: np.ndarray, ys: np.ndarray, variance: np.ndarray) -> dict[str, np.ndarray]:
    """The optimum of each row of ys (B, n) over sizes x (sorted ascending), with per-point variances.

    Returns arrays of shape (B,): x_min, y_min, lowest (index), lo, hi (the window), interior (the lowest point
    interior and the vertex inside the window), and coef (B, 3).
    """
    B, n = ys.shape
    out = {
        "x_min": np.full(B, np.nan),
        "y_min": np.full(B, np.nan),
        "lo": np.zeros(B, int),
        "hi": np.full(B, n),
        "coef": np.full((B, 3), np.nan),
    }
    lowest = np.argmin(np.where(np.isfinite(ys), ys, np.inf), axis=1)
    out["lowest"] = lowest
    if n < 3:
        out["interior"] = np.zeros(B, bool)
        return out
    critical = {k: stats.chi2.isf(LOF_P, k - 3) for k in range(MIN_FIT, n + 1)}
    for i in np.unique(lowest):
        rows = np.flatnonzero(lowest == i)
        chosen = np.full(rows.size, -1)
        tried = windows(x, int(i))
        fits = []
        for w, (lo, hi) in enumerate(tried):
            coef, chi2 = _wls(x[lo:hi], ys[rows, lo:hi], variance[lo:hi])
            fits.append(coef)
            if hi - lo >= MIN_FIT:
                fits_here = (chosen < 0) & (chi2 <= critical[hi - lo])
            else:  # 3 points: exact, nothing left to test; taken when no wider window fits
                fits_here = chosen < 0
            chosen[fits_here] = w
        chosen[chosen < 0] = len(tried) - 1
        for w in np.unique(chosen):
            sel = rows[chosen == w]
            lo, hi = tried[w]
            coef = fits[w][chosen == w]
            x_min, y_min = _vertex(coef)
            out["coef"][sel] = coef
            out["x_min"][sel], out["y_min"][sel] = x_min, y_min
            out["lo"][sel], out["hi"][sel] = lo, hi
    interior_low = (lowest > 0) & (lowest < n - 1)
    x_lo, x_hi = x[out["lo"]], x[out["hi"] - 1]
    with np.errstate(invalid="ignore"):
        inside = (out["x_min"] > x_lo) & (out["x_min"] < x_hi)
    out["interior"] = interior_low & inside
    return out


def fit_optimum(x: np.ndarray, y: np.ndarray, variance: np.ndarray) -> Optimum:
    """The optimum of one curve (see the module docstring); x sorted ascending, no NaN."""
    x, y, variance = np.asarray(x, float), np.asarray(y, float), np.asarray(variance, float)
    n = x.size
    lowest = int(np.argmin(y))
    bound = "below" if lowest == 0 else "above" if lowest == n - 1 else ""
    if np.unique(x).size < 3:
        return Optimum((math.nan,) * 3, 0, n, math.nan, math.nan, False, "fewer than 3 distinct sizes", bound)
    found = locate(x, y[None, :], variance)
    coef = tuple(float(c) for c in found["coef"][0])
    lo, hi = int(found["lo"][0]), int(found["hi"][0])
    x_min, y_min = float(found["x_min"][0]), float(found["y_min"][0])
    if bound:
        reason = f"lowest loss at the {'smallest' if bound == 'below' else 'largest'} size"
    elif not coef[0] > 0:
        reason = "the quadratic around the lowest point opens downward"
    elif not x[lo] < x_min < x[hi - 1]:
        reason = "the quadratic around the lowest point has its vertex outside the sizes it was fitted on"
    else:
        reason = ""
    return Optimum(coef, lo, hi, x_min, y_min, bracketed=not reason, reason=reason, bound=bound)


def alternative(x: np.ndarray, y: np.ndarray, variance: np.ndarray, opt: Optimum) -> tuple[float, float]:
    """(x, y) of the minimum by a second model of the same window: a cubic where the window has 5 sizes or
    more (it bends asymmetrically, as real curves do), else the quadratic over the next narrower window.

    How far it lies from the estimate is how much the estimate leans on the quadratic's symmetry and on where
    the ladder's sizes fall (a variant's ladder shifted up puts its optimum elsewhere in its window than the
    reference's): intervals are widened to include it, as the verdict widens m's to include a second model of
    the reference's L*(C). NaN where the second model has no minimum inside the window.
    """
    lo, hi = opt.lo, opt.hi
    if hi - lo >= 5:
        xs, ys, w = x[lo:hi], y[lo:hi], 1 / variance[lo:hi]
        coef = np.polyfit(xs, ys, 3, w=np.sqrt(w))
        slope, bend = np.polyder(coef), np.polyder(coef, 2)
        roots = [r.real for r in np.roots(slope) if abs(r.imag) < 1e-12 and np.polyval(bend, r.real) > 0]
        roots = [r for r in roots if xs[0] < r < xs[-1]]
        if not roots:
            return math.nan, math.nan
        best = min(roots, key=lambda r: abs(r - opt.x_min))
        return float(best), float(np.polyval(coef, best))
    tried = windows(x, int(np.argmin(y)))
    at = [i for i, window in enumerate(tried) if window == (lo, hi)]
    if not at or at[0] + 1 >= len(tried):
        return math.nan, math.nan
    lo, hi = tried[at[0] + 1]
    x_min, y_min = vertex_of(x[lo:hi], y[lo:hi], variance[lo:hi])
    return (x_min, y_min) if x[lo] <= x_min <= x[hi - 1] else (math.nan, math.nan)


def fieller_interval(
    x: np.ndarray, y: np.ndarray, variance: np.ndarray, dof: float, level: float = 0.90
) -> tuple[float, float]:
    """The confidence set of a weighted least-squares quadratic's vertex by Fieller's theorem, as (lo, hi).

    The vertex is where the slope 2 c2 x + c1 is zero; x belongs to the set when the fitted slope there is
    within t(dof) standard errors of zero. That is exact for normal noise of the given variances (up to one
    common factor estimated with `dof` degrees of freedom), where a bootstrap of the vertex, a ratio, is too
    narrow whenever the curvature happens to be overestimated. With the curvature not clearly positive the
    set is unbounded: (-inf, inf). The vertex itself is always inside (its slope is zero).
    """
    X = design(x)
    w = 1 / variance
    cov = np.linalg.pinv((X.T * w) @ X)  # exact for weights that are the inverse variances
    c2, c1, _ = cov @ (X.T * w) @ y
    q = 0.5 + level / 2
    t = stats.t.ppf(q, dof) if math.isfinite(dof) and dof > 0 else stats.norm.ppf(q)
    a = 4 * c2**2 - 4 * t**2 * cov[0, 0]
    b = 4 * c2 * c1 - 4 * t**2 * cov[0, 1]
    c = c1**2 - t**2 * cov[1, 1]
    disc = b * b - 4 * a * c
    if not a > 0 or disc < 0:
        return -math.inf, math.inf
    root = math.sqrt(disc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)
