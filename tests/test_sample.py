"""KV-cache decoding under causal routing (modexp/sample.py): exact against recomputation, causal, and a routed
block's cache holds only the tokens it took."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from modexp.errors import ModexpError
from modexp.model import RoutedBlock, Transformer
from modexp.sample import Decoder, generate, load_model, next_token, render_routing, sample_cli
from modexp.tokenizer import ByteTokenizer
from modexp.variants import model_config

VOCAB = 64


def make_model(seed: int = 0, sparse: bool = False, **overrides) -> Transformer:
    """A tiny float32 model. sparse: shift each predictor's bias so it takes ~20% of tokens, so that sequences
    of a batch differ a lot in how many tokens a routed block takes (some take none in a prompt)."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, seq_len=16, d_model=32, n_layers=4, n_heads=4, init_std=0.1)
    fields.update(overrides)
    model = Transformer(model_config(**fields)).eval()
    if sparse:
        with torch.no_grad():
            tokens = torch.randint(0, VOCAB, (8, 16))
            for j, block in enumerate(b for b in model.blocks if isinstance(b, RoutedBlock)):
                logits = model(tokens, routing_mode="causal").routing[j].predictor_logits
                block.predictor[-1].bias -= torch.quantile(logits.flatten(), 0.8)
    return model


