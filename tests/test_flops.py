"""The analytic FLOP count against PyTorch's FlopCounterMode on the real model, and its conventions."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import assert_counts_match
from torch.utils.flop_counter import FlopCounterMode

from modexp import variants
from modexp.flops import COMPONENTS, CONVENTIONS, FlopCount, count, describe
from modexp.model import ModelConfig, Transformer
from modexp.variants import model_config

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
    # Mixture of experts (dense MoE) and both MoDE forms: every expert's matmuls, the routers and predictors.
    "moe-x4-k0.25-pred": dict(moe=True, experts=4, expert_capacity=0.25, causal_router="predictor"),
    "moe-x3-k0.5-gelu-aux": dict(
        moe=True, experts=3, expert_capacity=0.5, mlp="gelu", causal_router="aux_loss"
    ),
    "mode-staged-c0.5-every2-x4-k0.25": dict(
        routing="topk", capacity=0.5, route_every=2, moe=True, experts=4
    ),
    "mode-staged-c0.25-every1-x2-k0.3-none": dict(
        routing="topk",
        capacity=0.25,
        route_every=1,
        moe=True,
        experts=2,
        expert_capacity=0.3,
        causal_router="none",
    ),
    "mode-integrated-c0.5-every2-x4-n1": dict(
        routing="integrated", capacity=0.5, route_every=2, moe=True, experts=4, noop_experts=1
    ),
    "mode-integrated-c0.125-every1-x3-n2-aux": dict(
        routing="integrated",
        capacity=0.125,
        route_every=1,
        moe=True,
        experts=3,
        noop_experts=2,
        expert_capacity=0.5,
        causal_router="aux_loss",
    ),
}
MOE_VARIANTS = [v for v in VARIANTS if v.startswith(("moe", "mode"))]
# Every variant on one shape, every shape on a few variants: the axes are covered without a full product.
GRID = (
    [("s64-d48-l3-v1000", v) for v in VARIANTS]
    + [
        (s, v)
        for s in SHAPES
        for v in ("dense", "c0.5-every2-pred", "c0.125-every2-none", "random-c0.25-every2")
    ]
    + [(s, v) for s in ("s32-d32-l2-v256", "s96-d96-l6-v1000") for v in MOE_VARIANTS]
)
GRID = list(dict.fromkeys(GRID))


def make_cfg(shape: str, variant: str, **overrides) -> ModelConfig:
    return model_config(**{**SHAPES[shape], **VARIANTS[variant], "attention": "math", **overrides})


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


@pytest.mark.parametrize(
    "variant",
    [
        "dense",
        "c0.5-every2-pred",
        "c0.25-every1-aux",
        "random-c0.25-every2",
        "moe-x4-k0.25-pred",
        "mode-staged-c0.5-every2-x4-k0.25",
        "mode-integrated-c0.5-every2-x4-n1",
    ],
)
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
    model_config(d_model=40, n_heads=5, n_layers=5, routing="topk", route_every=4, predictor_hidden=3),
    model_config(d_model=64, n_heads=8, mlp="gelu", d_ff=100, routing="random", route_every=1),
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
    dense = count(model_config(**shape))
    mod = count(model_config(**shape, routing="topk", capacity=capacity, route_every=2, causal_router="none"))
    assert mod.train_per_token < dense.train_per_token
    blocks = sum(dense.by_component[name] for name in ("qkv", "attention", "out", "mlp"))
    saved = (dense.forward_per_token - mod.forward_per_token) / blocks
    assert saved == pytest.approx((1 - capacity) / 2, rel=0.01)
    # And on a small model too, with a predictor, the saving is real.
    small = dict(vocab_size=256, seq_len=128, d_model=64, n_layers=4, n_heads=4)
    assert (
        count(model_config(**small, routing="topk", capacity=capacity)).train_per_token
        < count(model_config(**small)).train_per_token
    )


def test_moe_counts_every_expert_but_pays_for_its_capacity() -> None:
    """Parameters include all E experts; FLOPs only the tokens each expert takes. At E x capacity = 1 the
    experts cost exactly the dense MLP; staged and integrated MoDE cut that further by MoD's capacity."""
    shape = dict(vocab_size=256, seq_len=128, d_model=64, n_layers=4, n_heads=4, causal_router="none")
    dense, moe = (
        count(model_config(**shape)),
        count(model_config(**shape, moe=True, experts=4, expert_capacity=0.25)),
    )
    d, f = 64, model_config(**shape).ffn_dim
    assert moe.params - dense.params == 4 * (
        3 * (3 * d * f) + 4 * d
    )  # 3 more experts and a d -> 4 router/block
    assert moe.by_component["mlp"] == dense.by_component["mlp"]
    assert moe.by_component["router"] == 4 * 2 * d * 4
    mode = dict(shape, moe=True, experts=4, expert_capacity=0.25, capacity=0.5, route_every=2)
    staged = count(model_config(**mode, routing="topk"))
    integrated = count(model_config(**mode, routing="integrated", noop_experts=1))
    assert (
        staged.by_component["mlp"]
        == integrated.by_component["mlp"]
        == pytest.approx(0.75 * moe.by_component["mlp"])
    )
    assert (
        staged.by_component["attention"]
        < integrated.by_component["attention"]
        == dense.by_component["attention"]
    )
    assert (
        integrated.params == moe.params + 2 * d
    )  # one no-op expert's router column in each of 2 routed blocks


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
    dense = count(model_config())
    assert set(dense.by_component) == set(COMPONENTS)
    assert dense.by_component["router"] == dense.by_component["predictor"] == 0
    random = count(model_config(routing="random"))
    assert random.by_component["router"] == random.by_component["predictor"] == 0
    aux = count(model_config(routing="topk", causal_router="aux_loss"))
    assert aux.by_component["router"] > 0 and aux.by_component["predictor"] == 0


def test_describe() -> None:
    cfg = model_config(routing="topk")
    record, c = describe(cfg), count(cfg)
    assert record["params"] == c.params and record["non_embedding_params"] == c.non_embedding_params
    assert record["forward_flops_per_token"] == c.forward_per_token
    assert record["train_flops_per_token"] == c.train_per_token
    assert {k for k in record if k.startswith("flops_")} == {f"flops_{n}" for n in COMPONENTS}
    assert all(isinstance(v, (int, float)) for v in record.values())


def test_count_is_cheap() -> None:
    """The planner calls count() thousands of times: pure arithmetic, ~10 us a call (measured ~0.1 s / 10k)."""
    cfg = model_config(routing="topk", n_layers=12)
    start = time.perf_counter()
    for _ in range(10_000):
        count(cfg)
    assert time.perf_counter() - start < 5.0  # generous: a shared CI core, not a benchmark
    assert isinstance(count(cfg), FlopCount)


@pytest.mark.parametrize("kind", variants.kinds())
def test_every_registered_kind_counts_itself(kind: str) -> None:
    """Each kind's config counts its own parameters and FLOPs (flops.py asks it): at its defaults, on a small
    shape, they are the model's. A plug-in's kind is checked the same way in its own tests (helpers)."""
    cfg = variants.get(kind).model_config({}, d_model=32, n_heads=2, n_layers=4, seq_len=32, vocab_size=64)
    assert_counts_match(cfg)
