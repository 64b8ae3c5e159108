"""Habits researchers bring from Hydra and pip: --cfg job|all, -m, modexp status, tables that fit 120 columns,
a user's own presets, launcher settings that contradict the preset's device (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import run_main

EXE = Path(sys.executable).parent / "modexp"


def modexp(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "WANDB_MODE": "disabled", "MODEXP_THREADS": "1"},
    )


@pytest.mark.parametrize("command", ["plan", "sweep", "train"])
def test_cfg_job_prints_the_composed_config_and_exits(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(
        [command, "sweep=smoke", "model.capacity=0.25", f"runs_dir={tmp_path / 'runs'}", "--cfg", "job"],
        capsys,
    )
    assert rc == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["model"]["capacity"] == 0.25 and cfg["sweep"]["name"] == "smoke"
    assert "hydra" not in cfg
    assert not (tmp_path / "runs").exists()  # nothing planned, trained or written


def test_cfg_all_adds_hydra_and_comma_lists_print_each_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run_main(["plan", "sweep=smoke", "model.capacity=0.25,0.5", "--cfg", "job"], capsys)
    assert rc == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["model"]["capacity"] for d in docs] == [0.25, 0.5]
    rc, out, _ = run_main(["plan", "sweep=smoke", "--cfg", "all"], capsys)
    assert rc == 0 and "hydra" in yaml.safe_load(out)


@pytest.mark.parametrize("flag", ["-m", "--multirun"])
def test_multirun_flag_is_accepted_and_comma_lists_sweep(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_main(
        ["plan", flag, "sweep=smoke", "model.capacity=0.25,0.5", f"runs_dir={tmp_path}", "--format", "json"],
        capsys,
    )
    assert rc == 0, err
    assert "comma lists already sweep" in err
    variants = {row["variant"] for row in json.loads(out)}
    assert {"mod_c0.25_e2", "mod_c0.5_e2"} <= variants


def test_hydra_launcher_override_names_modexps_launcher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_main(["sweep", "hydra/launcher=submitit_slurm", f"runs_dir={tmp_path}"], capsys)
    assert rc == 2 and "launcher=slurm" in err and len(err.strip().splitlines()) == 1, err


def test_train_help_does_not_promise_comma_sweeps(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_main(["train", "--help"], capsys)
    assert rc == 0 and "comma lists sweep" not in out and "modexp sweep" in out


def test_plan_table_fits_120_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for preset in ("smoke", "demo", "paper"):
        rc, out, _ = run_main(["plan", f"sweep={preset}", f"runs_dir={tmp_path}"], capsys)
        assert rc == 0
        table = out.split("\n\n")[0].splitlines()
        assert max(len(line) for line in table) <= 120, (preset, max(len(line) for line in table))


def test_slurm_with_a_gpu_preset_asks_for_gpus_and_contradictions_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run_main(["plan", "sweep=gpu", "launcher=slurm", "--cfg", "job"], capsys)
    cfg = yaml.safe_load(out)
    assert cfg["launcher"]["gpus_per_run"] == 1 and cfg["device"] == "cuda"
    rc, _, err = run_main(["plan", "sweep=gpu", "launcher=slurm", "launcher.gpus_per_run=0"], capsys)
    assert rc == 2 and "device=cuda" in err and "gpus_per_run=0" in err and len(err.strip().splitlines()) == 1


def test_dry_run_checks_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_main(
        ["sweep", "sweep=smoke", "data=text", f"data.path={tmp_path / 'missing.txt'}", "--dry-run"], capsys
    )
    assert rc == 2 and "missing.txt" in err


def test_a_users_config_folder_adds_presets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "myconf" / "sweep").mkdir(parents=True)
    (tmp_path / "myconf" / "sweep" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - smoke\nsweep:\n  name: mine\n  budgets: [4.0e+9]\n"
    )
    rc, out, err = run_main(
        ["plan", "--config-dir", str(tmp_path / "myconf"), "sweep=mine", "--format", "json"], capsys
    )
    assert rc == 0, err
    rows = json.loads(out)
    assert {r["budget"] for r in rows} == {4e9}
    assert "MODEXP_CONFIG_DIR" not in os.environ  # the command's setting does not outlive it


# --- modexp status ------------------------------------------------------------------------------------


def test_status_of_a_study_from_its_folder_alone(tmp_path: Path) -> None:
    argv = [
        "sweep=smoke",
        "sweep.budgets=[2e9]",
        "sweep.min_tokens_per_param=0.1",
        f"runs_dir={tmp_path / 'runs'}",
    ]
    plan = modexp(tmp_path, "sweep", *argv, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    sweep = modexp(tmp_path, "sweep", *argv, "sweep.variants=[baseline]")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    out = modexp(tmp_path, "status", str(tmp_path / "runs" / "smoke"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "2 runs: 2 done" in out.stdout and "100% of" in out.stdout, out.stdout
    # A run of the folder marked interrupted shows as such, with its reason.
    run_dir = next(p for p in (tmp_path / "runs" / "smoke").iterdir() if (p / "run.json").exists())
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted", "reason": "by test"}))
    out = modexp(tmp_path, "status", str(tmp_path / "runs" / "smoke"), "--format", "json")
    rows = json.loads(out.stdout)
    assert {r["state"] for r in rows} == {"done", "interrupted"}
    assert next(r for r in rows if r["state"] == "interrupted")["reason"] == "by test"
    # Without a folder: every study under runs_dir, one line each.
    out = modexp(tmp_path, "status", f"runs_dir={tmp_path / 'runs'}")
    assert out.returncode == 0 and "smoke" in out.stdout and "1 interrupted" in out.stdout, out.stdout


def test_status_of_a_folder_without_a_plan_is_one_line(tmp_path: Path) -> None:
    out = modexp(tmp_path, "status", str(tmp_path))
    assert out.returncode == 2 and "has no plan.json" in out.stderr and "Traceback" not in out.stderr


# --- the package --------------------------------------------------------------------------------------


def test_a_built_wheel_carries_its_presets_and_runs_from_anywhere(tmp_path: Path) -> None:
    """Not an editable install: the wheel alone (conf/ inside the package), run from another folder."""
    repo = Path(__file__).resolve().parents[1]
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("modexp-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled", "MODEXP_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "modexp.cli", *args],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
            timeout=600,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import modexp.config as c; print(c.CONF_DIR)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.strip() == str(target / "modexp" / "conf"), where
    plan = run("plan", "sweep=paper")
    assert plan.returncode == 0 and "d2560-l40" in plan.stdout, plan.stderr[-2000:]
    sweep = run(
        "sweep",
        "sweep=smoke",
        "sweep.budgets=[2e9]",
        "sweep.variants=[baseline]",
        "sweep.min_tokens_per_param=0.1",
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert (
        elsewhere / "runs" / "smoke" / "results.csv"
    ).exists()  # runs_dir is relative to the working folder


def test_shell_completion_knows_commands_presets_and_settings(tmp_path: Path, capsys) -> None:
    rc, out, _ = run_main(["completion", "bash"], capsys)
    assert rc == 0 and "sweep=paper" in out and "model.capacity=" in out and "launcher=slurm" in out
    script = tmp_path / "modexp.bash"
    script.write_text(out)
    rc, zsh, _ = run_main(["completion", "zsh"], capsys)
    assert rc == 0 and "bashcompinit" in zsh and "_modexp" in zsh

    # Typed into a real interactive bash (a pseudo-terminal): readline splits words at '=' as it does for you.
    with InteractiveBash(script) as bash:
        assert bash.complete("modexp st\t").endswith("modexp status ")
        assert bash.complete("modexp plan sweep=cpu_\t").endswith("sweep=cpu_lr ")  # a preset after '='
        assert bash.complete("modexp plan model.capa\t").endswith("model.capacity=")  # no space after '='
        assert bash.complete("modexp sweep --dr\t").endswith("--dry-run ")
        listed = bash.complete("modexp plan sweep=\t\t", until="smoke")
        assert "paper" in listed and "demo_lr" in listed and "sweep=paper" not in listed


def test_completion_gives_paths_where_a_command_takes_a_folder_and_the_users_own_presets(
    tmp_path: Path, capsys
) -> None:
    """`modexp analyze ru<TAB>` completes the folder (not runs_dir=); presets of --config-dir DIR (or
    MODEXP_CONFIG_DIR) are offered beside modexp's."""
    rc, out, _ = run_main(["completion", "bash"], capsys)
    script = tmp_path / "modexp.bash"
    script.write_text(out)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "mine" / "sweep").mkdir(parents=True)
    (tmp_path / "mine" / "sweep" / "tiny.yaml").write_text("defaults: [smoke]\nname: tiny\n")
    with InteractiveBash(script) as bash:
        bash.complete(f"cd {tmp_path}\n", until="$ ")
        assert bash.complete("modexp analyze ru\t", until="runs/").endswith("modexp analyze runs/")
        assert bash.complete("modexp status ru\t").endswith("modexp status runs")  # runs/ or runs_dir=
        assert bash.complete("modexp status runs_\t").endswith("modexp status runs_dir=")
        assert bash.complete("modexp status runs/\t", until="demo").endswith("modexp status runs/demo/")
        assert bash.complete("modexp plan --config-dir mine sweep=ti\t").endswith("sweep=tiny ")
        assert bash.complete("modexp sample --\t\t", until="--prompt")  # flags still complete


