"""isoFLOP planning: budgets x shapes x variants -> RunSpecs, each with its tokens, steps and a stable id.

Follows docs/isoflop.md (Planning). Pure arithmetic: no torch, no data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import flops, variants
from .errors import ModexpError
from .model import ModelConfig
from .repetition import EPOCH_SPREAD, epoch_spread_notes  # noqa: F401 (kept importable from here)
from .spec import NOT_IDENTITY as _NOT_IDENTITY
from .spec import RunSpec
from .units import sci, si
from .variants import MOD_ONLY, MOE_ONLY  # noqa: F401 (kept importable from here)

if (
    TYPE_CHECKING
):  # annotations only: the planner's arithmetic needs no Hydra (rundir, the analysis import it)
    from .config import Config, LadderConfig, SweepConfig

# The LR schedule's own keys: a cosine run's identity leaves them out, so its id is what it was before WSD.
_SCHEDULE_KEYS = ("schedule", "cooldown_fraction", "cooldown_shape")


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int

    @property
    def name(self) -> str:
        return f"d{self.d_model}-l{self.n_layers}"


@dataclass
class Plan:
    runs: list[RunSpec]
    notes: list[str]  # one line per (budget, variant) whose sizes are fewer than asked or off-centre, and why
    stems: list[RunSpec] = field(default_factory=list)  # sweep.reuse=branches: the runs' shared stems

    @property
    def flops_budgeted(self) -> float:
        """The sum of the runs' FLOPs: what training every run from scratch would cost."""
        return sum(r.flops for r in self.runs)

    @property
    def flops_spent(self) -> float:
        """What the study trains: each stem once, and each run's steps after its stem's share."""
        return sum(s.flops for s in self.stems) + sum(r.flops - r.stem_flops for r in self.runs)


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


def variant_model(base: Any, variant: str, shape: Shape | None) -> ModelConfig:
    """The config of `variant` from a config's model settings (and shape): the kind's own settings only.
    ValueError when they do not fit (the kind's config checks)."""
    changes = {}
    if shape is not None:
        changes.update(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads)
    return variants.get(variant).model_config(base, **changes)


def variant_kind(model: ModelConfig) -> str:
    """The sweep.variants kind a model is (modexp.variants): baseline, mod, random, moe, mode_staged, ..."""
    return variants.of_model(model).kind


def variant_name(model: ModelConfig, kind: str | None = None) -> str:
    """A run's label from model's routing and expert settings. kind (a sweep.variants entry; default: the
    model's own) names a variant without building its model, which a base shape shallower than route_every
    would refuse. modexp.variants' records write them and read them back into words.

    baseline; mod_c0.125_e2 (MoD: capacity, interval); random_c0.125_e2; moe_x4_k0.25 (experts, each one's
    share of the tokens); mode_staged_c0.125_e2_x4_k0.25; mode_integrated_c0.125_e2_x4_k0.25_n1 (+ no-op
    experts). Suffixes: _lin (linear MoD router weight), then _aux / _nocausal (the causal decision).
    """
    return variants.get(kind).name(model) if kind else variants.of_model(model).name(model)


def inert_keys(model: ModelConfig) -> list[str]:
    """Model settings that do nothing in this model: left out of its identity and its run record."""
    return list(variants.of_model(model).inert)


def warmup_steps(cfg: Config, steps: int) -> int:
    """A run's warm-up: train.warmup_fraction of its steps, at least 1, at most train.max_warmup_steps."""
    return min(cfg.train.max_warmup_steps, max(1, round(cfg.train.warmup_fraction * steps)))


def cooldown_start(cfg: Config, steps: int) -> int:
    """The first step of a WSD run's decay: train.cooldown_fraction of its steps (at least one) decay."""
    return steps - max(1, round(cfg.train.cooldown_fraction * steps))