@torch.no_grad()
def recompute_greedy(model: Transformer, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, list]:
    """Greedy decoding without a cache: the whole sequence through model(seq, routing_mode="causal") per token."""
    model.rotary.ensure_length(prompt.shape[1] + steps)
    seq = prompt
    for _ in range(steps):
        logits = model(seq, routing_mode="causal").logits[:, -1]
        seq = torch.cat([seq, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return seq, model(seq, routing_mode="causal").routing


VARIANTS = {
    "dense": dict(routing="none"),
    "predictor-every1": dict(routing="topk", causal_router="predictor", route_every=1),
    "predictor-every2": dict(routing="topk", causal_router="predictor", route_every=2),
    "predictor-every2-sparse": dict(routing="topk", causal_router="predictor", route_every=2, sparse=True),
    "aux_loss-every1": dict(routing="topk", causal_router="aux_loss", route_every=1),
    "aux_loss-every2-linear": dict(
        routing="topk", causal_router="aux_loss", route_every=2, router_weight="linear"
    ),
}


@pytest.mark.parametrize("masked", [False, True], ids=["select", "masked"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_cache_equals_recompute(variant: str, masked: bool) -> None:
    overrides = dict(VARIANTS[variant])
    sparse = overrides.pop("sparse", False)
    model = make_model(sparse=sparse, **overrides)
    prompt = torch.randint(0, VOCAB, (4, 5), generator=torch.Generator().manual_seed(1))
    steps = 20  # 25 positions: past seq_len=16, so rotary tables must grow
    out, masks = generate(model, prompt, steps, temperature=0, return_routing=True, masked=masked)
    expected, routing = recompute_greedy(model, prompt, steps)
    assert out.shape == (4, 25)
    assert torch.equal(out, expected)
    assert len(masks) == len(model.cfg.routed_layers)
    for mask, record in zip(masks, routing):
        assert torch.equal(
            mask, record.mask
        )  # the same per-token decisions as the whole-sequence causal pass
    if masks:  # the batch's sequences take different numbers of tokens: per-sequence cache lengths are needed
        counts = torch.stack(masks).sum(dim=2)
        assert any(len(set(row.tolist())) > 1 for row in counts)


@pytest.mark.parametrize("masked", [False, True], ids=["select", "masked"])
def test_step_logits_match_recompute(masked: bool) -> None:
    model = make_model(routing="topk", causal_router="predictor", route_every=2)
    seq = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(seq, routing_mode="causal").logits
        decoder = Decoder(model, 3, 12, masked=masked)
        logits = [decoder.prefill(seq[:, :4])]
        logits += [decoder.step(seq[:, t]) for t in range(4, 11)]
    torch.testing.assert_close(torch.stack(logits, dim=1), full[:, 3:11], rtol=1e-5, atol=1e-5)


def test_causality() -> None:
    model = make_model(routing="topk", causal_router="predictor", route_every=1)
    seq = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(seq, routing_mode="causal")
        prefix = model(seq[:, :8], routing_mode="causal")
    # Logits and routing of a position do not depend on the tokens after it.
    torch.testing.assert_close(prefix.logits, full.logits[:, :8], rtol=1e-5, atol=1e-5)
    for a, b in zip(prefix.routing, full.routing):
        assert torch.equal(a.mask, b.mask[:, :8])
    # Generating further never changes the tokens already generated.
    short = generate(model, seq[:, :4], 6, temperature=0)
    longer = generate(model, seq[:, :4], 12, temperature=0)
    assert torch.equal(short, longer[:, :10])


@pytest.mark.parametrize("masked", [False, True], ids=["select", "masked"])
def test_routed_cache_holds_only_taken_tokens(masked: bool) -> None:
    model = make_model(sparse=True, routing="topk", causal_router="predictor", route_every=2)
    prompt = torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(4))
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0]))
        for i, block in enumerate(model.blocks)
        if isinstance(block, RoutedBlock)
    ]
    with torch.no_grad():
        decoder = Decoder(model, 4, 16, masked=masked)
        logits = decoder.prefill(prompt)
        seq = [prompt]
        for _ in range(10):
            seq.append(logits.argmax(dim=-1, keepdim=True))
            logits = decoder.step(seq[-1][:, 0])
        seq = torch.cat(seq, dim=1)  # the 16 tokens fed
        model(seq, routing_mode="causal")  # fills `inputs` with each routed block's input hidden states
    for hook in hooks:
        hook.remove()
    assert decoder.length == 16
    for i, mask in zip(decoder.routed, decoder.routing_masks()):
        lens = decoder.lens[i]
        assert torch.equal(lens, mask.sum(dim=1))  # one cache entry per taken token, none for a skipped one
        assert int(lens.max()) < 16 and int(lens.min()) < int(lens.max())
        inner = model.blocks[i].block
        for b in range(4):
            positions = mask[b].nonzero().squeeze(1)
            x = inputs[i][b : b + 1, positions]
            cos, sin = inner.rotary(positions)
            _, k, v = inner.attn.project(inner.attn_norm(x), cos, sin)
            n = int(lens[b])
            # The cache holds exactly the keys/values of the taken tokens, in order, at their own positions.
            torch.testing.assert_close(decoder.keys[i][b, :, :n], k[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(decoder.values[i][b, :, :n], v[0], rtol=1e-5, atol=1e-5)


class SyncCounter(TorchFunctionMode):
    """Counts the calls that make a host wait for the device on a GPU: a tensor read into Python (item, int,
    bool, tolist, ...) or an op whose output shape depends on the data (nonzero, boolean indexing, ...).

    On a CPU nothing waits, but the same calls are made, so counting them tests the decode path's syncs here.
    Each is counted once: at the Python call, or at the aten op where no counted Python call made it.
    """

    PYTHON = {"item", "tolist", "nonzero", "__int__", "__bool__", "__float__", "__index__", "cpu", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.inside = 0  # within a counted Python-level call: its aten ops are the same sync
        counter = self

        class _Aten(TorchDispatchMode):
            DATA_DEPENDENT = {"nonzero", "masked_select", "_unique", "_unique2", "unique_consecutive"}
            SCALAR = {"item", "_local_scalar_dense", "is_nonzero"}
            BOOL_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if counter.inside:
                    pass
                elif name in self.DATA_DEPENDENT | self.SCALAR:
                    counter.calls.append(f"aten.{name}")
                elif name in self.BOOL_INDEXED and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
                ):
                    counter.calls.append(f"aten.{name}[bool]")
                return func(*args, **(kwargs or {}))

        self._aten = _Aten()

    def __enter__(self) -> SyncCounter:
        super().__enter__()
        self._aten.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._aten.__exit__(*exc)
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") not in self.PYTHON or self.inside:
            return func(*args, **(kwargs or {}))
        self.calls.append(func.__name__)
        self.inside += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.inside -= 1


def test_sync_counter_sees_syncs() -> None:
    x = torch.tensor([1, 0, 2])
    with torch.inference_mode(), SyncCounter() as counter:
        int(x[0]), bool(x[1]), x.tolist(), x.nonzero(), x[x > 0], x.max().item()
        x + 1, x.argsort(stable=True), torch.where(x > 0, x, 0)  # no syncs
    assert counter.calls == ["__int__", "__bool__", "tolist", "nonzero", "aten.index[bool]", "item"]


@pytest.mark.parametrize("variant", ["predictor-every1", "aux_loss-every1"])
def test_decode_step_syncs(variant: str) -> None:
    """masked: no host sync at all per decoded token; select: exactly one per routed block (a count to gather)."""
    model = make_model(**VARIANTS[variant])  # 4 routed blocks
    prompt = torch.randint(0, VOCAB, (4, 5), generator=torch.Generator().manual_seed(1))
    for masked, per_step in ((True, 0), (False, 4)):
        with torch.inference_mode():
            decoder = Decoder(model, 4, 12, masked=masked)
            logits = decoder.prefill(prompt)
            with SyncCounter() as counter:
                for _ in range(6):
                    logits = decoder.step(next_token(logits, 0.8, 5))
        assert len(counter.calls) == 6 * per_step, counter.calls
    # generate: the prompt's one sync per routed block, however many tokens follow.
    for steps in (1, 7):
        with SyncCounter() as counter:
            generate(model, prompt, steps, temperature=0.8, top_k=5, masked=True, return_routing=True)
        assert counter.calls == ["tolist"] * 4


def test_dense_decode_step_passes_no_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """One new query attends to every cached key: no mask (SDPA may pick its fused kernels), not causal."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[-2], k.shape[-2], attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    model = make_model()  # dense: 4 blocks
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoder = Decoder(model, 2, 8)
        decoder.prefill(prompt)
        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
        logits = decoder.step(prompt[:, 0])
    assert calls == [(1, 6, True, False)] * 4  # (queries, keys, no mask, not causal)
    monkeypatch.undo()
    with torch.no_grad():
        full = model(torch.cat([prompt, prompt[:, :1]], dim=1)).logits[:, -1]
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)


BF16_VARIANTS = {
    "predictor": dict(routing="topk", causal_router="predictor", route_every=2),
    "aux_loss": dict(routing="topk", causal_router="aux_loss", route_every=1),
    "random": dict(routing="random", capacity=0.5, route_every=2),
}


@pytest.mark.parametrize("masked", [False, True], ids=["select", "masked"])
@pytest.mark.parametrize("variant", list(BF16_VARIANTS))
def test_bf16_autocast_sampling(variant: str, masked: bool) -> None:
    """Under bf16 autocast (what training and `modexp generate` use on a GPU) MoD sampling runs, the caches
    take autocast's dtype, and cached decoding agrees with recomputation within bf16 rounding."""
    model = make_model(**BF16_VARIANTS[variant])
    seq = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, masks = generate(
            model, seq[:, :4], 12, temperature=0.8, top_k=8, return_routing=True, masked=masked
        )
        assert out.shape == (3, 16) and [m.shape for m in masks] == [(3, 16)] * len(model.cfg.routed_layers)
        with torch.no_grad():
            decoder = Decoder(model, 3, 16, masked=masked)
            assert decoder.keys[0].dtype == torch.bfloat16
            logits = [decoder.prefill(seq[:, :4])] + [decoder.step(seq[:, t]) for t in range(4, 15)]
            full = model(seq[:, :15], routing_mode="causal")
    logits = torch.stack(logits, dim=1).float()
    assert torch.isfinite(logits).all()
    if variant == "random":  # its decisions are random draws: the two passes do not share them
        return
    # A decision near the threshold may flip under bf16 rounding; compare the sequences routed alike.
    alike = torch.stack(
        [(m == r.mask).all(dim=1) for m, r in zip(decoder.routing_masks(), full.routing)]
    ).all(dim=0)
    assert alike.sum() >= 2
    torch.testing.assert_close(logits[alike], full.logits[alike, 3:15].float(), rtol=0.02, atol=0.05)


def test_random_routing_decodes() -> None:
    model = make_model(routing="random", capacity=0.5, route_every=2)
    torch.manual_seed(0)
    out, masks = generate(model, torch.zeros(2, 3, dtype=torch.long), 8, return_routing=True)
    assert out.shape == (2, 11) and len(masks) == 2 and masks[0].shape == (2, 11)


def test_sampling_is_seeded() -> None:
    model = make_model(routing="topk", causal_router="predictor", route_every=2)
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(5))

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return generate(model, prompt, 12, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(sample(7, temperature=0.8, top_k=5), sample(7, temperature=0.8, top_k=5))
    assert not torch.equal(sample(7, temperature=1.5), sample(8, temperature=1.5))
    assert torch.equal(sample(7, top_k=1), generate(model, prompt, 12, temperature=0))


def test_next_token_top_k_and_zero_probabilities() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0]]).repeat(500, 1)
    drawn = next_token(logits, 1.0, top_k=2, generator=generator)
    assert set(drawn.tolist()) == {1, 2}  # only the top 2, and both of them
    certain = torch.tensor([[float("-inf"), 0.0, float("-inf")]]).repeat(100, 1)
    assert set(next_token(certain, 1.0, generator=generator).tolist()) == {1}
    assert next_token(torch.tensor([[1.0, 3.0, 2.0]]), 0.0).tolist() == [1]


