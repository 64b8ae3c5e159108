"""bench.md: the report as markdown tables."""

from __future__ import annotations

import math
from typing import Any

from .shapes import DECODE_TARGET, REFERENCE_TARGET, TRAIN_TOLERANCE


# -- report ----------------------------------------------------------------------------------------------------
def _fmt_pass(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def _fmt_spread(s: dict[str, Any]) -> str:
    return f"{s['min']:.3f}-{s['max']:.3f} (IQR {s['q1']:.3f}-{s['q3']:.3f}, {s['n']} rounds)"


def _fmt_rate(value: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.1f} "


def _compile_markdown(report: dict[str, Any]) -> list[str]:
    shapes = {name: r["compile"] for name, r in report["shapes"].items() if "compile" in r}
    if not shapes:
        return []
    backend = next(iter(shapes.values()))["backend"]
    lines = [
        "",
        f"torch.compile (backend {backend}) vs eager, training step (forward, backward, fused AdamW), the four "
        "interleaved in the same rounds; medians. speedup: compiled over eager tokens/s per round, median "
        "and range. Graphs and breaks: torch._dynamo.explain of the training forward. MFU only where the "
        "device's peak is known (CUDA, PEAK_FLOPS).",
        "",
        "| shape | model | mode | step ms | tokens/s | FLOP/s | MFU | compile s | speedup | graphs | breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape_name, c in shapes.items():
        for name, v in c["variants"].items():
            label = {"base": "dense", "mod": "MoD"}[name]
            g = v["graph_breaks"]
            for mode in ("eager", "compiled"):
                if mode not in v["modes"]:
                    lines.append(f"| {shape_name} | {label} | {mode} | failed: {v['error']} |||||||")
                    continue
                m = v["modes"][mode]
                mfu = "-" if m["mfu"] is None else f"{m['mfu']:.1%}"
                compiled = mode == "compiled"
                comp_s = f"{v['compile_s']:.0f}" if compiled and v["compile_s"] is not None else "-"
                sp = v["speedup"]
                speed = (
                    f"{sp['median']:.3f} ({sp['min']:.3f}-{sp['max']:.3f})"
                    if compiled and sp is not None
                    else "-"
                )
                lines.append(
                    f"| {shape_name} | {label} | {mode} | {m['step_s'] * 1e3:.0f} | {m['tokens_per_s']:.0f} | "
                    f"{_fmt_rate(m['flops_per_s'])}FLOP/s | {mfu} | {comp_s} | {speed} | {g['graphs']} | "
                    f"{g['graph_breaks']} |"
                )
            for reason in g["reasons"]:
                lines.append(f"| {shape_name} | {label} | break | {reason} |||||||")
    return lines


def _mode_markdown(report: dict[str, Any]) -> list[str]:
    """MoE and MoDE training steps against their FLOP ratios (information: no target)."""
    lines = [
        "",
        "MoE and MoDE (4 experts x 25% of the tokens; MoD 12.5% every other block; integrated: 1 no-op "
        "expert): each variant's training step time over that of the model in the `vs` column, next to the "
        "ratio of their training FLOPs.",
        "",
        "| shape | variant | vs | step ratio (median) | spread: min-max (IQR, rounds) | FLOP ratio | "
        "step / FLOP ratio - 1 | step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        mode = r.get("mode")
        if not mode:
            continue
        for key, v in mode.items():
            if "_vs_" not in key:
                continue
            kind, _, reference = key.partition("_vs_")
            step = v["step_ratio"]["median"]
            lines.append(
                f"| {name} | {kind} | {reference} | {step:.3f} | {_fmt_spread(v['step_ratio'])} | "
                f"{v['flop_ratio']:.3f} | {step / v['flop_ratio'] - 1:+.3f} | "
                f"{mode['train_step_s'][kind] * 1e3:.0f} |"
            )
    return lines


def _claims_markdown(report: dict[str, Any]) -> list[str]:
    """The two claims of the paper's abstract, each with what this bench measured for it."""
    lines = ["", "The paper's two speed claims (Raposo et al. 2024, abstract), as measured here:", ""]
    train, decode = [], []
    for name, r in report["shapes"].items():
        deviation = r["train_step_vs_flop_deviation"]
        train.append(
            f"{name}: a MoD training step took {r['train_step_ratio']:.3f}x the baseline's time for "
            f"{r['train_flop_ratio']:.3f}x its FLOPs (step/FLOP ratio - 1 = {deviation:+.1%}, target within "
            f"{TRAIN_TOLERANCE:.0%}: {_fmt_pass(r['train_pass'])})"
        )
        decode.append(
            f"{name}: MoD decoded {r['decode_speedup']:.2f}x the baseline's tokens per second "
            f"({r['decode_speedup'] - 1:+.0%}; target >= {DECODE_TARGET}: {_fmt_pass(r['decode_pass'])})"
        )
    lines.append(
        '- "match baseline performance for equivalent FLOPs and wall-clock times to train": '
        + "; ".join(train)
        + ". Where the FLOPs MoD saves are time saved, a MoD run of the baseline's FLOPs trains in about its "
        "time; whether it then reaches the baseline's loss at equal time is a study's iso-time verdict "
        "(`modexp analyze`: verdict_time.csv)."
    )
    lines.append(
        '- "upwards of 50% faster to step during post-training sampling": ' + "; ".join(decode) + "."
    )
    return lines


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# modexp bench",
        "",
        f"device: {env['device']} ({env['device_name']}), torch {env['torch']}, threads {env['threads']}, "
        f"dtype {env['dtype']}, {'quick' if report['quick'] else 'full'} run, {env['date']}",
        "",
        "Ratios measured side by side in one process: after warm-up, the models take turns in rounds (order "
        "rotating); value = median over rounds of the ratio within a round, spread = its min-max and "
        "interquartile range over the rounds. MoD: capacity 0.125, route_every 2, predictor causal router. "
        f"Times: {env['clock']}. Training step: forward, backward, fused AdamW step. Decode: KV cache, causal "
        "routing, sampling at temperature 1, prefill untimed; each MoD predictor's bias is calibrated on random "
        "bytes to take 12.5% of tokens, as a trained one does (an untrained one takes ~50%). Routing ops: top-k, "
        "sort, gather/scatter, nonzero, index_select/index_copy/index_put, by torch.profiler.",
        "",
        "| shape | figure | value (median) | spread: min-max (IQR, rounds) | target | result | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        lines.append(
            f"| {name} | train_step_ratio | {r['train_step_ratio']:.3f} | "
            f"{_fmt_spread(r['train_step_ratio_spread'])} | within {TRAIN_TOLERANCE:.0%} of train_flop_ratio "
            f"{r['train_flop_ratio']:.3f} | {_fmt_pass(r['train_pass'])} | step/FLOP ratio - 1 = "
            f"{r['train_step_vs_flop_deviation']:+.3f}; step {r['train_step_s']['mod'] * 1e3:.0f} ms vs "
            f"{r['train_step_s']['base'] * 1e3:.0f} ms; routing ops {r['train_routing_ops_s'] * 1e3:.1f} ms "
            f"of the {r['train_saved_s'] * 1e3:.0f} ms saved |"
        )
        lines.append(
            f"| {name} | decode_speedup | {r['decode_speedup']:.3f} | {_fmt_spread(r['decode_speedup_spread'])} "
            f"| >= {DECODE_TARGET} | {_fmt_pass(r['decode_pass'])} | {r['decode_tokens_per_s']['mod']:.0f} vs "
            f"{r['decode_tokens_per_s']['base']:.0f} tok/s; routed blocks processed "
            f"{r['decode_processed_fraction']:.1%} of decoded tokens; routing ops "
            f"{r['decode_routing_ops_s'] * 1e3:.0f} ms of the {r['decode_saved_s'] * 1e3:.0f} ms saved per "
            f"{r['shape']['decode_steps']}-step round |"
        )
        lines.append(
            f"| {name} | dense_vs_reference | {r['dense_vs_reference']:.3f} | "
            f"{_fmt_spread(r['dense_vs_reference_spread'])} | >= {REFERENCE_TARGET} | "
            f"{_fmt_pass(r['reference_pass'])} | {r['train_flops_per_s']['base'] / 1e9:.1f} vs "
            f"{r['train_flops_per_s']['reference'] / 1e9:.1f} GFLOP/s (train, medians) |"
        )
        if "mfu" in r:
            mfu = r["mfu"]
            lines.append(
                f"| {name} | mfu | {mfu['base']:.3f} | - | - | info | base {mfu['base']:.1%}, MoD "
                f"{mfu['mod']:.1%}, reference {mfu['reference']:.1%} of {r['peak_flops'] / 1e12:.0f} TFLOP/s |"
            )
    lines += _claims_markdown(report)
    lines += _mode_markdown(report)
    lines += _compile_markdown(report)
    lines += [
        "",
        "| shape | d_model | layers | heads | seq_len | train batch | decode batch | prompt | steps/round "
        "| train rounds | decode rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["shapes"].items():
        s = r["shape"]
        train_rounds = s["repeats"] if s["train_repeats"] is None else s["train_repeats"]
        lines.append(
            f"| {name} | {s['d_model']} | {s['n_layers']} | {s['n_heads']} | {s['seq_len']} | "
            f"{s['train_batch']} | {s['decode_batch']} | {s['prompt_len']} | {s['decode_steps']} | "
            f"{train_rounds} | {s['repeats']} |"
        )
    verdict = {True: "all targets met", False: "some targets NOT met"}[report["pass"]]
    lines += ["", f"Result: {verdict}. Wall time {report['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
