"""Collect a sweep's run folders into one table, fit isoFLOP curves and power laws, summarise.

The method (shared spec, "Fitting"; Hoffmann et al. 2022, Approaches 2 and 3):

- Per (variant, budget): a parabola of val_loss against log10(params). Its vertex is n_opt and
  loss_opt. d_opt is the vertex of a second parabola, val_loss against log10(tokens), rather than
  budget / train_flops_per_token(n_opt): that needs no FLOP convention, so an external table is fitted
  exactly like our own sweeps (it is Chinchilla's Approach 2 for D).
- Interval: bootstrap over runs (resample the budget's runs with replacement, refit, 5th-95th
  percentile of the minima), N_BOOT resamples from a seed fixed per (variant, budget): deterministic.
  Each replicate's minimum is taken within its sampled sizes (its vertex, else the better edge): a
  near-flat resample would otherwise put it decades away. boot_interior is the share of replicates
  whose minimum was a true vertex.
- `bracketed` is False when the params parabola has fewer than 3 distinct sizes, opens downward, or
  puts its vertex within EDGE_MARGIN of either end of the sampled log10 sizes (or beyond): such a
  minimum is an extrapolation and is left out of the power laws.
- Per variant: N* = k C^a and D* = k' C^b by least squares of log10 N* on log10 C over the bracketed
  budgets (at least 2). The exponent interval is the 5th-95th percentile of the same regression
  refitted on each bootstrap replicate of the per-budget optima (it needs no degrees of freedom, so it
  exists with 2 budgets); the regression's standard error is reported alongside.
- Approach 3 cross-check: L = E + A/N^alpha + B/D^beta by a Huber loss (delta 1e-3) on log-loss,
  L-BFGS from Hoffmann's grid of starts; implied a = beta / (alpha + beta).
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from modexp.errors import ModexpError
from modexp.units import count, sci, si

try:  # L-BFGS-B makes many tiny BLAS calls; a multithreaded OpenBLAS makes them ~10x slower on a busy CPU
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it the fit is right, only slower
    threadpool_limits = None

logger = logging.getLogger(__name__)

BASELINE = "baseline"
REQUIRED_TABLE_COLUMNS = ("variant", "budget", "params", "tokens", "flops", "val_loss")
# What a row needs to enter the fits (a sweep's flops column is informative only).
FIT_COLUMNS = ("variant", "budget", "params", "tokens", "val_loss")
N_BOOT = 200
SEED = 0
PERCENTILES = (5.0, 95.0)
EDGE_MARGIN = 0.05  # vertex closer than this fraction of the sampled log10 range to an end: unbracketed
MIN_POWER_LAW_BUDGETS = 2
MIN_A3_POINTS = 10  # Approach 3 has 5 free parameters
MIN_A3_BUDGETS = 2
A3_DELTA = 1e-3
A3_STARTS = 8  # L-BFGS runs from the best points of Hoffmann's grid (4500 points; the best few share a basin)
A3_TOL = 1e-12  # the objective is ~1e-8 near a good fit: scipy's default tolerances would stop at the start
SWEEP_ENV = "MODEXP_SWEEP_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]

FITS_COLUMNS = [
    "variant",
    "budget",
    "n_opt",
    "d_opt",
    "loss_opt",
    "bracketed",
    "n_opt_lo",
    "n_opt_hi",
    "loss_opt_lo",
    "loss_opt_hi",
    "n_runs",
    # extras: the d_opt interval, why a fit is unbracketed, and the parabolas themselves for plotting
    "d_opt_lo",
    "d_opt_hi",
    "n_sizes",
    "params_min",
    "params_max",
    "n_boot",
    "boot_interior",
    "reason",
    "fit_c2",
    "fit_c1",
    "fit_c0",
    "tok_c2",
    "tok_c1",
    "tok_c0",
]
POWER_LAW_COLUMNS = [
    "variant",
    "quantity",
    "exponent",
    "coefficient",
    "exponent_lo",
    "exponent_hi",
    "n_budgets",
    "exponent_se",
    "interval",
]
A3_COLUMNS = [
    "variant",
    "E",
    "A",
    "B",
    "alpha",
    "beta",
    "a_opt",
    "b_opt",
    "n_points",
    "n_budgets",
    "objective",
]


@dataclass
class Collection:
    """What a sweep folder holds: the done runs as a table, run states, and notes on what was skipped."""

    table: pd.DataFrame
    states: dict[str, int]
    notes: list[str]


@dataclass(frozen=True)
class Parabola:
    """loss = c2 x^2 + c1 x + c0 with x = log10(size); vertex at (x_min, y_min)."""

    coef: tuple[float, float, float]
    x_min: float
    y_min: float
    bracketed: bool
    reason: str


@dataclass
class IsoflopFits:
    """Per (variant, budget) fits, plus each group's bootstrap minima (n_boot x [log10 n, log10 d, loss, interior])."""

    table: pd.DataFrame
    boot: dict[tuple[str, float], np.ndarray]


