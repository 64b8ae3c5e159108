"""meta.json's provenance (issue 26): modexp's own commit from its build (or its checkout, or "unknown"),
never the repository an installed copy happens to sit in; the user's working tree recorded separately."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from modexp.provenance import code_version, modexp_version

ROOT = Path(__file__).resolve().parent.parent


def git_repo(folder: Path) -> str:
    """A git repository with one commit in `folder`; returns the commit."""
    folder.mkdir(parents=True, exist_ok=True)
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "train_notes.txt").write_text("mine\n")
    subprocess.run(["git", *env, "-C", str(folder), "add", "."], check=True)
    subprocess.run(["git", *env, "-C", str(folder), "commit", "-qm", "x"], check=True)
    return subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_an_installed_copy_inside_a_users_repository_does_not_take_its_commit(tmp_path: Path) -> None:
    user_commit = git_repo(tmp_path / "project")
    installed = tmp_path / "project" / ".venv" / "lib" / "site-packages" / "modexp"
    installed.mkdir(parents=True)
    version = modexp_version(installed)
    assert version == {"commit": "unknown", "dirty": "unknown", "from": "unknown"}
    assert user_commit not in str(version)


def test_the_working_tree_is_recorded_beside_modexps_commit(tmp_path: Path) -> None:
    user_commit = git_repo(tmp_path / "project")
    code = code_version(tmp_path / "project")
    assert code["working_tree"] == {
        "path": str((tmp_path / "project").resolve()),
        "commit": user_commit,
        "dirty": False,
    }
    assert code["modexp"]["commit"] != user_commit and code["modexp"]["from"] in (
        "checkout",
        "build",
        "unknown",
    )
    (tmp_path / "elsewhere").mkdir()
    assert code_version(tmp_path / "elsewhere")["working_tree"] is None  # outside any repository


def test_the_build_records_modexps_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    written = (tmp_path / "modexp" / "_build.py").read_text()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert f"COMMIT = '{head}'" in written
    record = types.ModuleType("modexp._build")
    exec(written, record.__dict__)
    monkeypatch.setitem(sys.modules, "modexp._build", record)
    assert modexp_version() == {"commit": head, "dirty": record.DIRTY, "from": "build"}
