"""Typed schemas for the Hydra config tree, composition, and one-line errors for bad input.

The values (defaults included) live in conf/; these dataclasses only say what keys exist and what type each
has, so that a typo'd key or a wrong type is refused before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .data import DataConfig
from .errors import ModexpError
from .model import ModelConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

VARIANTS = ("baseline", "mod", "random")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class TrainConfig:
    batch_size: int = MISSING
    lr: float = MISSING  # peak learning rate
    min_lr_ratio: float = MISSING  # cosine decays to this fraction of the peak
    warmup_fraction: float = MISSING  # linear warm-up over this share of the run's steps
    max_warmup_steps: int = MISSING
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    grad_clip: float = MISSING
    eval_every: int = MISSING  # steps between validation passes (the final one always runs)
    eval_tokens: int = MISSING  # held-out tokens per validation pass, the same set for every run
    log_every: int = MISSING
    checkpoint_every: int = MISSING  # steps between checkpoints (the final one always is written)
    compile: bool = MISSING
    precision: str = MISSING  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16


@dataclass
class LadderConfig:
    """Shapes by one rule: n_layers = clamp(round(d_model / aspect_ratio)), heads of head_dim."""

    widths: list[int] = MISSING
    aspect_ratio: float = MISSING
    min_layers: int = MISSING
    max_layers: int = MISSING
    head_dim: int = MISSING


@dataclass
class SweepConfig:
    name: str = MISSING
    budgets: list[float] = MISSING
    variants: list[str] = MISSING
    sizes_per_budget: int = MISSING  # shapes per (budget, variant), centred on the expected optimum
    tokens_per_param: float = MISSING  # where the baseline's optimum is expected (Chinchilla: ~20)
    mod_size_shift: float = MISSING  # MoD's ladder is centred this many times larger (its optima sit higher)
    min_steps: int = MISSING
    min_tokens_per_param: float = MISSING
    max_tokens_per_param: float = MISSING
    flops_per_second: float = MISSING  # throughput assumed for time estimates in the plan
    ladder: LadderConfig = field(default_factory=LadderConfig)


@dataclass
class WandbConfig:
    mode: str = MISSING  # auto: online when an API key is configured, else offline
    project: str = MISSING
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrackerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class LauncherConfig:
    name: str = MISSING  # local | slurm
    workers: int = MISSING  # CPU runs at a time on the local pool (0: one per core)
    partition: str | None = None
    gpus_per_run: int = MISSING
    cpus_per_run: int = MISSING
    mem_gb: float = MISSING
    time_min: int = MISSING
    array_parallelism: int = MISSING
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further sbatch options, passed to submitit


@dataclass
class Config:
    runs_dir: str = MISSING
    seed: int = MISSING
    device: str = MISSING
    budget: float | None = None  # FLOPs of one `modexp train` run
    variant: str | None = None  # name recorded for a single `modexp train` run (None: derived from routing)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


ConfigStore.instance().store(name="schema", node=Config)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose conf/ with command-line overrides into a validated DictConfig (no sweep expansion)."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        message = _one_line(exc)
        if "Could not find" in message or "not found" in message.lower():
            message += " (see the options in conf/)"
        raise ModexpError(message) from None
    to_typed(cfg)  # validate now, so bad values are refused before any planning or training
    return cfg


def to_typed(cfg: DictConfig) -> Config:
    """DictConfig -> Config dataclasses, with the model's and ours own checks; errors as one line."""
    try:
        # Merging onto the schema also types a config read back from a run folder's config.yaml.
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "a required key"
        raise ModexpError(f"{key} is not set: give it on the command line, e.g. {key}=...") from None
    except OmegaConfBaseException as exc:
        raise ModexpError(_one_line(exc)) from None
    except ValueError as exc:  # ModelConfig.validate names the field
        raise ModexpError(f"model.{_one_line(exc)}") from None
    assert isinstance(typed, Config)
    check(typed)
    return typed


def check(cfg: Config) -> None:
    """Checks across keys that the dataclass types cannot express."""
    if cfg.device not in DEVICES:
        raise ModexpError(f"device={cfg.device} is not allowed: choose one of {', '.join(DEVICES)}")
    if cfg.tracker.wandb.mode not in WANDB_MODES:
        raise ModexpError(
            f"tracker.wandb.mode={cfg.tracker.wandb.mode} is not allowed: choose one of {', '.join(WANDB_MODES)}"
        )
    if cfg.budget is not None and not cfg.budget > 0:
        raise ModexpError(f"budget={cfg.budget} is not allowed: give a positive number of FLOPs, e.g. 1e12")
    for budget in cfg.sweep.budgets:
        if not budget > 0:
            raise ModexpError(
                f"sweep.budgets contains {budget}: every budget must be a positive number of FLOPs, e.g. 1e12"
            )
    for variant in cfg.sweep.variants:
        if variant not in VARIANTS:
            raise ModexpError(f"sweep.variants contains {variant!r}: choose from {', '.join(VARIANTS)}")
    if cfg.model.vocab_size != cfg.data.vocab_size:
        raise ModexpError(
            f"model.vocab_size={cfg.model.vocab_size} differs from data.vocab_size={cfg.data.vocab_size}: "
            "set them equal"
        )
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.lr": cfg.train.lr,
        "train.eval_tokens": cfg.train.eval_tokens,
        "train.eval_every": cfg.train.eval_every,
        "train.log_every": cfg.train.log_every,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "sweep.sizes_per_budget": cfg.sweep.sizes_per_budget,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ModexpError(f"{key}={value} is not allowed: it must be positive")
    if cfg.train.precision not in ("auto", "fp32", "bf16"):
        raise ModexpError(f"train.precision={cfg.train.precision} is not allowed: choose auto, fp32 or bf16")
    if cfg.launcher.name not in ("local", "slurm"):
        raise ModexpError(f"launcher.name={cfg.launcher.name} is not allowed: choose local or slurm")


def expand_overrides(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep syntax (`model.capacity=0.125,0.5`, `range(...)`) -> one override list per combination."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ModexpError(_one_line(exc)) from None
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]