def run_identity(cfg: Config, model: ModelConfig, budget: float, warmup: int | None = None) -> dict[str, Any]:
    """What determines a run's result, and nothing else (no paths, trackers or logging cadence).

    A WSD run's warm-up is part of it: its branches share their stem's, set by the shortest of them.
    """
    train = {k: v for k, v in asdict(cfg.train).items() if k not in _NOT_IDENTITY}
    if train.get("schedule", "cosine") in ("cosine", "auto"):
        for key in _SCHEDULE_KEYS:
            train.pop(key, None)
    else:
        train["warmup_steps"] = warmup
    data = {k: v for k, v in asdict(cfg.data).items() if k != "cache_dir"}
    # The kind's own settings: a baseline is the same run whatever MoD settings sit beside it in the config.
    inert = set(inert_keys(model))
    arch = {k: v for k, v in asdict(model).items() if k not in inert}
    return {"model": arch, "train": train, "data": data, "seed": cfg.seed, "budget": float(budget)}


def run_digest(cfg: Config, model: ModelConfig, budget: float, warmup: int | None = None) -> str:
    """The hash in a run's id: of what determines its result (run_identity), and nothing else."""
    return _digest(run_identity(cfg, model, budget, warmup))


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def stem_identity(cfg: Config, model: ModelConfig, warmup: int, branch_points: list[int]) -> dict[str, Any]:
    """What a stem's states are a function of: its runs' identity but the budget, and where it stops."""
    identity = run_identity(cfg, model, 0.0, warmup)
    del identity["budget"]
    return {**identity, "branch_points": sorted(branch_points)}


def spec_digest(cfg: Config, spec: RunSpec) -> str:
    """The digest the id of `spec` must end with, re-derived from cfg (its config.yaml) and the spec."""
    if spec.role == "stem":
        return _digest(stem_identity(cfg, spec.model, spec.warmup or 0, spec.branch_points))
    return run_digest(cfg, spec.model, spec.budget, spec.warmup)


def make_run(
    cfg: Config,
    model: ModelConfig,
    budget: float,
    variant: str | None = None,
    lr: float | None = None,
    lr_rule: str = "train.lr",
    warmup: int | None = None,
) -> RunSpec:
    """Tokens and steps for one (budget, model): the FLOPs spent land within half a sequence of the budget.

    `lr` (default train.lr) is the run's peak learning rate; it is part of the run's identity. `warmup`
    (default: warmup_steps of the run's own steps) is set by a WSD stem for all its branches.
    """
    if lr is not None:
        cfg = replace(cfg, train=replace(cfg.train, lr=lr))
    count = flops.count(model)
    seq_flops = count.train_per_token * model.seq_len
    num_sequences = max(1, round(budget / seq_flops))
    steps = math.ceil(num_sequences / cfg.train.batch_size)
    wsd = cfg.train.schedule == "wsd"
    start = cooldown_start(cfg, steps) if wsd else None
    warmup = warmup_steps(cfg, steps) if warmup is None else warmup
    if start is not None:
        warmup = max(1, min(warmup, start))  # the decay never starts inside the warm-up
    digest = run_digest(cfg, model, budget, warmup)
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
        lr=cfg.train.lr,
        lr_rule=lr_rule,
        seed=cfg.seed,
        schedule=cfg.train.schedule if wsd else "cosine",
        warmup=warmup,
        cooldown_start=start,
    )


def plan_sweep(cfgs: list[Config]) -> Plan:
    """One Plan for several composed configs (one per sweep-override combination), deduplicated by run id."""
    runs: dict[str, RunSpec] = {}
    stems: dict[str, RunSpec] = {}
    notes: list[str] = []
    for cfg in cfgs:
        shapes = ladder_shapes(cfg.sweep.ladder)
        law = load_lr_law(cfg)
        planned = []
        for budget in cfg.sweep.budgets:
            for variant in cfg.sweep.variants:
                chosen, note = _ladder_runs(cfg, shapes, budget, variant)
                for seed_cfg, seeded in _seeded(cfg, chosen, _expected_optimum(cfg, budget, variant)):
                    for run in seeded:
                        for lr, rule, outside in run_lrs(cfg, law, run.variant, run.accounting["params"]):
                            tuned = make_run(seed_cfg, run.model, budget, lr=lr, lr_rule=rule)
                            tuned.lr_domain = outside
                            planned.append((seed_cfg, tuned))
                if note and note not in notes:
                    notes.append(note)
        if cfg.sweep.reuse == "branches":
            planned, cfg_stems = plan_branches(planned)
            stems.update((s.run_id, s) for s in cfg_stems)
        for _, run in planned:
            runs.setdefault(run.run_id, run)
    plan = Plan(sort_runs(runs.values()), notes, sorted(stems.values(), key=lambda s: (s.variant, s.steps)))
    plan.notes += lr_domain_notes(plan.runs)
    if law is not None and not cfg.sweep.lr_grid:
        plan.notes += [n for n in law.domain_notes({r.variant for r in plan.runs}) if n not in plan.notes]
    return plan


