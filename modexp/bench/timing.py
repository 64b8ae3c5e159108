"""How the benchmark times: paired rounds of interleaved models, their spread, training and decoding runs, routing ops."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from modexp.errors import ModexpError
from modexp.model import RoutedBlock, Transformer
from modexp.sample import Decoder, next_token

from .shapes import BenchShape, peak_flops_for


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
