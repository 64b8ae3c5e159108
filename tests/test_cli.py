"""The command line: help texts, unknown commands and flags, `modexp analyze` argument errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_main

SUBCOMMANDS = ("sweep", "plan", "train", "analyze", "sample", "prepare", "bench")


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["--help"], capsys)
    assert rc == 0
    assert out.startswith("usage: modexp")
    for name in SUBCOMMANDS:
        assert name in out, name
    assert "isoFLOP" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main([name, "--help"], capsys)
    assert rc == 0
    assert out.startswith(f"usage: modexp {name}")
    assert err == ""


def test_plan_help_names_formats_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(["plan", "--help"], capsys)
    assert rc == 0
    assert "--format" in out and "csv" in out and "json" in out
    assert "key=value" in out


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "modexp"
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=60, env={**os.environ}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: modexp")
    assert "train" in proc.stdout


def test_no_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main([], capsys)
    assert rc == 2
    assert "required" in err and "command" in err
    assert "Traceback" not in err


def test_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["nope"], capsys)
    assert rc == 2
    assert any("invalid choice: 'nope'" in line for line in err.splitlines()), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["plan", "train", "sweep"])
def test_unknown_flag(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main([name, "--bogus", f"runs_dir={tmp_path / 'runs'}"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--bogus" in lines[0] and "unknown option" in lines[0]
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_analyze_without_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["analyze"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modexp: error:") and "sweep folder" in lines[0]
    assert "Traceback" not in err


def test_analyze_missing_sweep_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_sweep"
    rc, out, err = run_main(["analyze", str(missing)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(missing) in lines[0] and "does not exist" in lines[0]
    assert not missing.exists()


def test_analyze_empty_sweep_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(["analyze", str(tmp_path)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(tmp_path) in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written into it


@pytest.mark.parametrize("with_out", [False, True])
def test_analyze_missing_table(with_out: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "nope.csv"
    argv = ["analyze", "--table", str(table)] + (["--out", str(tmp_path / "out")] if with_out else [])
    rc, out, err = run_main(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(table) in lines[0] and "does not exist" in lines[0]
    assert not (tmp_path / "out").exists()


def test_plan_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`modexp plan | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    exe = Path(sys.executable).parent / "modexp"
    proc = subprocess.run(
        f"'{exe}' plan sweep=paper runs_dir={tmp_path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith(" ") or "run_id" in proc.stdout
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_plan_json_is_a_list_and_notes_go_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    rc, out, err = run_main(["plan", "sweep=paper", f"runs_dir={tmp_path}", "--format", "json"], capsys)
    assert rc == 0
    assert isinstance(json.loads(out), list)
    # Why the paper ladder falls short: the five short ladders in one line, naming the limits that stop them.
    assert "warning: 5 ladders are short or off-centre (6e18 baseline 5 of 6 sizes" in err, err
    assert "sweep.max_tokens_per_param=200" in err and len(err.strip().splitlines()) <= 4, err


def test_plan_table_summary_reads_like_prose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(["plan", "sweep=paper", f"runs_dir={tmp_path}"], capsys)
    assert rc == 0
    assert "e+" not in out, out  # FLOPs as 6e18, not 6e+18; times as 2.9 days, not 2.5e+05 s
    summary = next(line for line in out.splitlines() if " to train, " in line)
    assert (
        summary.startswith("31 runs to train, 1.19e21 FLOPs, about ")
        and " days (one run at a time" in summary
    )
    assert summary.endswith(f"into {tmp_path}/paper; 823.6 GPU-hours, 1 GPU per run (launcher.gpus_per_run)")
    rc, out, _ = run_main(
        [
            "plan",
            "sweep=smoke",
            "sweep.budgets=[4e9]",
            "sweep.sizes_per_budget=1",
            "sweep.variants=[baseline]",
            f"runs_dir={tmp_path}",
        ],
        capsys,
    )
    assert "\n1 run to train, " in out and "GPU-hours" not in out, out  # no device-hours on a CPU


def test_launcher_extra_takes_any_sbatch_option(tmp_path: Path) -> None:
    from modexp.config import compose_config, to_typed

    cfg = to_typed(compose_config(["launcher=slurm", "launcher.extra={qos:high,constraint:a100}"]))
    assert cfg.launcher.extra == {"qos": "high", "constraint": "a100"}
    cfg = to_typed(compose_config(["launcher=slurm", "launcher.extra.qos=low"]))
    assert cfg.launcher.extra == {"qos": "low"}


def test_a_variant_label_that_names_another_kind_is_refused(tmp_path, capsys) -> None:
    """variant=mod on a dense model would file a baseline run under MoD's name: refused, nothing written."""
    argv = ["train", "sweep=smoke", "budget=1e10", "variant=mod", f"runs_dir={tmp_path}"]
    rc, _, err = run_main(argv, capsys)
    assert rc == 2 and "variant=mod names a mod run" in err and "baseline" in err
    assert not list(tmp_path.iterdir())
