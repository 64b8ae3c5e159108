"""Mixture of experts and Mixture-of-Depths-and-Experts (modexp/model/experts.py): what each token does.

Tiny float32 models on the CPU with fixed seeds. The rules: each expert sees only the tokens it chose; a token
no expert takes gets no MLP update (bit for bit); a token MoD skips (staged MoDE) leaves the whole block bit for
bit; integrated MoDE's routed blocks still run attention on every token; the router is on the gradient path;
the causal path decides from each token alone, and the KV-cache decoder agrees with it.
"""

from __future__ import annotations

import pytest
import torch

from modexp.model import ModelConfig, MoE, RoutedBlock, Transformer
from modexp.sample import Decoder, generate
from modexp.variants import model_config

D, VOCAB = 32, 64
FORMS = {
    "moe": dict(moe=True),
    "mode_staged": dict(moe=True, routing="topk", capacity=0.5),
    "mode_integrated": dict(moe=True, routing="integrated", capacity=0.5, noop_experts=1),
}


def make_cfg(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=VOCAB,
        seq_len=32,
        d_model=D,
        n_layers=2,
        n_heads=4,
        route_every=2,
        experts=4,
        expert_capacity=0.25,
        causal_router="predictor",
        init_std=0.1,
    )
    fields.update(overrides)
    return model_config(**fields)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(make_cfg(**overrides)).eval()


def tokens(b: int = 3, t: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def hidden(b: int = 3, t: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(seed))


def moe_of(block: torch.nn.Module) -> MoE:
    mlp = block.block.mlp if isinstance(block, RoutedBlock) else block.mlp
    assert isinstance(mlp, MoE)
    return mlp


def test_each_expert_sees_exactly_its_top_k_tokens() -> None:
    model = make_model(**FORMS["moe"])
    moe = moe_of(model.blocks[0])
    x = hidden()
    seen: list[torch.Tensor] = []
    hooks = [e.register_forward_hook(lambda _m, args, _out: seen.append(args[0])) for e in moe.experts]
    with torch.no_grad():
        moe(x, routing_mode="topk")
    for h in hooks:
        h.remove()
    k = model.cfg.capacity_tokens(32, 0.25)
    weights = moe.router_logits(x).softmax(-1)
    for e, rows in enumerate(seen):
        assert rows.shape == (3, k, D)  # static shape: k_e = expert_capacity * T tokens, no more
        idx = weights[..., e].topk(k, dim=1).indices.sort(dim=1).values
        assert torch.equal(rows, x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D)))  # its tokens, in order
        assert torch.equal(moe.last.mask[..., e], torch.zeros(3, 32, dtype=torch.bool).scatter_(1, idx, True))


def test_output_is_weighted_sum_of_the_experts_that_chose_the_token() -> None:
    model = make_model(**FORMS["moe"])
    moe = moe_of(model.blocks[0])
    x = hidden()
    with torch.no_grad():
        out = moe(x, routing_mode="topk")
        weights = moe.router_logits(x).softmax(-1)
        expected = sum(
            torch.where(moe.last.mask[..., e : e + 1], weights[..., e : e + 1] * expert(x), 0.0)
            for e, expert in enumerate(moe.experts)
        )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    untaken = ~moe.last.mask.any(-1)
    assert untaken.any() and (out[untaken] == 0).all()  # no expert: exactly no MLP update


@pytest.mark.parametrize("form", ["moe", "mode_integrated"])
def test_token_no_expert_takes_gets_attention_and_no_mlp_bit_for_bit(form: str) -> None:
    """Integrated MoDE's no-op route: the token passes attention, and the MLP is left out entirely."""
    model = make_model(**FORMS[form])
    layer = 1  # the routed block in integrated MoDE (route_every=2)
    block = model.blocks[layer]
    moe = moe_of(block)
    assert moe.n_noop == (1 if form == "mode_integrated" else 0)
    x = hidden()
    with torch.no_grad():
        out = block(x, routing_mode="topk")
        cos, sin = block.rotary(32)
        after_attn = x + block.attn(block.attn_norm(x), cos, sin)
    skipped = ~moe.last.mask.any(-1)
    assert skipped.any()
    assert torch.equal(out[skipped], after_attn[skipped])  # residual + attention, bit for bit
    assert not torch.equal(out[skipped], x[skipped])  # attention did run for them
    assert not torch.equal(out[~skipped], after_attn[~skipped])  # the others got an MLP update


def test_integrated_capacity_sets_the_compute() -> None:
    """A routed block's real experts take capacity x expert_capacity of its tokens; other blocks are plain MoE."""
    model = make_model(**FORMS["mode_integrated"])
    with torch.no_grad():
        out = model(tokens(), routing_mode="topk")
    plain, routed = out.experts
    assert plain.mask.sum(1).unique().tolist() == [8]  # 0.25 * 32 per expert and sequence
    assert routed.mask.sum(1).unique().tolist() == [4]  # 0.25 * 0.5 * 32
    assert routed.router_logits.shape[-1] == 5 and plain.router_logits.shape[-1] == 4  # + 1 no-op expert
    assert out.routing == []  # no block is skipped whole