def _seeded(cfg: Config, chosen: list[RunSpec], centre: float) -> list[tuple[Config, list[RunSpec]]]:
    """(config of each seed, the runs it trains): every run at cfg.seed; sweep.seeds - 1 more seeds for the
    sweep.seed_sizes runs nearest the expected optimum (all of them when 0), where the fit needs them most."""
    near = chosen
    if cfg.sweep.seed_sizes:
        near = sorted(chosen, key=lambda r: abs(math.log(active_params(r.model) / centre)))
        near = near[: cfg.sweep.seed_sizes]
    extra = [r for r in chosen if any(r is n for n in near)]  # in ladder order
    return [(cfg, chosen)] + [(replace(cfg, seed=cfg.seed + i), extra) for i in range(1, cfg.sweep.seeds)]


def plan_branches(
    planned: list[tuple[Config, RunSpec]],
) -> tuple[list[tuple[Config, RunSpec]], list[RunSpec]]:
    """sweep.reuse=branches: the runs that differ only in budget share one stem (docs/schedules.md).

    The stem trains at constant LR, after a warm-up set by the shortest of its runs, to the start of the
    longest run's decay, keeping its state at each run's cooldown start; each run is then a branch that
    starts from that state and decays over its own cooldown. A branch computes exactly what the WSD run of
    its budget with that warm-up computes from scratch (batches and noise depend on the seed and the step
    only), so it keeps that run's id, FLOPs and summary. A run alone in its group trains from scratch.
    """
    groups: dict[str, list[tuple[Config, RunSpec]]] = {}
    shortest: dict[str, int] = {}  # per family (a group but its seed): the fewest steps of any of its runs
    for cfg, run in planned:
        groups.setdefault(json.dumps(stem_identity(_at_lr(cfg, run), run.model, 0, [])), []).append(
            (cfg, run)
        )
        family = _family(cfg, run)
        shortest[family] = min(shortest.get(family, run.steps), run.steps)
    out, stems = [], []
    for group in groups.values():
        # One warm-up for every seed of a shape: a point's seeds must differ in their seed only, also where
        # a second seed trains this shape at fewer budgets (sweep.seed_sizes) or at one (from scratch).
        cfg = _at_lr(*group[0])
        warmup = warmup_steps(cfg, shortest[_family(*group[0])])
        branches = []
        for run_cfg, run in group:
            branch = make_run(run_cfg, run.model, run.budget, run.variant, run.lr, run.lr_rule, warmup)
            branch.lr_domain = run.lr_domain
            branches.append((run_cfg, branch))
        out += branches
        if len({run.budget for _, run in group}) < 2:
            continue  # alone in its group: trained from scratch
        stem = make_stem(cfg, [b for _, b in branches])
        for _, branch in branches:
            branch.stem = stem.run_id
            branch.stem_flops = branch.cooldown_start * branch.batch_size * stem.flops / stem.num_sequences
        stems.append(stem)
    return out, stems


def _at_lr(cfg: Config, run: RunSpec) -> Config:
    return replace(cfg, train=replace(cfg.train, lr=run.lr))


def _family(cfg: Config, run: RunSpec) -> str:
    return json.dumps(stem_identity(replace(_at_lr(cfg, run), seed=0), run.model, 0, []))


