"""Invariants of the Mixture-of-Depths transformer (see docs/mod.md).

Every test uses a tiny float32 model on the CPU with fixed seeds; each asserts real values, so a broken
routed block (re-indexed positions, scrambled order, residual added twice, shared routers, ...) fails it.
"""

from __future__ import annotations

import math

import pytest
import torch

from modexp.model import Block, ModelConfig, RoutedBlock, Transformer
from modexp.variants import model_config

D = 32
VOCAB = 64


def make_cfg(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=VOCAB,
        seq_len=32,
        d_model=D,
        n_layers=2,
        n_heads=4,
        routing="topk",
        capacity=0.25,
        route_every=2,
        router_weight="sigmoid",
        causal_router="predictor",
    )
    base.update(overrides)
    return model_config(**base)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(make_cfg(**overrides)).eval()


def routed_blocks(model: Transformer) -> list[RoutedBlock]:
    return [b for b in model.blocks if isinstance(b, RoutedBlock)]


def first_routed(model: Transformer) -> RoutedBlock:
    return routed_blocks(model)[0]


def hidden(b: int = 3, t: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D, generator=g)


def tokens(b: int = 2, t: int = 32, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (b, t), generator=g)


def gate(cfg: ModelConfig, r: torch.Tensor) -> torch.Tensor:
    if cfg.routing == "random":
        return torch.ones_like(r)
    return torch.sigmoid(r) if cfg.router_weight == "sigmoid" else r


def fix_router_to_coordinate(block: RoutedBlock, coord: int = 0) -> None:
    """r = x[..., coord] exactly: the other coordinates get weight 0, so they never move r."""
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[0, coord] = 1.0


