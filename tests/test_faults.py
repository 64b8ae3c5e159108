"""Every fault is a resumable state or one clear line (issue 15, second part): a run's identity is checked,
checkpoints fall back to the previous one, a kill mid-write or a SIGTERM'd child resumes on a plain rerun,
a full disk or a filesystem without locks is one line, values bound for sbatch are checked."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import child_env, read_metrics, train_in_process

from modexp.rundir import RunLock, run_state

EXE = Path(sys.executable).parent / "modexp"
# A MoD run of 204 steps of 8 x 64 tokens (a few seconds), a checkpoint every 10 steps.
RUN = ["sweep=smoke", "budget=1e10", "model.d_model=16", "model.n_heads=2", "model.routing=topk"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODEXP_THREADS", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    os.environ.pop("MODEXP_LOCKING", None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run, uninterrupted."""
    runs = tmp_path_factory.mktemp("reference") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEXP_THREADS", "1")
        rc, out, err = train_in_process(["train", *RUN, f"runs_dir={runs}", "train.checkpoint_every=10"])
    assert rc == 0, err
    return Path(out.strip())


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir) if r["kind"] == "val"}


def assert_resumed_exactly(run_dir: Path, reference: Path) -> dict:
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["resumed_from_step"] is not None
    a, b = val_losses(reference), val_losses(run_dir)
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert not list(run_dir.rglob(".*.tmp"))
    return meta


def start_child(tmp_path: Path, run_dir: Path, code: str = "") -> subprocess.Popen:
    """`python -m modexp.train RUN_DIR`, with `code` run first (to slow something down)."""
    script = (
        textwrap.dedent(code)
        + f"\nimport sys, modexp.train\nsys.exit(modexp.train.main([{str(run_dir)!r}]))\n"
    )
    log = open(tmp_path / "child.log", "w")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, env=child_env(tmp_path)
    )


