"""How noisy one run's final loss is, measured per curve, and replicates drawn from that noise.

The interval of an isoFLOP optimum needs the noise of each point's loss. modexp measures it once per curve, from
everything the curve has, and draws replicates from it (docs/verdict.md, "Intervals"):

- Variance of one run's loss: log sigma^2(z) = c0 + c1 z + c2 z^2, z = log10(tokens / params): at a fixed
  budget the larger models see fewer tokens per parameter and are often noisier. c1, then c2, are kept only when
  a likelihood-ratio test says the evidence needs them (p < 0.05); otherwise the noise is one number per curve.
- Evidence, always both kinds there are:
  - seeds: the sample variance of a point's seeds (at its best LR): pure noise at that point;
  - local residuals: within each budget, the contrast of every 5 neighbouring sizes that no cubic in log10
    params can produce (4 neighbours when a budget has only 4 sizes). A smooth curve leaves almost nothing in
    it, so it measures noise wherever the ladder reaches, the ends included, without reading a parabola's
    misfit on a wide ladder as noise. Overlapping contrasts are correlated: their degrees of freedom are
    counted as what their sum of squares carries (Satterthwaite).
  Each piece of evidence has an expectation that is a known sum of the model's variances (a contrast mixes
  its points), and the model is fitted by maximum likelihood (scaled chi^2 evidence, a gamma likelihood).
- Stems: a branch of a WSD stem shares its stem's trajectory with the branches at other budgets, so their
  losses share part of their noise. For a curve whose runs record their stems, the share rho (the correlation
  of two branches of one stem) has a restricted likelihood over a grid of values, from the runs inside each
  budget's window; replicates draw rho from it (a flat prior), and each stem's shared part once for all the
  budgets it serves. Runs without a stem are independent.
- Replicate b: the variance scale is drawn as nu / chi^2_nu (nu: the evidence's degrees of freedom; what a t
  interval does), shared by the curve's budgets, which share the estimate.
- Curves are drawn independently of each other: replicates are never paired across curves, which is exact for
  runs with different seeds and conservative for runs that share one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, optimize, special, stats

from .points import Group

SLOPE_P_VALUE = 0.05
MIN_SLOPE_DOF = 6  # fewer degrees of freedom than this cannot tell a slope from chance
RHO_GRID = np.linspace(0.0, 0.95, 20)


@dataclass(frozen=True)
class NoiseModel:
    """log sigma^2(z) = c0 + c1 z + c2 z^2 for one run; dof: degrees of freedom of the evidence; source: seeds |
    residuals | seeds+residuals | none; rho: the stems' share of the noise (posterior over RHO_GRID)."""

    coef: tuple[float, ...]  # (c0, c1, c2)
    dof: float
    source: str
    prior_dof: float = math.inf  # how far single points' variances stray from the model (inf: not at all)
    rho_grid: tuple[float, ...] = (0.0,)
    rho_weights: tuple[float, ...] = (1.0,)
    stem_pairs: int = 0  # pairs of runs that share a stem (the evidence on rho)
    z_range: tuple[float, float] = (-math.inf, math.inf)  # where the evidence was: never extrapolated past it

    def variance(self, z: np.ndarray) -> np.ndarray:
        z = np.clip(np.asarray(z, float), *self.z_range)
        return np.exp(sum(c * z**k for k, c in enumerate(self.coef)))

    @property
    def c1(self) -> float:
        return self.coef[1] if len(self.coef) > 1 else 0.0

    @property
    def sd(self) -> float:
        """The noise at 1 token per parameter (z = 0), for reports."""
        return math.sqrt(math.exp(self.coef[0])) if math.isfinite(self.coef[0]) else math.nan

    @property
    def rho(self) -> float:
        """The stems' share of the noise: the posterior mean (0 without stems)."""
        return float(np.dot(self.rho_grid, self.rho_weights))

    def describe(self) -> str:
        if not math.isfinite(self.coef[0]):
            return "noise not measurable"
        shape = {1: "", 2: ", log-linear in tokens/param", 3: ", log-quadratic in tokens/param"}[
            len(self.coef)
        ]
        text = f"noise sd {self.sd:.4f} nats at 1 token/param{shape} ({self.dof:.0f} dof from {self.source})"
        if self.stem_pairs:
            text += f"; stems share {self.rho:.0%} of it ({self.stem_pairs} pairs of branches)"
        return text


