"""What a run writes about itself: meta.json, the records of metrics.jsonl, and summary.json (whose schema,
shared with the analysis, is modexp/summary.py)."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from . import device as devices
from . import flops, variants
from .config import Config
from .data import Corpus
from .distributed import World
from .model.experts import ExpertRecord
from .model.routing import RoutingRecord
from .model.transformer import ModelOutput
from .plan import RunSpec
from .step import StepPlan
from .summary import OUTCOMES, SPEED, recorded_settings
from .tracking import environment


def run_meta(
    cfg: Config,
    spec: RunSpec,
    device: torch.device,
    plan: StepPlan,
    world: World,
    corpus: Corpus,
    start_step: int,
) -> dict[str, Any]:
    """meta.json: where and how the run trains (code, packages, device, corpus, FLOP accounting)."""
    return {
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
        "accounting": {**flops.describe(spec.model), "convention": "exact", "shape": spec.shape},
        "resumed_from_step": start_step or None,
    }


def routing_stats(records: list[RoutingRecord]) -> dict[str, float]:
    """Per routed block: fraction processed, router weight statistics, causal-router accuracy vs top-k.

    Gathered into one tensor and read with one host sync (a logged step must not stall once per statistic).
    """
    names, values = [], []
    accs = []
    for rec in records:
        g = rec.weights()
        layer = rec.layer
        # Over the tokens the router scored (MoD: every token; a router deeper in a hierarchy: those still active).
        scored = torch.ones_like(g) if rec.scored is None else rec.scored.float()
        n = scored.sum().clamp(min=1)
        mean = (g * scored).sum() / n
        std = (((g - mean) ** 2 * scored).sum() / (n - 1).clamp(min=1)).sqrt()
        names += [f"routed_frac/{layer}", f"router_weight_mean/{layer}", f"router_weight_std/{layer}"]
        values += [rec.mask.float().mean(), mean, std]
        causal_logits = rec.predictor_logits
        if causal_logits is None and rec.aux_loss is not None:
            causal_logits = rec.router_logits  # aux_loss: the router itself decides (sigmoid(r) > 0.5)
        if causal_logits is not None:
            decided = causal_logits.detach() > 0
            acc = ((decided == rec.topk_mask).float() * scored).sum() / n
            names += [f"causal_acc/{layer}", f"causal_frac/{layer}"]
            values += [acc, (decided.float() * scored).sum() / n]
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


def train_record(
    step: int,
    tokens: int,
    flops_per_token: float,
    losses: tuple[float, float],
    lr: float,
    grad_norm: float,
    step_time: float,
    tokens_per_step: int,
    wall_time: float,
    out: ModelOutput,
) -> dict[str, Any]:
    """One line of metrics.jsonl for a logged training step; routing statistics are of rank 0's last
    micro-batch: a sample of the step, not the whole batch."""
    lm_loss, aux_loss = losses
    record = {
        "kind": "train",
        "step": step,
        "tokens": tokens,
        "flops": tokens * flops_per_token,
        "loss": lm_loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "step_time": step_time,
        "tokens_per_s": tokens_per_step / step_time,
        "wall_time": wall_time,
    }
    if out.aux_loss is not None:
        record["aux_loss"] = aux_loss
    record.update(routing_stats(out.routing))
    record.update(expert_stats(out.experts))
    return record


def val_record(
    step: int, tokens: int, flops_per_token: float, wall_time: float, scores: dict[str, float]
) -> dict[str, Any]:
    """One line of metrics.jsonl for an evaluation."""
    return {
        "kind": "val",
        "step": step,
        "tokens": tokens,
        "flops": tokens * flops_per_token,
        "wall_time": wall_time,
        **scores,
    }


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """(peak memory of this process in GB since reset_peak_memory, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9, "cuda_max_allocated"
    try:  # Linux: the resident set's high-water mark, which reset_peak_memory resets for each run
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9, "cpu_max_rss"
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "cpu_max_rss"


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak memory afresh: a worker trains many runs, and each reports its own."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def run_summary(
    cfg: Config,
    spec: RunSpec,
    plan: StepPlan,
    meta: dict[str, Any],
    scores: dict[str, float],
    wall_time: float,
    step_times: list[float],
    peak: tuple[float, str],
    corpus_fingerprint: str,
    world: World,
    warmup: int,
    speed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the run's plan (spec.row()), its settings, outcomes and measurements (summary.py's roles);
    speed: speed_record's (its seconds by kind, device kind, peak and MFU)."""
    model = spec.model
    seq_len = model.seq_len
    step_time = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    summary = {
        **spec.row(),
        "sweep": spec.sweep,
        # What routes and how (routing, capacity, route_every, causal_router, experts...): the kind says, with
        # the values a kind without one of them has (modexp.variants.Variant.record).
        **variants.of_model(model).record(model),
        "d_ff": model.ffn_dim,
        "seq_len": seq_len,
        "vocab_size": model.vocab_size,
        "batch_size": spec.batch_size,
        # The resolved hyperparameters: the analysis pools runs only over seed and lr, and refuses the rest.
        "lr": cfg.train.lr,
        "lr_rule": spec.lr_rule,
        "schedule": spec.schedule,
        "cooldown_fraction": cfg.train.cooldown_fraction if spec.schedule == "wsd" else None,
        "cooldown_shape": cfg.train.cooldown_shape if spec.schedule == "wsd" else None,
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
        **{key: scores.get(key) for key in OUTCOMES},
        "wall_time": wall_time,
        "step_time": step_time,
        "tokens_per_s": spec.batch_size * seq_len / step_time if step_times else None,
        "device": meta["device"],
        "corpus_fingerprint": corpus_fingerprint,
        # How the step was computed (not part of the result): processes, micro-batch, memory.
        "processes": world.size,
        "parallel": meta["parallel"],
        "micro_batch_size": plan.micro_batch,
        "compile": plan.compile,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "peak_memory_gb": peak[0],
        "peak_memory_kind": peak[1],
        "estimated_peak_gb": meta["estimated_peak_gb"],
        **{key: None for key in SPEED},
        **(speed or {}),
    }
    # Every other model and data setting (tie_embeddings, rope_base, init_std, data_path...): the analysis
    # splits a variant's curve by any that differ among its runs.
    settings = recorded_settings(model, cfg.data)
    return {**summary, **{k: v for k, v in settings.items() if k not in summary}}