def rows_changed(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: rows that are not bit-for-bit equal."""
    return (out != x).any(dim=-1)


ROUTER_VARIANTS = [
    dict(routing="topk", router_weight="sigmoid"),
    dict(routing="topk", router_weight="linear"),
    dict(routing="random"),
]
VARIANT_IDS = ["sigmoid", "linear", "random"]


# 1. Unselected tokens pass through bit-for-bit.
@pytest.mark.parametrize("variant", ROUTER_VARIANTS, ids=VARIANT_IDS)
def test_unselected_tokens_unchanged_bit_for_bit(variant):
    model = make_model(**variant)
    block = first_routed(model)
    x = hidden()
    with torch.no_grad():
        out, rec = block(x)
    assert out.shape == x.shape
    assert rec.mask.sum().item() == x.shape[0] * model.cfg.capacity_tokens(x.shape[1])
    assert torch.equal(out[~rec.mask], x[~rec.mask])
    # ... and the selected ones really are updated (otherwise the check above is vacuous).
    assert rows_changed(out, x)[rec.mask].all()


# 2. Exactly k tokens are updated per sequence: the top-k of this block's router.
@pytest.mark.parametrize("router_weight", ["sigmoid", "linear"])
@pytest.mark.parametrize("capacity", [0.125, 0.25, 0.5])
def test_exactly_k_updated_and_they_are_the_router_topk(router_weight, capacity):
    model = make_model(router_weight=router_weight, capacity=capacity)
    block = first_routed(model)
    x = hidden()
    k = model.cfg.capacity_tokens(x.shape[1])
    with torch.no_grad():
        out, rec = block(x)
        r = block.router(x).squeeze(-1)
    changed = rows_changed(out, x)
    assert changed.sum(dim=1).tolist() == [k] * x.shape[0]
    assert torch.equal(changed, rec.mask)
    assert torch.equal(rec.router_logits, r)
    for b in range(x.shape[0]):
        expected = set(r[b].topk(k).indices.tolist())
        assert set(rec.indices[b].tolist()) == expected
        assert set(changed[b].nonzero().flatten().tolist()) == expected
        # the selected tokens have the k largest scores
        assert r[b][rec.mask[b]].min() >= r[b][~rec.mask[b]].max()


# 3a. Indices come sorted ascending (so selected tokens keep their causal order).
@pytest.mark.parametrize("variant", ROUTER_VARIANTS, ids=VARIANT_IDS)
def test_indices_sorted_ascending(variant):
    model = make_model(n_layers=4, route_every=1, **variant)
    with torch.no_grad():
        out = model(tokens(b=3))
    assert len(out.routing) == 4
    for rec in out.routing:
        assert rec.indices.shape == (3, model.cfg.capacity_tokens(32))
        assert (rec.indices[:, 1:] > rec.indices[:, :-1]).all()
        assert rec.mask.gather(1, rec.indices).all()
        assert torch.equal(rec.topk_mask, rec.mask)


# 3b. The routed blocks follow route_every.
@pytest.mark.parametrize("route_every, expected", [(1, [0, 1, 2, 3, 4, 5]), (2, [1, 3, 5]), (3, [2, 5])])
def test_routed_blocks_follow_route_every(route_every, expected):
    model = make_model(n_layers=6, route_every=route_every)
    routed = [i for i, b in enumerate(model.blocks) if isinstance(b, RoutedBlock)]
    dense = [i for i, b in enumerate(model.blocks) if isinstance(b, Block)]
    assert routed == expected
    assert model.cfg.routed_layers == expected
    assert sorted(routed + dense) == list(range(6))
    assert [b.layer for b in routed_blocks(model)] == expected
    if route_every > 1:
        assert isinstance(model.blocks[0], Block)
    with torch.no_grad():
        out = model(tokens(t=16))
    assert [rec.layer for rec in out.routing] == expected


def test_dense_model_has_no_routed_blocks():
    model = make_model(routing="none", n_layers=4, route_every=1)
    assert all(isinstance(b, Block) for b in model.blocks)
    with torch.no_grad():
        out = model(tokens())
    assert out.routing == [] and out.aux_loss is None


# 4. Rotary positions are the ORIGINAL positions, not 0..k-1.
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_selected_tokens_keep_original_rotary_positions(attention):
    model = make_model(capacity=0.25, seq_len=16, attention=attention)  # k = 4 of 16
    block = first_routed(model)
    fix_router_to_coordinate(block)
    with (
        torch.no_grad()
    ):  # sharpen attention: at init (std 0.02) it is near uniform and positions barely show
        block.block.attn.qkv.weight.mul_(30.0)
    x = hidden(b=2, t=16)
    chosen = [[1, 4, 5, 11], [0, 7, 9, 15]]  # not contiguous, so relative distances matter
    for b, pos in enumerate(chosen):
        x[b, pos, 0] = 10.0 + torch.arange(4.0)
    with torch.no_grad():
        out, rec = block(x)
        idx = torch.tensor(chosen)
        assert torch.equal(rec.indices, idx)
        x_sel = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
        f_orig = block.block.update(x_sel, positions=idx)
        f_reindexed = block.block.update(x_sel, positions=torch.arange(4))
        g = gate(model.cfg, x_sel[..., 0]).unsqueeze(-1)
    got = out.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
    torch.testing.assert_close(got, x_sel + g * f_orig, rtol=0, atol=1e-6)
    # the re-indexing bug would give a visibly different result
    assert (f_orig - f_reindexed).abs().max() > 1e-3
    assert (got - (x_sel + g * f_reindexed)).abs().max() > 1e-4


# 5. Attention only among the selected tokens.
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_unselected_tokens_are_not_keys_topk(attention):
    model = make_model(attention=attention)
    block = first_routed(model)
    fix_router_to_coordinate(block)
    x = hidden()
    with torch.no_grad():
        out, rec = block(x)
        x2 = x.clone()
        noise = 5.0 * torch.randn(x.shape[0], x.shape[1], D - 1, generator=torch.Generator().manual_seed(9))
        x2[..., 1:] = torch.where(rec.mask.unsqueeze(-1), x[..., 1:], x[..., 1:] + noise)  # r unchanged
        out2, rec2 = block(x2)
    assert torch.equal(rec2.indices, rec.indices)
    assert torch.equal(out2[rec.mask], out[rec.mask])  # selected tokens: identical
    assert torch.equal(out2[~rec.mask], x2[~rec.mask])  # unselected: passed through
    # control: perturbing a SELECTED token's hidden state does move the others (the block is not trivial)
    x3 = x.clone()
    b0_sel = rec.indices[0]
    x3[0, b0_sel[0], 1:] += 5.0
    with torch.no_grad():
        out3, _ = block(x3)
    later = b0_sel[1:]
    assert (out3[0, later] - out[0, later]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_skipped_tokens_are_not_keys_causal_mode(attention):
    model = make_model(causal_router="aux_loss", attention=attention)
    block = first_routed(model)
    fix_router_to_coordinate(block)
    x = hidden()
    with torch.no_grad():
        out, rec = block(x, routing_mode="causal")
        assert torch.equal(rec.mask, x[..., 0] > 0)
        assert 0 < rec.mask.sum() < rec.mask.numel()
        x2 = x.clone()
        noise = 5.0 * torch.randn(x.shape[0], x.shape[1], D - 1, generator=torch.Generator().manual_seed(9))
        x2[..., 1:] = torch.where(rec.mask.unsqueeze(-1), x[..., 1:], x[..., 1:] + noise)
        out2, rec2 = block(x2, routing_mode="causal")
    assert torch.equal(rec2.mask, rec.mask)
    torch.testing.assert_close(out2[rec.mask], out[rec.mask], rtol=0, atol=1e-6)
    assert torch.equal(out2[~rec.mask], x2[~rec.mask])


# 6. out = x + g(r) * f(x) on the selected tokens, exactly that formula.
@pytest.mark.parametrize("router_weight", ["sigmoid", "linear"])
def test_update_is_x_plus_gate_times_f(router_weight):
    model = make_model(router_weight=router_weight)
    block = first_routed(model)
    with torch.no_grad():  # make r sizeable so the wrong formulas differ clearly
        block.router.weight.mul_(10.0)
    x = hidden()
    with torch.no_grad():
        out, rec = block(x)
        idx = rec.indices
        gidx = idx.unsqueeze(-1).expand(-1, -1, D)
        x_sel = x.gather(1, gidx)
        r_sel = block.router(x).squeeze(-1).gather(1, idx).unsqueeze(-1)
        f = block.block.update(x_sel, positions=idx)
        g = torch.sigmoid(r_sel) if router_weight == "sigmoid" else r_sel
    got = out.gather(1, gidx)
    assert r_sel.abs().max() > 0.1
    torch.testing.assert_close(got, x_sel + g * f, rtol=0, atol=1e-6)
    # the public bugs give clearly different numbers
    assert (got - ((1 + g) * x_sel + g * f)).abs().max() > 1e-2  # residual added twice
    assert (got - g * (x_sel + f)).abs().max() > 1e-2  # residual scaled by r
    assert (got - (x_sel + f)).abs().max() > 1e-3  # no gate: router off the gradient path


# 7. Each routed block has its own router.
def test_each_routed_block_has_its_own_router():
    model = make_model(n_layers=4, route_every=1)
    routers = [b.router for b in routed_blocks(model)]
    assert len(routers) == 4
    weights = [r.weight for r in routers]
    assert len({id(w) for w in weights}) == 4
    assert len({w.data_ptr() for w in weights}) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(weights[i], weights[j])
    names = [n for n, _ in model.named_parameters() if "router" in n]
    assert len(names) == 4  # named_parameters() dedups shared tensors, so sharing would show fewer
    with torch.no_grad():
        weights[0].zero_()
    assert all(w.abs().sum() > 0 for w in weights[1:])


# 8. The router is trained by the LM loss alone; random routing has no router.
@pytest.mark.parametrize("router_weight", ["sigmoid", "linear"])
def test_router_gets_gradient_from_lm_loss(router_weight):
    model = make_model(router_weight=router_weight, causal_router="none", n_layers=4).train()
    tok = tokens()
    out = model(tok[:, :-1], targets=tok[:, 1:])
    assert out.aux_loss is None
    out.loss.backward()
    for block in routed_blocks(model):
        assert block.router.weight.grad is not None
        assert block.router.weight.grad.abs().sum() > 0


def test_random_routing_has_no_router():
    model = make_model(routing="random", n_layers=4)
    assert len(routed_blocks(model)) == 2
    for block in routed_blocks(model):
        assert block.router is None and block.predictor is None
    assert not [n for n, _ in model.named_parameters() if "router" in n or "predictor" in n]
    dense = make_model(routing="none", n_layers=4)
    assert model.num_params() == dense.num_params()


# 9. The predictor is isolated: its loss trains only itself; the LM loss never reaches it.
def test_predictor_loss_touches_only_the_predictor():
    model = make_model(causal_router="predictor", n_layers=4).train()
    tok = tokens()
    out = model(tok[:, :-1], targets=tok[:, 1:])
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    out.aux_loss.backward()
    touched = []
    for name, p in model.named_parameters():
        if "predictor" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            touched.append(name)
        else:
            assert p.grad is None or not p.grad.any(), name
    assert len(touched) == 2 * 4  # two routed blocks, two Linear layers with weight and bias each


def test_predictor_sees_the_residual_stream_at_any_scale():
    """At init the residual stream is at the embedding scale (std 0.02): an un-normalised predictor then sees only
    its bias, learns the base rate and skips every token at sampling. Its input is RMS-normalised."""
    model = make_model(causal_router="predictor", n_layers=4)
    x = torch.randn(2, 16, model.cfg.d_model)
    for block in routed_blocks(model):
        with torch.no_grad():
            small, large = block.predictor(0.02 * x), block.predictor(50.0 * x)
        torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)
        assert small.std() > 1e-3  # the logits depend on the token, not only on the bias


def test_lm_loss_gives_predictor_no_gradient():
    model = make_model(causal_router="predictor", n_layers=4).train()
    tok = tokens()
    out = model(tok[:, :-1], targets=tok[:, 1:])
    out.loss.backward()
    for name, p in model.named_parameters():
        if "predictor" in name:
            assert p.grad is None or not p.grad.any(), name
    assert all(b.router.weight.grad.abs().sum() > 0 for b in routed_blocks(model))


# 10. causal_router="aux_loss": the BCE reaches the router, scaled by aux_loss_weight.
def test_aux_loss_reaches_router_and_is_scaled():
    grads, losses = {}, {}
    for weight in (0.01, 0.03, 0.0):
        model = make_model(causal_router="aux_loss", aux_loss_weight=weight, n_layers=4).train()
        assert all(b.predictor is None for b in routed_blocks(model))
        out = model(tokens())
        raw = torch.stack([rec.aux_loss for rec in out.routing]).mean()
        torch.testing.assert_close(out.aux_loss, weight * raw)
        # the unweighted loss is the BCE of the router's logits against top-k membership
        rec = out.routing[0]
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            rec.router_logits, rec.topk_mask.float()
        )
        torch.testing.assert_close(rec.aux_loss, expected)
        out.aux_loss.backward()
        grads[weight] = [b.router.weight.grad.clone() for b in routed_blocks(model)]
        losses[weight] = raw.item()
        # only the routers (and what feeds them) get gradient from it; the LM head does not
        assert model.lm_head.weight.grad is None or not model.lm_head.weight.grad.any()
    assert losses[0.01] == pytest.approx(losses[0.03])
    for g1, g3, g0 in zip(grads[0.01], grads[0.03], grads[0.0], strict=True):
        assert g1.abs().sum() > 0
        torch.testing.assert_close(g3, 3.0 * g1, rtol=1e-4, atol=1e-9)
        assert not g0.any()


# 11. Capacity 1.0 processes every token: the routed block is the dense update scaled by g.
@pytest.mark.parametrize("router_weight", ["sigmoid", "linear"])
def test_full_capacity_is_gated_dense_block(router_weight):
    model = make_model(capacity=1.0, router_weight=router_weight)
    block = first_routed(model)
    x = hidden()
    with torch.no_grad():
        out, rec = block(x)
        r = block.router(x)
        expected = x + gate(model.cfg, r) * block.block.update(x)
    assert rec.mask.all()
    assert torch.equal(rec.indices, torch.arange(32).expand(3, 32))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# 12. k is fixed by capacity and length alone, and never 0.
@pytest.mark.parametrize(
    "capacity, t, k",
    [(0.125, 64, 8), (0.125, 16, 2), (0.25, 32, 8), (0.5, 17, 8), (0.95, 20, 19), (1.0, 8, 8), (0.01, 8, 1)],
)
def test_capacity_tokens_values(capacity, t, k):
    assert make_cfg(capacity=capacity, seq_len=64).capacity_tokens(t) == k


def test_capacity_tokens_float_rounding_and_default_length():
    assert make_cfg(capacity=0.29, seq_len=100).capacity_tokens() == 29  # 0.29 * 100 = 28.999...
    assert make_cfg(capacity=0.125, seq_len=64).capacity_tokens() == 8
    assert make_cfg(capacity=0.01, seq_len=64).capacity_tokens(1) == 1


@pytest.mark.parametrize("capacity", [0.01, 0.125, 0.3, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("t", [8, 13, 32])
def test_k_does_not_depend_on_data(capacity, t):
    model = make_model(capacity=capacity)
    block = first_routed(model)
    k = max(1, math.floor(round(capacity * t, 6)))
    assert model.cfg.capacity_tokens(t) == k
    with torch.no_grad():
        for seed in range(3):
            x = hidden(b=2, t=t, seed=seed) * (seed + 1)
            _, rec = block(x)
            assert rec.indices.shape == (2, k)
            assert rec.mask.sum(dim=1).tolist() == [k, k]


# 13. Causality.
def _assert_causal(model: Transformer, routing_mode: str, t: int = 16) -> None:
    tok = tokens(b=2, t=t, seed=5)
    with torch.no_grad():
        first = model(tok, routing_mode=routing_mode)
        base = first.logits
        for rec in first.routing:  # the routed blocks really skip some tokens and process others
            assert 0 < rec.mask.sum() < rec.mask.numel()
        for j in (3, 8, t - 1):
            tok2 = tok.clone()
            tok2[:, j] = (tok2[:, j] + 7) % VOCAB
            logits = model(tok2, routing_mode=routing_mode).logits
            torch.testing.assert_close(logits[:, :j], base[:, :j], rtol=0, atol=1e-6)
            assert (logits[:, j] - base[:, j]).abs().max() > 1e-4  # the change is seen from j on


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_dense_model_is_causal(attention):
    _assert_causal(make_model(routing="none", n_layers=3, attention=attention), "topk")


@pytest.mark.parametrize("causal_router", ["predictor", "aux_loss"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_mod_model_is_causal_in_causal_mode(causal_router, attention):
    model = make_model(causal_router=causal_router, n_layers=4, route_every=1, attention=attention)
    _assert_causal(model, "causal")


def test_topk_mode_is_not_causal():
    """A later token with a high router score pushes an earlier token out of the top-k: earlier logits move."""
    t = 8
    model = make_model(n_layers=2, route_every=1, capacity=0.5, seq_len=t, causal_router="none")
    block = model.blocks[0]
    fix_router_to_coordinate(block)
    with torch.no_grad():  # token id v has router score v / VOCAB in block 0
        model.tok_emb.weight[:, 0] = torch.arange(VOCAB, dtype=torch.float32) / VOCAB
    tok = torch.tensor([[10, 40, 20, 50, 30, 60, 15, 0]])
    tok2 = tok.clone()
    tok2[0, -1] = VOCAB - 1
    with torch.no_grad():
        a = model(tok)
        b = model(tok2)
    assert a.routing[0].indices.tolist() == [[1, 3, 4, 5]]
    assert b.routing[0].indices.tolist() == [[1, 3, 5, 7]]  # token 4 was pushed out by token 7
    assert (b.logits[0, :-1] - a.logits[0, :-1]).abs().max() > 1e-4
    # without a causal router there is no per-token decision to fall back on
    with pytest.raises(ValueError, match="causal_router"):
        model(tok, routing_mode="causal")


# 14. Causal mode: skipped tokens unchanged and no keys; processed ones attend among themselves.
@pytest.mark.parametrize("causal_router", ["predictor", "aux_loss"])
@pytest.mark.parametrize("router_weight", ["sigmoid", "linear"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_causal_mode_matches_manual_gather_scatter(causal_router, router_weight, attention):
    model = make_model(causal_router=causal_router, router_weight=router_weight, attention=attention)
    block = first_routed(model)
    x = hidden(b=4)
    with torch.no_grad():
        out, rec = block(x, routing_mode="causal")
        r = block.router(x).squeeze(-1)
        if causal_router == "predictor":
            expected_mask = block.predictor(x).squeeze(-1) > 0
        else:
            expected_mask = r > 0
        assert torch.equal(rec.mask, expected_mask)
        assert rec.indices is None
        counts = rec.mask.sum(dim=1)
        assert 0 < counts.sum() < rec.mask.numel()
        manual = x.clone()
        for b in range(x.shape[0]):
            sel = rec.mask[b].nonzero().flatten()
            if sel.numel() == 0:
                continue
            x_sel = x[b, sel].unsqueeze(0)
            f = block.block.update(x_sel, positions=sel.unsqueeze(0))
            manual[b, sel] = x_sel[0] + gate(model.cfg, r[b, sel]).unsqueeze(-1) * f[0]
    assert torch.equal(out[~rec.mask], x[~rec.mask])
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-5)
    # rows of skipped tokens used as keys would break the match: a full-causal update differs
    with torch.no_grad():
        f_full = block.block.update(x)
    leaky = torch.where(rec.mask.unsqueeze(-1), x + gate(model.cfg, r).unsqueeze(-1) * f_full, x)
    assert (leaky - manual).abs().max() > 1e-4


def test_causal_mode_with_all_tokens_equals_topk_at_full_capacity():
    model = make_model(capacity=1.0, causal_router="aux_loss")
    block = first_routed(model)
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[0, 0] = 1.0
    x = hidden()
    x[..., 0] = x[..., 0].abs() + 0.1  # r > 0 everywhere: every token processed in causal mode
    with torch.no_grad():
        out_c, rec_c = block(x, routing_mode="causal")
        out_t, _ = block(x, routing_mode="topk")
    assert rec_c.mask.all()
    torch.testing.assert_close(out_c, out_t, rtol=0, atol=1e-6)


def test_unknown_routing_mode_raises():
    model = make_model()
    with pytest.raises(ValueError, match="routing_mode"):
        model(tokens(), routing_mode="sideways")


# 15. Bad config values raise ValueError naming the field.
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(capacity=0), "capacity"),
        (dict(capacity=0.0), "capacity"),
        (dict(capacity=-0.1), "capacity"),
        (dict(capacity=1.5), "capacity"),
        (dict(capacity=float("nan")), "capacity"),
        (dict(route_every=0), "route_every"),
        (dict(route_every=-1), "route_every"),
        (dict(route_every=3, n_layers=2), "route_every"),
        (dict(n_heads=5), "n_heads"),
        (dict(d_model=24, n_heads=8), "n_heads"),  # head_dim 3: odd, rotary needs pairs
        (dict(routing="moe"), "routing"),
        (dict(router_weight="softmax"), "router_weight"),
        (dict(causal_router="oracle"), "causal_router"),
        (dict(attention="flash"), "attention"),
        (dict(mlp="relu"), "mlp"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(aux_loss_weight=-0.01), "aux_loss_weight"),
        (dict(aux_loss_weight=float("nan")), "aux_loss_weight"),
        (dict(d_ff=0), "d_ff"),
        (dict(d_model=0), "d_model"),
        (dict(n_layers=0), "n_layers"),
        (dict(seq_len=0), "seq_len"),
        (dict(predictor_hidden=0), "predictor_hidden"),
    ],
)
def test_bad_config_raises_naming_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        make_cfg(**overrides)


def test_route_every_beyond_layers_is_fine_without_routing():
    cfg = make_cfg(routing="none", route_every=5, n_layers=2)
    assert cfg.routed_layers == []
    assert make_cfg(route_every=2, n_layers=2).routed_layers == [1]  # route_every == n_layers is allowed


def test_config_is_revalidated_by_the_model():
    cfg = make_cfg()
    cfg.capacity = 2.0
    with pytest.raises(ValueError, match="capacity"):
        Transformer(cfg)


# 16. math == sdpa; tied embeddings; parameter counts.
@pytest.mark.parametrize(
    "overrides, mode",
    [
        (dict(routing="none"), "topk"),
        (dict(routing="topk", route_every=1), "topk"),
        (dict(routing="topk", route_every=2, router_weight="linear"), "topk"),
        (dict(routing="topk", route_every=1, causal_router="aux_loss"), "causal"),
        (dict(routing="topk", route_every=1, causal_router="predictor"), "causal"),
    ],
)
def test_math_and_sdpa_attention_agree(overrides, mode):
    a = make_model(attention="sdpa", n_layers=4, **overrides)
    b = make_model(attention="math", n_layers=4, **overrides)
    b.load_state_dict(a.state_dict())
    tok = tokens()
    with torch.no_grad():
        la = a(tok, routing_mode=mode).logits
        lb = b(tok, routing_mode=mode).logits
    attn_a = [m.use_math for m in a.modules() if hasattr(m, "use_math")]
    attn_b = [m.use_math for m in b.modules() if hasattr(m, "use_math")]
    assert attn_a == [False] * 4 and attn_b == [True] * 4
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)


def _expected_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, embedding part) from the architecture, counted by hand."""
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    up = (2 if cfg.mlp == "swiglu" else 1) * f
    block = 2 * d + 4 * d * d + d * up + f * d
    routed = d if cfg.routing == "topk" else 0
    if getattr(cfg, "has_predictor", False):
        h = cfg.predictor_dim
        routed += d * h + h + h + 1
    body = cfg.n_layers * block + len(cfg.routed_layers) * routed + d
    emb = v * d if cfg.tie_embeddings else 2 * v * d
    return body + emb, emb


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize(
    "overrides",
    [
        dict(routing="none"),
        dict(routing="topk", causal_router="predictor"),
        dict(routing="topk", causal_router="aux_loss", mlp="gelu"),
        dict(routing="random", d_ff=40),
    ],
)
def test_num_params_and_tied_embeddings(tie, overrides):
    model = make_model(tie_embeddings=tie, n_layers=3, **overrides)
    total, emb = _expected_params(model.cfg)
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - emb
    assert model.num_params() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if tie:
        assert model.lm_head.weight is model.tok_emb.weight
        with torch.no_grad():
            model.tok_emb.weight[3, 5] = 123.0
        assert model.lm_head.weight[3, 5].item() == 123.0
        untied = make_model(tie_embeddings=False, n_layers=3, **overrides)
        assert untied.num_params() - model.num_params() == VOCAB * D
        assert untied.num_params(non_embedding=True) == model.num_params(non_embedding=True)
    else:
        assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()


def test_tied_embeddings_train_one_matrix():
    model = make_model(tie_embeddings=True).train()
    tok = tokens()
    model(tok[:, :-1], targets=tok[:, 1:]).loss.backward()
    # one tensor, one gradient: from the lookup and from the head together
    assert model.tok_emb.weight.grad is model.lm_head.weight.grad
    rows_not_in_input = torch.ones(VOCAB, dtype=torch.bool)
    rows_not_in_input[tok[:, :-1].flatten()] = False
    assert model.tok_emb.weight.grad[rows_not_in_input].abs().sum() > 0  # only the head reaches those rows


# 17. Random routing: fresh tokens each call, always k, gate 1.
def test_random_routing_varies_and_has_unit_gate():
    model = make_model(routing="random", capacity=0.25)
    block = first_routed(model)
    x = hidden()
    k = model.cfg.capacity_tokens(32)
    torch.manual_seed(123)
    seen = []
    with torch.no_grad():
        for _ in range(4):
            out, rec = block(x)
            assert rec.indices.shape == (3, k)
            assert (rec.indices[:, 1:] > rec.indices[:, :-1]).all()
            assert rec.mask.sum(dim=1).tolist() == [k] * 3
            assert torch.equal(out[~rec.mask], x[~rec.mask])
            idx = rec.indices
            gidx = idx.unsqueeze(-1).expand(-1, -1, D)
            x_sel = x.gather(1, gidx)
            f = block.block.update(x_sel, positions=idx)
            torch.testing.assert_close(out.gather(1, gidx), x_sel + f, rtol=0, atol=1e-6)
            # router_logits are the noise that was ranked
            assert set(rec.router_logits[0].topk(k).indices.tolist()) == set(idx[0].tolist())
            seen.append(rec.indices.clone())
    assert any(not torch.equal(seen[0], s) for s in seen[1:])
    # and the batch rows are not all given the same tokens
    assert any(not torch.equal(seen[0][0], seen[0][b]) for b in range(1, 3))


def test_random_routing_decides_causally_from_top_k_s_tail():
    """Random routing's causal decision reads the same noise as top-k: the upper tail, with probability C.
    It once took the lower tail, so its causal_acc compared top-k with almost its complement (0.75 at C =
    0.125 where the same tail gives 0.98)."""
    model = make_model(routing="random", capacity=0.125)
    block = first_routed(model)
    r = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    k = model.cfg.capacity_tokens(256)
    topk = torch.zeros_like(r, dtype=torch.bool).scatter_(1, r.topk(k, dim=1).indices, True)
    causal = block.causal_decision(r, None)
    assert abs(causal.float().mean().item() - 0.125) < 0.01
    assert (causal == topk).float().mean().item() > 0.95


def test_random_routing_model_forward_and_loss():
    model = make_model(routing="random", n_layers=4, causal_router="predictor").train()
    tok = tokens()
    out = model(tok[:, :-1], targets=tok[:, 1:])
    assert out.aux_loss is None  # no router, no predictor for the control
    assert all(rec.predictor_logits is None and rec.aux_loss is None for rec in out.routing)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- GPU readiness, checked on the CPU -----------------------------------------------------------


@pytest.mark.parametrize("causal_router", ["predictor", "aux_loss"])
def test_router_and_predictor_score_in_fp32_under_bf16_autocast(causal_router):
    """bf16 router logits tie at the top-k cut (measured on an H200); the decision must come from fp32 scores."""
    cfg = model_config(d_model=32, n_heads=4, seq_len=64, routing="topk", causal_router=causal_router)
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, 256, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x)
    for rec in out.routing:
        assert rec.router_logits.dtype == torch.float32
        if rec.predictor_logits is not None:
            assert rec.predictor_logits.dtype == torch.float32
    assert out.aux_loss.dtype == torch.float32
    # The first routed block sees the same hidden state as an fp32 router applied to it by hand.
    block = model.blocks[cfg.routed_layers[0]]
    h = torch.randn(2, 64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = block.router_scores(h)
    torch.testing.assert_close(scores, h @ block.router.weight[0], rtol=1e-6, atol=1e-6)


def test_causal_mode_runs_plain_causal_attention_without_a_mask(monkeypatch):
    """No (B, 1, T, T) mask in causal routing mode: the fused attention kernels apply."""
    import torch.nn.functional as F

    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        seen.append((attn_mask, is_causal))
        return original(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for routing in ("topk", "random"):
        model = Transformer(model_config(d_model=32, n_heads=4, seq_len=32, routing=routing))
        with torch.no_grad():
            model(torch.randint(0, 256, (2, 32)), routing_mode="causal")
    assert seen and all(mask is None and causal for mask, causal in seen)


def test_random_routing_takes_its_noise_from_the_caller():
    """Noise drawn per sequence by the trainer: a sequence is routed alike whatever batch it sits in."""
    cfg = model_config(d_model=32, n_heads=4, seq_len=32, routing="random", capacity=0.25)
    model = Transformer(cfg)
    x = torch.randint(0, 256, (4, 32))
    noise = torch.randn(4, model.n_routed, 32)
    with torch.no_grad():
        whole = model(x, x, routing_noise=noise)
        halves = [model(x[i : i + 2], routing_noise=noise[i : i + 2]) for i in (0, 2)]
        causal = model(x, routing_mode="causal", routing_noise=noise)
    torch.testing.assert_close(torch.cat([h.logits for h in halves]), whole.logits, rtol=1e-5, atol=1e-5)
    for j, rec in enumerate(whole.routing):
        expected = noise[:, j].topk(8, dim=1).indices.sort(dim=1).values
        assert torch.equal(rec.indices, expected)
    # Causal mode: each token independently with probability `capacity`, from the same draw.
    threshold = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.75))
    for j, rec in enumerate(causal.routing):
        assert torch.equal(rec.mask, noise[:, j] > threshold)
