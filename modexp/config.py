"""Typed schemas for the Hydra config tree, composition, and one-line errors for bad input.

The values (defaults included) live in conf/; these dataclasses only say what keys exist and what type each
has, so that a typo'd key or a wrong type is refused before anything runs.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from . import variants
from .data import DataConfig, check_data, prepared_meta
from .errors import ModexpError
from .plugins import export as plugins_export
from .ranges import RANGES, check_id_suffix, first_violation

# The presets ship inside the package (a wheel has them too); the repository's top-level conf/ links here.
CONF_DIR = Path(__file__).resolve().parent / "conf"

# Folder and job names: no paths, no dotfiles, nothing that starts like runs/_data (the corpus cache).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("auto", "online", "offline", "disabled")
SCHEDULES = ("auto", "cosine", "wsd")
COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine")
REUSE = ("none", "branches")


# The settings of modexp's own kinds, in one flat `model:` node (model.capacity, model.experts); each kind's
# config class takes the ones it has (modexp.variants).
ModelSettings = variants.settings_class()


@dataclass
class LrLawConfig:
    """lr*(N) = coefficient * N^exponent, N the run's total parameters."""

    coefficient: float = MISSING
    exponent: float = MISSING
    # The sizes (total parameters) the law was fitted on: runs outside them are flagged in the plan.
    params_min: float | None = None
    params_max: float | None = None


@dataclass
class TrainConfig:
    batch_size: int = MISSING
    lr: float = MISSING  # peak learning rate (when neither sweep.lr_grid nor train.lr_from sets it)
    lr_from: str | None = (
        None  # an earlier LR-grid study folder: each run's lr from its fitted lr*(N) per variant
    )
    lr_law: dict[str, LrLawConfig] = field(default_factory=dict)  # by variant kind (baseline, mod, random)
    min_lr_ratio: float = MISSING  # the decay ends at this fraction of the peak
    schedule: str = MISSING  # cosine | wsd | auto (wsd when sweep.reuse=branches)
    cooldown_fraction: float = MISSING  # wsd: the share of the run's steps its decay takes
    cooldown_shape: str = MISSING  # wsd: 1-sqrt | linear | cosine
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
    keep: str = MISSING  # what a done run keeps of its checkpoints: last | final-weights | all (retention.py)
    compile: Any = MISSING  # auto (on CUDA) | true | false
    precision: str = MISSING  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    # How a step is computed, never what it computes: none of these changes a run's result or its id.
    micro_batch_size: Any = None  # sequences per forward/backward per process; null: all; auto: what fits
    activation_checkpointing: bool = MISSING  # recompute block activations in the backward pass
    parallel: str = MISSING  # ddp | fsdp, when launcher.gpus_per_run > 1 gives a run several processes


KEEP = ("last", "final-weights", "all")  # train.keep (modexp/retention.py)


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
    max_epochs: float = MISSING  # refuse a plan whose largest run sees its training split more often
    lr_grid: list[float] = field(
        default_factory=list
    )  # every planned point at each of these LRs (a study axis)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    reuse: str = MISSING  # none | branches (one stem per shape, a WSD cooldown branch per budget)
    seeds: int = MISSING  # seeds per planned point
    seed_sizes: int = (
        MISSING  # with seeds > 1: the sizes nearest each expected optimum that get them (0: all)
    )


@dataclass
class WandbConfig:
    mode: str = MISSING  # auto: online when an API key is configured, else offline
    project: str = MISSING
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    id_suffix: str = ""  # appended to every W&B run id: a fresh W&B run for the same run folder


@dataclass
class TrackerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class LauncherConfig:
    name: str = MISSING  # one of modexp.launch.names(): local | slurm | a plug-in's
    workers: int = MISSING  # CPU runs at a time on the local pool (0: one per core)
    partition: str | None = None
    gpus_per_run: int = MISSING  # processes (devices) per run: > 1 trains one run data-parallel
    gpus_per_node: int = MISSING  # SLURM: a run with more GPUs than this spans several nodes
    gpu_mem_gb: float | None = None  # memory per device for micro_batch_size=auto; null: ask the device
    cpus_per_run: int = MISSING
    mem_gb: float = MISSING
    time_min: int = MISSING
    array_parallelism: int = MISSING
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # further sbatch options, passed to submitit
    startup_s: float | None = None  # per-run start-up for the plan's estimate where none was measured here
    worker_startup_s: float | None = None  # a worker's start-up (imports), once per slot, likewise


