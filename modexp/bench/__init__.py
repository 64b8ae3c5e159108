"""Speed benchmarks (`modexp bench`): does MoD's FLOP saving show up as time saved, and is our model not slow?

Every figure is a ratio of two models measured side by side in one process: after warm-up, the models take
turns in rounds (the order rotating each round) so machine noise hits all alike. Each figure is the median
over rounds of the ratio within a round (paired), reported with its spread (min-max and interquartile range)
over the rounds: on a shared machine one pair of steps can be 10% apart by chance. Figures, per shape:

- train_step_ratio: MoD (capacity 0.125, every other block, predictor) training step time (forward, backward,
  AdamW step) over the dense baseline's, next to train_flop_ratio from modexp.flops. Target: the two agree
  within 10% (|step ratio / FLOP ratio - 1| <= 0.10), applied on CPU at d_model >= 512 (below that, or on a
  GPU, per-op overheads rather than FLOPs set the time, and the figure is information only).
- decode_speedup: tokens/s of MoD causal-routing KV-cache decode over the baseline's, same shape and batch,
  steady state (prefill untimed). Target >= 1.5. An untrained predictor takes ~50% of tokens, a trained one
  ~capacity, so each predictor's output bias is first calibrated on random tokens to take `capacity` of them
  (block by block, in depth order); the fraction actually processed while decoding is reported beside it.
- dense_vs_reference: achieved training FLOP/s (analytic FLOPs per token x tokens/s) of our dense model over
  that of benchmarks/reference_gpt.py (plain nanoGPT-style GPT, same width/depth/heads/length/vocab, same
  RMSNorm/rotary/SwiGLU arithmetic). Target >= 0.95.
- compile (full run, or run_bench(compile=True)): the dense and the MoD training step eager and under
  torch.compile, in the same rounds: tokens/s, achieved FLOP/s, model FLOPs utilisation where the device's
  peak is known (PEAK_FLOPS, CUDA only), the first call's compile time, and the graphs and graph breaks
  torch._dynamo.explain finds in each training forward.
- on CUDA also the MFU of each training step.

`modexp bench --quick --compile` (or `python -m modexp.bench ...`) runs the quick shapes with the compile comparison.

One job per module: shapes.py (what is measured on), timing.py (how), speed.py (MoD vs dense, ours vs the
reference), mode.py (MoE and MoDE), compiled.py (torch.compile vs eager), report.py (bench.md); run_bench here.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .compiled import _compile_shape
from .report import _json_default, _markdown
from .shapes import (
    DECODE_TARGET,
    FULL_SHAPES,
    QUICK_SHAPES,
    REFERENCE_TARGET,
    TRAIN_TARGET_MIN_D,
    TRAIN_TOLERANCE,
    BenchShape,
    peak_flops_for,
)
from .speed import _bench_shape
from .timing import _interleaved, _paired, _peak_flops, _resolve_device, calibrate_predictors, spread

__all__ = [
    "BenchShape",
    "_interleaved",
    "_paired",
    "_resolve_device",
    "calibrate_predictors",
    "main",
    "peak_flops_for",
    "run_bench",
    "spread",
]


def _remember_paces(results: dict[str, Any], dev: torch.device, threads: int) -> None:
    """Each shape's measured training steps, kept in this machine's cache beside the runs' (modexp.device):
    the planner's estimate reads them where no run of a size near them was measured."""
    from modexp import device

    precision = "bf16" if dev.type == "cuda" else "fp32"
    records = []
    for name, r in results.items():
        tokens = r["shape"]["train_batch"] * r["shape"]["seq_len"]
        for kind, key in (("baseline", "base"), ("mod", "mod")):
            records.append({
                "run_id": f"bench:{name}:{kind}", "time": time.time(), "kind": kind, "cpu_share": 1.0,
                "step_flops": r["train_flops_per_token"][key] * tokens, "step_time": r["train_step_s"][key],
            })  # fmt: skip
    try:
        device.record_runs(device.device_kind(dev), device.slot_key(threads, precision), records)
    except Exception:  # noqa: BLE001 - the cache only serves the planner
        pass


def run_bench(
    quick: bool,
    out: Path,
    device: str = "auto",
    shapes: list[BenchShape] | tuple[BenchShape, ...] | None = None,
    threads: int | None = None,
    compile: bool | None = None,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """Run the benchmarks, write out/bench.json and out/bench.md, and return the report.

    shapes overrides the built-in QUICK_SHAPES / FULL_SHAPES (the tests use a tiny one). threads: torch CPU
    threads for the run, restored afterwards. Default 1: the figures are ratios of work per core, and on a
    shared machine a multi-threaded op stalls whenever one of its threads is descheduled (on the 2-core
    development machine, 2 threads made decoding ten times slower and the ratios meaningless). compile: add
    the torch.compile vs eager comparison (None: in the full run, not in the quick one); compile_backend:
    torch.compile's backend (the tests use "aot_eager", which skips inductor's code generation).
    """
    start = time.perf_counter()
    dev = _resolve_device(device)
    shapes = tuple(shapes) if shapes is not None else (QUICK_SHAPES if quick else FULL_SHAPES)
    with_compile = (not quick) if compile is None else compile
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        results = {}
        for shape in shapes:
            results[shape.name] = _bench_shape(shape, dev)
            if with_compile:
                phase_start = time.perf_counter()
                results[shape.name]["compile"] = _compile_shape(shape, dev, compile_backend)
                results[shape.name]["phase_s"]["compile"] = time.perf_counter() - phase_start
        env = {
            "device": str(dev),
            "device_name": _peak_flops(dev)[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "dtype": "bf16 autocast (float32 weights), train and decode" if dev.type == "cuda" else "float32",
            "clock": (
                "wall clock around synchronised GPU work"
                if dev.type == "cuda"
                else "process CPU time (time.process_time), which leaves out time the OS gives other processes"
            ),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    finally:
        torch.set_num_threads(previous_threads)
    checks = [r[key] for r in results.values() for key in ("train_pass", "decode_pass", "reference_pass")]
    report = {
        "quick": quick,
        "environment": env,
        "targets": {
            "train_step_vs_flop_deviation": f"<= {TRAIN_TOLERANCE} (CPU, d_model >= {TRAIN_TARGET_MIN_D})",
            "decode_speedup": f">= {DECODE_TARGET}",
            "dense_vs_reference": f">= {REFERENCE_TARGET}",
        },
        "shapes": results,
        "pass": all(ok for ok in checks if ok is not None),
        "wall_s": time.perf_counter() - start,
    }
    _remember_paces(results, dev, env["threads"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "bench.md").write_text(_markdown(report))
    return report
