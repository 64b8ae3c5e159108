"""How noisy one run's final loss is, measured per curve, and replicates drawn from that noise.

The interval of an isoFLOP optimum needs the noise of each point's loss. A study rarely has more than a few
seeds, so a resampling of seeds alone has too few distinct draws (3 seeds: 10), and a resampling of a
parabola's 2-4 residuals forgets that their spread is itself a guess. modexp instead measures the noise
once per curve, from everything the curve has, and draws replicates from it (docs/verdict.md, "Intervals"):

- Variance of one run's loss: log sigma^2(z) = c0 + c1 z + c2 z^2, z = log10(tokens / params): at a fixed
  budget the larger models see fewer tokens per parameter and are noisier. c1, then c2, are kept only when a
  likelihood-ratio test says the data need them (p < 0.05); otherwise the noise is one number for the curve.
- Evidence: with repeated seeds, the seeds' sample variances at each point's best LR (pure noise); with one
  seed, each budget's parabola residuals, leverage-corrected (r^2 / (1 - h) has expectation sigma^2). The
  variance model is a gamma GLM with log link on that evidence, each term weighted by its degrees of freedom.
- Replicate b: the curve's variance scale is drawn as nu / chi^2_nu (nu: the evidence's degrees of freedom;
  this is what a t interval does, and it is shared by the curve's budgets, which share the estimate), each
  point's noise is normal with variance scale_b sigma^2(z) / seeds, and it is added to the fitted parabola.
  Refitting gives the estimator's spread, including its non-linear vertex.
- Curves are drawn independently of each other: replicates are never paired across curves, which is
  conservative for runs that share a seed and exact for those that do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from .points import Group

SLOPE_P_VALUE = 0.05
MIN_SLOPE_DOF = 6  # fewer degrees of freedom than this cannot tell a slope from chance


@dataclass(frozen=True)
class NoiseModel:
    """log sigma^2(z) = c0 + c1 z + c2 z^2 for one run; dof: degrees of freedom of the evidence; source:
    seeds | residuals | none."""

    coef: tuple[float, ...]  # (c0, c1, c2)
    dof: float
    source: str
    prior_dof: float = math.inf  # how far single points' variances stray from the model (inf: not at all)

    def variance(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, float)
        return np.exp(sum(c * z**k for k, c in enumerate(self.coef)))

    @property
    def c1(self) -> float:
        return self.coef[1] if len(self.coef) > 1 else 0.0

    @property
    def sd(self) -> float:
        """The noise at 1 token per parameter (z = 0), for reports."""
        return math.sqrt(math.exp(self.coef[0])) if math.isfinite(self.coef[0]) else math.nan

    def describe(self) -> str:
        if not math.isfinite(self.coef[0]):
            return "noise not measurable"
        shape = {1: "", 2: ", log-linear in tokens/param", 3: ", log-quadratic in tokens/param"}[
            len(self.coef)
        ]
        return f"noise sd {self.sd:.4f} nats at 1 token/param{shape} ({self.dof:.0f} dof from {self.source})"


def best_lr_losses(group: Group) -> list[np.ndarray]:
    """Per point: the seed losses at its best learning rate (lowest seed mean)."""
    out = []
    for losses in group.losses:
        with np.errstate(invalid="ignore"):
            means = np.array([np.nanmean(r) if np.isfinite(r).any() else np.inf for r in losses])
        row = losses[int(np.argmin(means))]
        out.append(row[np.isfinite(row)])
    return out


def point_values(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(point loss, seeds behind it) as the reduction of points.py computes them."""
    runs = best_lr_losses(group)
    return np.array([r.mean() if r.size else np.nan for r in runs]), np.array([r.size for r in runs], float)


def _design(x: np.ndarray) -> np.ndarray:
    return np.stack([x**2, x, np.ones_like(x)], axis=1)


def _seed_evidence(groups: list[Group]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, s2, dof = [], [], []
    for g in groups:
        zs = np.log10(g.tokens / g.params)
        for zi, runs in zip(zs, best_lr_losses(g)):
            if runs.size >= 2:
                z.append(zi), s2.append(float(np.var(runs, ddof=1))), dof.append(runs.size - 1.0)
    return np.array(z), np.array(s2), np.array(dof)


def _residual_evidence(groups: list[Group]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, s2, dof = [], [], []
    for g in groups:
        y, k = point_values(g)
        ok = np.isfinite(y)
        x = np.log10(g.params[ok])
        if np.unique(x).size < 4:  # a parabola through 3 sizes leaves no residual
            continue
        X = _design(x)
        w = k[ok]  # a point of k seeds has variance sigma^2 / k
        Xw = X * np.sqrt(w)[:, None]
        hat = np.einsum("ij,jk,ik->i", Xw, np.linalg.pinv(Xw.T @ Xw), Xw)
        coef = np.linalg.lstsq(Xw, y[ok] * np.sqrt(w), rcond=None)[0]
        resid = y[ok] - X @ coef
        lever = np.clip(1 - hat, 1e-6, None)
        z += list(np.log10(g.tokens[ok] / g.params[ok]))
        s2 += list(w * resid**2 / lever)
        dof += list(lever)  # the residuals of n points carry n - 3 degrees of freedom in all
    return np.array(z), np.array(s2), np.array(dof)


def _gamma_fit(
    z: np.ndarray, s2: np.ndarray, dof: np.ndarray, degree: int
) -> tuple[tuple[float, ...], float]:
    """(coefficients, -log likelihood) of s2 ~ sigma^2(z) chi^2_dof / dof with log sigma^2 a polynomial of
    `degree` in z (a gamma GLM with log link)."""
    s2 = np.maximum(s2, 1e-300)
    powers = np.stack([z**k for k in range(degree + 1)], axis=1)

    def nll(theta: np.ndarray) -> float:
        log_var = powers @ theta
        return float(np.sum(dof / 2 * (log_var + s2 * np.exp(-log_var))))

    start = np.zeros(degree + 1)
    start[0] = math.log(float(np.average(s2, weights=dof)))
    if degree == 0:
        return (float(start[0]),), nll(start)
    res = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000}
    )
    return tuple(float(c) for c in res.x), float(res.fun)


