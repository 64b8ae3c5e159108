"""What a variant kind is (Variant), the registry of kinds, and the settings they share in a config's `model:`.

A record says everything modexp knows about one kind of model: the config class its model takes (a
ModelConfig subclass with its own settings, which also counts its parameters and FLOPs and builds its blocks),
the settings that select it, its id format and readable label, its short tag, which other curves it is compared
with, how its ladder is centred, which LR law it takes, what its run records say, and how its model is built and
loaded. Planning, config checks, analysis, the verdict, the sweep, training, sampling and export ask here
instead of matching strings. A new kind is a subclass registered with `@register` (as levanter's
`LmConfig.register_subclass`), in modexp or in a plug-in module named by the user (docs/extending.md).

Pure Python: no torch until a model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import ModexpError
from ..model.config import ModelConfig
from ..ranges import first_violation


class Variant:
    """One kind of sweep.variants. Subclass, set the class attributes, override what differs, `@register`."""

    kind: ClassVar[str]  # the sweep.variants entry; also the start of its run ids
    routing: ClassVar[str]  # model.routing it sets
    moe: ClassVar[bool] = False  # model.moe it sets
    config: ClassVar[type[ModelConfig]] = (
        ModelConfig  # the config its model takes: its settings are its fields
    )
    tag: ClassVar[str]  # short tag in the sweep's live status line
    # Kinds whose curves it is compared with, besides the baseline (every learned rule against random routing).
    compared_with: ClassVar[tuple[str, ...]] = ("random",)
    size_shift: ClassVar[bool] = (
        False  # its ladder is centred sweep.mod_size_shift larger (MoD's optima sit higher)
    )
    lr_family: ClassVar[str | None] = None  # the train.lr_law key it takes (None: its own kind)
    dense: ClassVar[bool] = False  # the baseline only: a kind that routes nothing (register() refuses others)

    @property
    def settings(self) -> dict[str, Any]:
        """The model settings that select this kind."""
        return {"routing": self.routing, "moe": self.moe}

    @property
    def law_key(self) -> str:
        return self.lr_family or self.kind

    @property
    def inert(self) -> tuple[str, ...]:
        """Model settings that do nothing for it: every registered kind's settings but its own."""
        own = {f.name for f in dataclasses.fields(self.config)}
        return tuple(name for name in settings_fields() if name not in own)

    def model_config(self, settings: Any, **changes: Any) -> ModelConfig:
        """Its config from a config's model settings (a ModelSettings, or a mapping such as a run.json's): the
        settings it has, its selecting ones, then `changes` (a shape). ValueError when they do not fit."""
        values = settings if isinstance(settings, Mapping) else vars(settings)
        own = [f.name for f in dataclasses.fields(self.config) if f.init]
        chosen = {name: values[name] for name in own if name in values}
        chosen.update({k: v for k, v in {**self.settings, **changes}.items() if k in own})
        return self.config(**chosen)

    def name(self, model: ModelConfig) -> str:
        """The run id's variant part (the id is `<name>-<shape>-<budget>-<hash>`)."""
        raise NotImplementedError

    def label(self, variant_id: str) -> str | None:
        """A readable label for an id that name() makes; None when variant_id is not one."""
        raise NotImplementedError

    def causal_eval(self, model: ModelConfig) -> bool:
        """Whether validation also runs with causal routing (where top-k is not causal, and a rule exists)."""
        return self.causal_router(model) != "none"

    def causal_router(self, model: ModelConfig) -> str:
        """How its routers' per-token (sampling-time) decision is trained: predictor | aux_loss | none."""
        return str(getattr(model, "causal_router", "none"))

    def active_size(self, model: ModelConfig) -> float:
        """The size its ladder is centred on: its parameters (MoE kinds: what its FLOPs buy, see plan)."""
        return float(model.parameters()[0])

    def record(self, model: ModelConfig) -> dict[str, Any]:
        """The routing columns of its summary.json (the analysis's table): what a kind without one of them has."""
        routed_by = self.causal_router(model)
        return {
            "routing": model.routing,
            "capacity": getattr(model, "capacity", 1.0),
            "route_every": getattr(model, "route_every", 0),
            "causal_router": routed_by,
            "moe": getattr(model, "moe", False),
            "experts": getattr(model, "experts", 0),
            "expert_capacity": getattr(model, "expert_capacity", 1.0),
            "noop_experts": getattr(model, "noop_experts", 0),
            "router_weight": getattr(model, "router_weight", "sigmoid"),
            "aux_loss_weight": getattr(model, "aux_loss_weight", 0.0) if routed_by == "aux_loss" else 0.0,
            "predictor_hidden": getattr(model, "predictor_hidden", 0) if routed_by == "predictor" else 0,
        }

    def build(self, model: ModelConfig) -> Any:
        """The torch module that trains it (its config builds its blocks). torch is imported here, not at the
        top: planning needs none."""
        from ..model import Transformer

        return Transformer(model)

    def load(self, model: ModelConfig, state: Mapping[str, Any]) -> Any:
        """Its module with a checkpoint's weights (a state_dict saved from a torch.compile'd model carries an
        "_orig_mod." prefix). A kind whose checkpoints changed layout translates old ones here."""
        module = self.build(model)
        module.load_state_dict({key.removeprefix("_orig_mod."): value for key, value in state.items()})
        return module