@dataclass
class AnalysisResult:
    summary: str
    results: pd.DataFrame
    fits: pd.DataFrame
    power_laws: pd.DataFrame
    approach3: pd.DataFrame
    out_dir: Path
    figure_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None


# ----------------------------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "status.json").exists() or (path / "summary.json").exists())


def _flatten(value: Any) -> Any:
    # The contract says flat, but a nested value must not break parquet: keep it as JSON text.
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _finite_positive(row: dict, key: str) -> bool:
    try:
        value = float(row[key])
    except (KeyError, TypeError, ValueError):
        return False
    return math.isfinite(value) and (key == "val_loss" or value > 0)


def scan_sweep(sweep_dir: Path) -> Collection:
    """Read every run folder of a sweep; keep runs whose status is done and whose summary is usable."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ModexpError(f"sweep folder {sweep_dir} does not exist: give a folder made by `modexp sweep`")
    rows, notes, states = [], [], Counter()
    for run_dir in sorted(p for p in sweep_dir.iterdir() if _is_run_dir(p)):
        status = _read_json(run_dir / "status.json")
        state = status.get("state", "unknown") if isinstance(status, dict) else "no status.json"
        states[state] += 1
        if state != "done":
            continue
        summary = _read_json(run_dir / "summary.json")
        if not isinstance(summary, dict):
            notes.append(f"{run_dir.name}: done but summary.json is missing or unreadable; skipped")
            continue
        missing = [key for key in FIT_COLUMNS if key != "variant" and not _finite_positive(summary, key)]
        if "variant" not in summary or missing:
            what = ", ".join((["variant"] if "variant" not in summary else []) + missing)
            notes.append(f"{run_dir.name}: summary.json lacks a usable {what}; skipped")
            continue
        row = {key: _flatten(value) for key, value in summary.items()}
        row["run_id"] = run_dir.name  # the folder name is the run id that metrics and samples live under
        rows.append(row)
    if not rows:
        seen = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no run folders"
        raise ModexpError(f"no finished runs in {sweep_dir} ({seen}): analysis needs runs with state done")
    rows, stray = _planned_only(sweep_dir, rows)
    if stray:
        notes.append(
            f"{count(len(stray), 'done run')} no sweep planned into this folder left out (e.g. from `modexp train`; "
            f"their settings may differ from the study's): {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}"
        )
    table = pd.DataFrame(rows)
    for column in FIT_COLUMNS[1:]:  # checked above; a number written as text ("1e12") becomes a number
        table[column] = pd.to_numeric(table[column])
    table["variant"] = table["variant"].astype(str)
    front = [c for c in ("run_id", "variant", "budget", "params", "tokens", "val_loss") if c in table]
    table = table[front + [c for c in table.columns if c not in front]]
    table = table.sort_values(["variant", "budget", "params"], kind="stable").reset_index(drop=True)
    return Collection(table=table, states=dict(states), notes=notes)


def _planned_only(sweep_dir: Path, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep the runs some sweep planned into the folder (plan.json's planned_ids), when it says which."""
    plan = _read_json(sweep_dir / "plan.json")
    planned = plan.get("planned_ids") if isinstance(plan, dict) else None
    if planned is None and isinstance(plan, dict) and isinstance(plan.get("runs"), list):
        planned = [r.get("run_id") for r in plan["runs"] if isinstance(r, dict)]
    if not planned:  # no sweep here (runs from `modexp train` only, or an older folder): take them all
        return rows, []
    planned = set(planned)
    kept = [r for r in rows if r["run_id"] in planned]
    if not kept:  # nothing planned has finished yet: better the stray runs than no answer; the note says so
        return rows, []
    return kept, [r["run_id"] for r in rows if r["run_id"] not in planned]


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per done run with every summary.json column (run_id is the run folder's name)."""
    collection = scan_sweep(sweep_dir)
    for note in collection.notes:
        logger.warning(note)
    return collection.table


def load_table(path: Path) -> pd.DataFrame:
    """Read an external results table; any CSV with variant, budget, params, tokens, flops, val_loss."""
    path = Path(path)
    need = ", ".join(REQUIRED_TABLE_COLUMNS)
    if not path.is_file():
        raise ModexpError(f"table {path} does not exist: give a CSV file with columns {need}")
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModexpError(f"table {path} is not a readable CSV ({first}): need columns {need}") from None
    missing = [c for c in REQUIRED_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ModexpError(f"table {path} lacks column(s) {', '.join(missing)}: need {need}")
    if table.empty:
        raise ModexpError(f"table {path} has no rows: need one row per run with {need}")
    for column in REQUIRED_TABLE_COLUMNS[1:]:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float)) | ((values <= 0) & (column != "val_loss")).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ModexpError(
                f"table {path} column {column} line {row + 2} has {table[column].iloc[row]!r}: "
                f"need a finite {'number' if column == 'val_loss' else 'positive number'} in every row"
            )
        table[column] = values.astype(float)
    table["variant"] = table["variant"].astype(str)
    return table.sort_values(["variant", "budget", "params"], kind="stable").reset_index(drop=True)


