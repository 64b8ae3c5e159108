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

import json
from pathlib import Path
from typing import Any

import torch

from .errors import ModexpError

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


def export_run(run_dir: Path | str, out: Path | str) -> Path:
    """Write the run's final weights, config and README into `out`; returns `out`."""
    from safetensors.torch import save_model

    from .sample import load_model

    run_dir, out = Path(run_dir), Path(out)
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
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS), metadata={"format": FORMAT})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    mode = "causal" if config["val_loss_causal"] is not None else "topk"
    readme = README.format(run_id=config["run_id"], run_dir=run_dir, step=config["step"], out=out, mode=mode)
    (out / "README.md").write_text(readme)
    return out


def load_export(folder: Path | str, device: str = "cpu") -> torch.nn.Module:
    """The model of an export folder, in eval mode."""
    from safetensors.torch import load_model

    from . import variants

    folder = Path(folder)
    config = _read(folder / CONFIG)
    if config.get("format") != FORMAT:
        raise ModexpError(f"{folder} is not a modexp export (its config.json has no format {FORMAT!r})")
    # Its kind builds it (modexp.variants): a plug-in's kind must be loaded first, by its module's import.
    model = variants.build_model(variants.model_config(config["model"]))
    load_model(model, str(folder / WEIGHTS), device=device)
    return model.to(device).eval()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _data_settings(run_dir: Path) -> dict[str, Any] | None:
    import yaml

    try:
        return (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("data")
    except (OSError, yaml.YAMLError):
        return None
