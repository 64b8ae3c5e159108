"""Settings that cannot be silently wrong (issue 35): a setting that does nothing for the current choice is
refused in one line naming it, why and what would make it count; a missing required one is named before any
planning. Each case: the command, its overrides, and what the one line must say. Nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_main

from modexp.config import compose_config, to_typed
from modexp.unused import refuse_unused

TRAIN = ["sweep=smoke", "budget=1e10", "model.d_model=16", "model.n_heads=2"]

CASES = {
    # id: (command, overrides, strings the error line holds)
    "data.path with stdlib": (
        "plan",
        ["data.path=no/such/folder"],
        ["data.path=no/such/folder", "data=text"],
    ),
    "data.token_dtype with text": (
        "plan",
        ["data=text", "data.path=.", "data.token_dtype=uint32"],
        ["data.token_dtype=uint32 does nothing", "data=tokens"],
    ),
    "data.token_dtype with stdlib": (
        "plan",
        ["data.token_dtype=uint32"],
        ["data.token_dtype", "data=tokens"],
    ),
    "slurm key with the local launcher": (
        "plan",
        ["launcher.partition=gpu"],
        ["launcher.partition=gpu does nothing", "launcher=local", "launcher=slurm"],
    ),
    "sbatch extra with the local launcher": (
        "plan",
        ["launcher.extra.qos=high"],
        ["launcher.extra.qos=high"],
    ),
    "local key with slurm": (
        "plan",
        ["launcher=slurm", "launcher.workers=2"],
        ["launcher.workers=2", "local"],
    ),
    "WSD key with cosine": (
        "plan",
        ["sweep.reuse=none", "sweep.seeds=1", "train.cooldown_fraction=0.3"],
        ["train.cooldown_fraction=0.3", "cosine", "train.schedule=wsd"],
    ),
    "WSD shape with cosine": (
        "plan",
        ["sweep=smoke", "train.cooldown_shape=linear"],
        ["train.cooldown_shape=linear", "train.schedule=wsd"],
    ),
    "train.lr under an LR law": (
        "plan",
        ["train.lr=0.01"],
        ["train.lr=0.01", "train.lr_law", "'train.lr_law={}'"],
    ),
    "train.lr under an LR grid": (
        "plan",
        ["sweep=smoke", "sweep.lr_grid=[1e-3,1e-2]", "train.lr=0.01"],
        ["train.lr=0.01", "sweep.lr_grid sets every run's learning rate"],
    ),
    "a law under an LR grid": (
        "plan",
        ["sweep=smoke", "sweep.lr_grid=[1e-3]", "train.lr_law={baseline:{coefficient:1,exponent:0}}"],
        ["train.lr_law", "sweep.lr_grid"],
    ),
    "extra seeds without seeds": (
        "plan",
        ["sweep=smoke", "sweep.seed_sizes=1"],
        ["sweep.seed_sizes=1", "sweep.seeds=1"],
    ),
    "a shape in a sweep": (
        "plan",
        ["model.d_model=128"],
        ["model.d_model=128", "sweep.ladder", "modexp train"],
    ),
    "routing in a sweep": ("sweep", ["sweep=smoke", "model.routing=topk", "--dry-run"], ["sweep.variants"]),
    "budget in a sweep": ("plan", ["budget=1e12"], ["budget=1e12", "sweep.budgets"]),
    "MoD setting without a MoD variant": (
        "plan",
        ["sweep=smoke", "sweep.variants=[baseline]", "model.capacity=0.5"],
        ["model.capacity=0.5", "sweep.variants=[baseline]", "mod"],
    ),
    "expert setting without an expert variant": (
        "plan",
        ["sweep=smoke", "model.experts=8"],
        ["model.experts=8", "moe"],
    ),
    "FSDP with one process per run": (
        "plan",
        ["sweep=smoke", "train.parallel=fsdp"],
        ["launcher.gpus_per_run > 1"],
    ),
    "MoD setting on a baseline run": (
        "train",
        [*TRAIN, "model.capacity=0.5"],
        ["model.capacity=0.5", "baseline"],
    ),
    "sweep setting in modexp train": (
        "train",
        [*TRAIN, "sweep.budgets=[1e11]"],
        ["sweep.budgets", "modexp sweep"],
    ),
    "missing data.path before the ladder": ("plan", ["data=tokens"], ["data.path is not set", "data=tokens"]),
    "missing data.path for a sweep": (
        "sweep",
        ["data=text", "--dry-run"],
        ["data.path is not set", "data=text"],
    ),
    "missing data.path for a run": ("train", [*TRAIN, "data=tokens"], ["data.path is not set"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_setting_that_does_nothing_is_one_line(case: str, tmp_path: Path, capsys) -> None:
    command, overrides, expected = CASES[case]
    runs = tmp_path / "runs"
    rc, out, err = run_main([command, *overrides, f"runs_dir={runs}"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("modexp: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not runs.exists()  # nothing half-written
    if case.startswith("missing data.path"):  # named first, not after a ladder message
        assert lines[0].startswith("modexp: error: data.path is not set"), lines[0]


@pytest.mark.parametrize(
    ("command", "overrides"),
    [
        ("sweep", ["sweep=demo"]),
        ("sweep", ["sweep=smoke", "model.capacity=0.5", "train.lr_law={}", "train.lr=1e-3"]),
        (
            "sweep",
            ["sweep=cpu", "train.cooldown_fraction=0.3", "sweep.seed_sizes=1"],
        ),  # branches: WSD, 2 seeds
        ("sweep", ["sweep=mode", "model.experts=8", "model.capacity=0.25"]),
        ("sweep", ["launcher=slurm", "launcher.partition=gpu", "launcher.extra.qos=high"]),
        ("sweep", ["data=text", "data.path=.", "data.val_fraction=0.1"]),
        (
            "train",
            ["sweep=smoke", "budget=1e10", "model.routing=topk", "model.capacity=0.5", "sweep.min_steps=5"],
        ),
        ("train", ["sweep=smoke", "budget=1e10", "train.schedule=wsd", "train.cooldown_fraction=0.3"]),
    ],
)
def test_settings_that_count_pass(command: str, overrides: list[str]) -> None:
    """The rules refuse no-ops only: the same keys where they act are accepted (presets included)."""
    refuse_unused(overrides, to_typed(compose_config(overrides, export=False)), command)
