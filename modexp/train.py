"""One training run, start to finish, into its run folder; resumable from its last checkpoint.

`python -m modexp.train RUN_DIR` trains the run described by RUN_DIR/config.yaml and run.json (the sweep
starts one such process per run); `modexp train [overrides]` writes those files and calls the same code.

This module is the loop, read top to bottom: `train_run` (lock, logging) -> `_prepare` (model, optimiser, resume,
records) -> `_loop` (steps, logging, evaluation, checkpoints) -> `_finish` (summary). Its collaborators: step.py
(how a step is computed), checkpoint.py, evaluation.py and records.py (meta, metrics, summary).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import branches, distributed, flops, integrity, lifeline, records, variants
from . import device as devices
from .checkpoint import CHECKPOINT, resume, start_from_stem, write_checkpoint
from .config import Config, to_typed
from .data import Corpus, load_corpus
from .device import process_started
from .distributed import SINGLE, World, world_from_env
from .errors import ModexpError
from .evaluation import evaluate, routing_sample, run_tokenizer
from .model import Transformer
from .plan import RunSpec, spec_digest
from .retention import retain_checkpoints
from .rundir import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_RESUMABLE,
    DiskFull,
    RunLock,
    branch_point,
    load_run,
    read_json,
    read_status,
    remove_stale_temporaries,
    set_status,
    write_json,
)
from .step import (
    StepPlan,
    TrainStep,
    clip_gradients,
    lr_at,
    make_optimizer,
    pick_device,
    schedule_of,
    split_predictor_params,
    step_plan,
    wrap_parallel,
)
from .tracking import MetricsLog, WandbMirror
from .units import duration, si

__all__ = [
    "NonFiniteLoss",
    "RunLocked",
    "clip_gradients",
    "lr_at",
    "main",
    "split_predictor_params",
    "train_run",
]

log = logging.getLogger("modexp.train")


class NonFiniteLoss(RuntimeError):
    pass


def _setup_logging(run_dir: Path, world: World = SINGLE) -> logging.Handler:
    # Rank 0 writes the run's log; the other processes of a run log to their stderr only.
    handler = logging.FileHandler(run_dir / "train.log") if world.is_main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if not any(
        isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers
    ):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(stream)
    root.setLevel(logging.INFO)
    return handler


def train_run(run_dir: Path, corpus: Corpus | None = None, started: float | None = None) -> dict[str, Any]:
    """Train (or resume) the run in run_dir. Returns its summary. Raises on failure, after recording it.

    With several processes per run (torchrun-style environment) every process calls this; rank 0 alone takes
    the run's lock and writes the run folder, metrics and W&B. started: when the run was handed to this
    process (time.time(); default: when the process started), the start of its start-up time.
    """
    started = started if started is not None else process_started()
    dict_cfg, spec = load_run(run_dir)
    cfg = to_typed(dict_cfg)
    check_identity(run_dir, cfg, spec)
    world = world_from_env()
    device = pick_device(cfg.device, world)
    distributed.init(world, device)
    lock = RunLock(run_dir) if world.is_main else None
    try:
        verdict = "train"
        if lock is not None:
            if not lock.acquire():
                verdict = "locked"
            elif read_status(run_dir).get("state") == "done" and (run_dir / "summary.json").exists():
                verdict = "done"
            else:
                remove_stale_temporaries(run_dir)  # from a process killed mid-write
        verdict = distributed.broadcast(verdict, world)
        if verdict == "locked":
            raise RunLocked(run_dir)
        if verdict == "done":
            log.info("%s is already done", run_dir)
            return read_json(run_dir / "summary.json")
        handler = _setup_logging(run_dir, world)
        try:
            return _train(run_dir, dict_cfg, cfg, spec, corpus, device, world, started)
        except KeyboardInterrupt:  # a signal before or after the training loop's own handler
            if world.is_main and read_status(run_dir).get("state") in ("running", "planned"):
                set_status(run_dir, "interrupted", reason="interrupted by signal; rerun to resume")
            raise
        finally:  # runs trained in one process must not write into each other's logs
            logging.getLogger().removeHandler(handler)
            handler.close()
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown()


def check_identity(run_dir: Path, cfg: Config, spec: RunSpec) -> None:
    """config.yaml and run.json still describe the run its id names: an edited setting that changes the result
    must never be trained (and tabled) under the old id."""
    kind = variants.of_model(spec.model)
    try:  # config.yaml's model settings as run.json's kind takes them
        model = kind.model_config(cfg.model) if variants.of_model(cfg.model) is kind else None
    except (ValueError, ModexpError):
        model = None
    if model != spec.model or (spec.lr is not None and cfg.train.lr != spec.lr):
        raise ModexpError(
            f"config.yaml of {spec.run_id} was edited: its model or learning rate differs from run.json; "
            "rerun the sweep (or modexp train) to restore it, or plan a new run with the new setting"
        )
    digest = spec_digest(cfg, spec)
    if not spec.run_id.endswith(f"-{digest}"):
        raise ModexpError(
            f"config.yaml of {spec.run_id} was edited: what it would train hashes to {digest}, not to the "
            "run's id; rerun the sweep (or modexp train) to restore it, or plan a new run with the new setting"
        )
    integrity.check_schedule(cfg, spec)


class RunLocked(Exception):
    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"{run_dir} is being trained by another process")


@dataclass
class _Run:
    """What one process of a run holds while it trains (built by `_prepare`)."""

    run_dir: Path
    cfg: Config
    spec: RunSpec
    device: torch.device
    world: World
    corpus: Corpus
    model: Transformer
    optimizer: torch.optim.Optimizer
    train_step: TrainStep
    plan: StepPlan
    start_step: int
    before: dict[str, float | None]  # seconds of the run's earlier processes (a resumed run) or of its stem
    meta: dict[str, Any]
    val_batches: list = field(default_factory=list)
    metrics: MetricsLog | None = None  # rank 0 only, as mirror and progress
    mirror: WandbMirror | None = None
    progress: _Progress | None = None

    @property
    def main(self) -> bool:
        return self.world.is_main

    def evaluate(self) -> dict[str, float]:
        return evaluate(
            self.model,
            self.val_batches,
            self.device,
            self.train_step.autocast,
            self.cfg.seed,
            self.plan.micro_batch,
            self.world,
        )


@dataclass
class _Clock:
    """Where the loop is, and its timings: the wall clock of this process, the steps' pace, and the seconds
    spent training apart from evaluation, checkpoints and start-up (what the iso-time verdict compares)."""

    step: int
    before: dict[str, float | None]  # the run's earlier processes, or its stem's (checkpoint.timing_of)
    startup: float = 0.0  # this process: from the run's dispatch to its first step
    t_start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)
    t_mark: float = 0.0  # the last point the host waited for the device ...
    step_mark: int = 0  # ... and the step it was at
    step_times: list[float] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    eval_s: float = 0.0  # this process's seconds in evaluation ...
    checkpoint_s: float = 0.0  # ... and writing checkpoints (and branch points)
    load_max: float = 0.0  # the highest 1-minute load average seen while training
    evals: int = 0  # evaluations and checkpoints (branch points too) this process made
    checkpoints: int = 0

    def __post_init__(self) -> None:
        self.t_mark, self.step_mark = self.t_start, self.step

    def wall(self) -> float:
        return float(self.before["wall_time"] or 0.0) + time.perf_counter() - self.t_start

    def timing(self) -> dict[str, float | None]:
        """The run's seconds so far, its earlier processes' included: wall, training (the loop less evaluation
        and checkpoints), evaluation, checkpoints, start-up; None where an earlier process did not record it."""
        elapsed = time.perf_counter() - self.t_start
        mine = {
            "train_time": elapsed - self.eval_s - self.checkpoint_s,
            "eval_time": self.eval_s,
            "checkpoint_time": self.checkpoint_s,
            "startup_time": self.startup,
            "inherited_time": 0.0,
        }
        out: dict[str, float | None] = {"wall_time": self.wall()}
        for key, value in mine.items():
            earlier = self.before.get(key)
            out[key] = None if earlier is None else earlier + value
        out["startup_time"] = (
            self.startup
        )  # this process's: a resumed run's earlier start-ups are not its pace
        return out

    def run_counts(self, run: _Run) -> dict[str, float]:
        """What this process did: its steps, evaluations (and the tokens each scored), checkpoints, seconds."""
        return {
            "steps": run.spec.steps - run.start_step,
            "evals": self.evals,
            "eval_tokens": sum(y.numel() for _, y in run.val_batches),
            "eval_s": self.eval_s,
            "checkpoints": self.checkpoints,
            "checkpoint_s": self.checkpoint_s,
            "startup_s": self.startup,
        }

    def cpu_share(self, threads: int) -> float:
        """CPU seconds this process got per wall second and thread since the loop began: about 1 alone on its
        cores, well under 1 where other work took them (a loaded machine)."""
        elapsed = time.perf_counter() - self.t_start
        return (time.process_time() - self.cpu_start) / max(elapsed * max(1, threads), 1e-9)


def _train(
    run_dir: Path,
    dict_cfg: DictConfig,
    cfg: Config,
    spec: RunSpec,
    corpus: Corpus | None,
    device: torch.device,
    world: World,
    started: float,
) -> dict[str, Any]:
    run = _prepare(run_dir, dict_cfg, cfg, spec, corpus, device, world)
    clock = _Clock(run.start_step, run.before, startup=max(0.0, time.time() - started))
    _guarded_loop(run, clock)
    return _finish(run, clock)


def _prepare(
    run_dir: Path,
    dict_cfg: DictConfig,
    cfg: Config,
    spec: RunSpec,
    corpus: Corpus | None,
    device: torch.device,
    world: World,
) -> _Run:
    """Build the model, optimiser and step; resume from the last checkpoint; open the run's records."""
    if os.environ.get("MODEXP_THREADS"):
        torch.set_num_threads(int(os.environ["MODEXP_THREADS"]))
    records.reset_peak_memory(device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the fp32 parts of a bf16 step
    corpus = corpus or load_corpus(cfg.data, spec.model.seq_len)
    plan = step_plan(cfg, spec, device, world)
    fsdp = world.distributed and cfg.train.parallel == "fsdp"
    torch.manual_seed(cfg.seed)
    model = variants.build_model(spec.model).to(device)
    model.activation_checkpointing = cfg.train.activation_checkpointing
    wrapped = wrap_parallel(model, cfg, device, world)
    optimizer = make_optimizer(model, cfg, fsdp)
    train_step = TrainStep(model, wrapped, corpus, spec, plan, cfg.seed, device, world, fsdp)

    start_step, before = resume(run_dir, spec, model, optimizer, device)
    integrity.check_corpus(run_dir, corpus.fingerprint, start_step)
    if start_step == 0 and spec.stem:  # a branch: its stem trained the steps before its cooldown
        started = start_from_stem(run_dir, spec, model, optimizer, device, cfg, corpus.fingerprint)
        if started is not None:
            start_step, before = started
            before["inherited_time"] = before["train_time"]  # the stem's share of this run's training
            if world.is_main:
                branches.copy_stem_history(run_dir, spec)
    meta = records.run_meta(cfg, spec, device, plan, world, corpus, start_step)
    run = _Run(
        run_dir, cfg, spec, device, world, corpus, model, optimizer, train_step, plan, start_step, before, meta
    )  # fmt: skip
    if run.main:
        write_json(run_dir / "meta.json", meta)
        set_status(run_dir, "running", pid=os.getpid(), step=start_step, steps=spec.steps)
        run.metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if start_step else None)
        run.mirror = WandbMirror(
            run_dir,
            spec.run_id,
            cfg.tracker.wandb,
            spec.sweep,
            spec.variant,
            {**OmegaConf.to_container(dict_cfg, resolve=False), "run": dict(spec.row())},
            history=run.metrics.records() if start_step else None,  # what W&B must hold before this step
        )
    run.val_batches = corpus.val_batches(cfg.train.batch_size, spec.model.seq_len, cfg.train.eval_tokens)
    if run.main:
        run.progress = _Progress(spec, start_step)
    return run


