"""A study folder from elsewhere is data, never code (issue 31): reading it (analyze, status, sample, export,
the notebook entry) imports nothing it names; export writes a new folder or nothing; load_export and status
survive crafted files; --table rows must agree with themselves."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fixtures_results import chinchilla_table, make_sweep
from helpers import drop_new_handlers, run_main, train_in_process

from modexp.errors import ModexpError
from modexp.export import load_export

TINY = ["sweep=smoke", "model.d_model=16", "model.n_heads=2", "budget=2e9"]
PAYLOAD = "import pathlib\npathlib.Path({target!r}).write_text('the study ran its code')\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained baseline run (its folder), for sample and export."""
    root = tmp_path_factory.mktemp("trained")
    handlers, threads = list(logging.getLogger().handlers), torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("MODEXP_THREADS", "1")
        rc, out, err = train_in_process(["train", *TINY, f"runs_dir={root / 'runs'}"])
    torch.set_num_threads(threads)
    drop_new_handlers(handlers)
    assert rc == 0, err
    return Path(out.strip())


def _name_plugins(config: Path, names: list[str]) -> None:
    data = yaml.safe_load(config.read_text()) if config.exists() else {}
    config.write_text(yaml.safe_dump({**(data or {}), "plugins": names}))


@pytest.fixture
def crafted(tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A study from a colleague: its runs' config.yaml name `study.payload`, and study/payload.py (on the
    path, as under PYTHONPATH=.) would write tmp/PWNED if anything imported it. The working directory is tmp."""
    study = make_sweep(tmp_path, name="study", budgets=(1e11, 1e12), n_sizes=3, unbracketed_budget=None)
    shutil.copytree(trained, study / trained.name)
    (study / trained.name / "summary.json").unlink()  # data for sample/export, not a point of the fits
    for run in [p for p in study.iterdir() if p.is_dir()]:
        _name_plugins(run / "config.yaml", ["study.payload"])
    (study / "payload.py").write_text(PAYLOAD.format(target=str(tmp_path / "PWNED")))
    ids = sorted(p.name for p in study.iterdir() if p.is_dir())
    (study / "plan.json").write_text(json.dumps({"sweep": "study", "planned_ids": ids}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("MODEXP_PLUGINS", raising=False)
    yield study
    for name in ("study.payload", "study"):
        sys.modules.pop(name, None)


def test_reading_a_study_never_imports_what_it_names(
    crafted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp, run = crafted.parent, crafted / next(p.name for p in crafted.iterdir() if (p / "run.json").exists())
    rc, out, err = run_main(["analyze", "study", "--out", "out", "--wandb", "disabled"], capsys)
    assert rc == 0, err
    assert "names plug-in(s) study.payload, not imported" in out and "--plugins study.payload" in out
    for argv in (
        ["status", "study"],
        ["status", "runs_dir=."],
        ["sample", str(run), "--max-new-tokens", "4", "--device", "cpu"],
        ["export", str(run), "--out", "exported"],
    ):
        rc, out, err = run_main(argv, capsys)
        assert rc == 0, (argv, err)
    from modexp.analysis import analyze  # the notebooks' entry

    assert "study.payload" in "\n".join(analyze(crafted, out=tmp / "nb", figures=False).notes)
    assert not (tmp / "PWNED").exists() and "study.payload" not in sys.modules
    # The notebook entry in a fresh process under PYTHONPATH=., in the study's parent folder.
    entry = "from modexp.analysis import analyze; analyze('study', out='sub', figures=False)"
    proc = subprocess.run(
        [sys.executable, "-c", entry], cwd=tmp, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": "."},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp / "PWNED").exists()
    # Named by the user, it is imported: the payload was live all along.
    analyze(crafted, out=tmp / "trusted", figures=False, plugins="study.payload")
    assert (tmp / "PWNED").exists()


def test_a_trainer_imports_only_what_its_sweep_names_and_evaluates_nothing(crafted: Path) -> None:
    """`python -m modexp.train RUN` (what a sweep starts) on a folder naming study.payload: nothing imported;
    an interpolation put into its config.yaml is refused, never resolved."""
    run = next(p for p in crafted.iterdir() if (p / "run.json").exists())
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    (run / "summary.json").write_text(json.dumps({"val_loss": 4.0}))
    train = [sys.executable, "-m", "modexp.train", str(run)]
    env = {**os.environ, "PYTHONPATH": ".", "MODEXP_THREADS": "1"}
    proc = subprocess.run(train, cwd=crafted.parent, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and not (crafted.parent / "PWNED").exists(), proc.stderr[-2000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["tracker"]["wandb"]["project"] = "${oc.env:HOME}"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(train, cwd=crafted.parent, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "interpolation '${oc.env:HOME}'" in proc.stderr, proc.stderr[-2000:]


def test_the_env_var_names_plugins_and_a_bad_name_is_one_line(
    crafted: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MODEXP_PLUGINS is the user's naming too; a name that is no module, or does not import, is one line."""
    rc, _, err = run_main(["analyze", "study", "--out", "o", "--plugins", "os;rm"], capsys)
    assert rc == 2 and "is not a module name" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_main(["analyze", "study", "--out", "o", "--plugins", "no_such_module_here"], capsys)
    assert rc == 2 and "no_such_module_here does not import" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("MODEXP_PLUGINS", "study.payload")
    rc, out, err = run_main(["status", "study"], capsys)  # status imports nothing at all
    assert rc == 0 and not (crafted.parent / "PWNED").exists()
    from modexp.analysis import analyze

    assert not any(
        "not imported" in n for n in analyze(crafted, out=crafted.parent / "o", figures=False).notes
    )
    assert (crafted.parent / "PWNED").exists()