_REGISTRY: dict[str, Variant] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: make cls's kind a sweep.variants entry. Refuses a kind registered twice, a config that is
    no ModelConfig, one whose settings clash with another kind's, and a kind that would train no routed block."""
    record = cls()
    if record.kind in _REGISTRY and type(_REGISTRY[record.kind]) is not cls:
        raise ModexpError(f"variant kind {record.kind} is registered twice ({cls.__module__}.{cls.__name__})")
    if not (isinstance(record.config, type) and issubclass(record.config, ModelConfig)):
        raise ModexpError(f"variant kind {record.kind}: its config must subclass modexp.model.ModelConfig")
    _check_fields(record)
    if not record.dense:
        _check_routes(record)
    _REGISTRY[record.kind] = record
    return cls


def _check_fields(record: Variant) -> None:
    """A setting two kinds share must be the same setting: one type, one default."""
    for f in dataclasses.fields(record.config):
        for other in _REGISTRY.values():
            theirs = {g.name: g for g in dataclasses.fields(other.config)}.get(f.name)
            if theirs is None or f.name in record.settings:
                continue
            if str(theirs.type) != str(f.type) or _default(theirs) != _default(f):
                raise ModexpError(
                    f"variant kind {record.kind}: its setting {f.name} ({f.type} = {_default(f)!r}) clashes "
                    f"with kind {other.kind}'s ({theirs.type} = {_default(theirs)!r}): rename it"
                )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _check_routes(record: Variant) -> None:
    """A kind that is not the baseline must route something at its defaults on a small model: otherwise it would
    train a dense model under its own name (a plug-in that forgot to say which blocks it routes). Probed at a
    few depths, since a kind may refuse some (MoR needs its recursions to divide the middle blocks)."""
    refused = None
    for n_layers in (4, 5, 6, 7, 8, 12, 16):
        try:
            probe = record.model_config({}, d_model=64, n_heads=4, n_layers=n_layers, seq_len=64)
        except ValueError as exc:
            refused = exc
            continue
        if probe.routed_layers or any(probe.mlp_load(i) is not None for i in range(probe.n_layers)):
            return
        refused = None
    if refused is not None:
        raise ModexpError(f"variant kind {record.kind}: its config refuses its own defaults ({refused})")
    raise ModexpError(
        f"variant kind {record.kind} would train no routed block: its config ({record.config.__name__}) routes "
        "no layer (routed_layers is empty) and has no mixture of experts; override routed_layers (and build "
        "the blocks that route), or register it as dense"
    )


def kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def records() -> tuple[Variant, ...]:
    return tuple(_REGISTRY.values())


def routings() -> set[str]:
    """The model.routing values of the registered kinds (a plug-in's once it is loaded)."""
    return {record.routing for record in _REGISTRY.values()}


