"""Mixture-of-Recursions as a plug-in (modexp/mor/, conf/sweep/mor.yaml, docs/mor.md): its counts against the
model, hierarchical filtering, causal decoding with recursion-wise caches, its preset, and that it is a plug-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_counts_match, run_main

from modexp import flops, variants
from modexp.variants import base as registry

SHAPE = dict(vocab_size=64, seq_len=32, d_model=32, n_heads=2)


@pytest.fixture(scope="module")
def mor():
    """The plug-in registered for these tests only: the registry is restored after."""
    kinds = dict(registry._REGISTRY)
    import modexp.mor

    registry._REGISTRY["mor"] = modexp.mor.MoR()
    yield modexp.mor
    registry._REGISTRY.clear()
    registry._REGISTRY.update(kinds)


def config(**overrides):
    return variants.model_config(**{**SHAPE, "routing": "recursion", "n_layers": 5, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(causal_router="aux_loss", router_weight="linear"),
        dict(causal_router="none", recursions=2, n_layers=6),
        dict(recursions=3, n_layers=8, recursion_capacity=0.25, mlp="gelu", tie_embeddings=True),
        dict(recursions=1, n_layers=3),
    ],
    ids=["r3", "r3-aux-linear", "r2-m2-none", "r3-m2-c0.25-gelu-tied", "r1"],
)
def test_counts_match_the_counter(mor, overrides) -> None:
    """Parameters (the shared block once) and FLOPs (each recursion on its k_r tokens, each router on the tokens
    still active) as the config counts them are the model's, forward and backward, to 1e-9."""
    assert_counts_match(config(**overrides))


def test_the_shared_block_is_counted_once_and_routed_recursions_cost_less(mor) -> None:
    cfg = config(n_layers=8, recursions=3)  # first, 3 x 2 shared layers, last
    dense = variants.get("baseline").model_config(vars(cfg))
    block = flops.attention_params(cfg) + flops.mlp_params(cfg)
    routers = 2 * cfg.router_params()  # recursion 1 takes every token: no router
    assert cfg.parameters()[0] == dense.parameters()[0] - 4 * block + routers
    assert cfg.tokens() == [32, 21, 10] and cfg.routed() == [False, True, True]
    assert cfg.routed_layers == [3, 5]
    assert flops.count(cfg).train_per_token < flops.count(dense).train_per_token


def test_each_recursion_takes_its_k_among_the_tokens_still_active(mor) -> None:
    """Hierarchical filtering: recursion r takes exactly k_r tokens per sequence, all of them taken by recursion
    r - 1; a token that left is bit-for-bit what the recursions it passed made of it."""
    torch.manual_seed(0)
    model = variants.build_model(config())
    stack = model.blocks[1]
    x = torch.randn(3, 32, 32)
    with torch.no_grad():
        out, records = stack(x)
        first = stack.shared(x, None)  # recursion 1 takes every token
    ks = stack.cfg.tokens(32)
    assert [r.mask.sum(1).tolist() for r in records] == [[ks[1]] * 3, [ks[2]] * 3]
    assert bool((records[1].mask <= records[0].mask).all())  # only tokens recursion 2 took go on
    assert bool((records[1].scored == records[0].mask).all()) and bool(records[0].scored.all())
    left = ~records[0].mask
    assert torch.equal(out[left], first[left])
    assert [r.layer for r in records] == stack.cfg.routed_layers


def test_causal_mode_is_causal_and_decoding_matches_it(mor) -> None:
    """Causal routing depends on the past only, and the KV-cache decoder (recursion-wise caches: a recursion's
    cache holds only the tokens that reached it) continues exactly as the causal forward reads the sequence."""
    from modexp.sample import Decoder, generate

    torch.manual_seed(1)
    model = variants.build_model(config(n_layers=8)).eval()
    x = torch.randint(0, 64, (4, 32))
    with torch.no_grad():
        full = model(x, routing_mode="causal").logits
        prefix = model(x[:, :20], routing_mode="causal").logits
        out, masks = generate(model, x[:, :6], 26, temperature=0, return_routing=True)
        again = model(out, routing_mode="causal")
        decoder = Decoder(model, 4, 32)
        decoder.prefill(out)
    torch.testing.assert_close(prefix, full[:, :20], rtol=1e-5, atol=1e-5)
    assert torch.equal(again.logits[:, 5:-1].argmax(-1), out[:, 6:])
    assert all(torch.equal(m, r.mask) for m, r in zip(masks, again.routing))
    cache = decoder.caches[1]
    assert torch.equal(cache.lens, cache.taken.sum(-1))  # each recursion cached what it took, and only that
    assert bool((cache.taken[2] <= cache.taken[1]).all())


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (dict(n_layers=4), "n_layers=4 is not allowed with recursions=3"),
        (dict(recursions=0), "recursions=0 is not allowed"),
        (dict(recursion_capacity=1.5), "recursion_capacity=1.5 is not allowed"),
        (dict(recursion_capacity=0.0), "recursion_capacity=0.0 is not allowed"),
    ],
)
def test_bad_settings_name_the_value(mor, overrides, says) -> None:
    with pytest.raises(ValueError, match=says):
        config(**overrides)