def _loop(run: _Run, clock: _Clock) -> None:
    """The steps from where the run stands to its last: LR, forward and backward, clip, update; then log,
    evaluate and checkpoint at their cadences."""
    cfg, spec, train = run.cfg, run.spec, run.cfg.train
    steps, seq_len = spec.steps, spec.model.seq_len
    schedule = schedule_of(cfg, spec)
    flops_per_token = flops.count(spec.model).train_per_token
    trunk_params, predictor_params = split_predictor_params(run.model)
    for step in range(run.start_step, steps):
        clock.step = step
        # The last step may hold fewer sequences: that is what lands the FLOPs within 1% of the budget.
        batch = min(spec.batch_size, spec.num_sequences - step * spec.batch_size)
        lr = schedule.lr(step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        losses, out = run.train_step(step, batch)
        grad_norm = clip_gradients(trunk_params, predictor_params, train.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        tokens = min(done * spec.batch_size, spec.num_sequences) * seq_len
        is_last = done == steps
        will_log = done % train.log_every == 0 or is_last or step == run.start_step
        will_save = done % train.checkpoint_every == 0 or done % train.eval_every == 0
        if will_log or will_save:
            lm_loss, aux_loss, norm = _synced(losses, grad_norm, run.world, done)
        if will_log:
            now = time.perf_counter()
            dt = (now - clock.t_mark) / (done - clock.step_mark)  # wall time between syncs: the device's pace
            clock.t_mark, clock.step_mark = now, done
            clock.step_times.append(dt)
            record = records.train_record(
                done, tokens, flops_per_token, (lm_loss, aux_loss), lr, norm, dt, spec.batch_size * seq_len,
                clock.wall(), out,
            )  # fmt: skip
            if run.main:
                _write_record(run, record)
                run.progress.update(done, lm_loss, record["tokens_per_s"], dt)
            clock.load_max = max(clock.load_max, _load_average())
        del out
        if done in spec.branch_points or will_save or is_last:
            _evaluate_and_save(run, clock, done, tokens, flops_per_token)


def _evaluate_and_save(run: _Run, clock: _Clock, done: int, tokens: int, flops_per_token: float) -> None:
    """After step `done`: the branch point, evaluation and checkpoint due there, each timed apart from the
    training steps (the iso-time verdict compares training seconds only)."""
    spec, train, steps = run.spec, run.cfg.train, run.spec.steps
    is_last = done == steps
    start = time.perf_counter()
    if done in spec.branch_points:  # with what trained it, which each branch starting here checks
        point = branch_point(run.run_dir, done)
        record = branches.stem_record(run.cfg, spec, run.corpus.fingerprint)
        write_checkpoint(point, run.model, run.optimizer, done, clock.wall(), spec, run.device, run.main,
                         keep_previous=False, timing=clock.timing(), record=record)  # fmt: skip
        clock.checkpoints += 1
    middle = time.perf_counter()
    clock.checkpoint_s += middle - start
    if spec.role != "stem" and (done % train.eval_every == 0 or is_last):  # a stem is never scored
        clock.last_eval = run.evaluate()
        clock.evals += 1
        if run.main:
            record = records.val_record(done, tokens, flops_per_token, clock.wall(), clock.last_eval)
            _write_record(run, record)
            run.progress.note(f"step {done}/{steps} val_loss {clock.last_eval['val_loss']:.4f}")
    end = time.perf_counter()
    clock.eval_s += end - middle
    if done % train.checkpoint_every == 0 or is_last:
        write_checkpoint(run.run_dir / CHECKPOINT, run.model, run.optimizer, done, clock.wall(), spec,
                         run.device, run.main, timing=clock.timing())  # fmt: skip
        if run.main:
            set_status(run.run_dir, "running", pid=os.getpid(), step=done, steps=steps)
        clock.checkpoints += 1
    clock.checkpoint_s += time.perf_counter() - end
    clock.t_mark, clock.step_mark = time.perf_counter(), done  # evaluation and checkpoints are not steps


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _synced(
    losses: torch.Tensor, grad_norm: torch.Tensor, world: World, step: int
) -> tuple[float, float, float]:
    """(LM loss, aux loss, grad norm) of the whole step: the one sync per logged step (every process takes
    part). Raises NonFiniteLoss, so a diverged model is never logged as fine nor checkpointed."""
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    lm_loss, aux_loss, grad_norm_value = torch.cat(
        [distributed.all_sum(losses, world), norm.detach().float().reshape(1)]
    ).tolist()
    if not (math.isfinite(lm_loss) and math.isfinite(grad_norm_value)):
        raise NonFiniteLoss(f"non-finite loss {lm_loss} (grad norm {grad_norm_value}) at step {step}")
    return lm_loss, aux_loss, grad_norm_value


def _write_record(run: _Run, record: dict[str, Any]) -> None:
    run.metrics.write(record)
    run.mirror.log_record(record)


def _guarded_loop(run: _Run, clock: _Clock) -> None:
    """The loop, with each way it can stop recorded in status.json: failed (a non-finite loss, an error) or
    interrupted (a signal, a full disk, a peer process stopped first), which the next rerun resumes."""
    run_dir, main = run.run_dir, run.main
    mirror, metrics, progress = run.mirror, run.metrics, run.progress
    try:
        _loop(run, clock)
    except NonFiniteLoss as exc:
        if main:
            _fail(run_dir, mirror, metrics, progress, str(exc), clock.step + 1)
        raise
    except KeyboardInterrupt:
        _interrupted(run_dir, mirror, metrics, progress, clock.step, main)
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            exc = DiskFull(f"no space left on the device ({exc}): free some space and rerun to resume")
        if isinstance(exc, DiskFull):
            with contextlib.suppress(Exception):
                _interrupted(run_dir, mirror, metrics, progress, clock.step, main)
            raise exc from None
        if _stopping:  # a peer process was stopped first and the collective failed: still an interruption
            _interrupted(run_dir, mirror, metrics, progress, clock.step, main)
            raise KeyboardInterrupt from exc
        if main:
            _fail(run_dir, mirror, metrics, progress, f"{type(exc).__name__}: {exc}", clock.step + 1)
        raise


def _finish(run: _Run, clock: _Clock) -> dict[str, Any]:
    """After the last step: the final score, the routing sample and summary.json; the run is done."""
    if run.progress is not None:
        run.progress.close()
    if run.metrics is not None:
        run.metrics.close()
    if run.spec.role == "stem":
        return _finish_stem(run, clock)
    if (
        not clock.last_eval
    ):  # killed after the final checkpoint but before the summary: score the final weights
        start = time.perf_counter()
        clock.last_eval = run.evaluate()
        clock.eval_s += time.perf_counter() - start
        clock.evals += 1
    timing = clock.timing()
    wall_time = timing["wall_time"]
    peak, peak_kind = records.peak_memory_gb(run.device)
    peak = distributed.all_max(peak, run.world)
    # Under FSDP every process must run the forward (it gathers the parameters); rank 0 keeps the result.
    sample = None
    if run.main or run.train_step.fsdp:
        sample = routing_sample(run.model, run.corpus, run.device, run_tokenizer(run.cfg))
    if not run.main:
        return {}
    if sample is not None:
        write_json(run.run_dir / "routing_sample.json", sample)
    warmup = schedule_of(run.cfg, run.spec).warmup
    summary = records.run_summary(
        run.cfg, run.spec, run.plan, run.meta, clock.last_eval, wall_time, clock.step_times, (peak, peak_kind),
        run.corpus.fingerprint, run.world, warmup, speed=_speed(run, clock, timing),
    )  # fmt: skip
    write_json(run.run_dir / "summary.json", summary)
    set_status(run.run_dir, "done", step=run.spec.steps, steps=run.spec.steps, wall_time=wall_time)
    retain_checkpoints(run.run_dir, run.cfg.train.keep)
    speed = {k: summary[k] for k in ("mfu", "train_time", "device_kind") if summary.get(k) is not None}
    run.mirror.finish({"val_loss": summary["val_loss"], "flops": summary["flops"], **speed}, exit_code=0)
    log.info("done %s in %.1f s: %s", run.spec.run_id, wall_time, result_words(summary))
    if run.spec.stem:
        branches.release_branch_point(run.run_dir, run.spec)
    return summary


def _finish_stem(run: _Run, clock: _Clock) -> dict[str, Any]:
    """A stem is done once every branch point's state is written: its own resume state is dropped (the last
    branch point holds the same), and it is never scored (its LR never decayed)."""
    timing = clock.timing()
    wall_time = timing["wall_time"]
    if not run.main:
        return {}
    summary = {
        **run.spec.row(),
        "branch_points": run.spec.branch_points,
        "wall_time": wall_time,
        **_speed(run, clock, timing),
    }
    write_json(run.run_dir / "summary.json", summary)
    set_status(run.run_dir, "done", step=run.spec.steps, steps=run.spec.steps, wall_time=wall_time)
    for name in ("last.pt", "previous.pt"):
        (run.run_dir / "checkpoints" / name).unlink(missing_ok=True)
    run.mirror.finish({"flops": run.spec.flops}, exit_code=0)
    log.info(
        "done stem %s: %d branch points in %.1f s", run.spec.run_id, len(run.spec.branch_points), wall_time
    )
    return summary


def _speed(run: _Run, clock: _Clock, timing: dict[str, float | None]) -> dict[str, Any]:
    """What the run's time says about the machine: its seconds by kind, device kind, peak, MFU, load. Its pace
    is kept in this machine's cache too (modexp.device), for the planner's estimates."""
    speed = records.speed_record(
        run.spec, run.device, run.world, timing, run.plan.bf16, clock.cpu_share(torch.get_num_threads()),
        clock.load_max,
    )  # fmt: skip
    with contextlib.suppress(Exception):  # a cache that cannot be written costs the planner, never the run
        pace = records.pace_record(
            run.spec, run.cfg, speed, clock.step_times, clock.run_counts(run), run.world
        )
        if pace is not None:
            devices.record_runs(speed["device_kind"], devices.slot_key(speed["threads"], speed["precision_used"]),
                                [pace])  # fmt: skip
    return speed


def _fail(
    run_dir: Path,
    mirror: WandbMirror | None,
    metrics: MetricsLog | None,
    progress: _Progress | None,
    reason: str,
    step: int,
) -> None:
    set_status(run_dir, "failed", reason=reason, step=step)
    _close(mirror, metrics, progress, exit_code=1)
    log.error("failed at step %d: %s", step, reason)


def _interrupted(
    run_dir: Path,
    mirror: WandbMirror | None,
    metrics: MetricsLog | None,
    progress: _Progress | None,
    step: int,
    main: bool,
) -> None:
    if main:
        set_status(run_dir, "interrupted", reason="interrupted by signal; rerun to resume", step=step)
    _close(mirror, metrics, progress, exit_code=130)


def _close(
    mirror: WandbMirror | None, metrics: MetricsLog | None, progress: _Progress | None, exit_code: int
) -> None:
    if metrics is not None:
        metrics.close()
    if progress is not None:
        progress.close()
    if mirror is not None:
        mirror.finish(None, exit_code=exit_code)


def result_words(summary: dict[str, Any]) -> str:
    """A run's result as its last log line says it: the causal loss (what a study of a routed model is judged
    on, as at sampling) and the share of tokens its routed blocks then processed; the top-k loss beside it."""
    causal = summary.get("val_loss_causal")
    if causal is None or not math.isfinite(causal):
        return f"val loss {summary['val_loss']:.4f}"
    frac = summary.get("val_causal_frac")
    processed = f", routed blocks processed {frac:.1%} of tokens" if frac is not None else ""
    return f"causal val loss {causal:.4f} (top-k {summary['val_loss']:.4f}){processed}"


class _Progress:
    """A tqdm bar on a terminal; plain periodic log lines otherwise (sweeps, CI, log files)."""

    def __init__(self, spec: RunSpec, start: int) -> None:
        self.spec = spec
        self.bar = None
        self.last_line = 0.0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=spec.steps, initial=start, desc=spec.run_id[:40], unit="step", dynamic_ncols=True
            )

    def update(self, step: int, loss: float, tokens_per_s: float, step_time: float) -> None:
        """The step, its loss, tokens/s and the time left at the current pace (evaluations not counted)."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=si(tokens_per_s), refresh=True)
        elif time.monotonic() - self.last_line > 10 or step == self.spec.steps:
            self.last_line = time.monotonic()
            left = duration(step_time * (self.spec.steps - step))
            log.info(
                "step %d/%d loss %.4f %s tok/s ETA %s", step, self.spec.steps, loss, si(tokens_per_s), left
            )

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_stopping = False


def _raise_interrupt(signum: int, frame: Any) -> None:
    # Once only: Ctrl-C reaches the child as SIGINT and then SIGTERM from the sweep; a second interrupt
    # inside the handler that records "interrupted" would leave the run marked running.
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt


def _record_unlocked(run_dir: Path, state: str, reason: str) -> None:
    """Record why a run stopped outside its training loop: only when no other process holds it (that one
    is training from its own files), and never a second traceback when even this write fails."""
    if world_from_env().rank != 0 or not (run_dir / "run.json").exists():
        return
    with contextlib.suppress(Exception):
        lock = RunLock(run_dir)
        if lock.acquire():
            try:
                set_status(run_dir, state, reason=reason)
            finally:
                lock.release()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a run's own process: `python -m modexp.train RUN_DIR` (several processes per run, or a
    launcher without workers; the local pool trains runs in its workers, modexp.launch.worker)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m modexp.train RUN_DIR", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # Ctrl-C, scancel: stop, mark interrupted
        signal.signal(signum, _raise_interrupt)
    lifeline.stay_tied()  # a rank (own session under torchrun) must not outlive its launcher, even a kill -9
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        lifeline.end_if_stuck(code=EXIT_INTERRUPTED)  # nor hang in a collective its peer has left
    return run_one(Path(args[0]))


def run_one(run_dir: Path, started: float | None = None) -> int:
    """Train one run in this process; the exit code its launcher reads (0 done, 1 diverged, 2 refused,
    EXIT_LOCKED, EXIT_RESUMABLE, EXIT_INTERRUPTED). Signal handlers are the caller's (main, a worker)."""
    global _stopping
    _stopping = False  # a worker's earlier run may have been stopped; this one has not
    try:
        train_run(run_dir, started=started)
    except RunLocked as exc:
        print(exc, file=sys.stderr)
        return EXIT_LOCKED
    except DiskFull as exc:  # nothing wrong with the run: it resumes once there is space
        _record_unlocked(run_dir, "interrupted", str(exc))
        print(f"modexp: {exc}", file=sys.stderr)
        return EXIT_RESUMABLE
    except ModexpError as exc:
        _record_unlocked(run_dir, "failed", str(exc))
        print(f"modexp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except NonFiniteLoss:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
