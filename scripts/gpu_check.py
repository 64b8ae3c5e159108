"""`make gpu-check`: the first checks to run on a machine with one GPU, in one command and one report.

In order, each step timed, each failure recorded without stopping the rest, and all of it within `--limit-s`
(default 480 s) of wall time:

1. env: torch and CUDA versions, the device, its memory, bf16 support, triton, the attention and TF32 settings.
2. cuda-tests: `pytest tests/test_cuda.py` (bf16 training steps for every routing, router dtypes, peak memory,
   no host syncs in an unlogged step, torch.compile without graph breaks and its recompiles on a partial batch,
   the flash and memory-efficient attention kernels, decoding with the cache against recomputation, resume with
   random routing). Their measurements come back through $MODEXP_GPU_CHECK_RESULTS into the report.
3. bench: `modexp bench --quick --device cuda` (step and decode speed, model FLOPs utilisation).
4. sweep: a two-budget sweep at the `gpu` preset's smallest budgets (1e15, 3e15) on the embedded corpus:
   2 sizes per budget, baseline and MoD, eager, 128 x 512 tokens per step; each run's tokens/s, peak memory
   and device, and the verdict's opening lines.
5. sample: `modexp sample --device cuda` from one of the sweep's MoD runs.

Everything is written under --out (default runs/gpu-check/): report.md (the report) beside report.json (the
same as data), and each step's own files (cuda-tests.xml/.json, bench/, sweep/). Without a CUDA device it stops
at once with one line, "gpu-check: no CUDA device: ...", and exit status 2. Exit status 1: some step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "gpu-check"
LIMIT_S = 480.0
SWEEP_NAME = "sweep"
# Short: 8 runs, 1.6e16 FLOPs, ~8.4k steps. Eager: compiling each run would cost more than its training here.
# The embedded corpus is built from the machine's own Python library, so its size varies (3e7 training tokens
# on one machine, 1e7 on an H200 image): this check exercises the GPU path, so repeated data is allowed.
SWEEP_OVERRIDES = (
    "sweep=gpu",
    "sweep.budgets=[1e15,3e15]",
    "sweep.sizes_per_budget=2",
    "sweep.variants=[baseline,mod]",
    "train.batch_size=128",
    "train.compile=false",
    "device=cuda",
    "tracker.wandb.mode=disabled",
    "sweep.max_epochs=64",
    # One seed, each run from scratch: the check measures throughput per run, not the preset's study design.
    "sweep.reuse=none",
    "sweep.seeds=1",
)


@dataclass
class StepResult:
    name: str
    title: str
    status: str  # pass | fail | timeout | error | skipped
    seconds: float
    timeout_s: float | None = None
    command: str | None = None
    note: str = ""  # one line: why it failed, or the headline figure
    detail: dict[str, Any] = field(default_factory=dict)  # measurements, for the report's tables
    output_tail: str = ""
    attachment: str = ""  # markdown to include as is (the bench's report)


@dataclass
class Step:
    name: str
    title: str
    max_s: float  # its own timeout
    estimate_s: float  # expected on an H100/H200 (an estimate: see the module docstring)
    run: Callable[[Path, float], StepResult]  # (out, timeout_s) -> result
    reserve_after_s: float = 0.0  # keep this much of the limit for the steps after it


# -- the no-GPU gate ---------------------------------------------------------------------------------------------
def cuda_problem() -> str | None:
    """Why this machine cannot run the check (one line), or None when it can."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the answer
        return f"torch cannot be imported ({type(exc).__name__}: {exc})"
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch into .venv "
            "(pip install torch --index-url https://download.pytorch.org/whl/cu128)"
        )
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = (
            f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "check nvidia-smi and the driver"
        )
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU ({where})"
    return None