def train_folder(run_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m modexp.train RUN_DIR`, as a sweep starts it."""
    return subprocess.run(
        [sys.executable, "-m", "modexp.train", str(run_dir)],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
    )


def wait_for(predicate, proc: subprocess.Popen, tmp_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def planned_run(tmp_path: Path, reference: Path) -> Path:
    """A fresh folder of the reference run with its config and spec, not trained yet."""
    run_dir = tmp_path / "runs" / "smoke" / reference.name
    run_dir.mkdir(parents=True)
    for name in ("config.yaml", "run.json"):
        shutil.copy(reference / name, run_dir / name)
    yaml_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    yaml_cfg["runs_dir"] = str(tmp_path / "runs")
    yaml_cfg["train"]["checkpoint_every"] = 10
    (run_dir / "config.yaml").write_text(yaml.safe_dump(yaml_cfg))
    return run_dir


# --- checkpoints ------------------------------------------------------------------------------------


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous(tmp_path: Path, reference: Path) -> None:
    """The child writes its checkpoint at step 30 and is killed before the rename: a temporary file and the
    checkpoint of step 20 are left; the rerun removes the one and resumes from the other."""
    run_dir = planned_run(tmp_path, reference)
    slow_save = """
        import os, time, modexp.checkpoint, modexp.rundir
        _write = modexp.rundir.atomic_write
        def atomic_write(path, write, keep=None):
            if path.name == "last.pt" and os.environ.get("STEP_MARK") == "30":
                write(path.with_name(f".{path.name}.{os.getpid()}.tmp"))  # the write is on disk ...
                open(path.with_name("WRITING"), "w").close()
                time.sleep(60)                                            # ... and here it is killed
            _write(path, write, keep)
        modexp.checkpoint.atomic_write = atomic_write
        _save = modexp.checkpoint.save_checkpoint
        def save_checkpoint(path, state):
            os.environ["STEP_MARK"] = str(state["step"])
            _save(path, state)
        modexp.checkpoint.save_checkpoint = save_checkpoint
    """
    proc = start_child(tmp_path, run_dir, slow_save)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "WRITING").exists(), proc, tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir / "checkpoints" / "WRITING").unlink()
    assert list((run_dir / "checkpoints").glob(".last.pt.*.tmp"))  # what the kill left behind
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 20
    assert run_state(run_dir) == "interrupted"

    rc, _, err = train_in_process(
        ["train", *RUN, f"runs_dir={tmp_path / 'runs'}", "train.checkpoint_every=10"]
    )
    assert rc == 0, err
    meta = assert_resumed_exactly(run_dir, reference)
    assert meta["resumed_from_step"] == 20


def interrupted_run(tmp_path: Path, reference: Path, at_step: int = 40) -> Path:
    """The run killed (-9) once its checkpoint of `at_step` is written: last.pt and previous.pt exist."""
    run_dir = planned_run(tmp_path, reference)
    proc = start_child(tmp_path, run_dir)
    try:
        wait_for(lambda: status(run_dir).get("step", 0) >= at_step, proc, tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return run_dir


def test_truncated_last_checkpoint_falls_back_to_the_previous(tmp_path: Path, reference: Path) -> None:
    run_dir = interrupted_run(tmp_path, reference)
    last, previous = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "previous.pt"
    step_before = torch.load(previous, weights_only=True)["step"]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # a truncated copy
    rc, _, err = train_in_process(
        ["train", *RUN, f"runs_dir={tmp_path / 'runs'}", "train.checkpoint_every=10"]
    )
    assert rc == 0, err
    meta = assert_resumed_exactly(run_dir, reference)
    assert meta["resumed_from_step"] == step_before
    assert "last.pt does not load" in (run_dir / "train.log").read_text()


def test_no_loadable_checkpoint_is_one_line_naming_the_remedy(tmp_path: Path, reference: Path) -> None:
    run_dir = interrupted_run(tmp_path, reference)
    for name in ("last.pt", "previous.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"not a checkpoint")
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "no checkpoint of" in line and "last.pt" in line and "previous.pt" in line, proc.stderr
    assert f"delete {run_dir / 'checkpoints'}" in line and "Traceback" not in proc.stderr
    assert status(run_dir)["state"] == "failed" and "no checkpoint" in status(run_dir)["reason"]


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, reference: Path) -> None:
    """Shapes that do not match (another run's checkpoint copied in): never loaded, one line."""
    run_dir = interrupted_run(tmp_path, reference)
    other = tmp_path / "other"
    rc, out, err = train_in_process(
        [
            "train",
            "sweep=smoke",
            "budget=3e9",
            "model.d_model=32",
            "model.n_heads=2",
            "sweep.min_tokens_per_param=0.05",
            "train.keep=last",  # a whole training state, not the final weights only
            f"runs_dir={other}",
        ]
    )
    assert rc == 0, err
    for name in ("last.pt", "previous.pt"):
        shutil.copy(Path(out.strip()) / "checkpoints" / "last.pt", run_dir / "checkpoints" / name)
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "belongs to run baseline-d32" in proc.stderr.strip().splitlines()[-1]
    # The same file relabelled as this run's: its tensors' shapes still do not fit the model.
    mine = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    for name in ("last.pt", "previous.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        state["run_id"], state["model_config"] = mine["run_id"], mine["model_config"]
        torch.save(state, run_dir / "checkpoints" / name)
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "no checkpoint of" in line and "in loading state_dict" in line, proc.stderr


def test_a_full_disk_is_one_line_and_leaves_the_run_resumable(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modexp.train

    saves = {"n": 0}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 3:  # the third checkpoint: the disk is full half-way through
            Path(f).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(modexp.train.torch, "save", save)
    argv = ["train", *RUN, f"runs_dir={tmp_path / 'runs'}", "train.checkpoint_every=10"]
    rc, _, err = train_in_process(argv)
    assert rc == 2 and "no space left on the device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    run_dir = tmp_path / "runs" / "smoke" / reference.name
    assert status(run_dir)["state"] == "interrupted"  # not "running", not "failed"
    assert not list(run_dir.rglob(".*.tmp"))
    monkeypatch.setattr(modexp.train.torch, "save", real_save)
    rc, _, err = train_in_process(argv)
    assert rc == 0, err
    assert assert_resumed_exactly(run_dir, reference)["resumed_from_step"] == 20


# --- a run's identity ------------------------------------------------------------------------------


def test_an_edited_config_is_refused_under_the_old_id(tmp_path: Path, reference: Path) -> None:
    run_dir = planned_run(tmp_path, reference)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"config.yaml of {reference.name} was edited" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    # A setting that does not change the result (how often to log) is not an edit of the run.
    cfg["train"]["lr"] = yaml.safe_load((reference / "config.yaml").read_text())["train"]["lr"]
    cfg["train"]["warmup_fraction"] = 0.2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2 and "hashes to" in proc.stderr
    cfg["train"]["warmup_fraction"] = yaml.safe_load((reference / "config.yaml").read_text())["train"][
        "warmup_fraction"
    ]
    cfg["train"]["log_every"] = 7
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_train_refused_by_the_lock_writes_nothing(tmp_path: Path, reference: Path) -> None:
    run_dir = planned_run(tmp_path, reference)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    lock = RunLock(run_dir)
    assert lock.acquire()
    try:
        rc, _, err = train_in_process(["train", *RUN, f"runs_dir={tmp_path / 'runs'}", "train.log_every=3"])
    finally:
        lock.release()
    assert rc == 2 and "is being trained by another process" in err
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before


@pytest.mark.parametrize("broken", ["config.yaml", "run.json"])
def test_a_corrupt_run_file_is_one_line(tmp_path: Path, reference: Path, broken: str) -> None:
    run_dir = planned_run(tmp_path, reference)
    (run_dir / broken).write_text("model: [unclosed\n" if broken == "config.yaml" else '{"run_id": "x", ')
    proc = train_folder(run_dir, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(run_dir / broken) in line and "rerun the sweep" in line, proc.stderr


def test_runs_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    rc, _, err = train_in_process(["plan", "sweep=smoke", f"runs_dir={tmp_path / 'runs'}"])
    assert rc == 2 and "is a file: give a folder" in err and "Traceback" not in err


# --- locks ------------------------------------------------------------------------------------------


def test_a_filesystem_without_locks_is_one_line_and_locking_none_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    argv = [
        "train",
        "sweep=smoke",
        "budget=2e9",
        "model.d_model=16",
        "model.n_heads=2",
        f"runs_dir={tmp_path}",
    ]
    rc, _, err = train_in_process(argv)
    assert rc == 2 and "refuses file locks" in err and "locking=none" in err and "Traceback" not in err
    rc, _, err = train_in_process([*argv, "locking=none"])
    assert rc == 0, err


# --- signals under a sweep --------------------------------------------------------------------------


def test_sigterm_of_one_child_is_interrupted_and_a_plain_rerun_resumes_it(tmp_path: Path) -> None:
    argv = [
        str(EXE),
        "sweep",
        "sweep=smoke",
        "sweep.budgets=[3e10]",
        "sweep.sizes_per_budget=1",
        "sweep.variants=[baseline]",
        "train.checkpoint_every=20",
        "launcher.workers=1",
        f"runs_dir={tmp_path / 'runs'}",
    ]
    env = child_env(tmp_path)
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            runs = [p for p in (tmp_path / "runs" / "smoke").glob("*-*") if (p / "status.json").exists()]
            st = status(runs[0]) if runs else {}
            if st.get("state") == "running" and st.get("step", 0) >= 40:
                break
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(st["pid"], signal.SIGTERM)  # one child, not the sweep
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = runs[0]
    assert status(run_dir)["state"] == "interrupted", status(run_dir)
    assert "resume when you rerun the same command" in (tmp_path / "sweep.log").read_text()
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((run_dir / "meta.json").read_text())["resumed_from_step"] >= 40
    assert status(run_dir)["state"] == "done"


# --- values bound for sbatch ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("launcher.extra={qos:'high\nx'}", "launcher.extra.qos="),
        ("launcher.extra={qos:'a b'}", "launcher.extra.qos="),
        ("launcher.partition='gpu\n#SBATCH --x'", "launcher.partition="),
        ("launcher.account='a;rm'", "launcher.account="),
        ("launcher.extra={qos:[a,b]}", "launcher.extra.qos="),
        ("launcher.time_min=0", "launcher.time_min=0 is not allowed"),
    ],
)
def test_values_bound_for_sbatch_are_checked(tmp_path: Path, override: str, says: str) -> None:
    rc, _, err = train_in_process(
        ["plan", "sweep=smoke", "launcher=slurm", override, f"runs_dir={tmp_path / 'r'}"]
    )
    assert rc == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
