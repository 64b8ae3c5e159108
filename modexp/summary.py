"""summary.json's schema: the contract between a run and the analysis (one row of the study's table per run).

Defined once, here, for the writer (records.run_summary) and the reader (analysis/points.py): which keys are
settings (runs that differ in one are never pooled), which are outcomes, and which only say who the run is or how
it was computed. The MoD settings are the variant registry's (variants.MOD_ONLY), so a registered kind's keys
are settings too.
"""

from __future__ import annotations

from .variants import MOD_ONLY

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
# The run's results: validation losses and what causal routing did (every outcome key starts with val_).
OUTCOMES: tuple[str, ...] = ("val_loss", "val_loss_causal", "val_causal_frac", "val_causal_acc")
# Keys that are not settings: who the run is and where it sits in the study (lr and seed are the two axes a
# point reduces over), and how long it took where.
IDENTITY: tuple[str, ...] = (
    "run_id", "sweep", "variant", "budget", "params", "flops", "flops_error", "lr", "seed", "lr_rule",
    "epochs", "lr_domain", "warmup", "cooldown_start", "stem", "stem_flops", "role",
)  # fmt: skip
MEASURED: tuple[str, ...] = ("wall_time", "step_time", "tokens_per_s", "device")
NOT_SETTINGS: frozenset[str] = frozenset(IDENTITY + MEASURED)