class InteractiveBash:
    """bash -i on a pseudo-terminal with a completion script sourced; complete() types keys, returns the echo."""

    def __init__(self, script: Path) -> None:
        self.script = script

    def __enter__(self) -> InteractiveBash:
        import pty

        env = {"PATH": os.environ["PATH"], "TERM": "dumb", "PS1": "$ ", "HOME": str(self.script.parent)}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
        os.write(self.fd, f"bind 'set bell-style none'; source {self.script}; echo sourced\n".encode())
        self._read_until("sourced\r\n$ ")
        return self

    def __exit__(self, *exc) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)

    def complete(self, keys: str, until: str = "") -> str:
        """The line as echoed once bash has answered (`until` in it) and then stayed quiet for 0.3 s."""
        os.write(self.fd, keys.encode())
        text = self._read_until(until or keys.rstrip("\t"), settle=0.3)
        os.write(self.fd, b"\x15\x0c")  # Ctrl-U, Ctrl-L: an empty line for the next one
        self._read_until("", settle=0.1)
        return text.rstrip("\x07")

    def _read_until(self, expected: str, settle: float = 0.0, timeout: float = 10.0) -> str:
        import select

        out, deadline, last = "", time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.05)[0]:
                out += os.read(self.fd, 65536).decode(errors="replace")
                last = time.monotonic()
            elif expected in out and time.monotonic() - last >= settle:
                return out
        raise AssertionError(f"bash did not answer {expected!r}: {out[-500:]!r}")