@dataclass
class Config:
    runs_dir: str = MISSING
    seed: int = MISSING
    device: str = MISSING
    locking: str = MISSING  # flock: one process per run, across sweeps and machines | none: no run locks
    # Modules imported before the config is checked: each may register variant kinds (modexp.variants).
    plugins: list[str] = MISSING
    budget: float | None = None  # FLOPs of one `modexp train` run
    variant: str | None = None  # name recorded for a single `modexp train` run (None: derived from routing)
    model: ModelSettings = field(default_factory=ModelSettings)  # every kind's settings (modexp.variants)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)


def _schema_node() -> DictConfig:
    """The schema Hydra composes onto. Its `model` node takes keys it does not know, so that a plug-in's settings
    (its module is loaded after composing, from the config's `plugins`) compose in; to_typed then refuses, in one
    line, any key that no registered kind has."""
    node = OmegaConf.structured(Config)
    OmegaConf.set_struct(node.model, False)
    return node


ConfigStore.instance().store(name="schema", node=_schema_node())


def typed_schema() -> type[Config]:
    """Config with every registered kind's settings under `model` (a plug-in's once it is loaded)."""
    settings = variants.settings_class()
    if settings is ModelSettings:
        return Config
    if settings not in _TYPED:
        _TYPED[settings] = make_dataclass(
            "Config", [("model", settings, field(default_factory=settings))], bases=(Config,)
        )
    return _TYPED[settings]


_TYPED: dict[type, type[Config]] = {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_TYPE_WORDS = {
    "Float": "a number",
    "Integer": "a whole number",
    "Boolean": "true or false",
    "String": "a string",
}


def _known_keys(full_key: str) -> list[str]:
    """The keys the schema allows beside full_key (model.foo -> model.d_model, model.n_layers, ...)."""
    parent, _, _ = full_key.rpartition(".")
    node: Any = OmegaConf.structured(typed_schema())
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{k}" if parent else str(k) for k in node.keys()]


def _not_a_setting(full_key: str) -> str:
    parent, _, leaf = full_key.rpartition(".")
    known = {k.rpartition(".")[2]: k for k in _known_keys(full_key)}
    close = [known[k] for k in difflib.get_close_matches(leaf, list(known), n=3, cutoff=0.75)]
    hint = f": did you mean {' or '.join(close)}?" if close else ""
    where = "conf/ and modexp/config.py"
    if parent == "model":  # a variant kind's setting: a plug-in's is known once its module is in `plugins`
        where = "conf/model/ and each variant kind's config; a plug-in's once it is in plugins"
    return f"{full_key} is not a modexp setting{hint} (the keys are in {where})"


def _refuse_unknown_keys(cfg: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    """Merging onto a structured node lets a `+model.foo=1` through silently; a typo must not pass unseen."""
    for key in cfg.keys():
        full_key = f"{prefix}{key}"
        if key not in schema.keys():  # (`in` alone is False for a key whose value is MISSING)
            raise ModexpError(_not_a_setting(full_key))
        sub_schema = schema._get_node(key)
        # Only dataclass nodes have a fixed key set; free dicts such as launcher.extra take anything.
        if isinstance(sub_schema, DictConfig) and OmegaConf.get_type(sub_schema) not in (dict, None):
            sub = cfg._get_node(key)
            if isinstance(sub, DictConfig):
                _refuse_unknown_keys(sub, sub_schema, f"{full_key}.")


def _preset_file(message: str) -> str | None:
    """The file behind Hydra's "In 'sweep/bad': ..." (the user's config dir first, as Hydra searches)."""
    match = re.match(r"In '([^']+)'", message)
    if not match:
        return None
    dirs = [os.environ.get("MODEXP_CONFIG_DIR"), str(CONF_DIR)]
    found = [Path(d) / f"{match.group(1)}.yaml" for d in dirs if d]
    return str(next((p for p in found if p.is_file()), f"{match.group(1)}.yaml"))


def _deletion(message: str, full_key: str | None) -> str | None:
    """`~key`: a schema setting cannot be deleted (Hydra says "Error merging override" or, for a null one,
    that it does not exist); an unknown key is a typo."""
    match = re.search(r"'~?([\w.]+)' does not exist", message)
    key = full_key if "merging override ~" in message else (match.group(1) if match else None)
    if key is None:
        return None
    if key not in _known_keys(key):
        return _not_a_setting(key)
    return (
        f"~{key}: a modexp setting cannot be deleted; set it instead ({key}=VALUE, or {key}=null if allowed)"
    )


def _explain(exc: BaseException, overrides: list[str]) -> str:
    """Hydra's and OmegaConf's errors, rewritten as one line that names the bad value and what is allowed."""
    message = _one_line(exc)
    preset = (
        None
        if isinstance(exc, MissingConfigException) or "Could not find" in message
        else _preset_file(message)
    )
    if preset:  # an error inside a preset file: the file, then what is wrong in it
        cause = exc.__cause__ or exc.__context__
        return f"in {preset}: {_explain(cause, overrides) if cause is not None else message}"
    cause = exc.__cause__ or (exc if getattr(exc, "full_key", None) else None)
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    deletion = _deletion(message, full_key)
    if deletion:
        return deletion
    if "missing EQUAL" in str(exc) or ("Error parsing override" in message and "=" not in message):
        bad = message.split("'")[1] if "'" in message else message
        return f"{bad!r} is not an override: key=value expected, e.g. model.capacity=0.125"
    if isinstance(exc, MissingConfigException) or "Could not find" in message:
        lines = str(exc).splitlines()
        group = message.split("'")[3].split("/")[0] if message.count("'") >= 4 else ""
        options = [ln.strip() for ln in lines if ln.startswith("\t") and "provider=" not in ln]
        given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
        if group and options:
            return f"{group}={given} is not a preset: choose one of {', '.join(options)} (conf/{group}/)"
        return message + " (see the options in conf/)"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        return _not_a_setting(full_key)
    if isinstance(cause, ValidationError) and full_key:
        text = str(cause)
        key = full_key.split("[")[0]  # sweep.budgets[0] -> sweep.budgets: name the key the user typed
        given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), None)
        if given is None:
            given = text.split("'")[1] if "'" in text else "?"
        wanted = next((w for t, w in _TYPE_WORDS.items() if f"converted to {t}" in text), None)
        if wanted is None and "valid bool" in text:
            wanted = _TYPE_WORDS["Boolean"]
        if wanted:
            plural = " (each item)" if "[" in full_key else ""
            return f"{key}={given} is not allowed: {key} expects {wanted}{plural}"
        return f"{key}={given} is not allowed: {_one_line(cause)}"
    return message