def test_generate_rejects_bad_arguments() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1)
    with pytest.raises(ValueError, match="prompt_tokens"):
        generate(model, torch.zeros(2, dtype=torch.long), 3)
    assert torch.equal(
        generate(model, torch.ones(1, 2, dtype=torch.long), 0), torch.ones(1, 2, dtype=torch.long)
    )


def save_run(run_dir: Path, model: Transformer) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": asdict(model.cfg),
            "optimizer": {"state": {}, "param_groups": []},
            "step": 3,
        },
        run_dir / "checkpoints" / "last.pt",
    )


def test_load_model_round_trip(tmp_path: Path) -> None:
    model = make_model(routing="topk", causal_router="predictor", route_every=2)
    save_run(tmp_path / "run", model)
    loaded = load_model(tmp_path / "run")
    assert loaded.cfg == model.cfg and not loaded.training
    tokens = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModexpError, match="does not exist") as missing:
        load_model(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModexpError, match="is not a run folder"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "run.json").write_text("{}")
    with pytest.raises(ModexpError, match="last.pt"):
        load_model(tmp_path / "empty")
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}}, tmp_path / "bad" / "checkpoints" / "last.pt")
    with pytest.raises(ModexpError, match="no 'model_config' entry"):
        load_model(tmp_path / "bad")
    torch.save({"model": {}, "model_config": {"d_model": 32}}, tmp_path / "bad" / "checkpoints" / "last.pt")
    with pytest.raises(ModexpError, match="cannot load .*Missing key"):
        load_model(tmp_path / "bad")


