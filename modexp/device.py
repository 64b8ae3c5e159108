"""What a run trains on and how fast that device can go: its kind, its peak FLOP/s, and what it measured before.

- device_kind: the hardware's name (a GPU's, or the CPU's model): runs on one kind can be compared in time.
- peak_flops: the vendor's dense bf16 figure for a known GPU (TF32, half of it, for an fp32 run); otherwise a
  short matmul probe at the run's thread count and precision, the best of a few rounds timed by the process's
  own CPU time per thread on a CPU (what other processes take from a shared machine does not lower it). MFU = FLOPs trained / (training seconds x peak) (PaLM, Chowdhery et al. 2022).
- The probe's result and what runs measured (their step times, start-up, evaluation) are cached per machine
  under the user's cache folder ($XDG_CACHE_HOME/modexp, else ~/.cache/modexp), one JSON file, so the next
  run skips the probe and `modexp plan` estimates from this machine's own pace (modexp/estimate.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_FILE = "devices.json"
MAX_RECORDS = 400  # per device kind and thread count: the newest runs' paces, enough for the planner's fit
PROBE_SIZE = 512  # a square matmul this big runs at the core's peak and takes milliseconds
PROBE_ROUNDS = 7

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s per GPU. A key matches a device name
# (torch.cuda.get_device_name) when every word of the key is a word of the name, so "L4" does not match
# "NVIDIA L40S" and "H100" alone does not decide an "H100 NVL"; the first match wins, most specific first.
# Vendors mostly quote TFLOPS "with sparsity"; the dense figure is half. Sources (TFLOPS, BF16 tensor core):
#   H100 SXM / PCIe / NVL 1979 / 1513 / 1671 sparse: NVIDIA H100 datasheet,
#     https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 SXM / NVL 1979 / 1671 sparse: https://www.nvidia.com/en-us/data-center/h200/
#   GH200 1979 sparse: NVIDIA GH200 Grace Hopper Superchip datasheet
#   H800 SXM / PCIe 1979 / 1513 sparse: NVIDIA H800 datasheet (the H100's tensor cores and clocks)
#   B200 36 PF sparse per 8-GPU HGX B200: https://www.nvidia.com/en-us/data-center/hgx/
#   GB200 360 PF sparse per 72 GPUs: https://www.nvidia.com/en-us/data-center/gb200-nvl72/
#   A100 312 dense; L40S 362 dense; L40 181 dense; L4 242 sparse; A10 125 dense: their NVIDIA datasheets
#   A10G (AWS's variant of the A10, no NVIDIA datasheet) 70 dense:
#     https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/
# TF32 (an fp32 run's matmuls on these GPUs, torch's "high" matmul precision) is half the bf16 figure on each.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500e12),
    ("B200", 2250e12),
    ("GH200", 989.5e12),
    ("H200 NVL", 835.5e12),
    ("H200", 989.5e12),
    ("H100 NVL", 835.5e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.5e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H800 PCIe", 756.5e12),
    ("H800", 989.5e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def vendor_peak(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU by its name (PEAK_FLOPS), or None for one not listed."""
    words = set(_words(device_name))
    for key, peak in PEAK_FLOPS:
        if all(w in words for w in _words(key)):
            return peak
    return None


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown"


def device_kind(device: Any) -> str:
    """The hardware a torch.device stands for: 'cpu: <model>' or the GPU's name."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}"


def process_started() -> float:
    """When this process started (time.time()), from /proc; now where that cannot be read."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "modexp" / CACHE_FILE


@contextlib.contextmanager
def _locked_cache() -> Iterator[dict[str, Any]]:
    """The cache's content, written back (atomically, under a lock) when the block ends. A cache that cannot
    be read or written is never an error: it only costs a probe or the planner's accuracy."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield {}
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        yield data
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
    finally:
        lock.close()


def read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def slot_key(threads: int, precision: str) -> str:
    """How a device is used: its precision and (CPU) thread count, e.g. 'fp32/1'."""
    return f"{precision}/{threads}"


def probe_peak(threads: int, precision: str = "fp32", device: Any = None) -> float:
    """Best FLOP/s of a square matmul over a few rounds, at `threads` torch threads."""
    import torch

    device = device or torch.device("cpu")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = PROBE_SIZE if device.type == "cpu" else 8192
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(device, dtype)
        b = torch.randn(size, size, generator=gen).to(device, dtype)
        flops = 2.0 * size**3
        sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        # On a CPU the process's own CPU time per thread: what other processes take from the cores does not
        # count against the device (a GPU's clock is the wall's, around synchronised work).
        cpu = device.type == "cpu"
        clock = time.process_time if cpu else time.perf_counter
        per = max(1, threads) if cpu else 1
        a @ b  # warm-up: threads spun up, kernels chosen
        sync()
        best = 0.0
        for _ in range(PROBE_ROUNDS):
            start = clock()
            for _ in range(4):
                a @ b
            sync()
            best = max(best, 4 * flops / max((clock() - start) / per, 1e-9))
        return best
    finally:
        torch.set_num_threads(previous)


def peak_flops(device: Any, threads: int, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one run's share of the device, where the figure comes from)."""
    kind = device_kind(device)
    if getattr(device, "type", "") == "cuda":
        peak = vendor_peak(kind)
        if peak is not None:
            return (peak, "vendor bf16 dense") if precision == "bf16" else (peak / 2, "vendor tf32 dense")
    key = slot_key(threads, precision)
    cached = read_cache().get(kind, {}).get("peak", {}).get(key)
    if isinstance(cached, dict) and _positive(cached.get("flops")):
        return float(cached["flops"]), f"matmul probe {cached.get('date', '')}".strip()
    peak = probe_peak(threads, precision, device)
    with _locked_cache() as data:
        entry = data.setdefault(kind, {}).setdefault("peak", {})
        entry[key] = {"flops": peak, "date": time.strftime("%Y-%m-%d")}
    return peak, "matmul probe"


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def record_runs(kind: str, key: str, records: list[dict[str, Any]]) -> None:
    """Add what finished runs measured (their pace, start-up, evaluation) to this machine's cache, keyed by
    run id so a study analysed twice counts once; the newest MAX_RECORDS are kept."""
    if not records:
        return
    with _locked_cache() as data:
        held = data.setdefault(kind, {}).setdefault("runs", {}).setdefault(key, {})
        for record in records:
            held[str(record["run_id"])] = {k: v for k, v in record.items() if k != "run_id"}
        if len(held) > MAX_RECORDS:
            newest = sorted(held, key=lambda r: held[r].get("time", 0))[-MAX_RECORDS:]
            data[kind]["runs"][key] = {r: held[r] for r in newest}


def measured_runs(kind: str, key: str) -> list[dict[str, Any]]:
    """What this machine's earlier runs of this kind and slot measured (record_runs), oldest first."""
    held = read_cache().get(kind, {}).get("runs", {}).get(key, {})
    return sorted((dict(v, run_id=k) for k, v in held.items()), key=lambda r: r.get("time", 0))


def record_values(
    kind: str, name: str, values: float | list[float], limit: int, key: str | None = None
) -> None:
    """Append measured seconds (a worker's start-up, a sweep's own time) to this machine's cache, under
    kind / name (/ key), keeping the newest `limit`."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    if not values:
        return
    with _locked_cache() as data:
        entry = data.setdefault(kind, {})
        if key is not None:
            entry = entry.setdefault(name, {})
            name = key
        held = entry.get(name) if isinstance(entry.get(name), list) else []
        entry[name] = (held + [float(v) for v in values])[-limit:]
