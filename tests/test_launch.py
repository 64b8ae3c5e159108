"""The local device pool's slots: one run per visible GPU, else CPU workers sharing the cores."""

import os
from pathlib import Path

import pytest

from modexp.launch.local import describe_exit, make_slots, visible_gpus


def test_one_slot_per_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    slots = make_slots("auto", workers=0)
    assert [s.name for s in slots] == ["cuda:2", "cuda:5"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "5"]  # each child sees only its GPU


def test_gpus_found_through_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: a)'\necho 'GPU 1: NVIDIA H200 (UUID: b)'\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert visible_gpus() == ["0", "1"]
    assert [s.name for s in make_slots("cuda", workers=0)] == ["cuda:0", "cuda:1"]


def test_cpu_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    slots = make_slots("cpu", workers=2)  # device=cpu ignores the GPUs
    assert [s.name for s in slots] == ["cpu:0", "cpu:1"]
    assert all(s.env["MODEXP_THREADS"] == "4" and s.env["CUDA_VISIBLE_DEVICES"] == "" for s in slots)
    default = make_slots("cpu", workers=0)
    assert len(default) == 8 and default[0].env["MODEXP_THREADS"] == "1"


def test_no_gpu_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert all(s.name.startswith("cpu:") for s in make_slots("auto", workers=1))


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exit code 1"


def test_launchers_are_found_by_name_and_an_unknown_one_is_named() -> None:
    from modexp import launch
    from modexp.errors import ModexpError

    assert launch.names()[:2] == ("local", "slurm")
    assert type(launch.get("local")).__name__ == "Local"
    with pytest.raises(ModexpError, match="launcher.name=ray is not allowed: choose one of local, slurm"):
        launch.get("ray")


def test_the_local_pool_starts_a_job_only_after_the_runs_it_waits_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two slots, three jobs: c comes after a and b, so it starts last although it is queued first."""
    import json
    import sys
    from types import SimpleNamespace

    from modexp.launch import Job, local

    order = tmp_path / "order.txt"
    # Each "training" notes its run, sleeps a little and marks its folder done (what modexp.train would do).
    script = (
        "import json, pathlib, sys, time; d = pathlib.Path(sys.argv[1]); time.sleep(0.3); "
        f"open({str(order)!r}, 'a').write(d.name + '\\n'); "
        "(d / 'status.json').write_text(json.dumps({'state': 'done'}))"
    )
    monkeypatch.setattr(
        local, "train_command", lambda run_dir, processes: [sys.executable, "-c", script, str(run_dir)]
    )
    jobs = []
    for name, after in (("c", ["a", "b"]), ("a", []), ("b", [])):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "status.json").write_text(json.dumps({"state": "planned"}))
        jobs.append(Job(SimpleNamespace(run_id=name), run_dir, after))
    slots = local.make_slots("cpu", workers=2)
    local.LocalPool(slots).run(jobs)
    assert order.read_text().split()[-1] == "c" and sorted(order.read_text().split()) == ["a", "b", "c"]
