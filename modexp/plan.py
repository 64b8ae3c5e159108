"""isoFLOP planning: budgets x shapes x variants -> RunSpecs, each with its tokens, steps and a stable id.

Follows ../shared/spec/isoflop-method.md (Planning a sweep). Pure arithmetic: no torch, no data.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import flops
from .config import Config, LadderConfig
from .errors import ModexpError
from .model import ModelConfig
from .units import sci

# Keys that change how a run is watched or stored, never its result: left out of the run's identity.
_NOT_IDENTITY = {"eval_every", "log_every", "checkpoint_every", "compile", "lr_from"}  # lr_from: the lr it resolves to is
MOD_ONLY = (
    "capacity",
    "route_every",
    "router_weight",
    "causal_router",
    "aux_loss_weight",
    "predictor_hidden",
)
ROUTING_OF = {"baseline": "none", "mod": "topk", "random": "random"}


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int

    @property
    def name(self) -> str:
        return f"d{self.d_model}-l{self.n_layers}"


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
        }


@dataclass
class Plan:
    runs: list[RunSpec]
    skipped: list[dict[str, Any]]  # shapes left out, each with budget, variant, shape and reason


def ladder_shapes(ladder: LadderConfig) -> list[Shape]:
    """The size ladder: n_layers from the aspect ratio (clamped), heads of about head_dim (at least 2)."""
    shapes = []
    for width in sorted(set(ladder.widths)):
        n_layers = min(ladder.max_layers, max(ladder.min_layers, round(width / ladder.aspect_ratio)))
        n_heads = max(2, width // ladder.head_dim)
        while width % n_heads or (width // n_heads) % 2:  # heads must divide width into even head sizes
            n_heads -= 1
            if n_heads == 0:
                raise ModexpError(f"sweep.ladder.widths contains {width}: no even head size divides it")
        shapes.append(Shape(width, n_layers, n_heads))
    return shapes


def variant_model(base: ModelConfig, variant: str, shape: Shape | None) -> ModelConfig:
    routing = ROUTING_OF[variant]
    changes: dict[str, Any] = {"routing": routing}
    if shape is not None:
        changes.update(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads)
    model = replace(base, **changes)
    if routing != "none" and model.route_every > model.n_layers:
        # A shallow ladder rung cannot honour a long routing interval; say so rather than train a baseline.
        raise ValueError(f"route_every={model.route_every} routes no block of n_layers={model.n_layers}")
    return model


def variant_name(model: ModelConfig) -> str:
    if model.routing == "none":
        return "baseline"
    name = f"{'mod' if model.routing == 'topk' else 'random'}_c{model.capacity:g}_e{model.route_every}"
    if model.routing == "topk":
        name += {"sigmoid": "", "linear": "_lin"}[model.router_weight]
        name += {"predictor": "", "aux_loss": "_aux", "none": "_nocausal"}[model.causal_router]
    return name


def run_identity(cfg: Config, model: ModelConfig, budget: float) -> dict[str, Any]:
    """What determines a run's result, and nothing else (no paths, trackers or logging cadence)."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in _NOT_IDENTITY}
    data = {k: v for k, v in asdict(cfg.data).items() if k != "cache_dir"}
    arch = asdict(model)
    if model.routing == "none":  # a baseline is the same run whatever MoD settings sit beside it
        for key in MOD_ONLY:
            arch.pop(key)
    return {"model": arch, "train": train, "data": data, "seed": cfg.seed, "budget": float(budget)}


def make_run(cfg: Config, model: ModelConfig, budget: float, variant: str | None = None) -> RunSpec:
    """Tokens and steps for one (budget, model): the FLOPs spent land within half a sequence of the budget."""
    count = flops.count(model)
    seq_flops = count.train_per_token * model.seq_len
    num_sequences = max(1, round(budget / seq_flops))
    steps = math.ceil(num_sequences / cfg.train.batch_size)
    identity = run_identity(cfg, model, budget)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    variant = variant or variant_name(model)
    shape = f"d{model.d_model}-l{model.n_layers}"
    run_id = f"{variant}-{shape}-{sci(budget)}-{digest}"
    return RunSpec(
        run_id=run_id,
        sweep=cfg.sweep.name,
        variant=variant,
        budget=float(budget),
        shape=shape,
        model=model,
        batch_size=cfg.train.batch_size,
        num_sequences=num_sequences,
        steps=steps,
        tokens=num_sequences * model.seq_len,
        flops=num_sequences * seq_flops,
        accounting=flops.describe(model),
    )


def _nearest(shapes: list[Shape], params: list[int], centre: float, n: int) -> list[int]:
    """Indices of the n consecutive ladder rungs whose sizes sit most evenly around centre (log scale)."""
    if n >= len(shapes):
        return list(range(len(shapes)))
    best = min(
        range(len(shapes) - n + 1),
        key=lambda i: abs(0.5 * (math.log(params[i]) + math.log(params[i + n - 1])) - math.log(centre)),
    )
    return list(range(best, best + n))