def test_staged_skipped_token_keeps_its_vector_bit_for_bit() -> None:
    model = make_model(**FORMS["mode_staged"])
    block = model.blocks[1]
    assert isinstance(block, RoutedBlock)
    x = hidden()
    with torch.no_grad():
        out, record = block(x, routing_mode="topk")
    assert torch.equal(out[~record.mask], x[~record.mask])
    assert not torch.equal(out[record.mask], x[record.mask])
    # The MoE inside saw only the k tokens MoD selected; each expert took expert_capacity of those.
    k = model.cfg.capacity_tokens(32)
    assert moe_of(block).last.mask.shape == (3, k, 4)
    assert moe_of(block).last.mask.sum(1).unique().tolist() == [model.cfg.capacity_tokens(k, 0.25)]


def test_experts_ignore_tokens_they_did_not_take() -> None:
    """Perturbing a token no expert takes changes no other token's MLP update (selection held fixed)."""
    model = make_model(**FORMS["moe"])
    moe = moe_of(model.blocks[0])
    x = hidden()
    with torch.no_grad():
        out = moe(x, routing_mode="topk")
        mask = moe.last.mask.clone()
        untaken = ~mask.any(-1)
        b, t = [int(i) for i in untaken.nonzero()[0]]
        y = x.clone()
        y[b, t] *= 1e-3  # smaller input: its router scores shrink, so no expert picks it now either
        out2 = moe(y, routing_mode="topk")
    assert torch.equal(moe.last.mask, mask)
    assert torch.equal(out2, out)


@pytest.mark.parametrize("form", list(FORMS))
def test_router_on_gradient_path(form: str) -> None:
    """With no causal-router loss, the LM loss alone gives every MoE router (and MoD router) a gradient."""
    model = make_model(**FORMS[form], causal_router="none").train()
    x = tokens()
    model(x, x).loss.backward()
    for block in model.blocks:
        assert moe_of(block).router.weight.grad.abs().sum() > 0
        if isinstance(block, RoutedBlock):
            assert block.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("causal_router", ["predictor", "aux_loss"])
@pytest.mark.parametrize("form", list(FORMS))
def test_causal_path_is_causal(form: str, causal_router: str) -> None:
    model = make_model(**FORMS[form], causal_router=causal_router, n_layers=4)
    seq = tokens(2, 24)
    with torch.no_grad():
        full = model(seq, routing_mode="causal")
        prefix = model(seq[:, :10], routing_mode="causal")
    torch.testing.assert_close(prefix.logits, full.logits[:, :10], rtol=1e-5, atol=1e-5)
    for block, a, b in zip(model.blocks, prefix.experts, full.experts):
        if not isinstance(block, RoutedBlock):  # MoD's causal pass reorders a routed block's tokens
            assert torch.equal(a.mask, b.mask[:, :10])


def test_causal_decision_needs_a_causal_router() -> None:
    model = make_model(**FORMS["moe"], causal_router="none")
    with pytest.raises(ValueError, match="causal_router=predictor or aux_loss"):
        model(tokens(), routing_mode="causal")


@pytest.mark.parametrize("form", list(FORMS))
def test_decoder_matches_causal_forward(form: str) -> None:
    """modexp.sample's KV-cache decoder (unchanged) gets the MoE's causal decision through Block.finish."""
    model = make_model(**FORMS[form], n_layers=4, seq_len=16)
    seq = tokens(3, 12)
    with torch.no_grad():
        full = model(seq, routing_mode="causal").logits
        for masked in (False, True):
            decoder = Decoder(model, 3, 12, masked=masked)
            logits = [decoder.prefill(seq[:, :4])] + [decoder.step(seq[:, t]) for t in range(4, 11)]
            torch.testing.assert_close(torch.stack(logits, dim=1), full[:, 3:11], rtol=1e-5, atol=1e-5)
    out = generate(model, seq[:, :4], 20, temperature=0)  # past seq_len: rotary tables grow
    assert out.shape == (3, 24)


@pytest.mark.parametrize("form", list(FORMS))
def test_aux_losses_train_the_causal_decision(form: str) -> None:
    """The predictor's BCE reaches the predictor only; aux_loss's reaches the router."""
    model = make_model(**FORMS[form]).train()
    x = tokens()
    out = model(x, x)
    assert len(out.experts) == 2 and all(r.aux_loss is not None for r in out.experts)
    out.aux_loss.backward()
    for block in model.blocks:
        moe = moe_of(block)
        assert moe.predictor[1].weight.grad.abs().sum() > 0
        assert moe.router.weight.grad is None or moe.router.weight.grad.abs().sum() == 0
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in moe.experts.parameters())


@pytest.mark.parametrize("form", list(FORMS))
def test_activation_checkpointing_gives_the_same_gradients(form: str) -> None:
    x = tokens()
    grads = []
    for recompute in (False, True):
        model = make_model(**FORMS[form]).train()
        model.activation_checkpointing = recompute
        out = model(x, x)
        (out.loss + out.aux_loss).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(routing="integrated"), "routing=integrated with model.moe=false is no variant kind"),
        (dict(routing="integrated", moe=True, noop_experts=0), "needs moe=true and noop_experts >= 1"),
        (dict(moe=True, experts=0), r"experts=0 is not allowed: it must be an integer >= 1"),
        (dict(moe=True, expert_capacity=1.5), r"expert_capacity=1.5 is not allowed: it must lie in \(0, 1\]"),
        (dict(noop_experts=-1), r"noop_experts=-1 is not allowed"),
        (dict(moe="yes"), r"moe='yes' is not allowed: choose one of false, true"),
    ],
)
def test_validation_names_the_bad_value(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_cfg(**overrides)
