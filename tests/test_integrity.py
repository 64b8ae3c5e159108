"""What a result depends on is recorded, checked and never pooled; no history is lost (issue 25)."""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import train_in_process

import modexp.train
from modexp import variants
from modexp.data.config import DataConfig
from modexp.model.config import ModelConfig
from modexp.tracking import MetricsLog, truncate_metrics
from modexp.variants import model_config


def _metrics(path: Path, steps: range) -> list[str]:
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / (s + 1)}) for s in steps]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


# --- metrics.jsonl ------------------------------------------------------------------------------------


def test_metrics_truncation_is_atomic_a_failed_rename_keeps_the_whole_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during the truncation at resume (here: the rename fails) leaves the old file, not an empty one."""
    path = tmp_path / "metrics.jsonl"
    lines = _metrics(path, range(1, 101))

    def killed(src, dst):
        raise KeyboardInterrupt  # as a signal between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_metrics(path, 40)
    assert path.read_text().splitlines() == lines
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("step", [0, 17, 99, 100, 500])
def test_metrics_resume_keeps_the_prefix_through_a_new_file_and_appends(tmp_path: Path, step: int) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = _metrics(path, range(1, 101))
    with path.open("a") as f:
        f.write('{"kind": "train", "st')  # a line torn by a kill
    inode = path.stat().st_ino
    log = MetricsLog(path, step)
    log.write({"kind": "val", "step": step + 1})
    log.close()
    kept = path.read_text().splitlines()
    assert kept[:-1] == lines[: min(step, 100)]
    assert json.loads(kept[-1])["kind"] == "val"
    assert path.stat().st_ino != inode  # replaced by a rename, never rewritten in place


# --- stray runs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan", [None, "{not json", '{"sweep": "fixture"}', '{"planned_ids": ["nothing-done"]}']
)
def test_runs_taken_unchecked_are_a_note(tmp_path: Path, plan: str | None) -> None:
    """Without a plan.json that names finished runs, every done run enters the fits: the analysis says so."""
    from fixtures_results import make_sweep

    from modexp.analysis.table import scan_sweep

    sweep = make_sweep(tmp_path, budgets=(1e11,), n_sizes=3, unbracketed_budget=None)
    if plan is None:
        (sweep / "plan.json").unlink()
    else:
        (sweep / "plan.json").write_text(plan)
    collection = scan_sweep(sweep)
    assert len(collection.table) == 6
    assert any("entered the fits" in n or "the fits use the 6 done runs" in n for n in collection.notes)


# --- a trained run: summary, schedule, corpus ------------------------------------------------------------

TINY = ["sweep=smoke", "budget=4e9", "model.d_model=16", "model.n_heads=2", "train.checkpoint_every=5"]


def _corpus(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(4):
        text = " ".join(words[(i * 7 + j * (seed + 3)) % len(words)] for j in range(6000))
        (folder / f"doc{i}.txt").write_text(text + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny baseline trained on a text corpus, with checkpoints (a few seconds)."""
    root = tmp_path_factory.mktemp("trained")
    corpus = _corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEXP_THREADS", "1")
        rc, out, err = train_in_process(
            ["train", *TINY, "data=text", f"data.path={corpus}", f"data.cache_dir={root / 'cache'}",
             f"runs_dir={root / 'runs'}", "model.tie_embeddings=true", "model.rope_base=500", "train.keep=all"]
        )  # fmt: skip
    assert rc == 0, err
    return Path(out.strip())


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, marked interrupted at its last checkpoint (so a rerun resumes it)."""
    copy = tmp_path / "runs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    (copy / "status.json").write_text(json.dumps({"state": "interrupted"}))
    return copy


def test_summary_records_every_model_and_data_setting(trained: Path) -> None:
    """Derived from the dataclasses: every ModelConfig field not inert for the variant, every data field but
    cache_dir."""
    summary = json.loads((trained / "summary.json").read_text())
    inert = set(variants.of_model(model_config()).inert)
    assert {f.name for f in fields(ModelConfig)} - inert <= summary.keys()
    assert summary["tie_embeddings"] is True and summary["rope_base"] == 500
    for f in fields(DataConfig):
        assert (f"data_{f.name}" in summary) == (f.name != "cache_dir"), f.name
    assert summary["data_name"] == "text" and summary["corpus_fingerprint"]


def test_an_edited_run_json_schedule_is_refused(trained: Path, tmp_path: Path) -> None:
    for key, value in [("steps", 3), ("num_sequences", 7), ("tokens", 64), ("flops", 1.0)]:
        run_dir = _copy_run(trained, tmp_path / key)
        spec = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**spec, key: value}))
        rc, _, err = _train_folder(run_dir)
        assert rc == 2 and f"run.json of {run_dir.name} says {key}=" in err and "\n" not in err.strip(), err


def test_a_checkpoint_of_another_schedule_is_refused(trained: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(trained, tmp_path)
    for name in ("last.pt", "previous.pt"):
        path = run_dir / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        assert state["steps"] == json.loads((run_dir / "run.json").read_text())["steps"]
        torch.save({**state, "steps": state["steps"] + 12}, path)
    rc, _, err = _train_folder(run_dir)
    assert rc == 2 and "belongs to a schedule of" in err and "\n" not in err.strip(), err


def test_a_corpus_changed_at_the_same_path_is_refused_at_resume(trained: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(trained, tmp_path)
    corpus = tmp_path / "corpus"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    _corpus(corpus)
    cfg["data"]["path"] = str(corpus)  # the same corpus at another path: its fingerprint changes
    meta = (run_dir / "meta.json").read_text()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc, _, err = _train_folder(run_dir)
    # data.path is in the run's identity: moved, the run is another run
    assert rc == 2 and "was edited" in err
    # the same path, other content
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    run_dir = _copy_run(trained, tmp_path / "same")
    original = Path(cfg["data"]["path"])
    saved = {p.name: p.read_bytes() for p in original.iterdir()}
    try:
        (original / "doc1.txt").write_text("something else entirely\n" * 3000)
        rc, _, err = _train_folder(run_dir)
    finally:
        for name, data in saved.items():
            (original / name).write_bytes(data)
    assert rc == 2 and "corpus of" in err and "changed since it started" in err and "\n" not in err.strip(), (
        err
    )
    assert (run_dir / "meta.json").read_text() == meta


def _train_folder(run_dir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = modexp.train.main([str(run_dir)])
    return rc, out.getvalue(), err.getvalue()


# --- text corpora never read modexp's own folders -----------------------------------------------------


def _fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("run.json", "config.yaml", "status.json", "metrics.jsonl", "train.log"):
        (folder / name).write_text(f"{name} of a run\n")
    return folder


def test_a_text_corpus_skips_runs_studies_caches_and_analyses(tmp_path: Path) -> None:
    """data=text data.path=. with runs_dir (and the cache) inside it: the corpus is the same before and after
    runs, studies, caches and analyses appear in it."""
    from modexp.data.load import _identify

    work = _corpus(tmp_path / "work")
    cfg = DataConfig(name="text", path=str(work), cache_dir=str(tmp_path / "elsewhere"))
    before = _identify(cfg)[3]
    _fake_run(work / "runs" / "smoke" / "baseline-d16-l4-4e9-0123456789")  # a `modexp train` study
    (work / "runs" / "smoke" / "results.csv").write_text("variant,budget\n")
    (work / "runs" / "paper" / "plan.json").parent.mkdir(parents=True)
    (work / "runs" / "paper" / "plan.json").write_text("{}")  # a sweep, no run yet
    (work / "runs" / "paper" / "sweep.log").write_text("log\n")
    cache = work / "runs" / "_data" / "text-0123456789abcdef"  # another config's cache
    cache.mkdir(parents=True)
    for name in ("meta.json", "train.bin", "val.bin"):
        (cache / name).write_text("x\n")
    out = work / "analysis"  # modexp analyze --out
    out.mkdir()
    for name in ("fits.csv", "verdict.csv", "summary.txt", "points.csv"):
        (out / name).write_text("x\n")
    _fake_run(work / "loose-run")  # a run folder anywhere
    assert _identify(cfg)[3] == before
    (work / "notes").mkdir()
    (work / "notes" / "more.txt").write_text("a user's own file is read\n")
    assert _identify(cfg)[3] != before


@pytest.mark.parametrize("inside", ["run", "run/sub", "study", "study/run"])
def test_a_text_corpus_inside_a_run_or_study_is_refused(tmp_path: Path, inside: str) -> None:
    from modexp.data.load import _identify
    from modexp.errors import ModexpError

    study = tmp_path / "study"
    study.mkdir()
    (study / "plan.json").write_text("{}")
    run = _fake_run(tmp_path / "run")
    _fake_run(study / "run")
    (run / "sub").mkdir()
    (run / "sub" / "a.txt").write_text("text\n")
    path = tmp_path / inside
    with pytest.raises(ModexpError, match="a folder modexp writes"):
        _identify(DataConfig(name="text", path=str(path), cache_dir=str(tmp_path / "cache")))


# --- runs of one variant that differ in a setting never share a curve ------------------------------------

SETTING_VALUES = {
    "tie_embeddings": (True, False),
    "rope_base": (10000.0, 500.0),
    "init_std": (0.02, 0.01),
    "attention": ("sdpa", "math"),
    "mlp": ("swiglu", "gelu"),
    "data_path": ("/a", "/b"),
    "corpus_fingerprint": ("f" * 40, "e" * 40),
    "beta2": (0.95, 0.99),
}


@pytest.mark.parametrize("column", sorted(SETTING_VALUES))
def test_runs_differing_in_a_recorded_setting_make_separate_curves(tmp_path: Path, column: str) -> None:
    """Every second run of each variant with the other value (sizes alternate, so the values never meet in one
    point): two curves per variant, labelled by the setting, and a note."""
    from fixtures_results import make_sweep

    from modexp.analysis.points import reduce_points
    from modexp.analysis.table import scan_sweep

    sweep = make_sweep(tmp_path, budgets=(1e11,), n_sizes=4, unbracketed_budget=None)
    for i, path in enumerate(sorted(sweep.glob("*/summary.json"))):
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, column: SETTING_VALUES[column][i % 2]}))
    points = reduce_points(scan_sweep(sweep).table, "topk")
    curves = set(points.table["curve"])
    assert len(curves) == 4 and {f"baseline [{column}={v}]" for v in SETTING_VALUES[column]} <= curves
    assert any(f"differ in {column}" in note for note in points.notes)
    assert all(n == 2 for n in points.table.groupby("curve").size())


def test_a_comma_sweep_over_a_model_setting_gives_one_curve_per_value(tmp_path: Path) -> None:
    """The issue's case end to end: `modexp sweep model.tie_embeddings=true,false`, baseline only."""
    rc, _, err = train_in_process(
        ["sweep", "sweep=smoke", "sweep.variants=[baseline]", "sweep.budgets=[4e9]", "sweep.sizes_per_budget=1",
         "model.tie_embeddings=true,false", f"runs_dir={tmp_path / 'runs'}"]
    )  # fmt: skip
    assert rc == 0, err
    results = pd.read_csv(tmp_path / "runs" / "smoke" / "results.csv")
    assert sorted(results["tie_embeddings"]) == [False, True]
    points = pd.read_csv(tmp_path / "runs" / "smoke" / "points.csv")
    assert set(points["curve"]) == {"baseline [tie_embeddings=False]", "baseline [tie_embeddings=True]"}


