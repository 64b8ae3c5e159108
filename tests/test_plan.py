"""FLOP accounting and isoFLOP planning: presets, run ids, comma lists, output formats, bad input."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_main

from modexp.config import compose_config, to_typed
from modexp.data import load_corpus
from modexp.plan import plan_sweep
from modexp.sweep import build_study, write_plan
from modexp.units import sci, si

PRESETS = ("smoke", "demo", "cpu", "gpu", "paper")
# Ladders in which the centred window would run past the limits: 4 sizes are asked for, the MoD window centred
# 3x higher runs into sweep.min_tokens_per_param on its large side (the old planner then kept only 3).
TIGHT = [
    "sweep=smoke",
    "sweep.budgets=[1e11,1e12]",
    "sweep.sizes_per_budget=4",
    "sweep.mod_size_shift=3",
    "sweep.min_tokens_per_param=2",
    "sweep.max_tokens_per_param=200",
]
ROW_KEYS = {
    "run_id",
    "variant",
    "budget",
    "shape",
    "params",
    "non_embedding_params",
    "train_flops_per_token",
    "tokens",
    "steps",
    "flops",
    "tokens_per_param",
    "epochs",
    "est_time_s",
    "status",
}


def study(tmp_path: Path, *overrides: str):
    return build_study([f"runs_dir={tmp_path / 'runs'}", *overrides])


def by_key(runs) -> dict[tuple[float, str, str], str]:
    """(budget, variant, shape) -> run_id."""
    return {(r.budget, r.variant, r.shape): r.run_id for r in runs}


def preset(name: str) -> list[str]:
    # The gpu preset's runs would repeat the embedded stdlib corpus ~44 times: it plans only past that guard.
    return [f"sweep={name}", *(["sweep.max_epochs=1000"] if name == "gpu" else [])]


def sizes(runs) -> dict[tuple[float, str], list[str]]:
    """(budget, variant) -> its shapes, smallest first (a shape trained at several seeds counted once)."""
    out: dict[tuple[float, str], list[str]] = {}
    for r in runs:
        shapes = out.setdefault((r.budget, r.variant), [])
        if r.shape not in shapes:
            shapes.append(r.shape)
    return out


def assert_full_or_noted(s) -> None:
    """Every (budget, variant) has sizes_per_budget sizes, or exactly one note saying how many fit."""
    n = s.configs[0][1].sweep.sizes_per_budget
    for (budget, variant), shapes in sizes(s.plan.runs).items():
        head = f"budget {sci(budget)} {variant}: "
        short = [note for note in s.plan.notes if note.startswith(head) and " sizes fit " in note]
        if len(shapes) == n:
            assert not short, short
        else:
            assert len(short) == 1, (budget, variant, shapes, s.plan.notes)
            assert short[0].startswith(f"{head}{len(shapes)} of {n} sizes fit ({shapes[0]}..{shapes[-1]})")


def text_corpus(tmp_path: Path, n_bytes: int) -> Path:
    """One UTF-8 file of n_bytes: its training split is the first 95% (data.val_fraction=0.05)."""
    path = tmp_path / "corpus.txt"
    path.write_text(("the quick brown fox jumps over the lazy dog\n" * (n_bytes // 44 + 1))[:n_bytes])
    return path


# --- presets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_plans_within_one_percent(name: str, tmp_path: Path) -> None:
    s = study(tmp_path, *preset(name))
    cfg = s.configs[0][1]
    assert cfg.sweep.name == name
    runs = s.plan.runs
    assert runs
    for r in runs:
        assert abs(r.flops / r.budget - 1) < 0.01, (r.run_id, r.flops, r.budget)
        # tokens and steps are consistent with the FLOPs actually spent
        assert r.flops == pytest.approx(r.tokens * r.accounting["train_flops_per_token"], rel=1e-9)
        assert r.tokens == r.num_sequences * r.model.seq_len
        assert r.steps == math.ceil(r.num_sequences / r.batch_size)
    # every budget has every variant
    assert {r.budget for r in runs} == set(cfg.sweep.budgets)
    for budget in cfg.sweep.budgets:
        variants = {r.variant.split("_")[0] for r in runs if r.budget == budget}
        assert variants == set(cfg.sweep.variants), budget
    assert_full_or_noted(s)
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_paper_plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(
        ["plan", "sweep=paper", f"runs_dir={tmp_path / 'runs'}", "--format", "json"], capsys
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert rows
    assert {r["budget"] for r in rows} == {6e18, 2e19, 1e20}
    for budget in (6e18, 2e19, 1e20):
        assert {r["variant"] for r in rows if r["budget"] == budget} == {"baseline", "mod_c0.125_e2"}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert abs(r["flops"] / r["budget"] - 1) < 0.01
        assert r["status"] == "pending"
        assert r["tokens"] % 2048 == 0
        # Nothing measured here: training at the preset's 4e14 FLOP/s, launcher.startup_s (1 s), and the
        # evaluations' forward passes at the same rate (a few per cent of a run).
        assert r["flops"] / 4e14 + 1 < r["est_time_s"] < 1.05 * r["flops"] / 4e14 + 1.1
    s = study(tmp_path, "sweep=paper")
    assert {spec.run_id for spec in s.plan.runs} == {r["run_id"] for r in rows}
    for spec in s.trained:
        cfg, run_id = s.run_config(spec), spec.run_id
        assert cfg.train.batch_size == 128, run_id
        assert cfg.model.seq_len == 2048, run_id
        assert cfg.sweep.name == "paper"


def test_smoke_has_two_budgets_two_variants() -> None:
    s = build_study(["sweep=smoke", "runs_dir=/nonexistent/never"])
    assert sorted({r.budget for r in s.plan.runs}) == [4e9, 1e10]
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2"}
    assert all(r.model.seq_len == 64 and r.batch_size == 8 for r in s.plan.runs)


def test_smoke_has_two_sizes_per_budget_and_variant() -> None:
    s = build_study(["sweep=smoke", "runs_dir=/nonexistent/never"])
    for budget in (4e9, 1e10):
        for variant in ("baseline", "mod_c0.125_e2"):
            shapes = {r.shape for r in s.plan.runs if r.budget == budget and r.variant == variant}
            assert len(shapes) >= 2, (budget, variant, shapes)


@pytest.mark.parametrize("name", PRESETS)
def test_mod_ladder_reaches_further_up(name: str) -> None:
    s = build_study([*preset(name), "runs_dir=/nonexistent/never"])
    for budget in {r.budget for r in s.plan.runs}:
        base = [r.accounting["params"] for r in s.plan.runs if r.budget == budget and r.variant == "baseline"]
        mod = [
            r.accounting["params"] for r in s.plan.runs if r.budget == budget and r.variant.startswith("mod")
        ]
        assert base and mod
        assert max(mod) > max(base), (budget, max(mod), max(base))


@pytest.mark.parametrize("name", ["demo", "cpu", "gpu", "paper"])
def test_study_presets_plan_at_least_three_sizes(name: str) -> None:
    s = build_study([*preset(name), "runs_dir=/nonexistent/never"])
    for budget in s.configs[0][1].sweep.budgets:
        for variant in {r.variant for r in s.plan.runs}:
            n = sum(1 for r in s.plan.runs if r.budget == budget and r.variant == variant)
            assert n >= 3, (name, budget, variant, n)


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_honest_presets_include_the_random_routing_control(name: str) -> None:
    s = build_study([*preset(name), "runs_dir=/nonexistent/never"])
    for budget in s.configs[0][1].sweep.budgets:
        assert any(r.budget == budget and r.variant == "random_c0.125_e2" for r in s.plan.runs), budget


def test_demo_ladders_are_whole() -> None:
    """The demo's 1e11 MoD ladder once lost d8 (too many tokens/param) and planned 5 sizes; now it slides up."""
    s = build_study(["sweep=demo", "runs_dir=/nonexistent/never"])
    ladders = sizes(s.plan.runs)
    assert all(len(shapes) == 6 for shapes in ladders.values()), ladders
    assert ladders[(1e11, "mod_c0.125_e2")] == ["d12-l4", "d16-l4", "d20-l4", "d24-l4", "d32-l4", "d40-l4"]
    assert s.plan.notes[0] == (
        "budget 1e11 mod_c0.125_e2: sizes d12-l4..d40-l4 sit off-centre, above the expected optimum: "
        "smaller ones fail, e.g. d8-l4: 265 tokens/param > sweep.max_tokens_per_param=250"
    )
    # The demo's largest sizes lie past the sizes its LR grid (sweep=demo_lr) measured: said, not hidden.
    outside = [r for r in s.plan.runs if r.lr_domain]
    assert outside and all("outside the sizes it was fitted on" in n for n in s.plan.notes[1:])
    assert {n.split(":")[0] for n in s.plan.notes[1:]} == {r.variant for r in outside}