def best_lr_index(group: Group) -> np.ndarray:
    """Per point: the index of its best LR (lowest seed mean)."""
    with np.errstate(invalid="ignore"):
        have = np.isfinite(group.losses)
        total = np.where(have, group.losses, 0.0).sum(axis=2)
        count = have.sum(axis=2)
        means = np.where(count > 0, total / np.maximum(count, 1), np.inf)
    return np.argmin(means, axis=1)


def best_lr_losses(group: Group) -> list[np.ndarray]:
    """Per point: the seed losses at its best learning rate (lowest seed mean)."""
    best = best_lr_index(group)
    out = []
    for p, losses in enumerate(group.losses):
        row = losses[best[p]]
        out.append(row[np.isfinite(row)])
    return out


def point_values(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """(point loss, seeds behind it) as the reduction of points.py computes them."""
    runs = best_lr_losses(group)
    return np.array([r.mean() if r.size else np.nan for r in runs]), np.array([r.size for r in runs], float)


def z_of(group: Group) -> np.ndarray:
    return np.log10(group.tokens / group.params)


# ------------------------------------------------------------------------------------------------ evidence


@dataclass
class Evidence:
    """Observed s2 with `dof`, whose expectation is mix @ sigma^2(z) (mix: one row per item over `z`)."""

    z: np.ndarray
    mix: np.ndarray  # (items, len(z))
    s2: np.ndarray
    dof: np.ndarray
    kinds: set = field(default_factory=set)

    @classmethod
    def empty(cls) -> Evidence:
        return cls(np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros(0))


def _contrasts(x: np.ndarray, order: int) -> np.ndarray:
    """Unit contrasts of each `order` neighbouring points orthogonal to polynomials of degree order - 2."""
    rows = []
    for start in range(x.size - order + 1):
        span = x[start : start + order]
        V = np.stack([span**k for k in range(order - 1)], axis=1)
        a = linalg.null_space(V.T)[:, 0]
        row = np.zeros(x.size)
        row[start : start + order] = a / np.linalg.norm(a)
        rows.append(row)
    return np.array(rows)


def _local_residual_evidence(groups: list[Group]) -> tuple[list, list, list, list]:
    zs, mixes, s2s, dofs = [], [], [], []
    for g in groups:
        y, k = point_values(g)
        ok = np.isfinite(y) & (k > 0)
        x, z, y, k = np.log10(g.params[ok]), z_of(g)[ok], y[ok], k[ok]
        if np.unique(x).size < 4:
            continue
        order = 5 if x.size >= 5 else 4
        a = _contrasts(x, order)
        c = a @ y
        mix = a**2 / k  # Var(c_j) = sum_i a_ji^2 sigma^2(z_i) / k_i
        # Satterthwaite: the contrasts overlap, so their sum of squares carries fewer than len(c) dof.
        norm = np.sqrt(mix.sum(axis=1))
        corr = (a / k) @ a.T / np.outer(norm, norm)
        factor = len(c) / float(np.sum(corr**2))
        zs.append(z)
        mixes.append(mix)
        s2s.append(c**2)
        dofs.append(np.full(len(c), factor))
    return zs, mixes, s2s, dofs


def _window_residual_evidence(groups: list[Group], windows: list[slice]) -> tuple[list, list, list, list]:
    """Residuals of each budget's window quadratic, and the prediction errors of the sizes the window left out
    for misfit (within the window's reach of the lowest point, `optimum.MAX_REACH`).

    r = R y with R known: a window residual has E[r_i^2] = sum_j (I - H)_ij^2 var_j, a left-out size's error
    var_i + its prediction's variance. Each is evidence on the noise at its own size with weight 1 on it: a
    size left out because it is noisier than the model said shows up here, so the model can learn where the
    noise is, the ladder's ends included, even where no second seed was trained."""
    from .optimum import MAX_REACH

    zs, mixes, s2s, dofs = [], [], [], []
    for g, window in zip(groups, windows):
        y, k = point_values(g)
        ok = np.isfinite(y) & (k > 0)
        x, z, y, k = np.log10(g.params[ok]), z_of(g)[ok], y[ok], k[ok]
        inside = np.zeros(x.size, bool)
        inside[window] = True
        if np.unique(x[inside]).size < 4:  # a quadratic through 3 sizes leaves no residual
            continue
        reach = np.abs(x - x[inside][np.argmin(y[inside])]) <= MAX_REACH + 1e-9
        used = inside | reach
        X = np.stack([x**2, x, np.ones_like(x)], axis=1)
        fit = X[used] @ np.linalg.pinv(X[inside])  # fitted or predicted value of each used size
        R = -fit
        cols = np.flatnonzero(inside)
        R_full = np.zeros((used.sum(), x.size))
        R_full[:, cols] = R
        R_full[np.arange(used.sum()), np.flatnonzero(used)] += 1.0
        R_full = R_full[:, used]
        dof = np.where(inside[used], np.clip(np.diag(R_full), 1e-6, None), 1.0)
        zs.append(z[used])
        mixes.append(R_full**2 / k[used])
        s2s.append((R_full @ y[used]) ** 2)
        dofs.append(dof)
    return zs, mixes, s2s, dofs


def gather_evidence(groups: list[Group], windows: list[slice] | None = None) -> Evidence:
    """Seed variances and residuals of one curve's groups, over all their points' z: the residuals of each
    budget's window when the windows are known, else local residual contrasts (which need no window)."""
    blocks_z, blocks_mix, s2, dof, kinds = [], [], [], [], set()
    for g in groups:
        z = z_of(g)
        for zi, runs in zip(z, best_lr_losses(g)):
            if runs.size >= 2:
                blocks_z.append(np.array([zi]))
                blocks_mix.append(np.ones((1, 1)))
                s2.append(np.array([np.var(runs, ddof=1)]))
                dof.append(np.array([runs.size - 1.0]))
                kinds.add("seeds")
    residuals = (
        _window_residual_evidence(groups, windows)
        if windows is not None
        else _local_residual_evidence(groups)
    )
    for z, mix, c2, d in zip(*residuals):
        blocks_z.append(z)
        blocks_mix.append(mix)
        s2.append(c2)
        dof.append(d)
        kinds.add("residuals")
    if not s2:
        return Evidence.empty()
    all_z = np.concatenate(blocks_z)
    mix = linalg.block_diag(*blocks_mix)
    return Evidence(all_z, mix, np.concatenate(s2), np.concatenate(dof), kinds)


def _fit(ev: Evidence, degree: int) -> tuple[tuple[float, ...], float]:
    """(coefficients, -log likelihood) of s2 ~ (mix @ sigma^2(z)) chi^2_dof / dof, log sigma^2 a polynomial."""
    s2 = np.maximum(ev.s2, 1e-300)
    powers = np.stack([ev.z**k for k in range(degree + 1)], axis=1)

    def nll(theta: np.ndarray) -> float:
        mean = ev.mix @ np.exp(np.clip(powers @ theta, -700, 700))
        mean = np.maximum(mean, 1e-300)
        return float(np.sum(ev.dof / 2 * (np.log(mean) + s2 / mean)))

    weight = ev.mix.sum(axis=1)
    start = np.zeros(degree + 1)
    start[0] = math.log(float(np.average(s2 / np.maximum(weight, 1e-300), weights=ev.dof)))
    if degree == 0:
        res = optimize.minimize_scalar(lambda c: nll(np.array([c])), bracket=(start[0] - 1, start[0] + 1))
        return (float(res.x),), float(res.fun)
    res = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000}
    )
    return tuple(float(c) for c in res.x), float(res.fun)