def fit_noise(groups: list[Group]) -> NoiseModel:
    """The noise model of one curve from its groups (one per budget); see the module docstring."""
    z, s2, dof = _seed_evidence(groups)
    source = "seeds"
    if dof.sum() < 2:  # fewer than 2 seed degrees of freedom: the parabolas' residuals are all there is
        z, s2, dof = _residual_evidence(groups)
        source = "residuals"
    if dof.size == 0 or dof.sum() <= 0 or not np.isfinite(s2).all():
        return NoiseModel((math.nan,), 0.0, "none")
    coef, nll = _gamma_fit(z, s2, dof, 0)
    # A slope, then a curvature, each only when a likelihood-ratio test says the evidence needs it.
    for degree in (1, 2):
        if dof.sum() < MIN_SLOPE_DOF * degree or np.unique(np.round(z, 6)).size <= degree:
            break
        richer, richer_nll = _gamma_fit(z, s2, dof, degree)
        if stats.chi2.sf(2 * (nll - richer_nll), 1) >= SLOPE_P_VALUE:
            break
        coef, nll = richer, richer_nll
    model = NoiseModel(coef, float(dof.sum()), source)
    if source == "seeds":
        model = NoiseModel(coef, model.dof, source, _prior_dof(z, s2, dof, model))
    return model


def _prior_dof(z: np.ndarray, s2: np.ndarray, dof: np.ndarray, model: NoiseModel) -> float:
    """Smyth's (2004) prior degrees of freedom: how much the points' true variances scatter around the model,
    from the scatter of log s^2 beyond what chi^2 sampling explains (inf: none beyond it)."""
    if dof.size < 4:
        return math.inf
    expected = np.log(model.variance(z)) + special.digamma(dof / 2) - np.log(dof / 2)
    e = np.log(np.maximum(s2, 1e-300)) - expected
    excess = float(np.var(e, ddof=1) - np.mean(special.polygamma(1, dof / 2)))
    if excess <= 0:
        return math.inf
    # trigamma(d0 / 2) = excess, solved on a bracket (trigamma falls from inf to 0)
    try:
        return float(2 * optimize.brentq(lambda h: float(special.polygamma(1, h)) - excess, 1e-3, 1e6))
    except ValueError:
        return math.inf


def variance_scales(model: NoiseModel, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the factor the variance estimate is off by: nu / chi^2_nu (a t interval's width)."""
    if model.dof <= 0:
        return np.full(n_boot, np.nan)
    return model.dof / rng.chisquare(model.dof, size=n_boot)


def point_variances(group: Group, model: NoiseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point losses, variance of each point's loss, degrees of freedom of that variance).

    The model's variance over the point's seeds; where points stray from the model (a finite prior_dof), each
    point's own seeds pull its variance their way (moderated as in limma) with prior_dof + its own dof.
    """
    y, k = point_values(group)
    variance = model.variance(np.log10(group.tokens / group.params))
    dof = np.full(y.size, model.dof)
    if math.isfinite(model.prior_dof):
        for i, runs in enumerate(best_lr_losses(group)):
            df = runs.size - 1
            if df >= 1:
                variance[i] = (model.prior_dof * variance[i] + df * np.var(runs, ddof=1)) / (
                    model.prior_dof + df
                )
                dof[i] = model.prior_dof + df
    return y, variance / np.maximum(k, 1), dof


def draw_losses(
    group: Group, model: NoiseModel, scales: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replicate noise (B, points) for one group's point losses, and the points' own losses (NaN: no run)."""
    y, variance, dof = point_variances(group, model)
    scale = np.broadcast_to(scales[:, None], (scales.size, y.size)).copy()
    if math.isfinite(model.prior_dof):  # each point's variance is drawn with its own degrees of freedom
        for i in np.flatnonzero(dof != model.dof):
            scale[:, i] = dof[i] / rng.chisquare(dof[i], size=scales.size)
    noise = rng.standard_normal((scales.size, y.size)) * np.sqrt(variance) * np.sqrt(scale)
    return noise, y
