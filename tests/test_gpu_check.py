"""scripts/gpu_check.py (`make gpu-check`) without a GPU: one clear line and a non-zero exit at once; the step
runner's timeouts and failures; the report writer on made-up step results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("modexp_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def test_no_cuda_exits_at_once_with_one_line(tmp_path: Path) -> None:
    """Run as `make gpu-check` runs it, with every GPU hidden: no report, no traceback, exit status 2."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60


def test_no_cuda_messages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in gpu_check.cuda_problem()
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"gpu-check: no CUDA device: torch {torch.__version__} (CUDA 12.8) sees no GPU (CUDA_VISIBLE_DEVICES='')\n"
    )


def test_makefile_target_without_gpu() -> None:
    """`make gpu-check` (its venv taken as installed) fails with the script's line."""
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "gpu-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check would run the whole check")
    assert proc.returncode != 0
    assert "gpu-check: no CUDA device: " in proc.stderr and "Traceback" not in proc.stderr


def test_run_command_timeout_stops_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    # A parent that starts a child and waits: on timeout both must go (a sweep and its training processes).
    script = (
        f"import subprocess, time; subprocess.Popen(['sh', '-c', 'sleep 3; touch {marker}']); time.sleep(30)"
    )
    rc, out, seconds = gpu_check.run_command([sys.executable, "-c", script], timeout_s=1.0)
    assert rc is None and seconds < 20
    time.sleep(3.5)
    assert not marker.exists()
    rc, out, _ = gpu_check.run_command([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], 30)
    assert (rc, out) == (3, "hi\n")


def test_steps_run_on_after_failures_and_respect_the_limit(tmp_path: Path) -> None:
    S, R = gpu_check.Step, gpu_check.StepResult
    ran = []

    def ok(name):
        def run(out, timeout_s):
            ran.append((name, timeout_s))
            return R(name, name, "pass", 0.0)

        return run

    def broken(out, timeout_s):
        ran.append(("broken", timeout_s))
        raise RuntimeError("boom")

    steps = [
        S("a", "A", 100, 1, ok("a"), reserve_after_s=20),
        S("broken", "B", 100, 1, broken),
        S("skipme", "C", 100, 1, ok("skipme")),
        S("d", "D", 5, 1, ok("d")),
    ]
    results = gpu_check.run_steps(steps, tmp_path, limit_s=60, skip={"skipme"})
    assert [r.status for r in results] == ["pass", "error", "skipped", "pass"]
    assert results[1].note == "RuntimeError: boom"
    assert [name for name, _ in ran] == ["a", "broken", "d"]
    assert 38 < ran[0][1] <= 40  # 60 s less the 20 s kept for later steps
    assert ran[2][1] == 5  # its own timeout
    # Out of time: later steps are skipped, not started.
    results = gpu_check.run_steps(steps[:1], tmp_path, limit_s=10, skip=set())
    assert results[0].status == "skipped" and "no time left" in results[0].note


def fake_results():
    R = gpu_check.StepResult
    return [
        R(
            "env",
            "Environment",
            "pass",
            4.2,
            60,
            "python gpu_check.py --env",
            "NVIDIA H200, 139.8 GiB",
            detail={"torch": "2.13.0", "cuda": "12.8", "device_name": "NVIDIA H200"},
        ),
        R(
            "cuda-tests",
            "CUDA-only tests",
            "fail",
            151.0,
            240,
            "python -m pytest tests/test_cuda.py",
            "20 passed, 1 failed; exit status 1",
            detail={
                "tests": [
                    {
                        "test": "test_bf16_training_step[baseline-small]",
                        "outcome": "passed",
                        "seconds": 1.2,
                        "message": "",
                    },
                    {
                        "test": "test_compile[mod]",
                        "outcome": "failed",
                        "seconds": 40.0,
                        "message": "AssertionError: 1 graph break | reason",
                    },
                ],
                "measurements": {"train_step[baseline,small]": {"peak_memory_gb": 0.41, "step_ms": 3.2}},
            },
            output_tail="E   AssertionError: 1 graph break",
        ),
        R(
            "bench",
            "modexp bench",
            "timeout",
            150.0,
            150,
            "modexp bench --quick",
            "timed out after 150 s",
            attachment="# modexp bench\n\n## d512-L4\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n",
        ),
        R(
            "sweep",
            "Two-budget sweep",
            "pass",
            201.0,
            260,
            "modexp sweep sweep=gpu",
            "8 of 8 runs done",
            detail={
                "runs": [
                    {
                        "run_id": "baseline-d192-l4-1e15-x",
                        "state": "done",
                        "tokens_per_s": 2.5e6,
                        "peak_memory_gb": 3.1,
                        "device": "cuda:0",
                    },
                    {"run_id": "mod-d256-l4-1e15-y", "state": "interrupted"},
                ],
                "summary_head": "Verdict: m = 1.1x",
            },
        ),
        R("sample", "modexp sample", "skipped", 0.0, note="no finished MoD run"),
    ]


