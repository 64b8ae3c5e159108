"""One training run, start to finish, into its run folder; resumable from its last checkpoint.

`python -m modexp.train RUN_DIR` trains the run described by RUN_DIR/config.yaml and run.json (the sweep
starts one such process per run); `modexp train [overrides]` writes those files and calls the same code.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import distributed, flops, variants
from . import tokenizer as tokenizers
from .config import Config, to_typed
from .data import Corpus, load_corpus
from .distributed import SINGLE, World, chunks, world_from_env
from .errors import ModexpError
from .memory import MemoryEstimate, resolve_micro_batch
from .model import ModelConfig, Transformer
from .model.experts import ExpertRecord
from .model.routing import RoutingRecord
from .model.transformer import ModelOutput
from .plan import RunSpec, run_digest
from .rundir import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_RESUMABLE,
    DiskFull,
    RunLock,
    atomic_write,
    first_line,
    load_run,
    read_json,
    read_status,
    remove_stale_temporaries,
    set_status,
    write_json,
)
from .tokenizer import Tokenizer
from .tracking import MetricsLog, WandbMirror, environment

log = logging.getLogger("modexp.train")

CHECKPOINT = "checkpoints/last.pt"
LAST, PREVIOUS = "last.pt", "previous.pt"


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(step: int, steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to min_ratio * peak at the run's last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pick_device(requested: str, world: World | None = None) -> torch.device:
    """The device this process trains on: with several processes per run, GPU number LOCAL_RANK."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModexpError("device=cuda is not available on this machine: use device=auto or device=cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank if world else 0)
        torch.cuda.set_device(device)
    return device


def make_optimizer(model: nn.Module, cfg: Config, fsdp: bool = False) -> torch.optim.AdamW:
    # Weight decay on matrices (and embeddings), not on norm gains or biases.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # FSDP's parameters are sharded DTensors, which the fused kernel does not take (foreach does).
    return torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=None if fsdp else True
    )


