"""Simulated isoFLOP studies with a known truth, shaped like the studies modexp plans (for the self-check).

A study is a table as `modexp analyze --table` reads it: one row per run (variant, budget, params, tokens,
flops, seed, stem, val_loss). What is simulated, and why each part is there:

- The truth: a loss law L(N, D) that is either the Chinchilla refit form (Besiroglu et al. 2024: E + A/N^a +
  B/D^b) or Kaplan et al.'s eq. 1.5, [(Nc/N)^(aN/aD) + Dc/D]^aD, whose isoFLOP profiles are asymmetric and
  outside the families the analysis fits. A variant reaches at C what the baseline reaches at m(C) C: it is
  trained on m(C) times the tokens per FLOP (as MoD is), so its compute multiplier is m(C) at every budget, and
  m(C) may trend with C (ln m linear in ln C). Optionally a variant's learning rates are mistuned at large sizes
  (a loss penalty growing with size), which moves its optimum and is part of its truth.
- The design: ladders of `sizes` shapes on a fixed, irregular grid of sizes (as the planner's grid of shapes),
  centred on a guess of the optimum that drifts with C; the variant's ladder shifted up (MoD's
  `mod_size_shift`); a second seed at all sizes or only at the `seed_sizes` sizes nearest the guess.
- The noise: normal, sd `noise` per run, `large_noise` times larger at the 2 largest sizes of each ladder (larger
  models are noisier at fewer tokens per parameter). With `stems`, each (variant, size, seed) is one stem whose
  branches at several budgets share a part `stem_share` of their noise variance (WSD cooldown branches share
  their stem's trajectory).

The truth of every quantity is read off the noise-free curves (numerical minimum over a continuous size), so a
penalty or an asymmetric law needs no closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize

BASELINE = "baseline"
VARIANT = "mod_c0.125_e2"
# Chinchilla refit (Besiroglu et al. 2024) and Kaplan et al. (2020), eq. 1.5
CHINCHILLA = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
KAPLAN = {"Nc": 8.8e13, "Dc": 5.4e13, "aN": 0.076, "aD": 0.095}
# Log10 steps between neighbouring sizes of the grid, cycled: the planner's widths step unevenly (the demo's
# ladder steps by 1.33x-1.76x).
GRID_STEPS = (0.245, 0.215, 0.146, 0.124, 0.221, 0.176, 0.132)
GRID_START = 5.0  # log10 params of the grid's first size


@dataclass(frozen=True)
class Design:
    """One kind of simulated study (see the module docstring)."""

    name: str
    about: str = ""
    law: str = "chinchilla"  # chinchilla | kaplan
    budgets: tuple[float, ...] = (1e18, 2.5e18, 6e18)
    sizes: int = 6
    wide: float = 0.0  # > 0: an evenly spaced ladder of `sizes` over this many decades instead of the grid
    seeds: int = 1
    seed_sizes: int = 0  # 0: every size has all seeds; k: only the k sizes nearest the guess
    seed_ends: str = ""  # with seed_sizes: "both" seeds the two ends too, "largest" swaps one for the largest
    noise: float = 0.01
    large_noise: float = 1.0
    stems: bool = False
    stem_share: float = 0.0
    multiplier: float = 1.2
    multiplier_slope: float = 0.0  # d ln m / d ln C
    shift: float = 0.1  # decades the variant's ladder sits above the baseline's
    drift: float = 0.15  # decades the ladder's centre wanders from the true optimum across budgets
    mistune: float = 0.0  # the variant's loss penalty per squared decade above its reference size


def law_loss(law: str, params, tokens) -> np.ndarray:
    n, d = np.asarray(params, float), np.asarray(tokens, float)
    if law == "chinchilla":
        c = CHINCHILLA
        return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
    if law == "kaplan":
        k = KAPLAN
        return ((k["Nc"] / n) ** (k["aN"] / k["aD"]) + k["Dc"] / d) ** k["aD"]
    raise ValueError(f"unknown law {law}")


def multiplier(design: Design, curve: str, budget) -> np.ndarray:
    if curve == BASELINE:
        return np.ones_like(np.asarray(budget, float))
    mid = math.sqrt(design.budgets[0] * design.budgets[-1])
    return design.multiplier * (np.asarray(budget, float) / mid) ** design.multiplier_slope


def _penalty_origin(design: Design) -> float:
    """Log10 size above which the variant's LRs are mistuned: the baseline's optimum at the middle budget."""
    return optimum(design, BASELINE, float(np.median(design.budgets)), penalised=False)[0]


def curve_loss(design: Design, curve: str, budget: float, params, penalised: bool = True) -> np.ndarray:
    """Noise-free final loss of `curve` at `budget` for each size (its tokens are m C / 6N)."""
    n = np.asarray(params, float)
    loss = law_loss(design.law, n, multiplier(design, curve, budget) * budget / (6 * n))
    if penalised and design.mistune and curve != BASELINE:
        excess = np.maximum(np.log10(n) - _penalty_origin(design), 0.0)
        loss = loss + design.mistune * excess**2
    return loss


def optimum(design: Design, curve: str, budget: float, penalised: bool = True) -> tuple[float, float]:
    """(log10 N*, L*) of the noise-free curve, minimised over a continuous size."""
    return _optimum(design, curve, float(budget), penalised)


@lru_cache(maxsize=4096)
def _optimum(design: Design, curve: str, budget: float, penalised: bool) -> tuple[float, float]:
    def f(x: float) -> float:
        return float(curve_loss(design, curve, budget, 10.0**x, penalised))

    guess = 0.5 * math.log10(budget / 120)
    res = optimize.minimize_scalar(
        f, bounds=(guess - 4, guess + 4), method="bounded", options={"xatol": 1e-9}
    )
    return float(res.x), float(res.fun)


def true_multiplier(design: Design, curve: str, reference: str, budget: float) -> float:
    """C'/C where the reference's true L*(C') equals the curve's true L*(C)."""
    target = optimum(design, curve, budget)[1]
    lo, hi = math.log10(budget) - 3, math.log10(budget) + 3
    log_c = optimize.brentq(lambda x: optimum(design, reference, 10**x)[1] - target, lo, hi, xtol=1e-10)
    return 10 ** (log_c - math.log10(budget))


def _grid() -> np.ndarray:
    steps = np.resize(np.array(GRID_STEPS), 120)
    return GRID_START + np.concatenate([[0.0], np.cumsum(steps)]) - 3.0


GRID = _grid()  # log10 sizes, 2..~22


def ladder(design: Design, curve: str, budget: float) -> tuple[np.ndarray, float]:
    """(log10 sizes, log10 guess) of one ladder: the baseline's true optimum off by a drift, the variant's shifted."""
    base = optimum(design, BASELINE, budget, penalised=False)[0]
    guess = (
        base + design.drift * math.sin(2.3 * math.log(budget)) + (design.shift if curve != BASELINE else 0)
    )
    if design.wide:  # an even grid of sizes (so that shapes repeat across budgets, as the planner's do)
        step = design.wide / (design.sizes - 1)
        first = round((guess - design.wide / 2) / step)
        return (first + np.arange(design.sizes)) * step, guess
    centre = int(np.argmin(np.abs(GRID - guess)))
    first = centre - (design.sizes - 1) // 2
    return GRID[first : first + design.sizes], guess


def simulate(design: Design, rng: np.random.Generator) -> pd.DataFrame:
    """One study's table (see the module docstring)."""
    rows = []
    for curve in (BASELINE, VARIANT):
        stem_effects: dict[tuple[float, int], float] = {}
        for budget in design.budgets:
            xs, guess = ladder(design, curve, budget)
            seeded = set(np.argsort(np.abs(xs - guess))[: design.seed_sizes]) if design.seed_sizes else None
            if seeded is not None and design.seed_ends == "both":  # the ladder's two ends seeded too
                seeded |= {0, len(xs) - 1}
            elif seeded is not None and design.seed_ends == "largest":  # the nearest and the largest
                seeded = set(np.argsort(np.abs(xs - guess))[: design.seed_sizes - 1]) | {len(xs) - 1}
            m = float(multiplier(design, curve, budget))
            for i, x in enumerate(xs):
                params = float(10.0**x)
                sd = design.noise * (design.large_noise if i >= len(xs) - 2 else 1.0)
                mean = float(curve_loss(design, curve, budget, params))
                for seed in range(design.seeds if seeded is None or i in seeded else 1):
                    key = (round(x, 9), seed)
                    if design.stems and key not in stem_effects:
                        stem_effects[key] = float(rng.standard_normal())
                    shared = math.sqrt(design.stem_share) * stem_effects[key] if design.stems else 0.0
                    own = math.sqrt(1 - design.stem_share if design.stems else 1.0) * rng.standard_normal()
                    rows.append(
                        {
                            "variant": curve,
                            "budget": budget,
                            "params": params,
                            "tokens": m * budget / (6 * params),
                            "flops": budget,
                            "seed": seed,
                            "stem": f"{curve}-{x:.6f}-s{seed}" if design.stems else "",
                            "val_loss": mean + sd * (shared + own),
                        }
                    )
    return pd.DataFrame(rows)


def truth(design: Design, curve: str, budget: float) -> dict[str, float]:
    """The true N*, D*, L* of a (curve, budget), and the true m and dL against the baseline."""
    x, loss = optimum(design, curve, budget)
    n = 10.0**x
    base_loss = optimum(design, BASELINE, budget)[1]
    return {
        "n_opt": n,
        "d_opt": float(multiplier(design, curve, budget)) * budget / (6 * n),
        "loss_opt": loss,
        "multiplier": true_multiplier(design, curve, BASELINE, budget) if curve != BASELINE else 1.0,
        "delta_loss": loss - base_loss,
    }