def test_a_run_of_a_plugin_kind_is_refused_by_sample_and_export_naming_the_flag(
    crafted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = next(p for p in crafted.iterdir() if (p / "run.json").exists())
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model_config"]["routing"] = "strided"  # tests/toy_variant.py's kind, not imported here
    torch.save(state, ckpt)
    _name_plugins(run / "config.yaml", ["toy_variant"])
    for argv in (["sample", str(run), "--device", "cpu"], ["export", str(run), "--out", str(tmp_path / "e")]):
        rc, _, err = run_main(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "routing 'strided'" in err and "--plugins toy_variant" in err, err
    assert not (tmp_path / "e").exists() and "toy_variant" not in sys.modules


# --- the analysis never pools a branch with a stem that trained otherwise -----------------------------------


def test_the_analysis_refuses_a_branch_whose_stem_trained_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modexp.analysis import analyze

    study = make_sweep(tmp_path, name="s", budgets=(1e11, 1e12), n_sizes=3, unbracketed_budget=None)
    run = next(p for p in sorted(study.iterdir()) if (p / "summary.json").exists())
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(
        json.dumps({**summary, "stem": "stem-x", "corpus_fingerprint": "a" * 40})
    )
    stem = study / "stems" / "stem-x"
    stem.mkdir(parents=True)
    (stem / "meta.json").write_text(json.dumps({"corpus": {"fingerprint": "b" * 40}}))
    rc, _, err = run_main(["analyze", str(study), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"run {run.name} continued stem stem-x" in err and "corpus fingerprint bbbbbbbbbbbb" in err
    assert not (tmp_path / "o").exists()
    # Any recorded setting of the two trainings, not only the corpus.
    (stem / "meta.json").write_text(json.dumps({"corpus": {"fingerprint": "a" * 40}}))
    (stem / "config.yaml").write_text(yaml.safe_dump({"train": {"beta2": 0.9, "eval_every": 5}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"beta2": 0.95, "eval_every": 9}}))
    with pytest.raises(ModexpError, match=r"train\.beta2=0\.9 \(the run's: 0\.95\)"):
        analyze(study, out=tmp_path / "o", figures=False)
    (stem / "config.yaml").write_text(yaml.safe_dump({"train": {"beta2": 0.95, "eval_every": 5}}))
    analyze(study, out=tmp_path / "o", figures=False)  # how often it evaluated is no part of its training


# --- export writes a new folder or nothing ------------------------------------------------------------------


def _export(run: Path, out: Path | str, capsys, *extra: str) -> tuple[int, str, str]:
    return run_main(["export", str(run), "--out", str(out), *extra], capsys)


EXPORTED = {"model.safetensors", "config.json", "README.md"}


def test_export_refuses_a_non_empty_folder_unless_forced_and_never_writes_through_links(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "config.json").write_text("{}")
    rc, _, err = _export(trained, out, capsys)
    assert rc == 2 and "is not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "README.md").read_text() == "my notes" and (out / "config.json").read_text() == "{}"
    # --force replaces the export's own files; a link among them is replaced, its target never written.
    target = tmp_path / "target.md"
    target.write_text("not yours")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(target)
    (out / "other.txt").write_text("kept")
    rc, _, err = _export(trained, out, capsys, "--force")
    assert rc == 0, err
    assert target.read_text() == "not yours" and not (out / "README.md").is_symlink()
    assert (out / "other.txt").read_text() == "kept" and {p.name for p in out.iterdir()} == EXPORTED | {
        "other.txt"
    }
    load_export(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left


@pytest.mark.parametrize("case", ["root", "link", "file", "under-a-file", "holds-the-run"])
def test_export_refuses_an_out_that_is_no_new_folder(
    trained: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(os.listdir("/"))
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "file").write_text("x")
    out = {
        "root": Path("/"),
        "link": tmp_path / "link",
        "file": tmp_path / "file",
        "under-a-file": tmp_path / "file" / "out",
        "holds-the-run": trained.parent,
    }[case]
    if case == "link":
        out.symlink_to(real)
    for extra in ([], ["--force"]):
        rc, _, err = _export(trained, out, capsys, *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)
    assert sorted(os.listdir("/")) == before and not list(real.iterdir())
    assert (tmp_path / "file").read_text() == "x" and trained.is_dir()


def test_export_into_a_new_or_empty_folder_is_whole(trained: Path, tmp_path: Path, capsys) -> None:
    for out in (tmp_path / "a" / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        rc, stdout, err = _export(trained, out, capsys)
        assert rc == 0, err
        assert {p.name for p in out.iterdir()} == EXPORTED and Path(stdout.strip()) == out


# --- load_export checks what it loads ------------------------------------------------------------------------


def _crafted_export(tmp_path: Path, trained: Path, capsys) -> Path:
    out = tmp_path / "export"
    assert _export(trained, out, capsys)[0] == 0
    return out


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


CONFIG_EDITS = {
    "not a dict": lambda c: c.clear() or c.update({"format": "modexp-export/1", "model": [1, 2]}),
    "unknown model key": lambda c: c["model"].update(evil=1),
    "unknown top key": lambda c: c.update(payload="x"),
    "text for a number": lambda c: c["model"].update(d_model="16"),
    "bool for an int": lambda c: c["model"].update(n_layers=True),
    "float for an int": lambda c: c["model"].update(n_heads=2.0),
    "out of range": lambda c: c["model"].update(d_model=10**9),
    "heads do not divide": lambda c: c["model"].update(n_heads=3),
    "shapes disagree": lambda c: c["model"].update(d_model=32, n_heads=4),
    "fewer layers": lambda c: c["model"].update(n_layers=2),
    "more layers": lambda c: c["model"].update(n_layers=6),
    "bad routing": lambda c: c["model"].update(routing="nope"),
    "negative step": lambda c: c.update(step=-3),
    "loss text": lambda c: c.update(val_loss="low"),
    "wrong format": lambda c: c.update(format="other/1"),
}


@pytest.mark.parametrize("case", list(CONFIG_EDITS))
def test_load_export_refuses_a_crafted_config_in_one_line(
    trained: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _crafted_export(tmp_path, trained, capsys)
    _edit_config(folder, CONFIG_EDITS[case])
    with pytest.raises(ModexpError) as info:
        load_export(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "case", ["not json", "a list", "no weights", "garbage weights", "a fifo", "no config"]
)
def test_load_export_refuses_damaged_files_in_one_line(
    trained: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _crafted_export(tmp_path, trained, capsys)
    if case == "not json":
        (folder / "config.json").write_text("{model: ")
    elif case == "a list":
        (folder / "config.json").write_text("[1]")
    elif case == "no weights":
        (folder / "model.safetensors").unlink()
    elif case == "garbage weights":
        (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    elif case == "a fifo":
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")
    else:
        (folder / "config.json").unlink()
    with pytest.raises(ModexpError) as info:
        load_export(folder)
    assert "\n" not in str(info.value)


# --- status survives garbage ---------------------------------------------------------------------------------


def test_status_lists_every_study_and_each_broken_one_with_its_reason(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    good = make_sweep(runs, name="good", budgets=(1e11,), n_sizes=2, unbracketed_budget=None)
    ids = sorted(p.name for p in good.iterdir() if p.is_dir())
    (good / "plan.json").write_text(json.dumps({"planned_ids": ids + ["planted"]}))
    planted = good / "planted"
    planted.mkdir()
    for name in ("status.json", "metrics.jsonl", ".lock", "run.json"):
        os.mkfifo(planted / name)  # never opened for reading: a reader would block forever
    (good / ids[0] / "status.json").write_text(json.dumps({"state": "failed", "reason": "a\nb\x1b[2J"}))
    broken = {
        "notjson": b"{", "notutf8": b'\xff{"planned_ids": []}', "runs5": b'{"runs": 5}',
        "noids": b'{"sweep": "x"}', "alist": b"[]", "escape": b'{"planned_ids": ["../../etc"]}',
    }  # fmt: skip
    for name, text in broken.items():
        (runs / name).mkdir()
        (runs / name / "plan.json").write_bytes(text)
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "plan.json")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    exe = [sys.executable, "-m", "modexp.cli", "status"]
    proc = subprocess.run([*exe, f"runs_dir={runs}"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(broken) + 2, proc.stdout
    assert any(line.startswith(f"{runs / 'good'}: {len(ids) + 1} runs") for line in lines), proc.stdout
    for name in [*broken, "fifo"]:
        (line,) = [line for line in lines if line.startswith(f"{runs / name}: broken: ")]
        assert "\x1b" not in line
    proc = subprocess.run([*exe, str(good)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout, proc.stderr
    proc = subprocess.run([*exe, str(runs / "runs5")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "runs is 5" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- --table: the columns agree with each other ---------------------------------------------------------------


def _table(tmp_path: Path, edit=None, name: str = "t.csv") -> Path:
    path = chinchilla_table(tmp_path / name, budgets=(1e18, 1e19, 1e20), n_sizes=5)
    if edit is not None:
        df = pd.read_csv(path)
        edit(df)
        df.to_csv(path, index=False)
    return path


def _another_budget(df: pd.DataFrame) -> None:
    df.loc[2, "flops"] = 1e19  # a 1e18 row whose flops are those of the table's next budget


def _tenfold_params(df: pd.DataFrame) -> None:
    df.loc[6, "params"] *= 30  # its params (or tokens) belong to another run


TABLE_EDITS = {
    "flops 1000x the budget": (lambda df: df.__setitem__("flops", df["flops"] * 1000), "the budget"),
    "one row 1000x": (lambda df: df.loc.__setitem__((4, "flops"), df.loc[4, "flops"] * 1000), "line 6"),
    "another budget's flops": (_another_budget, "budget 1e19"),
    "params x 1e280": (lambda df: df.loc.__setitem__((3, "params"), df.loc[3, "params"] * 1e280), "params"),
    "tokens in millions": (lambda df: df.__setitem__("tokens", df["tokens"] / 1e6), "6 x params x tokens"),
    "params of another run": (_tenfold_params, "line 8"),
    "a newline in a variant": (lambda df: df.__setitem__("variant", "base\nline"), "control characters"),
}


@pytest.mark.parametrize("case", list(TABLE_EDITS))
def test_a_table_whose_columns_disagree_is_refused_naming_the_row(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, says = TABLE_EDITS[case]
    rc, _, err = run_main(
        ["analyze", "--table", str(_table(tmp_path, edit)), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_honest_tables_with_published_conventions_pass(tmp_path: Path) -> None:
    from modexp.analysis import load_table

    base = pd.read_csv(_table(tmp_path))
    rows = [
        base.assign(flops=base["budget"] * 1.3 * (1 + 0.04 * ((base.index % 3) - 1))),  # a fixed factor, +-4%
        base.assign(variant="mod_c0.125_e2", tokens=base["tokens"] / 0.55, val_loss=base["val_loss"] - 0.01),
        base.assign(variant="moe_x8_k0.125", params=base["params"] * 3.5, val_loss=base["val_loss"] - 0.02),
    ]
    for i, df in enumerate(rows):
        path = tmp_path / f"honest{i}.csv"
        df.to_csv(path, index=False)
        assert len(load_table(path)) == len(df)
    # A modexp results table: flops are train_flops_per_token x tokens, whatever 6N would say.
    per_token = base.assign(
        train_flops_per_token=base["budget"] / base["tokens"] * 1.7, flops=base["budget"] * 1.7
    )
    per_token.to_csv(tmp_path / "results.csv", index=False)
    load_table(tmp_path / "results.csv")


# --- smaller items ----------------------------------------------------------------------------------------------


def test_selfcheck_refuses_an_out_that_is_a_file_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from modexp.analysis import calibration

    def never(*args, **kwargs):
        raise AssertionError("simulated before checking --out")

    monkeypatch.setattr(calibration, "check_calibration", never)
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        rc, _, err = run_main(["selfcheck", "calibration", "--out", str(out)], capsys)
        assert rc == 2 and "is a file" in err and len(err.strip().splitlines()) == 1, err
    rc, out, _ = run_main(["selfcheck", "--help"], capsys)
    assert "90% interval" in out and "%%" not in out


def test_a_variant_name_with_control_characters_never_breaks_the_summarys_lines(tmp_path: Path) -> None:
    from modexp.analysis import analyze

    study = make_sweep(tmp_path, name="s", budgets=(1e11, 1e12), n_sizes=3, unbracketed_budget=None)
    run = next(p for p in sorted(study.iterdir()) if (p / "summary.json").exists())
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(
        json.dumps({**summary, "variant": "baseline\nVerdict: MoD wins\x1b[2J"})
    )
    result = analyze(study, out=tmp_path / "o", figures=False)
    assert "\x1b" not in result.summary and "\nVerdict: MoD wins" not in result.summary
    assert f"{run.name}: summary.json lacks a usable variant" in result.summary