def test_ids_read_back(mor) -> None:
    for overrides, name, words in [
        ({}, "mor_r3", "MoR 3 recursions"),
        (dict(recursion_capacity=0.25, causal_router="aux_loss"), "mor_r3_c0.25_aux",
         "MoR 3 recursions, the last takes 25%, aux-loss causal router"),
        (dict(recursions=2, n_layers=4, router_weight="linear"), "mor_r2_lin", "MoR 2 recursions, linear router weight"),
    ]:  # fmt: skip
        cfg = config(**overrides)
        assert variants.of_model(cfg) is variants.get("mor") and variants.get("mor").name(cfg) == name
        assert variants.label(name) == words
    assert (
        variants.label("mor_r03") is None and variants.label("mod_c0.125_e2") == "MoD 12.5%, every 2nd block"
    )


def test_the_preset_plans_baseline_mod_and_mor_at_equal_flops(mor, tmp_path: Path, capsys) -> None:
    rc, out, err = run_main(["plan", "sweep=mor", f"runs_dir={tmp_path}", "--format", "json"], capsys)
    assert rc == 0, err
    runs = [r for r in json.loads(out) if r["role"] == "run"]
    kinds = {variants.of_id(r["variant"]).kind for r in runs}
    assert kinds == {"baseline", "mod", "mor"}
    for budget in {r["budget"] for r in runs}:
        at = [r for r in runs if r["budget"] == budget]
        assert {variants.of_id(r["variant"]).kind for r in at} == kinds
        assert all(abs(r["flops"] / budget - 1) < 0.01 for r in at)
    mor_runs = [r for r in runs if r["variant"] == "mor_r3"]
    assert len(mor_runs) >= 12 and all(r["n_layers"] == 5 for r in mor_runs)


def test_it_is_a_plugin(tmp_path: Path) -> None:
    """modexp without the plug-in knows no MoR: nothing else in the package imports or names it, and its kind
    exists only once its module is loaded."""
    package = Path(variants.__file__).parent.parent
    outside = [
        p
        for p in package.rglob("*.py")
        if "mor" not in p.relative_to(package).parts
        and ("modexp.mor" in p.read_text() or "MoRConfig" in p.read_text())
    ]
    assert not outside
    probe = "import modexp.config, modexp.plan, modexp.sweep; from modexp import variants; print(variants.kinds())"
    kinds = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "mor" not in kinds and "baseline" in kinds


@pytest.mark.slow
def test_a_run_trains_samples_and_exports(mor, tmp_path: Path, capsys) -> None:
    """One MoR run end to end: trained, sampled with causal routing (its recursions shown), exported and loaded."""
    runs = tmp_path / "runs"
    args = ["train", "sweep=smoke", "plugins=[modexp.mor]", "model.routing=recursion", "model.n_layers=5",
            "model.d_model=16", "model.n_heads=2", "budget=3e9", "sweep.min_tokens_per_param=0.1",
            f"runs_dir={runs}"]  # fmt: skip
    rc, out, err = run_main(args, capsys)
    assert rc == 0, err
    run = Path(out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["routing"] == "recursion" and summary["recursions"] == 3
    assert summary["val_loss_causal"] is not None
    rc, out, err = run_main(["sample", str(run), "--max-new-tokens", "8", "--show-routing"], capsys)
    assert rc == 0 and "recursion 2: " in out and "recursion 3: " in out, err
    rc, out, err = run_main(["export", str(run), "--out", str(tmp_path / "export")], capsys)
    assert rc == 0, err
    from modexp.export import load_export

    model = load_export(tmp_path / "export")
    assert type(model.blocks[1]).__name__ == "RecursionStack"