# --- full ladders -----------------------------------------------------------------------------------


def test_ladders_keep_their_size_when_the_centre_runs_past_a_limit(tmp_path: Path) -> None:
    s = study(tmp_path, *TIGHT)
    ladders = sizes(s.plan.runs)
    assert set(ladders) == {(b, v) for b in (1e11, 1e12) for v in ("baseline", "mod_c0.125_e2")}
    assert all(len(shapes) == 4 for shapes in ladders.values()), ladders
    # MoD's window slid down to the largest sizes that fit rather than losing its large side, and one line
    # says so, naming the next rung up and the limit it fails.
    widths = s.configs[0][1].sweep.ladder.widths
    for budget in (1e11, 1e12):
        mod = [r for r in s.plan.runs if r.budget == budget and r.variant == "mod_c0.125_e2"]
        next_up = min(w for w in widths if w > mod[-1].model.d_model)
        lines = [n for n in s.plan.notes if n.startswith(f"budget {sci(budget)} mod_c0.125_e2: ")]
        assert len(lines) == 1, s.plan.notes
        assert f"sizes {mod[0].shape}..{mod[-1].shape} sit off-centre, below the expected optimum" in lines[0]
        assert f"larger ones fail, e.g. d{next_up}-l4: " in lines[0]
        assert "sweep.min_tokens_per_param=2" in lines[0]
    assert not [n for n in s.plan.notes if "baseline" in n]  # the baseline's centred ladders fit whole


