"""How one process computes a training step: device, precision and micro-batch, the parallel wrapper, the
optimiser and its LR schedule, gradient clipping, and the forward and backward over the process's share."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import Config
from .data import Corpus
from .distributed import World, chunks
from .errors import ModexpError
from .memory import MemoryEstimate, resolve_micro_batch
from .model import Transformer
from .model.transformer import ModelOutput
from .plan import RunSpec, warmup_steps

__all__ = ["Schedule", "lr_at", "schedule_of", "warmup_steps"]


def lr_at(step: int, steps: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to min_ratio * peak at the run's last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# How a WSD cooldown falls from 1 to 0 as its progress goes from 0 to 1 (Hagele et al. 2024: 1-sqrt is best).
COOLDOWNS = {
    "linear": lambda p: 1 - p,
    "1-sqrt": lambda p: 1 - math.sqrt(p),
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
}


@dataclass(frozen=True)
class Schedule:
    """A run's LR at each step: cosine (warm-up, then decay over the whole run) or wsd (warm-up, the peak
    until cooldown_start, then a decay that reaches min_ratio * peak at the last step).

    A WSD run's LR before its cooldown does not depend on its length: a stem trained at that LR serves every
    budget's branch (plan.plan_branches).
    """

    kind: str
    steps: int
    peak: float
    warmup: int
    min_ratio: float
    cooldown_start: int  # wsd: the first decaying step (steps: it never decays, a stem)
    cooldown_shape: str = "1-sqrt"

    def lr(self, step: int) -> float:
        if self.kind == "cosine":
            return lr_at(step, self.steps, self.peak, self.warmup, self.min_ratio)
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if step < self.cooldown_start:
            return self.peak
        progress = (step + 1 - self.cooldown_start) / (self.steps - self.cooldown_start)  # 1 at the last
        fall = COOLDOWNS[self.cooldown_shape](min(1.0, progress))
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * fall)


def schedule_of(cfg: Config, spec: RunSpec) -> Schedule:
    """The schedule spec trains with (run folders from before WSD: cosine, warm-up from the config)."""
    warmup = spec.warmup if spec.warmup is not None else warmup_steps(cfg, spec.steps)
    start = spec.cooldown_start if spec.cooldown_start is not None else spec.steps
    return Schedule(
        spec.schedule,
        spec.steps,
        cfg.train.lr,
        warmup,
        cfg.train.min_lr_ratio,
        start,
        cfg.train.cooldown_shape,
    )


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
    the predictor must never change the language model (docs/mod.md).
    """
    if predictor:
        torch.nn.utils.clip_grad_norm_(predictor, max_norm)
    return torch.nn.utils.clip_grad_norm_(trunk, max_norm)


def noise_seed(seed: int, stream: int, index: int) -> int:
    """A seed for random routing's noise: one per (run seed, training or evaluation, step or batch)."""
    return (seed * 1_000_003 + stream * 7_919 + index) % (2**63 - 1)


def routing_noise(model: Transformer, rows: int, device: torch.device, seed: int) -> torch.Tensor | None:
    """Random routing's scores for a whole batch (rows, the model's noise rows, T), from their own seeded stream;
    None for a model whose blocks take none (Transformer.noise_rows: each routing block says how many it takes).

    Every process draws the whole batch and takes its rows: the noise a sequence gets depends on the run's
    seed and the step, not on the micro-batch size or the number of processes, and resumes exactly.
    """
    if not model.noise_rows:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    shape = (rows, model.noise_rows, model.cfg.seq_len)
    return torch.randn(shape, generator=generator, device=device)


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


def autocast_for(plan: StepPlan, device: torch.device) -> Any:
    """bf16 autocast where the plan says so; a context that does nothing otherwise."""
    if plan.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainStep:
    """Forward and backward over this process's share of a step's batch, in micro-batches.

    Each micro-batch's loss is weighted by its share of the whole batch, so the summed gradients equal the
    whole batch's (DDP and FSDP average over processes, hence the factor world.size).
    """

    def __init__(
        self,
        model: Transformer,
        wrapped: nn.Module,
        corpus: Corpus,
        spec: RunSpec,
        plan: StepPlan,
        seed: int,
        device: torch.device,
        world: World,
        fsdp: bool,
    ) -> None:
        self.model, self.wrapped, self.corpus, self.spec, self.plan = model, wrapped, corpus, spec, plan
        self.seed, self.device, self.world, self.fsdp = seed, device, world, fsdp
        # Compiled for the full micro-batch; the partial last batch runs eager instead of recompiling (minutes).
        self.compiled = torch.compile(wrapped) if plan.compile else wrapped
        self.autocast = autocast_for(plan, device)

    def sync_gradients(self, last: bool) -> Any:
        """Gradients are reduced across processes once per step, after the last micro-batch."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if self.world.distributed and not last:
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def __call__(self, step: int, rows: int) -> tuple[torch.Tensor, ModelOutput]:
        """Returns the step's (LM loss, aux loss) share of this process, and the last micro-batch's output."""
        spec, plan, world, device = self.spec, self.plan, self.world, self.device
        x_all, y_all = self.corpus.train_batch(step, rows, spec.model.seq_len, self.seed)
        noise_all = routing_noise(self.model, rows, device, noise_seed(self.seed, 0, step))
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
            forward = self.compiled if b - a == full else self.wrapped
            with self.sync_gradients(i == len(parts) - 1):
                with self.autocast:
                    out = forward(x, y, routing_noise=noise)
                loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
                (loss * (weight * world.size)).backward()
            losses[0] += out.loss.detach().float() * weight
            if out.aux_loss is not None:
                losses[1] += out.aux_loss.detach().float() * weight
        assert out is not None
        return losses, out
