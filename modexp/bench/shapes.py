"""What the benchmark measures on: its shapes, the models built on them, the targets, GPU peaks, the reference GPT."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modexp import device, variants
from modexp.errors import ModexpError
from modexp.model import ModelConfig

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_gpt.py"


TRAIN_TOLERANCE = 0.10  # |train_step_ratio / train_flop_ratio - 1|: the FLOPs MoD saves are time saved


TRAIN_TARGET_MIN_D = 512  # below this width per-op overheads dominate on CPU; the target is not applied


DECODE_TARGET = 1.5


REFERENCE_TARGET = 0.95


# The GPUs' dense bf16 peaks live with the device's kind and probe (modexp/device.py), which runs read too.
PEAK_FLOPS = device.PEAK_FLOPS
peak_flops_for = device.vendor_peak


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
    return variants.model_config(
        **_dims(shape),
        **variants.get("mod").settings,
        capacity=0.125,
        route_every=2,
        causal_router="predictor",
    )


def _base_config(shape: BenchShape) -> ModelConfig:
    return variants.model_config(**_dims(shape), **variants.get("baseline").settings)


# Mixture of experts and both MoDE forms (modexp/model/experts.py): 4 experts x 25% (a compute-matched MoE),
# MoD at 12.5% every other block on top. Their step times against their FLOP ratios, beside the baseline's.
MODE_VARIANTS = ("moe", "mode_staged", "mode_integrated")  # kinds of modexp.variants


def _mode_config(shape: BenchShape, kind: str) -> ModelConfig:
    return variants.model_config(
        **_dims(shape),
        **variants.get(kind).settings,
        noop_experts=1,
        experts=4,
        expert_capacity=0.25,
        capacity=0.125,
        route_every=2,
        causal_router="predictor",
    )


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
