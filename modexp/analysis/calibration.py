"""`modexp selfcheck calibration`: on studies shaped like the ones modexp plans, do the estimates sit on the
truth and do the intervals cover it as often as they say?

Each design (simulate.py) is simulated `studies` times; each study goes through the analysis `modexp analyze`
runs (points -> fits -> verdict -> power laws), and every estimate is compared with the truth read off the
noise-free curves (docs/verdict.md, "Calibration"):
- coverage: the share of nominal 90% intervals that hold the truth (L*, N*, D*, dL, m per budget, the
  headline m, m's slope with compute, the N* and D* exponents);
- bias: the mean error of the estimates (L* in nats; N* in decades; m and the headline in ln m; slopes);
- under no effect (m = 1 at every budget): how often the headline excludes 1 (should be about 10%), and how
  often a trend is claimed (the heterogeneity test; about 5%).
The truth of the headline is the geometric mean of the true m over the budgets the headline used, and the
truth of a slope is the least-squares slope of the true values over the budgets that slope used.
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

from . import simulate as sim
from .fits import fit_isoflops, fit_power_laws
from .points import reduce_points
from .verdict import compute_verdict

NOMINAL = 0.90
D = sim.Design
PRESETS = {"seeds": 2, "seed_sizes": 2, "stems": True, "stem_share": 0.6}  # what demo, cpu and gpu plan
DESIGNS = {
    d.name: d
    for d in (
        D("presets", "the presets' design: WSD stems (60% shared), a second seed at 2 sizes", **PRESETS),
        D(
            "presets-noisy-ends",
            "the same, noise 4x at the 2 largest sizes of each ladder",
            large_noise=4.0,
            **PRESETS,
        ),
        D(
            "stems-95",
            "stems sharing 95% of the noise, 1 seed, 4 budgets",
            budgets=(1e18, 3e18, 1e19, 3e19),
            stems=True,
            stem_share=0.95,
        ),
        D("cosine", "1 seed per size, every run from scratch"),
        D("kaplan-shifted", "Kaplan's law, MoD's ladder 2x higher", law="kaplan", shift=0.3, noise=0.005),
        D(
            "kaplan-null",
            "Kaplan's law, no effect (m = 1), MoD's ladder 2x higher",
            law="kaplan",
            shift=0.3,
            noise=0.005,
            multiplier=1.0,
        ),
        D("presets-null", "the presets' design, no effect (m = 1)", multiplier=1.0, **PRESETS),
        D(
            "chinchilla-wide",
            "Chinchilla's law, 12 sizes over 2.5 decades, 1 seed",
            budgets=(1e18, 1e19, 1e20, 1e21),
            sizes=12,
            wide=2.5,
            noise=0.005,
        ),
        D(
            "kaplan-wide",
            "Kaplan's law, 8 sizes over 2 decades, 1 seed",
            law="kaplan",
            budgets=(1e17, 1e18, 1e19, 1e20),
            sizes=8,
            wide=2.0,
            noise=0.005,
        ),
        D("mistuned", "the presets' design, MoD's LRs mistuned at large sizes", mistune=0.03, **PRESETS),
        D("two-budgets", "the presets' design on 2 budgets (1e18, 6e18)", budgets=(1e18, 6e18), **PRESETS),
        D(
            "m-trend",
            "m falls with C, 1.7x to 0.85x over 4 budgets, 1 seed",
            budgets=(1e18, 3e18, 1e19, 3e19),
            multiplier=1.2,
            multiplier_slope=-0.2,
            noise=0.005,
        ),
    )
}
DEFAULT_DESIGNS = tuple(DESIGNS)
QUANTITIES = ("L*", "N*", "D*", "dL", "m", "headline m", "m slope", "N* exponent", "D* exponent")
BIASES = ("L*", "N*", "m", "headline m", "m slope")


@dataclass
class Tally:
    """Per quantity: hits and trials of the coverage, and the errors of the estimates."""

    hits: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)
    null_exclusions: list[bool] = field(default_factory=list)
    trends_claimed: list[bool] = field(default_factory=list)
    headline_width: list[float] = field(default_factory=list)

    def add(self, quantity: str, truth: float, estimate: float, lo: float, hi: float) -> None:
        if math.isfinite(estimate):
            self.errors.setdefault(quantity, []).append(estimate - truth)
        if math.isfinite(lo) and math.isfinite(hi):
            self.trials[quantity] = self.trials.get(quantity, 0) + 1
            self.hits[quantity] = self.hits.get(quantity, 0) + int(lo <= truth <= hi)


def analyse_once(df: pd.DataFrame, n_boot: int, seed: int):
    """The analysis `modexp analyze --table` runs (the top-k column is the only loss a table has)."""
    points = reduce_points(df, "topk")
    iso = fit_isoflops(points, n_boot=n_boot, seed=seed)
    verdict = compute_verdict(iso.table, iso.boot, points.table)
    return iso, verdict, fit_power_laws(iso.table, iso.boot)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def _ln(x: float) -> float:
    return math.log(x) if x > 0 else math.nan


def _slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(xs, ys, 1)[0]) if len(set(xs)) >= 2 else math.nan


def _tally_fits(design: sim.Design, fits: pd.DataFrame, tally: Tally) -> None:
    for fit in fits.itertuples():
        if not fit.bracketed:
            continue
        true = sim.truth(design, fit.curve, fit.budget)
        tally.add("L*", true["loss_opt"], fit.loss_opt, fit.loss_opt_lo, fit.loss_opt_hi)
        tally.add("N*", _log10(true["n_opt"]), _log10(fit.n_opt), _log10(fit.n_opt_lo), _log10(fit.n_opt_hi))
        if math.isfinite(fit.d_opt):
            tally.add(
                "D*", _log10(true["d_opt"]), _log10(fit.d_opt), _log10(fit.d_opt_lo), _log10(fit.d_opt_hi)
            )


def _tally_verdict(design: sim.Design, by_budget: pd.DataFrame, overall: pd.DataFrame, tally: Tally) -> None:
    for row in by_budget.itertuples():
        true = sim.truth(design, row.curve, row.budget)
        if row.bracketed and not row.reference_missing:
            tally.add("dL", true["delta_loss"], row.delta_loss, row.delta_loss_lo, row.delta_loss_hi)
        if row.estimate:
            tally.add(
                "m",
                _ln(true["multiplier"]),
                _ln(row.multiplier),
                _ln(row.multiplier_lo),
                _ln(row.multiplier_hi),
            )
    for pair in overall.itertuples():
        rows = by_budget[(by_budget["curve"] == pair.curve) & (by_budget["estimate"].astype(bool))]
        budgets = rows["budget"].tolist()
        if not budgets:
            continue
        true_ln = [_ln(sim.truth(design, pair.curve, b)["multiplier"]) for b in budgets]
        heterogeneous = bool(getattr(pair, "heterogeneous", False))
        if math.isfinite(pair.multiplier) and not heterogeneous:
            tally.add(
                "headline m",
                float(np.mean(true_ln)),
                _ln(pair.multiplier),
                _ln(pair.multiplier_lo),
                _ln(pair.multiplier_hi),
            )
            if math.isfinite(pair.multiplier_lo):
                tally.headline_width.append(_ln(pair.multiplier_hi) - _ln(pair.multiplier_lo))
        slope = getattr(pair, "m_slope", math.nan)
        if len(budgets) >= 2 and math.isfinite(slope):
            true_slope = _slope([math.log(b) for b in budgets], true_ln)
            tally.add("m slope", true_slope, slope, pair.m_slope_lo, pair.m_slope_hi)
        if design.multiplier == 1.0 and design.multiplier_slope == 0.0:
            tally.trends_claimed.append(heterogeneous)
            if math.isfinite(pair.multiplier_lo) and not heterogeneous:
                tally.null_exclusions.append(not pair.multiplier_lo <= 1.0 <= pair.multiplier_hi)


def _tally_laws(design: sim.Design, fits: pd.DataFrame, laws: pd.DataFrame, tally: Tally) -> None:
    for law in laws.itertuples():
        used = fits[(fits["curve"] == law.curve) & fits["bracketed"].astype(bool)]
        used = used[np.isfinite(used[law.quantity])]
        budgets = used["budget"].tolist()
        key = "n_opt" if law.quantity == "n_opt" else "d_opt"
        true = [_log10(sim.truth(design, law.curve, b)[key]) for b in budgets]
        name = "N* exponent" if law.quantity == "n_opt" else "D* exponent"
        tally.add(
            name,
            _slope([math.log10(b) for b in budgets], true),
            law.exponent,
            law.exponent_lo,
            law.exponent_hi,
        )


def run_design(design: sim.Design, studies: int, n_boot: int, seed: int = 0) -> Tally:
    tally = Tally()
    for study in range(studies):
        rng = np.random.default_rng([seed, study, zlib.crc32(design.name.encode())])
        iso, verdict, laws = analyse_once(sim.simulate(design, rng), n_boot, seed=study)
        _tally_fits(design, iso.table, tally)
        _tally_verdict(design, verdict.by_budget, verdict.overall, tally)
        _tally_laws(design, iso.table, laws, tally)
    return tally


def coverage_table(tallies: dict[str, Tally]) -> pd.DataFrame:
    """One row per design: coverage and count per quantity, bias per estimate, the null rates."""
    rows = []
    for name, tally in tallies.items():
        row: dict = {"design": name}
        for q in QUANTITIES:
            n = tally.trials.get(q, 0)
            row[q] = tally.hits.get(q, 0) / n if n else math.nan
            row[f"{q} n"] = n
        for q in BIASES:
            errors = tally.errors.get(q, [])
            row[f"{q} bias"] = float(np.mean(errors)) if errors else math.nan
        row["null excludes 1"] = float(np.mean(tally.null_exclusions)) if tally.null_exclusions else math.nan
        row["null trend claimed"] = float(np.mean(tally.trends_claimed)) if tally.trends_claimed else math.nan
        row["null n"] = len(tally.trends_claimed)
        rows.append(row)
    return pd.DataFrame(rows)


def monte_carlo_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def _cell(value: float, n: int | None = None, fmt: str = "{:.2f}") -> str:
    if not math.isfinite(value):
        return "n/a"
    return fmt.format(value) + (f" ({n})" if n is not None else "")


def format_table(table: pd.DataFrame, studies: int, n_boot: int, seconds: float) -> str:
    lines = [
        f"Coverage of nominal {NOMINAL:.0%} intervals over {studies} simulated studies per design ({n_boot} "
        f"replicates each; Monte Carlo error about {monte_carlo_error(NOMINAL, studies):.3f} at {studies} "
        f"trials; {seconds:.0f} s). Cells: share of intervals holding the truth (intervals counted).",
        "| design | " + " | ".join(QUANTITIES) + " |",
        "|---|" + "---|" * len(QUANTITIES),
    ]
    for row in table.to_dict("records"):
        cells = [_cell(row[q], row[f"{q} n"]) for q in QUANTITIES]
        lines.append(f"| {row['design']} | " + " | ".join(cells) + " |")
    lines += ["", "Designs:"] + [
        f"- {name}: {DESIGNS[name].about}" for name in table["design"] if name in DESIGNS
    ]
    lines += [
        "",
        "Bias (mean error of the estimate): L* in nats, N* in decades, m and the headline in ln m, m's slope in "
        "ln m per ln C; under no effect, how often the headline excludes m = 1 and how often a trend is claimed.",
        "| design | L* | N* | m | headline m | m slope | null: excludes 1 | null: trend claimed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.to_dict("records"):
        biases = [_cell(row[f"{q} bias"], fmt="{:+.4f}") for q in BIASES]
        null = [_cell(row["null excludes 1"]), _cell(row["null trend claimed"], row["null n"])]
        lines.append(f"| {row['design']} | " + " | ".join(biases + null) + " |")
    return "\n".join(lines)


def check_calibration(
    designs: list[str], studies: int, n_boot: int, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    start = time.perf_counter()
    tallies = {name: run_design(DESIGNS[name], studies, n_boot, seed) for name in designs}
    table = coverage_table(tallies)
    return table, format_table(table, studies, n_boot, time.perf_counter() - start)


def binomial_interval(hits: int, n: int) -> tuple[float, float]:
    """A 99% Clopper-Pearson interval for a coverage: what a small check may assert."""
    lo = stats.beta.ppf(0.005, hits, n - hits + 1) if hits else 0.0
    hi = stats.beta.ppf(0.995, hits + 1, n - hits) if hits < n else 1.0
    return float(lo), float(hi)


def run_check(designs: list[str] | None, studies: int, n_boot: int, out: Path) -> str:
    """`modexp selfcheck calibration`: validate, simulate, write coverage.csv and coverage.md into `out`."""
    if not designs or "all" in designs:
        designs = list(DEFAULT_DESIGNS)
    unknown = [s for s in designs if s not in DESIGNS]
    if unknown:
        raise ModexpError(
            f"--setting {unknown[0]!r} is not allowed: choose from {', '.join(DESIGNS)}, or all"
        )
    if studies < 10 or n_boot < 50:
        raise ModexpError(
            f"--studies {studies} --replicates {n_boot}: need at least 10 studies and 50 replicates "
            "(a coverage from fewer says nothing; 200 and 200 give about +-0.02)"
        )
    table, text = check_calibration(designs, studies, n_boot)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "coverage.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / "coverage.md", lambda tmp: tmp.write_text(text + "\n"))
    return text + f"\nwritten to {out}/coverage.csv and coverage.md"
