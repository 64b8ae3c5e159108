"""The variant kinds of `sweep.variants`, one small record each, and the registry that holds them.

A record says everything modexp knows about one kind of model: the model settings it owns, the settings that
do nothing for it (left out of its run id and run record), its id format and readable label, its short tag,
which other curves it is compared with, how its ladder is centred, which LR law it takes, and how its model is
built. Planning, config checks, analysis, the verdict, the sweep and training ask here instead of matching
strings. A new kind is a subclass registered with `@register` (as levanter's `LmConfig.register_subclass`),
in modexp or in a plug-in module named by the config's `plugins` list (tests/toy_variant.py is one).

Pure Python: no torch until a model is built.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from .errors import ModexpError
from .model import config as model_config
from .model.config import ModelConfig

# MoD's settings; a model without MoD routing has none of them in its identity.
MOD_ONLY = (
    "capacity",
    "route_every",
    "router_weight",
    "causal_router",
    "aux_loss_weight",
    "predictor_hidden",
)
# The mixture-of-experts settings; a run without moe has none of them in its identity (so adding them kept
# every earlier run's id). noop_experts matters for integrated MoDE only.
MOE_ONLY = ("moe", "experts", "expert_capacity", "noop_experts")
# How a causal decision is made and trained: MoD's router and the MoE's experts both use these.
CAUSAL_KEYS = ("causal_router", "aux_loss_weight", "predictor_hidden")

_CAUSAL_SUFFIX = {"predictor": "", "aux_loss": "_aux", "none": "_nocausal"}
_WEIGHT_SUFFIX = {"sigmoid": "", "linear": "_lin"}
_CAUSAL_WORDS = {"": "", "_aux": "aux-loss causal router", "_nocausal": "no causal router"}
_WEIGHT_WORDS = {"": "", "_lin": "linear router weight"}
_NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def every_words(interval: int) -> str:
    return "every block" if interval == 1 else f"every {ordinal(interval)} block"


class Variant:
    """One kind of sweep.variants. Subclass, set the class attributes, override what differs, `@register`."""

    kind: ClassVar[str]  # the sweep.variants entry; also the start of its run ids
    routing: ClassVar[str]  # model.routing it sets
    moe: ClassVar[bool] = False  # model.moe it sets
    inert: ClassVar[tuple[str, ...]] = ()  # model settings that do nothing for it
    tag: ClassVar[str]  # short tag in the sweep's live status line
    # Kinds whose curves it is compared with, besides the baseline (every learned rule against random routing).
    compared_with: ClassVar[tuple[str, ...]] = ("random",)
    size_shift: ClassVar[bool] = (
        False  # its ladder is centred sweep.mod_size_shift larger (MoD's optima sit higher)
    )
    skips_blocks: ClassVar[bool] = False  # a plug-in routing whose routed blocks unselected tokens skip whole
    lr_family: ClassVar[str | None] = None  # the train.lr_law key it takes (None: its own kind)

    @property
    def settings(self) -> dict[str, Any]:
        return {"routing": self.routing, "moe": self.moe}

    @property
    def law_key(self) -> str:
        return self.lr_family or self.kind

    def name(self, model: ModelConfig) -> str:
        """The run id's variant part (the id is `<name>-<shape>-<budget>-<hash>`)."""
        raise NotImplementedError

    def label(self, variant_id: str) -> str | None:
        """A readable label for an id that name() makes; None when variant_id is not one."""
        raise NotImplementedError

    def causal_eval(self, model: ModelConfig) -> bool:
        """Whether validation also runs with causal routing (where top-k is not causal, and a rule exists)."""
        return model.causal_router != "none"

    def active_size(self, model: ModelConfig) -> float:
        """The size its ladder is centred on: its parameters (MoE kinds: what its FLOPs buy, see plan)."""
        from .flops import count  # flops imports the model config only

        return float(count(model).params)

    def build(self, model: ModelConfig) -> Any:
        """The torch module that trains it. torch is imported here, not at the top: planning needs none."""
        from .model import Transformer

        return Transformer(model)


_REGISTRY: dict[str, Variant] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: make cls's kind a sweep.variants entry (and its routing one the model accepts)."""
    record = cls()
    if record.kind in _REGISTRY and type(_REGISTRY[record.kind]) is not cls:
        raise ModexpError(f"variant kind {record.kind} is registered twice ({cls.__module__}.{cls.__name__})")
    _REGISTRY[record.kind] = record
    if record.routing not in model_config.ROUTINGS:  # a plug-in's own routing rule
        model_config.ROUTINGS.append(record.routing)
    if record.skips_blocks:
        model_config.SKIPPING_ROUTINGS.add(record.routing)
    return cls


def kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(kind: str) -> Variant:
    """The record of a sweep.variants entry; a one-line error naming the kinds there are."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ModexpError(f"variant kind {kind!r} is unknown: choose from {', '.join(_REGISTRY)}") from None


def of_model(model: ModelConfig) -> Variant:
    """The kind a model is, from its routing and MLP."""
    for record in _REGISTRY.values():
        if (model.routing, model.moe) == (record.routing, record.moe):
            return record
    raise ModexpError(
        f"model.routing={model.routing} with model.moe={str(model.moe).lower()} is no variant kind: the kinds "
        f"are {', '.join(f'{r.kind} ({r.routing}, moe={str(r.moe).lower()})' for r in _REGISTRY.values())}"
    )


def of_id(variant_id: str) -> Variant | None:
    """The kind whose ids start like variant_id (the longest kind first: mode_staged before mod); None if none."""
    for kind in sorted(_REGISTRY, key=len, reverse=True):
        if variant_id == kind or variant_id.startswith(kind + "_"):
            return _REGISTRY[kind]
    return None


def label(variant_id: str) -> str | None:
    """A readable label for a run id's variant part; None for an id no registered kind makes."""
    record = of_id(variant_id)
    return record.label(variant_id) if record else None


def short_tag(variant_id: str) -> str:
    record = of_id(variant_id)
    return record.tag if record else variant_id[:3]


def references(variant_id: str) -> tuple[str, ...]:
    """The kinds (besides the baseline) whose curves variant_id's is compared with."""
    record = of_id(variant_id)
    return record.compared_with if record else ("random",)


def has_causal_mode(model: ModelConfig) -> bool:
    return of_model(model).causal_eval(model)


def build_model(model: ModelConfig) -> Any:
    """The training module of model's kind (a plain Transformer for modexp's own kinds)."""
    return of_model(model).build(model)


# ----------------------------------------------------------------------------------------- modexp's kinds


def _mod_part(model: ModelConfig) -> str:
    return f"_c{model.capacity:g}_e{model.route_every}"


def _experts_part(model: ModelConfig) -> str:
    return f"_x{model.experts}_k{model.expert_capacity:g}"


def mod_words(variant_id: str, kind: str) -> tuple[list[str], str] | None:
    """(["MoD 12.5%", "every 2nd block"], suffixes) from `<kind>_c<capacity>_e<interval><suffixes>`; None if not."""
    head, sep, rest = variant_id.partition("_c")
    if head != kind or not sep:
        return None
    capacity, sep, rest = rest.partition("_e")
    every, suffixes = rest, ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            every, suffixes = rest[:i], rest[i:]
            break
    try:
        fraction, interval = float(capacity), int(every)
    except ValueError:
        return None
    if not sep or not 0 < fraction <= 1 or interval < 1 or every != str(interval):
        return None
    return [f"MoD {100 * fraction:g}%", every_words(interval)], suffixes


@register
class Baseline(Variant):
    kind, routing, tag = "baseline", "none", "bas"
    inert = MOD_ONLY + MOE_ONLY

    def name(self, model: ModelConfig) -> str:
        return "baseline"

    def label(self, variant_id: str) -> str | None:
        return "baseline" if variant_id == "baseline" else None

    def causal_eval(self, model: ModelConfig) -> bool:
        return False  # no routing: the top-k loss is causal already


@register
class MoD(Variant):
    """Learned expert-choice routing (top-k over the sequence) around every route_every-th block."""

    kind, routing, tag = "mod", "topk", "mod"
    inert = MOE_ONLY
    size_shift = True

    def name(self, model: ModelConfig) -> str:
        suffixes = _WEIGHT_SUFFIX[model.router_weight] + _CAUSAL_SUFFIX[model.causal_router]
        return self.kind + _mod_part(model) + suffixes

    def label(self, variant_id: str) -> str | None:
        parsed = mod_words(variant_id, self.kind)
        if parsed is None:
            return None
        words, suffixes = parsed
        # name() appends the router weight, then the causal router: "_lin", "_aux", "_lin_nocausal", ...
        for weight, weight_words in _WEIGHT_WORDS.items():
            for causal, causal_words in _CAUSAL_WORDS.items():
                if suffixes == weight + causal:
                    return ", ".join(words + [w for w in (weight_words, causal_words) if w])
        return None


@register
class Random(Variant):
    """The paper's control: top-k over Gaussian noise, no router to train (it decides causally by its noise)."""

    kind, routing, tag = "random", "random", "ran"
    inert = MOE_ONLY
    compared_with = ()
    size_shift = True

    def name(self, model: ModelConfig) -> str:
        return self.kind + _mod_part(model)

    def label(self, variant_id: str) -> str | None:
        parsed = mod_words(variant_id, self.kind)
        if parsed is None or parsed[1]:
            return None
        return ", ".join([*parsed[0], "random routing"])

    def causal_eval(self, model: ModelConfig) -> bool:
        return True