def plan_sweep(cfgs: list[Config]) -> Plan:
    """One Plan for several composed configs (one per sweep-override combination), deduplicated by run id."""
    runs: dict[str, RunSpec] = {}
    skipped: list[dict[str, Any]] = []
    for cfg in cfgs:
        sweep = cfg.sweep
        shapes = ladder_shapes(sweep.ladder)
        for budget in sweep.budgets:
            for variant in sweep.variants:
                models = []
                for s in shapes:
                    try:
                        models.append(variant_model(cfg.model, variant, s))
                    except ValueError as exc:
                        skipped.append(_skip(budget, variant, s.name, str(exc)))
                if not models:
                    continue
                params = [flops.count(m).params for m in models]
                # Centre on ~tokens_per_param tokens per parameter (C = 6 N D); MoD's optimum sits higher.
                centre = math.sqrt(budget / (6 * sweep.tokens_per_param))
                if variant != "baseline":
                    centre *= sweep.mod_size_shift
                for i in _nearest([_shape_of(m) for m in models], params, centre, sweep.sizes_per_budget):
                    run = make_run(cfg, models[i], budget)
                    reason = _unsensible(
                        run, sweep.min_steps, sweep.min_tokens_per_param, sweep.max_tokens_per_param
                    )
                    if reason:
                        skipped.append(_skip(budget, run.variant, run.shape, reason))
                    else:
                        runs.setdefault(run.run_id, run)
    ordered = sorted(
        runs.values(), key=lambda r: (r.budget, r.variant != "baseline", r.variant, r.accounting["params"])
    )
    return Plan(ordered, _dedupe(skipped))


def _shape_of(model: ModelConfig) -> Shape:
    return Shape(model.d_model, model.n_layers, model.n_heads)


def _skip(budget: float, variant: str, shape: str, reason: str) -> dict[str, Any]:
    return {"budget": budget, "variant": variant, "shape": shape, "reason": reason}


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _unsensible(run: RunSpec, min_steps: int, min_tpp: float, max_tpp: float) -> str | None:
    if run.steps < min_steps:
        return f"{run.steps} steps < sweep.min_steps={min_steps}"
    if run.tokens_per_param < min_tpp:
        return f"{run.tokens_per_param:.2g} tokens/param < sweep.min_tokens_per_param={min_tpp:g}"
    if run.tokens_per_param > max_tpp:
        return f"{run.tokens_per_param:.3g} tokens/param > sweep.max_tokens_per_param={max_tpp:g}"
    return None


def check_plan(plan: Plan, cfgs: list[Config]) -> None:
    """Every budget must have at least one run per variant, or the study cannot compare anything there."""
    for cfg in cfgs:
        for budget in cfg.sweep.budgets:
            for variant in cfg.sweep.variants:
                label = variant_name(replace(cfg.model, routing=ROUTING_OF[variant]))
                if not any(r.budget == budget and r.variant == label for r in plan.runs):
                    reasons = sorted({s["reason"] for s in plan.skipped if s["budget"] == budget})
                    raise ModexpError(
                        f"budget {sci(budget)}: no shape of the ladder fits variant {label} "
                        f"({'; '.join(reasons[:2]) or 'no shapes'}); change sweep.budgets or sweep.ladder"
                    )


def single_run(cfg: Config) -> RunSpec:
    """The one run `modexp train` trains: cfg.model as given, for cfg.budget FLOPs."""
    if cfg.budget is None:
        raise ModexpError("budget is not set: give the run's training FLOPs, e.g. budget=1e11")
    run = make_run(cfg, cfg.model, cfg.budget, cfg.variant)
    if abs(run.flops / run.budget - 1) > 0.01 or run.steps < cfg.sweep.min_steps:
        # Too few steps cannot train sensibly (warm-up and decay need room), and under one sequence the run
        # would spend more than its budget: the same rule as the sweep's (sweep.min_steps).
        step_flops = run.flops / run.num_sequences * cfg.train.batch_size
        least = step_flops * cfg.sweep.min_steps
        scale = 10 ** (math.floor(math.log10(least)) - 1)
        least = math.ceil(least / scale) * scale  # rounded up to two digits, so the advice is enough
        raise ModexpError(
            f"budget={sci(cfg.budget)} buys {run.steps} step(s) of this model, fewer than sweep.min_steps="
            f"{cfg.sweep.min_steps} (one step of {run.batch_size} x {run.model.seq_len} tokens costs "
            f"{sci(step_flops)} FLOPs): give budget >= {sci(least, 2)} or lower sweep.min_steps"
        )
    return run
