"""`modexp plan`'s view of a study: one row per run with its estimated time, micro-batch and peak memory on
the devices at hand, printed as a table, csv or json."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pandas as pd

from . import flops
from .config import Config
from .estimate import pace_of, run_seconds, study_seconds
from .launch.slots import visible_gpus
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
        spent = spec.flops - spec.stem_flops  # a branch trains only its steps after its stem's
        row["flops_spent"] = spent
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
        for line in warnings(study):
            print(line, file=sys.stderr)
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
    if plan.stems:
        saving = 1 - plan.flops_spent / plan.flops_budgeted
        print(
            f"\nFLOPs spent {sci(plan.flops_spent)} (stems counted once) against {sci(plan.flops_budgeted)} "
            f"budgeted by the runs from scratch: {saving:.0%} less (sweep.reuse=branches)"
        )
    print("\n" + what_remains(study, rows))
    print(
        "micro: sequences per micro-batch; GB: estimated peak memory per device (modexp/memory.py); "
        "id: the end of the run's folder name; every column with --format csv or json"
    )
    cfg = study.configs[0][1]
    if (frame["micro_batch"] == "no fit").any():
        print(
            f"warning: some runs do not fit {cfg.launcher.gpu_mem_gb:g} GB per device even one sequence at a "
            "time: set train.activation_checkpointing=true, or train.parallel=fsdp with more launcher.gpus_per_run"
        )
    for line in warnings(study):
        print(line)


def _on_gpus(cfg: Config) -> bool:
    """Whether the study's runs train on GPUs (their hours are then worth counting)."""
    if cfg.launcher.name == "slurm":
        return cfg.launcher.gpus_per_run > 0 and cfg.device != "cpu"
    return cfg.device == "cuda" or (cfg.device == "auto" and bool(visible_gpus()))


def _time_left(rows: list[dict[str, Any]], cfg: Config, study: Study) -> tuple[float, str]:
    """(seconds, how they were reckoned) for the runs still to train: laid out over the launcher's slots as
    the pool starts them, at this machine's measured pace or the preset's (modexp/estimate.py)."""
    pace, slots = pace_of(cfg)
    left = {r["run_id"] for r in rows}
    seconds = study_seconds([s for s in study.trained if s.run_id in left], cfg, pace, slots)
    unit = "GPU" if _on_gpus(cfg) else "device"
    return seconds, f"on {count(slots, 'slot')} at {pace.describe(unit)}"


def what_remains(study: Study, rows: list[dict[str, Any]]) -> str:
    """One line: what is left to train, its FLOPs and time, and where it goes; device-hours on GPUs only."""
    cfg = study.configs[0][1]
    left = [r for r in rows if r["status"] != "done"]
    runs = [r for r in rows if r["role"] != "stem"]
    stems = [r for r in rows if r["role"] == "stem"]
    runs_left = sum(r["role"] != "stem" for r in left)
    stems_left = len(left) - runs_left

    def part(n_left: int, total: int, noun: str) -> str:
        return count(total, noun) if n_left == total else f"{n_left} of {count(total, noun)}"

    if not left:
        stem_words = f" and {count(len(stems), 'stem')}" if stems else ""
        return (
            f"{study.dir}: all {count(len(runs), 'run')}{stem_words} are done: nothing to train "
            f"(modexp analyze {study.dir} fits and draws them again)"
        )
    what = part(runs_left, len(runs), "run") + (
        f" and {part(stems_left, len(stems), 'stem')}" if stems else ""
    )
    flops_left = sum(r["flops_spent"] for r in left)
    seconds, how = _time_left(left, cfg, study)
    line = f"{what} to train, {sci(flops_left)} FLOPs, about {duration(seconds)} ({how}), into {study.dir}"
    if _on_gpus(cfg):
        devices = max(1, cfg.launcher.gpus_per_run)
        hours = sum(r["device_hours"] for r in left)
        line += f"; {hours:,.1f} GPU-hours, {count(devices, 'GPU')} per run (launcher.gpus_per_run)"
    return line


def warnings(study: Study) -> list[str]:
    """What the user may want to change before training, one line each, similar ones merged: no GPU for a
    GPU study, a study that cannot give a verdict, the plan's notes (ladders, LR laws, epochs)."""
    cfg = study.configs[0][1]
    lines = []
    if cfg.device == "cuda" and cfg.launcher.name == "local" and not visible_gpus():
        lines.append(
            "no GPU here: this study trains with device=cuda, so modexp sweep refuses on this machine"
        )
    lines += verdict_warnings(study)
    return [f"warning: {line}" for line in lines + collapse_notes(study.plan.notes)]


def verdict_warnings(study: Study) -> list[str]:
    """A study whose curves cannot locate an optimum (fewer than 3 sizes at every budget), or whose reference
    has one budget, gives no compute multiplier: said before it trains, not after."""
    sizes: dict[tuple[str, float], set[float]] = {}
    for run in study.plan.runs:
        sizes.setdefault((run.variant, run.budget), set()).add(run.accounting["params"])
    if not sizes:
        return []
    most = max(len(s) for s in sizes.values())
    budgets = {budget for _, budget in sizes}
    if most < 3:
        return [
            f"no verdict possible: every curve has {most} size(s) per budget and an optimum needs 3 "
            "(sweep.sizes_per_budget >= 3); this study checks the pipeline, not MoD"
        ]
    if len(budgets) < 2:
        return ["no compute multiplier possible: it needs the reference at 2 budgets or more (sweep.budgets)"]
    return []


_LR_NOTE = re.compile(r"^(?P<variant>\S+): (?P<n>\d+) run\(s\) take their LR from a law outside the sizes")
_LADDER_NOTE = re.compile(
    r"^budget (?P<budget>\S+) (?P<variant>\S+): (?:(?P<short>\d+ of \d+) sizes fit|sizes \S+ sit off-centre)"
)
_LIMIT = re.compile(r"sweep\.\w+=[^\s;,)]+")


def collapse_notes(notes: list[str]) -> list[str]:
    """The plan's notes, one line each, with those that say the same for several variants merged."""
    lr = [(m, note) for note in notes if (m := _LR_NOTE.match(note))]
    ladders = [(m, note) for note in notes if (m := _LADDER_NOTE.match(note))]
    out = [note for note in notes if not _LR_NOTE.match(note) and not _LADDER_NOTE.match(note)]
    if len(ladders) > 1:
        each = ", ".join(
            f"{m['budget']} {m['variant']} {m['short'] + ' sizes' if m['short'] else 'off-centre'}"
            for m, _ in ladders
        )
        limits = sorted({limit for _, note in ladders for limit in _LIMIT.findall(note)})
        out.insert(
            0,
            f"{len(ladders)} ladders are short or off-centre ({each}), stopped by {', '.join(limits)}: "
            "widen those limits or move sweep.budgets",
        )
    else:
        out[:0] = [note for _, note in ladders]
    if len(lr) > 1:
        total = sum(int(m["n"]) for m, _ in lr)
        each = ", ".join(f"{m['variant']} {m['n']}" for m, _ in lr)
        out.append(
            f"{total} runs ({each}) take their LR from a law beyond the sizes it was fitted on (lr marked *): "
            "extend the LR grid to their sizes to check them"
        )
    else:
        out += [note for _, note in lr]
    return out


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
