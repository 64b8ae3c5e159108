"""docs/configuration.md, generated: every setting of the typed schemas with its default, what it may be,
when it counts and what it does; then every preset. `python -m modexp.configdoc docs/configuration.md` (or
`make docs`) writes it; tests/test_docs.py checks that the committed file is what this writes.

Sources, so the page cannot drift from the code: the keys and types from the dataclasses (modexp/config.py,
modexp/model/config.py, modexp/data/config.py); defaults from conf/ as composed with no overrides; what a
value may be from the range tables and choice lists the checks use; when a setting counts from the rules that
refuse it otherwise (modexp/unused.py, the data kinds' READS, the launchers' `reads`, the variant records);
what it does from the comment beside the key in conf/, else beside the field in its dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from . import config, launch, variants
from .config import CONF_DIR
from .data import config as data_config
from .model import config as model_config
from .units import sci
from .unused import ONLY_WITH, TRAIN_READS_SWEEP

SECTIONS = (  # (title, key prefix, schema, what the section is)
    ("Top level", "", config.Config, "where runs go, the device, the seed; `budget` and `variant` are `modexp train`'s"),
    ("model", "model.", config.ModelSettings, "the transformer and its routing (`modexp train`'s model; a sweep "
     "takes shapes from `sweep.ladder` and routing from `sweep.variants`)"),
    ("data", "data.", data_config.DataConfig, "the corpus: `data=stdlib` (default), `data=text`, `data=tokens`"),
    ("train", "train.", config.TrainConfig, "one run's optimisation, schedule, evaluation and checkpoints"),
    ("sweep", "sweep.", config.SweepConfig, "the study: budgets, variants, the size ladder, limits, seeds; each "
     "preset (`sweep=NAME`) sets these"),
    ("sweep.ladder", "sweep.ladder.", config.LadderConfig, "the family of shapes a sweep picks its sizes from"),
    ("tracker.wandb", "tracker.wandb.", config.WandbConfig, "the Weights & Biases mirror (local files stay the record)"),
    ("launcher", "launcher.", config.LauncherConfig, "how runs are started: `launcher=local` (default) or "
     "`launcher=slurm`"),
)  # fmt: skip
# Keys whose allowed values are a list of names, from the lists the checks use.
CHOICES: dict[str, Any] = {
    "device": config.DEVICES,
    "locking": ("flock", "none"),
    "model.routing": tuple(dict.fromkeys(record.routing for record in variants.records())),
    "model.router_weight": variants.mod.ROUTER_WEIGHTS,
    "model.causal_router": variants.mod.CAUSAL_ROUTERS,
    "model.attention": model_config.ATTENTIONS,
    "model.mlp": model_config.MLPS,
    "data.name": data_config.NAMES,
    "data.token_dtype": tuple(data_config.TOKEN_DTYPES),
    "train.schedule": config.SCHEDULES,
    "train.cooldown_shape": config.COOLDOWN_SHAPES,
    "train.keep": config.KEEP,
    "train.precision": ("auto", "fp32", "bf16"),
    "train.compile": ("auto", "true", "false"),
    "train.parallel": ("ddp", "fsdp"),
    "train.micro_batch_size": ("null", "auto", "N"),
    "sweep.reuse": config.REUSE,
    "sweep.variants": variants.kinds(),
    "tracker.wandb.mode": config.WANDB_MODES,
    "launcher.name": launch.names(),
}
_FLOW = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)(?:\s+#\s?(?P<comment>.*))?$")


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """{dotted key: the comment beside it (and the comment lines under it, aligned deeper)} of a conf file."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: str | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if (
                last is not None
                and line.index("#") > len(line) - len(line.lstrip()) - 1
                and line.startswith(" ")
            ):
                out[last] = f"{out.get(last, '')} {stripped.lstrip('#').strip()}".strip()
            else:
                last = None
            continue
        match = _FLOW.match(line)
        if not match or stripped.startswith("- "):
            last = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([prefix.rstrip(".")] * bool(prefix) + [k for _, k in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        last = key if match["comment"] else None
        if match["comment"]:
            out.setdefault(key, match["comment"].strip())
    return out


def source_comments(schema: type, prefix: str) -> dict[str, str]:
    """{key: the comment beside its field} in the dataclass's source (the model settings': in each kind's config
    class and its bases, modexp.variants)."""
    out: dict[str, str] = {}
    for source in _source_classes(schema):
        for line in inspect.getsource(source).splitlines():
            match = re.match(r"^\s+(\w+): [^#]*#\s?(.*)$", line)
            if match:
                out.setdefault(f"{prefix}{match[1]}", match[2].strip())
    return out


def _source_classes(schema: type) -> list[type]:
    if schema is not config.ModelSettings:
        return [schema]
    classes = [k for r in variants.records() for k in r.config.__mro__ if dataclasses.is_dataclass(k)]
    return list(dict.fromkeys(classes))


def all_comments() -> dict[str, str]:
    """The comment of each key: conf/config.yaml and each group's default file first, then the schemas' field
    comments, then the demo preset's (the default study) and the other files of each group."""
    groups = (("model", "model."), ("data", "data."), ("train", "train."), ("tracker", "tracker."),
              ("launcher", "launcher."), ("ladder", "sweep.ladder."))  # fmt: skip
    first = [(CONF_DIR / "config.yaml", "")]
    later = [(CONF_DIR / "sweep" / "demo.yaml", "")]
    for group, prefix in groups:
        files = sorted(
            (CONF_DIR / group).glob("*.yaml"),
            key=lambda f: (f.stem not in ("default", "stdlib", "local"), f.stem),
        )
        first.append((files[0], prefix))
        later += [(f, prefix) for f in files[1:]]
    out: dict[str, str] = {}
    for path, prefix in first:
        for key, text in yaml_comments(path, prefix).items():
            out.setdefault(key, text)
    for _, prefix, schema, _ in SECTIONS:
        for key, text in source_comments(schema, prefix).items():
            out.setdefault(key, text)
    for path, prefix in later:
        for key, text in yaml_comments(path, prefix).items():
            out.setdefault(key, text)
    return out


_TYPES = {
    "str": "text",
    "bool": "true or false",
    "list[str]": "list of text",
    "str | None": "text or null",
    "dict[str, LrLawConfig]": "per variant kind: {coefficient, exponent, params_min, params_max}",
    "dict[str, Any]": "sbatch options: {name: value}",
}


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 or value == int(value) and abs(value) < 1e7 else sci(value, 3)


# Each model setting's range, from the config class of every kind that has it (modexp.variants).
_MODEL_RANGES = {k: r for record in variants.records() for k, r in record.config.ranges().items()}


def allowed(key: str, declared: str) -> str:
    """What a value may be: a list of names, a range, or the type."""
    if key in CHOICES:
        return " | ".join(str(c) for c in CHOICES[key])
    table = _MODEL_RANGES if key.startswith("model.") else config.RANGES
    rule = table.get(key.removeprefix("model.") if key.startswith("model.") else key)
    if rule is not None:
        kind = "whole number" if rule.whole else "number"
        span = f"{'(' if rule.low_open else '['}{_num(rule.low)}, {_num(rule.high)}]"
        return f"{kind} in {span}" + (" or null" if rule.nullable else "")
    return _TYPES.get(declared, declared)


def counts_when(key: str) -> str:
    """When a setting counts (it is refused as doing nothing otherwise); '' when always."""
    group, _, leaf = key.partition(".")
    if key in ONLY_WITH:
        return ONLY_WITH[key]
    if group == "data":
        kinds = [k for k, keys in data_config.READS.items() if leaf in keys]
        return "" if len(kinds) == len(data_config.READS) else " or ".join(f"data={k}" for k in kinds)
    if group == "launcher":
        names = [n for n in ("local", "slurm") if leaf in getattr(launch.get(n), "reads", ())]
        return "" if len(names) == 2 else " or ".join(f"launcher={n}" for n in names)
    if group == "model":
        takers = [k for k in variants.kinds() if leaf not in variants.get(k).inert]
        return "" if len(takers) == len(variants.kinds()) else "variants " + ", ".join(takers)
    if group == "sweep" and leaf.split(".")[0] not in TRAIN_READS_SWEEP:
        return "modexp sweep and plan"
    return ""


def _lookup(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _num(value)
    if value == "":
        return '""'
    if isinstance(value, list):
        return (
            "[" + ", ".join(_value(v) for v in value) + "]" if len(value) <= 8 else f"[{len(value)} values]"
        )
    if isinstance(value, dict):
        return "{" + ", ".join(value) + "}" if value else "{}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(title: str, prefix: str, schema: type, about: str, defaults: dict, comments: dict) -> list[str]:
    lines = [f"## {title}", "", f"{about[0].upper()}{about[1:]}.", ""]
    lines += [
        "| setting | default | allowed | counts with | what it does |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            continue  # a section of its own
        default = _value(_lookup(defaults, key))
        kind = str(f.type).replace("Any", "any")
        lines.append(
            f"| `{key}` | `{_cell(default)}` | {_cell(allowed(key, kind))} | {_cell(counts_when(key))} "
            f"| {_cell(comments.get(key, ''))} |"
        )
    return [*lines, ""]


def presets() -> list[str]:
    """Every preset file of conf/, by group: its name and the comment it opens with."""
    lines = ["## Presets", "", "Choose one per group with `GROUP=NAME` (`sweep=cpu`, `data=text`, `launcher=slurm`); "
             "your own go in a folder laid out the same way (`--config-dir DIR`).", ""]  # fmt: skip
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        lines += [f"### {group.name}", ""]
        for path in sorted(group.glob("*.yaml")):
            head = []
            for line in path.read_text().splitlines():
                if not line.startswith("#"):
                    break
                if not line.startswith("# @package"):
                    head.append(line.lstrip("#").strip())
            lines.append(f"- `{group.name}={path.stem}`: {' '.join(head) or '(no description)'}")
        lines.append("")
    return lines


def render() -> str:
    """The whole page."""
    defaults = OmegaConf.to_container(config.compose_config([], export=False), resolve=False)
    comments = all_comments()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m modexp.configdoc docs/configuration.md` (make docs) from the typed schemas "
        "and conf/: do not edit by hand. -->",
        "",
        "Every setting, with its default (the `demo` preset's where a preset sets it), what it may be, when it "
        "counts and what it does. Give any on the command line as `key=value` (`model.capacity=0.25`); a comma "
        "list sweeps (`model.capacity=0.125,0.5`). A setting that does nothing for the choices beside it "
        '("counts with") is refused in one line rather than ignored: `data.path` needs `data=text` or '
        "`data=tokens`, `launcher.partition` needs `launcher=slurm`. `--cfg job` prints the composed config.",
        "",
    ]
    for title, prefix, schema, about in SECTIONS:
        lines += section(title, prefix, schema, about, defaults, comments)
    lines += presets()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
