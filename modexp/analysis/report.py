"""The plain-text report `modexp analyze` prints and writes to summary.txt: the verdict first, then the fits."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from modexp.units import count, sci, si

from .fits import MIN_A3_BUDGETS, MIN_A3_POINTS, MIN_POWER_LAW_BUDGETS, PERCENTILES
from .labels import pair_label, variant_label
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
    "lr_edge": "a point shaping an optimum had its best LR at the grid's edge (its loss is only an upper bound)",
    "lr_outside_law": "a point shaping an optimum took an LR extrapolated beyond the sizes its law was fitted on",
    "epochs": "one variant repeats its training data far more often than the other here",
    "extrapolated": "read off the reference's curve beyond its budgets",
    "beyond_step": "more than one budget step beyond the reference: m is only a bound",
    "reference_2_budgets": "the reference's curve rests on 2 budgets",
    "reference_on_bounds": "the reference's curve runs through optima that are only bounds",
    "reference_missing": "the reference did not train this budget: its L* is read off its curve",
}
LOSS_WORDS = {
    "causal": "causal loss (each router decides token by token, as when sampling: the number to cite)",
    "topk": "top-k loss (routing that sees the whole sequence, which sampling cannot)",
}
DEFINITIONS = [
    "How to read this:",
    "  m, the compute multiplier: how many times its own budget the reference would need to reach the variant's",
    "    optimal loss. Above 1 the variant is better (1.15x: the reference needs 15% more compute).",
    "  [lo, hi]: a 90% interval from the curves' measured noise (seeds, local residuals, shared WSD stems) and the",
    "    disagreement of two models of the reference's L*(C). An interval that includes 1 is inconclusive.",
    "  dL: L*(variant) - L*(reference) at equal compute, in nats (negative: the variant is better).",
    "  L*, N*: a budget's optimal loss and size, from a quadratic over the sizes around its lowest point; an",
    "    optimum at the end of a ladder is only a bound (<= for L*, < or > for N*).",
    "  The headline averages ln m over the budgets marked * (chosen by the design, never by the result), and",
    "    reports m's trend with compute; where the budgets disagree it gives the trend instead of one number.",
]


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def direction(lo: float, hi: float) -> str:
    """better | worse | inconclusive | '' (no interval), as the interval of m says."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return "better" if lo > 1 else "worse" if hi < 1 else "inconclusive"


def _verdict_word(lo: float, hi: float) -> str:
    word = direction(lo, hi)
    if word == "better":
        return "better (the whole interval is above 1)"
    if word == "worse":
        return "worse (the whole interval is below 1)"
    return "inconclusive (the interval includes 1)" if word else "no interval"


def _trend_words(pair) -> str:
    slope, lo, hi = pair.m_slope, pair.m_slope_lo, pair.m_slope_hi
    interval = f"{slope:+.2f} {_interval(lo, hi, '{:+.2f}')} in ln m per ln C"
    if math.isfinite(lo) and lo > 0:
        return f"m grows with compute ({interval})"
    if math.isfinite(hi) and hi < 0:
        return f"m shrinks with compute ({interval})"
    return f"no clear trend with compute ({interval})"


def _budgets_text(pair) -> str:
    budgets = [float(b) for b in _text(getattr(pair, "budgets", "")).split(";") if b]
    if len(budgets) == 1:
        return f"at {sci(budgets[0])}"
    if budgets:
        return f"over {len(budgets)} budgets ({sci(budgets[0])}-{sci(budgets[-1])})"
    return ""


