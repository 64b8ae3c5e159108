"""What a result depends on is recorded, checked and never pooled; no history is lost (issue 25)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modexp.tracking import MetricsLog, truncate_metrics


def _metrics(path: Path, steps: range) -> list[str]:
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / (s + 1)}) for s in steps]
    path.write_text("".join(line + "\n" for line in lines))
    return lines


# --- metrics.jsonl ------------------------------------------------------------------------------------


def test_metrics_truncation_is_atomic_a_failed_rename_keeps_the_whole_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill during the truncation at resume (here: the rename fails) leaves the old file, not an empty one."""
    path = tmp_path / "metrics.jsonl"
    lines = _metrics(path, range(1, 101))

    def killed(src, dst):
        raise KeyboardInterrupt  # as a signal between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        truncate_metrics(path, 40)
    assert path.read_text().splitlines() == lines
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("step", [0, 17, 99, 100, 500])
def test_metrics_resume_keeps_the_prefix_through_a_new_file_and_appends(tmp_path: Path, step: int) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = _metrics(path, range(1, 101))
    with path.open("a") as f:
        f.write('{"kind": "train", "st')  # a line torn by a kill
    inode = path.stat().st_ino
    log = MetricsLog(path, step)
    log.write({"kind": "val", "step": step + 1})
    log.close()
    kept = path.read_text().splitlines()
    assert kept[:-1] == lines[: min(step, 100)]
    assert json.loads(kept[-1])["kind"] == "val"
    assert path.stat().st_ino != inode  # replaced by a rename, never rewritten in place


# --- stray runs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan", [None, "{not json", '{"sweep": "fixture"}', '{"planned_ids": ["nothing-done"]}']
)
def test_runs_taken_unchecked_are_a_note(tmp_path: Path, plan: str | None) -> None:
    """Without a plan.json that names finished runs, every done run enters the fits: the analysis says so."""
    from fixtures_results import make_sweep

    from modexp.analysis.table import scan_sweep

    sweep = make_sweep(tmp_path, budgets=(1e11,), n_sizes=3, unbracketed_budget=None)
    if plan is None:
        (sweep / "plan.json").unlink()
    else:
        (sweep / "plan.json").write_text(plan)
    collection = scan_sweep(sweep)
    assert len(collection.table) == 6
    assert any("entered the fits" in n or "the fits use the 6 done runs" in n for n in collection.notes)
