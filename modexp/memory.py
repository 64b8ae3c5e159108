"""Peak training memory per device, estimated, and the micro-batch that fits (train.micro_batch_size=auto).

An estimate, not a promise: activations saved for backward per token and layer were measured with
torch.autograd.graph.saved_tensors_hooks on this model (fp32 and bf16 autocast, dense and routed blocks; the
numbers are below, the test in tests/test_parallel.py keeps them honest), plus the parameters, gradients and
AdamW state, the loss's logits, and a fixed allowance for the CUDA context and allocator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ModexpError
from .model import ModelConfig

GB = 1e9
# Bytes saved for backward per token, per layer, per unit of d_model (measured, see module docstring).
DENSE_PER_D = {"fp32": 110.0, "bf16": 66.0}
# A routed block keeps capacity x a dense block's, plus its gathered inputs, router and gate.
ROUTED_EXTRA_PER_D = {"fp32": 23.0, "bf16": 14.0}
# A mixture-of-experts MLP (model.moe) against the dense MLP it replaces, per token it sees: BASE at
# experts x share = 1 (gathers, router), plus SLOPE per unit of experts x share above 1 (measured like the
# rest, at d96 and d192: fp32 -11 / +15 / +65 at 0.5 / 1 / 2; bf16 +5..14 / +19..28 / +47..55).
MOE_BASE_PER_D = {"fp32": 15.0, "bf16": 24.0}
MOE_SLOPE_PER_D = {"fp32": 51.0, "bf16": 28.0}
# The loss: saved log-probabilities and, at the backward's start, the logits' gradient and copies (per vocab entry).
LOSS_PER_VOCAB = {"fp32": 13.0, "bf16": 11.0}
STATE_BYTES_PER_PARAM = 16.0  # fp32 weights, gradients, AdamW's two moments
CAST_BYTES_PER_PARAM = 2.0  # autocast's bf16 copies of the weights
FIXED_BYTES = 1.5 * GB  # CUDA context, cuBLAS workspaces, allocator slack
HEADROOM = 0.9  # use at most this share of a device


@dataclass(frozen=True)
class MemoryEstimate:
    micro_batch: int  # sequences per forward/backward on one device
    peak_bytes: float

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB


def params_of(model: ModelConfig) -> int:
    return int(model.parameters()[0])


def estimate(
    model: ModelConfig,
    micro_batch: int,
    precision: str,
    processes: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """Peak bytes on one device for micro_batch sequences; precision is "fp32" or "bf16"."""
    d, tokens = model.d_model, micro_batch * model.seq_len
    routed = set(model.routed_layers)
    per_layer_dense = DENSE_PER_D[precision] * d
    # Each block as its kind computes it: a routed block keeps its share of a dense block's plus its gathered
    # inputs, router and gate; an MoE against a dense MLP, per token it sees (model.mlp_load: experts x share).
    blocks, moe = [], []
    for i in range(model.n_layers):
        share = model.token_fraction(i)
        blocks.append(share * per_layer_dense + (ROUTED_EXTRA_PER_D[precision] * d if i in routed else 0.0))
        load = model.mlp_load(i)
        if load is not None:
            moe.append(share * d * (MOE_BASE_PER_D[precision] + MOE_SLOPE_PER_D[precision] * (load - 1)))
    if activation_checkpointing:  # each block keeps its fp32 input; one block's activations live at a time
        largest = max([per_layer_dense, *blocks]) + max([0.0, *moe])
        saved = model.n_layers * 4 * d + largest
    else:
        saved = sum(blocks) + sum(moe)
    activations = tokens * (saved + LOSS_PER_VOCAB[precision] * model.vocab_size)
    params = params_of(model)
    state = params * STATE_BYTES_PER_PARAM / (processes if fsdp else 1)
    casts = params * CAST_BYTES_PER_PARAM if precision == "bf16" else 0.0
    return MemoryEstimate(micro_batch, FIXED_BYTES + state + casts + activations)


def fit_micro_batch(
    model: ModelConfig,
    rows: int,
    device_bytes: float,
    precision: str,
    processes: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
) -> MemoryEstimate | None:
    """The largest micro-batch (<= rows, this process's share of a batch) that fits; None when 1 does not."""
    budget = HEADROOM * device_bytes

    def at(m: int) -> MemoryEstimate:
        return estimate(model, m, precision, processes, fsdp, activation_checkpointing)

    if at(1).peak_bytes > budget:
        return None
    low, high = 1, rows  # largest m with at(m) <= budget: memory grows with m
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if at(mid).peak_bytes <= budget else (low, mid - 1)
    return at(low)


def resolve_micro_batch(
    model: ModelConfig,
    batch_size: int,
    setting: int | str | None,
    device_bytes: float | None,
    precision: str,
    processes: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
) -> tuple[int | None, MemoryEstimate | None]:
    """train.micro_batch_size -> (sequences per forward/backward or None for the whole share, its estimate).

    `auto` takes the largest micro-batch that fits device_bytes (unknown: the whole share), then evens the
    chunks out (64 rows at most 40 each: 32 + 32, not 40 + 24), so a compiled step sees one shape.
    """
    rows = math.ceil(batch_size / processes)  # the largest share a process gets

    def at(m: int) -> MemoryEstimate:
        return estimate(model, m, precision, processes, fsdp, activation_checkpointing)

    if setting is None:
        return None, at(rows)
    if setting != "auto":
        return (None if int(setting) >= rows else int(setting)), at(min(int(setting), rows))
    if device_bytes is None:
        return None, at(rows)
    fit = fit_micro_batch(model, rows, device_bytes, precision, processes, fsdp, activation_checkpointing)
    if fit is None:
        raise ModexpError(
            f"{model.d_model}x{model.n_layers} at seq_len {model.seq_len} does not fit "
            f"{device_bytes / GB:.0f} GB even one sequence at a time (estimated {at(1).peak_gb:.0f} GB): "
            "set train.activation_checkpointing=true, train.parallel=fsdp with more launcher.gpus_per_run, "
            "or a larger launcher.gpu_mem_gb"
        )
    if fit.micro_batch >= rows:
        return None, fit
    even = math.ceil(rows / math.ceil(rows / fit.micro_batch))
    return even, at(even)


def planned_precision(train_precision: str, device: str, gpus_visible: bool) -> str:
    """The precision a run will train in, as far as the plan can know it (device=auto: is a GPU visible?)."""
    on_gpu = device == "cuda" or (device == "auto" and gpus_visible)
    return "bf16" if train_precision == "bf16" or (train_precision == "auto" and on_gpu) else "fp32"


def plan_step(cfg: Any, model: ModelConfig, gpus_visible: bool) -> tuple[str, MemoryEstimate | None]:
    """(the micro-batch a run will use, as the plan shows it, and the estimated peak per device).

    `auto` is resolved against launcher.gpu_mem_gb when given; otherwise the device decides at run time.
    """
    precision = planned_precision(cfg.train.precision, cfg.device, gpus_visible)
    processes = max(1, cfg.launcher.gpus_per_run)
    setting = cfg.train.micro_batch_size
    device_bytes = cfg.launcher.gpu_mem_gb * GB if cfg.launcher.gpu_mem_gb else None
    try:
        micro, est = resolve_micro_batch(
            model,
            cfg.train.batch_size,
            setting,
            device_bytes,
            precision,
            processes,
            cfg.train.parallel == "fsdp" and processes > 1,
            cfg.train.activation_checkpointing,
        )
    except ModexpError:
        return "no fit", None
    rows = math.ceil(cfg.train.batch_size / processes)
    if setting == "auto" and device_bytes is None:
        return f"auto (<= {rows})", est
    return str(micro or rows), est