# -- running commands --------------------------------------------------------------------------------------------
def run_command(
    cmd: list[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, stdout+stderr, seconds). On timeout the whole process group is stopped
    (SIGTERM, then SIGKILL): a sweep's training children go with it."""
    start = time.monotonic()
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=max(0.1, timeout_s))
            return proc.returncode, out, time.monotonic() - start
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    out, _ = proc.communicate(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    out = ""
            return None, out or "", time.monotonic() - start


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _result(
    step: str, title: str, rc: int | None, out: str, seconds: float, timeout_s: float, cmd: list[str]
):
    status = "timeout" if rc is None else ("pass" if rc == 0 else "fail")
    note = f"timed out after {timeout_s:.0f} s" if rc is None else ("" if rc == 0 else f"exit status {rc}")
    return StepResult(
        step, title, status, seconds, timeout_s, " ".join(cmd), note, output_tail=tail(out, 60 if rc else 15)
    )


def _py() -> str:
    return sys.executable


# -- the steps ---------------------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What this process sees (run in a child by the env step)."""
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    import torch

    info.update(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        cuda_available=torch.cuda.is_available(),
        device_count=torch.cuda.device_count(),
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gb=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
            mem_efficient_sdp_enabled=torch.backends.cuda.mem_efficient_sdp_enabled(),
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        info["triton"] = None
        info["triton_error"] = f"{type(exc).__name__}: {exc}"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def step_env(out: Path, timeout_s: float) -> StepResult:
    cmd = [_py(), str(Path(__file__).resolve()), "--env"]
    rc, text, seconds = run_command(cmd, timeout_s)
    result = _result("env", "Environment", rc, text, seconds, timeout_s, cmd)
    if rc != 0:
        return result
    info = json.loads(text.strip().splitlines()[-1])
    result.detail = info
    result.output_tail = ""
    missing = [
        what
        for what, ok in (
            ("CUDA", info.get("cuda_available")),
            ("bf16", info.get("bf16_supported")),
            ("triton (torch.compile's GPU backend)", info.get("triton")),
        )
        if not ok
    ]
    if missing:
        result.status, result.note = "fail", "missing: " + ", ".join(missing)
    else:
        result.note = (
            f"{info['device_name']}, {info['memory_gb']} GiB, torch {info['torch']}, CUDA {info['cuda']}, "
            f"triton {info['triton']}"
        )
    return result


def parse_junit(path: Path) -> list[dict[str, Any]]:
    """One row per test case of a pytest --junitxml file: test, outcome, seconds, message."""
    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = " ".join((node.get("message") or "").split())[:300]
                break
        rows.append(
            {
                "test": case.get("name", "?"),
                "outcome": outcome,
                "seconds": round(float(case.get("time") or 0.0), 2),
                "message": message,
            }
        )
    return rows


def step_cuda_tests(out: Path, timeout_s: float) -> StepResult:
    xml, measured = out / "cuda-tests.xml", out / "cuda-tests.json"
    cmd = [
        _py(),
        "-m",
        "pytest",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "tests/test_cuda.py",
        f"--junitxml={xml}",
    ]
    env = {"MODEXP_GPU_CHECK_RESULTS": str(measured), "WANDB_MODE": "disabled"}
    rc, text, seconds = run_command(cmd, timeout_s, env)
    result = _result("cuda-tests", "CUDA-only tests", rc, text, seconds, timeout_s, cmd)
    cases = parse_junit(xml)
    result.detail["tests"] = cases
    if measured.is_file():
        result.detail["measurements"] = json.loads(measured.read_text())
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if cases and counts["passed"] == 0 and rc == 0:
        result.status, result.note = "fail", f"nothing ran ({summary}): does pytest see the GPU?"
    elif summary:
        result.note = f"{summary}" + (f"; {result.note}" if result.note else "")
    return result


def step_bench(out: Path, timeout_s: float) -> StepResult:
    bench_dir = out / "bench"
    cmd = [_py(), "-m", "modexp.cli", "bench", "--quick", "--device", "cuda", "--out", str(bench_dir)]
    rc, text, seconds = run_command(cmd, timeout_s, {"WANDB_MODE": "disabled"})
    result = _result("bench", "modexp bench --quick --device cuda", rc, text, seconds, timeout_s, cmd)
    if (bench_dir / "bench.md").is_file():
        result.attachment = (bench_dir / "bench.md").read_text()
        if rc == 0:
            result.output_tail = ""  # the CLI printed bench.md: it is attached already
    if (bench_dir / "bench.json").is_file():
        report = json.loads((bench_dir / "bench.json").read_text())
        shapes = {
            name: {
                key: r.get(key)
                for key in (
                    "mfu",
                    "train_step_ratio",
                    "train_flop_ratio",
                    "decode_speedup",
                    "dense_vs_reference",
                )
                if key in r
            }
            for name, r in report.get("shapes", {}).items()
        }
        result.detail = {"targets_pass": report.get("pass"), "wall_s": report.get("wall_s"), "shapes": shapes}
        mfus = [
            f"{name}: MoD {s['mfu']['mod']:.1%}, baseline {s['mfu']['base']:.1%}"
            for name, s in shapes.items()
            if isinstance(s.get("mfu"), dict) and {"mod", "base"} <= s["mfu"].keys()
        ]
        if mfus and rc == 0:
            result.note = "MFU " + "; ".join(mfus)
    return result


RUN_FIELDS = (
    "run_id",
    "variant",
    "budget",
    "params",
    "tokens",
    "steps",
    "val_loss",
    "val_loss_causal",
    "tokens_per_s",
    "step_time",
    "wall_time",
    "peak_memory_gb",
    "device",
)


def sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run folder: its summary's main fields when done, else its state."""
    rows = []
    for run in (
        sorted(p for p in sweep_dir.iterdir() if (p / "run.json").is_file()) if sweep_dir.is_dir() else []
    ):
        status = {}
        if (run / "status.json").is_file():
            status = json.loads((run / "status.json").read_text())
        row: dict[str, Any] = {"run_id": run.name, "state": status.get("state", "planned")}
        if (run / "summary.json").is_file():
            summary = json.loads((run / "summary.json").read_text())
            row.update({k: summary[k] for k in RUN_FIELDS if k in summary})
            row.update({k: v for k, v in summary.items() if k.startswith("peak_memory") and k not in row})
        rows.append(row)
    return rows


def step_sweep(out: Path, timeout_s: float) -> StepResult:
    sweep_dir = out / SWEEP_NAME
    overrides = [*SWEEP_OVERRIDES, f"sweep.name={SWEEP_NAME}", f"runs_dir={out}"]
    cmd = [_py(), "-m", "modexp.cli", "sweep", *overrides]
    rc, text, seconds = run_command(cmd, timeout_s, {"WANDB_MODE": "disabled"})
    result = _result(
        "sweep", "Two-budget sweep (gpu preset, 1e15 and 3e15)", rc, text, seconds, timeout_s, cmd
    )
    runs = sweep_runs(sweep_dir)
    result.detail["runs"] = runs
    done = [r for r in runs if r["state"] == "done"]
    if (sweep_dir / "summary.txt").is_file():
        result.detail["summary_head"] = "\n".join((sweep_dir / "summary.txt").read_text().splitlines()[:30])
    on_cpu = [r["run_id"] for r in done if not str(r.get("device", "")).startswith("cuda")]
    if on_cpu:
        result.status = "fail"
        result.note = f"{len(on_cpu)} runs trained on {done[0].get('device')}, not the GPU"
    elif runs:
        tps = [r["tokens_per_s"] for r in done if r.get("tokens_per_s")]
        extra = f", tokens/s {min(tps):,.0f}-{max(tps):,.0f}" if tps else ""
        result.note = f"{len(done)} of {len(runs)} runs done{extra}" + (
            f"; {result.note}" if result.note else ""
        )
    return result


def step_sample(out: Path, timeout_s: float) -> StepResult:
    runs = [
        r
        for r in sweep_runs(out / SWEEP_NAME)
        if r["state"] == "done" and str(r.get("variant", "")).startswith("mod")
    ]
    if not runs:
        return StepResult("sample", "modexp sample --device cuda", "skipped", 0.0, note="no finished MoD run")
    run_dir = out / SWEEP_NAME / runs[0]["run_id"]
    cmd = [_py(), "-m", "modexp.cli", "sample", str(run_dir), "--device", "cuda", "--prompt", "def "]
    cmd += ["--max-new-tokens", "200", "--show-routing"]
    rc, text, seconds = run_command(cmd, timeout_s)
    result = _result("sample", "modexp sample --device cuda", rc, text, seconds, timeout_s, cmd)
    result.output_tail = tail(text, 30)
    return result


STEPS = (
    Step("env", "Environment", 60, 5, step_env),
    Step("cuda-tests", "CUDA-only tests", 240, 150, step_cuda_tests, reserve_after_s=200),
    Step("bench", "modexp bench --quick --device cuda", 150, 45, step_bench, reserve_after_s=150),
    Step("sweep", "Two-budget sweep", 300, 200, step_sweep, reserve_after_s=30),
    Step("sample", "modexp sample --device cuda", 45, 10, step_sample),
)


# -- running the steps -------------------------------------------------------------------------------------------
def run_steps(
    steps: tuple[Step, ...] | list[Step], out: Path, limit_s: float, skip: set[str]
) -> list[StepResult]:
    """Each step in order with its timeout, cut to what is left of limit_s (less what later steps need)."""
    deadline = time.monotonic() + limit_s
    results = []
    for step in steps:
        if step.name in skip:
            results.append(StepResult(step.name, step.title, "skipped", 0.0, note="skipped (--skip)"))
            continue
        timeout_s = min(step.max_s, deadline - time.monotonic() - step.reserve_after_s)
        if timeout_s < 5:
            results.append(
                StepResult(step.name, step.title, "skipped", 0.0, note="no time left under --limit-s")
            )
            continue
        print(f"gpu-check: {step.name} (timeout {timeout_s:.0f} s) ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result = step.run(out, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a broken step is recorded, and the others still run
            result = StepResult(
                step.name,
                step.title,
                "error",
                time.monotonic() - start,
                timeout_s,
                note=f"{type(exc).__name__}: {exc}",
            )
        result.seconds = round(time.monotonic() - start, 1)
        print(
            f"gpu-check: {step.name}: {result.status} in {result.seconds:.0f} s {result.note}",
            file=sys.stderr,
        )
        results.append(result)
    return results


# -- the report --------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: list[StepResult], meta: dict[str, Any]) -> str:
    ok = all(r.status in ("pass", "skipped") for r in results)
    lines = [
        "# modexp gpu-check",
        "",
        f"{meta.get('date', '')}, {meta.get('host', '')}: **{'PASS' if ok else 'FAIL'}** in "
        f"{meta.get('seconds', 0):.0f} s (limit {meta.get('limit_s', LIMIT_S):.0f} s)",
        "",
        _table(
            [
                {
                    "step": r.name,
                    "status": r.status,
                    "seconds": f"{r.seconds:.0f}",
                    "timeout": f"{r.timeout_s:.0f}" if r.timeout_s else "-",
                    "note": r.note,
                }
                for r in results
            ]
        ),
    ]
    for r in results:
        lines += ["", f"## {r.name}: {r.title} ({r.status})", ""]
        if r.command:
            lines += [f"`{r.command}`", ""]
        if r.note:
            lines += [r.note, ""]
        detail = dict(r.detail)
        if "tests" in detail:
            lines += [_table(detail.pop("tests"), ["test", "outcome", "seconds", "message"]), ""]
        if "measurements" in detail:
            measured = detail.pop("measurements")
            lines += ["Measurements:", ""]
            lines += [
                _table(
                    [
                        {"measurement": k, **v} if isinstance(v, dict) else {"measurement": k, "value": v}
                        for k, v in measured.items()
                    ]
                ),
                "",
            ]
        if "runs" in detail:
            lines += [_table(detail.pop("runs")), ""]
        if "summary_head" in detail:
            lines += ["```", detail.pop("summary_head"), "```", ""]
        if detail:
            lines += ["```json", json.dumps(detail, indent=1, default=str), "```", ""]
        if r.attachment:
            lines += [re.sub(r"^(#+) ", r"##\1 ", r.attachment, flags=re.MULTILINE), ""]  # below this step
        if r.output_tail:
            lines += ["```", r.output_tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Path, results: list[StepResult], meta: dict[str, Any]) -> Path:
    """out/report.md, the report, beside out/report.json, the same as data. Returns report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "pass": all(r.status in ("pass", "skipped") for r in results)}
    data["steps"] = [asdict(r) for r in results]
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    path = out / "report.md"
    path.write_text(render_markdown(results, meta))
    return path


def clear_previous(out: Path) -> None:
    """What an earlier check left in out: a sweep would otherwise skip its finished runs and measure nothing."""
    for name in (SWEEP_NAME, "bench"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("cuda-tests.xml", "cuda-tests.json", "report.md", "report.json"):
        (out / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the report and each step's files")
    p.add_argument("--limit-s", type=float, default=LIMIT_S, help="wall-time limit for all steps together")
    p.add_argument(
        "--skip", default="", help="comma list of steps to skip: " + ",".join(s.name for s in STEPS)
    )
    p.add_argument("--env", action="store_true", help=argparse.SUPPRESS)  # the env step's child
    args = p.parse_args(argv)
    if args.env:
        print(json.dumps(environment()))
        return 0
    problem = cuda_problem()
    if problem:
        print(f"gpu-check: no CUDA device: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out).absolute()
    clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = run_steps(STEPS, out, args.limit_s, {s for s in args.skip.split(",") if s})
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": os.uname().nodename,
        "seconds": round(time.monotonic() - start, 1),
        "limit_s": args.limit_s,
        "estimates_s": {s.name: s.estimate_s for s in STEPS},
    }
    path = write_report(out, results, meta)
    ok = all(r.status in ("pass", "skipped") for r in results)
    print(f"gpu-check: {'PASS' if ok else 'FAIL'}: report in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
