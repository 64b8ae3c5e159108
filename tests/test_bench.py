"""The benchmark's machinery on a tiny shape. No timing assertions: machines are shared and noisy; the targets
live in the benchmark's own output (bench.md), not in tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from modexp.bench import BenchShape, _interleaved, _resolve_device, calibrate_predictors, run_bench
from modexp.errors import ModexpError
from modexp.model import ModelConfig, Transformer

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
    assert result["train_pass"] is None  # the training target applies from d_model 512 only
    assert isinstance(result["decode_pass"], bool) and isinstance(result["reference_pass"], bool)
    # The reference GPT's own FLOP count agrees with modexp.flops for the same dense shape.
    assert result["train_flops_per_token"]["reference"] == result["train_flops_per_token"]["base"]
    assert report["shapes"]["tiny"]["decode_speedup"] == result["decode_speedup"]
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    for text in ("train_step_ratio", "decode_speedup", "dense_vs_reference", "threads 1", torch.__version__):
        assert text in markdown


def test_calibrate_predictors_takes_capacity() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
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
