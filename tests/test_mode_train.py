"""MoE and MoDE variants end to end at smoke scale: plan names and ladders, a training run with its causal
validation loss, resume from a mid-run checkpoint, and sampling from the trained run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import drop_new_handlers, read_metrics, train_in_process

import modexp.checkpoint as checkpoint_mod
from modexp import flops
from modexp.analysis.figures import variant_label
from modexp.config import compose_config, to_typed
from modexp.plan import active_params, inert_keys, plan_sweep, run_identity, variant_model
from modexp.sample import load_model

KINDS = {
    "moe": ["model.moe=true"],
    "mode_staged": ["model.moe=true", "model.routing=topk", "model.capacity=0.5"],
    "mode_integrated": ["model.moe=true", "model.routing=integrated", "model.capacity=0.5"],
}
TINY = ["sweep=smoke", "budget=4e9", "model.d_model=16", "model.n_heads=2", "train.lr_law={}"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MODEXP_THREADS", "1")
    threads = torch.get_num_threads()
    handlers = list(logging.getLogger().handlers)
    yield
    torch.set_num_threads(threads)
    drop_new_handlers(handlers)


def test_variants_plan_with_readable_names_and_active_size_ladders() -> None:
    cfg = to_typed(
        compose_config(
            ["sweep=smoke", "sweep.variants=[baseline,moe,mode_staged,mode_integrated]"], export=False
        )
    )
    plan = plan_sweep([cfg])
    names = {r.variant for r in plan.runs}
    assert names == {
        "baseline",
        "moe_x4_k0.25",
        "mode_staged_c0.125_e2_x4_k0.25",
        "mode_integrated_c0.125_e2_x4_k0.25_n1",
    }
    for name in names:
        assert "_" not in variant_label(name)  # every id reads back as words
    for run in plan.runs:
        moe = run.variant != "baseline"
        assert getattr(run.model, "moe", False) == moe  # a baseline's config has no MoE setting at all
        assert (run.accounting["params"] > active_params(run.model)) == moe  # experts counted, not all active
    # A compute-matched MoE (4 experts x 25%) is centred like the baseline: on about the same active sizes.
    budget = max(r.budget for r in plan.runs)
    base = sorted(r.model.d_model for r in plan.runs if r.budget == budget and r.variant == "baseline")
    moe = sorted(r.model.d_model for r in plan.runs if r.budget == budget and r.variant.startswith("moe"))
    assert base == moe


def test_identity_keeps_earlier_run_ids_and_names_expert_settings() -> None:
    cfg = to_typed(compose_config(["sweep=smoke"], export=False))
    baseline = variant_model(cfg.model, "baseline", None)
    assert not {"moe", "experts", "expert_capacity", "noop_experts"} & set(
        run_identity(cfg, baseline, 1e9)["model"]
    )
    moe = variant_model(cfg.model, "moe", None)
    arch = run_identity(cfg, moe, 1e9)["model"]
    assert arch["experts"] == 4 and "noop_experts" not in arch and "capacity" not in arch
    assert arch["causal_router"] == "predictor"  # an MoE decides causally too
    assert "noop_experts" not in inert_keys(variant_model(cfg.model, "mode_integrated", None))


def test_verdict_compares_each_mode_form_with_the_moe_too() -> None:
    import pandas as pd

    from modexp.analysis.verdict import comparisons

    curves = [
        "baseline",
        "moe_x4_k0.25",
        "mode_staged_c0.125_e2_x4_k0.25",
        "mode_integrated_c0.125_e2_x4_k0.25_n1",
    ]
    pairs = comparisons(pd.DataFrame({"curve": curves, "variant": curves}))
    assert set(pairs) == {(c, "baseline") for c in curves[1:]} | {(c, "moe_x4_k0.25") for c in curves[2:]}


def test_expert_settings_sweep_from_the_command_line() -> None:
    from modexp.config import expand_overrides

    combos = expand_overrides(["sweep=smoke", "sweep.variants=[moe]", "model.expert_capacity=0.25,0.5"])
    plan = plan_sweep([to_typed(compose_config(c, export=False)) for c in combos])
    assert {r.variant for r in plan.runs} == {"moe_x4_k0.25", "moe_x4_k0.5"}


def test_sweep_variants_and_settings_are_checked() -> None:
    from modexp.errors import ModexpError

    with pytest.raises(ModexpError, match="sweep.variants contains 'mode'.*mode_staged, mode_integrated"):
        to_typed(compose_config(["sweep.variants=[mode]"], export=False))
    with pytest.raises(
        ModexpError, match=r"model.expert_capacity=2.0 is not allowed: it must lie in \(0, 1\]"
    ):
        to_typed(compose_config(["model.expert_capacity=2"], export=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("mode_runs") / "runs"
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("MODEXP_THREADS", "1")
        for kind, extra in KINDS.items():
            rc, stdout, err = train_in_process(["train", *TINY, *extra, f"runs_dir={runs}"])
            assert rc == 0, err
            out[kind] = Path(stdout.strip())
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_training_records_causal_loss_and_expert_use(trained: dict[str, Path], kind: str) -> None:
    run_dir = trained[kind]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["variant"].startswith(kind)
    assert summary["experts"] == 4 and summary["causal_router"] == "predictor"
    assert summary["noop_experts"] == (1 if kind == "mode_integrated" else 0)
    assert (
        summary["val_loss"] < 5.0 and summary["val_loss_causal"] < 5.0
    )  # learnt something from ln 256 = 5.5
    spec = json.loads((run_dir / "run.json").read_text())
    assert spec["accounting"]["params"] == summary["params"]
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert "expert_frac/0" in train[-1] and "expert_causal_acc/0" in train[-1]
    model = load_model(run_dir)
    assert model.cfg.moe and flops.count(model.cfg).params == model.num_params()


@pytest.mark.parametrize("kind", list(KINDS))
def test_sampling_a_trained_run(trained: dict[str, Path], kind: str) -> None:
    rc, out, err = train_in_process(
        ["sample", str(trained[kind]), "--max-new-tokens", "12", "--prompt", "def "]
    )
    assert rc == 0, err
    assert out.startswith("def ")


@pytest.mark.parametrize("kind", ["mode_staged", "mode_integrated"])
def test_resume_matches_the_uninterrupted_run(
    trained: dict[str, Path], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop the run right after its step-10 checkpoint (as a signal would), rerun: the same losses."""
    argv = ["train", *TINY, *KINDS[kind], f"runs_dir={tmp_path / 'runs'}", "train.checkpoint_every=10"]
    real_save = checkpoint_mod.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if state["step"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", save_then_stop)
    rc, _, _ = train_in_process(argv)
    assert rc != 0
    monkeypatch.setattr(checkpoint_mod, "save_checkpoint", real_save)
    rc, out, err = train_in_process(argv)
    assert rc == 0, err
    run_dir = Path(out.strip())
    assert run_dir.name == trained[kind].name
    assert json.loads((run_dir / "meta.json").read_text())["resumed_from_step"] == 10
    a = json.loads((trained[kind] / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)
    assert b["val_loss_causal"] == pytest.approx(a["val_loss_causal"], abs=1e-4)


def test_analysis_of_four_variants_ends_with_curves_and_the_mode_verdict(tmp_path: Path) -> None:
    """`modexp analyze` on a table of baseline, MoE and both MoDE forms (Chinchilla-shaped losses): the
    summary has every variant's verdict against the baseline and each MoDE form's against the MoE."""
    import numpy as np
    import pandas as pd
    from fixtures_results import SWEEP_LAW, chinchilla_loss, optimal_params

    variants = {  # name: (FLOPs per token over 6N, factor on the size term: lower is better)
        "baseline": (1.0, 1.0),
        "moe_x4_k0.25": (0.5, 0.9),
        "mode_staged_c0.125_e2_x4_k0.25": (0.3, 0.85),
        "mode_integrated_c0.125_e2_x4_k0.25_n1": (0.4, 0.85),
    }
    rng = np.random.default_rng(0)
    rows = []
    for budget in (1e11, 3e11, 1e12):
        for variant, (fpt, a) in variants.items():
            law = {**SWEEP_LAW, "a": SWEEP_LAW["a"] * a}
            centre = optimal_params(budget, fpt, law["a"], law["b"])
            for params in (centre * 10**o for o in np.linspace(-0.6, 0.6, 5)):
                tokens = budget / (6 * fpt * params)
                loss = float(chinchilla_loss(params, tokens, **law)) * (1 + 0.001 * rng.standard_normal())
                causal = loss if variant == "baseline" else loss * 1.003
                rows.append(dict(variant=variant, budget=budget, params=int(params), tokens=int(tokens),
                                 flops=budget, val_loss=loss, val_loss_causal=causal))  # fmt: skip
    table = tmp_path / "mode.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    rc, _, err = train_in_process(["analyze", "--table", str(table), "--out", str(tmp_path / "out")])
    assert rc == 0, err
    summary = (tmp_path / "out" / "summary.txt").read_text()
    from modexp.analysis.labels import variant_label

    for variant in list(variants)[1:]:
        assert f"{variant_label(variant)} vs baseline: m" in summary
    for variant in list(variants)[2:]:
        assert f"{variant_label(variant)} vs {variant_label('moe_x4_k0.25')}: m" in summary
    assert (tmp_path / "out" / "isoflop.png").exists() and (tmp_path / "out" / "verdict.png").exists()
