"""Training one run: the run folder contract, W&B offline mirror, resume after kill -9, bad data,
non-finite losses, the learning-rate schedule and determinism on CPU."""

from __future__ import annotations

import io
import json
import logging
import math
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from helpers import child_env, drop_new_handlers, read_metrics, train_in_process
from omegaconf import OmegaConf

import modexp.train as train_mod
from modexp import flops
from modexp.cli import main
from modexp.config import compose_config, to_typed
from modexp.model import Transformer
from modexp.plan import single_run
from modexp.rundir import run_state, sweep_dir, write_run
from modexp.sweep import run_config
from modexp.train import NonFiniteLoss, lr_at, train_run
from modexp.variants import model_config

EXE = Path(sys.executable).parent / "modexp"
# A MoD run of the smoke preset's shape: 204 steps of 8 x 64 tokens, about 2-3 s on one thread.
MOD_RUN = [
    "sweep=smoke",
    "budget=1e10",
    "model.d_model=16",
    "model.n_heads=2",
    "model.routing=topk",
]
TINY_BASELINE = ["sweep=smoke", "budget=2e9", "model.d_model=16", "model.n_heads=2"]  # 26 steps


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread (2 shared cores: more threads are ~10x slower here); undo what a run changes."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MODEXP_THREADS", "1")
    threads = torch.get_num_threads()
    handlers = list(logging.getLogger().handlers)
    yield
    torch.set_num_threads(threads)
    drop_new_handlers(handlers)