def test_fewer_admissible_sizes_are_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = study(tmp_path, *TIGHT, "sweep.sizes_per_budget=8")
    ladders = sizes(s.plan.runs)
    assert all(4 < len(shapes) < 8 for shapes in ladders.values()), ladders  # all that fit, both sides
    assert_full_or_noted(s)
    assert len(s.plan.notes) == len(ladders)
    widths = sorted(s.configs[0][1].sweep.ladder.widths)
    for budget, variant in ladders:
        # every size that fits is planned: the rungs just outside the ladder are the ones that fail
        planned = [r.model.d_model for r in s.plan.runs if (r.budget, r.variant) == (budget, variant)]
        below = max(w for w in widths if w < planned[0])
        above = min(w for w in widths if w > planned[-1])
        (note,) = [n for n in s.plan.notes if n.startswith(f"budget {sci(budget)} {variant}: ")]
        assert f"smaller ones fail, e.g. d{below}-l4: " in note and "sweep.max_tokens_per_param=200" in note
        assert f"larger ones fail, e.g. d{above}-l4: " in note and "sweep.min_tokens_per_param=2" in note

    # Printed, the short ladders are one warning line, each ladder named, and the limits that stop them.
    argv = ["plan", *TIGHT, "sweep.sizes_per_budget=8", f"runs_dir={tmp_path / 'runs'}"]
    rc, out, err = run_main(argv, capsys)
    assert rc == 0, err
    line = out.splitlines()[-1]  # after the table and its total
    assert line.startswith(f"warning: {len(ladders)} ladders are short or off-centre ("), line
    for (budget, variant), shapes in ladders.items():
        assert f"{sci(budget)} {variant} {len(shapes)} of 8 sizes" in line, line
    assert "sweep.max_tokens_per_param=200" in line and "sweep.min_tokens_per_param=2" in line
    rc, out, err = run_main([*argv, "--format", "csv"], capsys)
    assert rc == 0 and err.splitlines() == [line]
    assert len(pd.read_csv(io.StringIO(out))) == len(s.plan.runs)
    rc, out, err = run_main(["sweep", "--dry-run", *argv[1:]], capsys)
    assert rc == 0 and line in out.splitlines()
    assert not (tmp_path / "runs").exists()

    write_plan(s, [])
    assert json.loads((s.dir / "plan.json").read_text())["notes"] == s.plan.notes


