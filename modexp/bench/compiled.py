"""torch.compile against eager: tokens/s, FLOP/s, MFU, compile time and graph breaks of each training forward."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from modexp import flops
from modexp.model import Transformer

from .shapes import BenchShape, _base_config, _mod_config
from .timing import _autocast, _interleaved, _paired, _peak_flops, _train_batch, _train_run


# -- torch.compile vs eager -------------------------------------------------------------------------------------
def graph_breaks(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """What torch._dynamo.explain finds in one training forward (with targets): graphs, breaks, reasons."""
    import torch._dynamo

    torch._dynamo.reset()
    with _autocast(device)():
        explained = torch._dynamo.explain(model)(x, y)
    torch._dynamo.reset()
    reasons = sorted({str(getattr(b, "reason", b)).splitlines()[0][:200] for b in explained.break_reasons})
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "ops": explained.op_count,
        "reasons": reasons,
    }


def _compile_shape(shape: BenchShape, device: torch.device, backend: str) -> dict[str, Any]:
    """The dense and the MoD training step, eager and torch.compile'd, interleaved in the same rounds.

    Each compiled model is its own copy (same initial weights as its eager twin); its first call, which
    compiles forward and backward, is timed apart (wall clock: inductor compiles in worker processes).
    """
    import torch._dynamo

    x, y = _train_batch(shape, device)
    tokens = shape.train_batch * shape.seq_len
    configs = {"base": _base_config(shape), "mod": _mod_config(shape)}
    breaks: dict[str, Any] = {}
    runs: dict[str, Callable[[], float]] = {}
    compile_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, cfg in configs.items():  # explain first: it resets dynamo, which would drop compiled code
        torch.manual_seed(0)
        breaks[name] = graph_breaks(Transformer(cfg).to(device), x, y, device)
    for name, cfg in configs.items():
        torch.manual_seed(0)
        runs[name] = _train_run(Transformer(cfg).to(device), x, y, device)
        torch.manual_seed(0)
        compiled = torch.compile(Transformer(cfg).to(device), backend=backend, dynamic=False)
        run = _train_run(compiled, x, y, device)
        start = time.perf_counter()
        try:
            run()
        # e.g. no C++ compiler for inductor on CPU: report it, keep the eager figures
        except Exception as exc:
            message = str(exc).splitlines()[0][:300] if str(exc) else ""
            errors[name] = f"{type(exc).__name__}: {message}"
            continue
        compile_s[name] = time.perf_counter() - start
        runs[f"{name}_compiled"] = run
    times = _interleaved(runs, shape.train_rounds, shape.warmup)
    _, peak = _peak_flops(device)
    variants: dict[str, Any] = {}
    for name, cfg in configs.items():
        per_token = flops.count(cfg).train_per_token
        modes: dict[str, Any] = {}
        for mode, key in (("eager", name), ("compiled", f"{name}_compiled")):
            if key not in times:
                continue
            step = statistics.median(times[key])
            modes[mode] = {
                "step_s": step,
                "step_s_all": times[key],
                "tokens_per_s": tokens / step,
                "flops_per_s": per_token * tokens / step,
                "mfu": per_token * tokens / step / peak if peak is not None else None,
            }
        variants[name] = {
            "modes": modes,
            "compile_s": compile_s.get(name),
            "error": errors.get(name),
            "graph_breaks": breaks[name],
            # compiled over eager tokens/s, per round
            "speedup": (
                _paired(times[name], times[f"{name}_compiled"]) if f"{name}_compiled" in times else None
            ),
        }
    torch._dynamo.reset()
    return {"backend": backend, "peak_flops": peak, "variants": variants}
