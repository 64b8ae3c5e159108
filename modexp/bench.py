"""Speed benchmarks (`modexp bench`): does MoD's FLOP saving show up as time saved, and is our model not slow?

Every figure is a ratio of two models measured side by side in one process: after warm-up, repeats of the
models alternate (the order rotating each round) so machine noise hits all alike, and each model's median is
taken. Figures, per shape:

- train_step_ratio: MoD (capacity 0.125, every other block, predictor) training step time (forward, backward,
  AdamW step) over the dense baseline's, next to train_flop_ratio from modexp.flops. Target: the two agree
  within 15% (|step ratio / FLOP ratio - 1| <= 0.15), applied on CPU at d_model >= 512 (below that, or on a
  GPU, per-op overheads rather than FLOPs set the time, and the figure is information only).
- decode_speedup: tokens/s of MoD causal-routing KV-cache decode over the baseline's, same shape and batch,
  steady state (prefill untimed). Target >= 1.5. An untrained predictor takes ~50% of tokens, a trained one
  ~capacity, so each predictor's output bias is first calibrated on random tokens to take `capacity` of them
  (block by block, in depth order); the fraction actually processed while decoding is reported beside it.
- dense_vs_reference: achieved training FLOP/s (analytic FLOPs per token x tokens/s) of our dense model over
  that of benchmarks/reference_gpt.py (plain nanoGPT-style GPT, same width/depth/heads/length/vocab, same
  RMSNorm/rotary/SwiGLU arithmetic). Target >= 0.95.
- on CUDA also model FLOPs utilisation of each training step (peak from PEAK_FLOPS by device name).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from modexp import flops
from modexp.errors import ModexpError
from modexp.model import ModelConfig, RoutedBlock, Transformer
from modexp.sample import Decoder, next_token

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_gpt.py"

TRAIN_TOLERANCE = 0.15  # |train_step_ratio / train_flop_ratio - 1|
TRAIN_TARGET_MIN_D = 512  # below this width per-op overheads dominate on CPU; the target is not applied
DECODE_TARGET = 1.5
REFERENCE_TARGET = 0.95

# Dense bf16 tensor-core peak FLOP/s from vendor datasheets, matched by substring of the device name
# (most specific first). Used only for MFU on CUDA.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


@dataclass(frozen=True)
class BenchShape:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    train_batch: int  # sequences per training step
    decode_batch: int  # sequences decoded together
    prompt_len: int  # prefill length (untimed)
    # Decode steps per timed round; the rounds (warmup + repeats) continue the same sequences.
    decode_steps: int
    repeats: int = 5
    warmup: int = 1
    vocab_size: int = 256


# quick: under a minute on 2 CPU cores. Decode uses a wide batch: at a few rows a matmul is bound by reading
# the weights, not by FLOPs, so skipping rows saves little; serving batches are wide too.
QUICK_SHAPES = (BenchShape("d512-L4", 512, 4, 8, 256, 2, 512, 8, 6),)
FULL_SHAPES = (
    BenchShape("d512-L4", 512, 4, 8, 256, 4, 512, 32, 8, repeats=7),
    BenchShape("d1024-L8", 1024, 8, 16, 512, 1, 256, 32, 8, repeats=5),
)


def _mod_config(shape: BenchShape) -> ModelConfig:
    return ModelConfig(
        **_dims(shape), routing="topk", capacity=0.125, route_every=2, causal_router="predictor"
    )


def _base_config(shape: BenchShape) -> ModelConfig:
    return ModelConfig(**_dims(shape), routing="none")


def _dims(shape: BenchShape) -> dict[str, int]:
    return {
        "vocab_size": shape.vocab_size,
        "seq_len": shape.seq_len,
        "d_model": shape.d_model,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
    }


def load_reference() -> ModuleType:
    """benchmarks/reference_gpt.py, which lives beside the package in a checkout (it is not installed)."""
    if not REFERENCE_PATH.is_file():
        raise ModexpError(
            f"the reference model {REFERENCE_PATH} is missing: run the benchmark from a checkout"
        )
    name = "modexp_reference_gpt"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REFERENCE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- timing ----------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """CPU: the process's CPU time, which leaves out the time the OS gives other processes (a shared
    machine's noise would otherwise decide the figures). GPU: wall-clock time around synchronised work."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def _interleaved(runs: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each run returns its own elapsed seconds. Rounds alternate the models, rotating who goes first."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(runs[name]())
    return times


