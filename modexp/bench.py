"""Speed benchmarks (`modexp bench`): does MoD's FLOP saving show up as time saved, and is our model not slow?

Every figure is a ratio of two models measured side by side in one process: after warm-up, the models take
turns in rounds (the order rotating each round) so machine noise hits all alike. Each figure is the median
over rounds of the ratio within a round (paired), reported with its spread (min-max and interquartile range)
over the rounds: on a shared machine one pair of steps can be 10% apart by chance. Figures, per shape:

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
- compile (full run, or run_bench(compile=True)): the dense and the MoD training step eager and under
  torch.compile, in the same rounds: tokens/s, achieved FLOP/s, model FLOPs utilisation where the device's
  peak is known (PEAK_FLOPS, CUDA only), the first call's compile time, and the graphs and graph breaks
  torch._dynamo.explain finds in each training forward.
- on CUDA also the MFU of each training step.

`modexp bench --quick --compile` (or `python -m modexp.bench ...`) runs the quick shapes with the compile comparison.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from modexp import flops, variants
from modexp.errors import ModexpError
from modexp.model import ModelConfig, RoutedBlock, Transformer
from modexp.sample import Decoder, next_token

REFERENCE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_gpt.py"

TRAIN_TOLERANCE = 0.15  # |train_step_ratio / train_flop_ratio - 1|
TRAIN_TARGET_MIN_D = 512  # below this width per-op overheads dominate on CPU; the target is not applied
DECODE_TARGET = 1.5
REFERENCE_TARGET = 0.95

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s per GPU, for MFU on CUDA. A key matches a device name
# (torch.cuda.get_device_name) when every word of the key is a word of the name, so "L4" does not match
# "NVIDIA L40S" and "H100" alone does not decide an "H100 NVL"; the first match wins, most specific first.
# Vendors mostly quote TFLOPS "with sparsity"; the dense figure is half. Sources (TFLOPS, BF16 tensor core):
#   H100 SXM / PCIe / NVL 1979 / 1513 / 1671 sparse: NVIDIA H100 datasheet,
#     https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 SXM / NVL 1979 / 1671 sparse: https://www.nvidia.com/en-us/data-center/h200/
#   GH200 1979 sparse: NVIDIA GH200 Grace Hopper Superchip datasheet
#   H800 SXM / PCIe 1979 / 1513 sparse: NVIDIA H800 datasheet (the H100's tensor cores and clocks)
#   B200 36 PF sparse per 8-GPU HGX B200: https://www.nvidia.com/en-us/data-center/hgx/
#   GB200 360 PF sparse per 72 GPUs: https://www.nvidia.com/en-us/data-center/gb200-nvl72/
#   A100 312 dense; L40S 362 dense; L40 181 dense; L4 242 sparse; A10 125 dense: their NVIDIA datasheets
#   A10G (AWS's variant of the A10, no NVIDIA datasheet) 70 dense:
#     https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500e12),
    ("B200", 2250e12),
    ("GH200", 989.5e12),
    ("H200 NVL", 835.5e12),
    ("H200", 989.5e12),
    ("H100 NVL", 835.5e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.5e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H800 PCIe", 756.5e12),
    ("H800", 989.5e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def peak_flops_for(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a CUDA device by its name (PEAK_FLOPS), or None for one not listed."""
    words = set(_words(device_name))
    for key, peak in PEAK_FLOPS:
        if all(w in words for w in _words(key)):
            return peak
    return None


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
    repeats: int = 5  # timed decode rounds, and training rounds unless train_repeats says otherwise
    warmup: int = 1
    vocab_size: int = 256
    train_repeats: int | None = None  # timed training rounds (None: repeats)

    @property
    def train_rounds(self) -> int:
        return self.repeats if self.train_repeats is None else self.train_repeats


# quick: about a minute on 2 CPU cores (the compile comparison, when asked for, adds ~2 min: inductor
# compiles each model's forward and backward on first use). Decode uses a wide batch: at a few rows a matmul
# is bound by reading the weights, not by FLOPs, so skipping rows saves little; serving batches are wide too.
# Training gets more rounds than decoding: its ratios are the ones near 1, where the spread decides.
QUICK_SHAPES = (BenchShape("d512-L4", 512, 4, 8, 256, 2, 512, 8, 6, train_repeats=11),)
FULL_SHAPES = (
    BenchShape("d512-L4", 512, 4, 8, 256, 4, 512, 32, 8, repeats=7, train_repeats=11),
    BenchShape("d1024-L8", 1024, 8, 16, 512, 1, 256, 32, 8, repeats=5, train_repeats=9),
)