def fit_noise(groups: list[Group], windows: list[slice] | None = None) -> NoiseModel:
    """The noise model of one curve from its groups (one per budget); see the module docstring. `windows`:
    each group's window over its points with a loss (sorted by size), whose residuals are then the evidence."""
    ev = gather_evidence(groups, windows)
    if ev.s2.size == 0 or ev.dof.sum() <= 0 or not np.isfinite(ev.s2).all():
        return NoiseModel((math.nan,), 0.0, "none")
    source = "+".join(k for k in ("seeds", "residuals") if k in ev.kinds)
    coef, nll = _fit(ev, 0)
    for degree in (1, 2):
        if ev.dof.sum() < MIN_SLOPE_DOF * degree or np.unique(np.round(ev.z, 6)).size <= degree:
            break
        richer, richer_nll = _fit(ev, degree)
        if stats.chi2.sf(2 * (nll - richer_nll), 1) >= SLOPE_P_VALUE:
            break
        coef, nll = richer, richer_nll
    z_range = (float(ev.z.min()), float(ev.z.max())) if len(coef) > 1 else (-math.inf, math.inf)
    model = NoiseModel(coef, float(ev.dof.sum()), source, z_range=z_range)
    if "seeds" in ev.kinds:
        model = dataclasses.replace(model, prior_dof=_prior_dof(groups, model))
    return model


