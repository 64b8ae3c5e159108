"""CUDA-only checks (skipped without a GPU): what the first GPU run must show (docs/gpu/).

bf16 training steps for every routing with fp32 router logits, no host sync in an unlogged step, torch.compile
without graph breaks and close to eager, the flash and memory-efficient attention kernels, KV-cache decoding
against recomputation. `make gpu-check` runs this file; with $MODEXP_GPU_CHECK_RESULTS set, the measurements
(peak memory, step times, graph counts, recompiles) are written there as JSON for its report.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from modexp.model import RoutedBlock, Transformer
from modexp.sample import Decoder
from modexp.train import clip_gradients, split_predictor_params
from modexp.variants import model_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

VARIANTS = {
    "baseline": dict(routing="none"),
    "mod_predictor": dict(routing="topk", causal_router="predictor"),
    "mod_aux_loss": dict(routing="topk", causal_router="aux_loss"),
    "random": dict(routing="random"),
}
SHAPES = {
    "small": (dict(vocab_size=256, seq_len=256, d_model=256, n_layers=4, n_heads=4), 8),
    # The gpu preset's largest run: d768-l12 at 64 x 512 (gpu-readiness.md: ~19 GB).
    "d768-l12": (dict(vocab_size=256, seq_len=512, d_model=768, n_layers=12, n_heads=12), 64),
}
GB = 2**30
_measured: dict[str, dict] = {}


def record(name: str, **values) -> None:
    """Keep a measurement for gpu-check's report (a no-op outside it)."""
    _measured[name] = values
    path = os.environ.get("MODEXP_GPU_CHECK_RESULTS")
    if path:
        with open(path, "w") as f:
            json.dump(_measured, f, indent=1, default=str)