def _mod_config(shape: BenchShape) -> ModelConfig:
    return ModelConfig(
        **_dims(shape),
        **variants.get("mod").settings,
        capacity=0.125,
        route_every=2,
        causal_router="predictor",
    )


def _base_config(shape: BenchShape) -> ModelConfig:
    return ModelConfig(**_dims(shape), **variants.get("baseline").settings)


# Mixture of experts and both MoDE forms (modexp/model/experts.py): 4 experts x 25% (a compute-matched MoE),
# MoD at 12.5% every other block on top. Their step times against their FLOP ratios, beside the baseline's.
MODE_VARIANTS = ("moe", "mode_staged", "mode_integrated")  # kinds of modexp.variants


def _mode_config(shape: BenchShape, kind: str) -> ModelConfig:
    return ModelConfig(
        **_dims(shape),
        **variants.get(kind).settings,
        noop_experts=1,
        experts=4,
        expert_capacity=0.25,
        capacity=0.125,
        route_every=2,
        causal_router="predictor",
    )


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


def _autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """bf16 autocast on CUDA (how one trains and serves there: weights and rotary tables stay float32); full
    float32 on CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _interleaved(runs: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each run returns its own elapsed seconds. Rounds alternate the models, rotating who goes first; entry
    i of every model's list comes from the same round i."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(runs[name]())
    return times


def spread(values: list[float]) -> dict[str, float | int]:
    """Median, min, max and quartiles (q1, q3) of repeated measurements."""
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
    }


def _paired(numerator: list[float], denominator: list[float], scale: float = 1.0) -> dict[str, float | int]:
    """The spread of scale * numerator[i] / denominator[i] over rounds i (both timed in the same round)."""
    return spread([scale * a / b for a, b in zip(numerator, denominator, strict=True)])


def _train_run(
    model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> Callable[[], float]:
    """One timed training step (forward, backward, AdamW step) of a modexp Transformer or the reference GPT
    (either possibly torch.compile'd)."""
    # Fused AdamW (one kernel over all tensors, CPU and CUDA): its cost is per parameter, not per token, so a
    # slow optimiser would hide the FLOP saving at a benchmark's small batch.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    clock = _clock(device)
    autocast = _autocast(device)

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
    caches grow alike. On CUDA under bf16 autocast (the caches then hold bf16), as training is."""

    def __init__(
        self, model: Transformer, prompt: torch.Tensor, steps: int, rounds: int, device: torch.device
    ) -> None:
        self.steps, self.device, self.prompt_len = steps, device, prompt.shape[1]
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.autocast = _autocast(device)
        with torch.inference_mode(), self.autocast():
            # Select-path decoding: routed blocks compute only the rows that take the token (one host sync per
            # routed block per step, nothing at a batch this wide), which is where MoD's decode saving lives;
            # the sync-free masked path computes every row and would hide it.
            self.decoder = Decoder(model, prompt.shape[0], prompt.shape[1] + steps * rounds, masked=False)
            self.logits = self.decoder.prefill(prompt)

    def __call__(self) -> float:
        clock = _clock(self.device)
        with torch.inference_mode(), self.autocast():
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
    return name, peak_flops_for(name)


def _train_batch(shape: BenchShape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(
        0,
        shape.vocab_size,
        (shape.train_batch, shape.seq_len + 1),
        generator=torch.Generator().manual_seed(3),
    ).to(device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


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
    phase_start = time.perf_counter()
    torch.manual_seed(0)
    base, mod = Transformer(base_cfg).to(device), Transformer(mod_cfg).to(device)
    ref = reference.GPT(ref_cfg).to(device)
    base_flops, mod_flops = flops.count(base_cfg).train_per_token, flops.count(mod_cfg).train_per_token
    ref_flops = reference.train_flops_per_token(ref_cfg)

    # Training steps: baseline, MoD and reference interleaved on the same batch.
    x, y = _train_batch(shape, device)
    train_runs = {
        "base": _train_run(base, x, y, device),
        "mod": _train_run(mod, x, y, device),
        "reference": _train_run(ref, x, y, device),
    }
    train = _interleaved(train_runs, shape.train_rounds, shape.warmup)
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
    train_flop_ratio = mod_flops / base_flops
    # Per-round (paired) ratios: MoD step over baseline step; our dense FLOP/s over the reference's.
    step_ratio = _paired(train["mod"], train["base"])
    vs_reference = _paired(train["reference"], train["base"], scale=base_flops / ref_flops)
    train_step_ratio = float(step_ratio["median"])
    dense_vs_reference = float(vs_reference["median"])
    train_s = time.perf_counter() - phase_start

    # Decoding, on freshly initialised models (the timed training steps above have fitted their one batch):
    # calibrate the predictors, then baseline and MoD decode the same prompts, rounds interleaved.
    phase_start = time.perf_counter()
    del base, mod
    torch.manual_seed(0)
    base, mod = Transformer(base_cfg).to(device).eval(), Transformer(mod_cfg).to(device).eval()
    calib = torch.randint(0, shape.vocab_size, (8, shape.seq_len), generator=torch.Generator().manual_seed(1))
    calibrated = calibrate_predictors(mod, calib.to(device))
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
    speedup = _paired(decode["base"], decode["mod"])  # same tokens per round: time ratio = tokens/s ratio
    decode_speedup = float(speedup["median"])
    decode_s = time.perf_counter() - phase_start

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
        "train_step_ratio_spread": step_ratio,
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
        "decode_speedup_spread": speedup,
        "decode_processed_fraction": processed,
        "calibrated_fraction": calibrated,
        "decode_pass": decode_speedup >= DECODE_TARGET,
        "dense_vs_reference": dense_vs_reference,
        "dense_vs_reference_spread": vs_reference,
        "reference_pass": dense_vs_reference >= REFERENCE_TARGET,
        "phase_s": {"train": train_s, "decode": decode_s},
    }
    phase_start = time.perf_counter()
    result["mode"] = _bench_mode(shape, device)
    result["phase_s"]["mode"] = time.perf_counter() - phase_start
    device_name, peak = _peak_flops(device)
    if peak is not None:
        result["mfu"] = {name: value / peak for name, value in flops_per_s.items()}
        result["peak_flops"] = peak
    return result


# -- torch.compile vs eager -------------------------------------------------------------------------------------
def graph_breaks(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """What torch._dynamo.explain finds in one training forward (with targets): graphs, breaks, reasons."""
    import torch._dynamo

    torch._dynamo.reset()
    with _autocast(device)():
        explained = torch._dynamo.explain(model)(x, y)
    torch._dynamo.reset()
    reasons = sorted({str(getattr(b, "reason", b)).splitlines()[0][:200] for b in explained.break_reasons})
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "ops": explained.op_count,
        "reasons": reasons,
    }


def _compile_shape(shape: BenchShape, device: torch.device, backend: str) -> dict[str, Any]:
    """The dense and the MoD training step, eager and torch.compile'd, interleaved in the same rounds.

    Each compiled model is its own copy (same initial weights as its eager twin); its first call, which
    compiles forward and backward, is timed apart (wall clock: inductor compiles in worker processes).
    """
    import torch._dynamo

    x, y = _train_batch(shape, device)
    tokens = shape.train_batch * shape.seq_len
    configs = {"base": _base_config(shape), "mod": _mod_config(shape)}
    breaks: dict[str, Any] = {}
    runs: dict[str, Callable[[], float]] = {}
    compile_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, cfg in configs.items():  # explain first: it resets dynamo, which would drop compiled code
        torch.manual_seed(0)
        breaks[name] = graph_breaks(Transformer(cfg).to(device), x, y, device)
    for name, cfg in configs.items():
        torch.manual_seed(0)
        runs[name] = _train_run(Transformer(cfg).to(device), x, y, device)
        torch.manual_seed(0)
        compiled = torch.compile(Transformer(cfg).to(device), backend=backend, dynamic=False)
        run = _train_run(compiled, x, y, device)
        start = time.perf_counter()
        try:
            run()
        # e.g. no C++ compiler for inductor on CPU: report it, keep the eager figures
        except Exception as exc:
            message = str(exc).splitlines()[0][:300] if str(exc) else ""
            errors[name] = f"{type(exc).__name__}: {message}"
            continue
        compile_s[name] = time.perf_counter() - start
        runs[f"{name}_compiled"] = run
    times = _interleaved(runs, shape.train_rounds, shape.warmup)
    _, peak = _peak_flops(device)
    variants: dict[str, Any] = {}
    for name, cfg in configs.items():
        per_token = flops.count(cfg).train_per_token
        modes: dict[str, Any] = {}
        for mode, key in (("eager", name), ("compiled", f"{name}_compiled")):
            if key not in times:
                continue
            step = statistics.median(times[key])
            modes[mode] = {
                "step_s": step,
                "step_s_all": times[key],
                "tokens_per_s": tokens / step,
                "flops_per_s": per_token * tokens / step,
                "mfu": per_token * tokens / step / peak if peak is not None else None,
            }
        variants[name] = {
            "modes": modes,
            "compile_s": compile_s.get(name),
            "error": errors.get(name),
            "graph_breaks": breaks[name],
            # compiled over eager tokens/s, per round
            "speedup": (
                _paired(times[name], times[f"{name}_compiled"]) if f"{name}_compiled" in times else None
            ),
        }
    torch._dynamo.reset()
    return {"backend": backend, "peak_flops": peak, "variants": variants}


# -- report ----------------------------------------------------------------------------------------------------
def _fmt_pass(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def _fmt_spread(s: dict[str, Any]) -> str:
    return f"{s['min']:.3f}-{s['max']:.3f} (IQR {s['q1']:.3f}-{s['q3']:.3f}, {s['n']} rounds)"


def _fmt_rate(value: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.1f} "


def _compile_markdown(report: dict[str, Any]) -> list[str]:
    shapes = {name: r["compile"] for name, r in report["shapes"].items() if "compile" in r}
    if not shapes:
        return []
    backend = next(iter(shapes.values()))["backend"]
    lines = [
        "",
        f"torch.compile (backend {backend}) vs eager, training step (forward, backward, fused AdamW), the four "
        "interleaved in the same rounds; medians. speedup: compiled over eager tokens/s per round, median "
        "and range. Graphs and breaks: torch._dynamo.explain of the training forward. MFU only where the "
        "device's peak is known (CUDA, PEAK_FLOPS).",
        "",
        "| shape | model | mode | step ms | tokens/s | FLOP/s | MFU | compile s | speedup | graphs | breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape_name, c in shapes.items():
        for name, v in c["variants"].items():
            label = {"base": "dense", "mod": "MoD"}[name]
            g = v["graph_breaks"]
            for mode in ("eager", "compiled"):
                if mode not in v["modes"]:
                    lines.append(f"| {shape_name} | {label} | {mode} | failed: {v['error']} |||||||")
                    continue
                m = v["modes"][mode]
                mfu = "-" if m["mfu"] is None else f"{m['mfu']:.1%}"
                compiled = mode == "compiled"
                comp_s = f"{v['compile_s']:.0f}" if compiled and v["compile_s"] is not None else "-"
                sp = v["speedup"]
                speed = (
                    f"{sp['median']:.3f} ({sp['min']:.3f}-{sp['max']:.3f})"
                    if compiled and sp is not None
                    else "-"
                )
                lines.append(
                    f"| {shape_name} | {label} | {mode} | {m['step_s'] * 1e3:.0f} | {m['tokens_per_s']:.0f} | "
                    f"{_fmt_rate(m['flops_per_s'])}FLOP/s | {mfu} | {comp_s} | {speed} | {g['graphs']} | "
                    f"{g['graph_breaks']} |"
                )
            for reason in g["reasons"]:
                lines.append(f"| {shape_name} | {label} | break | {reason} |||||||")
    return lines


def _mode_markdown(report: dict[str, Any]) -> list[str]:
    """MoE and MoDE training steps against their FLOP ratios (information: no target)."""
    lines = [
        "",
        "MoE and MoDE (4 experts x 25% of the tokens; MoD 12.5% every other block; integrated: 1 no-op "
        "expert): each variant's training step time over that of the model in the `vs` column, next to the "
        "ratio of their training FLOPs.",
        "",
        "| shape | variant | vs | step ratio (median) | spread: min-max (IQR, rounds) | FLOP ratio | "
        "step / FLOP ratio - 1 | step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        mode = r.get("mode")
        if not mode:
            continue
        for key, v in mode.items():
            if "_vs_" not in key:
                continue
            kind, _, reference = key.partition("_vs_")
            step = v["step_ratio"]["median"]
            lines.append(
                f"| {name} | {kind} | {reference} | {step:.3f} | {_fmt_spread(v['step_ratio'])} | "
                f"{v['flop_ratio']:.3f} | {step / v['flop_ratio'] - 1:+.3f} | "
                f"{mode['train_step_s'][kind] * 1e3:.0f} |"
            )
    return lines


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# modexp bench",
        "",
        f"device: {env['device']} ({env['device_name']}), torch {env['torch']}, threads {env['threads']}, "
        f"dtype {env['dtype']}, {'quick' if report['quick'] else 'full'} run, {env['date']}",
        "",
        "Ratios measured side by side in one process: after warm-up, the models take turns in rounds (order "
        "rotating); value = median over rounds of the ratio within a round, spread = its min-max and "
        "interquartile range over the rounds. MoD: capacity 0.125, route_every 2, predictor causal router. "
        f"Times: {env['clock']}. Training step: forward, backward, fused AdamW step. Decode: KV cache, causal "
        "routing, sampling at temperature 1, prefill untimed; each MoD predictor's bias is calibrated on random "
        "bytes to take 12.5% of tokens, as a trained one does (an untrained one takes ~50%). Routing ops: top-k, "
        "sort, gather/scatter, nonzero, index_select/index_copy/index_put, by torch.profiler.",
        "",
        "| shape | figure | value (median) | spread: min-max (IQR, rounds) | target | result | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        lines.append(
            f"| {name} | train_step_ratio | {r['train_step_ratio']:.3f} | "
            f"{_fmt_spread(r['train_step_ratio_spread'])} | within 15% of train_flop_ratio "
            f"{r['train_flop_ratio']:.3f} | {_fmt_pass(r['train_pass'])} | step/FLOP ratio - 1 = "
            f"{r['train_step_vs_flop_deviation']:+.3f}; step {r['train_step_s']['mod'] * 1e3:.0f} ms vs "
            f"{r['train_step_s']['base'] * 1e3:.0f} ms; routing ops {r['train_routing_ops_s'] * 1e3:.1f} ms "
            f"of the {r['train_saved_s'] * 1e3:.0f} ms saved |"
        )
        lines.append(
            f"| {name} | decode_speedup | {r['decode_speedup']:.3f} | {_fmt_spread(r['decode_speedup_spread'])} "
            f"| >= {DECODE_TARGET} | {_fmt_pass(r['decode_pass'])} | {r['decode_tokens_per_s']['mod']:.0f} vs "
            f"{r['decode_tokens_per_s']['base']:.0f} tok/s; routed blocks processed "
            f"{r['decode_processed_fraction']:.1%} of decoded tokens; routing ops "
            f"{r['decode_routing_ops_s'] * 1e3:.0f} ms of the {r['decode_saved_s'] * 1e3:.0f} ms saved per "
            f"{r['shape']['decode_steps']}-step round |"
        )
        lines.append(
            f"| {name} | dense_vs_reference | {r['dense_vs_reference']:.3f} | "
            f"{_fmt_spread(r['dense_vs_reference_spread'])} | >= {REFERENCE_TARGET} | "
            f"{_fmt_pass(r['reference_pass'])} | {r['train_flops_per_s']['base'] / 1e9:.1f} vs "
            f"{r['train_flops_per_s']['reference'] / 1e9:.1f} GFLOP/s (train, medians) |"
        )
        if "mfu" in r:
            mfu = r["mfu"]
            lines.append(
                f"| {name} | mfu | {mfu['base']:.3f} | - | - | info | base {mfu['base']:.1%}, MoD "
                f"{mfu['mod']:.1%}, reference {mfu['reference']:.1%} of {r['peak_flops'] / 1e12:.0f} TFLOP/s |"
            )
    lines += _mode_markdown(report)
    lines += _compile_markdown(report)
    lines += [
        "",
        "| shape | d_model | layers | heads | seq_len | train batch | decode batch | prompt | steps/round "
        "| train rounds | decode rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        s = r["shape"]
        train_rounds = s["repeats"] if s["train_repeats"] is None else s["train_repeats"]
        lines.append(
            f"| {name} | {s['d_model']} | {s['n_layers']} | {s['n_heads']} | {s['seq_len']} | "
            f"{s['train_batch']} | {s['decode_batch']} | {s['prompt_len']} | {s['decode_steps']} | "
            f"{train_rounds} | {s['repeats']} |"
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "bench.md").write_text(_markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m modexp.bench` is `modexp bench`: one entry point, the CLI's flags."""
    from modexp.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
