"""`modexp status [DIR]`: a study's progress from its folder alone (plan.json and the run folders).

Per run: done / running / interrupted / failed / pending, the step, the latest loss and, for running runs,
an ETA from their own pace; in total: counts, the share of FLOPs done, and an ETA for what is left at the
FLOP rate the study's finished runs achieved.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .errors import ModexpError
from .rundir import NotRegular, is_run_id, open_regular, read_json, read_status, run_state
from .units import count, duration, escaped, sci

STATES = ("done", "running", "interrupted", "failed", "pending")


def last_records(run_dir: Path) -> tuple[dict | None, dict | None]:
    """(last train record, last val record) of metrics.jsonl, reading only its tail (a regular file only)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open_regular(path) as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="ignore").splitlines()
    except OSError:  # missing, or not a regular file (a FIFO is never opened for reading)
        return None, None
    train = val = None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("kind") == "train" and train is None:
            train = record
        if record.get("kind") == "val" and val is None:
            val = record
        if train and val:
            break
    return train, val


def _plan_problem(path: Path) -> tuple[dict | None, str]:
    """(plan.json as a dict, '') or (None, what is wrong with it, in a few words)."""
    try:
        plan = read_json(path)
    except NotRegular:
        return None, "plan.json is not a regular file"
    except UnicodeDecodeError:
        return None, "plan.json is not UTF-8 text"
    except OSError as exc:
        return None, f"plan.json cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"plan.json is not JSON ({str(exc).splitlines()[0][:80]})"
    if not isinstance(plan, dict):
        return None, f"plan.json holds a JSON {type(plan).__name__}, not a study's plan"
    runs, ids = plan.get("runs", []), plan.get("planned_ids")
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and is_run_id(r.get("run_id")) for r in runs
    ):
        return None, f"plan.json's runs is {_short(runs)}, not a list of runs with their run_id"
    if ids is None and not runs:
        return None, "plan.json has no planned_ids (and no runs)"
    if ids is not None and (not isinstance(ids, list) or not all(is_run_id(i) for i in ids)):
        return None, f"plan.json's planned_ids is {_short(ids)}, not a list of run ids"
    return plan, ""


def read_plan(sweep_dir: Path) -> dict[str, Any]:
    """The study's plan.json, checked: runs (a list of run rows) and planned_ids (run ids); one line when not."""
    plan, problem = _plan_problem(sweep_dir / "plan.json")
    if plan is None:
        raise ModexpError(f"{sweep_dir}: {problem}: rerun its sweep to rewrite it")
    return plan


def run_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run the study planned (every sweep into this folder), in plan order. A folder without a
    plan.json (what `modexp train` makes: runs/<sweep>/, or the run folder it prints): its runs as found."""
    plan_path = sweep_dir / "plan.json"
    has_plan = False
    if (sweep_dir / "run.json").exists():  # one run's folder
        sweep_dir, plan = sweep_dir.parent, {"planned_ids": [sweep_dir.name]}
    elif plan_path.exists() or plan_path.is_symlink():
        plan, has_plan = read_plan(sweep_dir), True
    else:
        found = sorted(p.parent.name for p in sweep_dir.glob("*/run.json"))
        plan = {"planned_ids": [i for i in found if is_run_id(i)]}
    if not plan.get("runs") and not plan.get("planned_ids"):
        raise ModexpError(
            f"{sweep_dir} has no plan.json and no run folders: not a study (modexp sweep or modexp train "
            "writes one; see modexp status without a folder for the studies under runs_dir)"
        )
    planned = {r["run_id"]: r for r in plan.get("runs", [])}
    ids = list(planned) + [i for i in plan.get("planned_ids", []) if i not in planned]
    # Run folders no sweep planned here (`modexp train` into the study's folder): listed, and said to be left
    # out of the analysis, which fits only what the study planned (analysis/table.py).
    known = set(ids)
    found = (p.parent.name for p in sweep_dir.glob("*/run.json")) if has_plan else ()
    stray = sorted(name for name in found if name not in known and is_run_id(name))
    now = time.time()
    rows = [_run_row(sweep_dir / run_id, planned.get(run_id), now) for run_id in ids]
    for run_id in stray:
        row = _run_row(sweep_dir / run_id, None, now)
        row.update(planned=False, reason="not planned: not analysed")
        rows.append(row)
    return rows


def _run_row(run_dir: Path, info: dict | None, now: float) -> dict[str, Any]:
    """A run's row from its plan entry (or run.json), status.json and metrics tail; garbage reads as missing."""
    if info is None:
        try:
            info = read_json(run_dir / "run.json")
        except (OSError, ValueError):
            info = None
    info = info if isinstance(info, dict) else {}
    state = run_state(run_dir)
    status = read_status(run_dir)
    steps = _whole(info.get("steps")) or _whole(status.get("steps"))
    step = steps if state == "done" else _whole(status.get("step")) or 0
    train, val = last_records(run_dir)
    row = {
        "run_id": run_dir.name,
        "variant": _text(info.get("variant")),
        "budget": _number(info.get("budget")),
        "shape": _text(info.get("shape")),
        "flops": _number(info.get("flops")),
        "state": state if state in STATES else "pending",
        "step": step,
        "steps": steps,
        "loss": _number((train or {}).get("loss")),
        "val_loss": _number((val or {}).get("val_loss")),
        "wall_time": _number((train or {}).get("wall_time")),
        "eta_s": None,
        "reason": _text(status.get("reason")) if state in ("failed", "interrupted") else None,
    }
    if state == "running" and train and steps:
        pace, at = _number(train.get("step_time")), _whole(train.get("step"))
        row["eta_s"] = pace * (steps - at) if pace and at is not None else None
        updated = _number(status.get("updated"))
        row["last_update_s"] = now - updated if updated is not None else 0.0
    return row


