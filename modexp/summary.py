"""summary.json: a run's final record, and its schema.

summary.json is the contract between a run and the analysis: one row of the study's table per run. The schema is
here, once, and analysis/points.py reads it: which keys are settings (runs that differ in one are never pooled),
which are outcomes, and which only say who the run is or how it was computed. Kept free of torch, so the analysis
imports it without loading the model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .distributed import World
    from .plan import RunSpec
    from .step import StepPlan

# Settings that must agree among the runs of one point: the analysis pools runs only over seed and lr, and
# refuses a point whose runs differ in any of these (in this order, the first one named).
SETTINGS: tuple[str, ...] = (
    "batch_size",
    "beta1",
    "beta2",
    "weight_decay",
    "warmup_fraction",
    "max_warmup_steps",
    "min_lr_ratio",
    "schedule",
    "grad_clip",
    "precision",
    "seq_len",
    "vocab_size",
    "d_ff",
    "routing",
    "capacity",
    "route_every",
    "router_weight",
    "causal_router",
    "aux_loss_weight",
    "predictor_hidden",
    "eval_tokens",
    "corpus_fingerprint",
)
# The run's results: validation losses and what causal routing did (every outcome key starts with val_).
OUTCOMES: tuple[str, ...] = ("val_loss", "val_loss_causal", "val_causal_frac", "val_causal_acc")
# Keys that are not settings: who the run is and where it sits in the study (lr and seed are the two axes a
# point reduces over), and how long it took where.
IDENTITY: tuple[str, ...] = (
    "run_id", "sweep", "variant", "budget", "params", "flops", "flops_error", "lr", "seed", "lr_rule",
    "epochs", "lr_domain",
)  # fmt: skip
MEASURED: tuple[str, ...] = ("wall_time", "step_time", "tokens_per_s", "device")
NOT_SETTINGS: frozenset[str] = frozenset(IDENTITY + MEASURED)


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
) -> dict[str, Any]:
    """summary.json: the run's plan (spec.row()), its settings, outcomes and measurements (roles above)."""
    model = spec.model
    seq_len = model.seq_len
    step_time = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    routed_by = model.causal_router if model.routing == "topk" or model.moe else "none"
    return {
        **spec.row(),
        "sweep": spec.sweep,
        "routing": model.routing,
        "capacity": model.capacity if model.routing != "none" else 1.0,
        "route_every": model.route_every if model.routing != "none" else 0,
        "causal_router": routed_by,
        # Mixture of experts (moe, mode_staged, mode_integrated): 0 experts for a dense MLP.
        "experts": model.experts if model.moe else 0,
        "expert_capacity": model.expert_capacity if model.moe else 1.0,
        "noop_experts": model.noop_experts if model.routing == "integrated" else 0,
        "router_weight": model.router_weight,
        "d_ff": model.ffn_dim,
        "seq_len": seq_len,
        "vocab_size": model.vocab_size,
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
        "aux_loss_weight": model.aux_loss_weight if routed_by == "aux_loss" else 0.0,
        "predictor_hidden": model.predictor_hidden if routed_by == "predictor" else 0,
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
    }