def only_run_dir(runs: Path) -> Path:
    dirs = [p for p in (runs / "smoke").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def mod_run(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted MoD run, in-process: (exit status, stdout, runs_dir, run folder)."""
    runs = tmp_path_factory.mktemp("mod_run") / "runs"
    threads = torch.get_num_threads()
    handlers = list(logging.getLogger().handlers)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        mp.setenv("MODEXP_THREADS", "1")
        rc, out, _ = train_in_process(["train", *MOD_RUN, f"runs_dir={runs}"])
    torch.set_num_threads(threads)
    drop_new_handlers(handlers)
    return rc, out, runs, only_run_dir(runs)


# --- the run folder ----------------------------------------------------------------------------------


def test_train_prints_its_run_folder(mod_run) -> None:
    rc, out, runs, run_dir = mod_run
    assert rc == 0
    assert out.strip().splitlines() == [str(run_dir)]
    assert run_dir.parent == runs / "smoke"
    assert run_dir.name.startswith("mod_c0.125_e2-d16-l4-1e10-")
    expected = {
        "config.yaml",
        "run.json",
        "meta.json",
        "status.json",
        "metrics.jsonl",
        "summary.json",
        "routing_sample.json",
        "train.log",
        "checkpoints",
    }
    assert expected <= {p.name for p in run_dir.iterdir()}
    # no temporary files left behind by the atomic writes
    assert not [p for p in run_dir.rglob("*.tmp")]
    # the corpus cache is under runs_dir too
    assert (runs / "_data").is_dir()


def test_config_yaml_is_resolved(mod_run) -> None:
    _, _, runs, run_dir = mod_run
    text = (run_dir / "config.yaml").read_text()
    assert "${" not in text
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.model.d_model == 16 and cfg.model.n_heads == 2 and cfg.model.routing == "topk"
    assert cfg.model.vocab_size == 256
    assert cfg.budget == 1e10
    assert cfg.runs_dir == str(runs)
    assert cfg.data.cache_dir == f"{runs}/_data"
    assert cfg.train.batch_size == 8 and cfg.model.seq_len == 64
    to_typed(cfg)  # a run folder's config reads back through the schema


def test_status_run_and_meta(mod_run) -> None:
    _, _, _, run_dir = mod_run
    run = json.loads((run_dir / "run.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert status["state"] == "done"
    assert status["step"] == status["steps"] == run["steps"] == summary["steps"]
    assert run_state(run_dir) == "done"
    assert run["run_id"] == run_dir.name == meta["run_id"]
    assert run["model"]["routing"] == "topk" and run["model"]["d_model"] == 16
    assert meta["code"]["modexp"]["commit"] and "working_tree" in meta["code"]
    for name in ("torch", "numpy", "hydra-core", "omegaconf", "wandb"):
        assert meta["packages"][name], name
    assert meta["device"] == "cpu"
    assert meta["torch_threads"] == 1
    assert meta["precision"] == "fp32"
    assert meta["corpus"]["fingerprint"] == summary["corpus_fingerprint"]
    assert len(meta["corpus"]["fingerprint"]) == 40
    assert meta["corpus"]["name"] == "stdlib"
    assert meta["resumed_from_step"] is None
    count = flops.count(model_config(**run["model"]))
    assert meta["accounting"]["params"] == count.params == summary["params"]
    assert meta["accounting"]["train_flops_per_token"] == count.train_per_token
    assert meta["accounting"]["shape"] == "d16-l4"


def test_summary(mod_run) -> None:
    _, _, _, run_dir = mod_run
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["budget"] == 1e10
    assert abs(s["flops"] / s["budget"] - 1) < 0.01
    model = model_config(**json.loads((run_dir / "run.json").read_text())["model"])
    count = flops.count(model)
    assert s["params"] == count.params
    assert s["non_embedding_params"] == count.non_embedding_params
    assert s["flops"] == pytest.approx(s["tokens"] * count.train_per_token, rel=1e-12)
    assert s["tokens"] % 64 == 0
    assert s["steps"] == math.ceil(s["tokens"] / 64 / 8)
    assert s["variant"] == "mod_c0.125_e2"
    assert (s["shape"], s["d_model"], s["n_layers"], s["n_heads"]) == ("d16-l4", 16, 4, 2)
    assert s["capacity"] == 0.125 and s["route_every"] == 2 and s["routing"] == "topk"
    assert s["wall_time"] > 0
    assert math.isfinite(s["val_loss"]) and math.isfinite(s["val_loss_causal"])
    # What causal routing did at validation is on record: the share it processed and its agreement with top-k.
    assert 0.0 <= s["val_causal_frac"] <= 1.0 and 0.0 <= s["val_causal_acc"] <= 1.0
    assert s["val_causal_acc"] >= 1 - s["val_causal_frac"] - 0.125 - 1e-9  # disagreements are bounded by both
    assert s["val_loss"] < math.log(256) - 1.0  # it learned something: well below a uniform guess


def test_metrics_jsonl(mod_run) -> None:
    _, _, _, run_dir = mod_run
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert {r["kind"] for r in records} == {"train", "val"}
    base_keys = {"step", "tokens", "flops", "loss", "lr", "grad_norm", "step_time", "tokens_per_s"}
    mod_keys = {
        "routed_frac/1",
        "routed_frac/3",
        "router_weight_mean/1",
        "router_weight_mean/3",
        "causal_acc",
    }
    for r in train:
        assert base_keys | mod_keys <= set(r), base_keys | mod_keys - set(r)
        assert "routed_frac/0" not in r and "routed_frac/2" not in r  # blocks 0 and 2 are dense
        assert r["routed_frac/1"] == pytest.approx(0.125)  # top-k: exactly k = 8 of 64 tokens
        assert 0.0 <= r["causal_acc"] <= 1.0
        assert 0.0 < r["router_weight_mean/1"] < 1.0  # sigmoid weights
        assert math.isfinite(r["loss"]) and r["grad_norm"] >= 0 and r["tokens_per_s"] > 0
        assert r["flops"] == pytest.approx(r["tokens"] * summary["train_flops_per_token"])
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps))
    assert steps[0] == 1 and steps[-1] == summary["steps"]
    assert all(s % 5 == 0 for s in steps[1:-1])  # smoke's log_every=5
    assert train[-1]["tokens"] == summary["tokens"]
    assert train[-1]["flops"] == pytest.approx(summary["flops"])
    assert max(r["lr"] for r in train) <= 3e-3 + 1e-12
    assert train[-1]["lr"] == pytest.approx(0.1 * 3e-3)
    assert train[-1]["loss"] < train[0]["loss"]
    n = summary["steps"]
    assert [r["step"] for r in val] == sorted(
        {*range(50, n + 1, 50), n}
    )  # smoke's eval_every=50, and the end
    for r in val:
        assert math.isfinite(r["val_loss"]) and math.isfinite(r["val_loss_causal"])
    assert val[-1]["val_loss"] == summary["val_loss"]
    assert val[-1]["val_loss_causal"] == summary["val_loss_causal"]


def test_checkpoint_loads_with_weights_only(mod_run) -> None:
    _, _, _, run_dir = mod_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    run = json.loads((run_dir / "run.json").read_text())
    assert state["step"] == run["steps"]
    assert state["run_id"] == run["run_id"]
    # train.keep=final-weights (the default): a done run keeps its final weights alone
    assert {"model", "wall_time", "model_config"} <= set(state) and "optimizer_fqn" not in state
    assert not (run_dir / "checkpoints" / "previous.pt").exists()
    model = Transformer(model_config(**run["model"]))
    model.load_state_dict(state["model"])  # strict: every key and shape matches
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_routing_sample(mod_run) -> None:
    _, _, _, run_dir = mod_run
    sample = json.loads((run_dir / "routing_sample.json").read_text())
    assert sample["layers"] == [1, 3]
    assert sample["capacity"] == 0.125
    assert len(sample["tokens"]) == 64
    assert isinstance(sample["text"], str) and sample["text"]
    for selected, weights in zip(sample["selected"], sample["router_weights"]):
        assert len(selected) == 64 and sum(selected) == 8
        assert len(weights) == 64 and all(0.0 < w < 1.0 for w in weights)


def test_train_again_is_a_no_op_when_done(mod_run) -> None:
    rc0, _, runs, run_dir = mod_run
    before = (run_dir / "summary.json").read_text()
    metrics = (run_dir / "metrics.jsonl").read_text()
    rc, out, _ = train_in_process(["train", *MOD_RUN, f"runs_dir={runs}"])
    assert rc == 0
    assert out.strip() == str(run_dir)
    assert (run_dir / "summary.json").read_text() == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_same_run_twice_gives_the_same_val_loss(mod_run, tmp_path: Path) -> None:
    _, _, _, run_a = mod_run
    rc, _, _ = train_in_process(["train", *MOD_RUN, f"runs_dir={tmp_path / 'runs'}"])
    assert rc == 0
    run_b = only_run_dir(tmp_path / "runs")
    assert run_b.name == run_a.name
    a = json.loads((run_a / "summary.json").read_text())
    b = json.loads((run_b / "summary.json").read_text())
    assert b["val_loss"] == a["val_loss"]
    assert b["val_loss_causal"] == a["val_loss_causal"]
    losses_a = [r["loss"] for r in read_metrics(run_a) if r["kind"] == "train"]
    losses_b = [r["loss"] for r in read_metrics(run_b) if r["kind"] == "train"]
    assert losses_a == losses_b


# --- resume after kill -9 ----------------------------------------------------------------------------


def test_resume_after_kill_matches_uninterrupted_run(mod_run, tmp_path: Path) -> None:
    _, _, _, run_a = mod_run
    runs = tmp_path / "runs"
    run_dir = runs / "smoke" / run_a.name  # checkpoint_every is not part of the run's identity
    argv = ["train", *MOD_RUN, f"runs_dir={runs}", "train.checkpoint_every=10"]
    with open(tmp_path / "child.log", "w") as log:
        proc = subprocess.Popen(
            [str(EXE), *argv], stdout=log, stderr=subprocess.STDOUT, env=child_env(tmp_path), cwd=tmp_path
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                status = {}
                if (run_dir / "status.json").exists():
                    status = json.loads((run_dir / "status.json").read_text())
                if status.get("state") == "running" and status.get("step", 0) >= 10:
                    break
                assert proc.poll() is None, (
                    "the run ended before it could be killed: " + (tmp_path / "child.log").read_text()
                )
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((run_dir / "status.json").read_text())["step"]
    assert not (run_dir / "summary.json").exists()
    assert run_state(run_dir) == "interrupted"  # 'running' in status.json, but nobody holds the lock

    rc, out, _ = train_in_process(argv)
    assert rc == 0
    assert out.strip() == str(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    a = json.loads((run_a / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    assert meta["resumed_from_step"] is not None
    assert killed_at <= meta["resumed_from_step"] < b["steps"]
    assert meta["resumed_from_step"] % 10 == 0
    assert abs(b["val_loss"] - a["val_loss"]) < 1e-4
    assert b["flops"] == a["flops"] and b["tokens"] == a["tokens"]
    records = read_metrics(run_dir)
    for kind in ("train", "val"):
        steps = [r["step"] for r in records if r["kind"] == kind]
        assert len(steps) == len(set(steps)), (kind, steps)
        assert steps == sorted(steps)
        assert steps[-1] == b["steps"]
    val_a = {r["step"]: r["val_loss"] for r in read_metrics(run_a) if r["kind"] == "val"}
    val_b = {r["step"]: r["val_loss"] for r in records if r["kind"] == "val"}
    assert val_b.keys() == val_a.keys()
    for step in val_a:
        assert abs(val_b[step] - val_a[step]) < 1e-4, step
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


# --- W&B offline mirror ------------------------------------------------------------------------------


def test_wandb_offline_run_lands_inside_the_run_folder(tmp_path: Path) -> None:
    env = child_env(tmp_path)
    env.pop("WANDB_MODE")
    for key in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY"):
        env.pop(key, None)
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb_config")
    env["WANDB_CACHE_DIR"] = str(tmp_path / "wandb_cache")
    env["WANDB_DATA_DIR"] = str(tmp_path / "wandb_data")
    work = tmp_path / "cwd"
    work.mkdir()
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [str(EXE), "train", *TINY_BASELINE, f"runs_dir={runs}", "tracker.wandb.mode=offline"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(runs)
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(run_dir.rglob("*"))
    assert files[0].stat().st_size > 0
    # The W&B id: the run's hash and its study folder's, so a rerun resumes the same W&B run and another
    # study with the same run does not.
    assert f"run-{run_dir.name.rsplit('-', 1)[1]}-" in files[0].name
    assert not (work / "wandb").exists()  # nothing in the working directory
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert (run_dir / "summary.json").exists()


# --- bad data ----------------------------------------------------------------------------------------


def _no_run_left(runs: Path) -> None:
    if not runs.exists():
        return
    assert {p.name for p in runs.iterdir()} <= {"_data"}, list(runs.rglob("*"))
    if (runs / "_data").exists():
        assert not [p for p in (runs / "_data").iterdir() if p.is_dir()], list((runs / "_data").rglob("*"))
    assert not list(runs.rglob("summary.json"))


def test_text_data_missing_path_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    missing = tmp_path / "no_such.txt"
    rc, out, err = train_in_process(
        ["train", *TINY_BASELINE, f"runs_dir={runs}", "data=text", f"data.path={missing}"]
    )
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modexp: error:") and str(missing) in lines[0] and "does not exist" in lines[0]
    assert out == ""
    _no_run_left(runs)


def test_text_data_without_path_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    rc, out, err = train_in_process(["train", *TINY_BASELINE, f"runs_dir={runs}", "data=text"])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "data.path" in lines[0]
    _no_run_left(runs)


def test_text_data_too_short_is_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello world\n")
    rc, out, err = train_in_process(
        ["train", *TINY_BASELINE, f"runs_dir={runs}", "data=text", f"data.path={tiny}"]
    )
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("modexp: error:")
    _no_run_left(runs)


def test_console_script_missing_data_no_traceback(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [
            str(EXE),
            "train",
            *TINY_BASELINE,
            f"runs_dir={runs}",
            "data=text",
            f"data.path={tmp_path / 'nope'}",
        ],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    _no_run_left(runs)


# --- non-finite loss ---------------------------------------------------------------------------------


def _nan_model(from_call: int) -> type[Transformer]:
    class NaNFrom(Transformer):
        """From the from_call-th training forward on, the loss is NaN (and so, after a step, the weights)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls = 0

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            if self.training:
                self.calls += 1
                if self.calls >= from_call:
                    out.loss = out.loss * float("nan")
            return out

    return NaNFrom


def _write_run(runs: Path, *overrides: str) -> Path:
    dict_cfg = compose_config([*TINY_BASELINE, f"runs_dir={runs}", *overrides])
    cfg = to_typed(dict_cfg)
    spec = single_run(cfg)
    run_dir = sweep_dir(cfg) / spec.run_id
    write_run(run_dir, run_config(dict_cfg, spec), spec)
    return run_dir


def test_non_finite_loss_fails_the_run_with_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod.variants, "build_model", _nan_model(7))  # train builds through the registry
    run_dir = _write_run(tmp_path / "runs")  # log_every=5 (smoke)
    with pytest.raises(NonFiniteLoss, match="step 10"):
        train_run(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["step"] == 10  # the first logged step at or after the first NaN
    assert "non-finite" in status["reason"]
    assert run_state(run_dir) == "failed"
    assert not (run_dir / "summary.json").exists()
    steps = [r["step"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert steps == [1, 5]  # nothing logged from the failing step


def test_failed_run_keeps_a_finite_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod.variants, "build_model", _nan_model(12))
    run_dir = _write_run(tmp_path / "runs", "train.log_every=10", "train.checkpoint_every=5")
    with pytest.raises(NonFiniteLoss):
        train_run(run_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] <= 11
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_cli_non_finite_loss_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod.variants, "build_model", _nan_model(7))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(["train", *TINY_BASELINE, f"runs_dir={tmp_path / 'runs'}"])
        except NonFiniteLoss:
            rc = None
    assert rc is not None and rc != 0
    assert "non-finite" in err.getvalue()


# --- logging -----------------------------------------------------------------------------------------


def test_in_process_runs_keep_their_logs_apart(tmp_path: Path) -> None:
    first = _write_run(tmp_path / "a")
    train_run(first)
    second = _write_run(tmp_path / "b", "seed=1")
    train_run(second)
    assert second.name not in (first / "train.log").read_text()
    assert second.name in (second / "train.log").read_text()


# --- learning-rate schedule --------------------------------------------------------------------------


def test_lr_schedule() -> None:
    peak, steps, warmup, ratio = 1e-3, 101, 10, 0.1
    lrs = [lr_at(s, steps, peak, warmup, ratio) for s in range(steps)]
    # linear warm-up: lr = peak * (step + 1) / warmup
    for s in range(warmup):
        assert lrs[s] == pytest.approx(peak * (s + 1) / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)  # cosine starts at the peak
    # cosine in between: halfway through the decay, halfway between peak and the floor
    mid = warmup + (steps - 1 - warmup) // 2
    assert lrs[mid] == pytest.approx(peak * (ratio + (1 - ratio) * 0.5))
    quarter = warmup + (steps - 1 - warmup) / 4
    assert lr_at(int(quarter), steps, peak, warmup, ratio) == pytest.approx(
        peak
        * (
            ratio
            + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * (int(quarter) - warmup) / (steps - 1 - warmup)))
        )
    )
    # ends at min_lr_ratio * peak exactly at the last step, decreasing monotonically after warm-up
    assert lrs[-1] == pytest.approx(ratio * peak)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert min(lrs) >= ratio * peak * (1 - 1e-12)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))


