"""Shared test set-up: W&B off unless a test turns it on, and no test writes outside its tmp folders."""

import pytest


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """modexp's per-machine cache (device peaks, measured paces: modexp/device.py) in a folder of the test's
    own, so that no test reads what another, or the developer's machine, measured."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