def _load_metrics(sweep_dir: Path, run_ids: Iterable[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    sweep_dir = Path(sweep_dir)
    if run_ids is None:
        run_ids = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.jsonl").is_file())
    frames, notes, bad_lines = [], [], 0
    for run_id in run_ids:
        path = sweep_dir / run_id / "metrics.jsonl"
        if not path.is_file():
            notes.append(f"{run_id}: no metrics.jsonl")
            continue
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                bad_lines += line.strip() != ""  # a run killed mid-write leaves a torn last line
                continue
            if isinstance(record, dict) and "kind" in record:
                records.append(record)
        if records:
            frames.append(pd.DataFrame(records).assign(run_id=run_id))
    if bad_lines:
        notes.append(f"{bad_lines} unreadable line(s) in metrics.jsonl files were skipped")
    if not frames:
        return pd.DataFrame(columns=["run_id", "kind"]), notes
    return pd.concat(frames, ignore_index=True), notes


def load_metrics(sweep_dir: Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Every metrics.jsonl line of the given runs (default: all) as one long table with a run_id column."""
    metrics, notes = _load_metrics(sweep_dir, run_ids)
    for note in notes:
        logger.info(note)
    return metrics


def load_routing_sample(run_dir: Path) -> dict | None:
    """A MoD run's routing_sample.json, or None when absent or malformed (layers and selected required)."""
    sample = _read_json(Path(run_dir) / "routing_sample.json")
    if not isinstance(sample, dict) or not sample.get("layers") or not sample.get("selected"):
        return None
    if len(sample["layers"]) != len(sample["selected"]):
        return None
    return sample


def pick_routing_run(results: pd.DataFrame, sweep_dir: Path) -> str | None:
    """The learned-routing run to show: largest budget, then lowest loss, among those with a sample."""
    mod = results[results["variant"] != BASELINE]
    if "routing" in mod:
        mod = mod[mod["routing"] != "random"]
    for run_id in mod.sort_values(["budget", "val_loss"], ascending=[False, True])["run_id"]:
        if load_routing_sample(Path(sweep_dir) / run_id) is not None:
            return str(run_id)
    return None


def _newest_summary_mtime(sweep_dir: Path) -> float:
    return max((p.stat().st_mtime for p in sweep_dir.glob("*/summary.json")), default=-math.inf)


def resolve_sweep_dir(sweep_dir: Path | str | None = None, runs_dir: Path | None = None) -> Path:
    """The given folder, else $MODEXP_SWEEP_DIR, else the newest sweep under <repo>/runs (not runs/_data)."""
    chosen = sweep_dir or os.environ.get(SWEEP_ENV)
    if chosen:
        return Path(chosen)
    runs_dir = Path(runs_dir) if runs_dir else REPO_ROOT / "runs"
    sweeps = [
        p
        for p in (runs_dir.iterdir() if runs_dir.is_dir() else [])
        if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("*/summary.json"))
    ]
    if not sweeps:
        raise ModexpError(
            f"no sweep folder with finished runs under {runs_dir}: run `modexp sweep` or set {SWEEP_ENV}"
        )
    return max(sweeps, key=_newest_summary_mtime)


# ----------------------------------------------------------------------------------------------- fits


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares parabola; vertex (nan, nan) when under 3 distinct x or not opening upward."""
    if np.unique(x).size < 3:
        return np.full(3, np.nan), math.nan, math.nan
    coef = np.polyfit(x, y, 2)
    if not coef[0] > 0:
        return coef, math.nan, math.nan
    x_min = -coef[1] / (2 * coef[0])
    return coef, float(x_min), float(np.polyval(coef, x_min))


def fit_parabola(x: Iterable[float], y: Iterable[float]) -> Parabola:
    """Fit loss against log10(size); say whether the minimum is bracketed by the sampled sizes."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    coef, x_min, y_min = _vertex(x, y)
    if np.unique(x).size < 3:
        reason = "fewer than 3 distinct sizes"
    elif not coef[0] > 0:
        reason = "parabola opens downward"
    else:
        margin = EDGE_MARGIN * (x.max() - x.min())
        reason = (
            "vertex at or below the smallest size"
            if x_min <= x.min() + margin
            else "vertex at or above the largest size"
            if x_min >= x.max() - margin
            else ""
        )
    return Parabola(tuple(float(c) for c in coef), x_min, y_min, bracketed=not reason, reason=reason)


def _group_rng(seed: int, variant: str, budget: float) -> np.random.Generator:
    # A seed per group: adding a variant or a budget leaves every other group's interval unchanged.
    return np.random.default_rng([seed, zlib.crc32(f"{variant}|{budget:.9g}".encode())])


def _minimum_within(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[float, float, bool]:
    """The parabola's minimum over [lo, hi] (sampled sizes), and whether it is interior (a true vertex).

    A resample of five runs often keeps three sizes whose parabola is nearly flat or opens downward; its
    vertex then lands decades away (we saw N* = 1e-32 and a loss of -4). Nothing beyond the sampled sizes
    was measured, so each replicate answers within them, and an edge answer says "at least" or "at most".
    """
    if np.unique(x).size < 3:
        return math.nan, math.nan, False
    coef, x_min, _ = _vertex(x, y)
    if np.isfinite(x_min) and lo < x_min < hi:
        return x_min, float(np.polyval(coef, x_min)), True
    edges = np.array([lo, hi])
    values = np.polyval(coef, edges)
    best = int(np.argmin(values))
    return float(edges[best]), float(values[best]), False


def _bootstrap(
    x_n: np.ndarray, x_d: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Refit both parabolas on runs resampled with replacement: rows of [log10 n, log10 d, loss, interior]."""
    out = np.full((n_boot, 4), np.nan)
    if y.size < 3:
        return out
    for b, idx in enumerate(rng.integers(0, y.size, size=(n_boot, y.size))):
        # Within the replicate's own sizes: a concave fit of three large sizes, extended to the smallest
        # size it never saw, would invent a loss far below every run.
        xn, xd = x_n[idx], x_d[idx]
        out[b, 0], out[b, 2], interior = _minimum_within(xn, y[idx], xn.min(), xn.max())
        out[b, 1] = _minimum_within(xd, y[idx], xd.min(), xd.max())[0]
        out[b, 3] = float(interior) if np.isfinite(out[b, 0]) else math.nan
    return out


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, PERCENTILES)
    return float(lo), float(hi)


def _fit_group(
    variant: str, budget: float, group: pd.DataFrame, n_boot: int, seed: int
) -> tuple[dict, np.ndarray]:
    x_n = np.log10(group["params"].to_numpy(float))
    x_d = np.log10(group["tokens"].to_numpy(float))
    y = group["val_loss"].to_numpy(float)
    by_size, by_tokens = fit_parabola(x_n, y), fit_parabola(x_d, y)
    boot = _bootstrap(x_n, x_d, y, n_boot, _group_rng(seed, variant, budget))
    (n_lo, n_hi), (d_lo, d_hi), (l_lo, l_hi) = (_percentiles(boot[:, k]) for k in range(3))
    row = {
        "variant": variant,
        "budget": budget,
        "n_opt": 10**by_size.x_min,
        "d_opt": 10**by_tokens.x_min,
        "loss_opt": by_size.y_min,
        "bracketed": by_size.bracketed,
        "n_opt_lo": 10**n_lo,
        "n_opt_hi": 10**n_hi,
        "loss_opt_lo": l_lo,
        "loss_opt_hi": l_hi,
        "n_runs": int(y.size),
        "d_opt_lo": 10**d_lo,
        "d_opt_hi": 10**d_hi,
        "n_sizes": int(np.unique(x_n).size),
        "params_min": float(10 ** x_n.min()),
        "params_max": float(10 ** x_n.max()),
        "n_boot": int(np.isfinite(boot[:, 0]).sum()),
        # Share of usable replicates whose minimum lay inside the sampled sizes (1: the interval is a vertex's).
        "boot_interior": float(np.nanmean(boot[:, 3])) if np.isfinite(boot[:, 3]).any() else math.nan,
        "reason": by_size.reason,
        **dict(zip(("fit_c2", "fit_c1", "fit_c0"), by_size.coef)),
        **dict(zip(("tok_c2", "tok_c1", "tok_c0"), by_tokens.coef)),
    }
    return row, boot


def fit_isoflops(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED) -> IsoflopFits:
    """Parabola fits per (variant, budget) with bootstrap intervals; see the module docstring."""
    rows, boot = [], {}
    for (variant, budget), group in df.groupby(["variant", "budget"], sort=True):
        row, samples = _fit_group(str(variant), float(budget), group, n_boot, seed)
        rows.append(row)
        boot[(str(variant), float(budget))] = samples
    return IsoflopFits(table=pd.DataFrame(rows, columns=FITS_COLUMNS), boot=boot)


def _power_law_row(variant: str, quantity: str, used: pd.DataFrame, boot: dict | None) -> dict:
    log_c = np.log10(used["budget"].to_numpy(float))
    log_q = np.log10(used[quantity].to_numpy(float))
    reg = stats.linregress(log_c, log_q)
    row = {
        "variant": variant,
        "quantity": quantity,
        "exponent": float(reg.slope),
        "coefficient": float(10**reg.intercept),
        "n_budgets": int(len(used)),
        "exponent_se": float(reg.stderr) if len(used) > 2 else math.nan,
    }
    column = {"n_opt": 0, "d_opt": 1}[quantity]
    if boot is not None:
        # Replicate b of every budget gives one regression; replicates missing a budget are dropped.
        reps = np.stack([boot[(variant, float(c))][:, column] for c in used["budget"]])
        reps = reps[:, np.isfinite(reps).all(axis=0)]
        slopes = np.polyfit(log_c, reps, 1)[0] if reps.shape[1] else np.array([])
        row["exponent_lo"], row["exponent_hi"] = _percentiles(slopes)
        row["interval"] = f"bootstrap {PERCENTILES[0]:g}-{PERCENTILES[1]:g}% ({slopes.size} replicates)"
    elif len(used) > 2:
        half = stats.t.ppf(PERCENTILES[1] / 100, len(used) - 2) * reg.stderr
        row["exponent_lo"], row["exponent_hi"] = reg.slope - half, reg.slope + half
        row["interval"] = f"t {PERCENTILES[1] - PERCENTILES[0]:g}% from the regression's standard error"
    else:
        row["exponent_lo"] = row["exponent_hi"] = math.nan
        row["interval"] = "none (2 budgets and no bootstrap)"
    return row


def fit_power_laws(
    fits: pd.DataFrame, boot: dict[tuple[str, float], np.ndarray] | None = None
) -> pd.DataFrame:
    """N* = k C^a and D* = k' C^b per variant over bracketed budgets (variants with fewer are left out)."""
    rows = []
    for variant, group in fits.groupby("variant", sort=True):
        for quantity in ("n_opt", "d_opt"):
            used = group[
                group["bracketed"].astype(bool) & np.isfinite(group[quantity]) & (group[quantity] > 0)
            ]
            if len(used) >= MIN_POWER_LAW_BUDGETS:
                rows.append(_power_law_row(str(variant), quantity, used, boot))
    return pd.DataFrame(rows, columns=POWER_LAW_COLUMNS)


def _a3_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple:
    """Hoffmann's objective: sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L), and gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    lse = np.logaddexp.reduce(terms, axis=0)
    resid = lse - log_l
    weights = np.exp(terms - lse)  # d LSE / d term
    dres = np.clip(resid, -A3_DELTA, A3_DELTA)  # d Huber / d resid
    grad = np.array(
        [
            np.sum(dres * weights[0]),
            np.sum(dres * weights[1]),
            np.sum(dres * weights[2]),
            -np.sum(dres * weights[0] * log_n),
            -np.sum(dres * weights[1] * log_d),
        ]
    )
    return float(np.sum(special.huber(A3_DELTA, resid))), grad


def _a3_grid() -> np.ndarray:
    # Hoffmann et al. (2022), appendix D.2: the grid of initialisations for (a, b, e, alpha, beta).
    ab, e, exps = np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5), np.arange(0, 2.01, 0.5)
    return np.array(np.meshgrid(ab, ab, e, exps, exps, indexing="ij")).reshape(5, -1).T


def _a3_grid_losses(grid: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    a, b, e, alpha, beta = (grid[:, k, None] for k in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, a.shape[:1] + log_n.shape)])
    resid = np.logaddexp.reduce(terms, axis=0) - log_l
    return special.huber(A3_DELTA, resid).sum(axis=1)


def fit_approach3_points(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray) -> dict:
    """Fit L = E + A/N^alpha + B/D^beta to points; returns E, A, B, alpha, beta, a_opt, b_opt, objective."""
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(loss)
    grid = _a3_grid()
    starts = grid[np.argsort(_a3_grid_losses(grid, log_n, log_d, log_l))[:A3_STARTS]]
    with threadpool_limits(1) if threadpool_limits else nullcontext():
        runs = [
            optimize.minimize(
                _a3_objective,
                start,
                args=(log_n, log_d, log_l),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": 5000, "ftol": A3_TOL, "gtol": A3_TOL},
            )
            for start in starts
        ]
    best = min(runs, key=lambda res: res.fun)
    a, b, e, alpha, beta = best.x
    return {
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": alpha,
        "beta": beta,
        "a_opt": beta / (alpha + beta) if alpha + beta else math.nan,
        "b_opt": alpha / (alpha + beta) if alpha + beta else math.nan,
        "objective": float(best.fun),
    }


def fit_approach3(df: pd.DataFrame) -> pd.DataFrame:
    """Approach 3 per variant with at least MIN_A3_POINTS runs over MIN_A3_BUDGETS budgets."""
    rows = []
    for variant, group in df.groupby("variant", sort=True):
        if len(group) < MIN_A3_POINTS or group["budget"].nunique() < MIN_A3_BUDGETS:
            continue
        fit = fit_approach3_points(*(group[c].to_numpy(float) for c in ("params", "tokens", "val_loss")))
        rows.append(
            {"variant": str(variant), **fit, "n_points": len(group), "n_budgets": group["budget"].nunique()}
        )
    return pd.DataFrame(rows, columns=A3_COLUMNS)


def baseline_reference(df: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """Per budget, the isoFLOP-optimal baseline: loss and forward FLOPs/token at its fitted optimum.

    Uses the bracketed parabola vertex (FLOPs/token interpolated in log-log between the baseline runs);
    where the baseline fit is unbracketed, the best baseline run stands in. Indexed by budget.
    """
    rows = []
    for budget, runs in df[df["variant"] == BASELINE].groupby("budget"):
        runs = runs.sort_values("params")
        fit = fits[(fits["variant"] == BASELINE) & (fits["budget"] == budget)]
        if len(fit) and bool(fit["bracketed"].iloc[0]):
            n_opt, loss = float(fit["n_opt"].iloc[0]), float(fit["loss_opt"].iloc[0])
            log_fpt = np.interp(
                np.log10(n_opt), np.log10(runs["params"]), np.log10(runs["forward_flops_per_token"])
            )
            rows.append({"budget": budget, "loss_ref": loss, "fpt_ref": 10**log_fpt, "source": "fit"})
        else:
            best = runs.loc[runs["val_loss"].idxmin()]
            rows.append(
                {
                    "budget": budget,
                    "loss_ref": best["val_loss"],
                    "fpt_ref": best["forward_flops_per_token"],
                    "source": "best run",
                }
            )
    return pd.DataFrame(rows, columns=["budget", "loss_ref", "fpt_ref", "source"]).set_index("budget")


# ----------------------------------------------------------------------------------------------- summary


def _speed(row: pd.Series) -> str:
    parts = []
    if pd.notna(row.get("step_time")) and row.get("step_time", 0) > 0:
        parts.append(f"{1 / row['step_time']:.3g} steps/s")
    if pd.notna(row.get("tokens_per_s")):
        parts.append(f"{si(row['tokens_per_s'])} tok/s")
    return ", ".join(parts)


def _best_run_line(row: pd.Series, base_loss: float | None) -> str:
    text = f"    {row['variant']:<22} loss {row['val_loss']:.4f}  params {si(row['params'])}"
    if pd.notna(row.get("forward_flops_per_token")):
        text += f"  fwd {si(row['forward_flops_per_token'], 'FLOP')}/token"
    if speed := _speed(row):
        text += f"  {speed}"
    if pd.notna(row.get("val_loss_causal")):
        text += f"  causal-routing loss {row['val_loss_causal']:.4f}"
        if pd.notna(row.get("val_causal_frac")):
            text += f" ({100 * row['val_causal_frac']:.1f}% processed)"
    if base_loss is not None and row["variant"] != BASELINE:
        text += f"  {100 * (row['val_loss'] - base_loss) / base_loss:+.2f}% vs baseline"
    return text


def _variant_order(variants: Iterable[str]) -> list[str]:
    return sorted(set(variants), key=lambda v: (v != BASELINE, v))


def _best_runs_section(df: pd.DataFrame) -> list[str]:
    lines = [
        "Best run per budget (val loss in nats/token; relative difference = (variant - baseline) / baseline):"
    ]
    for budget, runs in df.groupby("budget", sort=True):
        lines.append(f"  budget {sci(budget)} FLOPs")
        best = runs.loc[runs.groupby("variant")["val_loss"].idxmin()].set_index("variant", drop=False)
        base_loss = float(best.loc[BASELINE, "val_loss"]) if BASELINE in best.index else None
        lines += [_best_run_line(best.loc[v], base_loss) for v in _variant_order(best.index)]
    return lines


def _fits_section(fits: pd.DataFrame) -> list[str]:
    lines = [
        f"isoFLOP optima (parabola in log10 params; d_opt from the parabola in log10 tokens; "
        f"[{PERCENTILES[0]:g}-{PERCENTILES[1]:g}%] bootstrap over runs):"
    ]
    for row in fits.itertuples():
        flag = "" if row.bracketed else f"  UNBRACKETED ({row.reason}; not in the power law)"
        interior = getattr(row, "boot_interior", math.nan)
        if row.bracketed and np.isfinite(interior) and interior < 0.95:
            flag += f"  [interval: {interior:.0%} of resamples found a minimum inside the sizes, the rest an edge]"
        if row.bracketed or "smallest" not in row.reason and "largest" not in row.reason:
            optimum = (
                f"N*={si(row.n_opt)} [{si(row.n_opt_lo)}, {si(row.n_opt_hi)}]  D*={si(row.d_opt)}"
                f"  L*={row.loss_opt:.4f} [{row.loss_opt_lo:.4f}, {row.loss_opt_hi:.4f}]"
            )
        else:  # the vertex is an extrapolation: say on which side of the sampled sizes, not a made-up number
            side = f"<= {si(row.params_min)}" if "smallest" in row.reason else f">= {si(row.params_max)}"
            optimum = f"N* {side} (beyond the sampled sizes; fitted vertex {si(row.n_opt)})"
        lines.append(
            f"  {row.variant:<22} C={sci(row.budget)}  {optimum}  ({count(row.n_runs, 'run')}){flag}"
        )
    return lines


def _power_law_section(laws: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    lines = ["Power laws (least squares of log10 optimum on log10 C over bracketed budgets):"]
    for row in laws.itertuples():
        symbol = "N*" if row.quantity == "n_opt" else "D*"
        lines.append(
            f"  {row.variant:<22} {symbol} = {row.coefficient:.3g} C^{row.exponent:.3f} "
            f"[{row.exponent_lo:.3f}, {row.exponent_hi:.3f}]  ({row.n_budgets} budgets; interval: {row.interval})"
        )
    for variant in _variant_order(fits["variant"]):
        if variant not in set(laws["variant"]):
            n = int(fits[fits["variant"] == variant]["bracketed"].sum())
            lines.append(
                f"  {variant:<22} no power law: {n} bracketed budget(s), need {MIN_POWER_LAW_BUDGETS}"
            )
    return lines


def _approach3_section(a3: pd.DataFrame) -> list[str]:
    if a3.empty:
        return [
            f"Approach 3: not fitted (needs {MIN_A3_POINTS} runs over {MIN_A3_BUDGETS} budgets per variant)."
        ]
    lines = ["Approach 3 cross-check (L = E + A/N^alpha + B/D^beta, Huber on log loss):"]
    for row in a3.itertuples():
        lines.append(
            f"  {row.variant:<22} E={row.E:.3f} A={row.A:.4g} B={row.B:.4g} alpha={row.alpha:.3f} "
            f"beta={row.beta:.3f}  implied a={row.a_opt:.3f}, b={row.b_opt:.3f}  ({row.n_points} points)"
        )
    return lines


def format_summary(
    source: str,
    df: pd.DataFrame,
    fits: pd.DataFrame,
    laws: pd.DataFrame,
    a3: pd.DataFrame,
    states: dict[str, int] | None,
    notes: list[str],
) -> str:
    """The plain-text report `modexp analyze` prints and writes to summary.txt."""
    lines = [f"modexp analysis of {source}"]
    variants = _variant_order(df["variant"])
    lines.append(
        f"variants: {', '.join(variants)}; budgets: {', '.join(f'{b:.3g}' for b in sorted(df['budget'].unique()))}"
    )
    if states is not None:
        lines.append(
            "runs: "
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: kv[0] != "done"))
        )
    for section in (
        _best_runs_section(df),
        _fits_section(fits),
        _power_law_section(laws, fits),
        _approach3_section(a3),
    ):
        lines += [""] + section
    if notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- driver


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    # Parquet wants one type per column; a summary key that is a number in one run and text in another
    # (or null vs text) is written as text.
    out = df.copy()
    for column in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        kinds = {
            type(v) for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))
        }
        if len(kinds) > 1:
            out[column] = out[column].map(lambda v: None if v is None else str(v))
    return out


def _write_results(df: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "results.csv", index=False)
    _arrow_safe(df).to_parquet(folder / "results.parquet", index=False)


def _figure_skips(
    df: pd.DataFrame, fits: pd.DataFrame, metrics: pd.DataFrame | None, sample: dict | None
) -> dict[str, str]:
    """Why each figure cannot be drawn from this data ('' when it can)."""
    has_metrics = metrics is not None and not metrics.empty
    return {
        "isoflop": "",
        "optimal": "" if np.isfinite(fits["n_opt"]).any() else "no budget has a fitted optimum",
        "normalised": (
            "no baseline runs"
            if BASELINE not in set(df["variant"])
            else "the table has no forward_flops_per_token column"
            if "forward_flops_per_token" not in df or df["forward_flops_per_token"].isna().all()
            else ""
        ),
        "learning_curves": "" if has_metrics else "no metrics.jsonl (external table or no metrics written)",
        "routing": "" if sample is not None else "no MoD run with a routing_sample.json",
        "causal_acc": (
            ""
            if has_metrics and "causal_acc" in metrics and metrics["causal_acc"].notna().any()
            else "no causal_acc in any metrics.jsonl"
        ),
    }


def make_figures(
    df: pd.DataFrame,
    fits: pd.DataFrame,
    laws: pd.DataFrame,
    metrics: pd.DataFrame | None,
    sample: dict | None,
    fig_dir: Path,
) -> tuple[dict[str, Path], list[str]]:
    """Write every figure the data allows as PNG + SVG; return {name: png path} and notes on the rest."""
    from modexp import plots  # matplotlib is imported only when figures are drawn

    builders = {
        "isoflop": lambda: plots.isoflop_curves(df, fits),
        "optimal": lambda: plots.optimal_scaling(fits, laws),
        "normalised": lambda: plots.normalised(df, fits),
        "learning_curves": lambda: plots.learning_curves(metrics, df),
        "routing": lambda: plots.routing(sample),
        "causal_acc": lambda: plots.causal_accuracy(metrics, df),
    }
    written, notes = {}, []
    for name, reason in _figure_skips(df, fits, metrics, sample).items():
        if reason:
            notes.append(f"figure {name}.png skipped: {reason}")
            continue
        try:
            written[name] = plots.save(builders[name](), fig_dir, name)
        except Exception as err:  # a figure must never cost the fits and tables already computed
            logger.warning("figure %s failed", name, exc_info=True)
            notes.append(f"figure {name}.png failed: {type(err).__name__}: {err}")
    return written, notes


def analyze(
    sweep_dir: Path | None = None,
    table: Path | None = None,
    out: Path | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    figures: bool = True,
) -> AnalysisResult:
    """Collect (or read a table), fit, draw and summarise; writes every output and returns the summary.

    Sweep mode: results.csv/.parquet go into the sweep folder; fits.csv, power_laws.csv, approach3.csv and
    summary.txt into `out` (default the sweep folder); figures into `out` (default <sweep>/plots).
    Table mode: everything into `out` (default <table dir>/<table stem>-analysis).
    """
    if (sweep_dir is None) == (table is None):
        raise ModexpError("analyze needs exactly one of a sweep folder or --table FILE.csv")
    notes: list[str] = []
    metrics, sample, states = None, None, None
    if table is not None:
        table = Path(table)
        df = load_table(table)
        out_dir = Path(out) if out else table.with_name(f"{table.stem}-analysis")
        fig_dir, source = out_dir, f"table {table}"
        _write_results(df, out_dir)
    else:
        sweep_dir = Path(sweep_dir)
        collection = scan_sweep(sweep_dir)
        df, states, notes = collection.table, collection.states, list(collection.notes)
        out_dir = Path(out) if out else sweep_dir
        fig_dir, source = (Path(out) if out else sweep_dir / "plots"), f"sweep {sweep_dir.name} ({sweep_dir})"
        _write_results(df, sweep_dir)
        metrics, metric_notes = _load_metrics(sweep_dir, df["run_id"])
        notes += metric_notes
        routing_run = pick_routing_run(df, sweep_dir)
        sample = load_routing_sample(sweep_dir / routing_run) if routing_run else None
        if routing_run:
            notes.append(f"routing figure drawn from run {routing_run}")

    iso = fit_isoflops(df, n_boot=n_boot, seed=seed)
    laws = fit_power_laws(iso.table, iso.boot)
    a3 = fit_approach3(df)

    out_dir.mkdir(parents=True, exist_ok=True)
    iso.table.to_csv(out_dir / "fits.csv", index=False)
    laws.to_csv(out_dir / "power_laws.csv", index=False)
    a3.to_csv(out_dir / "approach3.csv", index=False)

    written: dict[str, Path] = {}
    if figures:
        written, figure_notes = make_figures(df, iso.table, laws, metrics, sample, fig_dir)
        notes += figure_notes
        if written:
            notes.append(f"figures (PNG + SVG) in {fig_dir}: {', '.join(written)}")

    summary = format_summary(source, df, iso.table, laws, a3, states, notes)
    (out_dir / "summary.txt").write_text(summary)
    logger.info("analysis written to %s", out_dir)
    return AnalysisResult(
        summary=summary,
        results=df,
        fits=iso.table,
        power_laws=laws,
        approach3=a3,
        out_dir=out_dir,
        figure_dir=fig_dir,
        figures=written,
        notes=notes,
        sweep_dir=sweep_dir,
    )


def load_or_analyze(sweep_dir: Path) -> AnalysisResult:
    """Read the tables a previous analyze() left in the sweep folder, or analyze again if they are stale."""
    sweep_dir = Path(sweep_dir)
    files = {
        name: sweep_dir / name for name in ("results.parquet", "fits.csv", "power_laws.csv", "summary.txt")
    }
    if not all(p.is_file() for p in files.values()) or min(
        p.stat().st_mtime for p in files.values()
    ) < _newest_summary_mtime(sweep_dir):
        return analyze(sweep_dir)
    a3_path = sweep_dir / "approach3.csv"
    return AnalysisResult(
        summary=files["summary.txt"].read_text(),
        results=pd.read_parquet(files["results.parquet"]),
        fits=pd.read_csv(files["fits.csv"], keep_default_na=True).fillna({"reason": ""}),
        power_laws=pd.read_csv(files["power_laws.csv"]),
        approach3=pd.read_csv(a3_path) if a3_path.is_file() else pd.DataFrame(columns=A3_COLUMNS),
        out_dir=sweep_dir,
        figure_dir=sweep_dir / "plots",
        sweep_dir=sweep_dir,
    )
