"""The front door (issue 35): a README of a few screens whose every command works as written, docs whose links
resolve, a configuration reference that is what the schemas say, and `make slurm-up` that asks before it
acts as root."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import run_main

from modexp import configdoc
from modexp.cli import parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_the_configuration_reference_is_what_the_schemas_say() -> None:
    """docs/configuration.md is generated (make docs); a schema, range or conf/ comment changed without
    regenerating it fails here."""
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configdoc.render(), "docs/configuration.md is stale: run `make docs`"


def test_the_reference_lists_every_setting_with_when_it_counts() -> None:
    text = configdoc.render()
    from modexp.config import Config
    from modexp.ranges import numeric_fields

    for key, _, _ in numeric_fields(Config(), ""):  # every numeric leaf of the defaults
        assert f"`{key.split('[')[0]}`" in text or ".lr_law." in key, key
    assert "| `data.path` | `null` | text or null | data=text or data=tokens |" in text
    assert "| `launcher.partition` | `null` | text or null | launcher=slurm |" in text
    assert "| `train.cooldown_fraction` | `0.2` |" in text and "train.schedule=wsd" in text


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    long = [line for line in lines if len(line) > 110]
    assert not long, long
    assert README.read_text().count("What the demo measured") == 1  # one demo result, quoted in one place


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), (page.name, target)


def tour() -> list[str]:
    """The commands of the README's tour and install blocks, as written."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("source "):
                commands.append(command)
    return commands


def test_the_tour_is_what_this_test_covers() -> None:
    """A command added to the README's tour must be added to the checks below (RUN, PLANNED or PARSED), and
    every command checked there must be in the tour."""
    commands = [c.removeprefix("make slurm-up && ") for c in tour()]  # slurm-up: the Makefile test below
    assert len(commands) == len(set(commands)), commands
    assert set(commands) == {"make install", "make demo", *RUN, *PLANNED, *PARSED}


# The tour's cheap commands run as written, in a fresh folder (runs/ relative to it, as for a user).
RUN = [
    "modexp plan",
    "modexp plan sweep=paper --format json",
    "modexp sweep model.capacity=0.125,0.5 --dry-run",
    "modexp status",
    "modexp plan sweep=gpu --cfg job",
]


@pytest.mark.parametrize("command", RUN)
def test_the_tours_cheap_commands_run_as_written(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # a fresh clone has runs/ (runs/.gitkeep)
    rc, out, err = run_main(shlex.split(command)[1:], capsys)
    assert rc == 0, err
    assert "Traceback" not in err and out


# The others train or need a finished study: their arguments parse as written and what they would train
# plans (settings checked, the ladder built), without training.
PLANNED = {
    "modexp sweep sweep=smoke": "sweep",
    "modexp sweep sweep=mor": "sweep",
    "modexp train sweep=smoke budget=1e10 model.routing=topk model.d_model=16 model.n_heads=2": "train",
    "modexp sweep launcher=slurm sweep=smoke": "sweep",
}
PARSED = [
    "modexp status runs/smoke",
    "modexp analyze runs/demo",
    "modexp analyze runs/demo --loss topk",
    "modexp analyze runs/mor --plugins modexp.mor",
    'modexp sample runs/demo/<id> --prompt "def " --show-routing',
    "modexp export runs/demo/<id> --out exported/",
    "modexp bench --quick --out runs/bench",
    "modexp selfcheck calibration --studies 20",
]


@pytest.fixture
def plugins_restored(monkeypatch: pytest.MonkeyPatch):
    """A preset that names a plug-in (sweep=mor) registers its kinds and names it to child processes through
    MODEXP_PLUGINS: both are undone after the test, as for a process that ended."""
    from modexp.variants import base as registry

    kinds = dict(registry._REGISTRY)
    monkeypatch.setenv("MODEXP_PLUGINS", "")
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(kinds)


@pytest.mark.parametrize("command", [*PLANNED, *PARSED])
@pytest.mark.usefixtures("plugins_restored")
def test_the_tours_other_commands_parse_and_plan(command: str, tmp_path: Path) -> None:
    argv = shlex.split(command)[1:]
    args, rest = parser().parse_known_args(argv)
    assert not [a for a in rest if a.startswith("--")], rest
    if command not in PLANNED:
        assert not rest or args.command == "status", rest
        return
    overrides = [*rest, f"runs_dir={tmp_path / 'runs'}"]
    if PLANNED[command] == "sweep":
        from modexp.sweep import build_study

        assert build_study(overrides).plan.runs
    else:
        from modexp.config import compose_config, to_typed
        from modexp.plan import single_run
        from modexp.unused import refuse_unused

        cfg = to_typed(compose_config(overrides, export=False))
        refuse_unused(overrides, cfg, "train")
        assert single_run(cfg).variant.startswith("mod_")


def test_the_makefile_has_the_targets_the_readme_names() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"\bmake ([a-z-]+)", README.read_text()):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_slurm_up_says_what_it_does_and_asks_before_acting(tmp_path: Path) -> None:
    """Outside CI and without SLURM_UP_YES=1 (make slurm-up YES=1), it says it installs packages and
    rewrites /etc/slurm as root, and does nothing when it cannot ask (no terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SLURM_UP_YES", "SLURM_UP_CONFIRMED")}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-up.sh")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "apt-get" in proc.stdout and "/etc/slurm/slurm.conf" in proc.stdout and "as root" in proc.stdout
    assert "nothing done" in proc.stderr and "YES=1" in proc.stderr
