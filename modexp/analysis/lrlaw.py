"""Learning-rate transfer: lr*(N) = k N^e per variant, fitted to an LR-grid study's best learning rates.

One LR for a whole ladder confounds the comparison (Porian et al. 2024); tuning every run is too dear. The
recipe (shared notes, round2-research.md section 1): a small LR grid at the small budgets, the best LR of
each point refined by a parabola in ln(lr) through the best grid LR and its two neighbours, points whose
best LR sits at the edge of the grid left out (never extrapolated), then a least-squares power law in
log-log per variant. A study sets each run's LR from that law (train.lr_from=<grid study folder>).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

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
    ]
    return grid[columns].reset_index(drop=True)


def fit_lr_laws(grid: pd.DataFrame) -> pd.DataFrame:
    """A power law per variant over the LR-bracketed grid points (refined lr*) at 2 or more sizes."""
    rows = []
    for variant, group in grid.groupby("variant", sort=True):
        used = group[~group["lr_edge"].astype(bool) & np.isfinite(group["lr_star"])]
        if used["params"].nunique() < 2:
            continue
        log_n, log_lr = np.log(used["params"].to_numpy(float)), np.log(used["lr_star"].to_numpy(float))
        reg = stats.linregress(log_n, log_lr)
        rows.append(
            {
                "variant": str(variant),
                "coefficient": float(math.exp(reg.intercept)),
                "exponent": float(reg.slope),
                "exponent_se": float(reg.stderr) if len(used) > 2 else math.nan,
                "n_points": int(len(used)),
                "n_sizes": int(used["params"].nunique()),
                "params_min": float(used["params"].min()),
                "params_max": float(used["params"].max()),
                "lr_min": float(group["lr_tried_min"].min()),
                "lr_max": float(group["lr_tried_max"].max()),
            }
        )
    return pd.DataFrame(rows, columns=LAW_COLUMNS)


def lr_law_from_config(laws: dict[str, tuple[float, float]]) -> LrLaw:
    """Laws given as numbers (train.lr_law in a preset), keyed by variant label."""
    rows = [{"variant": v, "coefficient": k, "exponent": e} for v, (k, e) in laws.items()]
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