OPEN_DICTS = ("launcher.extra", "train.lr_law")  # keys the schema cannot list: sbatch options, variant kinds


def _hydra_form(override: str) -> str:
    """Force-add (Hydra's `++`) into dicts whose keys the schema cannot know, which struct mode would refuse."""
    key = override.split("=", 1)[0]
    if any(key == d or key.startswith(d + ".") for d in OPEN_DICTS):
        return "++" + override
    return override


def _cleared(overrides: list[str]) -> list[str]:
    """The open dicts an override sets to {} (e.g. 'train.lr_law={}' to drop a preset's LR law)."""
    pairs = [o.lstrip("+~").split("=", 1) for o in overrides if "=" in o]
    return [key for key, value in pairs if key in OPEN_DICTS and value.replace(" ", "") == "{}"]


def compose_config(overrides: list[str], export: bool = True, with_hydra: bool = False) -> DictConfig:
    """Compose conf/ with command-line overrides into a validated DictConfig (no sweep expansion).

    A user's own presets (MODEXP_CONFIG_DIR, or --config-dir) are searched after modexp's conf/.
    with_hydra: keep Hydra's own node (what `--cfg all` prints); it is never validated or used.
    """
    extra = []
    user_dir = os.environ.get("MODEXP_CONFIG_DIR")
    if user_dir:
        if not Path(user_dir).is_dir():
            raise ModexpError(f"config dir {user_dir} is not a folder: give one laid out like modexp's conf/")
        extra.append(f"hydra.searchpath=[file://{Path(user_dir).resolve()}]")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[*extra, *(_hydra_form(o) for o in overrides)],
                return_hydra_config=with_hydra,
            )
        if with_hydra:
            return cfg
        for key in _cleared(overrides):  # Hydra merges `key={}` into a preset's dict; the user means "empty"
            OmegaConf.update(cfg, key, {}, merge=False, force_add=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ModexpError(_explain(exc, overrides)) from None
    _take_prepared_corpus(cfg, overrides)
    listed = load_plugins(cfg)  # a plug-in's routing must be known before ModelConfig checks model.routing
    typed = to_typed(cfg)  # validate now, so bad values are refused before any planning or training
    if export:  # every process this one starts (runs, SLURM jobs) obeys it
        os.environ["MODEXP_LOCKING"] = typed.locking
        plugins_export(listed)
    return cfg


def _take_prepared_corpus(cfg: DictConfig, overrides: list[str]) -> None:
    """data=tokens on a folder `modexp prepare` wrote: its meta.json sets the vocabulary and the id dtype.

    A preset's data.vocab_size (a planning default for raw shards) gives way; one given on the command line
    that disagrees is refused, since the model would not match the tokenizer.
    """
    path = OmegaConf.select(cfg, "data.path", default=None, throw_on_missing=False)
    if OmegaConf.select(cfg, "data.name") != "tokens" or not path:
        return
    meta = prepared_meta(path)
    if meta is None:
        return
    given = [o for o in overrides if o.lstrip("+~").partition("=")[0] == "data.vocab_size"]
    if given and cfg.data.vocab_size != meta["vocab_size"]:
        raise ModexpError(
            f"data.vocab_size={cfg.data.vocab_size} disagrees with {path}/meta.json, whose tokenizer "
            f"({meta['tokenizer']['spec']}) has {meta['vocab_size']} tokens: drop the override"
        )
    cfg.data.vocab_size, cfg.data.token_dtype = int(meta["vocab_size"]), str(meta["dtype"])


def with_new_keys(cfg: DictConfig) -> DictConfig:
    """A run folder's config.yaml written before some setting existed: that setting takes today's default.

    Only keys the file lacks are added (never merged into a dict the file has), so nothing the run was
    trained with changes; the settings added since then are how a step is computed, not what it computes.
    """
    defaults = compose_config([], export=False)
    _add_missing(cfg, defaults)
    return cfg


def _add_missing(cfg: DictConfig, defaults: DictConfig) -> None:
    for key in defaults.keys():
        if key not in cfg:
            with open_dict(cfg):
                cfg[key] = defaults[key]
        elif isinstance(cfg[key], DictConfig) and isinstance(defaults[key], DictConfig):
            if not any(str(key) == d.rpartition(".")[2] for d in OPEN_DICTS):
                _add_missing(cfg[key], defaults[key])


def load_plugins(cfg: DictConfig) -> list[str]:
    """Import the `plugins` of the user's own composed config (module names), so the variant kinds they
    register are known before the config is checked, and name them to the processes this one starts (each
    run's trainer, SLURM jobs) through MODEXP_PLUGINS. Never called on a config read from a run folder."""
    from . import plugins

    names = OmegaConf.select(cfg, "plugins", default=None, throw_on_missing=False) or []
    if not OmegaConf.is_list(names) and not isinstance(names, list):
        raise ModexpError(f"plugins={names} is not allowed: give a list of module names, e.g. [my_variant]")
    listed = plugins.parse([str(n) for n in names], "plugins")
    plugins.load(plugins.named(listed, "plugins"), "plugins")
    return listed


def to_typed(cfg: DictConfig) -> Config:
    """DictConfig -> Config dataclasses, with the model's and ours own checks; errors as one line.

    Imports nothing: a plug-in kind's routing is known once the user's plug-ins are loaded (compose_config
    loads those of the user's config; a trainer, those its sweep named)."""
    try:
        # Merging onto the schema also types a config read back from a run folder's config.yaml.
        schema_class = typed_schema()
        schema = OmegaConf.structured(schema_class)
        _refuse_unknown_keys(cfg, schema)
        # A plug-in's schema types `model` as a class the composed node's is not a subclass of: merge it as data.
        source = cfg if schema_class is Config else OmegaConf.to_container(cfg, resolve=False)
        typed = OmegaConf.to_object(OmegaConf.merge(schema, source))
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "a required key"
        raise ModexpError(f"{key} is not set: give it on the command line, e.g. {key}=...") from None
    except OmegaConfBaseException as exc:
        raise ModexpError(_one_line(exc)) from None
    except ValueError as exc:  # the model settings' check names the field
        raise ModexpError(f"model.{_one_line(exc)}") from None
    assert isinstance(typed, Config)
    check(typed)
    if typed.train.schedule == "auto":  # what a run trains with is always named, in its config and identity
        typed.train.schedule = "wsd" if typed.sweep.reuse == "branches" else "cosine"
    return typed


def _check_schedule(cfg: Config) -> None:
    """The LR schedule and the study's reuse of runs: known names, and branches only where they are exact."""
    train, sweep = cfg.train, cfg.sweep
    for key, value, allowed in (
        ("train.schedule", train.schedule, SCHEDULES),
        ("train.cooldown_shape", train.cooldown_shape, COOLDOWN_SHAPES),
        ("sweep.reuse", sweep.reuse, REUSE),
    ):
        if value not in allowed:
            raise ModexpError(f"{key}={value} is not allowed: choose one of {', '.join(allowed)}")
    if not (0 < train.cooldown_fraction < 1):
        raise ModexpError(
            f"train.cooldown_fraction={train.cooldown_fraction} is not allowed: give the share of a run's steps "
            "its decay takes, between 0 and 1 (exclusive), e.g. 0.2"
        )
    if sweep.reuse == "branches" and train.schedule == "cosine":
        # A cosine run's LR at step s depends on its length: a shared stem would serve no budget exactly.
        raise ModexpError(
            "sweep.reuse=branches needs train.schedule=wsd (or auto): a cosine schedule depends on the run's "
            "length, so no stem can serve several budgets"
        )
    if sweep.seeds < 1 or sweep.seed_sizes < 0:
        raise ModexpError(
            f"sweep.seeds={sweep.seeds}, sweep.seed_sizes={sweep.seed_sizes} are not allowed: seeds >= 1 "
            "(seeds per point), seed_sizes >= 0 (0: every size gets them)"
        )


def check(cfg: Config) -> None:
    """Checks across keys that the dataclass types cannot express. Every number's range is in one table
    (modexp.ranges.RANGES; a model kind's in its config class); the checks here say more for some keys. The
    launcher's own checks are its `validate` (modexp.launch), run where a launcher is about to be used."""
    _check_schedule(cfg)
    _check_choices(cfg)
    _check_names(cfg)
    _check_study(cfg)
    _check_lr(cfg)
    check_data(cfg.data, cfg.model.seq_len)
    if cfg.model.vocab_size != cfg.data.vocab_size:
        raise ModexpError(
            f"model.vocab_size={cfg.model.vocab_size} differs from data.vocab_size={cfg.data.vocab_size}: "
            "set them equal"
        )
    _check_step_settings(cfg)
    problem = first_violation(cfg, RANGES)  # the model's were checked when its settings were built
    if problem:
        raise ModexpError(problem)


def _check_choices(cfg: Config) -> None:
    """Settings that name one of a few choices, and the model's kind."""
    for key, value, allowed in (
        ("locking", cfg.locking, ("flock", "none")),
        ("device", cfg.device, DEVICES),
        ("tracker.wandb.mode", cfg.tracker.wandb.mode, WANDB_MODES),
        ("train.precision", cfg.train.precision, ("auto", "fp32", "bf16")),
    ):
        if value not in allowed:
            raise ModexpError(f"{key}={value} is not allowed: choose one of {', '.join(allowed)}")
    if cfg.train.keep not in KEEP:
        raise ModexpError(f"train.keep={cfg.train.keep} is not allowed: choose {', '.join(KEEP)}")
    variants.of_model(cfg.model)  # model.routing and model.moe select a kind (a single run's)


def _check_names(cfg: Config) -> None:
    """Values that end up in folder names."""
    if Path(cfg.runs_dir).exists() and not Path(cfg.runs_dir).is_dir():
        raise ModexpError(f"runs_dir={cfg.runs_dir} is a file: give a folder (it is created if missing)")
    for key, name in (("sweep.name", cfg.sweep.name), ("variant", cfg.variant)):
        if name is not None and not SAFE_NAME.fullmatch(str(name)):
            raise ModexpError(
                f"{key}={name!r} is not allowed: it names a folder, so use letters, digits and . _ - "
                "(starting with a letter or digit), e.g. my_study-2"
            )
    check_id_suffix(cfg.tracker.wandb.id_suffix)  # it reaches folder names


def _check_study(cfg: Config) -> None:
    """The budgets, variants and limits of a study, and a single run's budget."""
    if cfg.budget is not None and not (cfg.budget > 0 and math.isfinite(cfg.budget)):
        raise ModexpError(f"budget={cfg.budget} is not allowed: give a positive number of FLOPs, e.g. 1e12")
    if not cfg.sweep.budgets:
        raise ModexpError(
            "sweep.budgets is empty: give at least one budget in FLOPs, e.g. sweep.budgets=[1e11,3e11]"
        )
    for budget in cfg.sweep.budgets:
        if not (budget > 0 and math.isfinite(budget)):
            raise ModexpError(
                f"sweep.budgets contains {budget}: every budget must be a positive number of FLOPs, e.g. 1e12"
            )
    if not cfg.sweep.variants:
        raise ModexpError(
            f"sweep.variants is empty: give some of {', '.join(variants.kinds())}, e.g. [baseline,mod]"
        )
    for variant in cfg.sweep.variants:
        if variant not in variants.kinds():
            raise ModexpError(
                f"sweep.variants contains {variant!r}: choose from {', '.join(variants.kinds())}"
            )
    if cfg.sweep.min_tokens_per_param >= cfg.sweep.max_tokens_per_param:
        raise ModexpError(
            f"sweep.min_tokens_per_param={cfg.sweep.min_tokens_per_param:g} is not below "
            f"sweep.max_tokens_per_param={cfg.sweep.max_tokens_per_param:g}: no model could be planned"
        )


def _check_lr(cfg: Config) -> None:
    """Precedence: sweep.lr_grid, then train.lr_from, then train.lr_law (a preset's measured law), then train.lr."""
    for lr in cfg.sweep.lr_grid:
        if not lr > 0:
            raise ModexpError(
                f"sweep.lr_grid contains {lr}: every learning rate must be positive, e.g. [1e-3,3e-3]"
            )
    if cfg.sweep.lr_grid and cfg.train.lr_from:
        raise ModexpError(
            "sweep.lr_grid and train.lr_from are both set: a run takes its LR from the grid or from the "
            "study's law, not both"
        )
    for kind, law in cfg.train.lr_law.items():
        if kind not in variants.kinds() or not law.coefficient > 0:
            raise ModexpError(
                f"train.lr_law.{kind} is not allowed: keys are {', '.join(variants.kinds())}, each with a positive "
                "coefficient and an exponent, e.g. train.lr_law={baseline:{coefficient:0.5,exponent:-0.3}}"
            )
        sizes = (law.params_min, law.params_max)
        if any(v is not None for v in sizes) and not (
            all(v is not None for v in sizes) and 0 < law.params_min <= law.params_max < math.inf
        ):
            raise ModexpError(
                f"train.lr_law.{kind}: params_min={law.params_min}, params_max={law.params_max} are not allowed: "
                "give both, positive and finite, params_min <= params_max (the sizes the law was fitted on)"
            )


def _check_step_settings(cfg: Config) -> None:
    """Micro-batches, compile and parallelism (the launcher's numbers are in RANGES, its words its own)."""
    train = cfg.train
    mbs = train.micro_batch_size
    if mbs is not None and mbs != "auto" and (isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1):
        raise ModexpError(
            f"train.micro_batch_size={mbs} is not allowed: give a positive whole number of sequences, "
            "auto (the largest that fits the device) or null (the whole batch)"
        )
    if train.compile not in (True, False, "auto"):
        raise ModexpError(f"train.compile={train.compile} is not allowed: choose auto, true or false")
    if train.parallel not in ("ddp", "fsdp"):
        raise ModexpError(f"train.parallel={train.parallel} is not allowed: choose ddp or fsdp")


def processes_per_run(cfg: Config) -> int:
    """How many processes train one run: launcher.gpus_per_run of them (devices, or CPU processes on gloo)."""
    return max(1, cfg.launcher.gpus_per_run)


def expand_overrides(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep syntax (`model.capacity=0.125,0.5`, `range(...)`) -> one override list per combination."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ModexpError(_explain(exc, overrides)) from None
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]