def make_stem(cfg: Config, branches: list[RunSpec]) -> RunSpec:
    """The stem of `branches` (one shape, seed and LR at several budgets): constant LR to the last cooldown
    start, full batches only (every branch point lies before its branch's partial last step)."""
    first = branches[0]
    points = sorted({b.cooldown_start for b in branches})
    steps = points[-1]
    seq_flops = flops.count(first.model).train_per_token * first.model.seq_len
    num_sequences = steps * first.batch_size
    digest = _digest(stem_identity(cfg, first.model, first.warmup or 0, points))
    return RunSpec(
        run_id=f"stem-{first.variant}-{first.shape}-{digest}",
        sweep=first.sweep,
        variant=first.variant,
        budget=num_sequences * seq_flops,
        shape=first.shape,
        model=first.model,
        batch_size=first.batch_size,
        num_sequences=num_sequences,
        steps=steps,
        tokens=num_sequences * first.model.seq_len,
        flops=num_sequences * seq_flops,
        accounting=first.accounting,
        lr=first.lr,
        lr_rule=first.lr_rule,
        lr_domain=first.lr_domain,
        seed=first.seed,
        schedule="wsd",
        warmup=first.warmup,
        cooldown_start=steps,
        role="stem",
        branch_points=points,
    )


def lr_domain_notes(runs: list[RunSpec]) -> list[str]:
    """One note per variant whose runs take an LR from a law outside the sizes it was fitted on."""
    notes = []
    for variant in sorted({r.variant for r in runs if r.lr_domain}):
        outside = [r for r in runs if r.variant == variant and r.lr_domain]
        notes.append(
            f"{variant}: {len(outside)} run(s) take their LR from a law outside the sizes it was fitted on "
            f"(marked * in the lr column; e.g. {outside[0].lr_domain}): extend the LR grid to them"
        )
    return notes


def load_lr_law(cfg: Config) -> Any:  # -> analysis.LrLaw | None
    """The lr*(N) laws of train.lr_from's study, else of train.lr_law (None when neither is set)."""
    if not (cfg.train.lr_from or cfg.train.lr_law):
        return None
    from .analysis.lrlaw import lr_law_from_config, lr_law_from_study  # pandas, scipy: only when transferring

    if cfg.train.lr_from:
        return lr_law_from_study(cfg.train.lr_from)
    laws = {  # each kind takes the law of its LR-law family (its own kind unless its record says another)
        variant_name(cfg.model, kind): (law.coefficient, law.exponent, law.params_min, law.params_max)
        for key, law in cfg.train.lr_law.items()
        for kind in variants.kinds()
        if variants.get(kind).law_key == key
    }
    return lr_law_from_config(laws)


def run_lrs(cfg: Config, law: Any, variant: str, params: float) -> list[tuple[float, str, str]]:
    """(peak LR, how it was chosen, '' or why the law does not cover it) for each run of one point: the
    grid's LRs, the law's LR, or train.lr.

    A grid wins over a law (a preset's train.lr_law is a default a grid study overrides), a law over train.lr.
    """
    if cfg.sweep.lr_grid:
        return [(float(lr), "sweep.lr_grid", "") for lr in cfg.sweep.lr_grid]
    if law is not None:
        return [(law.lr(variant, params), law.describe(variant), law.outside(variant, params))]
    return [(cfg.train.lr, "train.lr", "")]


def sort_runs(runs: Iterable[RunSpec]) -> list[RunSpec]:
    """Plan order: by budget, the baseline first, then by variant and size."""
    return sorted(runs, key=lambda r: (r.budget, r.variant != "baseline", r.variant, r.accounting["params"]))


@dataclass
class _Rung:
    """One ladder shape at one (budget, variant), and why it cannot be trained sensibly (None: it can)."""

    shape: Shape
    params: int
    run: RunSpec | None  # None when the variant cannot be built on this shape
    reason: str | None
    size: float = 0.0  # what the ladder is centred on: params, or an MoE's active params (active_params)


