"""How much of the machine a study used: its model FLOPs utilisation (MFU), from its runs' summaries.

A run's MFU is its FLOPs over its training seconds times its device's peak (summary.json: flops, train_time,
peak_flops; records.speed_record). A study's is the same over what it trained: every stem once, each branch's
own steps (its FLOPs and training seconds less its stem's share), every other run whole:

    study MFU = sum of FLOPs trained / sum of (training seconds x peak)

so start-up, evaluation and checkpoints do not count against it; at the end of a sweep, the machine's share
over the sweep's wall time (everything counted, on every slot) is given beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .units import count, duration, sci

STEMS = "stems"  # rundir.STEMS, spelled out: rundir loads the planner (and Hydra), which `analyze` need not


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trained_part(row: dict[str, Any]) -> tuple[float, float | None]:
    """(FLOPs this run trained itself, its own training seconds): a branch less its stem's share."""
    flops = _number(row.get("flops")) or 0.0
    stem_flops = _number(row.get("stem_flops")) or 0.0 if row.get("stem") else 0.0
    train = _number(row.get("train_time"))
    inherited = _number(row.get("inherited_time")) or 0.0 if row.get("stem") else 0.0
    return flops - stem_flops, (train - inherited if train is not None else None)


def study_mfu(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The study's MFU and what it rests on, from its finished runs' (and stems') summaries."""
    flops = seconds = weighted = 0.0
    counted = missing = 0
    kinds: set[str] = set()
    shares = []
    for row in rows:
        own_flops, own_time = trained_part(row)
        peak = _number(row.get("peak_flops"))
        if own_time is None or own_time <= 0 or not peak:
            missing += 1
            continue
        counted += 1
        flops += own_flops
        seconds += own_time
        weighted += own_time * peak
        kinds.add(str(row.get("device_kind")))
        share = _number(row.get("cpu_share"))
        if share is not None:
            shares.append(share)
    return {
        "mfu": flops / weighted if weighted else None,
        "flops_trained": flops,
        "train_time": seconds,
        "peak_flops": weighted / seconds if seconds else None,  # per run, averaged over training time
        "runs": counted,
        "runs_without_timing": missing,
        "device_kinds": sorted(kinds),
        "cpu_share_min": min(shares) if shares else None,
    }


def read_summaries(study_dir: Path) -> list[dict[str, Any]]:
    """Every finished run's and stem's summary.json under a study folder."""
    rows = []
    for path in sorted(study_dir.glob("*/summary.json")) + sorted((study_dir / STEMS).glob("*/summary.json")):
        if not path.is_file():  # a FIFO or device planted there would block the reader
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def describe(result: dict[str, Any]) -> str:
    """One line: the study's MFU and what it rests on."""
    if result["mfu"] is None:
        return "study MFU: not measured (no finished run recorded its training time and device peak)"
    kinds = result["device_kinds"]
    on = kinds[0] if len(kinds) == 1 else f"{len(kinds)} device kinds"
    text = (
        f"study MFU {result['mfu']:.1%}: {sci(result['flops_trained'])} FLOPs trained in "
        f"{duration(result['train_time'])} of training at {sci(result['peak_flops'], 2)} FLOP/s peak per run "
        f"({on}; {count(result['runs'], 'run')}, stems included)"
    )
    if result["cpu_share_min"] is not None and result["cpu_share_min"] < LOADED:
        text += f"; the machine was loaded: a run got only {result['cpu_share_min']:.0%} of its cores"
    return text


LOADED = 0.85  # a run that got less CPU time than this share of its threads x wall time shared its cores


def sweep_line(study_dir: Path, wall: float, slots: int, trained: set[str]) -> str:
    """The sweep's last line: its study MFU, and what this sweep trained (`trained`: run ids) as a share of
    its slots' peak over the `wall` seconds its runs took, start-up, evaluation and checkpoints included."""
    rows = read_summaries(study_dir)
    line = f"[sweep] {describe(study_mfu(rows))}"
    now = study_mfu(r for r in rows if r.get("run_id") in trained)
    if now["mfu"] is not None and wall > 0 and slots:
        machine = now["flops_trained"] / (wall * slots * now["peak_flops"])
        line += f"; this sweep used {machine:.1%} of {slots} slot(s) over the {duration(wall)} its pool ran"
    return line
