"""The analytic FLOP count against PyTorch's FlopCounterMode on the real model, and its conventions."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modexp.flops import COMPONENTS, CONVENTIONS, FlopCount, count, describe
from modexp.model import ModelConfig, Transformer

BATCH = 2

# Tiny shapes covering the axes the count depends on. The math attention path is what the counter can see
# (on CPU it counts 0 for SDPA).
SHAPES = {
    "s32-d32-l2-v256": dict(seq_len=32, d_model=32, n_layers=2, n_heads=2, vocab_size=256),
    "s64-d48-l3-v1000": dict(seq_len=64, d_model=48, n_layers=3, n_heads=4, vocab_size=1000),
    "s128-d64-l4-v256": dict(seq_len=128, d_model=64, n_layers=4, n_heads=4, vocab_size=256),
    "s96-d96-l6-v1000": dict(seq_len=96, d_model=96, n_layers=6, n_heads=6, vocab_size=1000, d_ff=200),
}
VARIANTS = {
    "dense": dict(),
    "dense-gelu-tied": dict(mlp="gelu", tie_embeddings=True),
    "c1-every2": dict(routing="topk", capacity=1.0, route_every=2),
    "c0.5-every2-pred": dict(routing="topk", capacity=0.5, route_every=2, causal_router="predictor"),
    "c0.25-every1-aux": dict(routing="topk", capacity=0.25, route_every=1, causal_router="aux_loss"),
    "c0.125-every2-none": dict(routing="topk", capacity=0.125, route_every=2, causal_router="none"),
    "c0.125-every3-gelu": dict(routing="topk", capacity=0.125, route_every=3, mlp="gelu"),
    "c0.3-every2-linear-tied": dict(
        routing="topk", capacity=0.3, route_every=2, router_weight="linear", tie_embeddings=True
    ),
    "random-c0.25-every2": dict(routing="random", capacity=0.25, route_every=2),
}
# Every variant on one shape, every shape on a few variants: the axes are covered without a full product.
GRID = [("s64-d48-l3-v1000", v) for v in VARIANTS] + [
    (s, v) for s in SHAPES for v in ("dense", "c0.5-every2-pred", "c0.125-every2-none", "random-c0.25-every2")
]
GRID = list(dict.fromkeys(GRID))


def make_cfg(shape: str, variant: str, **overrides) -> ModelConfig:
    return ModelConfig(**{**SHAPES[shape], **VARIANTS[variant], "attention": "math", **overrides})


def counted_flops(cfg: ModelConfig, backward: bool = True) -> float:
    """Matmul FLOPs per token that FlopCounterMode sees for one forward (+ backward) of a batch."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    y = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, y)
        if backward:  # what a training step does: the causal router's loss joins the LM loss
            (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    return counter.get_total_flops() / (BATCH * cfg.seq_len)


@pytest.mark.parametrize("shape,variant", GRID, ids=[f"{s}-{v}" for s, v in GRID])
def test_train_count_matches_counter(shape: str, variant: str) -> None:
    cfg = make_cfg(shape, variant)
    analytic = count(cfg).train_per_token
    assert counted_flops(cfg) / analytic == pytest.approx(1.0, abs=1e-9)  # exact, not just within 0.5%


@pytest.mark.parametrize("variant", ["dense", "c0.5-every2-pred", "c0.25-every1-aux", "random-c0.25-every2"])
def test_forward_count_matches_counter(variant: str) -> None:
    cfg = make_cfg("s64-d48-l3-v1000", variant)
    c = count(cfg)
    assert counted_flops(cfg, backward=False) == pytest.approx(c.forward_per_token, rel=1e-12)
    assert sum(c.by_component.values()) == pytest.approx(c.forward_per_token, rel=1e-12)


def test_predictor_training_cost() -> None:
    """The predictor reads x.detach(): its training cost is 2T(2dh + 3h) per routed block, not 3 x forward."""
    with_pred = make_cfg("s64-d48-l3-v1000", "c0.5-every2-pred")
    without = make_cfg("s64-d48-l3-v1000", "c0.5-every2-pred", causal_router="none")
    d, h, n = with_pred.d_model, with_pred.predictor_dim, len(with_pred.routed_layers)
    expected = n * 2 * (2 * d * h + 3 * h)  # per token
    assert counted_flops(with_pred) - counted_flops(without) == pytest.approx(expected, rel=1e-12)
    assert count(with_pred).train_per_token - count(without).train_per_token == pytest.approx(expected)


PARAM_CFGS = [
    make_cfg(s, v)
    for s in SHAPES
    for v in VARIANTS
    if VARIANTS[v].get("route_every", 1) <= SHAPES[s]["n_layers"]  # else the config routes no block
] + [
    ModelConfig(d_model=40, n_heads=5, n_layers=5, routing="topk", route_every=4, predictor_hidden=3),
    ModelConfig(d_model=64, n_heads=8, mlp="gelu", d_ff=100, routing="random", route_every=1),
]


@pytest.mark.parametrize("cfg", PARAM_CFGS)
def test_params_match_model(cfg: ModelConfig) -> None:
    model = Transformer(cfg)
    c = count(cfg)
    assert c.params == model.num_params()
    assert c.non_embedding_params == model.num_params(non_embedding=True)


@pytest.mark.parametrize("capacity", [0.5, 0.125])
def test_mod_saves_the_expected_amount(capacity: float) -> None:
    """Wide model, short sequence: blocks are nearly all linear FLOPs, so routing every other block at
    capacity c saves about (1 - c) / 2 of them; the routers cost a negligible 2 x d per token each."""
    shape = dict(vocab_size=256, seq_len=128, d_model=4096, n_layers=8, n_heads=32)
    dense = count(ModelConfig(**shape))
    mod = count(ModelConfig(**shape, routing="topk", capacity=capacity, route_every=2, causal_router="none"))
    assert mod.train_per_token < dense.train_per_token
    blocks = sum(dense.by_component[name] for name in ("qkv", "attention", "out", "mlp"))
    saved = (dense.forward_per_token - mod.forward_per_token) / blocks
    assert saved == pytest.approx((1 - capacity) / 2, rel=0.01)
    # And on a small model too, with a predictor, the saving is real.
    small = dict(vocab_size=256, seq_len=128, d_model=64, n_layers=4, n_heads=4)
    assert (
        count(ModelConfig(**small, routing="topk", capacity=capacity)).train_per_token
        < count(ModelConfig(**small)).train_per_token
    )


def test_conventions() -> None:
    cfg = make_cfg("s64-d48-l3-v1000", "c0.5-every2-pred")
    exact, six_n, chin = count(cfg), count(cfg, "6N"), count(cfg, "chinchilla")
    assert exact.convention == "exact" and count(cfg, "exact") == exact
    assert six_n.train_per_token == 6 * exact.non_embedding_params
    assert six_n.forward_per_token == 2 * exact.non_embedding_params
    embedding = 2 * cfg.d_model * cfg.vocab_size
    assert exact.by_component["embedding"] == 0
    assert chin.by_component["embedding"] == embedding
    assert chin.forward_per_token == pytest.approx(exact.forward_per_token + embedding)
    assert chin.train_per_token == pytest.approx(exact.train_per_token + 3 * embedding)
    for c in (six_n, chin):
        assert (c.params, c.non_embedding_params) == (exact.params, exact.non_embedding_params)
    with pytest.raises(ValueError, match=r"convention='flops'.*exact, 6N, chinchilla"):
        count(cfg, "flops")
    assert set(CONVENTIONS) == {"exact", "6N", "chinchilla"}


def test_absent_components_are_zero() -> None:
    dense = count(ModelConfig())
    assert set(dense.by_component) == set(COMPONENTS)
    assert dense.by_component["router"] == dense.by_component["predictor"] == 0
    random = count(ModelConfig(routing="random"))
    assert random.by_component["router"] == random.by_component["predictor"] == 0
    aux = count(ModelConfig(routing="topk", causal_router="aux_loss"))
    assert aux.by_component["router"] > 0 and aux.by_component["predictor"] == 0


def test_describe() -> None:
    cfg = ModelConfig(routing="topk")
    record, c = describe(cfg), count(cfg)
    assert record["params"] == c.params and record["non_embedding_params"] == c.non_embedding_params
    assert record["forward_flops_per_token"] == c.forward_per_token
    assert record["train_flops_per_token"] == c.train_per_token
    assert {k for k in record if k.startswith("flops_")} == {f"flops_{n}" for n in COMPONENTS}
    assert all(isinstance(v, (int, float)) for v in record.values())


def test_count_is_cheap() -> None:
    """The planner calls count() thousands of times: pure arithmetic, ~10 us a call (measured ~0.1 s / 10k)."""
    cfg = ModelConfig(routing="topk", n_layers=12)
    start = time.perf_counter()
    for _ in range(10_000):
        count(cfg)
    assert time.perf_counter() - start < 5.0  # generous: a shared CI core, not a benchmark
    assert isinstance(count(cfg), FlopCount)