def split_predictor_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(every other parameter, the causal-routing predictors' parameters)."""
    trunk, predictor = [], []
    for name, param in model.named_parameters():
        (predictor if ".predictor." in name else trunk).append(param)
    return trunk, predictor


def clip_gradients(trunk: list[nn.Parameter], predictor: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the model's and the predictors' gradients each by its own norm; return the model's norm.

    One global norm would let the predictor's gradient scale the trunk's update whenever clipping bites, and
    the predictor must never change the language model (mod-method.md).
    """
    if predictor:
        torch.nn.utils.clip_grad_norm_(predictor, max_norm)
    return torch.nn.utils.clip_grad_norm_(trunk, max_norm)


def routing_stats(records: list[RoutingRecord], router_weight: str) -> dict[str, float]:
    """Per routed block: fraction processed, router weight statistics, causal-router accuracy vs top-k.

    Gathered into one tensor and read with one host sync (a logged step must not stall once per statistic).
    """
    names, values = [], []
    accs = []
    for rec in records:
        r = rec.router_logits.detach().float()
        g = torch.sigmoid(r) if router_weight == "sigmoid" else r
        layer = rec.layer
        names += [f"routed_frac/{layer}", f"router_weight_mean/{layer}", f"router_weight_std/{layer}"]
        values += [rec.mask.float().mean(), g.mean(), g.std()]
        causal_logits = rec.predictor_logits
        if causal_logits is None and rec.aux_loss is not None:
            causal_logits = r  # aux_loss: the router itself decides (sigmoid(r) > 0.5)
        if causal_logits is not None:
            decided = causal_logits.detach() > 0
            acc = (decided == rec.topk_mask).float().mean()
            names += [f"causal_acc/{layer}", f"causal_frac/{layer}"]
            values += [acc, decided.float().mean()]
            accs.append(acc)
    if accs:
        names.append("causal_acc")
        values.append(torch.stack(accs).mean())
    return dict(zip(names, torch.stack(values).tolist())) if values else {}


def expert_stats(records: list[ExpertRecord]) -> dict[str, float]:
    """Per block with an MoE: share of (token, expert) slots its experts processed, the share of tokens no
    expert took (they skip the MLP), and the causal decision's agreement with expert choice. One host sync."""
    names, values = [], []
    for i, rec in enumerate(records):
        names += [f"expert_frac/{i}", f"expert_skipped/{i}"]
        values += [rec.mask.float().mean(), (~rec.mask.any(-1)).float().mean()]
        logits = rec.predictor_logits
        if logits is None and rec.aux_loss is not None:
            logits = rec.router_logits[..., : rec.mask.shape[-1]]  # aux_loss: the router itself decides
        if logits is not None:
            names.append(f"expert_causal_acc/{i}")
            values.append(((logits.detach() > 0) == rec.topk_mask).float().mean())
    return dict(zip(names, torch.stack(values).tolist())) if values else {}


def noise_seed(seed: int, stream: int, index: int) -> int:
    """A seed for random routing's noise: one per (run seed, training or evaluation, step or batch)."""
    return (seed * 1_000_003 + stream * 7_919 + index) % (2**63 - 1)


def routing_noise(model: Transformer, rows: int, device: torch.device, seed: int) -> torch.Tensor | None:
    """Random routing's scores for a whole batch (rows, routed blocks, T), from their own seeded stream.

    Every process draws the whole batch and takes its rows: the noise a sequence gets depends on the run's
    seed and the step, not on the micro-batch size or the number of processes, and resumes exactly.
    """
    if model.cfg.routing != "random":
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    shape = (rows, model.n_routed, model.cfg.seq_len)
    return torch.randn(shape, generator=generator, device=device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list,
    device: torch.device,
    autocast: Any,
    seed: int,
    micro_batch: int | None = None,
    world: World = SINGLE,
) -> dict[str, float]:
    """Validation loss on the fixed held-out set, token-weighted; for MoD also with causal routing.

    The run's processes share the batches (i % processes); every process runs the same number of forwards
    (FSDP gathers parameters in each), the spare ones on batch 0 with weight 0.
    """
    model.eval()
    cfg: ModelConfig = getattr(model, "cfg", None) or model.module.cfg  # type: ignore[union-attr]
    modes = ["topk"]
    # Causal routing where top-k is not causal: MoD's routers and every MoE's expert choice (experts.py).
    if variants.has_causal_mode(cfg):
        modes.append("causal")
    result = {}
    rounds = math.ceil(len(batches) / world.size)
    for mode in modes:
        # total loss, tokens, tokens processed and agreeing with top-k, tokens decided: summed on the device
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        for j in range(rounds):
            i = j * world.size + world.rank
            weight = 1.0 if i < len(batches) else 0.0
            x_all, y_all = batches[i if weight else 0]
            noise_all = routing_noise(_unwrap(model), len(x_all), device, noise_seed(seed, 1, i))
            for lo, hi in chunks(0, len(x_all), micro_batch):
                x, y = x_all[lo:hi].to(device), y_all[lo:hi].to(device)
                noise = noise_all[lo:hi] if noise_all is not None else None
                with autocast:
                    out = model(x, y, routing_mode=mode, routing_noise=noise)
                sums[0] += weight * out.loss.double() * y.numel()
                sums[1] += weight * y.numel()
                if mode == "causal":
                    for rec in out.routing:
                        sums[2] += weight * rec.mask.sum()
                        sums[3] += weight * (rec.mask == rec.topk_mask).sum()
                        sums[4] += weight * rec.mask.numel()
        total, count, processed, agreed, decided = distributed.all_sum(sums, world).tolist()
        result["val_loss" if mode == "topk" else "val_loss_causal"] = total / count
        if decided:
            # What causal routing really did at validation: the share of tokens the routed blocks processed
            # (top-k processes exactly `capacity`) and how often it agreed with top-k membership.
            result["val_causal_frac"] = processed / decided
            result["val_causal_acc"] = agreed / decided
    model.train()
    return result


def _unwrap(model: nn.Module) -> Transformer:
    """The Transformer inside a DDP wrapper or a torch.compile'd module."""
    while not isinstance(model, Transformer):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def run_tokenizer(cfg: Any) -> Tokenizer | None:
    """The tokenizer of the run's data, to show its tokens as text; None when unknown or not loadable."""
    try:
        return tokenizers.for_data(cfg.data.name, cfg.data.path)
    except ModexpError as exc:
        log.warning("routing sample without text: %s", exc)
        return None


def routing_sample(
    model: Transformer, corpus: Corpus, device: torch.device, tok: Tokenizer | None = None
) -> dict[str, Any] | None:
    """Which tokens each routed block took on one held-out window (the paper's Fig. 5), with each token's
    text by the run's tokenizer (tok; None for raw shards, whose tokenizer is unknown: ids only)."""
    if not model.cfg.skips_blocks:  # no block is skipped whole (integrated MoDE routes inside the MoE)
        return None
    x, _ = corpus.val_batches(1, model.cfg.seq_len, model.cfg.seq_len)[0]
    model.eval()
    with torch.no_grad():
        out = model(x.to(device))
    model.train()
    tokens = x[0].tolist()
    gate = torch.sigmoid if model.cfg.router_weight == "sigmoid" else (lambda t: t)
    return {
        "tokens": tokens,
        "text": tok.decode(tokens) if tok else "",
        "pieces": tok.pieces(tokens) if tok else None,
        "tokenizer": tok.spec if tok else None,
        "layers": [r.layer for r in out.routing],
        "selected": [r.mask[0].int().tolist() for r in out.routing],
        "router_weights": [gate(r.router_logits[0].float()).tolist() for r in out.routing],
        "capacity": model.cfg.capacity,
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic and durable; the checkpoint it replaces is kept as previous.pt, the fallback when last.pt
    does not load (a kill mid-write, a truncated copy, a bad disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp), keep=path.with_name(PREVIOUS))


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
            if state.get("model_config") != vars(spec.model):
                raise ValueError("its model config differs from the run's")
            restore_state(model, optimizer, state)
        except Exception as exc:  # truncated (EOFError, zip errors), unpicklable, wrong shapes, another run
            problems.append(f"{path.name}: {first_line(exc)}")
            log.warning("checkpoint %s does not load (%s)", path, first_line(exc))
            continue
        if path.name != LAST:
            log.warning("resuming from %s instead", path)
        return state
    if problems:
        raise ModexpError(
            f"no checkpoint of {run_dir} loads ({'; '.join(problems)}): delete {folder} to train the run "
            "again from step 0"
        )
    return None


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


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
    else:  # checkpoints written before parallel training: the optimiser's own format
        optimizer.load_state_dict(state["optimizer"])


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """(peak memory of this process in GB, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "cpu_max_rss"


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


def train_run(run_dir: Path, corpus: Corpus | None = None) -> dict[str, Any]:
    """Train (or resume) the run in run_dir. Returns its summary. Raises on failure, after recording it.

    With several processes per run (torchrun-style environment) every process calls this; rank 0 alone takes
    the run's lock and writes the run folder, metrics and W&B.
    """
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
            return _train(run_dir, dict_cfg, cfg, spec, corpus, device, world)
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
    if cfg.model != spec.model or (spec.lr is not None and cfg.train.lr != spec.lr):
        raise ModexpError(
            f"config.yaml of {spec.run_id} was edited: its model or learning rate differs from run.json; "
            "rerun the sweep (or modexp train) to restore it, or plan a new run with the new setting"
        )
    digest = run_digest(cfg, spec.model, spec.budget)
    if not spec.run_id.endswith(f"-{digest}"):
        raise ModexpError(
            f"config.yaml of {spec.run_id} was edited: what it would train hashes to {digest}, not to the "
            "run's id; rerun the sweep (or modexp train) to restore it, or plan a new run with the new setting"
        )


class RunLocked(Exception):
    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"{run_dir} is being trained by another process")


@dataclass
class StepPlan:
    """How one process computes a step: its micro-batch, compile, precision, and the memory estimate."""

    micro_batch: int | None  # sequences per forward/backward (None: this process's whole share)
    compile: bool
    bf16: bool
    memory: MemoryEstimate | None


def step_plan(cfg: Config, spec: RunSpec, device: torch.device, world: World) -> StepPlan:
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    compile_ = cfg.train.compile is True or (cfg.train.compile == "auto" and device.type == "cuda")
    device_bytes = None
    if cfg.launcher.gpu_mem_gb:
        device_bytes = cfg.launcher.gpu_mem_gb * 1e9
    elif device.type == "cuda":
        device_bytes = torch.cuda.get_device_properties(device).total_memory
    micro, memory = resolve_micro_batch(
        spec.model,
        spec.batch_size,
        cfg.train.micro_batch_size,
        device_bytes,
        "bf16" if bf16 else "fp32",
        world.size,
        cfg.train.parallel == "fsdp",
        cfg.train.activation_checkpointing,
    )
    return StepPlan(micro, compile_, bf16, memory)


def wrap_parallel(model: Transformer, cfg: Config, device: torch.device, world: World) -> nn.Module:
    """DDP (gradients averaged across processes) or FSDP2 (parameters and optimiser state sharded)."""
    if not world.distributed:
        return model
    if cfg.train.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _train(
    run_dir: Path,
    dict_cfg: DictConfig,
    cfg: Config,
    spec: RunSpec,
    corpus: Corpus | None,
    device: torch.device,
    world: World,
) -> dict[str, Any]:
    if os.environ.get("MODEXP_THREADS"):
        torch.set_num_threads(int(os.environ["MODEXP_THREADS"]))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the fp32 parts of a bf16 step
    corpus = corpus or load_corpus(cfg.data, spec.model.seq_len)
    model_cfg: ModelConfig = spec.model
    plan = step_plan(cfg, spec, device, world)
    fsdp = world.distributed and cfg.train.parallel == "fsdp"
    torch.manual_seed(cfg.seed)
    model = variants.build_model(model_cfg).to(device)
    model.activation_checkpointing = cfg.train.activation_checkpointing
    wrapped = wrap_parallel(model, cfg, device, world)
    optimizer = make_optimizer(model, cfg, fsdp)
    # Compiled for the full micro-batch; the partial last batch runs eager instead of recompiling (minutes).
    compiled = torch.compile(wrapped) if plan.compile else wrapped
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if plan.bf16
        else contextlib.nullcontext()
    )
    count = flops.count(model_cfg)
    seq_len, steps = model_cfg.seq_len, spec.steps
    warmup = min(cfg.train.max_warmup_steps, max(1, round(cfg.train.warmup_fraction * steps)))

    ckpt_path = run_dir / CHECKPOINT
    start_step, wall_before = 0, 0.0
    state = resume_state(run_dir, spec, model, optimizer)
    if state is not None:
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_step, wall_before = int(state["step"]), float(state["wall_time"])
        log.info("resuming %s at step %d of %d", spec.run_id, start_step, steps)

    main = world.is_main
    meta = {
        **environment(),
        "run_id": spec.run_id,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16" if plan.bf16 else "fp32",
        "processes": world.size,
        "parallel": cfg.train.parallel if world.distributed else "none",
        "micro_batch_size": plan.micro_batch,
        "estimated_peak_gb": plan.memory.peak_gb if plan.memory else None,
        "compile": plan.compile,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "corpus": {"fingerprint": corpus.fingerprint, **corpus.description},
        "accounting": {**flops.describe(model_cfg), "convention": "exact", "shape": spec.shape},
        "resumed_from_step": start_step or None,
    }
    mirror: WandbMirror | None = None
    metrics: MetricsLog | None = None
    if main:
        write_json(run_dir / "meta.json", meta)
        set_status(run_dir, "running", pid=os.getpid(), step=start_step, steps=steps)
        metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if start_step else None)
        config_dict = OmegaConf.to_container(dict_cfg, resolve=True)
        mirror = WandbMirror(
            run_dir,
            spec.run_id,
            cfg.tracker.wandb,
            spec.sweep,
            spec.variant,
            {"config": config_dict, "run": {k: v for k, v in spec.row().items()}},
            history=metrics.records() if start_step else None,  # what W&B must hold before this step
        )
    val_batches = corpus.val_batches(cfg.train.batch_size, seq_len, cfg.train.eval_tokens)

    def checkpoint(step: int, wall: float) -> None:
        state = gather_state(model, optimizer)  # a collective under FSDP: every process takes part
        if not main:
            return
        state.update(
            {
                "step": step,
                "wall_time": wall,
                "rng_cpu": torch.get_rng_state(),
                "model_config": vars(model_cfg).copy(),
                "run_id": spec.run_id,
            }
        )
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, state)

    def sync_gradients(last: bool) -> Any:
        """Gradients are reduced across processes once per step, after the last micro-batch."""
        if fsdp:
            model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if world.distributed and not last:
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def train_step(step: int, rows: int) -> tuple[torch.Tensor, ModelOutput]:
        """Forward and backward over this process's share of the step's batch, in micro-batches.

        Each micro-batch's loss is weighted by its share of the whole batch, so the summed gradients equal
        the whole batch's (DDP and FSDP average over processes, hence the factor world.size).
        Returns the step's (LM loss, aux loss) share of this process, and the last micro-batch's output.
        """
        x_all, y_all = corpus.train_batch(step, rows, seq_len, cfg.seed)
        noise_all = routing_noise(model, rows, device, noise_seed(cfg.seed, 0, step))
        lo, hi = distributed.share(rows, world)
        parts = chunks(lo, hi, plan.micro_batch) if hi > lo else [(0, 1)]  # no rows: take part, weight 0
        full = plan.micro_batch or math.ceil(spec.batch_size / world.size)
        losses = torch.zeros(2, device=device)
        out = None
        for i, (a, b) in enumerate(parts):
            weight = (b - a) / rows if hi > lo else 0.0
            x = x_all[a:b].to(device, non_blocking=True)
            y = y_all[a:b].to(device, non_blocking=True)
            noise = noise_all[a:b] if noise_all is not None else None
            forward = compiled if b - a == full else wrapped
            with sync_gradients(i == len(parts) - 1):
                with autocast:
                    out = forward(x, y, routing_noise=noise)
                loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
                (loss * (weight * world.size)).backward()
            losses[0] += out.loss.detach().float() * weight
            if out.aux_loss is not None:
                losses[1] += out.aux_loss.detach().float() * weight
        assert out is not None
        return losses, out

    trunk_params, predictor_params = split_predictor_params(model)
    progress = _Progress(spec, start_step) if main else None
    step_times: list[float] = []
    t_start = time.perf_counter()
    t_mark, step_mark = t_start, start_step  # the last point the host waited for the device
    last_eval: dict[str, float] = {}
    step = start_step
    try:
        for step in range(start_step, steps):
            # The last step may hold fewer sequences: that is what lands the FLOPs within 1% of the budget.
            batch = min(spec.batch_size, spec.num_sequences - step * spec.batch_size)
            lr = lr_at(step, steps, cfg.train.lr, warmup, cfg.train.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses, out = train_step(step, batch)
            grad_norm = clip_gradients(trunk_params, predictor_params, cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens = min(done * spec.batch_size, spec.num_sequences) * seq_len
            is_last = done == steps
            will_log = done % cfg.train.log_every == 0 or is_last or step == start_step
            will_save = done % cfg.train.checkpoint_every == 0 or done % cfg.train.eval_every == 0
            if will_log or will_save:
                # The one sync per logged step (every process takes part); never checkpoint a diverged model.
                norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                lm_loss, aux_loss, grad_norm_value = torch.cat(
                    [distributed.all_sum(losses, world), norm.detach().float().reshape(1)]
                ).tolist()
                if not (math.isfinite(lm_loss) and math.isfinite(grad_norm_value)):
                    raise NonFiniteLoss(
                        f"non-finite loss {lm_loss} (grad norm {grad_norm_value}) at step {done}"
                    )
            if will_log:
                now = time.perf_counter()
                dt = (now - t_mark) / (done - step_mark)  # wall time between syncs: the device's real pace
                t_mark, step_mark = now, done
                step_times.append(dt)
                record = {
                    "kind": "train",
                    "step": done,
                    "tokens": tokens,
                    "flops": tokens * count.train_per_token,
                    "loss": lm_loss,
                    "lr": lr,
                    "grad_norm": grad_norm_value,
                    "step_time": dt,
                    "tokens_per_s": spec.batch_size * seq_len / dt,
                    "wall_time": wall_before + now - t_start,
                }
                if out.aux_loss is not None:
                    record["aux_loss"] = aux_loss
                # Routing statistics of rank 0's last micro-batch: a sample of the step, not the whole batch.
                record.update(routing_stats(out.routing, model_cfg.router_weight))
                record.update(expert_stats(out.experts))
                if main:
                    metrics.write(record)
                    mirror.log_record(record)
                    progress.update(done, lm_loss)
            del out
            if done % cfg.train.eval_every == 0 or is_last:
                last_eval = evaluate(model, val_batches, device, autocast, cfg.seed, plan.micro_batch, world)
                wall = wall_before + time.perf_counter() - t_start
                if main:
                    val_record = {
                        "kind": "val",
                        "step": done,
                        "tokens": tokens,
                        "flops": tokens * count.train_per_token,
                        "wall_time": wall,
                        **last_eval,
                    }
                    metrics.write(val_record)
                    mirror.log_record(val_record)
                    progress.note(f"step {done}/{steps} val_loss {last_eval['val_loss']:.4f}")
            if done % cfg.train.checkpoint_every == 0 or is_last:
                checkpoint(done, wall_before + time.perf_counter() - t_start)
                if main:
                    set_status(run_dir, "running", pid=os.getpid(), step=done, steps=steps)
            if will_save or is_last:
                t_mark, step_mark = time.perf_counter(), done  # evaluation and checkpoints are not steps
    except NonFiniteLoss as exc:
        if main:
            _fail(run_dir, mirror, metrics, progress, str(exc), step + 1)
        raise
    except KeyboardInterrupt:
        _interrupted(run_dir, mirror, metrics, progress, step, main)
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            exc = DiskFull(f"no space left on the device ({exc}): free some space and rerun to resume")
        if isinstance(exc, DiskFull):
            with contextlib.suppress(Exception):
                _interrupted(run_dir, mirror, metrics, progress, step, main)
            raise exc from None
        if _stopping:  # a peer process was stopped first and the collective failed: still an interruption
            _interrupted(run_dir, mirror, metrics, progress, step, main)
            raise KeyboardInterrupt from exc
        if main:
            _fail(run_dir, mirror, metrics, progress, f"{type(exc).__name__}: {exc}", step + 1)
        raise
    if progress is not None:
        progress.close()
    if metrics is not None:
        metrics.close()
    if not last_eval:  # killed after the final checkpoint but before the summary: score the final weights
        last_eval = evaluate(model, val_batches, device, autocast, cfg.seed, plan.micro_batch, world)

    wall_time = wall_before + time.perf_counter() - t_start
    peak, peak_kind = peak_memory_gb(device)
    peak = distributed.all_max(peak, world)
    # Under FSDP every process must run the forward (it gathers the parameters); rank 0 keeps the result.
    sample = routing_sample(model, corpus, device, run_tokenizer(cfg)) if main or fsdp else None
    if not main:
        return {}
    if sample is not None:
        write_json(run_dir / "routing_sample.json", sample)
    step_time = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    routed_by = model_cfg.causal_router if model_cfg.routing == "topk" or model_cfg.moe else "none"
    summary = {
        **spec.row(),
        "sweep": spec.sweep,
        "routing": model_cfg.routing,
        "capacity": model_cfg.capacity if model_cfg.routing != "none" else 1.0,
        "route_every": model_cfg.route_every if model_cfg.routing != "none" else 0,
        "causal_router": routed_by,
        # Mixture of experts (moe, mode_staged, mode_integrated): 0 experts for a dense MLP.
        "experts": model_cfg.experts if model_cfg.moe else 0,
        "expert_capacity": model_cfg.expert_capacity if model_cfg.moe else 1.0,
        "noop_experts": model_cfg.noop_experts if model_cfg.routing == "integrated" else 0,
        "router_weight": model_cfg.router_weight,
        "d_ff": model_cfg.ffn_dim,
        "seq_len": seq_len,
        "vocab_size": model_cfg.vocab_size,
        "batch_size": spec.batch_size,
        # The resolved hyperparameters: the analysis pools runs only over seed and lr, and refuses the rest.
        "lr": cfg.train.lr,
        "lr_rule": spec.lr_rule,
        "schedule": "cosine",
        "min_lr_ratio": cfg.train.min_lr_ratio,
        "warmup_fraction": cfg.train.warmup_fraction,
        "max_warmup_steps": cfg.train.max_warmup_steps,
        "warmup_steps": warmup,
        "weight_decay": cfg.train.weight_decay,
        "beta1": cfg.train.beta1,
        "beta2": cfg.train.beta2,
        "grad_clip": cfg.train.grad_clip,
        "precision": cfg.train.precision,
        "eval_tokens": cfg.train.eval_tokens,
        "seed": cfg.seed,
        "aux_loss_weight": model_cfg.aux_loss_weight if routed_by == "aux_loss" else 0.0,
        "predictor_hidden": model_cfg.predictor_hidden if routed_by == "predictor" else 0,
        "val_loss": last_eval.get("val_loss"),
        "val_loss_causal": last_eval.get("val_loss_causal"),
        "val_causal_frac": last_eval.get("val_causal_frac"),
        "val_causal_acc": last_eval.get("val_causal_acc"),
        "wall_time": wall_time,
        "step_time": step_time,
        "tokens_per_s": spec.batch_size * seq_len / step_time if step_times else None,
        "device": str(device),
        "corpus_fingerprint": corpus.fingerprint,
        # How the step was computed (not part of the result): processes, micro-batch, memory.
        "processes": world.size,
        "parallel": meta["parallel"],
        "micro_batch_size": plan.micro_batch,
        "compile": plan.compile,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "peak_memory_gb": peak,
        "peak_memory_kind": peak_kind,
        "estimated_peak_gb": meta["estimated_peak_gb"],
    }
    write_json(run_dir / "summary.json", summary)
    set_status(run_dir, "done", step=steps, steps=steps, wall_time=wall_time)
    mirror.finish({"val_loss": summary["val_loss"], "flops": summary["flops"]}, exit_code=0)
    log.info("done %s: val_loss %.4f in %.1f s", spec.run_id, summary["val_loss"], wall_time)
    return summary


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

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=True)
        elif time.monotonic() - self.last_line > 10 or step == self.spec.steps:
            self.last_line = time.monotonic()
            log.info("step %d/%d loss %.4f", step, self.spec.steps, loss)

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
    """Entry point of a sweep's child process: `python -m modexp.train RUN_DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m modexp.train RUN_DIR", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):  # a sweep's Ctrl-C or scancel: stop and mark interrupted
        signal.signal(signum, _raise_interrupt)
    run_dir = Path(args[0])
    try:
        train_run(run_dir)
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
