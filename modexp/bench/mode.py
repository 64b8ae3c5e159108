"""The baseline, the MoE and both MoDE forms: training step time against their FLOP ratios."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from modexp import flops
from modexp.model import Transformer

from .shapes import MODE_VARIANTS, BenchShape, _base_config, _mode_config
from .timing import _interleaved, _paired, _train_batch, _train_run


def _bench_mode(shape: BenchShape, device: torch.device) -> dict[str, Any]:
    """Training steps of the baseline, MoE and both MoDE forms, interleaved: each one's step-time ratio to
    the baseline's and to the MoE's, next to its FLOP ratio (does MoDE's FLOP saving show up as time?)."""
    configs = {"base": _base_config(shape)} | {kind: _mode_config(shape, kind) for kind in MODE_VARIANTS}
    x, y = _train_batch(shape, device)
    runs = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        runs[name] = _train_run(Transformer(cfg).to(device), x, y, device)
    times = _interleaved(runs, shape.train_rounds, shape.warmup)
    del runs
    train_flops = {name: flops.count(cfg).train_per_token for name, cfg in configs.items()}
    result: dict[str, Any] = {"train_step_s": {name: statistics.median(t) for name, t in times.items()}}
    for kind in MODE_VARIANTS:
        for reference in ("base", "moe"):
            if kind == reference:
                continue
            result[f"{kind}_vs_{reference}"] = {
                "step_ratio": _paired(times[kind], times[reference]),
                "flop_ratio": train_flops[kind] / train_flops[reference],
            }
    result["params"] = {name: flops.count(cfg).params for name, cfg in configs.items()}
    return result
