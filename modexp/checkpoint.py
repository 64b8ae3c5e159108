"""A run's checkpoints: atomic saves that keep the one they replace, and a resume that falls back to it.

A checkpoint holds the whole model and optimiser state keyed by parameter name (gathered from every process),
so a run saved on one process, on DDP or on FSDP resumes on any of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import branches, variants
from .config import Config
from .errors import ModexpError
from .plan import RunSpec
from .rundir import atomic_write, branch_point, first_line, stem_dir

log = logging.getLogger("modexp.train")

CHECKPOINT = "checkpoints/last.pt"
LAST, PREVIOUS = "last.pt", "previous.pt"

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic and durable; the checkpoint it replaces is kept as previous.pt, the fallback when last.pt
    does not load (a kill mid-write, a truncated copy, a bad disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp), keep=path.with_name(PREVIOUS))


def same_model(saved: Any, spec: RunSpec) -> bool:
    """A checkpoint's model settings are the run's model, read through the registry as its kind takes them (a
    checkpoint written before kinds had their own configs holds every kind's settings; its kind keeps its own)."""
    try:
        return variants.model_config(saved) == spec.model
    except (ValueError, TypeError, ModexpError):
        return False


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def resume_state(
    run_dir: Path, spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Load the newest checkpoint that loads and belongs to this run into model and optimizer.

    Falls back from last.pt to previous.pt; when neither works, one line naming the file and the remedy.
    Returns the checkpoint (its step, wall time and RNG state), or None when the run has none yet.
    """
    folder = run_dir / "checkpoints"
    candidates = [p for p in (folder / LAST, folder / PREVIOUS) if p.exists()]
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
            if state.get("run_id") != spec.run_id:
                raise ValueError(f"it belongs to run {state.get('run_id')}, not {spec.run_id}")
            if not same_model(state.get("model_config"), spec):
                raise ValueError("its model config differs from the run's")
            if "optimizer_fqn" not in state and "optimizer" not in state and state.get("step") != spec.steps:
                raise ValueError(
                    "it holds weights only (train.keep=final-weights), not a state to train on from"
                )
            restore_state(model, optimizer, state)
        except Exception as exc:  # truncated (EOFError, zip errors), unpicklable, wrong shapes, another run
            problems.append(f"{path.name}: {first_line(exc)}")
            log.warning("checkpoint %s does not load (%s)", path, first_line(exc))
            continue
        if state.get("steps", spec.steps) != spec.steps:  # not the file's fault: no fallback
            raise ModexpError(
                f"{path} belongs to a schedule of {state['steps']} steps, run.json says {spec.steps}: rerun the "
                f"sweep (or modexp train) to rewrite run.json, or delete {folder} to train from step 0"
            )
        if path.name != LAST:
            log.warning("resuming from %s instead", path)
        return state
    if problems:
        raise ModexpError(
            f"no checkpoint of {run_dir} loads ({'; '.join(problems)}): delete {folder} to train the run "
            "again from step 0"
        )
    return None


def timing_of(state: dict[str, Any]) -> dict[str, float | None]:
    """The seconds a checkpoint's run had spent up to it: wall_time, and (checkpoints written since they were
    recorded) train_time, eval_time, checkpoint_time and startup_time; None where the checkpoint predates them."""
    timing: dict[str, float | None] = {"wall_time": float(state["wall_time"])}
    recorded = state.get("timing") or {}
    for key in TIMES:
        timing[key] = float(recorded[key]) if key in recorded else None
    return timing


# train_time: the loop less evaluation and checkpoints; inherited_time: the part of it a branch's stem trained;
# startup_time: the last process's, from its dispatch to its first step.
TIMES = ("train_time", "eval_time", "checkpoint_time", "startup_time", "inherited_time")


def resume(
    run_dir: Path, spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, dict[str, float | None]]:
    """Restore the run's last checkpoint (weights, optimiser, RNG) if it has one: (its step, the seconds spent
    up to it, timing_of); (0, zeros) for a run that starts from scratch."""
    state = resume_state(run_dir, spec, model, optimizer)
    if state is None:
        return 0, {"wall_time": 0.0, **dict.fromkeys(TIMES, 0.0)}
    if "rng_cpu" in state:  # a done run's final weights carry none: nothing is left to draw
        torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    start_step = int(state["step"])
    log.info("resuming %s at step %d of %d", spec.run_id, start_step, spec.steps)
    return start_step, timing_of(state)


def start_from_stem(
    run_dir: Path,
    spec: RunSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    cfg: Config,
    fingerprint: str,
) -> tuple[int, dict[str, float | None]] | None:
    """A branch with no checkpoint of its own starts from its stem's state at its cooldown start: (that step,
    the stem's seconds up to it, timing_of: a branch's times are those of its run trained from scratch). None
    when that state is gone (its branch finished once and took it): the branch then trains from step 0, which
    computes the same run. A stem trained with other settings or on another corpus (`fingerprint` is the
    branch's) is refused, never continued (branches.check_continuation)."""
    path = branch_point(stem_dir(run_dir, spec.stem), spec.cooldown_start)
    if not path.exists():
        log.warning("%s: the state of stem %s at step %d is gone: training from step 0", spec.run_id, spec.stem,
                    spec.cooldown_start)  # fmt: skip
        return None
    try:
        state = load_checkpoint(path)
        if state.get("run_id") != spec.stem or int(state.get("step", -1)) != spec.cooldown_start:
            raise ValueError(f"it belongs to {state.get('run_id')} at step {state.get('step')}")
        if not same_model(state.get("model_config"), spec):
            raise ValueError("its model config differs from the branch's")
    except Exception as exc:
        raise ModexpError(
            f"{path} does not load ({first_line(exc)}): delete it to train {spec.run_id} from step 0"
        ) from None
    branches.check_continuation(run_dir, spec, state, cfg, fingerprint)
    try:
        restore_state(model, optimizer, state)
    except Exception as exc:
        raise ModexpError(
            f"{path} does not load ({first_line(exc)}): delete it to train {spec.run_id} from step 0"
        ) from None
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    log.info("branch %s starts from stem %s at step %d of %d", spec.run_id, spec.stem, spec.cooldown_start,
             spec.steps)  # fmt: skip
    return spec.cooldown_start, timing_of(state)


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Whole (unsharded) model and optimiser state, keyed by parameter name, on rank 0 (empty elsewhere).

    The same file whether the run trains on one process, on DDP or on FSDP, so it resumes on any of them.
    """
    return {
        "model": get_model_state_dict(model, options=_FULL),
        "optimizer_fqn": get_optimizer_state_dict(model, optimizer, options=_FULL),
    }


def restore_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Every process loads the whole checkpoint and keeps its part (FSDP) or all of it."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    if "optimizer_fqn" in state:
        set_optimizer_state_dict(model, optimizer, state["optimizer_fqn"], options=options)
    elif "optimizer" in state:  # checkpoints written before parallel training: the optimiser's own format
        optimizer.load_state_dict(state["optimizer"])
    # else: a done run's final weights (train.keep=final-weights): nothing is left to train, only to score


def write_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    wall_time: float,
    spec: RunSpec,
    device: torch.device,
    main: bool,
    keep_previous: bool = True,
    timing: dict[str, float | None] | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """Save the run's state after `step`: weights, optimiser, RNG, and what it belongs to (its run and model
    config, checked on resume; `record`: what else a reader checks, e.g. a stem's settings and corpus), and the
    seconds spent so far (timing: train_time, eval_time, ...). Every process calls it (gathering is a collective
    under FSDP); rank 0 writes."""
    state = gather_state(model, optimizer)
    if not main:
        return
    state.update(
        {
            "step": step,
            "wall_time": wall_time,
            "rng_cpu": torch.get_rng_state(),
            "model_config": vars(spec.model).copy(),
            "run_id": spec.run_id,
            "steps": spec.steps,  # the schedule it belongs to: a resume under another one is refused
            "timing": {k: v for k, v in (timing or {}).items() if k in TIMES and v is not None},
            **(record or {}),
        }
    )
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    if keep_previous:
        save_checkpoint(path, state)
    else:  # a stem's branch point: written once, nothing to fall back to
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
