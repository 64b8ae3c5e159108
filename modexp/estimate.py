"""How long a study takes here: each run's seconds from what this machine measured before, and the study's wall
time with its runs laid out over the launcher's slots as the local pool starts them.

A run's seconds = its start-up + its own steps x a step's seconds + its evaluations x an evaluation's seconds +
its checkpoints x a checkpoint's seconds. Where this device kind and slot (precision, threads) have trained
runs before (modexp.device's cache: every run leaves its pace there), a step's seconds come from those runs: a
weighted fit of log seconds against log FLOPs per step, weighted towards runs of the same variant kind and a
similar step (so a study run again is estimated from its own shapes, and a new size between measured ones is
interpolated); likewise an evaluation's. Measured step times are scaled by the CPU share the run got, so a
history taken on a loaded machine estimates the idle one. Where nothing was measured: FLOPs at the preset's
sweep.flops_per_second per slot, launcher.startup_s per run and launcher.worker_startup_s per worker.

The study's wall time: the runs in the pool's order (stems first, then the largest), each started on the first
free slot once the run it branches from is done, a worker's start-up at each slot's first run, plus what the
sweep itself took before (planning, data check, the final analysis) where that was measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import device as devices
from . import flops, variants
from .config import Config
from .plan import RunSpec
from .units import count, sci

BANDWIDTH = 0.5  # in ln FLOPs per step: runs within ~1.6x of a step's FLOPs weigh most in its estimate
OTHER_KIND = 0.05  # a run of another variant kind weighs this much against one of the same kind


@dataclass
class Pace:
    """Seconds of the parts of a run on one slot of this machine."""

    records: list[dict[str, Any]]  # what earlier runs here measured (device.measured_runs)
    flops_per_second: float  # where nothing was measured: sweep.flops_per_second per slot
    startup: float  # per run
    worker_startup: float  # per worker (process start, imports), once per slot
    sweep_overhead: float  # the sweep's own seconds besides its runs (0: never measured)
    kind: str = ""  # the device kind and slot, for the note
    notes: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.records)

    def step(self, kind: str, step_flops: float) -> float:
        return (
            _fit(self.records, "step_flops", "step_time", kind, step_flops)
            or step_flops / self.flops_per_second
        )

    def evaluation(self, kind: str, eval_flops: float) -> float:
        fitted = _fit(self.records, "eval_flops", "eval_time", kind, eval_flops)
        return fitted if fitted is not None else eval_flops / self.flops_per_second

    def checkpoint(self) -> float:
        times = [r["checkpoint_time"] for r in self.records if _number(r.get("checkpoint_time"))]
        return statistics.median(times) if times else 0.0

    def describe(self, unit: str = "device") -> str:
        if self.measured:
            return (
                f"the paces this machine measured ({count(len(self.records), 'earlier run')} on {self.kind})"
            )
        return f"{sci(self.flops_per_second, 2)} FLOP/s per {unit} (sweep.flops_per_second)"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _fit(records: list[dict[str, Any]], x_key: str, y_key: str, kind: str, x: float) -> float | None:
    """exp of a kernel-weighted linear fit of ln y on ln x at x (one distinct x: y scaled in proportion)."""
    points = [
        (math.log(r[x_key]), math.log(r[y_key] * min(1.0, r.get("cpu_share") or 1.0)), r.get("kind") == kind)
        for r in records
        if _number(r.get(x_key)) and _number(r.get(y_key))
    ]
    if not points or x <= 0:
        return None
    lx = math.log(x)
    weights = [math.exp(-0.5 * ((px - lx) / BANDWIDTH) ** 2) * (1.0 if same else OTHER_KIND) + 1e-12
               for px, _, same in points]  # fmt: skip
    total = sum(weights)
    mx = sum(w * px for w, (px, _, _) in zip(weights, points)) / total
    my = sum(w * py for w, (_, py, _) in zip(weights, points)) / total
    sxx = sum(w * (px - mx) ** 2 for w, (px, _, _) in zip(weights, points))
    if sxx < 1e-6 * total:  # one size measured: seconds in proportion to FLOPs
        return math.exp(my + (lx - mx))
    slope = sum(w * (px - mx) * (py - my) for w, (px, py, _) in zip(weights, points)) / sxx
    slope = min(1.2, max(0.0, slope))  # more FLOPs never take less time, nor much more than in proportion
    return math.exp(my + slope * (lx - mx))


def slot_of(cfg: Config) -> tuple[str, str, int]:
    """(device kind, slot key, slots) a study of cfg would train on here, without importing torch."""
    from .launch.slots import make_slots, visible_gpus

    per_run = max(1, cfg.launcher.gpus_per_run)
    if cfg.launcher.name != "local":  # a cluster's own slots: as many runs at a time as it allows
        return "cluster", devices.slot_key(1, _precision(cfg, True)), max(1, cfg.launcher.array_parallelism)
    try:
        slots = make_slots(cfg.device, cfg.launcher.workers, per_run)
    except Exception:  # noqa: BLE001 - device=cuda without GPUs: the sweep refuses it; the plan still estimates
        slots = []
    gpu = bool(slots) and slots[0].name.startswith("cuda")
    if gpu:
        kind = _gpu_name(visible_gpus()[0]) or "cuda"
    elif cfg.device == "cuda":  # planned for GPUs this machine lacks: nothing measured here applies
        return "cuda (none visible)", devices.slot_key(1, _precision(cfg, True)), 1
    else:
        kind = f"cpu: {devices.cpu_name()}"
    env = slots[0].env if slots else {}
    threads = int(env.get("MODEXP_THREADS") or env.get("OMP_NUM_THREADS") or 1)
    return kind, devices.slot_key(threads, _precision(cfg, gpu)), max(1, len(slots))


def _precision(cfg: Config, gpu: bool) -> str:
    return "bf16" if cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and gpu) else "fp32"


def _gpu_name(index: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={index}"],
            capture_output=True, text=True, timeout=20,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def pace_of(cfg: Config) -> tuple[Pace, int]:
    """This machine's pace for cfg's runs, and the slots they share."""
    kind, key, slots = slot_of(cfg)
    records = devices.measured_runs(kind, key)
    cache = devices.read_cache().get(kind, {})
    workers = [w for w in cache.get("workers", {}).get(key, []) if _number(w)]
    sweeps = [s for s in cache.get("sweeps", []) if _number(s)]
    # A loaded machine only ever makes these longer: the least seen is the idle machine's (a run's own
    # start-up is scaled by the CPU share it got, as its steps are). A run's start-up is long only when
    # something held it (a queue behind a lock, a process that did other work first): its lower quartile.
    starts = [r["startup_time"] * min(1.0, r.get("cpu_share") or 1.0) for r in records
              if _number(r.get("startup_time"))]  # fmt: skip
    pace = Pace(
        records=records,
        flops_per_second=cfg.sweep.flops_per_second,
        startup=_lower_quartile(starts) if starts else float(cfg.launcher.startup_s or 0.0),
        worker_startup=min(workers) if workers else float(cfg.launcher.worker_startup_s or 0.0),
        sweep_overhead=min(sweeps) if sweeps else 0.0,
        kind=f"{kind} ({key})",
    )
    return pace, slots


def _lower_quartile(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 4]


def _own_steps(spec: RunSpec) -> tuple[int, int]:
    """(first step this run trains itself, its last): a branch starts where its stem left it."""
    return (spec.cooldown_start or 0) if spec.stem else 0, spec.steps


def _multiples(every: int, lo: int, hi: int) -> int:
    """How many of lo+1 .. hi are multiples of every."""
    return hi // every - lo // every if every > 0 else 0


def run_seconds(spec: RunSpec, cfg: Config, pace: Pace) -> float:
    """One run's seconds on one slot (a warm worker's: its worker's own start-up is the study's)."""
    kind = variants.of_model(spec.model).kind
    count = flops.count(spec.model)
    lo, hi = _own_steps(spec)
    step_flops = count.train_per_token * spec.batch_size * spec.model.seq_len
    train = (hi - lo) * pace.step(kind, step_flops)
    train *= 1.0 / max(1, cfg.launcher.gpus_per_run)  # data-parallel: the step's work is shared
    seconds = pace.startup + train
    if spec.role != "stem":
        every = cfg.train.eval_every
        evals = _multiples(every, lo, hi) + (0 if every and hi % every == 0 else 1)
        modes = 2 if variants.has_causal_mode(spec.model) else 1
        eval_tokens = _eval_tokens(cfg, spec)
        seconds += evals * pace.evaluation(kind, count.forward_per_token * eval_tokens * modes)
    every = cfg.train.checkpoint_every
    checkpoints = (
        _multiples(every, lo, hi) + (0 if every and hi % every == 0 else 1) + len(spec.branch_points)
    )
    return seconds + checkpoints * pace.checkpoint()


def _eval_tokens(cfg: Config, spec: RunSpec) -> int:
    """Tokens one evaluation scores: whole batches of sequences (Corpus.val_batches)."""
    per_batch = cfg.train.batch_size * spec.model.seq_len
    return max(1, math.ceil(cfg.train.eval_tokens / per_batch)) * per_batch


def study_seconds(specs: Iterable[RunSpec], cfg: Config, pace: Pace, slots: int) -> float:
    """The wall time of training specs (stems and runs) on `slots` slots, as the pool schedules them, plus the
    sweep's own seconds; 0 for nothing to train."""
    todo = sorted(specs, key=lambda r: (r.role != "stem", -r.flops, -r.accounting["params"]))
    if not todo:
        return 0.0
    seconds = {s.run_id: run_seconds(s, cfg, pace) for s in todo}
    free = [pace.worker_startup] * min(slots, len(todo))  # when each slot is next free
    ends: dict[str, float] = {}
    waiting = list(todo)
    while waiting:
        slot = min(range(len(free)), key=free.__getitem__)
        now = free[slot]
        startable = [s for s in waiting if s.stem not in seconds or ends.get(s.stem, math.inf) <= now]
        later = [ends[s.stem] for s in waiting if s.stem in ends and ends[s.stem] > now]
        if not startable and later:  # every run left waits on a stem still training: idle until one ends
            free[slot] = min(later)
            continue
        job = (startable or waiting)[0]
        waiting.remove(job)
        ends[job.run_id] = free[slot] = now + seconds[job.run_id]
    return max(free) + pace.sweep_overhead