def _number(value: Any) -> float | None:
    """A finite number, or None (a string, a list, NaN or a bool in a run's files is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 and number == int(number) else None


def _text(value: Any) -> str | None:
    return None if value is None else escaped(str(value))


def _short(value: Any) -> str:
    text = escaped(json.dumps(value) if not isinstance(value, str) else repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


NOT_PLANNED = "not planned here: left out of the analysis"


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, FLOPs and ETA of the runs the study planned; `unplanned` counts the others in its folder."""
    unplanned = sum(not r.get("planned", True) for r in rows)
    rows = [r for r in rows if r.get("planned", True)]
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    flops_total = sum(r["flops"] or 0 for r in rows)
    flops_done = sum(
        (r["flops"] or 0) * (1.0 if r["state"] == "done" else (r["step"] or 0) / max(1, r["steps"] or 1))
        for r in rows
    )
    # The pace of this study's finished runs, for what is left (one run at a time, as the plan assumes).
    rates = [
        r["flops"] / r["wall_time"] for r in rows if r["state"] == "done" and r["flops"] and r["wall_time"]
    ]
    rate = sorted(rates)[len(rates) // 2] if rates else None
    eta = (flops_total - flops_done) / rate if rate and flops_total > flops_done else None
    return {
        **counts,
        "runs": len(rows),
        "unplanned": unplanned,
        "flops_done": flops_done,
        "flops_total": flops_total,
        "eta_s": eta,
    }


def format_study(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """A table no wider than 120 columns, then one line of totals."""
    import pandas as pd

    lines = []
    if rows:
        frame = pd.DataFrame(rows)
        shown = pd.DataFrame(
            {
                "run_id": frame["run_id"].map(escaped).map(lambda s: s if len(s) <= 44 else s[:43] + "~"),
                "state": frame["state"],
                "step": [f"{r['step'] or 0}/{r['steps'] or '?'}" for r in rows],
                "loss": frame["loss"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}"),
                "val_loss": frame["val_loss"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}"),
                "eta": frame["eta_s"].map(lambda v: "-" if pd.isna(v) else duration(v)),
                "note": [(r["reason"] or "")[:30] for r in rows],
            }
        )
        lines.append(shown.to_string(index=False))
    t = totals(rows)
    lines.append(summary_line(sweep_dir, t))
    if t["interrupted"]:
        lines.append("interrupted runs resume when the sweep's command runs again")
    if t["failed"]:
        lines.append("failed runs run again with the sweep's command and --retry-failed")
    return "\n".join(lines)


def summary_line(sweep_dir: Path, t: dict[str, Any]) -> str:
    share = t["flops_done"] / t["flops_total"] if t["flops_total"] else 0.0
    return (
        f"{escaped(str(sweep_dir))}: {count(t['runs'], 'run')}: "
        + ", ".join(f"{t[s]} {s}" for s in STATES if t[s])
        + f"; {share:.0%} of {sci(t['flops_total'])} FLOPs done"
        + (f"; about {duration(t['eta_s'])} left at the finished runs' pace" if t["eta_s"] else "")
        + (f"; {count(t['unplanned'], 'more run folder')} {NOT_PLANNED}" if t.get("unplanned") else "")
    )


def studies(runs_dir: Path) -> list[Path]:
    """Study folders under runs_dir: those a sweep planned (plan.json) and those `modexp train` filled (run
    folders without a plan)."""
    if not runs_dir.is_dir():
        raise ModexpError(
            f"runs_dir={runs_dir} is not a folder: give a sweep folder, e.g. modexp status runs/demo"
        )
    found = {p.parent for p in runs_dir.glob("*/plan.json")} | {
        p.parent.parent for p in runs_dir.glob("*/*/run.json") if is_run_id(p.parent.name)
    }
    return sorted(found)


def study_line(folder: Path, as_json: bool = False) -> str:
    """One study's line in `modexp status` (no folder): its totals, or, for a study that cannot be read,
    "broken" and why. Each study is read on its own: one broken study never hides the others."""
    try:
        t = totals(run_rows(folder))
    except Exception as exc:  # noqa: BLE001 (garbage of any shape in one study's files)
        reason = str(exc) if isinstance(exc, ModexpError) else f"{type(exc).__name__}: {exc}"
        reason = escaped(reason.removeprefix(f"{folder}: ").splitlines()[0] if reason else type(exc).__name__)
        if as_json:
            return json.dumps({"sweep_dir": str(folder), "broken": reason})
        return f"{escaped(str(folder))}: broken: {reason}"
    return summary_line(folder, t) if not as_json else json.dumps({"sweep_dir": str(folder), **t})