def make(variant: str, shape: dict, **overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(model_config(**shape, **VARIANTS[variant], **overrides)).cuda()


def batch(model: Transformer, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    cfg = model.cfg
    tokens = torch.randint(0, cfg.vocab_size, (rows, cfg.seq_len + 1), device="cuda", generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


class Trainer:
    """One training step as modexp.train takes it, unlogged: bf16 autocast forward, LM + causal-router loss,
    backward, per-group gradient clipping, fused AdamW."""

    def __init__(self, model: torch.nn.Module, params_of: Transformer | None = None) -> None:
        self.model = model
        source = params_of or model
        self.trunk, self.predictor = split_predictor_params(source)
        self.optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3, fused=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = self.model(x, y)
        loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
        loss.backward()
        clip_gradients(self.trunk, self.predictor, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out


def cuda_ms(fn, repeats: int = 3) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_training_step(variant: str, shape: str) -> None:
    dims, rows = SHAPES[shape]
    model = make(variant, dims)
    x, y = batch(model, rows)
    step = Trainer(model)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = step(x, y)
    assert torch.isfinite(out.loss) and (out.aux_loss is None or torch.isfinite(out.aux_loss))
    assert out.logits.dtype == torch.bfloat16
    for rec in out.routing:  # the router (and random routing's noise) and the predictor's logits stay fp32
        assert rec.router_logits.dtype == torch.float32, (rec.layer, rec.router_logits.dtype)
        assert rec.predictor_logits is None or rec.predictor_logits.dtype == torch.float32
    assert len(out.routing) == (0 if variant == "baseline" else len(model.cfg.routed_layers))
    ms = cuda_ms(lambda: step(x, y))
    record(
        f"train_step[{variant},{shape}]",
        batch=f"{rows}x{dims['seq_len']}",
        loss=round(out.loss.item(), 4),
        step_ms=round(ms, 2),
        tokens_per_s=round(rows * dims["seq_len"] / ms * 1e3),
        peak_memory_gb=round(torch.cuda.max_memory_allocated() / GB, 3),
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unlogged_step_makes_no_host_sync(variant: str) -> None:
    model = make(variant, SHAPES["small"][0])
    x, y = batch(model, 8)
    step = Trainer(model)
    step(x, y)  # warm-up: lazy initialisation (optimizer state, cuBLAS handles) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises, naming itself
    try:
        step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("variant", ["baseline", "mod_predictor"])
def test_compile_without_graph_breaks_and_close_to_eager(variant: str) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = make(variant, SHAPES["small"][0])
    x, y = batch(model, 8)
    torch._dynamo.reset()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(x, y)
    reasons = [str(getattr(b, "reason", b))[:200] for b in explanation.break_reasons]
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x, y)
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(x, y)
    loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
    loss.backward()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    values = dict(
        graphs=explanation.graph_count,
        graph_breaks=explanation.graph_break_count,
        break_reasons=reasons[:3],
        compile_s=round(compile_s, 1),
        eager_loss=round(eager.loss.item(), 5),
        compiled_loss=round(out.loss.item(), 5),
    )
    if variant == "baseline":
        # A run's last step is usually a partial batch: count the graphs it adds (each is a recompile).
        before = counters["stats"].get("unique_graphs", 0)
        start = time.perf_counter()
        for rows in (5, 3):
            step = Trainer(compiled, params_of=model)
            assert torch.isfinite(step(x[:rows], y[:rows]).loss)
        torch.cuda.synchronize()
        values["partial_batch_new_graphs"] = counters["stats"].get("unique_graphs", 0) - before
        values["partial_batch_s"] = round(time.perf_counter() - start, 1)
    record(f"compile[{variant}]", **values)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, reasons
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(out.loss.float(), eager.loss.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("variant", ["baseline", "mod_predictor", "random"])
def test_topk_training_step_under_flash_attention(variant: str) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = make(variant, SHAPES["small"][0])
    x, y = batch(model, 8)
    step = Trainer(model)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # no other kernel: a mask anywhere would raise here
        out = step(x, y)
        out = step(x, y)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("mode", ["causal", "topk"])
def test_evaluation_memory_at_t2048(mode: str) -> None:
    """Evaluation's forward (causal routing, where sampling's decisions are checked) under the memory-efficient
    kernel at T=2048, batch 8, d768-l12: it runs, and its peak memory is recorded."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dims = {**SHAPES["d768-l12"][0], "seq_len": 2048}
    model = make("mod_predictor", dims).eval()
    x, y = batch(model, 8)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            out = model(x, y, routing_mode=mode)
    torch.cuda.synchronize()
    assert torch.isfinite(out.loss)
    record(
        f"eval_forward[{mode},T=2048,B=8,d768-l12]",
        peak_memory_gb=round(torch.cuda.max_memory_allocated() / GB, 3),
        above_weights_gb=round((torch.cuda.max_memory_allocated() - base) / GB, 3),
    )


@pytest.mark.parametrize("variant", ["baseline", "mod_predictor"])
def test_micro_batched_paper_step_fits_its_memory_estimate(variant: str) -> None:
    """The paper preset's smallest run (d640-l10, T=2048, vocab 32000) in micro-batches of 8 sequences, as
    train.micro_batch_size does it: finite loss, and the measured peak beside modexp.memory's estimate, which
    `auto` and `modexp plan` rely on (gpu-readiness.md item 7)."""
    from modexp.memory import estimate

    dims = dict(vocab_size=32000, seq_len=2048, d_model=640, n_layers=10, n_heads=10)
    model = make(variant, dims)
    micro, parts = 8, 2
    step = Trainer(model)
    batches = [batch(model, micro, seed) for seed in range(parts)]

    def accumulate() -> float:
        total = 0.0
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x, y)
            loss = out.loss + out.aux_loss if out.aux_loss is not None else out.loss
            (loss / parts).backward()
            total += out.loss.detach() / parts
            del out, loss  # as train.py does: no micro-batch's graph outlives its backward
        clip_gradients(step.trunk, step.predictor, 1.0)
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)
        return total

    accumulate()  # optimizer state exists from here on, as in every step after the first
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss = accumulate()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    predicted = estimate(model.cfg, micro, "bf16").peak_bytes
    assert torch.isfinite(loss)
    ms = cuda_ms(accumulate, repeats=2)
    record(
        f"paper_micro_step[{variant},d640-l10,T=2048,2x8]",
        loss=round(float(loss), 4),
        step_ms=round(ms, 1),
        tokens_per_s=round(parts * micro * 2048 / ms * 1e3),
        peak_memory_gb=round(measured / GB, 2),
        estimate_gb=round(predicted / GB, 2),
        estimate_over_measured=round(predicted / measured, 3),
    )
    # The estimate may be generous (it counts a CUDA context and allocator slack that
    # max_memory_allocated does not); it must never be far below what the step takes.
    assert predicted >= 0.8 * measured, (predicted / GB, measured / GB)


@pytest.mark.parametrize("variant", ["baseline", "mod_predictor", "mod_aux_loss"])
def test_decode_with_cache_equals_recompute(variant: str) -> None:
    dims = dict(vocab_size=64, seq_len=32, d_model=64, n_layers=4, n_heads=4, init_std=0.1)
    model = make(variant, dims, route_every=2).eval()
    seq = torch.randint(
        0, 64, (4, 24), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)
    )
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(seq[:, :23], routing_mode="causal")
        decoders = {}
        for masked in (True, False):
            decoder = Decoder(model, 4, 24, masked=masked)
            logits = [decoder.prefill(seq[:, :6]), decoder.step(seq[:, 6])]  # positions 5 and 6; warm-up
            torch.cuda.synchronize()
            if masked:  # the CUDA default: no host sync per decoded token
                assert Decoder(model, 1, 2).masked
                torch.cuda.set_sync_debug_mode("error")
            try:
                logits += [decoder.step(seq[:, t]) for t in range(7, 23)]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            decoders[masked] = (decoder, logits)
    for masked, (decoder, logits) in decoders.items():
        assert decoder.keys[0].dtype == torch.bfloat16
        got = torch.stack(logits, dim=1).float()
        want = full.logits[:, 5:23].float()
        # A decision at the threshold may flip under bf16 rounding, and the sequence then goes its own way:
        # compare each sequence's positions before its first differing decision.
        first = torch.full((4,), 23, device="cuda")
        for mask, rec in zip(decoder.routing_masks(), full.routing):
            differs = mask[:, :23] != rec.mask
            first = torch.minimum(first, torch.where(differs.any(1), differs.int().argmax(1), 23))
        alike = torch.arange(5, 23, device="cuda")[None, :] < first[:, None]  # (4, 18)
        assert alike.float().mean() >= 0.5, (masked, first)
        torch.testing.assert_close(got[alike], want[alike], rtol=0.02, atol=0.06)
    routed = [b for b in model.blocks if isinstance(b, RoutedBlock)]
    record(
        f"decode[{variant}]",
        routed_blocks=len(routed),
        processed=[round(m.float().mean().item(), 3) for m in decoders[True][0].routing_masks()],
    )
