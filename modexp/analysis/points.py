"""From runs to the points of isoFLOP curves, never pooling silently (shared spec, "Hyperparameters, noise").

A point is (curve, budget, size). A curve is a variant, or a variant and the values of the columns the user
splits by. Within a point:
- runs that differ only in seed are averaged (mean, spread and count are kept);
- runs that differ only in learning rate are reduced to the best LR's (seed-averaged) loss; a best LR at the
  smallest or largest LR tried there is flagged (lr_edge: the point is LR-unbracketed);
- any other recorded setting that differs (SETTING_COLUMNS) is refused in one line naming it.

The loss is the causal-routing validation loss by default (the honest autoregressive likelihood for MoD;
baselines have no routing, so theirs is val_loss), or the top-k loss. Each (curve, budget) keeps its losses
as an array [point, LR, seed] so the bootstrap can resample seeds paired across curves and redo the reduction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modexp import summary
from modexp.errors import ModexpError
from modexp.units import sci, si

from .table import BASELINE

LOSSES = {"causal": "val_loss_causal", "topk": "val_loss"}
DEFAULT_LOSS = "causal"
# Run settings that must agree within a point (summary.json's schema). lr and seed are the two axes a point
# reduces over.
SETTING_COLUMNS = summary.SETTINGS
POINT_KEY = ("curve", "budget", "params")


@dataclass
class Group:
    """One (curve, budget): its sizes and losses[point, lr, seed] (NaN where no run)."""

    params: np.ndarray
    tokens: np.ndarray
    losses: np.ndarray
    stems: np.ndarray | None = None  # [point, lr, seed]: the WSD stem each run branched from ('' for none)

    def reduce(self, seed_weights: np.ndarray) -> np.ndarray:
        """Point losses for each row of seed_weights (B, seeds): weighted seed mean, then the best LR -> (B, P)."""
        have = np.isfinite(self.losses)
        total = np.einsum("pls,bs->bpl", np.where(have, self.losses, 0.0), seed_weights)
        weight = np.einsum("pls,bs->bpl", have.astype(float), seed_weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(weight > 0, total / weight, np.inf)
        best = mean.min(axis=2)
        return np.where(np.isfinite(best), best, np.nan)


@dataclass
class Points:
    """The reduced table (one row per point), each group's arrays, the seeds seen, and what was noted."""

    table: pd.DataFrame
    groups: dict[tuple[str, float], Group]
    seeds: list
    loss: str
    notes: list[str] = field(default_factory=list)


def loss_column(loss: str) -> str:
    if loss not in LOSSES:
        raise ModexpError(f"loss={loss} is not allowed: choose one of {', '.join(LOSSES)}")
    return LOSSES[loss]


def _unrouted(df: pd.DataFrame) -> pd.Series:
    """Runs whose top-k loss is already causal: no MoD routing and no mixture of experts (whose expert choice
    over the sequence is not causal either)."""
    if "routing" in df:
        unrouted = df["routing"].fillna("none").astype(str).eq("none")
        if "experts" in df:
            unrouted &= pd.to_numeric(df["experts"], errors="coerce").fillna(0).eq(0)
        return unrouted
    return df["variant"].eq(BASELINE)


def run_losses(df: pd.DataFrame, loss: str) -> pd.Series:
    """Each run's loss under `loss`; NaN for a routed run that has no causal-routing loss."""
    column = loss_column(loss)
    if column == "val_loss":
        return df["val_loss"].astype(float)
    causal = pd.to_numeric(df[column], errors="coerce") if column in df else pd.Series(np.nan, index=df.index)
    return causal.where(~_unrouted(df), df["val_loss"]).astype(float)


def curve_labels(df: pd.DataFrame, split_by: tuple[str, ...]) -> pd.Series:
    for column in split_by:
        if column not in df:
            raise ModexpError(
                f"--split-by {column}: the results have no such column (they have {', '.join(map(str, df.columns))})"
            )
    if not split_by:
        return df["variant"].astype(str)
    suffix = (
        df[list(split_by)]
        .astype(str)
        .apply(lambda row: ", ".join(f"{c}={v}" for c, v in zip(split_by, row)), axis=1)
    )
    return df["variant"].astype(str) + " [" + suffix + "]"


def reference_curve(curve: str, variant: str, reference: str) -> str:
    """The curve of variant `reference` with the same split values as `curve`."""
    return reference + curve[len(variant) :]


def _describe(row: pd.Series) -> str:
    return f"{row['curve']} at budget {sci(row['budget'])}, {si(row['params'])} params"


