"""summary.json's schema: the contract between a run and the analysis (one row of the study's table per run).

Defined once, here, for the writer (records.run_summary) and the reader (analysis/points.py): which keys are
settings (runs that differ in one are never pooled), which are outcomes, and which only say who the run is or how
it was computed. The MoD settings are the variant registry's (variants.MOD_ONLY), so a registered kind's keys
are settings too.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from .data.config import DataConfig
from .model.config import ModelConfig
from .variants import MOD_ONLY, settings_fields

# Every model and data setting, from their dataclasses (the model's: every modexp kind's, modexp.variants) (a field added there is recorded and checked without
# touching this file): the model's under its own name, the data's as data_<name>. The shape varies along a
# curve (a point's size), and the data's cache folder is where the corpus is kept, not what it holds.
SHAPE_KEYS = ("d_model", "n_layers", "n_heads")
MODEL_SETTINGS: tuple[str, ...] = tuple(name for name in settings_fields() if name not in SHAPE_KEYS)
DATA_SETTINGS: tuple[str, ...] = tuple(f"data_{f.name}" for f in fields(DataConfig) if f.name != "cache_dir")

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
    "cooldown_fraction",
    "cooldown_shape",
    "grad_clip",
    "precision",
    "seq_len",
    "vocab_size",
    "d_ff",
    "routing",
    *MOD_ONLY,
    "eval_tokens",
    "corpus_fingerprint",
)
SETTINGS += tuple(k for k in MODEL_SETTINGS + DATA_SETTINGS if k not in SETTINGS)
# Settings that must agree along a whole curve (all of them but d_ff, the MLP's width at each size): runs of
# one variant that differ in one are separate curves, labelled by it.
CURVE_SETTINGS: tuple[str, ...] = tuple(k for k in SETTINGS if k != "d_ff")
# The run's results: validation losses and what causal routing did (every outcome key starts with val_).
OUTCOMES: tuple[str, ...] = ("val_loss", "val_loss_causal", "val_causal_frac", "val_causal_acc")
# Keys that are not settings: who the run is and where it sits in the study (lr and seed are the two axes a
# point reduces over), and how long it took where.
IDENTITY: tuple[str, ...] = (
    "run_id", "sweep", "variant", "budget", "params", "flops", "flops_error", "lr", "seed", "lr_rule",
    "epochs", "lr_domain", "warmup", "cooldown_start", "stem", "stem_flops", "role",
)  # fmt: skip
# How fast it went where (records.speed_record): seconds by kind, the device kind and its peak, MFU, load.
SPEED: tuple[str, ...] = (
    "train_time", "eval_time", "checkpoint_time", "startup_time", "inherited_time", "device_kind", "threads",
    "cores", "peak_flops", "peak_source", "precision_used", "mfu", "cpu_share", "load_max",
)  # fmt: skip
MEASURED: tuple[str, ...] = (
    "wall_time", "step_time", "tokens_per_s", "device", "peak_memory_gb", "peak_memory_kind", "estimated_peak_gb",
    *SPEED,
)  # fmt: skip
NOT_SETTINGS: frozenset[str] = frozenset(IDENTITY + MEASURED)


def recorded_settings(model: ModelConfig, data: DataConfig) -> dict[str, Any]:
    """The model's settings that act in its variant (its kind's config: the others are left out, as from its
    id; a plug-in kind's own included) and every data setting but cache_dir: what summary.json records beside
    its hand-written keys."""
    settings = {k: v for k, v in asdict(model).items() if k not in SHAPE_KEYS}
    settings.update(
        {f"data_{f.name}": getattr(data, f.name) for f in fields(DataConfig) if f.name != "cache_dir"}
    )
    return settings
