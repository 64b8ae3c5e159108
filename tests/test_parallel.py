"""How a step is computed never changes what it computes: micro-batches, several gloo processes per run
(DDP and FSDP), activation checkpointing; kill -9 of a 2-process run resumes exactly; memory estimates."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import child_env, start_detached, train_in_process, trainer_pids

from modexp import flops
from modexp.distributed import World, chunks, share
from modexp.errors import ModexpError
from modexp.launch.slots import make_slots, visible_gpus
from modexp.memory import estimate, resolve_micro_batch
from modexp.model import Transformer
from modexp.variants import model_config

EXE = Path(sys.executable).parent / "modexp"
TINY = [
    "sweep=smoke",
    "sweep.min_tokens_per_param=0.1",
    "model.d_model=16",
    "model.n_heads=2",
    "train.log_every=1",
    "train.eval_every=10",
]
VARIANTS = {
    "baseline": [],
    "mod": ["model.routing=topk"],
    "mod_aux": ["model.routing=topk", "model.causal_router=aux_loss"],
    "random": ["model.routing=random"],
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODEXP_THREADS", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def budget_with_last_batch(extra: list[str], rows: int, steps: int = 12) -> float:
    """A budget whose run has `steps` full batches of 8 and a last one of `rows` sequences."""
    routing = next((o.split("=")[1] for o in extra if o.startswith("model.routing=")), "none")
    causal = next((o.split("=")[1] for o in extra if o.startswith("model.causal_router=")), "predictor")
    cfg = model_config(d_model=16, n_heads=2, seq_len=64, routing=routing, causal_router=causal)
    return (8 * steps + rows) * flops.count(cfg).train_per_token * 64


def run_folder(runs: Path) -> Path:
    dirs = [p for p in (runs / "smoke").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def losses(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    val = {r["step"]: r["val_loss"] for r in records if r["kind"] == "val"}
    return train, val


def assert_same_losses(a: Path, b: Path, tol: float = 1e-4) -> None:
    (train_a, val_a), (train_b, val_b) = losses(a), losses(b)
    assert train_a.keys() == train_b.keys() and val_a.keys() == val_b.keys()
    for step in train_a:
        assert train_b[step] == pytest.approx(train_a[step], rel=tol, abs=tol), step
    for step in val_a:
        assert val_b[step] == pytest.approx(val_a[step], rel=tol, abs=tol), step


def train_one(tmp_path: Path, name: str, argv: list[str]) -> Path:
    runs = tmp_path / name
    rc, _, err = train_in_process(["train", *argv, f"runs_dir={runs}"])
    assert rc == 0, err
    return run_folder(runs)


def train_processes(tmp_path: Path, name: str, argv: list[str], processes: int = 2) -> Path:
    runs = tmp_path / name
    cmd = [str(EXE), "train", *argv, f"runs_dir={runs}", f"launcher.gpus_per_run={processes}", "device=cpu"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(tmp_path), cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_folder(runs)
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    return run_dir


# --- micro-batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quarter_micro_batches_give_the_full_batch_losses(tmp_path: Path, variant: str) -> None:
    extra = VARIANTS[variant]
    argv = [*TINY, *extra, f"budget={budget_with_last_batch(extra, 3):.6g}"]
    full = train_one(tmp_path, "full", argv)
    micro = train_one(tmp_path, "micro", [*argv, "train.micro_batch_size=2"])
    assert micro.name == full.name  # how a step is computed is not part of the run's identity
    summary = json.loads((micro / "summary.json").read_text())
    assert summary["micro_batch_size"] == 2 and summary["steps"] == 13
    assert_same_losses(full, micro, tol=2e-5)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    for routing in ("none", "topk", "random"):
        cfg = model_config(d_model=32, n_heads=4, seq_len=32, n_layers=4, routing=routing)
        torch.manual_seed(0)
        model = Transformer(cfg)
        x = torch.randint(0, 256, (3, 32))
        noise = torch.randn(3, model.n_routed, 32) if routing == "random" else None
        grads = []
        for recompute in (False, True):
            model.zero_grad()
            model.activation_checkpointing = recompute
            out = model(x, x, routing_noise=noise)
            (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for g0, g1 in zip(*grads):
            torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)


def test_a_run_with_activation_checkpointing_matches(tmp_path: Path) -> None:
    argv = [*TINY, *VARIANTS["mod"], "budget=2e9"]
    plain = train_one(tmp_path, "plain", argv)
    recompute = train_one(tmp_path, "ckpt", [*argv, "train.activation_checkpointing=true"])
    assert_same_losses(plain, recompute, tol=2e-5)


# --- several processes per run (gloo) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,parallel",
    [("baseline", "ddp"), ("random", "ddp"), ("mod", "fsdp")],
)
def test_two_gloo_processes_train_the_same_run(tmp_path: Path, variant: str, parallel: str) -> None:
    """Step by step the same losses as one process, the same run id, one run folder written by rank 0.
    The last batch holds one sequence: one process trains on it, the other takes part with weight 0."""
    extra = VARIANTS[variant]
    argv = [*TINY, *extra, f"budget={budget_with_last_batch(extra, 1):.6g}"]
    one = train_one(tmp_path, "one", argv)
    two = train_processes(tmp_path, "two", [*argv, f"train.parallel={parallel}", "train.micro_batch_size=3"])
    assert two.name == one.name
    assert_same_losses(one, two)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["processes"] == 2 and b["parallel"] == parallel and a["processes"] == 1
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert b["flops"] == a["flops"] and b["tokens"] == a["tokens"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    state = torch.load(two / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    ref = torch.load(one / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["model"].keys() == ref["model"].keys()  # full, unsharded weights whatever the parallelism
    for key in ref["model"]:  # Adam turns float-level gradient noise into steps of up to lr: 13 x 3e-3
        torch.testing.assert_close(state["model"][key], ref["model"][key], rtol=0, atol=1e-3)


def processes_training(run_dir: Path) -> list[int]:
    """Pids of the `python -m modexp.train RUN_DIR` processes alive for run_dir."""
    return trainer_pids(run_dir)


def test_kill_9_of_a_two_process_run_resumes_exactly(tmp_path: Path) -> None:
    extra = VARIANTS["random"]
    argv = [*TINY, *extra, "budget=1e10", "model.d_model=16", "train.checkpoint_every=10"]
    reference = train_one(tmp_path, "one", argv)
    runs = tmp_path / "two"
    run_dir = runs / "smoke" / reference.name
    cmd = [str(EXE), "train", *argv, f"runs_dir={runs}", "launcher.gpus_per_run=2", "device=cpu"]
    with open(tmp_path / "child.log", "w") as log:
        proc = start_detached(cmd, log, tmp_path)
        try:
            deadline = time.monotonic() + 300
            while True:
                status = {}
                if (run_dir / "status.json").exists():
                    status = json.loads((run_dir / "status.json").read_text())
                if status.get("state") == "running" and status.get("step", 0) >= 30:
                    break
                assert proc.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint at step 30 within 300 s"
                time.sleep(0.01)
            # torchrun and both training processes (torchrun gives its workers sessions of their own)
            doomed = [proc.pid, *processes_training(run_dir)]
            assert len(doomed) >= 3, doomed
            for pid in doomed:
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
            while processes_training(run_dir):
                time.sleep(0.05)
        finally:
            for pid in [proc.pid, *processes_training(run_dir)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not (run_dir / "summary.json").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # nobody left to say
    killed_at = json.loads((run_dir / "status.json").read_text())["step"]

    resumed = train_processes(tmp_path, "two", argv)
    assert resumed == run_dir
    meta = json.loads((run_dir / "meta.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert killed_at <= meta["resumed_from_step"] < summary["steps"]
    assert summary["processes"] == 2
    assert_same_losses(reference, run_dir)
    train, _ = losses(run_dir)
    assert sorted(train) == list(train)  # no step logged twice after the resume


# --- the pieces ------------------------------------------------------------------------------------


def test_shares_cover_the_batch_in_order() -> None:
    for rows in range(0, 20):
        for size in (1, 2, 3, 8):
            spans = [share(rows, World(rank, size)) for rank in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            lengths = [b - a for a, b in spans]
            assert max(lengths) - min(lengths) <= 1
    assert chunks(3, 11, 3) == [(3, 6), (6, 9), (9, 11)]
    assert chunks(0, 8, None) == [(0, 8)] and chunks(0, 8, 8) == [(0, 8)]


def test_micro_batch_auto_takes_the_largest_that_fits_and_evens_it_out() -> None:
    cfg = model_config(vocab_size=32000, seq_len=2048, d_model=1024, n_layers=16, n_heads=16)
    per_seq = estimate(cfg, 2, "bf16").peak_bytes - estimate(cfg, 1, "bf16").peak_bytes
    fixed = estimate(cfg, 1, "bf16").peak_bytes - per_seq
    device = (fixed + 40.5 * per_seq) / 0.9  # 40 sequences fit
    micro, est = resolve_micro_batch(cfg, 128, "auto", device, "bf16")
    assert micro == 32  # 128 in chunks of at most 40: four of 32, one shape for the compiled step
    assert est.peak_bytes <= 0.9 * device
    assert resolve_micro_batch(cfg, 128, "auto", None, "bf16")[0] is None  # device memory unknown
    assert resolve_micro_batch(cfg, 128, "auto", 1e15, "bf16")[0] is None  # everything fits
    assert resolve_micro_batch(cfg, 128, 200, None, "bf16")[0] is None
    assert resolve_micro_batch(cfg, 128, 16, None, "bf16")[0] == 16
    # Two processes share the batch; FSDP divides the weights and optimiser state.
    assert resolve_micro_batch(cfg, 128, "auto", device, "bf16", processes=2)[0] == 32
    assert estimate(cfg, 4, "bf16", 4, fsdp=True).peak_bytes < estimate(cfg, 4, "bf16", 4).peak_bytes
    assert (
        estimate(cfg, 4, "bf16", activation_checkpointing=True).peak_bytes
        < estimate(cfg, 4, "bf16").peak_bytes
    )
    with pytest.raises(ModexpError, match="does not fit 2 GB.*activation_checkpointing"):
        resolve_micro_batch(cfg, 128, "auto", 2e9, "bf16")


MEMORY_VARIANTS = {
    "none": dict(routing="none"),
    "topk": dict(routing="topk"),
    "moe": dict(routing="none", moe=True),
    "moe-x4-k0.5": dict(routing="none", moe=True, expert_capacity=0.5),
    "mode_staged": dict(routing="topk", moe=True),
    "mode_integrated": dict(routing="integrated", moe=True),
}


@pytest.mark.parametrize("routing", list(MEMORY_VARIANTS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_memory_estimate_tracks_the_measured_saved_activations(routing: str, precision: str) -> None:
    """The activation part of the estimate against what autograd really saves for backward (CPU)."""
    shape = dict(vocab_size=512, seq_len=128, d_model=96, n_layers=4, n_heads=4)
    cfg = model_config(**shape, **MEMORY_VARIANTS[routing])
    model = Transformer(cfg)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, 512, (4, 128))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, x)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in storages.items() if ptr not in weights)
    est = estimate(cfg, 4, precision).peak_bytes - estimate(cfg, 0, precision).peak_bytes
    assert 0.8 * measured < est < 1.6 * measured, (measured, est)


def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (
        ("0, 1", ["0", "1"]),
        ("2,-1,3", ["2"]),
        ("", []),
        ("-1", []),
        ("GPU-ab,GPU-cd", ["GPU-ab", "GPU-cd"]),
    ):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == expected, value


def test_slots_give_each_run_its_gpus_and_never_fall_back_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modexp.launch.slots.visible_gpus", lambda: ["0", "1", "2", "3", "4"])
    slots = make_slots("cuda", 0, 2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert len(make_slots("auto", 0, 1)) == 5
    monkeypatch.setattr("modexp.launch.slots.visible_gpus", lambda: [])
    with pytest.raises(ModexpError, match="device=cuda but 0 GPU"):
        make_slots("cuda", 0, 1)
    cpu = make_slots("cpu", 0, 2)
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)


def test_gpu_sweep_without_a_gpu_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cmd = [str(EXE), "sweep", "sweep=smoke", "device=cuda", f"runs_dir={tmp_path / 'runs'}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(tmp_path), cwd=tmp_path, timeout=120
    )
    assert proc.returncode != 0
    assert "device=cuda but 0 GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs" / "smoke").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.micro_batch_size=0", "train.micro_batch_size=0 is not allowed"),
        ("train.micro_batch_size=half", "train.micro_batch_size=half is not allowed"),
        ("train.compile=maybe", "train.compile=maybe is not allowed: choose auto, true or false"),
        ("train.parallel=tp", "train.parallel=tp is not allowed: choose ddp or fsdp"),
        ("launcher.gpus_per_run=-1", "launcher.gpus_per_run=-1 is not allowed"),
    ],
)
def test_bad_step_settings_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    rc, _, err = train_in_process(["plan", "sweep=smoke", override, f"runs_dir={tmp_path}"])
    assert rc != 0 and message in err and "Traceback" not in err


def test_plan_shows_micro_batch_memory_and_gpu_hours(tmp_path: Path) -> None:
    base = ["plan", "sweep=paper", f"runs_dir={tmp_path}", "--format", "json"]
    rc, out, err = train_in_process([*base, "launcher.gpu_mem_gb=80", "launcher.gpus_per_run=8"])
    assert rc == 0, err
    rows = json.loads(out)
    for row in rows:
        assert row["devices"] == 8
        assert row["est_time_s"] == pytest.approx(row["device_hours"] * 3600 / 8 + 1, rel=1e-3)  # + startup_s
        assert 1 <= int(row["micro_batch"]) <= 16  # 128 sequences over 8 GPUs, what fits 80 GB of each
        assert row["est_peak_gb"] <= 0.9 * 80
    # Unknown device memory: auto is decided at run time, and the whole share's estimate is shown.
    rc, out, _ = train_in_process(base)
    rows = json.loads(out)
    assert {row["micro_batch"] for row in rows} == {"auto (<= 128)"}
    assert min(row["est_peak_gb"] for row in rows) > 100  # the paper's batch does not fit one GPU at once
    rc, out, _ = train_in_process(["plan", "sweep=paper", f"runs_dir={tmp_path}", "launcher.gpu_mem_gb=80"])
    assert "GPU-hours" in out and "d2560-l40" in out