def _ladder_runs(
    cfg: Config, shapes: list[Shape], budget: float, variant: str
) -> tuple[list[RunSpec], str | None]:
    """sizes_per_budget consecutive admissible rungs centred on the expected optimum, and a note if not.

    Filtering before choosing keeps the ladder its full size: a window chosen first and filtered afterwards
    loses its large side, exactly where MoD's optimum is expected.
    """
    rungs = [_rung(cfg, shape, budget, variant) for shape in shapes]
    fit = [r for r in rungs if r.reason is None]
    label = variant_name(cfg.model, variant)
    if not fit:
        reasons = sorted({r.reason for r in rungs if r.reason})
        raise ModexpError(
            f"budget {sci(budget)}: no shape of the ladder fits variant {label} "
            f"({'; '.join(reasons[:2]) or 'no shapes'}); change sweep.budgets or sweep.ladder"
        )
    centre = _expected_optimum(cfg, budget, variant)
    n = cfg.sweep.sizes_per_budget
    chosen = [fit[i] for i in _centred([r.size for r in fit], centre, n)]
    centred = [rungs[i] for i in _centred([r.size for r in rungs], centre, n)]
    note = _ladder_note(f"budget {sci(budget)} {label}", rungs, chosen, centred, n)
    return [r.run for r in chosen if r.run], note  # admissible rungs all have a run


def _rung(cfg: Config, shape: Shape, budget: float, variant: str) -> _Rung:
    try:
        model = variant_model(cfg.model, variant, shape)
    except ValueError as exc:
        # A shape the kind cannot take (MoD: a rung shallower than route_every would train a baseline under
        # MoD's name): left out, with the kind's reason.
        params = variant_model(cfg.model, "baseline", shape).parameters()[0]
        return _Rung(shape, params, None, str(exc).split(" (")[0], params)
    run = make_run(cfg, model, budget)
    params = run.accounting["params"]
    return _Rung(shape, params, run, _unsensible(run, cfg.sweep), active_params(model))


def active_params(model: ModelConfig) -> float:
    """The size an MoE variant is planned at: what its FLOPs per token buy in dense parameters.

    An MoE's total parameters count every expert a token does not pay for: its record (modexp.variants.MoE)
    centres it on what its FLOPs buy instead. Other variants: their parameters.
    """
    return variants.of_model(model).active_size(model)


def _expected_optimum(cfg: Config, budget: float, variant: str) -> float:
    """Parameters at ~tokens_per_param tokens per parameter (C = 6 N D); MoD-routed variants' sit higher.

    MoE variants are centred in active parameters (active_params); staged MoDE shifts like MoD, integrated
    MoDE's FLOP saving is already in its active size.
    """
    centre = math.sqrt(budget / (6 * cfg.sweep.tokens_per_param))
    return centre * cfg.sweep.mod_size_shift if variants.get(variant).size_shift else centre


def _centred(params: list[int], centre: float, n: int) -> list[int]:
    """Indices of the n consecutive sizes whose ends sit most evenly around centre (log scale).

    Near an end of the list the best window is the one at that end: it slides rather than shrinks.
    """
    if n >= len(params):
        return list(range(len(params)))
    best = min(
        range(len(params) - n + 1),
        key=lambda i: abs(0.5 * (math.log(params[i]) + math.log(params[i + n - 1])) - math.log(centre)),
    )
    return list(range(best, best + n))


def _ladder_note(
    head: str, rungs: list[_Rung], chosen: list[_Rung], centred: list[_Rung], n: int
) -> str | None:
    """One line when a (budget, variant) got fewer than n sizes, or n sizes off-centre; None when centred."""
    lo, hi = rungs.index(chosen[0]), rungs.index(chosen[-1])
    smaller, larger = _blocked(rungs[:lo][::-1], "smaller"), _blocked(rungs[hi + 1 :], "larger")
    span = f"{chosen[0].shape.name}..{chosen[-1].shape.name}"
    if len(chosen) < n:
        return f"{head}: {len(chosen)} of {n} sizes fit ({span}): {smaller}; {larger}"
    if [r.shape for r in chosen] == [r.shape for r in centred]:
        return None
    if centred[-1].params > chosen[-1].params:
        return f"{head}: sizes {span} sit off-centre, below the expected optimum: {larger}"
    return f"{head}: sizes {span} sit off-centre, above the expected optimum: {smaller}"