def headline_line(pair, loss: str | None = None) -> str:
    """One comparison in plain words: `MoD ... vs baseline: m = 1.15x [0.92, 1.46] at 2.5e11: inconclusive (...)`."""
    variant, reference = variant_label(pair.curve), variant_label(pair.reference)
    name = f"{variant} vs {reference}" + (f" ({loss} loss)" if loss else "")
    if getattr(pair, "heterogeneous", False) is True or str(getattr(pair, "heterogeneous", "")) == "True":
        return (
            f"{name}: m changes with compute, {pair.m_first:.2f}x at {sci(pair.budget_first)} to "
            f"{pair.m_last:.2f}x at {sci(pair.budget_last)} (slope of ln m on ln C {pair.m_slope:+.2f} "
            f"{_interval(pair.m_slope_lo, pair.m_slope_hi, '{:+.2f}')}, heterogeneity p = "
            f"{pair.heterogeneity_p:.2g}): no single m describes it"
        )
    bound = _text(getattr(pair, "multiplier_bound", ""))
    if bound and math.isfinite(pair.multiplier):
        return f"{name}: m {bound} {pair.multiplier:.2f}x {_budgets_text(pair)}, a bound ({_text(pair.note)})"
    if not math.isfinite(pair.multiplier):
        return f"{name}: no estimate of m ({_text(pair.note) or 'no budget where both optima were located'})"
    text = (
        f"{name}: m = {pair.multiplier:.2f}x {_interval(pair.multiplier_lo, pair.multiplier_hi)} "
        f"{_budgets_text(pair)}: {_verdict_word(pair.multiplier_lo, pair.multiplier_hi)}"
    )
    slope = getattr(pair, "m_slope", math.nan)
    if isinstance(slope, float) and math.isfinite(slope):
        text += f"; {_trend_words(pair)}"
    return text


def _family_line(overall: pd.DataFrame) -> list[str]:
    rows = [p for p in overall.itertuples() if math.isfinite(getattr(p, "multiplier_fw_lo", math.nan))]
    k = int(overall["n_comparisons"].max()) if "n_comparisons" in overall and len(overall) else 0
    if k <= 1 or not rows:
        return []
    parts = []
    for p in rows:
        word = direction(p.multiplier_fw_lo, p.multiplier_fw_hi)
        fw = _interval(p.multiplier_fw_lo, p.multiplier_fw_hi)
        parts.append(f"{pair_label(p.curve, p.reference)} {fw} ({word})")
    return [
        f"  {k} comparisons: each interval holds at 90% on its own; read together (Bonferroni, all {k} at once "
        "at 90%): " + "; ".join(parts)
    ]


def _verdict_row(row) -> str:
    marks = [FLAG_TEXT[f] for f in _text(getattr(row, "flags", "")).split(";") if f in FLAG_TEXT]
    bound = _text(getattr(row, "bound", ""))
    if bound == "both":
        marks.append("both optima at this budget are only bounds")
    elif bound:
        marks.append(f"the {bound}'s optimum is only a bound")
    m_op = _text(getattr(row, "multiplier_bound", "")) or "="
    if _text(getattr(row, "believe", "")):
        marks.append(row.believe)
    d_op = "?" if bound == "both" else "<=" if bound == "variant" else ">=" if bound == "reference" else "="
    if not math.isfinite(row.multiplier):
        m_text = "m not available"
    elif m_op == "?":  # both optima are bounds: the number is only where they put it
        m_text = f"m unknown (bounds give {row.multiplier:.2f}x)"
    else:
        m_text = f"m {m_op} {row.multiplier:.2f}x"
    if m_op == "=" or math.isfinite(row.multiplier_lo):
        m_text += f" {_interval(row.multiplier_lo, row.multiplier_hi)}"
    if not math.isfinite(row.delta_loss):
        d_text = "dL not available (the reference's curve does not reach this budget)"
    elif d_op == "?":
        d_text = "dL unknown (both sides are bounds)"
    else:
        d_text = f"dL {d_op} {row.delta_loss:+.4f} {_interval(row.delta_loss_lo, row.delta_loss_hi, '{:+.4f}')} nats"
    ref_loss = f"{row.reference_loss_opt:.4f}" if math.isfinite(row.reference_loss_opt) else "n/a"
    star = "*" if getattr(row, "estimate", False) else " "
    return f"   {star}C={sci(row.budget)}  {m_text}  {d_text}  (L* {row.loss_opt:.4f} vs {ref_loss})" + (
        f"  [{'; '.join(marks)}]" if marks else ""
    )


def _verdict_section(verdict: Verdict, loss: str) -> list[str]:
    lines = [f"Per budget, on the {loss} loss (* marks the budgets in the headline):"]
    if verdict.overall.empty:
        return lines + ["  no comparison: the study needs a baseline (or random) curve beside a variant"]
    for pair in verdict.overall.itertuples():
        lines.append(
            f"  {pair_label(pair.curve, pair.reference)}" + (f"  [{pair.note}]" if _text(pair.note) else "")
        )
        rows = verdict.by_budget[
            (verdict.by_budget["curve"] == pair.curve) & (verdict.by_budget["reference"] == pair.reference)
        ]
        lines += [_verdict_row(row) for row in rows.itertuples()]
    return lines