def _train_run(
    model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> Callable[[], float]:
    """One timed training step (forward, backward, AdamW step) of a modexp Transformer or the reference GPT."""
    # Fused AdamW (one kernel over all tensors, CPU and CUDA): its cost is per parameter, not per token, so a
    # slow optimiser would hide the FLOP saving at a benchmark's small batch.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    clock = _clock(device)
    # bf16 autocast on CUDA (how one trains there); full float32 on CPU.
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )

    def run() -> float:
        _sync(device)
        start = clock()
        with autocast():
            out = model(tokens, targets)
        if isinstance(out, tuple):  # the reference GPT: (logits, loss)
            loss = out[1]
        else:
            loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return clock() - start

    return run


class _DecodeRun:
    """Decode a batch of prompts with the KV cache: prefill once (untimed, here), then each call times the next
    `steps` sampled decode steps, continuing the same sequences. Every model gets the same rounds, so the
    caches grow alike."""

    def __init__(
        self, model: Transformer, prompt: torch.Tensor, steps: int, rounds: int, device: torch.device
    ) -> None:
        self.steps, self.device, self.prompt_len = steps, device, prompt.shape[1]
        self.generator = torch.Generator(device=device).manual_seed(0)
        with torch.inference_mode():
            self.decoder = Decoder(model, prompt.shape[0], prompt.shape[1] + steps * rounds)
            self.logits = self.decoder.prefill(prompt)

    def __call__(self) -> float:
        clock = _clock(self.device)
        with torch.inference_mode():
            _sync(self.device)
            start = clock()
            for _ in range(self.steps):
                self.logits = self.decoder.step(next_token(self.logits, 1.0, None, self.generator))
            _sync(self.device)
            return clock() - start

    def processed_fraction(self) -> float | None:
        """Share of the decoded tokens (not the prompt's) that the routed blocks processed."""
        masks = self.decoder.routing_masks()
        if not masks:
            return None
        return torch.stack([m[:, self.prompt_len :] for m in masks]).float().mean().item()


# The routing machinery's own ops (top-k, sort, gather/scatter and their backward, row selection in decoding),
# timed with torch.profiler to check they cost far less than the FLOPs they save.
ROUTING_OPS = frozenset(
    {
        "aten::topk",
        "aten::sort",
        "aten::gather",
        "aten::scatter",
        "aten::scatter_",
        "aten::scatter_add_",
        "aten::nonzero",
        "aten::index_select",
        "aten::index_copy",
        "aten::index_copy_",
        "aten::_index_put_impl_",
    }
)


