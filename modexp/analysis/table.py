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
from modexp.rundir import STEMS, is_run_id, open_regular, read_json, read_text
from modexp.units import count, escaped, sci

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
    """A run folder's JSON file, or None: missing, not a regular file (a FIFO is never opened), not UTF-8,
    not JSON."""
    try:
        return read_json(path)
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
        if not run_dir.name.isprintable():  # no sweep makes such a name; it would break the summary's lines
            notes.append(f"{escaped(run_dir.name)}: a run folder name with control characters; skipped")
            continue
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
        named = _is_name(summary.get("variant"))
        if not named or missing:
            what = ", ".join(([] if named else ["variant (a printable name)"]) + missing)
            notes.append(f"{run_dir.name}: summary.json lacks a usable {what}; skipped")
            continue
        row = {escaped(str(key)): _shown_text(_flatten(value)) for key, value in summary.items()}
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
        config = yaml.safe_load(read_text(run_dir / "config.yaml"))
    except (OSError, ValueError, yaml.YAMLError):
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


def check_stems(sweep_dir: Path, table: pd.DataFrame) -> None:
    """A branch's result is its stem's training continued: refuse a study in which a run's stem trained on
    another corpus or with other settings than the run records (that run is no point of either training)."""
    if "stem" not in table:
        return
    for run_id, stem, corpus in zip(
        table["run_id"], table["stem"], table.get("corpus_fingerprint", [None] * len(table))
    ):
        if not is_run_id(stem):
            continue
        folder = Path(sweep_dir) / STEMS / stem
        differences = _stem_differences(folder, Path(sweep_dir) / str(run_id), corpus)
        if differences:
            raise ModexpError(
                f"run {run_id} continued stem {stem}, which trained with {'; '.join(differences[:3])}: its "
                f"result is no point of either training; delete {Path(sweep_dir) / str(run_id)} and {folder} and "
                "rerun the sweep to train both again (modexp now refuses such a branch before it starts)"
            )


def _stem_differences(stem: Path, run: Path, corpus: Any) -> list[str]:
    """What the stem folder records it trained with (meta.json's corpus, config.yaml's model, train, data and
    seed, run.json's warm-up and batch) that differs from the run's own records; read as data."""
    from modexp.spec import NOT_IDENTITY

    out = []
    meta = _read_json(stem / "meta.json")
    stem_corpus = meta.get("corpus", {}).get("fingerprint") if isinstance(meta, dict) else None
    if isinstance(stem_corpus, str) and isinstance(corpus, str) and stem_corpus != corpus:
        out.append(f"corpus fingerprint {escaped(stem_corpus[:12])} (the run's: {escaped(corpus[:12])})")
    configs = [_read_yaml(stem / "config.yaml"), _read_yaml(run / "config.yaml")]
    skip = {"train": NOT_IDENTITY, "data": {"cache_dir"}}
    for section in ("model", "train", "data"):
        a, b = (c.get(section) if isinstance(c, dict) else None for c in configs)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) & set(b) - skip.get(section, set()), key=str):
                if a[key] != b[key]:
                    out.append(
                        f"{section}.{escaped(str(key))}={escaped(repr(a[key]))} (the run's: {escaped(repr(b[key]))})"
                    )
    records = [_read_json(stem / "run.json"), _read_json(run / "run.json")]
    if all(isinstance(r, dict) for r in records):
        for key in ("seed", "lr", "warmup", "batch_size"):
            if key in records[0] and key in records[1] and records[0][key] != records[1][key]:
                out.append(
                    f"{key}={escaped(repr(records[0][key]))} (the run's: {escaped(repr(records[1][key]))})"
                )
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(read_text(path))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _is_name(value: Any) -> bool:
    """A variant name the summary can print on one line: text without control or format characters."""
    return isinstance(value, str) and value.strip() != "" and value.isprintable()


def _shown_text(value: Any) -> Any:
    return escaped(value) if isinstance(value, str) else value


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
    unprintable = ~table["variant"].astype(str).map(str.isprintable)
    if unprintable.any():
        row = int(np.flatnonzero(unprintable.to_numpy())[0])
        raise ModexpError(
            f"table {path} column variant line {row + 2} has {escaped(repr(table['variant'].iloc[row]))}: a "
            "variant name has no control characters (newlines, tabs, escapes)"
        )
    table["variant"] = table["variant"].astype(str)
    table.columns = [escaped(str(c)) for c in table.columns]
    for column in table.columns:  # every other text the summary may print stays on its line
        if pd.api.types.is_object_dtype(table[column]):
            table[column] = table[column].map(_shown_text)
    check_consistency(table, path)
    return table.sort_values(["variant", "budget", "params"], kind="stable").reset_index(drop=True)