def _blocked(beyond: list[_Rung], side: str) -> str:
    """Why the ladder stops on one side: the nearest rung there that fails a limit (beyond: nearest first)."""
    first = next((r for r in beyond if r.reason), None)
    if first is None:
        return f"no {side} rung in sweep.ladder.widths"
    return f"{side} ones fail, e.g. {first.shape.name}: {first.reason}"


def _unsensible(run: RunSpec, sweep: SweepConfig) -> str | None:
    tpp = run.tokens_per_param
    if run.steps < sweep.min_steps:
        return f"{run.steps} steps < sweep.min_steps={sweep.min_steps}"
    if tpp < sweep.min_tokens_per_param:
        return f"{si(tpp)} tokens/param < sweep.min_tokens_per_param={sweep.min_tokens_per_param:g}"
    if tpp > sweep.max_tokens_per_param:
        return f"{si(tpp)} tokens/param > sweep.max_tokens_per_param={sweep.max_tokens_per_param:g}"
    return None


def set_epochs(runs: list[RunSpec], train_tokens: int, cfg: Config) -> None:
    """Record each run's passes over the training split; refuse when the largest run exceeds sweep.max_epochs.

    Repeated tokens are worth less than fresh ones beyond ~4 epochs (Muennighoff et al. 2023): past that, the
    losses measure data repetition as well as model size, and the isoFLOP curves bend for a reason they do
    not show.
    """
    for run in runs:
        run.epochs = run.tokens / train_tokens
    largest = max(runs, key=lambda r: r.tokens)
    max_epochs = cfg.sweep.max_epochs
    if largest.tokens > max_epochs * train_tokens:
        corpus = f"data.path={cfg.data.path}" if cfg.data.path else f"data.name={cfg.data.name}"
        least = sci(largest.tokens / max_epochs)
        raise ModexpError(
            f"run {largest.run_id} would see its training data {si(largest.epochs)} times, more than "
            f"sweep.max_epochs={max_epochs:g}: it trains on {sci(largest.tokens)} tokens and {corpus} has "
            f"{sci(train_tokens)} training tokens. Give a corpus of at least {least} training tokens "
            "(data=tokens data.path=DIR), smaller budgets, or raise sweep.max_epochs"
        )


def single_run(cfg: Config) -> RunSpec:
    """The one run `modexp train` trains: cfg.model as given, for cfg.budget FLOPs."""
    if cfg.budget is None:
        raise ModexpError("budget is not set: give the run's training FLOPs, e.g. budget=1e11")
    kind = variant_kind(cfg.model)
    try:
        model = variants.get(kind).model_config(cfg.model)
    except ValueError as exc:
        raise ModexpError(f"model.{exc}") from None
    if cfg.variant in variants.kinds() and cfg.variant != kind:  # a dense run filed as "mod" would mislead
        raise ModexpError(
            f"variant={cfg.variant} names a {cfg.variant} run but the model settings (model.routing="
            f"{cfg.model.routing}) make a {kind} one: set the model, or leave variant unset (it is derived)"
        )
    run = make_run(cfg, model, cfg.budget, cfg.variant)
    law = load_lr_law(cfg)
    if law is not None:
        ((lr, rule, outside),) = run_lrs(cfg, law, run.variant, run.accounting["params"])
        run = make_run(cfg, model, cfg.budget, cfg.variant, lr=lr, lr_rule=rule)
        run.lr_domain = outside
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
    reason = _unsensible(run, cfg.sweep)  # the sweep's tokens-per-parameter limits hold for one run too
    if reason:
        raise ModexpError(
            f"budget={sci(cfg.budget)} gives this {si(run.accounting['params'])}-parameter model {reason}: "
            "change budget or the model, or the sweep preset's limits"
        )
    return run
