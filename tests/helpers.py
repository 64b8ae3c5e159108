"""Helpers several test files call: running the CLI in-process, reading a run's metrics, a child process's
environment. Fixtures stay in conftest.py; synthetic results tables in fixtures_results.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from modexp.cli import main


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); argparse's SystemExit counts as a return."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def train_in_process(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr), captured without capsys (usable in module fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def drop_new_handlers(before: list[logging.Handler]) -> None:
    """Remove the root logging handlers a run added since `before`: a run's log file handler must not
    outlive its test."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
            handler.close()


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def child_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a modexp child process: no W&B, one thread, a HOME of its own."""
    return {**os.environ, "WANDB_MODE": "disabled", "MODEXP_THREADS": "1", "HOME": str(tmp_path / "home")}


def start_detached(cmd: list[str], log, tmp_path: Path) -> subprocess.Popen:
    """A modexp command in a session of its own (so a test can kill its whole group), output into `log`."""
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(tmp_path),
        cwd=tmp_path,
        start_new_session=True,
    )


def trainer_pids(run_dir: Path, inside: bool = False) -> list[int]:
    """Pids of live `python -m modexp.train` processes of run_dir (inside: of any run folder under it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        target = str(run_dir).encode()
        ours = any(target in a for a in argv) if inside else target in argv
        if b"modexp.train" in argv and ours and state != "Z":
            pids.append(int(proc.name))
    return pids


def assert_counts_match(cfg, batch: int = 2) -> None:
    """A kind's own parameter and FLOP counts (its config, modexp.flops) against the model its kind builds: every
    parameter, and the matmul FLOPs torch's FlopCounterMode sees for a forward and a backward on the explicit
    attention path (on CPU the counter does not see SDPA), to 1e-9."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modexp import flops, variants

    cfg = dataclasses.replace(cfg, attention="math")
    torch.manual_seed(0)
    model = variants.build_model(cfg)
    count = flops.count(cfg)
    assert (count.params, count.non_embedding_params) == (model.num_params(), model.num_params(True)), cfg
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, x)
        (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    counted = counter.get_total_flops() / (batch * cfg.seq_len)
    assert abs(counted / count.train_per_token - 1) < 1e-9, (cfg, counted, count.train_per_token)
