"""A run's spec: everything `modexp train` needs to train one run, and what the plan reports about it.

plan.py makes them (budgets x shapes x variants); a run folder's run.json holds one (rundir.py). Its own module,
below both, so that reading a run folder never needs the planner (and the planner may read earlier studies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model.config import ModelConfig

# Keys that change how a run is watched or stored, never its result: left out of the run's identity.
# lr_from too: the lr it resolves to is in the identity, wherever it came from.
# How often things happen and how a step is computed: none of it changes what a run computes.
NOT_IDENTITY = {
    "eval_every",
    "log_every",
    "checkpoint_every",
    "keep",
    "compile",
    "lr_from",
    "lr_law",
    "micro_batch_size",
    "activation_checkpointing",
    "parallel",
}


@dataclass
class RunSpec:
    """One training run: everything `modexp train` needs, and what the plan reports about it."""

    run_id: str
    sweep: str
    variant: str
    budget: float
    shape: str
    model: ModelConfig
    batch_size: int
    num_sequences: int  # training sequences in all; the last step may hold fewer than batch_size
    steps: int
    tokens: int
    flops: float  # FLOPs the run will spend (within 1% of budget)
    accounting: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None  # the run's peak learning rate (its config's train.lr)
    lr_rule: str = "train.lr"  # how that LR was chosen: train.lr | sweep.lr_grid | the law of train.lr_from
    epochs: float | None = None  # passes over the training split; None while the corpus is not known
    lr_domain: str = ""  # '' or why the LR law that set lr does not cover this run (outside its fitted sizes)
    seed: int | None = None  # the run's seed (None in run folders written before sweep.seeds)
    schedule: str = "cosine"  # cosine | wsd (train.schedule)
    warmup: int | None = None  # warm-up steps (None: train.warmup_fraction of the steps, as before WSD)
    cooldown_start: int | None = (
        None  # wsd: the first step of the decay (a stem's: its steps, it never decays)
    )
    stem: str | None = None  # a branch: the stem whose state at cooldown_start it starts from (None: scratch)
    stem_flops: float = 0.0  # the FLOPs of its first cooldown_start steps, which its stem spends once for all
    role: str = "run"  # run | stem (constant LR to its branches' cooldown starts; never analysed)
    branch_points: list[int] = field(default_factory=list)  # a stem: the steps whose state it keeps

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.accounting["params"]

    def row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "variant": self.variant,
            "budget": self.budget,
            "shape": self.shape,
            "d_model": self.model.d_model,
            "n_layers": self.model.n_layers,
            "n_heads": self.model.n_heads,
            "params": self.accounting["params"],
            "non_embedding_params": self.accounting["non_embedding_params"],
            "train_flops_per_token": self.accounting["train_flops_per_token"],
            "forward_flops_per_token": self.accounting["forward_flops_per_token"],
            "tokens": self.tokens,
            "steps": self.steps,
            "flops": self.flops,
            "flops_error": self.flops / self.budget - 1.0,
            "tokens_per_param": self.tokens_per_param,
            "lr": self.lr,
            "lr_rule": self.lr_rule,
            "epochs": self.epochs,
            "lr_domain": self.lr_domain,
            "seed": self.seed,
            "schedule": self.schedule,
            "warmup": self.warmup,
            "cooldown_start": self.cooldown_start,
            "stem": self.stem,
            "stem_flops": self.stem_flops,
            "role": self.role,
        }