def _lr_column(df: pd.DataFrame) -> pd.Series:
    """Each run's peak LR: a positive number in every row, or no lr column (one LR per point)."""
    if "lr" not in df:
        return pd.Series(np.nan, index=df.index)
    lr = pd.to_numeric(df["lr"], errors="coerce")
    bad = ~(lr > 0)
    if bad.all() and df["lr"].isna().all():
        return pd.Series(np.nan, index=df.index)
    if bad.any():
        row = df[bad].iloc[0]
        raise ModexpError(
            f"column lr has {'nothing' if pd.isna(row['lr']) else repr(row['lr'])} for {row['variant']} at budget "
            f"{sci(row['budget'])}: every run needs a "
            f"positive learning rate ({int(bad.sum())} row(s) lack one), or drop the column"
        )
    return lr


def _seed_column(df: pd.DataFrame) -> pd.Series:
    """Each run's seed as a label: every row has one, or no seed column (one seed)."""
    if "seed" not in df or df["seed"].isna().all():
        return pd.Series("0", index=df.index)
    if df["seed"].isna().any():
        raise ModexpError(
            f"column seed is empty in {int(df['seed'].isna().sum())} of {len(df)} rows: give every run its seed, "
            "or drop the column"
        )
    return df["seed"].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def _stem_column(df: pd.DataFrame) -> pd.Series:
    """Each run's WSD stem (the run it branched from) as a label; '' for a run trained from scratch. Stems are
    per curve: the same label on two curves names two stems."""
    if "stem" not in df:
        return pd.Series("", index=df.index)
    stem = df["stem"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return (df["curve"].astype(str) + "|" + stem).where(stem != "", "")


# Columns that are outcomes or bookkeeping, never settings: they may differ between the runs of a point.
# summary.json's identity and measurements (summary.py), and the analysis's own columns.
NOT_SETTINGS = {*summary.NOT_SETTINGS, "curve", "loss", "note"}


def _check_settings(df: pd.DataFrame, split_by: tuple[str, ...]) -> list[str]:
    """Refuse a recorded setting that differs within a point; note other columns that do (outcomes?)."""
    key = list(POINT_KEY)
    settings = [c for c in (*SETTING_COLUMNS, "tokens") if c in df and c not in split_by]
    # Text columns are settings (an optimizer's name, a dataset); unknown numeric ones may be outcomes.
    settings += [
        c
        for c in df.columns
        if c not in NOT_SETTINGS
        and c not in settings
        and c not in split_by
        and not c.startswith("val_")
        and not pd.api.types.is_numeric_dtype(df[c])
    ]
    for column in settings:
        values = df[column].map(
            lambda v: "null" if v is None or (isinstance(v, float) and math.isnan(v)) else v
        )
        counts = values.groupby([df[k] for k in key]).nunique()
        if (counts > 1).any():
            where = counts[counts > 1].index[0]
            point = df[(df[key] == pd.Series(where, index=key)).all(axis=1)]
            seen = ", ".join(sorted(map(str, values[point.index].unique())))
            raise ModexpError(
                f"{column} differs within one point ({_describe(point.iloc[0])}: {seen}): modexp pools only seeds "
                f"and learning rates; split the curves by it (modexp analyze DIR --split-by {column}) "
                "or analyze those runs apart"
            )
    twins = df.assign(_lr=df["lr"].fillna(-1)).duplicated(key + ["_lr", "seed"], keep=False)
    if twins.any():
        first = df[twins].iloc[0]
        raise ModexpError(
            f"{int(twins.sum())} runs share curve, budget, size, learning rate and seed ({_describe(first)}): "
            "they differ in something the table does not record; give them a seed or lr column, "
            "or a column to --split-by"
        )
    unknown = [
        c
        for c in df.columns
        if c not in NOT_SETTINGS
        and c not in settings
        and c not in split_by
        and not c.startswith("val_")
        and c not in SETTING_COLUMNS
        and (df.groupby(key)[c].nunique(dropna=False) > 1).any()
    ]
    if unknown:
        return [
            f"column(s) {', '.join(unknown)} differ within a point and were read as outcomes, not settings; "
            "if any is a setting, --split-by it"
        ]
    return []


def _lr_star(lrs: np.ndarray, means: np.ndarray, best: int) -> float:
    """The best LR refined by a parabola in ln(lr) through the best grid point and its two neighbours."""
    if best == 0 or best == len(lrs) - 1:
        return math.nan
    x, y = np.log(lrs[best - 1 : best + 2]), means[best - 1 : best + 2]
    c2, c1, _ = np.polyfit(x, y, 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else math.nan
    return float(np.exp(vertex)) if x[0] <= vertex <= x[-1] else float(lrs[best])


def _differing_settings(df: pd.DataFrame, split_by: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """Settings that must hold along a whole curve (summary.CURVE_SETTINGS) but differ among one variant's
    runs (a comma sweep over model.tie_embeddings, a corpus changed mid-study): each is added to the curves'
    labels, so those runs make separate curves instead of one that alternates between two models."""
    found = []
    for column in summary.CURVE_SETTINGS:
        if column in df and column not in split_by:
            values = df[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
            if (values.groupby(df["variant"]).nunique() > 1).any():
                found.append(column)
    if not found:
        return (), []
    return tuple(found), [
        f"runs of one variant differ in {', '.join(found)}: their curves are split by it "
        f"(labels such as {curve_labels(df.iloc[:1], (*split_by, *found)).iloc[0]})"
    ]


def reduce_points(df: pd.DataFrame, loss: str = DEFAULT_LOSS, split_by: tuple[str, ...] = ()) -> Points:
    """One row per (curve, budget, size): see the module docstring. Raises ModexpError on hidden pooling."""
    df = df.copy()
    split_by = tuple(split_by)
    curve_labels(df, split_by)  # an unknown --split-by column fails first
    extra, notes = _differing_settings(df, split_by)
    split_by += extra
    df["curve"] = curve_labels(df, split_by)
    df["loss"] = run_losses(df, loss)
    missing = df["loss"].isna()
    if missing.any():
        curves = sorted(df.loc[missing, "curve"].unique())
        notes.append(
            f"{int(missing.sum())} run(s) of {', '.join(curves)} have no {loss_column(loss)} "
            f"(causal_router=none?): left out of the {loss} fits"
        )
        df = df[~missing]
    if df.empty:
        raise ModexpError(f"no run has a {loss_column(loss)}: analyze with --loss topk")
    df["lr"] = _lr_column(df)
    df["seed"] = _seed_column(df)
    df["stem"] = _stem_column(df)
    notes += _check_settings(df, tuple(split_by))
    seeds = sorted(df["seed"].unique().tolist())
    seed_index = {s: i for i, s in enumerate(seeds)}

    rows, groups = [], {}
    for (curve, budget), runs in df.groupby(["curve", "budget"], sort=True):
        params = np.sort(runs["params"].unique())
        lrs = np.sort(runs["lr"].dropna().unique()) if runs["lr"].notna().any() else np.array([np.nan])
        losses = np.full((params.size, lrs.size, len(seeds)), np.nan)
        stems = np.full(losses.shape, "", dtype=object)
        for run in runs.itertuples():
            p = int(np.searchsorted(params, run.params))
            lr_i = 0 if np.isnan(lrs[0]) else int(np.searchsorted(lrs, run.lr))
            losses[p, lr_i, seed_index[run.seed]] = run.loss
            stems[p, lr_i, seed_index[run.seed]] = run.stem
        tokens = runs.groupby("params")["tokens"].mean().reindex(params).to_numpy(float)
        groups[(str(curve), float(budget))] = Group(params.astype(float), tokens, losses, stems)
        for p, size in enumerate(params):
            rows.append(_point_row(runs[runs["params"] == size], losses[p], lrs))
    table = pd.DataFrame(rows).reset_index(drop=True)
    return Points(table=table, groups=groups, seeds=seeds, loss=loss, notes=notes)


def _point_row(runs: pd.DataFrame, losses: np.ndarray, lrs: np.ndarray) -> dict:
    """losses: [lr, seed] of one point."""
    with np.errstate(invalid="ignore"):
        means = np.array([np.nanmean(row) if np.isfinite(row).any() else np.inf for row in losses])
    best = int(np.argmin(means))
    tried = np.flatnonzero(np.isfinite(means))
    at_best = losses[best][np.isfinite(losses[best])]
    chosen = runs if np.isnan(lrs[best]) else runs[runs["lr"] == lrs[best]]
    row = chosen.iloc[0].to_dict()
    row.pop("seed", None)
    row.pop("run_id", None)
    row.update(
        loss=float(means[best]),
        loss_std=float(np.std(at_best, ddof=1)) if at_best.size > 1 else math.nan,
        n_seeds=int(at_best.size),
        n_runs=int(len(runs)),
        lr=float(lrs[best]),
        n_lrs=int(tried.size),
        lr_tried_min=float(lrs[tried].min()) if tried.size else math.nan,
        lr_tried_max=float(lrs[tried].max()) if tried.size else math.nan,
        lr_edge=bool(tried.size > 1 and best in (tried[0], tried[-1])),
        lr_star=_lr_star(lrs[tried], means[tried], int(np.searchsorted(tried, best)))
        if tried.size > 2
        else math.nan,
        run_ids=" ".join(map(str, chosen["run_id"])) if "run_id" in chosen else "",
    )
    for column in ("val_loss", "val_loss_causal"):
        if column in chosen:
            row[column] = float(pd.to_numeric(chosen[column], errors="coerce").mean())
    return row
