"""One shape: MoD against the dense baseline (training step, decoding) and our dense model against the reference GPT."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

import torch

from modexp import flops
from modexp.model import Transformer

from .mode import _bench_mode
from .shapes import (
    DECODE_TARGET,
    REFERENCE_TARGET,
    TRAIN_TARGET_MIN_D,
    TRAIN_TOLERANCE,
    BenchShape,
    _base_config,
    _mod_config,
    load_reference,
)
from .timing import (
    _DecodeRun,
    _interleaved,
    _paired,
    _peak_flops,
    _train_batch,
    _train_run,
    calibrate_predictors,
    routing_ops_seconds,
)


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

    del base, mod
    decoded = _bench_decode(shape, device, base_cfg, mod_cfg)
    decode_s = decoded.pop("decode_phase_s")

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
        "train_pass": abs(deviation) <= TRAIN_TOLERANCE if train_target_applies else None,
        **decoded,
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


def _bench_decode(shape: BenchShape, device: torch.device, base_cfg: Any, mod_cfg: Any) -> dict[str, Any]:
    """The decoding half of a shape's bench: baseline and MoD decode the same prompts, rounds interleaved."""
    # Decoding, on freshly initialised models (the timed training steps above have fitted their one batch):
    # calibrate the predictors, then baseline and MoD decode the same prompts, rounds interleaved.
    phase_start = time.perf_counter()
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

    return {
        "decode_routing_ops_s": decode_routing_s,
        "decode_saved_s": statistics.median(decode["base"]) - statistics.median(decode["mod"]),
        "decode_tokens_per_s": decode_tps,
        "decode_s_all": decode,
        "decode_speedup": decode_speedup,
        "decode_speedup_spread": speedup,
        "decode_processed_fraction": processed,
        "calibrated_fraction": calibrated,
        "decode_pass": decode_speedup >= DECODE_TARGET,
        "decode_phase_s": decode_s,
    }