def get(kind: str) -> Variant:
    """The record of a sweep.variants entry; a one-line error naming the kinds there are."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ModexpError(f"variant kind {kind!r} is unknown: choose from {', '.join(_REGISTRY)}") from None


def _selected(record: Variant, settings: Any) -> bool:
    get_ = settings.get if isinstance(settings, Mapping) else lambda k, d: getattr(settings, k, d)
    base = next(iter(_REGISTRY.values())).settings  # what a setting no kind config has means: the baseline's
    return all(get_(k, base.get(k)) == v for k, v in record.settings.items())


def of_model(model: Any) -> Variant:
    """The kind a model is, from the settings that select kinds (routing, moe): a kind's config, a config's
    model settings, or a mapping of them (a run.json's, a checkpoint's)."""
    for record in _REGISTRY.values():
        if _selected(record, model):
            return record
    get_ = model.get if isinstance(model, Mapping) else lambda k, d=None: getattr(model, k, d)
    raise ModexpError(
        f"model.routing={get_('routing', 'none')} with model.moe={str(get_('moe', False)).lower()} is no variant "
        f"kind: the kinds are {', '.join(f'{r.kind} ({r.routing}, moe={str(r.moe).lower()})' for r in records())}"
        " (a plug-in's kind is known once its module is loaded)"
    )


def model_config(settings: Any = None, /, **overrides: Any) -> ModelConfig:
    """The config of the kind that `settings` select (a ModelSettings, a mapping such as a run.json's or a
    checkpoint's model, or keyword settings), keeping the settings that kind has. ValueError on bad values."""
    values = dict(
        settings if isinstance(settings, Mapping) else vars(settings) if settings is not None else {}
    )
    values.update(overrides)
    _check_selectors(values)
    try:
        record = of_model(
            values
        )  # first: a plug-in's kind not loaded says so, before its settings are unknown
    except ModexpError as exc:
        raise ValueError(str(exc).removeprefix("model.")) from None
    unknown = sorted(set(values) - set(settings_fields()))
    if unknown:
        raise ValueError(f"{unknown[0]} is no model setting of any variant kind ({', '.join(kinds())})")
    settings_class()(**values)  # every setting checked as a config's model node is, those its kind lacks too
    return record.model_config(values)


def _check_selectors(values: Mapping[str, Any]) -> None:
    """A setting that selects kinds (routing, moe) takes a value some kind selects by."""
    for name in dict.fromkeys(k for r in records() for k in r.settings):
        allowed = list(dict.fromkeys(r.settings[name] for r in records() if name in r.settings))
        if name in values and not any(values[name] is a or values[name] == a for a in allowed):
            words = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            hint = (
                " (a plug-in's kind is known once its module is loaded)"
                if isinstance(values[name], str)
                else ""
            )
            raise ValueError(f"{name}={values[name]!r} is not allowed: choose one of {words}{hint}")


def of_id(variant_id: str) -> Variant | None:
    """The kind whose ids start like variant_id (the longest kind first: mode_staged before mod); None if none."""
    for kind in sorted(_REGISTRY, key=len, reverse=True):
        if variant_id == kind or variant_id.startswith(kind + "_"):
            return _REGISTRY[kind]
    return None


# -- the settings every kind takes from a config's `model:` ----------------------------------------------------

_SETTINGS: dict[tuple[type, ...], type] = {}


def settings_fields() -> dict[str, dataclasses.Field]:
    """Every registered kind's settings, the base shape's first, then each kind's new ones in registration order."""
    found: dict[str, dataclasses.Field] = {}
    for record in _REGISTRY.values():
        for f in dataclasses.fields(record.config):
            found.setdefault(f.name, f)
    return found


def settings_class() -> type:
    """The dataclass of a config's `model:` node: every registered kind's settings in one flat namespace
    (model.capacity, model.experts, a plug-in's own), each kind taking the ones it has (Variant.model_config).
    A setting that selects kinds defaults to the baseline's (routing: none, moe: false). Rebuilt when a plug-in
    registers a kind."""
    configs = tuple(r.config for r in _REGISTRY.values())
    if configs not in _SETTINGS:
        baseline = records()[0].settings
        specs = []
        for name, f in settings_fields().items():
            default = baseline.get(name, _default(f))
            value = dataclasses.field(default_factory=lambda v=default: v)
            if not isinstance(default, (list, dict, set)):
                value = dataclasses.field(default=default)
            specs.append((name, f.type, value))
        cls = dataclasses.make_dataclass("ModelSettings", specs, namespace={"__post_init__": _check_settings})
        cls.__module__ = __name__
        _SETTINGS[configs] = cls
    return _SETTINGS[configs]


def _check_settings(self: Any) -> None:
    """The shape as the baseline takes it, and each kind's settings on their own (choices, ranges), before a
    shape is planned: what depends on a kind and a shape is checked when that kind's config is built for it."""
    values = vars(self)
    _check_selectors(values)
    records()[0].model_config(values)
    for record in _REGISTRY.values():
        probe = object.__new__(record.config)  # filled by hand: no check that needs a planned shape
        for f in dataclasses.fields(record.config):
            setattr(probe, f.name, record.settings.get(f.name, values.get(f.name, _default(f))))
        probe.check_settings()
        problem = first_violation(probe, record.config.ranges())
        if problem:
            raise ValueError(problem)


@register
class Baseline(Variant):
    """The dense transformer every other kind is compared with (ModelConfig: every block dense)."""

    kind, routing, tag = "baseline", "none", "bas"
    dense = True

    def name(self, model: ModelConfig) -> str:
        return "baseline"

    def label(self, variant_id: str) -> str | None:
        return "baseline" if variant_id == "baseline" else None

    def causal_eval(self, model: ModelConfig) -> bool:
        return False  # no routing: the top-k loss is causal already