def _prior_dof(groups: list[Group], model: NoiseModel) -> float:
    """Smyth's (2004) prior degrees of freedom: how much the points' true variances scatter around the model,
    from the scatter of their seeds' log s^2 beyond what chi^2 sampling explains (inf: none beyond it)."""
    z, s2, dof = [], [], []
    for g in groups:
        for zi, runs in zip(z_of(g), best_lr_losses(g)):
            if runs.size >= 2:
                z.append(zi), s2.append(float(np.var(runs, ddof=1))), dof.append(runs.size - 1.0)
    if len(dof) < 4:
        return math.inf
    z, s2, dof = np.array(z), np.array(s2), np.array(dof)
    expected = np.log(model.variance(z)) + special.digamma(dof / 2) - np.log(dof / 2)
    e = np.log(np.maximum(s2, 1e-300)) - expected
    excess = float(np.var(e, ddof=1) - np.mean(special.polygamma(1, dof / 2)))
    if excess <= 0:
        return math.inf
    try:  # trigamma(d0 / 2) = excess, solved on a bracket (trigamma falls from inf to 0)
        return float(2 * optimize.brentq(lambda h: float(special.polygamma(1, h)) - excess, 1e-3, 1e6))
    except ValueError:
        return math.inf


# ------------------------------------------------------------------------------------------------ stems


