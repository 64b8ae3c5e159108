"""A study's inputs: the runs of a sweep folder (or an external CSV) as one table, metrics, routing samples.

One row per run, every summary.json key a column. Nothing here reduces or fits: see points.py and fits.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from modexp.errors import ModexpError
from modexp.units import count

logger = logging.getLogger(__name__)

BASELINE = "baseline"
REQUIRED_TABLE_COLUMNS = ("variant", "budget", "params", "tokens", "flops", "val_loss")
# What a row needs to enter the fits (a sweep's flops column is informative only).
FIT_COLUMNS = ("variant", "budget", "params", "tokens", "val_loss")
SWEEP_ENV = "MODEXP_SWEEP_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Collection:
    """What a sweep folder holds: the done runs as a table, run states, and notes on what was skipped."""

    table: pd.DataFrame
    states: dict[str, int]
    notes: list[str]


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
    rows, notes, states, filled = [], [], Counter(), 0
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
        if "lr" not in row:
            filled += _hyperparameters_from_config(run_dir, row)
        rows.append(row)
    if not rows:
        seen = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no run folders"
        raise ModexpError(f"no finished runs in {sweep_dir} ({seen}): analysis needs runs with state done")
    if filled:
        notes.append(
            f"{count(filled, 'run')} predate hyperparameters in summary.json: lr, seed and the rest read from config.yaml"
        )
    rows, stray, unchecked = _planned_only(sweep_dir, rows)
    if unchecked:
        notes.append(unchecked)
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


_CONFIG_HYPERPARAMETERS = {
    "lr": ("train", "lr"),
    "seed": ("seed",),
    "beta1": ("train", "beta1"),
    "beta2": ("train", "beta2"),
    "weight_decay": ("train", "weight_decay"),
    "warmup_fraction": ("train", "warmup_fraction"),
    "max_warmup_steps": ("train", "max_warmup_steps"),
    "min_lr_ratio": ("train", "min_lr_ratio"),
    "grad_clip": ("train", "grad_clip"),
    "precision": ("train", "precision"),
    "eval_tokens": ("train", "eval_tokens"),
}


def _hyperparameters_from_config(run_dir: Path, row: dict) -> int:
    """Fill a run's hyperparameters from its config.yaml (summaries written before they were recorded).

    Without them, runs that differ only in LR or seed would look like twins (or, worse, be pooled).
    Returns 1 when anything was filled.
    """
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return 0
    found = 0
    for column, path in _CONFIG_HYPERPARAMETERS.items():
        value: Any = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if column not in row and value is not None:
            row[column], found = value, 1
    return found


def _planned_only(sweep_dir: Path, rows: list[dict]) -> tuple[list[dict], list[str], str]:
    """Keep the runs some sweep planned into the folder (plan.json's planned_ids), when it says which.

    Returns (kept rows, stray run ids, a note when every run was kept unchecked)."""
    plan = _read_json(sweep_dir / "plan.json")
    planned = plan.get("planned_ids") if isinstance(plan, dict) else None
    if planned is None and isinstance(plan, dict) and isinstance(plan.get("runs"), list):
        planned = [r.get("run_id") for r in plan["runs"] if isinstance(r, dict)]
    if not planned:  # no sweep here (runs from `modexp train` only, or an older folder): take them all
        why = "is missing or unreadable" if not isinstance(plan, dict) else "lists no planned run"
        return (
            rows,
            [],
            (
                f"plan.json {why}: all {count(len(rows), 'done run')} in the folder entered the fits, whichever "
                "sweep or `modexp train` made them (stray runs are not told apart)"
            ),
        )
    planned = set(planned)
    kept = [r for r in rows if r["run_id"] in planned]
    if not kept:  # nothing planned has finished yet: better the stray runs than no answer; the note says so
        return (
            rows,
            [],
            (
                f"no run plan.json plans has finished: the fits use the {count(len(rows), 'done run')} no sweep "
                "planned into this folder (their settings may differ from the study's)"
            ),
        )
    return kept, [r["run_id"] for r in rows if r["run_id"] not in planned], ""


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per done run with every summary.json column (run_id is the run folder's name)."""
    collection = scan_sweep(sweep_dir)
    for note in collection.notes:
        logger.warning(note)
    return collection.table


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


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
        bad = ~np.isfinite(values.to_numpy(float)) | (values <= 0).to_numpy()  # a loss too: fits take its log
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ModexpError(
                f"table {path} column {column} line {row + 2} has {_shown(table[column].iloc[row])}: "
                "need a finite positive number in every row"
            )
        table[column] = values.astype(float)
    empty = table["variant"].isna() | (table["variant"].astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ModexpError(f"table {path} column variant line {row + 2} is empty: name every run's variant")
    table["variant"] = table["variant"].astype(str)
    return table.sort_values(["variant", "budget", "params"], kind="stable").reset_index(drop=True)


def _load_metrics(sweep_dir: Path, run_ids: Iterable[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    sweep_dir = Path(sweep_dir)
    if run_ids is None:
        run_ids = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.jsonl").is_file())
    records, notes, bad_lines = [], [], 0  # one table built once: a frame per run cost more than the reading
    for run_id in run_ids:
        path = sweep_dir / run_id / "metrics.jsonl"
        if not path.is_file():
            notes.append(f"{run_id}: no metrics.jsonl")
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                bad_lines += line.strip() != ""  # a run killed mid-write leaves a torn last line
                continue
            if isinstance(record, dict) and "kind" in record:
                records.append({**record, "run_id": run_id})
    if bad_lines:
        notes.append(f"{bad_lines} unreadable line(s) in metrics.jsonl files were skipped")
    if not records:
        return pd.DataFrame(columns=["run_id", "kind"]), notes
    return pd.DataFrame(records), notes


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