def routing_ops_seconds(run: Callable[[], float], device: torch.device) -> float:
    """Seconds one call of `run` spends in ROUTING_OPS (self time; device time on a GPU), by torch.profiler."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else kineto prints profiler start/stop lines
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return sum(getattr(e, attr) for e in prof.key_averages() if e.key in ROUTING_OPS) / 1e6


@torch.no_grad()
def calibrate_predictors(model: Transformer, tokens: torch.Tensor) -> list[float]:
    """Shift each predictor's output bias so it takes `capacity` of the tokens of `tokens` (random bytes).

    A trained predictor takes ~capacity of the tokens (it learns top-k membership); an untrained one ~half.
    Blocks are calibrated in depth order, each on the hidden states that the already calibrated blocks below
    it produce. Returns the fraction each routed block takes afterwards.
    """
    routed = [block for block in model.blocks if isinstance(block, RoutedBlock)]
    for j, block in enumerate(routed):
        if block.predictor is None:
            raise ValueError("calibrate_predictors needs causal_router='predictor'")
        logits = model(tokens, routing_mode="causal").routing[j].predictor_logits
        threshold = torch.quantile(logits.float().flatten(), 1.0 - model.cfg.capacity)
        block.predictor[-1].bias -= threshold.to(block.predictor[-1].bias.dtype)
    return [r.mask.float().mean().item() for r in model(tokens, routing_mode="causal").routing]


# -- one shape -------------------------------------------------------------------------------------------------
def _peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_FLOPS if key in name), None)


def _bench_shape(shape: BenchShape, device: torch.device) -> dict[str, Any]:
    reference = load_reference()
    base_cfg, mod_cfg = _base_config(shape), _mod_config(shape)
    ref_cfg = reference.GPTConfig(
        vocab_size=shape.vocab_size,
        seq_len=shape.seq_len,
        d_model=shape.d_model,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        ffn_dim=base_cfg.ffn_dim,
    )
    torch.manual_seed(0)
    base, mod = Transformer(base_cfg).to(device), Transformer(mod_cfg).to(device)
    ref = reference.GPT(ref_cfg).to(device)
    base_flops, mod_flops = flops.count(base_cfg).train_per_token, flops.count(mod_cfg).train_per_token
    ref_flops = reference.train_flops_per_token(ref_cfg)

    # Training steps: baseline, MoD and reference interleaved on the same batch.
    tokens = torch.randint(0, shape.vocab_size, (shape.train_batch, shape.seq_len + 1), device=device)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    train_runs = {
        "base": _train_run(base, x, y, device),
        "mod": _train_run(mod, x, y, device),
        "reference": _train_run(ref, x, y, device),
    }
    train = _interleaved(train_runs, shape.repeats, shape.warmup)
    train_routing_s = routing_ops_seconds(train_runs["mod"], device)
    del train_runs
    step_s = {name: statistics.median(times) for name, times in train.items()}
    del ref  # with train_runs gone, this frees the reference model and its optimiser state
    train_tokens = shape.train_batch * shape.seq_len
    flops_per_s = {
        "base": base_flops * train_tokens / step_s["base"],
        "mod": mod_flops * train_tokens / step_s["mod"],
        "reference": ref_flops * train_tokens / step_s["reference"],
    }
    train_step_ratio = step_s["mod"] / step_s["base"]
    train_flop_ratio = mod_flops / base_flops
    dense_vs_reference = flops_per_s["base"] / flops_per_s["reference"]

    # Decoding, on freshly initialised models (the timed training steps above have fitted their one batch):
    # calibrate the predictors, then baseline and MoD decode the same prompts, rounds interleaved.
    del base, mod
    torch.manual_seed(0)
    base, mod = Transformer(base_cfg).to(device).eval(), Transformer(mod_cfg).to(device).eval()
    calib = torch.randint(0, shape.vocab_size, (8, shape.seq_len), generator=torch.Generator().manual_seed(1))
    calibrated = calibrate_predictors(mod, calib.to(device))
    if device.type == "cuda":  # decode in bf16 weights and caches on a GPU
        base, mod = base.to(torch.bfloat16), mod.to(torch.bfloat16)
    prompt = torch.randint(
        0,
        shape.vocab_size,
        (shape.decode_batch, shape.prompt_len),
        generator=torch.Generator().manual_seed(2),
    ).to(device)
    rounds = shape.warmup + shape.repeats + 1  # + 1: the profiled round
    decode_runs = {
        "base": _DecodeRun(base, prompt, shape.decode_steps, rounds, device),
        "mod": _DecodeRun(mod, prompt, shape.decode_steps, rounds, device),
    }
    decode = _interleaved(decode_runs, shape.repeats, shape.warmup)
    decode_tps = {
        name: shape.decode_batch * shape.decode_steps / statistics.median(times)
        for name, times in decode.items()
    }
    decode_routing_s = routing_ops_seconds(decode_runs["mod"], device)
    processed = decode_runs["mod"].processed_fraction()
    decode_speedup = decode_tps["mod"] / decode_tps["base"]

    train_target_applies = device.type == "cpu" and shape.d_model >= TRAIN_TARGET_MIN_D
    deviation = train_step_ratio / train_flop_ratio - 1
    result: dict[str, Any] = {
        "shape": asdict(shape),
        "params": {"base": flops.count(base_cfg).params, "mod": flops.count(mod_cfg).params},
        "train_flops_per_token": {"base": base_flops, "mod": mod_flops, "reference": ref_flops},
        "train_step_s": step_s,
        "train_step_s_all": train,
        "train_flops_per_s": flops_per_s,
        "train_step_ratio": train_step_ratio,
        "train_flop_ratio": train_flop_ratio,
        "train_step_vs_flop_deviation": deviation,
        # Routing ops (ROUTING_OPS) per MoD training step / decode round, next to the time MoD saves there.
        "train_routing_ops_s": train_routing_s,
        "train_saved_s": step_s["base"] - step_s["mod"],
        "decode_routing_ops_s": decode_routing_s,
        "decode_saved_s": statistics.median(decode["base"]) - statistics.median(decode["mod"]),
        "train_pass": abs(deviation) <= TRAIN_TOLERANCE if train_target_applies else None,
        "decode_tokens_per_s": decode_tps,
        "decode_s_all": decode,
        "decode_speedup": decode_speedup,
        "decode_processed_fraction": processed,
        "calibrated_fraction": calibrated,
        "decode_pass": decode_speedup >= DECODE_TARGET,
        "dense_vs_reference": dense_vs_reference,
        "reference_pass": dense_vs_reference >= REFERENCE_TARGET,
    }
    device_name, peak = _peak_flops(device)
    if peak is not None:
        result["mfu"] = {name: value / peak for name, value in flops_per_s.items()}
        result["peak_flops"] = peak
    return result


# -- report ----------------------------------------------------------------------------------------------------
def _fmt_pass(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# modexp bench",
        "",
        f"device: {env['device']} ({env['device_name']}), torch {env['torch']}, threads {env['threads']}, "
        f"dtype {env['dtype']}, {'quick' if report['quick'] else 'full'} run, {env['date']}",
        "",
        "Ratios measured side by side in one process: after warm-up, repeats alternate between the models and "
        "each model's median is taken. MoD: capacity 0.125, route_every 2, predictor causal router. Times: "
        f"{env['clock']}. Training step: forward, backward, fused AdamW step. Decode: KV cache, causal routing, "
        "sampling at temperature 1, prefill untimed; each MoD predictor's bias is calibrated on random bytes to "
        "take 12.5% of tokens, as a trained one does (an untrained one takes ~50%). Routing ops: top-k, sort, "
        "gather/scatter, nonzero, index_select/index_copy/index_put, by torch.profiler.",
        "",
        "| shape | figure | value | target | result | detail |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        lines.append(
            f"| {name} | train_step_ratio | {r['train_step_ratio']:.3f} | within 15% of train_flop_ratio "
            f"{r['train_flop_ratio']:.3f} | {_fmt_pass(r['train_pass'])} | step/FLOP ratio - 1 = "
            f"{r['train_step_vs_flop_deviation']:+.3f}; step {r['train_step_s']['mod'] * 1e3:.0f} ms vs "
            f"{r['train_step_s']['base'] * 1e3:.0f} ms; routing ops {r['train_routing_ops_s'] * 1e3:.1f} ms "
            f"of the {r['train_saved_s'] * 1e3:.0f} ms saved |"
        )
        lines.append(
            f"| {name} | decode_speedup | {r['decode_speedup']:.3f} | >= {DECODE_TARGET} | "
            f"{_fmt_pass(r['decode_pass'])} | {r['decode_tokens_per_s']['mod']:.0f} vs "
            f"{r['decode_tokens_per_s']['base']:.0f} tok/s; routed blocks processed "
            f"{r['decode_processed_fraction']:.1%} of decoded tokens; routing ops "
            f"{r['decode_routing_ops_s'] * 1e3:.0f} ms of the {r['decode_saved_s'] * 1e3:.0f} ms saved per "
            f"{r['shape']['decode_steps']}-step round |"
        )
        lines.append(
            f"| {name} | dense_vs_reference | {r['dense_vs_reference']:.3f} | >= {REFERENCE_TARGET} | "
            f"{_fmt_pass(r['reference_pass'])} | {r['train_flops_per_s']['base'] / 1e9:.1f} vs "
            f"{r['train_flops_per_s']['reference'] / 1e9:.1f} GFLOP/s (train) |"
        )
        if "mfu" in r:
            mfu = r["mfu"]
            lines.append(
                f"| {name} | mfu | {mfu['base']:.3f} | - | info | base {mfu['base']:.1%}, MoD {mfu['mod']:.1%}, "
                f"reference {mfu['reference']:.1%} of {r['peak_flops'] / 1e12:.0f} TFLOP/s |"
            )
    lines += [
        "",
        "| shape | d_model | layers | heads | seq_len | train batch | decode batch | prompt | steps/round | repeats |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        s = r["shape"]
        lines.append(
            f"| {name} | {s['d_model']} | {s['n_layers']} | {s['n_heads']} | {s['seq_len']} | "
            f"{s['train_batch']} | {s['decode_batch']} | {s['prompt_len']} | {s['decode_steps']} | "
            f"{s['repeats']} |"
        )
    verdict = {True: "all targets met", False: "some targets NOT met"}[report["pass"]]
    lines += ["", f"Result: {verdict}. Wall time {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModexpError(f"--device={device!r} is not a device: use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModexpError(f"--device={device} asked for CUDA, but torch sees no GPU here: use cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise ModexpError(f"--device={device} is not supported by the benchmark: use auto, cpu or cuda[:N]")
    return resolved


def run_bench(
    quick: bool,
    out: Path,
    device: str = "auto",
    shapes: list[BenchShape] | tuple[BenchShape, ...] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the benchmarks, write out/bench.json and out/bench.md, and return the report.

    shapes overrides the built-in QUICK_SHAPES / FULL_SHAPES (the tests use a tiny one). threads: torch CPU
    threads for the run, restored afterwards. Default 1: the figures are ratios of work per core, and on a
    shared machine a multi-threaded op stalls whenever one of its threads is descheduled (on the 2-core
    development machine, 2 threads made decoding ten times slower and the ratios meaningless).
    """
    start = time.perf_counter()
    dev = _resolve_device(device)
    shapes = tuple(shapes) if shapes is not None else (QUICK_SHAPES if quick else FULL_SHAPES)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        results = {shape.name: _bench_shape(shape, dev) for shape in shapes}
        env = {
            "device": str(dev),
            "device_name": _peak_flops(dev)[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "dtype": "bf16 (autocast train, bf16 decode)" if dev.type == "cuda" else "float32",
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "bench.md").write_text(_markdown(report))
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