@pytest.mark.parametrize("steps", [20, 82, 204, 1000])
def test_lr_schedule_as_the_trainer_uses_it(steps: int) -> None:
    warmup = min(1000, max(1, round(0.05 * steps)))
    assert lr_at(steps - 1, steps, 3e-3, warmup, 0.1) == pytest.approx(3e-4)
    assert lr_at(0, steps, 3e-3, warmup, 0.1) == pytest.approx(3e-3 / warmup)


def test_predictor_gradients_never_scale_the_trunk_update() -> None:
    """With one global clip norm a large predictor gradient would shrink the LM's step: clipped apart."""
    import torch

    from modexp.model import Transformer
    from modexp.train import clip_gradients, split_predictor_params

    cfg = model_config(vocab_size=256, seq_len=32, d_model=32, n_layers=4, n_heads=2, routing="topk")
    model = Transformer(cfg)
    tokens = torch.randint(0, 256, (2, 33))
    out = model(tokens[:, :-1], tokens[:, 1:])
    (out.loss + 1e4 * out.aux_loss).backward()  # a predictor gradient far above the clip threshold
    trunk, predictor = split_predictor_params(model)
    assert predictor and len(trunk) + len(predictor) == len(list(model.parameters()))
    before = [p.grad.clone() for p in trunk]
    expected = torch.stack([p.grad.norm() for p in trunk]).norm()
    scale = min(1.0, 1.0 / (float(expected) + 1e-6))
    norm = clip_gradients(trunk, predictor, max_norm=1.0)
    assert float(norm) == pytest.approx(float(expected))  # what is logged is the model's own norm
    for b, p in zip(before, trunk):
        torch.testing.assert_close(p.grad, b * scale)
    assert float(torch.stack([p.grad.norm() for p in predictor]).norm()) <= 1.0 + 1e-4
