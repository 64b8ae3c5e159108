"""`modexp selfcheck calibration`: do the verdict's intervals cover the truth as often as they say?

Simulates studies from a known law, runs the real analysis (points -> fits -> verdict -> power laws) on each,
and counts how often each nominal 90% interval holds the true value (docs/verdict.md, "Calibration").

The truth: the Chinchilla refit law of Besiroglu et al. (2024), L = E + A/N^a + B/D^b, C = 6ND, for the
baseline; a variant that reaches at C what the baseline reaches at m C (its isoFLOP curve at C is the
baseline's at m C, with m C / 6N tokens), so its true compute multiplier is m at every budget. Each point's
loss gets normal noise per seed. Ladders sit on a fixed grid of sizes around the 20-tokens-per-parameter
guess, off-centre by an amount that drifts with C, as in a real sweep.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from modexp.errors import ModexpError
from modexp.rundir import atomic_write

from .fits import fit_isoflops, fit_power_laws
from .points import reduce_points
from .verdict import compute_verdict

E, A, B, ALPHA, BETA = 1.82, 482.01, 2085.43, 0.3478, 0.3658  # Besiroglu et al. (2024), Chinchilla refit
A_OPT, B_OPT = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)
NOMINAL = 0.90
VARIANT = "mod_c0.125_e2"


@dataclass(frozen=True)
class Setting:
    """One kind of simulated study."""

    name: str
    seeds: int = 1
    sizes: int = 7
    noise: float = 0.01
    large_noise: float = 1.0  # noise factor at the `large_sizes` largest sizes of each ladder
    large_sizes: int = 0
    multiplier: float = 1.2
    budgets: tuple[float, ...] = (1e18, 10**18.5, 1e19, 10**19.5)
    spacing: float = 0.2  # decades between sizes
    variant_shift: float = 0.1  # decades the variant's ladder sits above the baseline's


SETTINGS = {
    s.name: s
    for s in (
        Setting("1 seed x 5 sizes", seeds=1, sizes=5),
        Setting("1 seed x 7 sizes", seeds=1, sizes=7),
        Setting("3 seeds x 7 sizes", seeds=3, sizes=7),
        Setting("size-dependent noise (3 seeds x 7 sizes)", seeds=3, sizes=7, large_noise=4.0, large_sizes=2),
        Setting("size-dependent noise (1 seed x 7 sizes)", seeds=1, sizes=7, large_noise=4.0, large_sizes=2),
        Setting("no effect (m = 1, 3 budgets 1:2.5:6)", multiplier=1.0, budgets=(1e18, 2.5e18, 6e18)),
    )
}
DEFAULT_SETTINGS = ("1 seed x 5 sizes", "3 seeds x 7 sizes", "size-dependent noise (3 seeds x 7 sizes)")


def law(params, tokens):
    return E + A / np.asarray(params, float) ** ALPHA + B / np.asarray(tokens, float) ** BETA


def optimal_params(budget):
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (np.asarray(budget, float) / 6) ** A_OPT


def optimal_loss(budget):
    n = optimal_params(budget)
    return law(n, np.asarray(budget, float) / (6 * n))


def simulate(setting: Setting, rng: np.random.Generator) -> pd.DataFrame:
    """One study's table: baseline and variant, every budget, every seed."""
    rows = []
    for variant, m, shift in (("baseline", 1.0, 0.0), (VARIANT, setting.multiplier, setting.variant_shift)):
        for budget in setting.budgets:
            guess = math.log10(math.sqrt(budget / 120)) + shift
            first = round(guess / setting.spacing - (setting.sizes - 1) / 2)
            for i in range(setting.sizes):
                params = 10 ** ((first + i) * setting.spacing)
                tokens = m * budget / (6 * params)
                sd = setting.noise * (
                    setting.large_noise if i >= setting.sizes - setting.large_sizes else 1.0
                )
                for seed in range(setting.seeds):
                    rows.append(
                        {
                            "variant": variant,
                            "budget": budget,
                            "params": params,
                            "tokens": tokens,
                            "flops": budget,
                            "seed": seed,
                            "val_loss": float(law(params, tokens)) + sd * rng.standard_normal(),
                        }
                    )
    return pd.DataFrame(rows)


