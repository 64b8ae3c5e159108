"""Launchers: how a sweep's runs get trained, behind one protocol and a registry of names (launcher.name).

A launcher checks the config, describes how it would start the runs (the dry run's last line), and runs a
queue of jobs, each one run folder, starting a job only once the jobs it comes `after` are done. The run
folders stay the source of truth whatever the launcher: each job is `python -m modexp.train RUN_DIR`.
modexp's own are `local` (a pool of child processes, launch/local.py) and `slurm` (submitit, launch/slurm.py);
another is a class with `@register("name")` in a module named by the config's `plugins`.

Light on purpose: nothing here imports a launcher (submitit, subprocess pools) until one is used. The config
module does not import this package: a launcher's `validate` runs where the launcher is about to be used
(sweep.build_study, modexp train), so that config <- launcher is the only direction between them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import ModexpError

if TYPE_CHECKING:
    from ..config import Config
    from ..plan import RunSpec


@dataclass
class Job:
    """One run to train, in its folder, once the runs of the same queue named in `after` (run ids) are done."""

    spec: RunSpec
    run_dir: Path
    after: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class Options:
    """How the sweep asked for its queue to be run."""

    fail_fast: bool = False  # stop at the first failed run
    retry_failed: bool = False  # train runs that failed before, again
    detach: bool = False  # submit and return (a launcher with a queue of its own), collect on the next call
    on_tick: Callable[[], None] = lambda: None  # progress: called every so often while jobs run


class Launcher(Protocol):
    # The launcher.* keys it reads; one given on the command line that it does not read is refused as doing
    # nothing (modexp/unused.py). A launcher without the attribute is not checked.
    reads: tuple[str, ...]

    def validate(self, cfg: Config) -> None:
        """Refuse settings this launcher cannot honour (one line), once the config is checked."""

    def check(self, cfg: Config) -> None:
        """Refuse what cannot start here (no sbatch, no GPU), before a sweep writes anything."""

    def describe(self, cfg: Config) -> str | None:
        """The dry run's line on how the runs would be started (None: nothing to add); may refuse like check."""

    def run(self, jobs: list[Job], cfg: Config, folder: Path, options: Options) -> int | None:
        """Train the jobs. None when they have all ended (done or failed): the sweep collects them. An exit
        code when the sweep should stop now (detached, interrupted: a rerun picks them up)."""


# Launcher classes by name; modexp's own are imported only when asked for.
_REGISTRY: dict[str, type] = {}
_BUILTIN = {"local": "modexp.launch.local", "slurm": "modexp.launch.slurm"}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make `launcher.name=<name>` start runs with this class."""

    def add(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return add


def names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTRY]))


def get(name: str) -> Launcher:
    """A fresh launcher for launcher.name; a one-line error naming the launchers there are."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])  # registers it
    if name not in _REGISTRY:
        raise ModexpError(f"launcher.name={name} is not allowed: choose one of {', '.join(names())}")
    return _REGISTRY[name]()