# A table's columns checked against each other (check_consistency). Generous bounds: published tables round,
# count embeddings or not, and state a nominal budget; crafted or mis-unit rows are off by far more.
MAGNITUDES = {  # (smallest, largest) a row may hold: counts of parameters, tokens and FLOPs, a loss in nats
    "params": (1.0, 1e15),
    "tokens": (1.0, 1e18),
    "budget": (1.0, 1e33),
    "flops": (1.0, 1e33),
    "val_loss": (0.0, 1e3),
}
BUDGET_CONVENTION = 10.0  # the table's typical flops / budget lies within 1/10-10 (a fixed convention factor)
BUDGET_ROW = 1.5  # each row's flops / budget within this factor of the table's typical one
PER_TOKEN_ROW = 1.25  # flops against train_flops_per_token x tokens, where the table records it
SIX_ND_ROW = 20.0  # flops against 6 N D: MoD, MoE (total params) and attention move it, never 20x
SIX_ND_VARIANT = 3.0  # ... and within this factor of the variant's typical ratio (sizes move it less)


def check_consistency(table: pd.DataFrame, path: Path) -> None:
    """The columns agree with each other: magnitudes a run can have; flops against the row's budget (within
    a few per cent, or one convention factor for the whole table, and never a neighbouring budget's) and
    against 6 N D (or train_flops_per_token x tokens when the table has it). One line naming the row."""
    for column, (low, high) in MAGNITUDES.items():
        values = table[column].to_numpy(float)
        bad = (values < low) | (values > high)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModexpError(
                f"table {path} line {i + 2}: {column}={values[i]:g} is not a value a run can have: give "
                f"{column} between {low:g} and {high:g} ({'nats' if column == 'val_loss' else 'a count, not millions'})"
            )
    _check_budgets(table, path)
    _check_flops_per_token(table, path)


def _check_budgets(table: pd.DataFrame, path: Path) -> None:
    budget = table["budget"].to_numpy(float)
    ratio = np.log(table["flops"].to_numpy(float) / budget)
    typical = float(np.median(ratio))
    if abs(typical) > math.log(BUDGET_CONVENTION):
        raise ModexpError(
            f"table {path}: flops are typically {math.exp(typical):.3g}x the budget: the two columns must count "
            "the same FLOPs (a run spends its budget), in the same unit"
        )
    budgets = np.log(np.unique(budget))
    for i in range(len(table)):
        off = ratio[i] - typical  # log of this row's flops/budget against the table's convention
        implied = math.log(budget[i]) + off  # the budget these flops were spent for, in that convention
        belongs = budgets[np.argmin(np.abs(budgets - implied))]
        own = math.isclose(belongs, math.log(budget[i]))
        if own and abs(off) <= math.log(BUDGET_ROW):
            continue
        if not own and abs(implied - belongs) <= math.log(BUDGET_ROW):
            why = f"those of budget {sci(math.exp(belongs))}, another budget of the table"
        else:
            why = f"{math.exp(ratio[i]):.3g}x the budget" + (
                f" (the other rows: {math.exp(typical):.3g}x)" if abs(typical) > 0.01 else ""
            )
        raise ModexpError(
            f"table {path} line {i + 2}: flops={table['flops'].iloc[i]:g} at budget={budget[i]:g} are {why}: "
            "each row's flops are what its run spent, within a few per cent of its budget"
        )


def _check_flops_per_token(table: pd.DataFrame, path: Path) -> None:
    flops, tokens = table["flops"].to_numpy(float), table["tokens"].to_numpy(float)
    per_token = (
        pd.to_numeric(table["train_flops_per_token"], errors="coerce").to_numpy(float)
        if "train_flops_per_token" in table
        else np.full(len(table), np.nan)
    )
    known = np.isfinite(per_token) & (per_token > 0)
    six_nd = 6 * table["params"].to_numpy(float) * tokens
    for i in np.flatnonzero(known):
        ratio = flops[i] / (per_token[i] * tokens[i])
        if not 1 / PER_TOKEN_ROW <= ratio <= PER_TOKEN_ROW:
            raise ModexpError(
                f"table {path} line {i + 2}: flops={flops[i]:g} but train_flops_per_token x tokens = "
                f"{per_token[i] * tokens[i]:g} ({ratio:.3g}x): the row's columns disagree"
            )
    q = np.log(flops / six_nd)
    for i in np.flatnonzero(~known):
        if abs(q[i]) > math.log(SIX_ND_ROW):
            raise ModexpError(
                f"table {path} line {i + 2}: flops={flops[i]:g} is {math.exp(q[i]):.3g}x 6 x params x tokens "
                f"({six_nd[i]:g}): params, tokens and flops do not describe one run (no variant is that far "
                "from 6 N D)"
            )
    variants = table["variant"].to_numpy()
    for variant in pd.unique(variants[~known]):
        rows = np.flatnonzero((variants == variant) & ~known)
        if len(rows) < 3:
            continue
        typical = float(np.median(q[rows]))
        off = rows[np.abs(q[rows] - typical) > math.log(SIX_ND_VARIANT)]
        if len(off):
            i = int(off[0])
            raise ModexpError(
                f"table {path} line {i + 2}: flops / (6 x params x tokens) = {math.exp(q[i]):.3g}, but "
                f"{math.exp(typical):.3g} for {variant}'s other rows: its params or tokens belong to another run"
            )


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
        try:
            with open_regular(path) as f:
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            notes.append(f"{escaped(str(run_id))}: metrics.jsonl is not a readable file")
            continue
        for line in text.splitlines():
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