# --- values that reach paths; run folders' YAML read without resolvers ------------------------------------


@pytest.mark.parametrize("suffix", ["/../../../x", "a/b", "..", "/abs", "-x/..", "a b"])
def test_an_id_suffix_that_would_reach_another_folder_is_refused(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import run_main

    rc, _, err = run_main(
        ["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}", f"tracker.wandb.id_suffix={suffix}"], capsys
    )
    assert rc != 0 and "tracker.wandb.id_suffix=" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_config_is_read_without_resolvers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `${oc.env:...}` in a study's config.yaml is never resolved from the analyst's environment; an unsafe
    id_suffix there is not used either."""
    from modexp.tracking import check_id_suffix, study_wandb_settings, wandb_identity

    monkeypatch.setenv("ANALYST_SECRET", "hunter2")
    run = tmp_path / "study" / "run-1"
    run.mkdir(parents=True)
    wandb = {"project": "${oc.env:ANALYST_SECRET}", "tags": ["${oc.env:ANALYST_SECRET}"], "entity": "team"}
    (run / "config.yaml").write_text(yaml.safe_dump({"tracker": {"wandb": wandb}}))
    settings = study_wandb_settings(tmp_path / "study")
    assert "hunter2" not in repr(vars(settings)) and settings.entity == "team"
    (run / "config.yaml").write_text(yaml.safe_dump({"tracker": {"wandb": {"id_suffix": "/../../x"}}}))
    assert study_wandb_settings(tmp_path / "study").id_suffix == ""
    with pytest.raises(Exception, match="id_suffix"):
        wandb_identity(run, "baseline-d16-l4-4e9-0123456789", "/../x")
    assert check_id_suffix("-retry.2") == "-retry.2"