def truth(setting: Setting, curve: str, budget: float) -> dict:
    m = setting.multiplier if curve != "baseline" else 1.0
    n = float(optimal_params(m * budget))
    return {
        "n_opt": n,
        "d_opt": m * budget / (6 * n),
        "loss_opt": float(optimal_loss(m * budget)),
        "multiplier": setting.multiplier,
        "delta_loss": float(optimal_loss(setting.multiplier * budget) - optimal_loss(budget)),
    }


@dataclass
class Tally:
    """Hits and trials per quantity, and the headline's estimates and widths."""

    hits: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    possible: dict[str, int] = field(default_factory=dict)
    headline: list[float] = field(default_factory=list)
    headline_width: list[float] = field(default_factory=list)

    def add(self, quantity: str, covered: bool | None) -> None:
        self.possible[quantity] = self.possible.get(quantity, 0) + 1
        if covered is None:
            return
        self.trials[quantity] = self.trials.get(quantity, 0) + 1
        self.hits[quantity] = self.hits.get(quantity, 0) + int(covered)


def _inside(value: float, lo: float, hi: float) -> bool | None:
    if not (math.isfinite(lo) and math.isfinite(hi)) and not (lo == 0 or hi == math.inf):
        return None
    return bool(lo <= value <= hi)


def analyse_once(df: pd.DataFrame, n_boot: int, seed: int):
    """The analysis `modexp analyze` runs, without its files and figures."""
    points = reduce_points(df, "topk")
    iso = fit_isoflops(points, n_boot=n_boot, seed=seed)
    verdict = compute_verdict(iso.table, iso.boot, points.table)
    return iso, verdict, fit_power_laws(iso.table, iso.boot)


def run_setting(setting: Setting, studies: int, n_boot: int, seed: int = 0) -> Tally:
    tally = Tally()
    for study in range(studies):
        rng = np.random.default_rng([seed, study, zlib.crc32(setting.name.encode())])
        iso, verdict, laws = analyse_once(simulate(setting, rng), n_boot, seed=study)
        for fit in iso.table.itertuples():
            true = truth(setting, fit.curve, fit.budget)
            located = bool(fit.bracketed)
            tally.add("N*", _inside(true["n_opt"], fit.n_opt_lo, fit.n_opt_hi) if located else None)
            tally.add("L*", _inside(true["loss_opt"], fit.loss_opt_lo, fit.loss_opt_hi) if located else None)
            tally.add(
                "D*",
                _inside(true["d_opt"], fit.d_opt_lo, fit.d_opt_hi)
                if located and math.isfinite(fit.d_opt)
                else None,
            )
        for row in verdict.by_budget.itertuples():
            true = truth(setting, row.curve, row.budget)
            tally.add(
                "m",
                _inside(true["multiplier"], row.multiplier_lo, row.multiplier_hi) if row.estimate else None,
            )
            paired = row.bracketed and not row.reference_missing
            tally.add(
                "dL", _inside(true["delta_loss"], row.delta_loss_lo, row.delta_loss_hi) if paired else None
            )
        for row in verdict.overall.itertuples():
            ok = math.isfinite(row.multiplier)
            tally.add(
                "headline m",
                _inside(setting.multiplier, row.multiplier_lo, row.multiplier_hi) if ok else None,
            )
            if ok and math.isfinite(row.multiplier_lo):
                tally.headline.append(math.log(row.multiplier))
                tally.headline_width.append(math.log(row.multiplier_hi / row.multiplier_lo))
        for row in laws.itertuples():
            quantity = "N* exponent" if row.quantity == "n_opt" else "D* exponent"
            exponent = A_OPT if row.quantity == "n_opt" else B_OPT
            tally.add(quantity, _inside(exponent, row.exponent_lo, row.exponent_hi))
    return tally