def stem_likelihood(
    runs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, list[str]]], model: NoiseModel
) -> tuple[np.ndarray, int]:
    """Posterior weights over RHO_GRID (flat prior) from the runs inside each budget's window, and the number
    of pairs of runs that share a stem.

    runs: per budget, (budget index, x of each run, loss of each run, z of each run, stem of each run). The
    mean is a quadratic per budget (the window's), the covariance sigma^2(z) with correlation rho between runs
    of one stem; the restricted (REML) likelihood of rho profiles out one common scale.
    """
    xs, ys, zs, stems, blocks = [], [], [], [], []
    for _, x, y, z, stem in runs:
        if x.size < 4:
            continue
        blocks.append(np.stack([x**2, x, np.ones_like(x)], axis=1))
        xs.append(x), ys.append(y), zs.append(z)
        stems += list(stem)
    if not blocks:
        return np.array([1.0]), 0
    X = linalg.block_diag(*blocks)
    y = np.concatenate(ys)
    sd = np.sqrt(model.variance(np.concatenate(zs)))
    labels = np.array(stems, dtype=object)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] != "")
    np.fill_diagonal(same, False)
    pairs = int(same.sum() // 2)
    if pairs == 0:
        return np.array([1.0]), 0
    n, p = X.shape
    loglik = []
    for rho in RHO_GRID:
        cov = np.outer(sd, sd) * (np.eye(n) + rho * same)
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            loglik.append(-np.inf)
            continue
        Xt = np.linalg.solve(chol, X)  # tiny: a general solve beats a threaded triangular one
        yt = np.linalg.solve(chol, y)
        beta = np.linalg.lstsq(Xt, yt, rcond=None)[0]
        rss = float(np.sum((yt - Xt @ beta) ** 2))
        sign, logdet_xx = np.linalg.slogdet(Xt.T @ Xt)
        loglik.append(
            -0.5
            * ((n - p) * math.log(max(rss, 1e-300) / (n - p)) + 2 * np.log(np.diag(chol)).sum() + logdet_xx)
        )
    loglik = np.array(loglik)
    weights = np.exp(loglik - loglik.max())
    return weights / weights.sum(), pairs


def with_stems(model: NoiseModel, weights: np.ndarray, pairs: int) -> NoiseModel:
    if pairs == 0:
        return model
    return dataclasses.replace(
        model,
        rho_grid=tuple(float(r) for r in RHO_GRID),
        rho_weights=tuple(float(w) for w in weights),
        stem_pairs=pairs,
    )


# ------------------------------------------------------------------------------------------------ draws


def variance_scales(model: NoiseModel, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the factor the variance estimate is off by: nu / chi^2_nu (a t interval's width)."""
    if model.dof <= 0:
        return np.full(n_boot, np.nan)
    return model.dof / rng.chisquare(model.dof, size=n_boot)


def draw_rho(model: NoiseModel, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.array(model.rho_grid), size=n_boot, p=np.array(model.rho_weights))


def run_variances(group: Group, model: NoiseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point losses, variance of one run at each point, degrees of freedom of that variance).

    The model's variance; where points stray from the model (a finite prior_dof), each point's own seeds pull
    its variance their way (moderated as in limma) with prior_dof + its own dof.
    """
    y, _ = point_values(group)
    variance = model.variance(z_of(group))
    dof = np.full(y.size, model.dof)
    if math.isfinite(model.prior_dof):
        for i, runs in enumerate(best_lr_losses(group)):
            df = runs.size - 1
            if df >= 1:
                variance[i] = (model.prior_dof * variance[i] + df * np.var(runs, ddof=1)) / (
                    model.prior_dof + df
                )
                dof[i] = model.prior_dof + df
    return y, variance, dof


def point_variances(group: Group, model: NoiseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point losses, variance of each point's loss (its seeds' mean), degrees of freedom of that variance)."""
    y, variance, dof = run_variances(group, model)
    _, k = point_values(group)
    return y, variance / np.maximum(k, 1), dof


def draw_curve(
    groups: list[Group], model: NoiseModel, scales: np.ndarray, rhos: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Replicate noise (B, points) for each group's point losses, drawn jointly for the curve: one shared
    normal per stem (all the budgets it serves), one per run, the variance scale per replicate, and each point
    the mean over its seeds."""
    B = scales.size
    stem_draws: dict[str, np.ndarray] = {}
    out = []
    for g in groups:
        _, variance, dof = run_variances(g, model)
        scale = np.broadcast_to(scales[:, None], (B, variance.size)).copy()
        if math.isfinite(model.prior_dof):  # each point's variance is drawn with its own degrees of freedom
            for i in np.flatnonzero(dof != model.dof):
                scale[:, i] = dof[i] / rng.chisquare(dof[i], size=B)
        best = best_lr_index(g)
        noise = np.zeros((B, variance.size))
        for p in range(variance.size):
            seeds = np.flatnonzero(np.isfinite(g.losses[p, best[p]]))
            total = np.zeros(B)
            for s in seeds:
                stem = g.stems[p, best[p], s] if g.stems is not None else ""
                own = rng.standard_normal(B)
                if stem:
                    if stem not in stem_draws:
                        stem_draws[stem] = rng.standard_normal(B)
                    own = np.sqrt(rhos) * stem_draws[stem] + np.sqrt(1 - rhos) * own
                total += own
            noise[:, p] = total / max(seeds.size, 1) * np.sqrt(variance[p] * scale[:, p])
        out.append(noise)
    return out