def test_sample_cli(tmp_path: Path) -> None:
    model = make_model(vocab_size=256, routing="topk", causal_router="predictor", route_every=2)
    save_run(tmp_path / "run", model)
    args = dict(max_new_tokens=12, temperature=1.0, top_k=20, seed=3, device="cpu")
    plain = sample_cli(str(tmp_path / "run"), "héllo", show_routing=False, **args)
    assert plain.startswith("héllo") and plain == sample_cli(
        str(tmp_path / "run"), "héllo", show_routing=False, **args
    )
    # The CLI's default device is "auto": it must resolve to a real device before loading.
    assert (
        sample_cli(str(tmp_path / "run"), "héllo", show_routing=False, **{**args, "device": "auto"}) == plain
    )
    shown = sample_cli(str(tmp_path / "run"), "héllo", show_routing=True, **args)
    text, _, table = shown.partition("\n\n")
    assert text == plain
    picture, shares = table.rsplit("\n\n", 1)
    assert re.fullmatch(r"block 1: \d+% processed, block 3: \d+% processed", shares), shares
    lines = picture.splitlines()
    assert [line.split("|")[0].strip() for line in lines] == ["text", "block 1", "block 3"]
    n_bytes = len("héllo".encode()) + 12
    for line in lines:
        assert len(line.split("|")[1]) == n_bytes  # one column per byte, aligned under the text
    assert set(lines[1].split("|")[1]) <= {"#", "."}
    with pytest.raises(ModexpError, match="does not exist"):
        sample_cli(str(tmp_path / "missing"), "x", show_routing=False, **args)


def test_render_routing_keeps_columns_aligned_and_wraps() -> None:
    text = list(b"def f():\n\treturn 1\n") * 8  # 176 bytes with newlines and tabs
    masks = [torch.arange(len(text)) % 8 == 0, torch.zeros(len(text), dtype=torch.bool)]
    picture = render_routing(ByteTokenizer().pieces(text), masks, [1, 3], width=50)
    chunks = picture.split("\n\n")
    assert len(chunks) == 4 + 1  # ceil(176 / 50) pictures, then the shares
    first = chunks[0].splitlines()
    assert first[0].split("|")[1].startswith("def f():↵→return 1↵")  # no '?' for newlines and tabs
    assert all(len(line.split("|")[1]) == 50 for line in first)
    assert chunks[-1] == "block 1: 12% processed, block 3: 0% processed"


def test_sample_cli_dense_and_non_byte_model(tmp_path: Path) -> None:
    save_run(tmp_path / "dense", make_model(vocab_size=256))
    out = sample_cli(str(tmp_path / "dense"), "ab", 4, 0.0, None, True, 0, "cpu")
    assert "dense model" in out
    save_run(tmp_path / "small", make_model())
    with pytest.raises(ModexpError, match="vocab_size=64"):
        sample_cli(str(tmp_path / "small"), "ab", 4, 0.0, None, False, 0, "cpu")
