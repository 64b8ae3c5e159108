"""Settings that do nothing for the choice they come with are refused in one line, never silently ignored.

A setting given on the command line that the chosen data kind, launcher, schedule, LR rule, variant or command
does not read would otherwise be recorded (some in every run's identity, so every run changes id) and have no
effect: `data.path=DIR` without `data=text`, `launcher.partition=gpu` without `launcher=slurm`,
`train.cooldown_fraction` with a cosine schedule, `train.lr` under the demo's LR law, `model.d_model` in a
sweep (its shapes come from sweep.ladder), `model.capacity` for a baseline. Each rule below names the setting,
why it does nothing and what would make it count.

Only what the user typed is checked (presets set every key, most of them for some other choice); a value that
can only have come from the user (data.path with data=stdlib) is refused by the data checks themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from . import launch, variants
from .config import Config, processes_per_run
from .data.config import unused_key as unused_data_key
from .errors import ModexpError

# What a sweep sets itself, per run: the shape from sweep.ladder, routing and MLP from sweep.variants.
_SWEEP_SETS = {
    "model.d_model": "a sweep takes its shapes from sweep.ladder (sweep.ladder.widths, aspect_ratio, ...)",
    "model.n_layers": "a sweep takes its shapes from sweep.ladder (sweep.ladder.widths, aspect_ratio, ...)",
    "model.n_heads": "a sweep takes its shapes from sweep.ladder (sweep.ladder.head_dim)",
    "model.routing": "a sweep sets each run's routing from sweep.variants, e.g. sweep.variants=[baseline,mod]",
    "model.moe": "a sweep sets each run's MLP from sweep.variants, e.g. sweep.variants=[baseline,moe]",
    "budget": "it is the FLOPs of one `modexp train` run; a sweep trains sweep.budgets=[...]",
    "variant": "it names one `modexp train` run; a sweep's variants are sweep.variants=[...]",
}
# The sweep settings `modexp train` reads: sweep.name (the folder), the limits a run must meet (min_steps,
# the tokens-per-parameter range, max_epochs) and reuse (branches makes the schedule wsd).
TRAIN_READS_SWEEP = (
    "name",
    "min_steps",
    "min_tokens_per_param",
    "max_tokens_per_param",
    "max_epochs",
    "reuse",
)


# When a setting counts, for the configuration reference (docs/configuration.md, modexp/configdoc.py); the
# rules below enforce it. data.*, launcher.* and the model's variant settings say it through READS, the
# launchers' `reads` and the variant records.
ONLY_WITH = {
    "budget": "modexp train",
    "variant": "modexp train",
    "model.d_model": "modexp train (a sweep's shapes: sweep.ladder)",
    "model.n_layers": "modexp train (a sweep's shapes: sweep.ladder)",
    "model.n_heads": "modexp train (a sweep's shapes: sweep.ladder)",
    "model.routing": "modexp train (a sweep's: sweep.variants)",
    "model.moe": "modexp train (a sweep's: sweep.variants)",
    "train.cooldown_fraction": "train.schedule=wsd",
    "train.cooldown_shape": "train.schedule=wsd",
    "train.lr": "no sweep.lr_grid, train.lr_from or train.lr_law",
    "train.lr_law": "no sweep.lr_grid or train.lr_from",
    "train.parallel": "launcher.gpus_per_run > 1",
    "sweep.seed_sizes": "sweep.seeds > 1",
}


def given_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """(key, value) of each `key=value` override that sets a setting (not a preset choice such as data=text)."""
    out = []
    for override in overrides:
        key, eq, value = override.partition("=")
        key = key.lstrip("+~")
        if (eq and "." in key) or key in ("budget", "variant"):
            out.append((key, value))
    return out


def refuse_unused(overrides: list[str], cfg: Config, command: str) -> None:
    """One line for the first override that does nothing for this config and command: "sweep" (modexp plan
    and sweep: a study) or "train" (one run). See the module doc."""
    for key, value in given_keys(overrides):
        why = why_unused(key, cfg, command)
        if why:
            raise ModexpError(f"{key}={value} does nothing here: {why}")


def why_unused(key: str, cfg: Config, command: str) -> str | None:
    """Why `key` does nothing for cfg under command (sweep or train), or None when it counts."""
    group, _, rest = key.partition(".")
    leaf = rest.split(".", 1)[0]
    rule = _RULES.get(group)
    return rule(leaf, key, cfg, command) if rule else None


def _data(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    return unused_data_key(cfg.data.name, leaf)


def _launcher(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    reads = getattr(launch.get(cfg.launcher.name), "reads", None)
    if reads is None or leaf in reads:
        return None
    others = [n for n in ("local", "slurm") if leaf in getattr(launch.get(n), "reads", ())]
    hint = f": it is a setting of {' and '.join(f'launcher={n}' for n in others)}" if others else ""
    return f"launcher={cfg.launcher.name} does not read it{hint}"


def _train(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    train, sweep = cfg.train, cfg.sweep
    if leaf in ("cooldown_fraction", "cooldown_shape") and train.schedule == "cosine":
        return "it shapes a WSD schedule's decay and train.schedule is cosine: add train.schedule=wsd"
    rule = _lr_rule(cfg, command)
    if leaf == "lr" and rule:
        return f"{rule} sets every run's learning rate; to train at train.lr, clear it" + (
            " ('train.lr_law={}')" if rule.startswith("train.lr_law") else ""
        )
    if leaf == "lr_law" and (train.lr_from or (sweep.lr_grid and command == "sweep")):
        return f"{'train.lr_from' if train.lr_from else 'sweep.lr_grid'} sets every run's learning rate"
    if leaf == "parallel" and processes_per_run(cfg) == 1:
        return "one process trains each run; set launcher.gpus_per_run > 1 for DDP or FSDP"
    return None


def _lr_rule(cfg: Config, command: str) -> str | None:
    """What sets every run's LR instead of train.lr, in the precedence of plan.run_lrs (None: train.lr does)."""
    if cfg.sweep.lr_grid and command == "sweep":
        return "sweep.lr_grid"
    if cfg.train.lr_from:
        return "train.lr_from"
    if cfg.train.lr_law:
        return "train.lr_law"
    return None