def speed_record(
    spec: RunSpec,
    device: torch.device,
    world: World,
    timing: dict[str, float | None],
    bf16: bool,
    cpu_share: float,
    load_max: float,
) -> dict[str, Any]:
    """A run's seconds by kind (train_time: its steps only, a branch's stem's share included, as its FLOPs
    are), the device kind it trained on, that device's peak FLOP/s (all of the run's processes) and MFU =
    FLOPs / (train_time x peak); cpu_share and load_max say whether other work took the cores meanwhile."""
    threads = torch.get_num_threads()
    precision = "bf16" if bf16 else "fp32"
    try:
        peak, source = devices.peak_flops(device, threads, precision)
    except Exception as exc:  # noqa: BLE001 - a probe that fails must never cost a trained run its summary
        peak, source = None, f"unknown ({type(exc).__name__})"
    peak = peak * world.size if peak else None
    train_time = timing.get("train_time")
    mfu = spec.flops / (train_time * peak) if peak and train_time else None
    return {
        **{key: timing.get(key) for key in TIMINGS},
        "device_kind": devices.device_kind(device),
        "threads": threads,
        "cores": os.cpu_count(),
        "peak_flops": peak,
        "peak_source": source,
        "precision_used": precision,
        "mfu": mfu,
        "cpu_share": round(cpu_share, 3) if device.type == "cpu" else None,
        "load_max": round(load_max, 2),
    }


def pace_record(
    spec: RunSpec,
    cfg: Config,
    speed: dict[str, Any],
    step_times: list[float],
    counts: dict[str, float],
    world: World,
) -> dict[str, Any] | None:
    """What one process of a run measured, for the planner's estimates on this machine (modexp/estimate.py):
    the median step's seconds against its FLOPs, an evaluation's seconds against its forward FLOPs, a
    checkpoint's seconds and the start-up. None for a run of several processes (another kind of slot)."""
    if world.size > 1 or not step_times:
        return None
    count = flops.count(spec.model)
    modes = 2 if variants.has_causal_mode(spec.model) else 1
    evals = counts["evals"]
    return {
        "run_id": spec.run_id,
        "time": time.time(),
        "kind": variants.of_model(spec.model).kind,
        "step_flops": count.train_per_token * spec.batch_size * spec.model.seq_len,
        "step_time": sorted(step_times)[len(step_times) // 2],
        "cpu_share": speed.get("cpu_share"),
        "eval_flops": count.forward_per_token * counts["eval_tokens"] * modes,
        "eval_time": counts["eval_s"] / evals if evals else None,
        "checkpoint_time": counts["checkpoint_s"] / counts["checkpoints"] if counts["checkpoints"] else None,
        "startup_time": counts["startup_s"],
        "eval_every": cfg.train.eval_every,
    }


TIMINGS = ("train_time", "eval_time", "checkpoint_time", "startup_time", "inherited_time")
