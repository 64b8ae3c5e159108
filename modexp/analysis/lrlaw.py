"""Learning-rate transfer: lr*(N) = k N^e per variant, fitted to an LR-grid study's best learning rates.

One LR for a whole ladder confounds the comparison (Porian et al. 2024); tuning every run is too dear. The
recipe (docs/verdict.md, "Learning rates"): a small LR grid at the small budgets, the best LR of each point
refined by a parabola in ln(lr) through the best grid LR and its two neighbours, then a power law in log-log
per variant fitted by maximum likelihood, with points whose best LR sits at the edge of the grid entering as
bounds (censored), never as values and never dropped. A study sets each run's LR from that law
(train.lr_from=<grid study folder>, or a preset's train.lr_law); the law records the sizes, budgets and
tokens per parameter it was fitted on, and a run outside them is flagged in the plan and the analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modexp.errors import ModexpError
from modexp.units import si

from .points import DEFAULT_LOSS, reduce_points
from .table import scan_sweep

LAW_COLUMNS = [
    "variant",
    "coefficient",
    "exponent",
    "exponent_se",
    "n_points",
    "n_sizes",
    "params_min",
    "params_max",
    "lr_min",
    "lr_max",
    "n_censored",
    "residual_sd",
    "budget_min",
    "budget_max",
    "tokens_per_param_min",
    "tokens_per_param_max",
]


@dataclass
class LrLaw:
    """lr*(N) per variant, and where it came from."""

    laws: pd.DataFrame  # LAW_COLUMNS, one row per variant
    points: pd.DataFrame  # the grid points behind it: variant, budget, params, lr_star, lr_edge, n_lrs
    source: str

    def lr(self, variant: str, params: float) -> float:
        row = self.laws[self.laws["variant"] == variant]
        if row.empty:
            have = ", ".join(self.laws["variant"]) or "none"
            fix = (
                "give one for its variant kind, e.g. train.lr_law.mod={coefficient:0.5,exponent:-0.3}"
                if self.points.empty
                else "run the LR grid with that variant too"
            )
            where = self.source if self.points.empty else f"train.lr_from={self.source}"
            raise ModexpError(
                f"{where} has no learning-rate law for variant {variant} (it has: {have}): {fix}"
            )
        row = row.iloc[0]
        return float(row["coefficient"] * params ** row["exponent"])

    def outside(self, variant: str, params: float) -> str:
        """'' when params lies within the sizes the variant's law was fitted on, else what it lies outside."""
        row = self.laws[self.laws["variant"] == variant]
        if row.empty:
            return ""
        lo, hi = float(row["params_min"].iloc[0]), float(row["params_max"].iloc[0])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo * 0.999 <= params <= hi * 1.001:
            return ""
        return f"{si(params)} params outside the law's fitted sizes {si(lo)}-{si(hi)}"

    def domain_notes(self, variants: set[str]) -> list[str]:
        """A note per variant whose law does not say which sizes it was fitted on (nothing can be checked)."""
        known = self.laws.dropna(subset=["params_min", "params_max"])["variant"]
        return [
            f"{v}: {self.source} gives no fitted sizes (params_min, params_max): the plan cannot flag runs "
            "outside the law's domain"
            for v in sorted(variants & set(self.laws["variant"]) - set(known))
        ]

    def describe(self, variant: str) -> str:
        row = self.laws[self.laws["variant"] == variant].iloc[0]
        if self.points.empty:
            return f"lr = {row['coefficient']:.4g} * N^{row['exponent']:.3f} from {self.source}"
        return (
            f"lr = {row['coefficient']:.4g} * N^{row['exponent']:.3f} fitted to {row['n_points']} best LRs "
            f"({si(row['params_min'])}-{si(row['params_max'])} params) of {self.source}"
        )

    def record(self) -> dict:
        """What plan.json keeps of the rule."""
        return {"source": self.source, "laws": self.laws.to_dict(orient="records")}


def grid_points(points: pd.DataFrame) -> pd.DataFrame:
    """The points of an LR grid (2 or more LRs tried), with their refined best LR."""
    grid = points[points["n_lrs"] >= 2]
    columns = [
        "variant",
        "budget",
        "params",
        "lr",
        "lr_star",
        "lr_edge",
        "n_lrs",
        "lr_tried_min",
        "lr_tried_max",
        "loss",
        "tokens",
    ]
    return grid[columns].reset_index(drop=True)


