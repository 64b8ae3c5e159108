"""`modexp export RUN_DIR --out DIR`: a trained run's model in a form other tools read.

DIR/model.safetensors   the weights (safetensors; tied tensors stored once)
DIR/config.json         the architecture (`model`: its kind's config, modexp.variants) and where it came from
DIR/README.md           how to load it

Loading needs modexp's model code and safetensors only, not its training code:

    from modexp.export import load_export
    model = load_export("DIR")                  # a torch.nn.Module in eval mode
    out = model(x, y, routing_mode="causal")    # x, y: (batch, seq) token ids; out.loss, out.logits

MoD and MoE models route with top-k over the whole sequence in training; for autoregressive evaluation (e.g.
lm-evaluation-harness, generation) use routing_mode="causal", as modexp's causal validation loss does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import ModexpError
from .rundir import fsync_dir

FORMAT = "modexp-export/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"

README = """# {run_id}

Exported by `modexp export` from {run_dir} (step {step}).

```python
from modexp.export import load_export
model = load_export("{out}")              # torch.nn.Module, eval mode
out = model(x, y, routing_mode="{mode}")  # x, y: (batch, seq) token ids -> out.loss, out.logits
```

config.json: `model` holds the architecture, `val_loss` / `val_loss_causal` the run's final validation
losses, `data` the run's data settings (vocabulary, tokenizer). Weights: model.safetensors.
"""


def export_run(run_dir: Path | str, out: Path | str, force: bool = False) -> Path:
    """Write the run's final weights, config and README into `out`, a new (or empty) folder: written into a
    temporary sibling and renamed into place, so `out` holds the whole export or is left as it was. force:
    `out` may hold other files; only the export's own three are replaced (links among them replaced, never
    followed). Returns `out`."""
    from safetensors.torch import save_model

    from .sample import load_model

    run_dir, out = Path(run_dir), Path(out)
    replace = _check_out(out, run_dir, force)  # before the model is loaded: a bad --out costs nothing
    model = load_model(run_dir, "cpu")  # checks the folder and the checkpoint, one-line errors
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    summary = _read(run_dir / "summary.json")
    config = {
        "format": FORMAT,
        "run_id": ckpt.get("run_id", run_dir.name),
        "step": ckpt.get("step"),
        "model": ckpt["model_config"],
        "val_loss": summary.get("val_loss"),
        "val_loss_causal": summary.get("val_loss_causal"),
        "data": _data_settings(run_dir),
    }
    mode = "causal" if config["val_loss_causal"] is not None else "topk"
    readme = README.format(run_id=config["run_id"], run_dir=run_dir, step=config["step"], out=out, mode=mode)

    def write(folder: Path) -> None:
        save_model(model, str(folder / WEIGHTS), metadata={"format": FORMAT})
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (folder / "README.md").write_text(readme)

    _write_folder(out, write, replace)
    return out


FILES = (WEIGHTS, CONFIG, "README.md")


def _check_out(out: Path, run_dir: Path, force: bool) -> bool:
    """Refuse an --out that is not a new or empty folder (unless force), a link, the filesystem root, or a
    folder holding the run; True when `out` exists with other files and force lets the export's replace theirs."""
    where = Path(os.path.abspath(out.expanduser()))
    if where == Path(where.anchor):
        raise ModexpError(
            f"--out {out} is the filesystem root: give a new folder, e.g. --out exports/<run_id>"
        )
    if where.is_symlink():
        raise ModexpError(
            f"--out {out} is a symbolic link: give a new folder (an export never writes through links)"
        )
    for parent in where.parents:
        if parent.exists() and not parent.is_dir():
            raise ModexpError(f"--out {out}: {parent} is a file, not a folder: give a folder path")
    if not where.exists():
        return False
    if not where.is_dir():
        raise ModexpError(f"--out {out} is a file: give a new folder (it is created)")
    held = sorted(p.name for p in where.iterdir())
    if not held:
        return False
    if not force:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ModexpError(
            f"--out {out} is not empty (it holds {shown}): give a new or empty folder, or add --force to "
            f"replace only {', '.join(FILES)} there"
        )
    run = Path(os.path.realpath(run_dir))
    if Path(os.path.realpath(where)) in [run, *run.parents]:
        raise ModexpError(f"--out {out} holds the run folder {run_dir}: give a folder outside it")
    for name in FILES:
        if (where / name).is_dir() and not (where / name).is_symlink():
            raise ModexpError(f"--out {out} has a folder named {name}: move it, or give another folder")
    return True