_EXPERT_IDS = re.compile(
    rf"(?P<kind>moe|mode_staged|mode_integrated)(?:_c{_NUMBER}_e(\d+))?_x(\d+)_k{_NUMBER}(?:_n(\d+))?"
    r"(?P<lin>_lin)?(?P<causal>_aux|_nocausal)?"
)


def _expert_words(variant_id: str, kind: str) -> tuple[re.Match, str] | None:
    """The parsed MoE/MoDE id and its "MoE 4 experts x 25%" words; None unless it is one of kind's ids."""
    match = _EXPERT_IDS.fullmatch(variant_id)
    if match is None or match["kind"] != kind:
        return None
    capacity, noop = match.group(2), match.group(6)
    if (capacity is not None) != (kind != "moe") or (noop is not None) != (kind == "mode_integrated"):
        return None
    if match["lin"] and kind != "mode_staged":
        return None
    return match, f"MoE {match.group(4)} experts x {100 * float(match.group(5)):g}%"


def _with_suffixes(words: list[str], match: re.Match) -> str:
    lin, causal = _WEIGHT_WORDS[match["lin"] or ""], _CAUSAL_WORDS[match["causal"] or ""]
    return ", ".join(words + [w for w in (lin, causal) if w])


@register
class MoE(Variant):
    """A mixture of experts in every block, no MoD (an MoE still decides causally with the causal keys)."""

    kind, routing, moe, tag = "moe", "none", True, "moe"
    inert = tuple(k for k in MOD_ONLY if k not in CAUSAL_KEYS) + ("noop_experts",)

    def name(self, model: ModelConfig) -> str:
        return self.kind + _experts_part(model) + _CAUSAL_SUFFIX[model.causal_router]

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        return _with_suffixes([parsed[1]], parsed[0]) if parsed else None

    def active_size(self, model: ModelConfig) -> float:
        """What its FLOPs per token buy in dense parameters: total parameters count every expert, but a token
        pays for expert_capacity x experts of them, so a ladder centred on total parameters would sit far too
        small. The same model with a dense MLP, times the ratio of their training FLOPs per token: with experts
        x expert_capacity = 1 about the dense model's size (a compute-matched MoE); integrated MoDE's saved MLP
        FLOPs make it larger, as MoD's routed FLOPs do (so it takes no sweep.mod_size_shift on top)."""
        from dataclasses import replace

        from .flops import count

        dense = replace(model, moe=False, routing="none" if model.routing == "integrated" else model.routing)
        dense_count, moe_count = count(dense), count(model)
        return dense_count.params * moe_count.train_per_token / dense_count.train_per_token


@register
class MoDEStaged(MoE):
    """MoD around blocks whose MLP is an MoE (the paper's staged MoDE)."""

    kind, routing, moe, tag = "mode_staged", "topk", True, "mds"
    inert = ("noop_experts",)
    compared_with = ("random", "moe")
    size_shift = True

    def name(self, model: ModelConfig) -> str:
        suffixes = _WEIGHT_SUFFIX[model.router_weight] + _CAUSAL_SUFFIX[model.causal_router]
        return self.kind + _mod_part(model) + _experts_part(model) + suffixes

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        if parsed is None:
            return None
        match, moe = parsed
        mod = f"staged MoDE: MoD {100 * float(match.group(2)):g}% {every_words(int(match.group(3)))}"
        return _with_suffixes([mod, moe], match)


@register
class MoDEIntegrated(MoE):
    """MoD as no-op experts in the MoE router of the routed blocks (the paper's integrated MoDE)."""

    kind, routing, moe, tag = "mode_integrated", "integrated", True, "mdi"
    inert = ()
    compared_with = ("random", "moe")

    def name(self, model: ModelConfig) -> str:
        mod, experts = _mod_part(model), _experts_part(model)
        return f"{self.kind}{mod}{experts}_n{model.noop_experts}" + _CAUSAL_SUFFIX[model.causal_router]

    def label(self, variant_id: str) -> str | None:
        parsed = _expert_words(variant_id, self.kind)
        if parsed is None:
            return None
        match, moe = parsed
        noop = match.group(6)
        noops = f"{noop} no-op expert{'s' if noop != '1' else ''}"
        where = every_words(int(match.group(3)))
        return _with_suffixes(
            [f"integrated MoDE: {moe}", f"{100 * float(match.group(2)):g}% of it {where} with {noops}"], match
        )