def _censored_fit(log_n: np.ndarray, log_lr: np.ndarray, side: np.ndarray) -> tuple[float, float, float]:
    from scipy import optimize, stats  # here, not at the top: planning with a preset's law never fits one

    """(intercept, slope, sd) of log lr* = a + b log N by maximum likelihood with censored points (Tobit).

    side: 0 for an interior best LR (lr* measured), +1 for one at the grid's top edge (lr* >= that LR),
    -1 at the bottom edge (lr* <= it). An edge point says where lr* is not: dropping it would bias the law
    toward the grid's interior at exactly the sizes the grid failed to bracket.
    """
    interior = side == 0
    slope, intercept = np.polyfit(log_n[interior], log_lr[interior], 1)
    spread = np.std(log_lr[interior] - (intercept + slope * log_n[interior]), ddof=min(2, interior.sum() - 1))
    start = np.array([intercept, slope, math.log(max(spread, 0.05))])

    def nll(theta: np.ndarray) -> float:
        a, b, log_sd = theta
        sd = math.exp(log_sd)
        z = (log_lr - (a + b * log_n)) / sd
        ll = np.where(
            side == 0,
            stats.norm.logpdf(z) - log_sd,
            np.where(side > 0, stats.norm.logsf(z), stats.norm.logcdf(z)),
        )
        return -float(ll.sum())

    res = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000}
    )
    a, b, log_sd = res.x
    return float(a), float(b), float(math.exp(log_sd))


def fit_lr_laws(grid: pd.DataFrame) -> pd.DataFrame:
    """A power law per variant over the grid points at 2 or more sizes: interior best LRs (refined lr*) as
    measurements, edge ones as censored bounds (see _censored_fit). Records the domain it was fitted on."""
    rows = []
    for variant, group in grid.groupby("variant", sort=True):
        edge = group["lr_edge"].astype(bool).to_numpy()
        interior = ~edge & np.isfinite(group["lr_star"].to_numpy(float))
        if group.loc[interior, "params"].nunique() < 2:
            continue
        at_top = edge & (group["lr"].to_numpy(float) >= group["lr_tried_max"].to_numpy(float))
        side = np.where(interior, 0, np.where(at_top, 1, -1))
        used = interior | edge
        lr_obs = np.where(interior, group["lr_star"].to_numpy(float), group["lr"].to_numpy(float))
        log_n = np.log(group["params"].to_numpy(float))[used]
        a, b, sd = _censored_fit(log_n, np.log(lr_obs[used]), side[used])
        tokens_per_param = (
            (group["tokens"] / group["params"]) if "tokens" in group else pd.Series(dtype=float)
        )
        rows.append(
            {
                "variant": str(variant),
                "coefficient": float(math.exp(a)),
                "exponent": b,
                "exponent_se": math.nan,
                "n_points": int(interior.sum()),
                "n_sizes": int(group.loc[used, "params"].nunique()),
                "params_min": float(group.loc[used, "params"].min()),
                "params_max": float(group.loc[used, "params"].max()),
                "lr_min": float(group["lr_tried_min"].min()),
                "lr_max": float(group["lr_tried_max"].max()),
                "n_censored": int(edge.sum()),
                "residual_sd": sd,
                "budget_min": float(group["budget"].min()),
                "budget_max": float(group["budget"].max()),
                "tokens_per_param_min": float(tokens_per_param.min()) if len(tokens_per_param) else math.nan,
                "tokens_per_param_max": float(tokens_per_param.max()) if len(tokens_per_param) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=LAW_COLUMNS)


def lr_law_from_config(laws: dict[str, tuple[float, ...]]) -> LrLaw:
    """Laws given as numbers (train.lr_law in a preset), keyed by variant label: (coefficient, exponent) or
    (coefficient, exponent, params_min, params_max), the last two the sizes the law was fitted on."""
    rows = [
        {
            "variant": v,
            "coefficient": law[0],
            "exponent": law[1],
            "params_min": law[2] if len(law) > 2 and law[2] is not None else math.nan,
            "params_max": law[3] if len(law) > 3 and law[3] is not None else math.nan,
        }
        for v, law in laws.items()
    ]
    return LrLaw(
        laws=pd.DataFrame(rows).reindex(columns=LAW_COLUMNS), points=pd.DataFrame(), source="train.lr_law"
    )


def lr_law_from_study(study_dir: Path | str, loss: str = DEFAULT_LOSS) -> LrLaw:
    """Fit lr*(N) per variant to a finished LR-grid study folder; one clear line when it cannot."""
    study_dir = Path(study_dir)
    source = str(study_dir)
    if not study_dir.is_dir():
        raise ModexpError(
            f"train.lr_from={source} is not a folder: give a finished LR-grid study, "
            "e.g. modexp sweep sweep.lr_grid=[1e-3,3e-3,1e-2] sweep.name=lr-grid, then train.lr_from=runs/lr-grid"
        )
    points = reduce_points(scan_sweep(study_dir).table, loss).table
    grid = grid_points(points)
    if grid.empty:
        raise ModexpError(
            f"train.lr_from={source}: its runs tried one learning rate per point, no LR grid to fit"
        )
    laws = fit_lr_laws(grid)
    missing = sorted(set(grid["variant"]) - set(laws["variant"]))
    if missing:
        edge = grid[grid["variant"].isin(missing)]
        raise ModexpError(
            f"train.lr_from={source}: variant(s) {', '.join(missing)} have an interior best LR at fewer than 2 "
            f"sizes ({int(edge['lr_edge'].sum())} of {len(edge)} points at the edge of the grid "
            f"{edge['lr_tried_min'].min():g}-{edge['lr_tried_max'].max():g}): widen the grid and rerun it"
        )
    return LrLaw(laws=laws, points=grid, source=source)
