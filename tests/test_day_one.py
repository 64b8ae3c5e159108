"""A newcomer's first day (issue 35): the plan says what remains and where it goes, device-hours only on
devices, the device check before any ladder note, warnings one line each; status lists every study and the
runs the analysis leaves out; a run is found by the id `modexp plan` shows; `modexp train` ends with the causal
loss and the share processed, and logs tokens/s and an ETA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run_main

from modexp.errors import ModexpError
from modexp.rundir import find_run, set_status
from modexp.sweep import build_study

SMOKE = ["sweep=smoke"]


def mark_done(study, specs) -> None:
    for spec in specs:
        folder = study.run_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        set_status(folder, "done")


def test_the_plan_says_what_remains_its_flops_time_and_folder(tmp_path: Path, capsys) -> None:
    from modexp.units import sci

    runs = tmp_path / "runs"
    argv = ["plan", "sweep=smoke", "sweep.reuse=branches", f"runs_dir={runs}"]
    rc, out, _ = run_main(argv, capsys)
    line = next(x for x in out.splitlines() if " to train, " in x)
    assert re.match(
        r"8 runs and 4 stems to train, 4\.32e10 FLOPs, about \d+ (min|s) \(on \d+ slots? at ", line
    )
    assert line.endswith(f"into {runs}/smoke") and "hours" not in line, line  # no device-hours on a CPU

    study = build_study(argv[1:])
    mark_done(study, study.plan.stems[:2] + study.plan.runs[:4])
    rc, out, _ = run_main(argv, capsys)
    line = next(x for x in out.splitlines() if " to train, " in x)
    spent = sum(s.flops - s.stem_flops for s in study.plan.stems[2:] + study.plan.runs[4:])
    assert line.startswith(f"4 of 8 runs and 2 of 4 stems to train, {sci(spent)} FLOPs, about "), line
    rc, out, _ = run_main(["sweep", "--dry-run", *argv[1:]], capsys)
    assert rc == 0 and line in out.splitlines()  # the dry run says the same

    mark_done(study, study.plan.stems + study.plan.runs)
    rc, out, _ = run_main(argv, capsys)
    assert f"{runs}/smoke: all 8 runs and 4 stems are done: nothing to train" in out, out


def test_gpu_hours_only_for_gpus_and_the_device_check_comes_first(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine, with or without GPUs: none visible
    runs = f"runs_dir={tmp_path / 'runs'}"
    rc, out, err = run_main(["plan", "sweep=paper", runs], capsys)
    assert rc == 0 and "GPU-hours" in out
    warnings = [x for x in out.splitlines() if x.startswith("warning: ")]
    assert warnings[0].startswith("warning: no GPU here: this study trains with device=cuda"), warnings
    assert all(len(w) < 400 for w in warnings) and len(warnings) <= 3, warnings  # collapsed, one line each
    # The sweep itself: the device first, before any plan note or ladder line.
    rc, out, err = run_main(["sweep", "sweep=gpu", "sweep.max_epochs=1000", runs], capsys)
    assert (
        rc == 2 and err.startswith("modexp: error: device=cuda but 0 GPU(s)") and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "runs").exists()


def test_a_study_that_cannot_give_a_verdict_says_so_before_it_starts(tmp_path: Path, capsys) -> None:
    rc, out, _ = run_main(["plan", *SMOKE, f"runs_dir={tmp_path}"], capsys)
    assert "warning: no verdict possible: every curve has 2 size(s) per budget and an optimum needs 3" in out
    rc, out, _ = run_main(["plan", "sweep=demo", f"runs_dir={tmp_path}"], capsys)
    assert "no verdict possible" not in out


def test_status_lists_every_study_and_the_runs_the_analysis_leaves_out(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    study = build_study([*SMOKE, f"runs_dir={runs}"])
    from modexp.sweep import write_plan

    write_plan(study, [])
    mark_done(study, study.plan.runs)
    stray = runs / "smoke" / "baseline-d16-l4-1e10-0123456789"  # what `modexp train` adds to the folder
    stray.mkdir()
    (stray / "run.json").write_text(json.dumps({"run_id": stray.name, "variant": "baseline"}))
    set_status(stray, "done")
    trained = runs / "mine" / "mod_c0.125_e2-d16-l4-1e10-abcdef0123"  # a folder of modexp train runs only
    trained.mkdir(parents=True)
    (trained / "run.json").write_text(json.dumps({"run_id": trained.name, "variant": "mod_c0.125_e2"}))

    rc, out, _ = run_main(["status", str(runs / "smoke")], capsys)
    assert rc == 0 and stray.name in out and "not planned: not analysed" in out
    assert "8 runs: 8 done" in out and "1 more run folder not planned here: left out of the analysis" in out
    rc, out, _ = run_main(["status", f"runs_dir={runs}"], capsys)
    assert f"{runs / 'smoke'}: 8 runs" in out and f"{runs / 'mine'}: 1 run" in out, out


def test_a_run_is_found_by_the_id_the_plan_shows(tmp_path: Path) -> None:
    for name in ("baseline-d8-l4-4e9-9911f6f768", "mod_c0.125_e2-d8-l4-4e9-fee7b11a73"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text("{}")
    assert find_run(tmp_path / "9911f6f768") == tmp_path / "baseline-d8-l4-4e9-9911f6f768"
    assert find_run(tmp_path / "fee7b1") == tmp_path / "mod_c0.125_e2-d8-l4-4e9-fee7b11a73"
    assert find_run(tmp_path / "baseline-d8-l4-4e9-9911f6f768") == tmp_path / "baseline-d8-l4-4e9-9911f6f768"
    with pytest.raises(ModexpError, match=r"did you mean .*fee7b11a73\?"):
        find_run(tmp_path / "fee7b11a74")
    (tmp_path / "baseline-d12-l4-4e9-9911aaaaaa").mkdir()
    (tmp_path / "baseline-d12-l4-4e9-9911aaaaaa" / "run.json").write_text("{}")
    with pytest.raises(ModexpError, match="matches 2 run folders"):
        find_run(tmp_path / "9911")


def test_sample_by_suffix_fails_in_one_line_with_a_suggestion(tmp_path: Path, capsys) -> None:
    (tmp_path / "baseline-d8-l4-4e9-9911f6f768").mkdir()
    (tmp_path / "baseline-d8-l4-4e9-9911f6f768" / "run.json").write_text("{}")
    rc, _, err = run_main(["sample", str(tmp_path / "9911f6f769")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "did you mean" in err and "9911f6f768" in err


def test_the_result_line_gives_the_causal_loss_and_the_share_processed() -> None:
    from modexp.train import result_words

    words = result_words({"val_loss": 2.6665, "val_loss_causal": 2.6922, "val_causal_frac": 0.006})
    assert words == "causal val loss 2.6922 (top-k 2.6665), routed blocks processed 0.6% of tokens"
    assert result_words({"val_loss": 2.7, "val_loss_causal": None}) == "val loss 2.7000"  # a baseline


def test_the_step_line_gives_tokens_per_second_and_an_eta(caplog) -> None:
    import logging
    from types import SimpleNamespace

    from modexp.train import _Progress

    progress = _Progress(SimpleNamespace(steps=100, run_id="r"), 0)
    progress.bar = None
    with caplog.at_level(logging.INFO, logger="modexp.train"):
        progress.update(40, 2.5, 52300.0, 0.5)
    assert "step 40/100 loss 2.5000 52.3k tok/s ETA 30 s" in caplog.text