def test_terminal_table_leaves_the_flop_accounting_to_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 0, err
    header = out.splitlines()[0].split()
    assert "epochs" in header
    assert "non_embedding_params" not in header and "train_flops_per_token" not in header


# --- data repetition ---------------------------------------------------------------------------------


def test_epochs_are_tokens_over_the_training_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = text_corpus(tmp_path, 400_000)
    over = ["sweep=smoke", "data=text", f"data.path={corpus}"]
    s = study(tmp_path, *over)
    n_train = 400_000 - 20_000
    for r in s.plan.runs:
        assert r.epochs == pytest.approx(r.tokens / n_train), r.run_id
    assert 0 < max(r.epochs for r in s.plan.runs) <= 4
    assert not (tmp_path / "runs").exists()  # counted, not prepared
    cfg = s.configs[0][1]
    cfg.data.cache_dir = str(tmp_path / "cache")
    assert len(load_corpus(cfg.data, 64).train) == n_train  # the count is what preparation gives

    rc, out, err = run_main(["plan", *over, f"runs_dir={tmp_path / 'runs'}", "--format", "csv"], capsys)
    assert rc == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame["epochs"]) == pytest.approx([r.epochs for r in s.plan.runs])


def test_epochs_count_a_directory_split_by_file(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(30):
        (folder / f"part{i}.txt").write_text("word " * (2_000 + 100 * i))
    s = study(tmp_path, "sweep=smoke", "data=text", f"data.path={folder}", "sweep.max_epochs=1000")
    cfg = s.configs[0][1]
    cfg.data.cache_dir = str(tmp_path / "cache")
    n_train = len(load_corpus(cfg.data, 64).train)
    assert n_train < sum(f.stat().st_size + 1 for f in folder.iterdir())  # some files are held out for val
    for r in s.plan.runs:
        assert r.epochs == pytest.approx(r.tokens / n_train), r.run_id


def test_too_many_epochs_refuse_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = text_corpus(tmp_path, 40_000)
    over = ["sweep=smoke", "data=text", f"data.path={corpus}", f"runs_dir={tmp_path / 'runs'}"]
    largest = max(study(tmp_path, *over, "sweep.max_epochs=1000").plan.runs, key=lambda r: r.tokens)
    rc, out, err = run_main(["plan", *over], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modexp: error: "), err
    line = lines[0]
    assert f"run {largest.run_id} would see its training data {si(largest.tokens / 38_000)} times" in line
    assert f"sweep.max_epochs=4: it trains on {sci(largest.tokens)} tokens" in line
    assert f"data.path={corpus} has 3.8e4 training tokens" in line
    assert f"at least {sci(largest.tokens / 4)} training tokens (data=tokens data.path=DIR)" in line
    assert "smaller budgets" in line and "raise sweep.max_epochs" in line
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    rc, _, err = run_main(["sweep", "--dry-run", *over], capsys)
    assert rc == 2 and "sweep.max_epochs=4" in err
    assert not (tmp_path / "runs").exists()


def test_train_refuses_too_many_epochs_before_its_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = text_corpus(tmp_path, 2_000)  # 1,900 training bytes; the run trains on ~13k tokens
    runs = tmp_path / "runs"
    argv = ["train", "sweep=smoke", "budget=2e9", "model.d_model=16", "model.n_heads=2", f"runs_dir={runs}"]
    rc, out, err = run_main([*argv, "data=text", f"data.path={corpus}"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "sweep.max_epochs=4" in lines[0] and "1.9e3 training tokens" in lines[0], err
    assert not (runs / "smoke").exists()


def test_gpu_preset_needs_a_corpus_of_its_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    rc, out, err = run_main(["plan", "sweep=gpu", f"runs_dir={runs}"], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "sweep.max_epochs=4" in lines[0] and "data.name=stdlib has " in lines[0], err
    rc, out, err = run_main(["plan", "sweep=gpu", "sweep.max_epochs=1000", f"runs_dir={runs}"], capsys)
    assert rc == 0, err
    assert_full_or_noted(study(tmp_path, "sweep=gpu", "sweep.max_epochs=1000"))
    assert not runs.exists()


def test_unknown_corpus_plans_with_a_note(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=paper")  # data=tokens without data.path: a plan needs no data
    assert all(r.epochs is None for r in s.plan.runs)
    assert "epochs not known: data.path is not set, so sweep.max_epochs=4 is not checked yet" in s.plan.notes


# --- run ids -----------------------------------------------------------------------------------------


def test_run_ids_are_stable_across_fresh_composes(tmp_path: Path) -> None:
    a = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    b = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    assert a == b
    assert len(set(a.values())) == len(a)  # unique
    for (_budget, variant, shape), run_id in a.items():
        assert run_id.startswith(f"{variant}-{shape}-")


@pytest.mark.parametrize(
    "override", ["train.lr=0.001", "seed=1", "model.capacity=0.25", "train.batch_size=4"]
)
def test_run_ids_change_with_what_determines_the_result(tmp_path: Path, override: str) -> None:
    ref = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    other = by_key(study(tmp_path, "sweep=smoke", override).plan.runs)
    mod_ref = {k[::2]: v for k, v in ref.items() if k[1].startswith("mod")}  # (budget, shape) -> id
    mod_other = {k[::2]: v for k, v in other.items() if k[1].startswith("mod")}
    common = mod_ref.keys() & mod_other.keys()
    assert common
    for key in common:
        assert mod_ref[key] != mod_other[key], (override, key)


def test_run_ids_change_with_budget(tmp_path: Path) -> None:
    a = study(tmp_path, "sweep=smoke", "sweep.budgets=[1e10]").plan.runs
    b = study(tmp_path, "sweep=smoke", "sweep.budgets=[1.1e10]").plan.runs
    ids_a = {(r.variant, r.shape): r.run_id for r in a}
    ids_b = {(r.variant, r.shape): r.run_id for r in b}
    common = ids_a.keys() & ids_b.keys()
    assert common
    for key in common:
        assert ids_a[key] != ids_b[key]


@pytest.mark.parametrize(
    "override",
    [
        "tracker.wandb.mode=offline",
        "tracker.wandb.mode=disabled",
        "train.log_every=1",
        "train.checkpoint_every=7",
        "train.eval_every=3",
        "launcher.workers=3",
    ],
)
def test_run_ids_ignore_tracking_paths_and_cadence(tmp_path: Path, override: str) -> None:
    ref = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    assert by_key(study(tmp_path, "sweep=smoke", override).plan.runs) == ref


def test_run_ids_ignore_runs_dir(tmp_path: Path) -> None:
    a = build_study(["sweep=smoke", f"runs_dir={tmp_path / 'a'}"])
    b = build_study(["sweep=smoke", f"runs_dir={tmp_path / 'b' / 'deeper'}"])
    assert by_key(a.plan.runs) == by_key(b.plan.runs)


@pytest.mark.parametrize(
    "override", ["model.capacity=0.5", "model.route_every=4", "model.causal_router=aux_loss"]
)
def test_baseline_ids_ignore_mod_only_settings(tmp_path: Path, override: str) -> None:
    ref = {k: v for k, v in by_key(study(tmp_path, "sweep=smoke").plan.runs).items() if k[1] == "baseline"}
    other = {
        k: v
        for k, v in by_key(study(tmp_path, "sweep=smoke", override).plan.runs).items()
        if k[1] == "baseline"
    }
    assert ref and other == ref


# --- comma lists (Hydra sweep syntax) ----------------------------------------------------------------


def test_comma_list_gives_one_config_per_value(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.capacity=0.125,0.5")
    assert len(s.configs) == 2
    variants = {r.variant for r in s.plan.runs}
    assert {"mod_c0.125_e2", "mod_c0.5_e2"} <= variants
    for budget in (4e9, 1e10):
        for v in ("baseline", "mod_c0.125_e2", "mod_c0.5_e2"):
            assert any(r.budget == budget and r.variant == v for r in s.plan.runs), (budget, v)
    # the c0.125 runs are exactly those of the plain study
    plain = by_key(study(tmp_path, "sweep=smoke").plan.runs)
    swept = by_key(s.plan.runs)
    for key, run_id in plain.items():
        if key[1] == "mod_c0.125_e2":
            assert swept[key] == run_id


def test_comma_list_capacity_dedups_baseline(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.capacity=0.125,0.5")
    plain = study(tmp_path, "sweep=smoke")
    base = sorted((r.budget, r.shape) for r in s.plan.runs if r.variant == "baseline")
    assert base == sorted((r.budget, r.shape) for r in plain.plan.runs if r.variant == "baseline")
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2", "mod_c0.5_e2"}


def test_comma_list_route_every_dedups_baseline(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.route_every=2,4")
    assert {r.variant for r in s.plan.runs} == {"baseline", "mod_c0.125_e2", "mod_c0.125_e4"}
    base = [(r.budget, r.shape) for r in s.plan.runs if r.variant == "baseline"]
    assert len(base) == len(set(base))


def test_route_every_4_plans_on_four_layer_rungs(tmp_path: Path) -> None:
    s = study(tmp_path, "sweep=smoke", "model.route_every=4")
    mods = [r for r in s.plan.runs if r.variant == "mod_c0.125_e4"]
    assert mods
    for r in mods:
        assert r.model.n_layers >= 4 and r.model.route_every == 4
        assert r.model.routed_layers == [3]


# --- output formats ----------------------------------------------------------------------------------


def test_csv_parses_with_pandas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(
        ["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}", "--format", "csv"], capsys
    )
    assert rc == 0, err
    frame = pd.read_csv(io.StringIO(out))
    s = study(tmp_path, "sweep=smoke")
    assert len(frame) == len(s.plan.runs)
    assert ROW_KEYS <= set(frame.columns)
    assert list(frame["run_id"]) == [r.run_id for r in s.plan.runs]
    assert ((frame["flops"] / frame["budget"] - 1).abs() < 0.01).all()
    assert (frame["status"] == "pending").all()


def test_table_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["variant", "budget", "shape"] and lines[0].split()[-1] == "id"
    s = study(tmp_path, "sweep=smoke")
    for r in s.plan.runs:  # each run on its own row: variant, shape and the id hash its folder ends in
        variant, shape, digest = r.variant, r.shape, r.run_id.rsplit("-", 1)[1]
        assert any(
            line.split()[0] == variant and shape in line.split() and line.split()[-1] == digest
            for line in lines
        ), r.run_id
    assert any(f"{len(s.plan.runs)} runs" in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_planning_is_fast(tmp_path: Path) -> None:
    cfg = to_typed(compose_config(["sweep=paper", f"runs_dir={tmp_path}"]))
    t0 = time.perf_counter()
    plan = plan_sweep([cfg])
    elapsed = time.perf_counter() - t0
    assert plan.runs
    assert elapsed < 5.0, elapsed


# --- bad input ---------------------------------------------------------------------------------------

BAD = [
    (["plan", "sweep=smoke", "sweep.budgets=[-1]"], "-1"),
    (["plan", "sweep=smoke", "sweep.budgets=[0]"], "sweep.budgets"),
    (["plan", "sweep=smoke", "sweep.budgets=[abc]"], "abc"),
    (["train", "sweep=smoke", "budget=-5"], "budget=-5"),
    (["plan", "sweep=smoke", "sweep.budgets=[10]"], "budget 1e1"),
    (["plan", "sweep=smoke", "sweep.budgets=[]"], "sweep.budgets is empty"),
    (["plan", "sweep=smoke", "sweep.variants=[]"], "sweep.variants is empty"),
    (
        ["plan", "sweep=smoke", "model.capacity=abc"],
        "model.capacity=abc is not allowed: model.capacity expects a number",
    ),
    (["plan", "sweep=smoke", "train.batch_size=1.5"], "train.batch_size expects a whole number"),
    (["plan", "sweep=smoke", "model.tie_embeddings=maybe"], "expects true or false"),
    (["plan", "sweep=smoke", "foo"], "'foo' is not an override: key=value expected"),
    (["plan", "sweep=nope"], "choose one of cpu, cpu_lr, demo, demo_lr, gpu, mode, mor, paper, smoke"),
    (["plan", "sweep=smoke", "data=nope"], "choose one of stdlib, text, tokens"),
    (["plan", "sweep=smoke", "model.capcity=0.5"], "did you mean model.capacity?"),
    (["plan", "sweep=smoke", "+model.foo=1"], "model.foo is not a modexp setting"),
    (
        ["plan", "sweep=smoke", "data=text", "data.path=/no/such/corpus"],
        "data.path=/no/such/corpus does not exist",
    ),
    (["train", "sweep=smoke", "budget=1e6"], "give budget >= "),
    (["plan", "sweep=smoke", "model.capacity=0"], "model.capacity"),
    (["plan", "sweep=smoke", "model.capacity=1.5"], "1.5"),
    (["plan", "sweep=smoke", "model.route_every=0"], "model.route_every=0"),
    (["plan", "sweep=nope"], "nope"),
    (["plan", "sweep=smoke", "nokey=1"], "nokey"),
    (["plan", "sweep=smoke", "model.nokey=1"], "model.nokey"),
    (["plan", "sweep=smoke", "device=tpu"], "tpu"),
    (["plan", "sweep=smoke", "tracker.wandb.mode=sometimes"], "sometimes"),
    (["sweep", "--dry-run", "sweep=smoke", "sweep.budgets=[-1]"], "-1"),
    (["train", "sweep=smoke", "model.capacity=2", "budget=1e9"], "model.capacity"),
    (["train", "sweep=smoke"], "budget"),
]


@pytest.mark.parametrize(("argv", "names"), BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(
    argv: list[str], names: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    rc, out, err = run_main([*argv, f"runs_dir={runs}"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modexp: error:"), err
    assert names in lines[0], err
    assert "Traceback" not in err + out
    assert not runs.exists(), list(runs.rglob("*"))


def test_bad_format_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "--format", "xml", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2
    assert "xml" in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_format_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["plan", "--format", "xml", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2
    assert "xml" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_console_script_bad_budget(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "modexp"
    assert exe.exists()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [str(exe), "plan", "sweep.budgets=[-1]", f"runs_dir={tmp_path / 'runs'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sweep.budgets" in lines[0] and "-1" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()
