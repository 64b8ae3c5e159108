"""Which code a run ran: modexp's own commit and, separately, the user's working tree.

modexp's commit is recorded into the package when it is built (setup.py writes modexp/_build.py into the
wheel); an editable install reads it from its own source checkout. git run from an installed package would
find whatever repository the venv sits in (often the user's), so it is never asked there: without a build
record or a checkout the commit is "unknown".
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
PACKAGE = Path(__file__).resolve().parent


def git_state(folder: Path) -> dict[str, Any] | None:
    """{"path", "commit", "dirty"} of the git working tree holding `folder`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None  # not a repository, no commit yet, or no git
    return {"path": top, "commit": commit, "dirty": dirty}


def _source_checkout(package: Path) -> Path | None:
    """The modexp source tree `package` runs from (an editable install), else None."""
    pyproject = package.parent / "pyproject.toml"
    try:
        return package.parent if 'name = "modexp"' in pyproject.read_text() else None
    except OSError:
        return None


def modexp_version(package: Path = PACKAGE) -> dict[str, Any]:
    """{"commit", "dirty", "from"}: from the build record, the source checkout, or "unknown"."""
    try:
        from . import _build  # written by setup.py at build time; absent in a source tree

        return {"commit": _build.COMMIT, "dirty": _build.DIRTY, "from": "build"}
    except ImportError:
        pass
    checkout = _source_checkout(package)
    state = git_state(checkout) if checkout else None
    if state and Path(state["path"]).resolve() == checkout.resolve():
        return {"commit": state["commit"], "dirty": state["dirty"], "from": "checkout"}
    return {"commit": UNKNOWN, "dirty": UNKNOWN, "from": UNKNOWN}


def code_version(cwd: Path | None = None) -> dict[str, Any]:
    """meta.json's "code": modexp's commit, and the working tree the run was started in (None outside one)."""
    return {"modexp": modexp_version(), "working_tree": git_state(Path(cwd or Path.cwd()))}