def verdict_lines(verdicts: dict[str, Verdict], loss: str) -> list[str]:
    """The verdict first, in plain words: one line per comparison on the primary loss, the family-wise reading,
    then the other loss in one line per comparison."""
    primary = verdicts[loss].overall
    lines = [f"Verdict on the {LOSS_WORDS.get(loss, loss)}:"]
    if primary.empty:
        return lines + ["  no comparison: the study needs a baseline (or random) curve beside a variant"]
    lines += [f"  {headline_line(pair)}" for pair in primary.itertuples()]
    lines += _family_line(primary)
    for other, verdict in verdicts.items():
        if other == loss or verdict.overall.empty:
            continue
        lines.append(f"  On the {LOSS_WORDS.get(other, other)}:")
        lines += [f"    {headline_line(pair)}" for pair in verdict.overall.itertuples()]
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
        "isoFLOP optima (a quadratic in log10 params over the sizes around the lowest point; "
        f"[{PERCENTILES[0]:g}-{PERCENTILES[1]:g}%]: N* and D* by Fieller's theorem, L* by a parametric bootstrap "
        "that reruns the whole estimator, bias-corrected; from each curve's measured noise):"
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
            flag = f"  [optimum not located: {row.reason}; left out of the power law]"
        if row.lr_edge_points:
            flag += f"  [{row.lr_edge_points} point(s) had their best LR at the edge of the LR grid]"
        n_window = getattr(row, "n_window", math.nan)
        if row.bracketed and isinstance(n_window, (int, float)) and n_window < row.n_sizes:
            flag += f"  [quadratic over the {int(n_window)} sizes {si(row.window_min)}-{si(row.window_max)}]"
        runs = count(row.n_runs, "run") + (f", {row.n_seeds} seeds" if row.n_seeds > 1 else "")
        lines.append(f"  {row.curve:<22} C={sci(row.budget)}  {optimum}  ({runs}){flag}")
    return lines


def _power_law_section(laws: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    lines = ["Power laws (log10 optimum on log10 C over the budgets whose optimum was located):"]
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


def cross_check_disagreements(laws: pd.DataFrame, a3: pd.DataFrame) -> list[str]:
    """Where Approach 3's implied exponent lies outside the interval of the exponent fitted to the optima."""
    out = []
    for row in a3.itertuples():
        law = laws[(laws["curve"] == row.curve) & (laws["quantity"] == "n_opt")]
        if law.empty or not math.isfinite(row.a_opt):
            continue
        fitted = law.iloc[0]
        lo, hi = fitted["exponent_lo"], fitted["exponent_hi"]
        if math.isfinite(lo) and math.isfinite(hi) and not lo <= row.a_opt <= hi:
            out.append(
                f"{variant_label(row.curve)}: Approach 3 implies N* ~ C^{row.a_opt:.3f}, which DISAGREES with the "
                f"exponent fitted to the optima, {fitted['exponent']:.3f} [{lo:.3f}, {hi:.3f}]: one law for every "
                "size and budget does not describe these runs; trust the per-budget optima"
            )
    return out


def _approach3_section(a3: pd.DataFrame, laws: pd.DataFrame) -> list[str]:
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
    disagreements = cross_check_disagreements(laws, a3)
    lines += [f"  {d}" for d in disagreements] or [
        "  agrees with the fitted exponents (each inside their interval)"
    ]
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
) -> str:
    """The whole report: the verdict in plain words first, then the details, definitions and notes last.
    `verdicts` maps each loss analysed to its verdict, `loss` is the one fitted in detail."""
    lines = verdict_lines(verdicts, loss)
    lines += [f"  {note}" for note in notes if note.startswith("WARNING")]  # next to the verdict
    lines += ["", f"modexp analysis of {source}"]
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
    sections = [_verdict_section(verdicts[loss], loss)]
    sections += [_verdict_section(v, other) for other, v in verdicts.items() if other != loss]
    sections += [_best_points_section(points), _fits_section(fits), _lr_section(lr_laws, lr_rules or [])]
    sections += [_power_law_section(laws, fits), _approach3_section(a3, laws), DEFINITIONS]
    for section in sections:
        if section:
            lines += [""] + section
    if notes:
        lines += ["", "Notes:"] + [f"  - {note}" for note in notes if not note.startswith("WARNING")]
    return "\n".join(lines) + "\n"