QUANTITIES = ("m", "headline m", "dL", "N*", "L*", "D*", "N* exponent", "D* exponent")


def coverage_table(tallies: dict[str, Tally]) -> pd.DataFrame:
    """One row per setting: coverage per quantity (with its count), and the headline's width over spread."""
    rows = []
    for name, tally in tallies.items():
        row = {"setting": name}
        for q in QUANTITIES:
            n = tally.trials.get(q, 0)
            row[q] = tally.hits.get(q, 0) / n if n else math.nan
            row[f"{q} n"] = n
            row[f"{q} of"] = tally.possible.get(q, 0)
        if len(tally.headline) > 2:
            spread = np.percentile(tally.headline, 95) - np.percentile(tally.headline, 5)
            row["width / spread"] = float(np.mean(tally.headline_width) / spread) if spread > 0 else math.nan
        else:
            row["width / spread"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def monte_carlo_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def format_table(table: pd.DataFrame, studies: int, n_boot: int, seconds: float) -> str:
    lines = [
        f"Coverage of nominal {NOMINAL:.0%} intervals over {studies} simulated studies per setting "
        f"({n_boot} replicates each; Monte Carlo error about {monte_carlo_error(NOMINAL, studies):.3f} "
        f"at {studies} trials; {seconds:.0f} s):",
        "| setting | " + " | ".join(QUANTITIES) + " | headline width / spread |",
        "|---|" + "---|" * (len(QUANTITIES) + 1),
    ]
    for row in table.to_dict("records"):
        cells = [
            f"{row[q]:.2f} ({row[f'{q} n']})" if math.isfinite(row[q]) else f"n/a ({row[f'{q} of']})"
            for q in QUANTITIES
        ]
        ratio = row["width / spread"]
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines.append(
        "Cells: share of intervals holding the truth (intervals counted). Only estimates are counted: a bracketed "
        "optimum for N*, L*, D*; an m row marked estimate; a dL row with both optima located at a shared budget."
    )
    return "\n".join(lines)


def check_calibration(
    settings: list[str], studies: int, n_boot: int, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    start = time.perf_counter()
    tallies = {name: run_setting(SETTINGS[name], studies, n_boot, seed) for name in settings}
    table = coverage_table(tallies)
    return table, format_table(table, studies, n_boot, time.perf_counter() - start)


def binomial_interval(hits: int, n: int) -> tuple[float, float]:
    """A 99% Clopper-Pearson interval for a coverage: what a small check may assert."""
    lo = stats.beta.ppf(0.005, hits, n - hits + 1) if hits else 0.0
    hi = stats.beta.ppf(0.995, hits + 1, n - hits) if hits < n else 1.0
    return float(lo), float(hi)


def run_check(settings: list[str] | None, studies: int, n_boot: int, out: Path) -> str:
    """`modexp selfcheck calibration`: validate, simulate, write coverage.csv and coverage.md into `out`."""
    if not settings:
        settings = list(DEFAULT_SETTINGS)
    elif "all" in settings:
        settings = list(SETTINGS)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ModexpError(
            f"--setting {unknown[0]!r} is not allowed: choose from {', '.join(repr(s) for s in SETTINGS)}, or all"
        )
    if studies < 10 or n_boot < 50:
        raise ModexpError(
            f"--studies {studies} --replicates {n_boot}: need at least 10 studies and 50 replicates "
            "(a coverage from fewer says nothing; 200 and 200 give about +-0.02)"
        )
    table, text = check_calibration(settings, studies, n_boot)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "coverage.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / "coverage.md", lambda tmp: tmp.write_text(text + "\n"))
    return text + f"\nwritten to {out}/coverage.csv and coverage.md"
