"""Synthetic sweep folders and tables for the analysis tests, written to the run-folder contract.

Sweep losses follow a law of Chinchilla's form, L = E + A/N^alpha + B/D^beta, with Chinchilla's exponents
and constants scaled down to byte-level losses (~2-3 nats at 1e11-1e12 FLOPs, optimum near 5e4-1.5e5
parameters: the range the spec measured on CPU). The MoD variant spends MOD_FPT_FACTOR of the baseline's
FLOPs per token and pays MOD_A_FACTOR on the model-size term, so its optimum sits at larger sizes, as in
the paper. `chinchilla_table` samples Chinchilla's published law itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. (2022), eq. 10
A_OPT = BETA / (ALPHA + BETA)  # 0.452: exponent of N* = k C^a under this law
SWEEP_LAW = {"e": 1.3, "a": 25.0, "b": 25.0}  # the fixture sweep's E, A, B (same exponents)
MOD_VARIANT = "mod_c0.125_e2"
MOD_FPT_FACTOR = 0.55
MOD_A_FACTOR = 1.15
BATCH, SEQ_LEN, N_LAYERS = 16, 128, 4
ROUTED_LAYERS = [1, 3]
SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "def add(a, b):\n    return a + b  # bytes, not words\n"
    "Mixture-of-Depths routes a few tokens per block."
)


def chinchilla_loss(params, tokens, e: float = E, a: float = A, b: float = B):
    """L = E + A/N^alpha + B/D^beta; by default Chinchilla's published law (Hoffmann et al. 2022, eq. 10)."""
    return e + a / np.asarray(params, float) ** ALPHA + b / np.asarray(tokens, float) ** BETA


def optimal_params(budget: float, fpt_factor: float = 1.0, a: float = A, b: float = B) -> float:
    """Exact minimiser of the law at C = 6 * fpt_factor * N * D."""
    g = (ALPHA * a / (BETA * b)) ** (1 / (ALPHA + BETA))
    return g * (budget / (6 * fpt_factor)) ** A_OPT


def sweep_optimum(budget: float, mod: bool) -> float:
    """The true optimal size of the fixture sweep's law for baseline or MoD at this budget."""
    a = SWEEP_LAW["a"] * (MOD_A_FACTOR if mod else 1.0)
    return optimal_params(budget, MOD_FPT_FACTOR if mod else 1.0, a, SWEEP_LAW["b"])