def _write_folder(out: Path, write: Callable[[Path], None], replace: bool) -> None:
    """write() into a temporary sibling of `out`, then rename it to `out` (or, replace: move its files into
    `out`, each rename replacing a file or link, never writing through it). Nothing is left on failure."""
    where = Path(os.path.abspath(out.expanduser()))
    created = [p for p in [where.parent, *where.parent.parents] if not p.exists()]
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f".{where.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.mkdir()  # the umask's permissions, as a folder the user made
        write(tmp)
        for name in FILES:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if replace:
            for name in FILES:
                os.replace(tmp / name, where / name)
            tmp.rmdir()
        else:
            try:
                os.rename(tmp, where)  # atomic; onto an empty folder too, never onto a filled one
            except OSError as exc:
                raise ModexpError(
                    f"--out {out} could not be put in place ({exc.strerror}): it was filled meanwhile?"
                ) from None
        fsync_dir(where.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # the parents this export made, innermost first, when still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):  # a full disk, no permission: one line, nothing left behind
            raise ModexpError(
                f"cannot write the export into {out} ({exc.strerror or exc}): nothing was written"
            ) from None
        raise


def load_export(folder: Path | str, device: str = "cpu") -> torch.nn.Module:
    """The model of an export folder, in eval mode. config.json is checked (keys, types, ranges) and the
    weights' names and shapes against the model it describes before anything is built: a crafted or damaged
    folder is one ModexpError line."""
    from safetensors.torch import load_model

    from . import variants

    folder = Path(folder)
    config = _export_config(folder)
    cfg = _model_config(config["model"], folder)
    _check_weights(folder / WEIGHTS, cfg)
    try:
        model = variants.build_model(cfg)  # its kind builds it (a plug-in's once the user loaded it)
        load_model(model, str(folder / WEIGHTS), device=device)
        return model.to(device).eval()
    except Exception as exc:  # a device that is not there, a file changed meanwhile
        raise ModexpError(f"{folder}: the model does not load ({_one_line(exc)})") from None


# config.json's keys besides `model` and what each may hold (None: may be null).
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "run_id": (str, type(None)),
    "step": (int, type(None)),
    "val_loss": (int, float, type(None)),
    "val_loss_causal": (int, float, type(None)),
    "data": (dict, type(None)),
}


def _export_config(folder: Path) -> dict[str, Any]:
    from .rundir import read_text

    path = folder / CONFIG
    if not folder.is_dir():
        raise ModexpError(f"{folder} is not a folder: give a folder written by modexp export")
    try:
        config = json.loads(read_text(path))
    except FileNotFoundError:
        raise ModexpError(f"{folder} has no {CONFIG}: not a modexp export") from None
    except (OSError, ValueError) as exc:
        raise ModexpError(f"{path} is not readable JSON ({_one_line(exc)}): not a modexp export") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModexpError(f"{folder} is not a modexp export (its {CONFIG} has no format {FORMAT!r})")
    unknown = sorted(set(config) - set(_TOP_KEYS) - {"model"})
    if unknown:
        raise ModexpError(
            f"{path} has key {unknown[0]!r}, which no modexp export has: allowed are model, {', '.join(_TOP_KEYS)}"
        )
    for key, types in _TOP_KEYS.items():
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ModexpError(f"{path}: {key}={value!r} is not allowed: expected {_names(types)}")
    step, losses = config.get("step"), [config.get("val_loss"), config.get("val_loss_causal")]
    if step is not None and step < 0:
        raise ModexpError(f"{path}: step={step} is not allowed: a step count is >= 0")
    if any(v is not None and not math.isfinite(v) for v in losses):
        raise ModexpError(f"{path}: a validation loss is not finite ({losses}): expected numbers or null")
    if not isinstance(config.get("model"), dict):
        raise ModexpError(
            f"{path}: model={config.get('model')!r} is not allowed: expected the model's settings"
        )
    return config


def _model_config(settings: dict[str, Any], folder: Path):  # -> its kind's ModelConfig
    """config.json's `model` as its kind's config: known keys only, each of its field's type, in its range."""
    from . import variants
    from .plugins import require_kind

    path = folder / CONFIG
    require_kind(settings.get("routing"), folder)  # a plug-in's kind, not loaded: one line naming --plugins
    fields = {name: str(f.type) for name, f in variants.settings_fields().items()}
    for key, value in settings.items():
        if key not in fields:
            raise ModexpError(f"{path}: model.{key} is no model setting: allowed are {', '.join(fields)}")
        kinds = fields[key].replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
        }
        if not any(ok.get(kind, False) for kind in kinds):
            raise ModexpError(f"{path}: model.{key}={value!r} is not allowed: expected {fields[key]}")
    try:
        return variants.model_config(settings)
    except (TypeError, ValueError) as exc:
        raise ModexpError(f"{path}: model.{_one_line(exc)}") from None


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def _check_weights(path: Path, cfg) -> None:
    """The safetensors file holds exactly the tensors the model has (a tied matrix once), each of its shape,
    as floats; read from the file's header, before the model is built (a crafted config cannot make it
    allocate more than the file holds)."""
    from safetensors import safe_open

    from . import variants

    if not path.is_file():
        raise ModexpError(f"{path.parent} has no {path.name} (a regular file): not a whole modexp export")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {
                name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                for name in f.keys()
            }
    except Exception as exc:  # SafetensorError: not a safetensors file, a truncated one
        raise ModexpError(f"{path} is not a readable safetensors file ({_one_line(exc)})") from None
    with torch.device("meta"):  # shapes only: no memory, whatever the config says
        expected = variants.build_model(cfg).state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}  # tied tensors (one object, several names): stored under one of them
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    where = f"{path}: config.json's model"
    for name, (dtype, shape) in found.items():
        if name not in expected:
            raise ModexpError(f"{path} holds tensor {name!r}, which {where} does not have")
        if tuple(expected[name].shape) != shape:
            raise ModexpError(
                f"{path}: tensor {name} has shape {list(shape)}, {where} needs {list(expected[name].shape)}"
            )
        if dtype not in _FLOAT_DTYPES:
            raise ModexpError(f"{path}: tensor {name} holds {dtype}, expected floating point weights")
    for names in groups.values():
        if not any(n in found for n in names):
            raise ModexpError(
                f"{path} lacks tensor {names[0]}, which {where} has: the file is not its weights"
            )


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read(path: Path) -> dict[str, Any]:
    from .rundir import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _data_settings(run_dir: Path) -> dict[str, Any] | None:
    import yaml

    from .rundir import read_text

    try:
        config = yaml.safe_load(read_text(run_dir / "config.yaml"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else None
