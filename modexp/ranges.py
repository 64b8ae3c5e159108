"""What each number of a config may be: one table per schema, checked by one walk over every numeric field.

A field with no entry is a bug the tests catch (tests/test_hardening.py walks every schema), so a new number
cannot arrive unchecked. Bounds are generous (what any study could mean), but finite: 0, a negative, nan, inf
or 1e308 where they mean nothing is refused in one line naming the key, the value and the range.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ModexpError


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # (low, ...: low itself is not allowed
    whole: bool = False  # an integer
    nullable: bool = False  # null (None) is allowed too

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        span = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{kind} in {span}" + (" or null" if self.nullable else "")


def whole(low: int, high: int, nullable: bool = False) -> Range:
    return Range(low, high, whole=True, nullable=nullable)


def above(low: float, high: float, nullable: bool = False) -> Range:
    """A positive-style range: low itself excluded."""
    return Range(low, high, low_open=True, nullable=nullable)


def within(low: float, high: float) -> Range:
    return Range(low, high)


def numeric_fields(obj: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, table key, value) of every numeric leaf of a dataclass tree, list items and dict values
    included: train.lr_law.baseline.coefficient is looked up as train.lr_law.*.coefficient, and
    sweep.ladder.widths[2] as sweep.ladder.widths."""
    out: list[tuple[str, str, Any]] = []
    for f in dataclasses.fields(obj):
        name = f"{prefix}{f.name}"
        out += _leaves(name, name, getattr(obj, f.name), f.type)
    return out


def _leaves(key: str, pattern: str, value: Any, declared: Any) -> list[tuple[str, str, Any]]:
    if dataclasses.is_dataclass(value):
        return [
            (f"{key}{k[len(key) :]}", f"{pattern}{p[len(key) :]}", v)
            for k, p, v in numeric_fields(value, f"{key}.")
        ]
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", f"{pattern}.*", v, None)]
    if isinstance(value, (list, tuple)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(f"{key}[{i}]", pattern, v, None)]
    if _numeric(value) or (value is None and _numeric_type(declared)):
        return [(key, pattern, value)]
    return []


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_type(declared: Any) -> bool:
    text = str(declared)
    return "int" in text or "float" in text


def first_violation(obj: Any, table: dict[str, Range], prefix: str = "") -> str | None:
    """The first numeric field outside its range, as one line; None when every one is inside."""
    for key, pattern, value in numeric_fields(obj):
        rule = table.get(pattern)
        if rule is not None and not rule.allows(value):
            return f"{prefix}{key}={value!r} is not allowed: it must be {rule.describe()}"
    return None


def check_id_suffix(suffix: str) -> str:
    """tracker.wandb.id_suffix ends W&B run ids and the offline folders named by them: letters, digits and
    . _ - only (a '/' or '..' would move another study's folders)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", suffix or "") or ".." in (suffix or ""):
        raise ModexpError(
            f"tracker.wandb.id_suffix={suffix!r} is not allowed: it ends W&B run ids and folder names, so use "
            "letters, digits and . _ - (no '/', no '..'), e.g. -2"
        )
    return suffix or ""


# Every number of the config outside the model and what it may be: the one table config.check reads (a model
# kind's own numbers are in its config class's RANGES, modexp/model/config.py and modexp/variants/). A few
# checks there say more for some keys; this table makes sure none is left unchecked.
RANGES: dict[str, Range] = {
    "seed": whole(0, 2**32 - 1),
    "budget": above(0, 1e30, nullable=True),
    "data.vocab_size": whole(2, 2**24),
    "data.val_fraction": above(0, 1),
    "train.batch_size": whole(1, 2**24),
    "train.lr": above(0, 100),
    "train.lr_law.*.coefficient": above(0, 1e6),
    "train.lr_law.*.exponent": within(-10, 10),
    "train.lr_law.*.params_min": above(0, 1e18, nullable=True),
    "train.lr_law.*.params_max": above(0, 1e18, nullable=True),
    "train.min_lr_ratio": within(0, 1),
    "train.warmup_fraction": within(0, 1),
    "train.cooldown_fraction": above(0, 0.99),  # strictly inside (0, 1): _check_schedule says why
    "train.max_warmup_steps": whole(0, 2**40),
    "train.weight_decay": within(0, 1e3),
    "train.beta1": within(0, 0.999999),
    "train.beta2": within(0, 0.999999),
    "train.grad_clip": above(0, 1e12),
    "train.eval_every": whole(1, 2**40),
    "train.eval_tokens": whole(1, 2**50),
    "train.log_every": whole(1, 2**40),
    "train.checkpoint_every": whole(1, 2**40),
    "train.micro_batch_size": whole(1, 2**24),
    "sweep.budgets": above(0, 1e30),
    "sweep.sizes_per_budget": whole(1, 1000),
    "sweep.seeds": whole(1, 1000),
    "sweep.seed_sizes": whole(0, 1000),  # 0: every size
    "sweep.tokens_per_param": above(0, 1e6),
    "sweep.mod_size_shift": above(0, 1e3),
    "sweep.min_steps": whole(1, 2**40),
    "sweep.min_tokens_per_param": above(0, 1e6),
    "sweep.max_tokens_per_param": above(0, 1e9),
    "sweep.flops_per_second": above(0, 1e24),
    "sweep.max_epochs": above(0, 1e6),
    "sweep.lr_grid": above(0, 100),
    "sweep.ladder.widths": whole(1, 2**16),
    "sweep.ladder.aspect_ratio": above(0, 1e4),
    "sweep.ladder.min_layers": whole(1, 1024),
    "sweep.ladder.max_layers": whole(1, 1024),
    "sweep.ladder.head_dim": whole(2, 2**16),
    "launcher.workers": whole(0, 4096),  # 0: one per core
    "launcher.gpus_per_run": whole(0, 4096),
    "launcher.gpus_per_node": whole(1, 1024),
    "launcher.gpu_mem_gb": above(0, 1e5, nullable=True),
    "launcher.cpus_per_run": whole(1, 4096),
    "launcher.mem_gb": above(0, 1e6),
    "launcher.time_min": whole(1, 10**7),
    "launcher.array_parallelism": whole(1, 10**6),
    "launcher.startup_s": Range(0, 1e5, nullable=True),
    "launcher.worker_startup_s": Range(0, 1e5, nullable=True),
}
UNRANGED = ("launcher.extra.*",)  # passed to sbatch as words, checked by the SLURM launcher (launch/slurm.py)