def chinchilla_table(path: Path, budgets=(1e18, 1e19, 1e20, 1e21, 1e22), n_sizes: int = 9) -> Path:
    """An Approach-2 style table sampled from the law.

    Sizes come from one fixed ladder (0.15-decade steps), picked around the 20-tokens-per-parameter guess
    N = sqrt(C / 120), not around the true optimum: the grid sits off-centre by an amount that drifts
    with C, as in a real sweep, so the test measures the parabola's bias rather than assuming it away.
    """
    ladder = 10 ** np.arange(5.0, 13.0, 0.15)
    rows = []
    for budget in budgets:
        guess = math.sqrt(budget / 120)
        nearest = np.argsort(np.abs(np.log10(ladder) - math.log10(guess)))[:n_sizes]
        for params in np.sort(ladder[nearest]):
            tokens = budget / (6 * params)
            rows.append(
                {
                    "variant": "baseline",
                    "budget": budget,
                    "params": params,
                    "tokens": tokens,
                    "flops": budget,
                    "val_loss": float(chinchilla_loss(params, tokens)),
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def _summary(sweep: str, run_id: str, variant: str, budget: float, params: int, rng) -> dict:
    mod = variant != "baseline"
    fpt_factor, a_factor = (MOD_FPT_FACTOR, MOD_A_FACTOR) if mod else (1.0, 1.0)
    law = {**SWEEP_LAW, "a": SWEEP_LAW["a"] * a_factor}
    d_model = max(8, int(round(math.sqrt(params / (12 * N_LAYERS)) / 8)) * 8)
    forward_fpt = 2.0 * params * fpt_factor
    train_fpt = 3 * forward_fpt
    steps = max(1, round(budget / (train_fpt * BATCH * SEQ_LEN)))
    tokens = steps * BATCH * SEQ_LEN
    step_time = train_fpt * BATCH * SEQ_LEN / 3e10 + 0.01  # ~30 GFLOP/s plus a fixed overhead
    loss = float(chinchilla_loss(params, tokens, **law)) * (1 + 0.002 * rng.standard_normal())
    return {
        "run_id": run_id,
        "sweep": sweep,
        "variant": variant,
        "routing": "topk" if mod else "none",
        "capacity": 0.125 if mod else 1.0,
        "route_every": 2 if mod else 1,
        "causal_router": "predictor" if mod else "none",
        "budget": budget,
        "flops": tokens * train_fpt,
        "tokens": tokens,
        "steps": steps,
        "batch_size": BATCH,
        "seq_len": SEQ_LEN,
        "params": params,
        "non_embedding_params": params - 2 * 256 * d_model,
        "forward_flops_per_token": forward_fpt,
        "train_flops_per_token": train_fpt,
        "d_model": d_model,
        "n_layers": N_LAYERS,
        "n_heads": 4,
        "d_ff": 4 * d_model,
        "val_loss": loss,
        "val_loss_causal": loss * 1.004 if mod else None,
        "wall_time": steps * step_time,
        "step_time": step_time,
        "tokens_per_s": BATCH * SEQ_LEN / step_time,
        # What a run records of its speed (records.speed_record): the iso-time verdict and the study's MFU.
        "train_time": steps * step_time,
        "device_kind": "cpu: synthetic",
        "threads": 1,
        "peak_flops": 1e11,
        "cpu_share": 1.0,
    }


def _metrics_lines(summary: dict, rng, n_train: int = 12, n_val: int = 3) -> list[dict]:
    mod = summary["variant"] != "baseline"
    steps, final = summary["steps"], summary["val_loss"]
    per_step = summary["flops"] / steps
    lines = []
    for i, step in enumerate(np.unique(np.linspace(1, steps, n_train).astype(int))):
        frac = step / steps
        line = {
            "kind": "train",
            "step": int(step),
            "tokens": int(step * BATCH * SEQ_LEN),
            "flops": step * per_step,
            "loss": final + 1.5 * (1 - frac) ** 2 + 0.02 * rng.standard_normal(),
            "lr": 1e-3,
            "grad_norm": 1.0,
            "step_time": summary["step_time"],
            "tokens_per_s": summary["tokens_per_s"],
            "wall_time": step * summary["step_time"],
        }
        if mod:
            acc = 0.875 + 0.1 * (1 - math.exp(-5 * frac))
            line["causal_acc"] = acc
            for layer in ROUTED_LAYERS:
                line[f"routed_frac/{layer}"] = 0.125
                line[f"router_weight_mean/{layer}"] = 0.4 + 0.01 * i
                line[f"causal_acc/{layer}"] = acc + 0.01 * (layer - 2)
        lines.append(line)
    for step in np.unique(np.linspace(steps / n_val, steps, n_val).astype(int)):
        frac = step / steps
        line = {
            "kind": "val",
            "step": int(step),
            "tokens": int(step * BATCH * SEQ_LEN),
            "flops": step * per_step,
            "wall_time": step * summary["step_time"],
            "val_loss": final + 1.2 * (1 - frac) ** 2,
        }
        if mod:
            line["val_loss_causal"] = line["val_loss"] * 1.004
        lines.append(line)
    return lines


def _routing_sample(rng, capacity: float = 0.125) -> dict:
    tokens = list(SAMPLE_TEXT.encode())
    k = math.ceil(capacity * len(tokens))
    weights = rng.uniform(0, 1, size=(len(ROUTED_LAYERS), len(tokens)))
    selected = np.zeros_like(weights, dtype=int)
    for row, w in enumerate(weights):
        selected[row, np.argsort(w)[-k:]] = 1
    return {
        "tokens": tokens,
        "text": SAMPLE_TEXT,
        "layers": ROUTED_LAYERS,
        "selected": selected.tolist(),
        "router_weights": weights.round(4).tolist(),
        "capacity": capacity,
    }


def _write_run(sweep_dir: Path, summary: dict, rng, state: str = "done") -> Path:
    run_dir = sweep_dir / summary["run_id"]
    run_dir.mkdir(parents=True)
    _write_json(run_dir / "status.json", {"state": state, "reason": None if state == "done" else "test"})
    if state != "done":
        return run_dir
    _write_json(run_dir / "summary.json", summary)
    lines = _metrics_lines(summary, rng)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if summary["variant"] != "baseline":
        _write_json(run_dir / "routing_sample.json", _routing_sample(rng))
    return run_dir


def _ladder(centre: float, offsets) -> list[int]:
    return [int(round(centre * 10**o)) for o in offsets]


def make_sweep(
    root: Path,
    name: str = "fixture",
    budgets=(1e11, 3e11, 1e12),
    n_sizes: int = 5,
    unbracketed_budget: float | None = 3e12,
    seed: int = 0,
) -> Path:
    """A sweep folder: baseline and MOD_VARIANT at `budgets`, n_sizes each spanning +-0.6 decades of
    each variant's optimum; plus, at `unbracketed_budget`, 3 baseline sizes all well below the
    optimum (an unbracketed minimum), one failed run, one interrupted run and one done run whose
    summary.json is missing."""
    rng = np.random.default_rng(seed)
    sweep_dir = Path(root) / name
    sweep_dir.mkdir(parents=True)
    _write_json(sweep_dir / "plan.json", {"sweep": name, "budgets": list(budgets)})
    offsets = np.linspace(-0.6, 0.6, n_sizes)
    for budget in budgets:
        for variant in ("baseline", MOD_VARIANT):
            for params in _ladder(sweep_optimum(budget, variant != "baseline"), offsets):
                run_id = f"{variant}-{budget:.0e}-{params}"
                _write_run(sweep_dir, _summary(name, run_id, variant, budget, params, rng), rng)
    if unbracketed_budget:
        for params in _ladder(sweep_optimum(unbracketed_budget, False), [-1.4, -1.1, -0.8]):
            run_id = f"baseline-{unbracketed_budget:.0e}-{params}"
            _write_run(sweep_dir, _summary(name, run_id, "baseline", unbracketed_budget, params, rng), rng)
    broken = _summary(name, "baseline-broken", "baseline", budgets[0], 50_000, rng)
    _write_run(sweep_dir, {**broken, "run_id": "baseline-failed"}, rng, state="failed")
    _write_run(sweep_dir, {**broken, "run_id": "baseline-interrupted"}, rng, state="interrupted")
    _write_run(sweep_dir, {**broken, "run_id": "baseline-nosummary"}, rng).joinpath("summary.json").unlink()
    return sweep_dir
