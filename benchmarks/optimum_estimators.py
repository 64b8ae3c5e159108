"""Which estimator finds an isoFLOP curve's minimum: error of L* (nats) and N* (decades) on known truths.

    python benchmarks/optimum_estimators.py            # the table in docs/verdict.md ("Optima")
    python benchmarks/optimum_estimators.py --reps 50  # quicker

Truths: the Chinchilla refit law (Besiroglu et al. 2024) and Kaplan et al.'s eq. 1.5 (asymmetric isoFLOP
curves); ladders wide (as published scaling studies train) and narrow (as modexp's presets); normal noise of a
known sd, which every estimator is told. Each row: one ladder shape, `reps` noisy draws per budget, the ladder's
centre jittered by +-0.15 decades around an offset from the true optimum.

Estimators: one parabola through every size (modexp before); Akima interpolation of log loss, minimum on a
fine grid (as Porian et al. 2024 read optima); a cubic through every size; a Lepski-type window (the widest
window whose vertex agrees with every narrower one's within 1.5 standard errors); and modexp's window
(optimum.locate: sizes within 0.6 decades of the lowest, narrowed while the quadratic misfits).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import optimize
from scipy.interpolate import Akima1DInterpolator

from modexp.analysis import optimum
from modexp.analysis.simulate import CHINCHILLA, KAPLAN


def chinchilla(n, d):
    c = CHINCHILLA
    return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]


def kaplan(n, d):
    k = KAPLAN
    return ((k["Nc"] / n) ** (k["aN"] / k["aD"]) + k["Dc"] / d) ** k["aD"]


def truth(law, budget: float) -> tuple[float, float]:
    res = optimize.minimize_scalar(
        lambda x: law(10**x, budget / (6 * 10**x)), bounds=(2, 14), method="bounded", options={"xatol": 1e-9}
    )
    return float(res.x), float(res.fun)


def one_parabola(x, y, var):
    c = np.polyfit(x, y, 2)
    return (-c[1] / (2 * c[0]), np.polyval(c, -c[1] / (2 * c[0]))) if c[0] > 0 else (math.nan, math.nan)


def akima(x, y, var):
    grid = np.linspace(x[0], x[-1], (x.size - 1) * 25)
    values = Akima1DInterpolator(x, np.log(y))(grid)
    i = int(np.argmin(values))
    return grid[i], float(np.exp(values[i]))


def cubic(x, y, var):
    c = np.polyfit(x, y, 3)
    roots = [r.real for r in np.roots(np.polyder(c)) if abs(r.imag) < 1e-12]
    roots = [r for r in roots if np.polyval(np.polyder(c, 2), r) > 0 and x[0] < r < x[-1]]
    if not roots:
        return math.nan, math.nan
    r = min(roots, key=lambda r: abs(r - x[np.argmin(y)]))
    return r, float(np.polyval(c, r))


def lepski(x, y, var, kappa: float = 1.5):
    best = (math.nan, math.nan)
    found = []
    for lo, hi in optimum.windows(x, int(np.argmin(y)))[::-1]:  # narrowest first
        X = optimum.design(x[lo:hi])
        w = 1 / var[lo:hi]
        cov = np.linalg.pinv((X.T * w) @ X)
        c2, c1, c0 = cov @ (X.T * w) @ y[lo:hi]
        if c2 <= 0:
            continue
        gx = np.array([c1 / (2 * c2**2), -1 / (2 * c2), 0.0])
        gy = np.array([c1**2 / (4 * c2**2), -c1 / (2 * c2), 1.0])
        est = (-c1 / (2 * c2), c0 - c1**2 / (4 * c2), math.sqrt(gx @ cov @ gx), math.sqrt(gy @ cov @ gy))
        if any(abs(est[0] - f[0]) > kappa * f[2] or abs(est[1] - f[1]) > kappa * f[3] for f in found):
            break
        found.append(est)
        best = est[:2]
    return best


def modexp_window(x, y, var):
    found = optimum.locate(x, y[None, :], var)
    return float(found["x_min"][0]), float(found["y_min"][0])


ESTIMATORS = {
    "one parabola": one_parabola,
    "Akima": akima,
    "cubic": cubic,
    "Lepski window": lepski,
    "modexp window": modexp_window,
}
CASES = [
    ("Chinchilla, 12 sizes over 2.5 decades", chinchilla, (1e18, 1e19, 1e20), 12, 2.5, 0.0, 0.005),
    ("Kaplan, 8 sizes over 2 decades", kaplan, (1e18, 1e19, 1e20), 8, 2.0, 0.0, 0.005),
    ("Kaplan, 16 sizes over 3 decades, off-centre", kaplan, (1e18, 1e19, 1e20), 16, 3.0, 0.2, 0.005),
    ("Kaplan, 6 sizes over 2 decades, off-centre", kaplan, (1e18, 1e19, 1e20), 6, 2.0, 0.3, 0.005),
    ("Chinchilla, 6 sizes over 1 decade (presets)", chinchilla, (1e18, 2.5e18, 6e18), 6, 1.0, 0.1, 0.01),
    ("Chinchilla, 6 sizes over 1 decade (presets)", chinchilla, (1e18, 2.5e18, 6e18), 6, 1.0, 0.1, 0.03),
    ("Kaplan, 6 sizes over 1 decade, 2x off-centre", kaplan, (1e18, 2.5e18, 6e18), 6, 1.0, 0.3, 0.01),
]


def run_case(case, reps: int, rng: np.random.Generator) -> dict[str, tuple[float, float, float, float]]:
    _, law, budgets, sizes, span, offset, noise = case
    errors = {name: ([], []) for name in ESTIMATORS}
    for budget in budgets:
        x_true, l_true = truth(law, budget)
        for _ in range(reps):
            centre = x_true + offset + rng.uniform(-0.15, 0.15)
            x = np.linspace(centre - span / 2, centre + span / 2, sizes)
            y = law(10**x, budget / (6 * 10**x)) + noise * rng.standard_normal(sizes)
            var = np.full(sizes, noise**2)
            for name, estimate in ESTIMATORS.items():
                x_min, y_min = estimate(x, y, var)
                errors[name][0].append(y_min - l_true)
                errors[name][1].append(x_min - x_true)
    out = {}
    for name, (dl, dx) in errors.items():
        dl, dx = np.array(dl), np.array(dx)
        ok = np.isfinite(dl) & np.isfinite(dx)
        out[name] = (
            dl[ok].mean(),
            np.sqrt((dl[ok] ** 2).mean()),
            dx[ok].mean(),
            np.sqrt((dx[ok] ** 2).mean()),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=150, help="noisy draws per budget (default 150)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| ladder | " + " | ".join(ESTIMATORS) + " |")
    print("|---|" + "---|" * len(ESTIMATORS))
    for case in CASES:
        result = run_case(case, args.reps, rng)
        cells = [f"{b:+.4f} / {r:.4f}; {nb:+.3f} / {nr:.3f}" for b, r, nb, nr in result.values()]
        print(f"| {case[0]}, noise {case[6]} | " + " | ".join(cells) + " |")
    print("Cells: L* bias / rmse (nats); N* bias / rmse (decades).")


if __name__ == "__main__":
    main()
