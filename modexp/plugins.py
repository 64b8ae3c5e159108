"""Plug-in modules (a variant kind, a launcher) are code: modexp imports one only when the user names it.

The user names plug-ins in their own config (`plugins:` in a preset or an override, for sweep, plan and
train), with `--plugins mod1,mod2` on the commands that read a study (analyze, sample, export), or in
MODEXP_PLUGINS=mod1,mod2 (a sweep sets it for the processes it starts, which read their run folders).

A study folder is data, never code: its runs' config.yaml lists the plug-ins they were trained with, and
reading the folder shows that list in one note (how to trust it) without importing anything it names.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import ModexpError

ENV = "MODEXP_PLUGINS"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SHOWN = 5  # a note names at most this many of a study's plug-ins


def is_module_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= 200 and _MODULE.fullmatch(name) is not None


def parse(names: str | Iterable[str] | None, source: str) -> list[str]:
    """Module names from a comma list (or a list of them); one line naming the bad entry and its source."""
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if name == "":
            continue
        if not is_module_name(name):
            raise ModexpError(
                f"{source}: {name!r} is not a module name: give importable module names separated by commas, "
                "e.g. my_variant,lab.plugins"
            )
        if name not in out:
            out.append(name)
    return out


def named(extra: str | Iterable[str] | None = None, source: str = "--plugins") -> list[str]:
    """The plug-ins the user named: MODEXP_PLUGINS, then `extra` (a --plugins value or a config's list)."""
    out = parse(os.environ.get(ENV), ENV)
    return out + [n for n in parse(extra, source) if n not in out]


def load(names: Iterable[str], source: str = "--plugins") -> list[str]:
    """Import each named module (it registers its kinds); one line for a module that does not import."""
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or whatever the module raises while it imports
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
            raise ModexpError(
                f"{source}: plug-in {name} does not import ({why}): put it on PYTHONPATH, or leave it out"
            ) from None
        loaded.append(name)
    return loaded


def load_named(extra: str | Iterable[str] | None = None, source: str = "--plugins") -> list[str]:
    """Import what the user named (MODEXP_PLUGINS and `extra`); returns the module names."""
    return load(named(extra, source), source)


def export(names: Iterable[str]) -> None:
    """Name `names` to the processes this one starts (its trainers read their run folders, not its config)."""
    merged = named(list(names), "plugins")
    if merged:
        os.environ[ENV] = ",".join(merged)


def loaded(name: str) -> bool:
    return name in sys.modules


def listed_in(config_text: str) -> list[str]:
    """The `plugins:` of a run folder's config.yaml, as data (nothing is imported); [] when there is none."""
    import yaml

    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return []
    listed = config.get("plugins") if isinstance(config, dict) else None
    return [n for n in listed if is_module_name(n)] if isinstance(listed, list) else []


def listed_by_study(folder: Path) -> list[str]:
    """Every plug-in the runs (and stems) of a study folder name in their config.yaml, sorted; read as data."""
    from .files import read_text

    names: set[str] = set()
    for path in [*folder.glob("*/config.yaml"), *folder.glob("stems/*/config.yaml")]:
        try:
            names.update(listed_in(read_text(path)))
        except (OSError, ValueError):
            continue  # an unreadable run folder is the scan's to report
    return sorted(names)


def untrusted_note(listed: Iterable[str], what: str = "this study") -> str | None:
    """One line for the plug-ins a folder names that this process has not imported: how to trust them."""
    missing = [n for n in listed if not loaded(n)]
    if not missing:
        return None
    shown = ",".join(missing[:SHOWN]) + (
        f" (and {len(missing) - SHOWN} more)" if len(missing) > SHOWN else ""
    )
    flag = ",".join(missing[:SHOWN])
    return (
        f"{what} names plug-in(s) {shown}, not imported: reading a study never runs code it names; if you "
        f"trust it, pass --plugins {flag} (or MODEXP_PLUGINS={flag}); without them its plug-in kinds keep "
        "their ids"
    )


def unknown_kind(routing: object, listed: Iterable[str], what: str, how: str | None = None) -> str:
    """Why a run's model cannot be built here: its routing is a plug-in's, and which plug-in to name.

    how: the way to name it (default: --plugins, or MODEXP_PLUGINS)."""
    names = [n for n in listed if not loaded(n)]
    flag = ",".join(names[:SHOWN]) or "MODULE"
    how = how or f"pass --plugins {flag} (or MODEXP_PLUGINS={flag})"
    if names:
        return (
            f"{what} has model routing {routing!r}, a plug-in's: its config.yaml names {flag}, not imported "
            f"(a run folder is data, never code); if you trust it, {how}"
        )
    return f"{what} has model routing {routing!r}, which no loaded variant kind has: {how}, naming the plug-in that registers it"


def require_kind(routing: object, run_dir: Path) -> None:
    """Refuse, in one line naming --plugins, a run whose model routing is a plug-in's not imported here."""
    from . import variants
    from .files import read_text

    if not isinstance(routing, str) or routing in variants.routings():
        return
    try:
        listed = listed_in(read_text(Path(run_dir) / "config.yaml"))
    except (OSError, ValueError):
        listed = []
    raise ModexpError(unknown_kind(routing, listed, f"run {run_dir}"))
