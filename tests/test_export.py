"""modexp export (issue 26): a baseline and a MoD run, loaded from their export alone, give the run's own
validation losses."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import drop_new_handlers, run_main, train_in_process

from modexp.config import to_typed
from modexp.data import load_corpus
from modexp.evaluation import evaluate
from modexp.export import load_export
from modexp.rundir import load_run

TINY = ["sweep=smoke", "model.d_model=16", "model.n_heads=2"]
RUNS = {"baseline": ["budget=2e9"], "mod": ["budget=2e9", "model.routing=topk"]}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on 2 shared cores more threads are ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export") / "runs"
    handlers, threads = list(logging.getLogger().handlers), torch.get_num_threads()
    found = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("MODEXP_THREADS", "1")
        for name, extra in RUNS.items():
            rc, out, err = train_in_process(["train", *TINY, *extra, f"runs_dir={root / name}"])
            assert rc == 0, err
            found[name] = Path(out.strip())
    torch.set_num_threads(threads)
    drop_new_handlers(handlers)
    return found


@pytest.mark.parametrize("name", list(RUNS))
def test_an_export_reproduces_the_runs_validation_loss(
    runs: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = runs[name]
    rc, out, err = run_main(["export", str(run_dir), "--out", str(tmp_path / "export")], capsys)
    assert rc == 0, err
    folder = Path(out.strip())
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    model = load_export(folder)
    cfg = to_typed(load_run(run_dir)[0])
    corpus = load_corpus(cfg.data, cfg.model.seq_len)
    batches = corpus.val_batches(cfg.train.batch_size, cfg.model.seq_len, cfg.train.eval_tokens)
    losses = evaluate(model, batches, torch.device("cpu"), contextlib.nullcontext(), cfg.seed)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert losses["val_loss"] == pytest.approx(summary["val_loss"], abs=1e-5)
    if name == "mod":
        assert losses["val_loss_causal"] == pytest.approx(summary["val_loss_causal"], abs=1e-5)
    assert json.loads((folder / "config.json").read_text())["val_loss"] == summary["val_loss"]


def test_export_of_a_folder_that_is_no_run_is_one_line(tmp_path: Path, capsys) -> None:
    rc, _, err = run_main(["export", str(tmp_path), "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and err.startswith("modexp: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