def test_report_writer(tmp_path: Path) -> None:
    meta = {"date": "2025-01-01 00:00:00", "host": "gpu-box", "seconds": 411.0, "limit_s": 480.0}
    path = gpu_check.write_report(tmp_path, fake_results(), meta)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "**FAIL** in 411 s (limit 480 s)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert "| env | pass | 4 | 60 | NVIDIA H200, 139.8 GiB |" in rows
    assert "| cuda-tests | fail | 151 | 240 | 20 passed, 1 failed; exit status 1 |" in rows
    assert "| sample | skipped | 0 | - | no finished MoD run |" in rows
    assert "| test_compile[mod] | failed | 40 | AssertionError: 1 graph break \\| reason |" in rows
    assert "| train_step[baseline,small] | 0.41 | 3.2 |" in rows  # measurements as a table
    assert "| baseline-d192-l4-1e15-x | done | 2.5e+06 | 3.1 | cuda:0 |" in rows
    assert "| mod-d256-l4-1e15-y | interrupted | - | - | - |" in rows
    assert "### modexp bench" in text and "#### d512-L4" in text  # the bench's headings sit below the step's
    assert "Verdict: m = 1.1x" in text and "E   AssertionError: 1 graph break" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["pass"] is False and [s["status"] for s in data["steps"]][:3] == ["pass", "fail", "timeout"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    passing = [r for r in fake_results() if r.status in ("pass", "skipped")]
    assert "**PASS**" in gpu_check.render_markdown(passing, meta)


def test_parse_junit_and_sweep_runs(tmp_path: Path) -> None:
    (tmp_path / "j.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="2"><failure message="assert 1 == 2">x</failure>'
        "</testcase>"
        '<testcase classname="tests.test_cuda" name="test_c" time="0"><skipped message="needs a CUDA device"/>'
        "</testcase></testsuite></testsuites>"
    )
    assert gpu_check.parse_junit(tmp_path / "j.xml") == [
        {"test": "test_a", "outcome": "passed", "seconds": 1.5, "message": ""},
        {"test": "test_b", "outcome": "failed", "seconds": 2.0, "message": "assert 1 == 2"},
        {"test": "test_c", "outcome": "skipped", "seconds": 0.0, "message": "needs a CUDA device"},
    ]
    assert gpu_check.parse_junit(tmp_path / "missing.xml") == []
    sweep = tmp_path / "sweep"
    for name, state, summary in (
        (
            "run-a",
            "done",
            {"variant": "baseline", "tokens_per_s": 1e6, "device": "cuda:0", "peak_memory_gb": 2.0},
        ),
        ("run-b", "running", None),
    ):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "run.json").write_text("{}")
        (sweep / name / "status.json").write_text(json.dumps({"state": state}))
        if summary:
            (sweep / name / "summary.json").write_text(json.dumps({**summary, "lr": 1e-3}))
    (sweep / "plots").mkdir()
    assert gpu_check.sweep_runs(sweep) == [
        {
            "run_id": "run-a",
            "state": "done",
            "variant": "baseline",
            "tokens_per_s": 1e6,
            "peak_memory_gb": 2.0,
            "device": "cuda:0",
        },
        {"run_id": "run-b", "state": "running"},
    ]
    assert gpu_check.sweep_runs(tmp_path / "nothing") == []


def test_sweep_overrides_plan_on_the_embedded_corpus(tmp_path: Path) -> None:
    """The check's sweep is legal as given (within sweep.max_epochs on the embedded corpus), 8 runs, 2 budgets."""
    from modexp.sweep import build_study

    overrides = [*gpu_check.SWEEP_OVERRIDES, "sweep.name=sweep", f"runs_dir={tmp_path}"]
    study = build_study(overrides)
    runs = study.plan.runs
    assert len(runs) == 8 and {r.budget for r in runs} == {1e15, 3e15}
    assert sum(r.steps for r in runs) < 9000  # ~3 min of eager steps on an H100/H200 (an estimate)
