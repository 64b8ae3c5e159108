"""The wall-clock (iso-time) verdict: does a variant reach the baseline's losses in less training time?

The paper's abstract claims MoD models "match baseline performance for equivalent FLOPs and wall-clock times
to train". The isoFLOP verdict (verdict.py) tests the first half; this module the second, from what each run
recorded (summary.json: train_time, its steps only, apart from evaluation, checkpoints and start-up, a branch's
stem's share included as its FLOPs are; and device_kind):

- Per curve, the lower envelope of final loss against training seconds over all its runs (every size, budget,
  learning rate and seed): the least loss reached within t seconds. It plays the role L*(C) plays for FLOPs.
- Per run on the variant's envelope, the time multiplier t_ref(L) / t: how many times its training time the
  reference (the baseline) needs to reach the run's loss L, t_ref read off the reference's envelope by
  interpolating log seconds linearly in loss between its envelope runs. Above 1: the variant is faster to
  train to that loss. Where the reference never reaches L (L below its best) the multiplier is a lower bound
  (">="); where the reference's fastest run already does better, an upper bound ("<=").
- The headline per pair: the geometric mean over the variant's envelope runs whose multiplier is an estimate.
- Interval (5th-95th percentiles): replicates of every run's loss drawn from its curve's noise model (noise.py,
  as the isoFLOP fits draw them: the variance at the run's tokens per parameter, scaled per replicate by the
  curve's nu / chi^2_nu; curves drawn independently), envelopes and multipliers recomputed on each.

Valid only for runs timed on one device kind with one thread count: runs of several are refused (a note
says which). Runs that got less than mfu.LOADED of their cores' time (cpu_share: the machine was loaded, e.g.
other work trained beside them) are named in a note: their seconds are inflated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modexp.mfu import LOADED, describe, read_summaries, study_mfu

from .fits import N_BOOT, PERCENTILES, SEED
from .labels import variant_label
from .points import _differing_settings, curve_labels, reference_curve, run_losses
from .table import BASELINE

COLUMNS = [
    "curve", "reference", "loss", "row", "run_id", "train_time", "run_loss", "reference_time", "multiplier",
    "multiplier_lo", "multiplier_hi", "bound", "n_runs", "device", "note",
]  # fmt: skip


@dataclass
class TimeVerdict:
    """verdict_time.csv (one row per variant envelope run, then one `overall` row per pair) and the notes."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    device: str | None = None  # the one device the runs were timed on


