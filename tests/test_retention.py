"""train.keep (issue 26): what a done run keeps of its checkpoints; never anything but last.pt/previous.pt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modexp.errors import ModexpError
from modexp.retention import retain_checkpoints


def checkpoints(run_dir: Path) -> Path:
    """A run's checkpoints as training leaves them, plus a branch point that is not the run's to drop."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    state = {
        "model": {"w": torch.ones(64, 64)},
        "optimizer_fqn": {"state": {"w": {"exp_avg": torch.ones(64, 64), "exp_avg_sq": torch.ones(64, 64)}}},
        "rng_cpu": torch.get_rng_state(),
        "step": 10,
        "wall_time": 1.0,
        "model_config": {"d_model": 64},
        "run_id": "baseline-x",
    }
    for name in ("last.pt", "previous.pt", "step-5.pt"):
        torch.save(state, folder / name)
    return folder


@pytest.mark.parametrize(
    ("keep", "files", "optimiser"),
    [
        ("final-weights", {"last.pt", "step-5.pt"}, False),
        ("last", {"last.pt", "step-5.pt"}, True),
        ("all", {"last.pt", "previous.pt", "step-5.pt"}, True),
    ],
)
def test_keep(tmp_path: Path, keep: str, files: set[str], optimiser: bool) -> None:
    folder = checkpoints(tmp_path)
    branch = (folder / "step-5.pt").read_bytes()
    before = (folder / "last.pt").stat().st_size
    retain_checkpoints(tmp_path, keep)
    retain_checkpoints(tmp_path, keep)  # again (a rerun of a done run): nothing changes
    assert {p.name for p in folder.iterdir()} == files
    assert (folder / "step-5.pt").read_bytes() == branch
    state = torch.load(folder / "last.pt", weights_only=True)
    assert torch.equal(state["model"]["w"], torch.ones(64, 64)) and state["step"] == 10
    assert ("optimizer_fqn" in state) == optimiser
    if not optimiser:
        assert (folder / "last.pt").stat().st_size < before / 2


def test_a_bad_keep_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModexpError, match="train.keep=some is not allowed: choose last, final-weights, all"):
        retain_checkpoints(tmp_path, "some")
