"""The variant kinds of `sweep.variants`, one small record each, and the registry that holds them.

Each kind owns its model: a record (base.Variant: id format, label, tag, comparisons, ladder centre, LR law, run
record, build and load) and a config class (a modexp.model.ModelConfig subclass with its own settings, which
checks them, says which blocks it routes, counts its parameters and FLOPs, and builds its blocks). modexp's own
kinds are the baseline (base.py), MoD and its random-routing control (mod.py), and the mixture of experts with
both MoDE forms (moe.py); a plug-in adds one the same way from its own module (docs/extending.md).

Pure Python: no torch until a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model.config import ModelConfig
from . import mod, moe  # modexp's own kinds register themselves, after base.py's baseline
from .base import (
    Baseline,
    Variant,
    get,
    kinds,
    model_config,
    of_id,
    of_model,
    records,
    register,
    routings,
    settings_class,
    settings_fields,
)
from .mod import CAUSAL_KEYS, MOD_ONLY, CausalConfig, MoDConfig, every_words, mod_words, ordinal
from .moe import MOE_ONLY, IntegratedMoDEConfig, MoEConfig, StagedMoDEConfig


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


def has_causal_mode(model: Any) -> bool:
    return of_model(model).causal_eval(model)


def build_model(model: Any) -> Any:
    """The training module of model's kind."""
    return of_model(model).build(model)


def load_model(model: Mapping[str, Any], state: Mapping[str, Any]) -> Any:
    """A checkpoint's or an export's model (its `model` settings and its weights), built and loaded by the kind
    its settings select: a plug-in kind must be registered first, else one line names the kinds there are."""
    cfg = model_config(model)
    return of_model(cfg).load(cfg, state)


__all__ = [
    "CAUSAL_KEYS",
    "MOD_ONLY",
    "MOE_ONLY",
    "Baseline",
    "CausalConfig",
    "IntegratedMoDEConfig",
    "MoDConfig",
    "MoEConfig",
    "ModelConfig",
    "StagedMoDEConfig",
    "Variant",
    "build_model",
    "every_words",
    "get",
    "has_causal_mode",
    "kinds",
    "label",
    "load_model",
    "mod",
    "mod_words",
    "model_config",
    "moe",
    "of_id",
    "of_model",
    "ordinal",
    "records",
    "references",
    "register",
    "routings",
    "settings_class",
    "settings_fields",
    "short_tag",
]