def lower_envelope(times: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Indices of the runs on the lower envelope: each has the least loss of every run at most as long."""
    order = np.argsort(times, kind="stable")
    best, keep = math.inf, []
    for i in order:
        if losses[i] < best:
            best = losses[i]
            keep.append(i)
    return np.array(keep, dtype=int)


def time_to_reach(times: np.ndarray, losses: np.ndarray, target: float) -> tuple[float, str]:
    """(seconds the envelope (times, losses: rising times, falling losses) needs to reach `target`, bound):
    log seconds interpolated linearly in loss; ">=" where it never does, "<=" where its first run does."""
    if target < losses[-1]:
        return float(times[-1]), ">="
    if target >= losses[0]:
        return float(times[0]), "<="
    i = int(np.searchsorted(-losses, -target, side="left"))  # losses[i-1] > target >= losses[i]
    lo, hi = losses[i - 1], losses[i]
    share = (lo - target) / (lo - hi) if lo > hi else 1.0
    return float(np.exp(np.log(times[i - 1]) + share * (np.log(times[i]) - np.log(times[i - 1])))), ""


def _multipliers(t: np.ndarray, loss: np.ndarray, ref_t: np.ndarray, ref_loss: np.ndarray) -> tuple:
    """(multipliers, bounds, reference seconds) of runs (t, loss) against the reference runs' envelope."""
    env = lower_envelope(ref_t, ref_loss)
    et, el = ref_t[env], ref_loss[env]
    reached = [time_to_reach(et, el, value) for value in loss]
    seconds = np.array([r[0] for r in reached])
    return seconds / t, [r[1] for r in reached], seconds


def _headline(multipliers: np.ndarray, bounds: list[str]) -> float:
    estimates = multipliers[[b == "" for b in bounds]]
    return float(np.exp(np.mean(np.log(estimates)))) if estimates.size else math.nan


def _device(df: pd.DataFrame) -> pd.Series:
    kind = df["device_kind"].astype(str) if "device_kind" in df else pd.Series("unknown", index=df.index)
    if "threads" in df:
        threads = pd.to_numeric(df["threads"], errors="coerce")
        kind = kind + threads.map(lambda n: "" if pd.isna(n) else f", {int(n)} thread{'s' if n != 1 else ''}")
    return kind


def _replicate_losses(runs: pd.DataFrame, noise: dict, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, runs) losses drawn from each run's curve's noise model (NaN: the curve's noise unmeasured)."""
    draws = np.full((n_boot, len(runs)), np.nan)
    for k, (curve, members) in enumerate(runs.groupby("curve", sort=True)):
        model = noise.get(curve)
        if model is None:
            continue
        rng = np.random.default_rng([seed, 7, k])
        z = np.log10(members["tokens"].to_numpy(float) / members["params"].to_numpy(float))
        with np.errstate(invalid="ignore", over="ignore"):
            sd = np.sqrt(model.variance(z))
            scale = (
                model.dof / rng.chisquare(model.dof, size=n_boot)
                if model.dof > 0
                else np.full(n_boot, np.nan)
            )
        where = runs.index.get_indexer(members.index)
        draws[:, where] = members["loss"].to_numpy(float) + rng.standard_normal((n_boot, len(members))) * (
            sd * np.sqrt(scale)[:, None]
        )
    return draws


def time_verdict(
    df: pd.DataFrame,
    loss: str,
    noise: dict,
    split_by: tuple[str, ...] = (),
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> TimeVerdict:
    """The iso-time verdict of every variant against the baseline (see the module docstring)."""
    empty = pd.DataFrame(columns=COLUMNS)
    if "train_time" not in df or pd.to_numeric(df["train_time"], errors="coerce").gt(0).sum() == 0:
        return TimeVerdict(empty, ["no iso-time verdict: no run recorded its training seconds (train_time)"])
    runs = df.copy()
    extra, _ = _differing_settings(runs, tuple(split_by))
    runs["curve"] = curve_labels(runs, (*split_by, *extra))
    runs["loss"] = run_losses(runs, loss)
    runs["train_time"] = pd.to_numeric(runs["train_time"], errors="coerce")
    untimed = runs["train_time"].isna() | ~(runs["train_time"] > 0)
    notes = []
    if untimed.any():
        notes.append(
            f"{int(untimed.sum())} run(s) recorded no training seconds: left out of the iso-time verdict"
        )
    runs = runs[~untimed & runs["loss"].notna()]
    devices = _device(runs)
    if devices.nunique() > 1:
        seen = "; ".join(f"{d} ({n} runs)" for d, n in devices.value_counts().items())
        notes.append(f"no iso-time verdict: the runs were timed on {devices.nunique()} device kinds ({seen}); "
                     "training seconds compare only on one: analyze each device's runs apart")  # fmt: skip
        return TimeVerdict(empty, notes)
    if "cpu_share" in runs:
        share = pd.to_numeric(runs["cpu_share"], errors="coerce")
        loaded = runs[share < LOADED]
        if len(loaded):
            notes.append(
                f"the machine was loaded while {len(loaded)} of {len(runs)} runs trained (they got as little as "
                f"{share.min():.0%} of their cores, e.g. {loaded['run_id'].iloc[0]}): their training seconds "
                "are inflated and the iso-time verdict is not to be trusted; rerun on an idle machine"
            )
    device = str(devices.iloc[0]) if len(devices) else None
    runs = runs.reset_index(drop=True)
    draws = _replicate_losses(runs, noise, n_boot, seed)
    rows = []
    for curve in sorted(runs["curve"].unique()):
        variant = str(runs.loc[runs["curve"] == curve, "variant"].iloc[0])
        reference = reference_curve(curve, variant, BASELINE)
        if variant == BASELINE or reference not in set(runs["curve"]):
            continue
        rows += _pair_rows(runs, draws, curve, reference, loss, device)
    return TimeVerdict(pd.DataFrame(rows, columns=COLUMNS), notes, device)


def _pair_rows(
    runs: pd.DataFrame, draws: np.ndarray, curve: str, reference: str, loss: str, device: str | None
) -> list[dict]:
    """The rows of one (variant curve, reference curve) pair: its envelope runs, then the overall row."""
    mine, ref = (runs["curve"] == curve).to_numpy(), (runs["curve"] == reference).to_numpy()
    t, y = runs["train_time"].to_numpy(float), runs["loss"].to_numpy(float)
    env = np.flatnonzero(mine)[lower_envelope(t[mine], y[mine])]
    m, bounds, seconds = _multipliers(t[env], y[env], t[ref], y[ref])
    boot_m, boot_head = [], []
    for draw in draws:
        if np.isnan(draw[env]).any() or np.isnan(draw[ref]).all():
            continue
        bm, bb, _ = _multipliers(t[env], draw[env], t[ref], np.where(np.isnan(draw[ref]), y[ref], draw[ref]))
        boot_m.append(bm)
        # The headline re-chooses the variant's envelope in each replicate, as the estimate did.
        env_b = np.flatnonzero(mine)[lower_envelope(t[mine], draw[mine])]
        hm, hb, _ = _multipliers(t[env_b], draw[env_b], t[ref], draw[ref])
        boot_head.append(_headline(hm, hb))
    lo_hi = np.percentile(np.array(boot_m), PERCENTILES, axis=0) if boot_m else np.full((2, env.size), np.nan)
    base = {"curve": curve, "reference": reference, "loss": loss, "device": device}
    rows = [
        {**base, "row": "run", "run_id": runs["run_id"].iloc[i] if "run_id" in runs else "",
         "train_time": t[i], "run_loss": y[i], "reference_time": seconds[j], "multiplier": m[j],
         "multiplier_lo": lo_hi[0][j], "multiplier_hi": lo_hi[1][j], "bound": bounds[j], "n_runs": 1, "note": ""}
        for j, i in enumerate(env)
    ]  # fmt: skip
    head = _headline(m, bounds)
    finite = np.array([h for h in boot_head if math.isfinite(h)])
    lo, hi = np.percentile(finite, PERCENTILES) if finite.size else (math.nan, math.nan)
    estimates = sum(b == "" for b in bounds)
    note = (
        ""
        if estimates
        else "every envelope run of the variant lies beyond the reference's losses: only bounds"
    )
    rows.append({**base, "row": "overall", "run_id": "", "train_time": math.nan, "run_loss": math.nan,
                 "reference_time": math.nan, "multiplier": head, "multiplier_lo": lo, "multiplier_hi": hi,
                 "bound": "", "n_runs": estimates, "note": note})  # fmt: skip
    return rows


def speed_lines(verdict: TimeVerdict, loss: str, results: pd.DataFrame, sweep_dir=None) -> list[str]:
    """The summary's wall-clock section: the iso-time verdict, then the study's MFU (modexp/mfu.py): from the
    study folder's summaries (its stems included) or, for an external table, from its rows."""
    rows = read_summaries(sweep_dir) if sweep_dir is not None else results.to_dict("records")
    return summary_lines(verdict, loss) + [f"  {describe(study_mfu(rows))}"]


def summary_lines(verdict: TimeVerdict, loss: str) -> list[str]:
    """The summary's section: the headline per pair, the device, and why there is none where there is none."""
    lines = [f"Wall-clock verdict (iso-time, {loss} loss): the reference's training seconds to reach the "
             "variant's losses over the variant's (t > 1: the variant trains faster to them)"]  # fmt: skip
    overall = verdict.table[verdict.table["row"] == "overall"] if len(verdict.table) else verdict.table
    if verdict.device:
        lines.append(f"  timed on {verdict.device}")
    for row in overall.itertuples():
        if math.isfinite(row.multiplier):
            interval = (
                f"[{row.multiplier_lo:.2f}, {row.multiplier_hi:.2f}]"
                if math.isfinite(row.multiplier_lo)
                else "[n/a]"
            )
            lines.append(
                f"  {variant_label(row.curve)} vs {variant_label(row.reference)}: t = {row.multiplier:.2f}x {interval} (geometric mean over "
                f"{row.n_runs} envelope run{'s' if row.n_runs != 1 else ''} of the variant)"
            )
        else:
            lines.append(
                f"  {variant_label(row.curve)} vs {variant_label(row.reference)}: t not estimated: {row.note}"
            )
    if overall.empty:
        lines.append("  none: " + ("; ".join(verdict.notes) or "no variant with a baseline to compare"))
    else:
        lines += [f"  note: {note}" for note in verdict.notes]
    return lines


def read(path) -> pd.DataFrame | None:
    """verdict_time.csv of an earlier analysis, or None."""
    try:
        return pd.read_csv(path).reindex(columns=COLUMNS)
    except (OSError, ValueError):
        return None
