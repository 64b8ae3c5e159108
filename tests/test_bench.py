"""The benchmark's machinery on a tiny shape. No timing assertions: machines are shared and noisy; the targets
live in the benchmark's own output (bench.md), not in tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from modexp.bench import (
    BenchShape,
    _interleaved,
    _paired,
    _resolve_device,
    calibrate_predictors,
    peak_flops_for,
    run_bench,
    spread,
)
from modexp.errors import ModexpError
from modexp.model import Transformer
from modexp.model.layers import Rotary, apply_rotary
from modexp.variants import model_config

TINY = BenchShape("tiny", d_model=32, n_layers=2, n_heads=2, seq_len=32, train_batch=2, decode_batch=8,
                  prompt_len=4, decode_steps=2, repeats=2, warmup=1)  # fmt: skip


def test_run_bench_tiny_writes_json_and_markdown(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    report = run_bench(quick=True, out=tmp_path / "bench", device="cpu", shapes=[TINY], threads=1)
    assert torch.get_num_threads() == threads  # restored
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert saved["environment"]["threads"] == 1 and saved["environment"]["device"] == "cpu"
    result = saved["shapes"]["tiny"]
    for figure in ("train_step_ratio", "train_flop_ratio", "decode_speedup", "dense_vs_reference"):
        assert math.isfinite(result[figure]) and result[figure] > 0
    assert 0 <= result["decode_processed_fraction"] <= 1
    assert len(result["train_step_s_all"]["mod"]) == TINY.repeats
    # Every ratio comes with its spread over the rounds, in the JSON and in the table.
    for figure in ("train_step_ratio", "decode_speedup", "dense_vs_reference"):
        s = result[f"{figure}_spread"]
        assert s["n"] == TINY.repeats and s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert result[figure] == s["median"]
    assert "compile" not in result  # a quick run leaves the compile comparison out unless asked
    assert result["train_pass"] is None  # the training target applies from d_model 512 only
    assert isinstance(result["decode_pass"], bool) and isinstance(result["reference_pass"], bool)
    # The reference GPT's own FLOP count agrees with modexp.flops for the same dense shape.
    assert result["train_flops_per_token"]["reference"] == result["train_flops_per_token"]["base"]
    assert report["shapes"]["tiny"]["decode_speedup"] == result["decode_speedup"]
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    for text in ("train_step_ratio", "decode_speedup", "dense_vs_reference", "threads 1", torch.__version__):
        assert text in markdown
    assert markdown.count("IQR") >= 3
    # MoE and both MoDE forms: step-time ratios against the baseline and the MoE, next to their FLOP ratios.
    mode = result["mode"]
    for key in ("moe_vs_base", "mode_staged_vs_base", "mode_staged_vs_moe", "mode_integrated_vs_moe"):
        assert mode[key]["step_ratio"]["n"] == TINY.train_rounds and mode[key]["step_ratio"]["median"] > 0
    assert mode["mode_staged_vs_moe"]["flop_ratio"] < 1 and mode["mode_integrated_vs_moe"]["flop_ratio"] < 1
    assert mode["params"]["moe"] > mode["params"]["base"]
    assert "| tiny | mode_staged | moe |" in markdown
    # Both speed claims of the paper's abstract are named, with what was measured for each.
    assert (
        '"match baseline performance for equivalent FLOPs and wall-clock times to train": tiny: ' in markdown
    )
    assert f"MoD decoded {result['decode_speedup']:.2f}x the baseline's tokens per second" in markdown
    assert '"upwards of 50% faster to step during post-training sampling"' in markdown
    # The steps measured here serve the planner: this machine's cache holds them (tests: a tmp cache).
    from modexp import device

    held = device.measured_runs(device.device_kind(torch.device("cpu")), "fp32/1")
    assert {r["run_id"] for r in held} >= {"bench:tiny:baseline", "bench:tiny:mod"}


def test_calibrate_predictors_takes_capacity() -> None:
    torch.manual_seed(0)
    cfg = model_config(
        vocab_size=64, seq_len=32, d_model=32, n_layers=4, n_heads=2, routing="topk", capacity=0.25
    )
    model = Transformer(cfg)
    tokens = torch.randint(0, 64, (4, 32))
    fractions = calibrate_predictors(model, tokens)
    assert len(fractions) == 2
    assert all(abs(f - 0.25) < 0.02 for f in fractions)


def test_interleaved_rotates_order() -> None:
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    times = _interleaved(runs, repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "bca" + "cab")
    assert times == {name: [1.0] * 3 for name in "abc"}


def test_resolve_device_errors() -> None:
    assert _resolve_device("cpu").type == "cpu"
    with pytest.raises(ModexpError, match="not a device"):
        _resolve_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(ModexpError, match="no GPU"):
            _resolve_device("cuda")


def test_spread_and_paired_ratios() -> None:
    s = spread([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["n"]) == (2.5, 1.0, 4.0, 1.75, 3.25, 4)
    # Round i of one model is paired with round i of the other, not medians with medians.
    paired = _paired([2.0, 6.0, 3.0], [1.0, 3.0, 3.0], scale=2.0)
    assert (paired["min"], paired["median"], paired["max"]) == (2.0, 4.0, 4.0)
    assert spread([5.0])["q1"] == spread([5.0])["q3"] == 5.0


def test_compile_comparison_on_a_tiny_shape(tmp_path: Path) -> None:
    # aot_eager: dynamo and AOTAutograd as with inductor, without its code generation (seconds, not minutes)
    report = run_bench(
        quick=True,
        out=tmp_path / "bench",
        device="cpu",
        shapes=[TINY],
        threads=1,
        compile=True,
        compile_backend="aot_eager",
    )
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    compiled = saved["shapes"]["tiny"]["compile"]
    assert compiled["backend"] == "aot_eager" and compiled["peak_flops"] is None  # no CPU peak: no MFU
    assert set(compiled["variants"]) == {"base", "mod"}
    for name, variant in compiled["variants"].items():
        assert variant["error"] is None, variant["error"]
        assert set(variant["modes"]) == {"eager", "compiled"}
        for mode in variant["modes"].values():
            assert mode["tokens_per_s"] > 0 and mode["flops_per_s"] > 0 and mode["mfu"] is None
            assert len(mode["step_s_all"]) == TINY.repeats
        assert variant["compile_s"] > 0 and variant["speedup"]["n"] == TINY.repeats
        # The training forward of both variants is one graph (gpu-readiness.md): a break would split it.
        assert variant["graph_breaks"]["graphs"] == 1, (name, variant["graph_breaks"])
        assert variant["graph_breaks"]["graph_breaks"] == 0, (name, variant["graph_breaks"])
    assert report["shapes"]["tiny"]["phase_s"]["compile"] > 0
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    assert "torch.compile (backend aot_eager) vs eager" in markdown
    for text in ("| tiny | dense | eager |", "| tiny | dense | compiled |", "| tiny | MoD | compiled |"):
        assert text in markdown


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA H100 80GB HBM3", 989.5e12),
        ("NVIDIA H100 PCIe", 756.5e12),
        ("NVIDIA H200", 989.5e12),
        ("NVIDIA GH200 480GB", 989.5e12),
        ("NVIDIA H800", 989.5e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_flops_by_device_name(name: str, peak: float | None) -> None:
    assert peak_flops_for(name) == peak


# -- the dense fast path the benchmark measures, and the rotary tables under a dtype cast ------------------------
def _classic_rotary(x: torch.Tensor, head_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary written out the plain way, from its own fp32 tables."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(64, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos()[positions], angles.sin()[positions]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_is_bit_identical_to_the_plain_formula(dtype: torch.dtype) -> None:
    rotary = Rotary(head_dim=16, max_len=64, base=10000.0)
    x = torch.randn(2, 3, 40, 16, generator=torch.Generator().manual_seed(0)).to(dtype)
    cos, sin = rotary(40)
    got = apply_rotary(x, cos, sin)
    assert got.dtype == dtype
    assert torch.equal(got, _classic_rotary(x, 16, torch.arange(40)))


def test_dense_slice_path_equals_gather_path_bit_for_bit() -> None:
    torch.manual_seed(0)
    cfg = model_config(vocab_size=64, seq_len=32, d_model=32, n_layers=2, n_heads=2)
    block = Transformer(cfg).blocks[0]
    x = torch.randn(3, 32, 32, requires_grad=True)
    results = []
    for positions in (None, torch.arange(32), torch.arange(32).expand(3, 32)):
        out = block.update(x, positions=positions)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    with pytest.raises(ValueError, match="ensure_length"):
        block.rotary(33)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rotary_tables_stay_float32_when_the_model_is_cast(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cfg = model_config(vocab_size=64, seq_len=32, d_model=32, n_layers=2, n_heads=2)
    model = Transformer(cfg)
    before = {name: buf.clone() for name, buf in model.rotary.named_buffers()}
    model.to(dtype)
    assert model.lm_head.weight.dtype == dtype  # the rest of the model is cast
    for name, buf in model.rotary.named_buffers():
        assert buf.dtype == torch.float32 and torch.equal(buf, before[name]), name
    model.to("cpu").float().to(dtype)  # device moves and casts back and forth keep them exact
    assert all(torch.equal(b, before[n]) for n, b in model.rotary.named_buffers())
    # Growing the tables (decoding past seq_len) rebuilds them from the float32 inv_freq.
    model.rotary.ensure_length(200)
    fresh = Rotary(cfg.head_dim, model.rotary.cos.shape[0], cfg.rope_base)
    assert model.rotary.cos.dtype == torch.float32
    assert torch.equal(model.rotary.cos, fresh.cos) and torch.equal(model.rotary.sin, fresh.sin)
    tokens = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        out = model(tokens, tokens)
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)


def test_dense_model_compiles_with_dynamic_shapes() -> None:
    # Under dynamic shapes the sequence length is a SymInt, which must still take the slice path.
    torch.manual_seed(0)
    model = Transformer(model_config(vocab_size=64, seq_len=32, d_model=32, n_layers=2, n_heads=2))
    compiled = torch.compile(model, backend="eager", dynamic=True)
    for t in (16, 24):
        tokens = torch.randint(0, 64, (2, t))
        with torch.no_grad():
            torch.testing.assert_close(compiled(tokens).logits, model(tokens).logits, rtol=0, atol=0)
