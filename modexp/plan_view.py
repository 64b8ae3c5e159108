"""`modexp plan`'s view of a study: one row per run with its estimated time, micro-batch and peak memory on
the devices at hand, printed as a table, csv or json."""

from __future__ import annotations

import json
import sys
from typing import Any

import pandas as pd

from . import flops
from .estimate import pace_of, run_seconds, study_seconds
from .launch.local import visible_gpus
from .memory import plan_step
from .rundir import run_state
from .sweep import Study
from .units import count, duration, sci, si


def plan_rows(study: Study, convention: str = "exact") -> list[dict[str, Any]]:
    """One row per planned run: its plan, estimated time (modexp/estimate.py) and memory on the devices it
    would use, its state."""
    cfg = study.configs[0][1]
    pace, _ = pace_of(cfg)
    devices = max(1, cfg.launcher.gpus_per_run)
    gpus = bool(visible_gpus()) if cfg.device == "auto" else cfg.device == "cuda"
    rows = []
    for spec in study.plan.stems + study.plan.runs:
        row = spec.row()
        if spec.role == "stem":
            row["branch_points"] = spec.branch_points
        row["devices"] = devices
        row["est_time_s"] = round(run_seconds(spec, cfg, pace), 1)
        row["device_hours"] = (row["est_time_s"] - pace.startup) * devices / 3600
        micro, memory = plan_step(cfg, spec.model, gpus)
        row["micro_batch"] = micro
        row["est_peak_gb"] = round(memory.peak_gb, 1) if memory else None
        row["status"] = run_state(study.run_dir(spec))
        if convention != "exact":  # report under another convention; what is trained does not change
            per_token = flops.count(spec.model, convention).train_per_token
            row[f"train_flops_per_token_{convention}"] = per_token
            row[f"flops_{convention}"] = per_token * spec.tokens
        rows.append(row)
    return rows


def print_plan(study: Study, fmt: str, convention: str = "exact") -> None:
    """The plan as a table for a reader (notes after it), or every column as csv or json on stdout."""
    rows = plan_rows(study, convention)
    if fmt in ("json", "csv"):
        # stdout stays machine-readable (JSON: a list of run objects); the plan's notes go to stderr.
        if fmt == "json":
            print(json.dumps(rows, indent=2))
        else:
            print(pd.DataFrame(rows).to_csv(index=False), end="")
        for note in study.plan.notes:
            print(note, file=sys.stderr)
        return
    frame = pd.DataFrame([r for r in rows if r["role"] != "stem"])
    stems = pd.DataFrame([r for r in rows if r["role"] == "stem"])
    # The terminal table keeps what a reader scans for, within 120 columns; csv and json carry every column
    # (run ids, the FLOP accounting). A run's folder is <variant>-<shape>-<budget>-<id>.
    shown = pd.DataFrame(
        {
            "variant": frame["variant"],
            "budget": frame["budget"].map(sci),
            "shape": frame["shape"],
            "params": frame["params"].map(si),
            "tokens": frame["tokens"].map(si),
            "steps": frame["steps"],
            "tok/p": frame["tokens_per_param"].map(lambda v: f"{v:.3g}"),
            "lr": [
                ("-" if pd.isna(v) else f"{v:.3g}") + ("*" if out else "")
                for v, out in zip(frame["lr"], frame["lr_domain"])
            ],
            "epochs": frame["epochs"].map(lambda v: "-" if pd.isna(v) else si(v)),
            "micro": frame["micro_batch"].map(lambda v: str(v).replace("auto (<= ", "auto<=").rstrip(")")),
            "GB": frame["est_peak_gb"].map(
                lambda v: "-" if pd.isna(v) else f"{v:.0f}" if v >= 100 else f"{v:.3g}"
            ),
            "time": frame["est_time_s"].map(duration),
            "status": frame["status"],
            "id": frame["run_id"].map(lambda r: r.rsplit("-", 1)[-1]),
        }
    )
    if len(stems):  # sweep.reuse=branches: which stem each run branches from
        shown["stem"] = frame["stem"].map(lambda r: r.rsplit("-", 1)[-1][:6] if isinstance(r, str) else "-")
    for column in (c for c in frame.columns if convention != "exact" and c.endswith(f"_{convention}")):
        shown[column.replace("train_flops_per_token", "flops/tok")] = frame[column].map(sci)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(shown.to_string(index=False))
    if len(stems):
        _print_stems(stems)
    plan = study.plan
    total = plan.flops_spent
    cfg = study.configs[0][1]
    devices = max(1, cfg.launcher.gpus_per_run)
    unit = "GPU" if devices > 1 or cfg.device == "cuda" else "device"
    if plan.stems:
        saving = 1 - plan.flops_spent / plan.flops_budgeted
        print(
            f"\nFLOPs spent {sci(plan.flops_spent)} (stems counted once) against {sci(plan.flops_budgeted)} "
            f"budgeted by the runs from scratch: {saving:.0%} less (sweep.reuse=branches)"
        )
    hours = sum(r["device_hours"] for r in rows)
    stem_count = f" and {count(len(stems), 'stem')}" if len(stems) else ""
    pace, slots = pace_of(cfg)
    wall = study_seconds(study.trained, cfg, pace, slots)
    print(
        f"\n{count(len(frame), 'run')}{stem_count}, "
        f"{sci(total)} FLOPs in all: {hours:,.1f} {unit}-hours at {pace.describe(unit)}, "
        f"about {duration(wall)} on {count(slots, 'slot')} of {count(devices, unit)} per run "
        "(launcher.gpus_per_run). micro: sequences per micro-batch; GB: estimated peak memory per device "
        "(modexp/memory.py); full rows with --format csv or json"
    )
    if (frame["micro_batch"] == "no fit").any():
        gb = cfg.launcher.gpu_mem_gb
        print(
            f"some runs do not fit {gb:g} GB per device even one sequence at a time: set "
            "train.activation_checkpointing=true or train.parallel=fsdp with more launcher.gpus_per_run"
        )
    for note in study.plan.notes:
        print(note)


def _print_stems(stems: pd.DataFrame) -> None:
    """The stems: each trains its shape once at constant LR, keeping its state where its branches start."""
    shown = pd.DataFrame(
        {
            "stem": stems["run_id"].map(lambda r: r.rsplit("-", 1)[-1][:6]),
            "variant": stems["variant"],
            "shape": stems["shape"],
            "steps": stems["steps"],
            "branches at steps": stems["branch_points"].map(lambda p: ", ".join(map(str, p))),
            "warmup": stems["warmup"],
            "lr": stems["lr"].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}"),
            "time": stems["est_time_s"].map(duration),
            "status": stems["status"],
        }
    )
    print(
        "\nStems (trained once at constant LR; each run above with a stem starts from its state and decays):"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(shown.to_string(index=False))
