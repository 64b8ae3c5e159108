"""The plain-text report `modexp analyze` prints and writes to summary.txt: the verdict first, then the fits."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from modexp.units import count, sci, si

from .fits import MIN_A3_BUDGETS, MIN_A3_POINTS, MIN_POWER_LAW_BUDGETS, PERCENTILES
from .points import LOSSES
from .table import BASELINE
from .verdict import Verdict


def curve_order(curves: Iterable[str]) -> list[str]:
    """Baseline curves first, then the rest alphabetically."""
    return sorted(set(curves), key=lambda c: (not c.startswith(BASELINE), c))


def _size(value: float, lo: float, hi: float) -> str:
    """A size, or a bound when it lies beyond the sampled sizes [lo, hi]."""
    if math.isnan(value):
        return "n/a"
    if value < lo * 0.999:  # 0 too: a replicate whose loss kept falling past the smallest size
        return f"<{si(lo)}"
    if value > hi * 1.001:
        return f">{si(hi)}"
    return si(value)


def _interval(lo: float, hi: float, fmt: str = "{:.2f}") -> str:
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "[n/a]"


FLAG_TEXT = {
    "lr_edge": "a point shaping an optimum had its best LR at the grid's edge",
    "extrapolated": "extrapolated beyond the reference's budgets",
    "beyond_step": "more than one budget step beyond the reference: m only a bound",
    "reference_2_budgets": "reference curve on 2 budgets",
    "reference_on_bounds": "reference curve runs through bounds",
    "reference_missing": "the reference did not train this budget: its L* read off its curve",
}


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _headline(pair) -> str:
    if not math.isfinite(pair.multiplier):
        return f"  {pair.curve} vs {pair.reference}: m not estimated: {_text(pair.note)}"
    n_total = getattr(pair, "n_budgets_total", pair.n_budgets)
    text = (
        f"  {pair.curve} vs {pair.reference}: m = {pair.multiplier:.2f}x "
        f"{_interval(pair.multiplier_lo, pair.multiplier_hi)} (geometric mean over "
        f"{count(pair.n_budgets, 'budget')} where m is an estimate, of {n_total})"
    )
    note = _text(getattr(pair, "note", ""))
    return text + (f"  [{note}]" if note else "")


def _verdict_row(row) -> str:
    marks = [FLAG_TEXT[f] for f in _text(getattr(row, "flags", "")).split(";") if f in FLAG_TEXT]
    bound = _text(getattr(row, "bound", ""))
    if bound == "both":
        marks.append("both optima at this budget are only bounds: dL's direction unknown")
    elif bound:
        marks.append(f"the {bound}'s optimum is only a bound")
    m_op = _text(getattr(row, "multiplier_bound", "")) or "="
    if m_op == "?":
        marks.append("m is not bounded either way")
    if _text(getattr(row, "believe", "")):
        marks.append(row.believe)
    d_op = "?" if bound == "both" else "<=" if bound == "variant" else ">=" if bound == "reference" else "="
    if not math.isfinite(row.multiplier):
        m_text = "m n/a"
    elif m_op == "?":  # both optima are bounds: the number is only where they put it
        m_text = f"m unknown (bounds give {row.multiplier:.2f}x)"
    else:
        m_text = f"m {m_op} {row.multiplier:.2f}x"
    if m_op == "=" or math.isfinite(row.multiplier_lo):
        m_text += f" {_interval(row.multiplier_lo, row.multiplier_hi)}"
    d_text = (
        f"dL {d_op} {row.delta_loss:+.4f} {_interval(row.delta_loss_lo, row.delta_loss_hi, '{:+.4f}')} nats"
        if math.isfinite(row.delta_loss)
        else "dL n/a (the reference's curve does not reach this budget)"
    )
    ref_loss = f"{row.reference_loss_opt:.4f}" if math.isfinite(row.reference_loss_opt) else "n/a"
    star = "*" if getattr(row, "estimate", False) else " "
    return f"   {star}C={sci(row.budget)}  {m_text}  {d_text}  (L* {row.loss_opt:.4f} vs {ref_loss})" + (
        f"  [{'; '.join(marks)}]" if marks else ""
    )


def _verdict_section(verdict: Verdict, loss: str) -> list[str]:
    pct = f"{PERCENTILES[0]:g}-{PERCENTILES[1]:g}%"
    lines = [
        f"Verdict on the {loss} loss ({LOSSES[loss]}): the compute multiplier m is how many times its own budget "
        f"the reference would need to reach the variant's optimal loss (m > 1: the variant is better); "
        f"dL = L*(variant) - L*(reference) at equal compute; [{pct}] from each curve's measured noise "
        "(curves drawn independently), widened by the disagreement of two models of the reference's L*(C). "
        "* marks the budgets where m is an estimate (both optima located, not extrapolated, no LR edge): "
        "only they enter the headline."
    ]
    if verdict.overall.empty:
        return lines + ["  no comparison: the study needs a baseline (or random) curve beside a variant"]
    for pair in verdict.overall.itertuples():
        lines.append(_headline(pair))
        rows = verdict.by_budget[
            (verdict.by_budget["curve"] == pair.curve) & (verdict.by_budget["reference"] == pair.reference)
        ]
        lines += [_verdict_row(row) for row in rows.itertuples()]
    return lines


def _best_points_section(points: pd.DataFrame) -> list[str]:
    lines = ["Best point per budget and curve (loss: mean over seeds at the best learning rate):"]
    for budget, group in points.groupby("budget", sort=True):
        lines.append(f"  budget {sci(budget)} FLOPs")
        best = group.loc[group.groupby("curve")["loss"].idxmin()].set_index("curve", drop=False)
        base = best.loc[BASELINE, "loss"] if BASELINE in best.index else None
        for curve in curve_order(best.index):
            row = best.loc[curve]
            text = f"    {curve:<22} loss {row['loss']:.4f}  params {si(row['params'])}"
            if row["n_seeds"] > 1:
                text += f"  ({row['n_seeds']} seeds, sd {row['loss_std']:.4f})"
            if np.isfinite(row["lr"]):
                text += f"  lr {row['lr']:.3g}" + (" (edge of the LR grid)" if row["lr_edge"] else "")
            if pd.notna(row.get("val_loss_causal")) and pd.notna(row.get("val_loss")):
                text += f"  top-k {row['val_loss']:.4f} / causal {row['val_loss_causal']:.4f}"
                if pd.notna(row.get("val_causal_frac")):
                    text += f" ({100 * row['val_causal_frac']:.1f}% processed)"
            if pd.notna(row.get("epochs")):
                text += f"  {row['epochs']:.3g} epochs"
            if base is not None and curve != BASELINE:
                text += f"  {row['loss'] - base:+.4f} vs baseline"
            lines.append(text)
    return lines


def _fits_section(fits: pd.DataFrame) -> list[str]:
    lines = [
        "isoFLOP optima (parabola in log10 params; bracketed = lowest point interior; "
        f"[{PERCENTILES[0]:g}-{PERCENTILES[1]:g}%]: N* and D* by Fieller's theorem, L* by a parametric bootstrap, "
        "from each curve's measured noise; not clamped to the sampled sizes):"
    ]
    for row in fits.itertuples():
        lo, hi = row.params_min, row.params_max
        interval = f"[{_size(row.n_opt_lo, lo, hi)}, {_size(row.n_opt_hi, lo, hi)}]"
        if row.bracketed:
            optimum = (
                f"N*={si(row.n_opt)} {interval}  D*={si(row.d_opt) if np.isfinite(row.d_opt) else 'n/a'}"
                f"  L*={row.loss_opt:.4f} {_interval(row.loss_opt_lo, row.loss_opt_hi, '{:.4f}')}"
            )
            flag = ""
            if np.isfinite(row.boot_interior) and row.boot_interior < 0.95:
                flag = f"  [{row.boot_interior:.0%} of resamples found a minimum inside the sizes]"
        else:
            side = (
                f"< {si(row.bound_params)}"
                if row.bound == "below"
                else f"> {si(row.bound_params)}"
                if row.bound == "above"
                else "not located"
            )
            optimum = f"N* {side}  L* <= {row.loss_opt:.4f}"
            flag = f"  UNBRACKETED ({row.reason}; not in the power law)"
        if row.lr_edge_points:
            flag += f"  [{row.lr_edge_points} point(s) LR-unbracketed: best LR at the edge of the grid]"
        runs = count(row.n_runs, "run") + (f", {row.n_seeds} seeds" if row.n_seeds > 1 else "")
        lines.append(f"  {row.curve:<22} C={sci(row.budget)}  {optimum}  ({runs}){flag}")
    return lines


def _power_law_section(laws: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    lines = ["Power laws (least squares of log10 optimum on log10 C over bracketed budgets):"]
    for row in laws.itertuples():
        symbol = "N*" if row.quantity == "n_opt" else "D*"
        lines.append(
            f"  {row.curve:<22} {symbol} = {row.coefficient:.3g} C^{row.exponent:.3f} "
            f"{_interval(row.exponent_lo, row.exponent_hi, '{:.3f}')}  ({row.n_budgets} budgets; {row.interval})"
        )
    for curve in curve_order(fits["curve"]):
        if curve not in set(laws["curve"]):
            n = int(fits[fits["curve"] == curve]["bracketed"].sum())
            lines.append(f"  {curve:<22} no power law: {n} bracketed budget(s), need {MIN_POWER_LAW_BUDGETS}")
    return lines


def _approach3_section(a3: pd.DataFrame) -> list[str]:
    if a3.empty:
        return [
            f"Approach 3: not fitted (needs {MIN_A3_POINTS} points over {MIN_A3_BUDGETS} budgets per curve)."
        ]
    lines = ["Approach 3 cross-check (L = E + A/N^alpha + B/D^beta, Huber on log loss):"]
    for row in a3.itertuples():
        lines.append(
            f"  {row.curve:<22} E={row.E:.3f} A={row.A:.4g} B={row.B:.4g} alpha={row.alpha:.3f} "
            f"beta={row.beta:.3f}  implied a={row.a_opt:.3f}, b={row.b_opt:.3f}  ({row.n_points} points)"
        )
    return lines


def _lr_section(lr_laws: pd.DataFrame | None, lr_rules: list[str]) -> list[str]:
    lines = []
    if lr_rules:
        lines += ["Learning rates of this study:"] + [f"  {rule}" for rule in lr_rules]
    if lr_laws is not None and not lr_laws.empty:
        lines += [
            "LR grid: lr*(N) fitted to the interior best LRs (use it with train.lr_from=<this folder>):"
        ]
        for row in lr_laws.itertuples():
            lines.append(
                f"  {row.variant:<22} lr* = {row.coefficient:.4g} N^{row.exponent:.3f}  "
                f"({row.n_points} points, {si(row.params_min)}-{si(row.params_max)} params, "
                f"grid {row.lr_min:g}-{row.lr_max:g})"
            )
    return lines


def format_summary(
    source: str,
    runs: pd.DataFrame,
    points: pd.DataFrame,
    fits: pd.DataFrame,
    laws: pd.DataFrame,
    a3: pd.DataFrame,
    verdicts: dict[str, Verdict],
    loss: str,
    states: dict[str, int] | None,
    notes: list[str],
    lr_laws: pd.DataFrame | None = None,
    lr_rules: list[str] | None = None,
    speed: list[str] | None = None,
) -> str:
    """The whole report; `verdicts` maps each loss analysed to its verdict, `loss` is the one fitted in detail."""
    lines = [f"modexp analysis of {source}"]
    lines.append(
        f"curves: {', '.join(curve_order(points['curve']))}; budgets: "
        f"{', '.join(sci(b) for b in sorted(points['budget'].unique()))}; "
        f"fits and figures use the {loss} loss ({LOSSES[loss]})"
    )
    if states is not None:
        lines.append(
            "runs: "
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: kv[0] != "done"))
        )
    lines += [note for note in notes if note.startswith("WARNING")]  # next to the verdict, not at the end
    sections = [_verdict_section(verdicts[loss], loss)]
    sections += [_verdict_section(v, other) for other, v in verdicts.items() if other != loss]
    sections += [speed or []]  # the wall-clock verdict and the study's MFU (isotime.speed_lines)
    sections += [_best_points_section(points), _fits_section(fits), _lr_section(lr_laws, lr_rules or [])]
    sections += [_power_law_section(laws, fits), _approach3_section(a3)]
    for section in sections:
        if section:
            lines += [""] + section
    if notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in notes]
    return "\n".join(lines) + "\n"
