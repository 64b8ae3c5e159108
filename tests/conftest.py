"""Shared test set-up: W&B off unless a test turns it on, and no test writes outside its tmp folders."""

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Module- and session-scoped fixtures train runs before any test's own cache is set (below): they get a
    cache of the session's, never the developer's (their runs would enter its measured paces)."""
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="modexp-test-cache-")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """modexp's per-machine cache (device peaks, measured paces: modexp/device.py) in a folder of the test's
    own, so that no test reads what another, or the developer's machine, measured."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