def _sweep(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    if command == "train" and leaf not in TRAIN_READS_SWEEP:
        return "modexp train trains one run (budget=...); sweep settings act in modexp sweep and modexp plan"
    if leaf == "seed_sizes" and cfg.sweep.seeds == 1:
        return "it picks the sizes that get extra seeds, and sweep.seeds=1 gives none: raise sweep.seeds"
    return None


def _model(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    if command == "sweep":
        if key in _SWEEP_SETS:
            shape = "shapes" in _SWEEP_SETS[key]
            return _SWEEP_SETS[key] + ("; for one model of your own shape use modexp train" if shape else "")
        users = [k for k in cfg.sweep.variants if leaf not in variants.get(k).inert]
        if not users:
            takers = [k for k in variants.kinds() if leaf not in variants.get(k).inert]
            return (
                f"no variant of sweep.variants=[{','.join(cfg.sweep.variants)}] reads it; "
                f"{', '.join(takers)} do: add one to sweep.variants"
            )
        return None
    kind = variants.of_model(cfg.model).kind
    if leaf in variants.of_model(cfg.model).inert:
        return (
            f"this model is a {kind} run (model.routing={cfg.model.routing}, model.moe="
            f"{str(cfg.model.moe).lower()}), which does not read it: e.g. model.routing=topk for MoD"
        )
    return None


def _top(leaf: str, key: str, cfg: Config, command: str) -> str | None:
    if command == "sweep" and key in _SWEEP_SETS:
        return _SWEEP_SETS[key]
    return None


_RULES: dict[str, Callable[[str, str, Config, str], str | None]] = {
    "data": _data,
    "launcher": _launcher,
    "train": _train,
    "sweep": _sweep,
    "model": _model,
    "budget": _top,
    "variant": _top,
}
