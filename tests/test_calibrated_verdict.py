"""The verdict's intervals mean what they say: one test per way it used to mislead, on tables with a known
truth (the Chinchilla refit law; a variant that reaches at C what the baseline reaches at m C), analysed
through `modexp analyze --table` as a researcher would."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modexp import analysis
from modexp.analysis import calibration as cal
from modexp.analysis import simulate as sim
from modexp.cli import main

TRUE_M = 1.2
BUDGETS = (1e18, 10**18.5, 1e19, 10**19.5)


def design(**kw) -> sim.Design:
    """An evenly spaced ladder of 7 sizes over 1.2 decades per budget, Chinchilla law, m = 1.2, noise-free."""
    options = {"name": "t", "budgets": BUDGETS, "sizes": 7, "wide": 1.2, "noise": 0.0, "multiplier": TRUE_M}
    return sim.Design(**{**options, **kw})


def study(tmp_path: Path | None = None, rng_seed: int = 0, **kw) -> pd.DataFrame:
    return sim.simulate(design(**kw), np.random.default_rng(rng_seed))


def analyze_cli(tmp_path: Path, df: pd.DataFrame, name: str = "t") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Write the table, run `modexp analyze --table`, read back verdict.csv, verdict_overall.csv, summary."""
    table = tmp_path / f"{name}.csv"
    df.to_csv(table, index=False)
    out = tmp_path / f"{name}-out"
    assert main(["analyze", "--table", str(table), "--out", str(out), "--wandb", "disabled"]) == 0
    by_budget = pd.read_csv(out / "verdict.csv", keep_default_na=False, na_values=[""])
    overall = pd.read_csv(out / "verdict_overall.csv", keep_default_na=False, na_values=[""])
    return by_budget, overall, (out / "summary.txt").read_text()


def true_multiplier_inside(row) -> bool:
    return row["multiplier_lo"] <= TRUE_M <= row["multiplier_hi"]


# ---------------------------------------------------------------------------------------------- calibration


def test_seeds_at_two_sizes_with_noise_growing_with_size_cover_at_the_nominal_rate() -> None:
    """A small version of `modexp selfcheck calibration` (docs/verdict.md has the 200-study figures) on the design
    the presets plan (WSD stems, a second seed at the 2 sizes nearest each optimum) with 4x the noise at the
    2 largest sizes, where the seeds say nothing about the noise: residuals now always join the seeds' evidence
    (covered 0.60-0.73 before). Over 30 studies the coverage of L*, N*, m and the headline is consistent with 90%
    (a 99% binomial interval of what was observed holds it)."""
    tally = cal.run_design(cal.DESIGNS["presets-noisy-ends"], studies=30, n_boot=100)
    for quantity in ("N*", "L*", "m", "headline m"):
        hits, n = tally.hits[quantity], tally.trials[quantity]
        lo, hi = cal.binomial_interval(hits, n)
        assert lo <= cal.NOMINAL <= hi, f"{quantity}: {hits}/{n} covered"


def test_three_seeds_measure_the_seed_noise_with_the_residuals(tmp_path: Path) -> None:
    """With seeds at every size, the noise is measured from the seeds' spread and the windows' residuals
    together: its sd is the simulated one."""
    df = study(noise=0.01, seeds=3, rng_seed=1)
    by_budget, overall, summary = analyze_cli(tmp_path, df)
    fits = pd.read_csv(tmp_path / "t-out" / "fits.csv")
    assert set(fits["noise_source"]) == {"seeds+residuals"}
    assert fits["noise_sd"].between(0.007, 0.013).all(), fits["noise_sd"].tolist()
    assert "paired over seeds" not in summary


def test_one_seed_measures_its_noise_from_the_residuals_with_a_t_widening() -> None:
    df = study(noise=0.01, sizes=5, wide=0.8, rng_seed=2)
    iso = analysis.fit_isoflops(df)
    model = iso.noise["baseline"]
    assert model.source == "residuals" and 0 < model.dof <= len(BUDGETS) * (5 - 3) + 1e-9
    scales = analysis.noise.variance_scales(model, 4000, np.random.default_rng(0))
    assert np.median(scales) > 1  # nu / chi2_nu: a noise level guessed from few dof is more often too small


def test_noise_growing_with_size_is_kept_at_its_points() -> None:
    """Four times the noise at the two largest sizes of every ladder: the noise model puts it there (more
    noise at fewer tokens per parameter), instead of spreading it evenly over the sizes."""
    df = study(noise=0.005, seeds=3, rng_seed=3, large_noise=4.0)
    model = analysis.fit_isoflops(df).noise["baseline"]
    z = np.log10(df["tokens"] / df["params"])
    assert model.variance(z.min()) > 4 * model.variance(z.max())


def test_stems_shared_by_branches_are_measured() -> None:
    """Branches of one WSD stem share most of their noise across budgets: the restricted likelihood of the
    stems' share finds it, and finds none where the runs are independent."""
    shared = study(noise=0.01, stems=True, stem_share=0.9, rng_seed=4, seeds=2)
    independent = study(noise=0.01, stems=True, stem_share=0.0, rng_seed=4, seeds=2)
    high = analysis.fit_isoflops(shared).noise["baseline"]
    low = analysis.fit_isoflops(independent).noise["baseline"]
    assert high.stem_pairs > 10 and high.rho > 0.5, high.describe()
    assert low.rho < 0.5, low.describe()


# ---------------------------------------------------------------------------------------------- optima


def test_an_asymmetric_curve_on_a_wide_ladder_finds_its_minimum(tmp_path: Path) -> None:
    """Kaplan's law (asymmetric isoFLOP curves, outside every family the analysis fits) on 12 sizes over 2.5
    decades: one parabola through every size put its vertex 0.04-0.06 nats from the minimum; the quadratic
    over the sizes around the lowest point lands within 0.01 of the true L* at every budget."""
    d = design(
        law="kaplan", budgets=(1e17, 1e18, 1e19, 1e20), sizes=12, wide=2.5, noise=0.002, multiplier=1.0
    )
    df = sim.simulate(d, np.random.default_rng(5))
    analyze_cli(tmp_path, df)
    fits = pd.read_csv(tmp_path / "t-out" / "fits.csv").query("loss == 'topk'")
    located = fits[fits["bracketed"]]
    assert len(located) >= 6
    for row in located.itertuples():
        truth = sim.truth(d, row.curve, row.budget)
        assert abs(row.loss_opt - truth["loss_opt"]) < 0.01, (row.curve, row.budget, row.loss_opt, truth)
        assert row.n_window < row.n_sizes  # the window closed in on the minimum


def test_every_estimate_lies_inside_its_own_interval(tmp_path: Path) -> None:
    """One estimator per interval: L*, N*, D*, m, dL, the headline, m's slope and the exponents are each the
    estimate their interval was built around, never outside it nor at one of its ends."""
    df = study(noise=0.01, seeds=2, seed_sizes=2, stems=True, stem_share=0.5, rng_seed=6)
    by_budget, overall, _ = analyze_cli(tmp_path, df)
    fits = pd.read_csv(tmp_path / "t-out" / "fits.csv")
    laws = pd.read_csv(tmp_path / "t-out" / "power_laws.csv")
    checks = [
        (fits[fits["bracketed"]], "loss_opt", "loss_opt_lo", "loss_opt_hi"),
        (fits[fits["bracketed"]], "n_opt", "n_opt_lo", "n_opt_hi"),
        (fits[fits["bracketed"] & fits["d_opt"].notna()], "d_opt", "d_opt_lo", "d_opt_hi"),
        (by_budget[by_budget["estimate"]], "multiplier", "multiplier_lo", "multiplier_hi"),
        (by_budget[by_budget["bracketed"]], "delta_loss", "delta_loss_lo", "delta_loss_hi"),
        (overall, "multiplier", "multiplier_lo", "multiplier_hi"),
        (overall, "m_slope", "m_slope_lo", "m_slope_hi"),
        (laws, "exponent", "exponent_lo", "exponent_hi"),
    ]
    for frame, estimate, lo, hi in checks:
        frame = frame[frame[estimate].notna()]  # the pooled m is absent where m trends with compute
        assert len(frame) or estimate == "multiplier", estimate
        for row in frame.itertuples():
            value, low, high = getattr(row, estimate), getattr(row, lo), getattr(row, hi)
            assert low < value < high, (estimate, value, low, high)


def test_an_m_that_falls_with_compute_is_reported_as_a_trend(tmp_path: Path) -> None:
    """A variant whose true m falls from 1.7x to 0.85x over 1.5 decades of compute: the verdict reports the
    trend (its slope's interval holds the truth and excludes no trend), and no pooled mean, which would hide
    whether the advantage grows or shrinks."""
    d = design(budgets=(1e18, 3e18, 1e19, 3e19), multiplier_slope=-0.2, noise=0.003, sizes=7, wide=1.2)
    by_budget, overall, summary = analyze_cli(tmp_path, sim.simulate(d, np.random.default_rng(7)))
    head = overall[overall["loss"] == "topk"].iloc[0]
    budgets = [float(b) for b in head["budgets"].split(";")]
    true_slope = np.polyfit(
        np.log(budgets), [math.log(sim.truth(d, head["curve"], b)["multiplier"]) for b in budgets], 1
    )[0]
    assert head["heterogeneous"] and head["heterogeneity_p"] < 0.05
    assert math.isnan(head["multiplier"]) and "a pooled mean would mislead" in head["note"]
    assert head["m_slope_lo"] <= true_slope <= head["m_slope_hi"] and head["m_slope_hi"] < 0
    assert head["m_first"] > 1.3 and head["m_last"] < 1.0
    assert "m changes with compute" in summary.splitlines()[1]


def test_which_budgets_enter_the_headline_does_not_depend_on_which_side_of_1_m_falls(tmp_path: Path) -> None:
    """The estimand is fixed by the design: a worse variant (m = 0.8) and a better one (m = 1.25) on the same
    ladders enter the headline at the same budgets, the lowest and highest included (before, the lowest budget
    entered only when m >= 1 and the highest only when m <= 1)."""
    used = []
    for m in (0.8, 1.25):
        df = study(noise=0.002, multiplier=m, shift=0.0, drift=0.0, rng_seed=8)
        _, overall, _ = analyze_cli(tmp_path, df, f"m{m}")
        used.append(overall[overall["loss"] == "topk"].iloc[0]["budgets"])
    assert used[0] == used[1] and len(used[0].split(";")) == len(BUDGETS)


def test_several_comparisons_state_their_number_and_the_family_wise_reading(tmp_path: Path) -> None:
    df = study(noise=0.01, rng_seed=9)
    other = df[df["variant"] != "baseline"].assign(variant="mod_c0.5_e2")
    _, overall, summary = analyze_cli(tmp_path, pd.concat([df, other]))
    head = overall[overall["loss"] == "topk"]
    assert (head["n_comparisons"] == 2).all()
    assert (head["multiplier_fw_lo"] <= head["multiplier_lo"]).all()
    assert (head["multiplier_fw_hi"] >= head["multiplier_hi"]).all()
    assert "2 comparisons" in summary


def test_summary_opens_with_the_verdict_in_words(tmp_path: Path) -> None:
    df = study(noise=0.01, rng_seed=10)
    _, overall, summary = analyze_cli(tmp_path, df)
    first, second = summary.splitlines()[:2]
    assert first.startswith("Verdict on the top-k loss")
    assert "vs baseline: m = " in second
    assert any(word in second for word in ("better", "worse", "inconclusive"))


# ---------------------------------------------------------------------------------------------- the headline


def with_lr_grid(df: pd.DataFrame, edge_budget: float, penalty: float) -> pd.DataFrame:
    """Three LRs per point (best in the middle), except the variant at edge_budget: two LRs, the best at the
    top edge, and an under-tuned loss `penalty` nats too high."""
    rows = []
    for row in df.to_dict("records"):
        edge = row["variant"] != "baseline" and row["budget"] == edge_budget
        grid = ((0.01, 0.02), (0.02, 0.0)) if edge else ((0.005, 0.02), (0.01, 0.0), (0.02, 0.02))
        for lr, extra in grid:
            rows.append({**row, "lr": lr, "val_loss": row["val_loss"] + extra + (penalty if edge else 0.0)})
    return pd.DataFrame(rows)


def test_an_lr_edge_optimum_is_flagged_and_left_out_of_the_headline(tmp_path: Path) -> None:
    edge_budget = BUDGETS[1]
    df = with_lr_grid(study(tmp_path), edge_budget, penalty=0.03)
    by_budget, overall, summary = analyze_cli(tmp_path, df)
    edge = by_budget[(by_budget["budget"] == edge_budget) & (by_budget["loss"] == "topk")].iloc[0]
    assert "lr_edge" in edge["flags"] and not edge["estimate"] and edge["multiplier"] < 0.95 * TRUE_M
    head = overall[overall["loss"] == "topk"].iloc[0]
    assert head["n_budgets"] < head["n_budgets_total"] and "lr_edge" in head["note"]
    assert true_multiplier_inside(head), head.to_dict()
    assert "left out by design:" in summary and "LR at the grid's edge" in summary


def test_an_lr_extrapolated_beyond_its_law_takes_a_budget_out_of_the_headline(tmp_path: Path) -> None:
    """With per-size LR laws the grid's edge never fires; a run whose LR came from its law outside the sizes
    the law was fitted on (`lr_domain`) is the flag that can, where it shapes an optimum."""
    df = study(noise=0.002, rng_seed=11)
    top = BUDGETS[-1]
    outside = (df["variant"] != "baseline") & (df["budget"] == top)
    df["lr_domain"] = np.where(outside, "params above the law's 1e9", "")
    by_budget, overall, summary = analyze_cli(tmp_path, df)
    row = by_budget[(by_budget["budget"] == top) & (by_budget["loss"] == "topk")].iloc[0]
    assert "lr_outside_law" in row["flags"] and not row["estimate"]
    head = overall[overall["loss"] == "topk"].iloc[0]
    assert "lr_outside_law" in head["note"] and str(top) not in head["budgets"]
    assert "extrapolated beyond the sizes its law was fitted on" in summary


def test_a_bound_row_is_printed_with_its_operator_and_never_averaged(tmp_path: Path) -> None:
    df = study(tmp_path)
    # At the top budget the variant's ladder stops below its optimum: the lowest loss is the largest size.
    top = BUDGETS[-1]
    n_star = sim.truth(design(), sim.VARIANT, top)["n_opt"]
    df = df[~((df["variant"] != "baseline") & (df["budget"] == top) & (df["params"] > n_star / 1.2))]
    assert ((df["variant"] != "baseline") & (df["budget"] == top)).sum() >= 3
    by_budget, overall, summary = analyze_cli(tmp_path, df)
    row = by_budget[(by_budget["budget"] == top) & (by_budget["loss"] == "topk")].iloc[0]
    assert row["multiplier_bound"] == ">=" and not row["estimate"] and "bound" in row["flags"]
    head = overall[overall["loss"] == "topk"].iloc[0]
    assert head["n_budgets"] == len(BUDGETS) - 1 and true_multiplier_inside(head)
    assert "m >= " in summary


def test_no_estimate_anywhere_says_so_instead_of_averaging(tmp_path: Path) -> None:
    df = with_lr_grid(study(tmp_path), edge_budget=-1.0, penalty=0.0)
    df.loc[df["lr"] == 0.02, "val_loss"] -= 0.05  # every point's best LR is now the top of the grid
    by_budget, overall, summary = analyze_cli(tmp_path, df)
    head = overall[overall["loss"] == "topk"].iloc[0]
    assert math.isnan(head["multiplier"]) and "no budget gives an estimate" in head["note"]
    assert "no estimate of m" in summary


# ---------------------------------------------------------------------------------------------- interpolation


def test_two_reference_budgets_a_decade_apart_cover_the_true_multiplier(tmp_path: Path) -> None:
    """Noise-free: a straight line between two budgets reads 1.34 for a true 1.2; the interval now includes
    the curved model (the reference's Approach-3 law) and so the truth, and the row says the curve's shape
    rests on two budgets."""
    df = study(tmp_path, budgets=(1e18, 10**18.5, 1e19))
    df = df[~((df["variant"] == "baseline") & (df["budget"] == 10**18.5))]
    by_budget, _, _ = analyze_cli(tmp_path, df)
    row = by_budget[(by_budget["budget"] == 10**18.5) & (by_budget["loss"] == "topk")].iloc[0]
    assert "reference_2_budgets" in row["flags"] and "reference_missing" in row["flags"]
    assert true_multiplier_inside(row), row.to_dict()
    assert row["model_error"] > 0


@pytest.mark.parametrize("rng_seed", range(6))
def test_m_and_dl_agree_in_direction_where_the_reference_was_measured(rng_seed: int) -> None:
    """With two reference budgets m reads a curved model of L*(C) (the Approach-3 law, fitted to every run):
    fitted to noisy runs it need not pass through the measured optima, and once said MoD was worse
    (m = 0.86x) where the measured optima said better (dL = -0.05, the demo at 2.5e11). Anchored to the
    measured optima, m and dL at a budget both curves trained point the same way."""
    df = study(noise=0.02, sizes=5, wide=0.8, budgets=(1e18, 1e19), multiplier=1.05, rng_seed=rng_seed)
    points = analysis.reduce_points(df, "topk")
    iso = analysis.fit_isoflops(points, n_boot=50)
    rows = analysis.compute_verdict(iso.table, iso.boot, points.table).by_budget
    rows = rows[(rows["multiplier_bound"] == "") & rows["bracketed"]]
    for _, row in rows.iterrows():
        assert (row["multiplier"] > 1) == (row["delta_loss"] < 0), row.to_dict()


def test_extrapolation_follows_a_curve_and_stops_after_one_budget_step(tmp_path: Path) -> None:
    """At the reference's top budget a better variant's L* lies past the reference's curve: m is read along
    a fitted convex curve (a straight last segment is biased low for a convex L*(C)), and the budget stays in
    the headline (extrapolation widens an interval; it does not decide the estimand); more than one budget
    step past it, m is only a bound, with no interval, and no pooled number is given."""
    df = study(tmp_path)
    by_budget, _, _ = analyze_cli(tmp_path, df, "near")
    top = BUDGETS[-1]
    row = by_budget[(by_budget["budget"] == top) & (by_budget["loss"] == "topk")].iloc[0]
    assert row["extrapolated"] and row["estimate"] and "extrapolated" in row["flags"]
    assert true_multiplier_inside(row) and abs(row["multiplier"] / TRUE_M - 1) < 0.02
    fits = pd.read_csv(tmp_path / "near-out" / "fits.csv").query("loss == 'topk'")
    base, mine = (
        fits[fits["curve"] == "baseline"],
        fits[(fits["curve"] != "baseline") & (fits["budget"] == top)],
    )
    line, _ = analysis.compute_multiplier(
        np.log10(base["budget"]), base["loss_opt"], math.log10(top), float(mine["loss_opt"].iloc[0])
    )
    assert abs(row["multiplier"] - TRUE_M) < abs(line - TRUE_M)
    far = df[(df["variant"] != "baseline") | (df["budget"] <= BUDGETS[1])]
    by_budget, _, summary = analyze_cli(tmp_path, far, "far")
    last = by_budget[(by_budget["budget"] == top) & (by_budget["loss"] == "topk")].iloc[0]
    assert last["multiplier_bound"] == ">=" and "beyond_step" in last["flags"] and last["multiplier"] < TRUE_M
    assert math.isnan(last["multiplier_lo"]) and math.isnan(last["delta_loss"])
    assert "dL not available" in summary and "m is only a bound at" in summary


def test_a_budget_the_reference_never_trained_gets_dl_from_its_curve(tmp_path: Path) -> None:
    df = study(tmp_path)
    df = df[~((df["variant"] == "baseline") & (df["budget"] == BUDGETS[2]))]
    by_budget, _, summary = analyze_cli(tmp_path, df)
    row = by_budget[(by_budget["budget"] == BUDGETS[2]) & (by_budget["loss"] == "topk")].iloc[0]
    truth = sim.truth(design(), sim.VARIANT, BUDGETS[2])["delta_loss"]
    assert row["reference_missing"] and math.isfinite(row["delta_loss"])
    assert row["delta_loss_lo"] - 2e-3 <= truth <= row["delta_loss_hi"] + 2e-3
    assert "read off its curve" in summary and "nan" not in summary.split("Best point")[0]


def test_when_m_and_dl_disagree_the_row_says_which_to_believe(tmp_path: Path) -> None:
    """A variant truly worse (m = 0.8) and a baseline whose top budget is only a bound (its ladder stops
    short, so its best run is far above its L*): dL there reads 'better' as a bound, m reads worse along the
    reference's curve. The row says to believe m, and why."""
    df = study(tmp_path, multiplier=0.8)
    top = BUDGETS[-1]
    base_top = (df["variant"] == "baseline") & (df["budget"] == top)
    # Its ladder stops short above the optimum, and those runs sit high (say, under-trained).
    df = df.drop(df[base_top]["params"].sort_values().index[:4])
    df.loc[(df["variant"] == "baseline") & (df["budget"] == top), "val_loss"] += 0.05
    by_budget, _, summary = analyze_cli(tmp_path, df)
    row = by_budget[(by_budget["budget"] == top) & (by_budget["loss"] == "topk")].iloc[0]
    assert row["bound"] == "reference" and row["multiplier"] < 1 and row["delta_loss"] < 0
    assert row["believe"].startswith("believe m: dL is only a bound"), row.to_dict()
    assert "believe m" in summary


# ---------------------------------------------------------------------------------------------- D*


def test_d_star_interval_comes_from_d_star_s_own_estimator(tmp_path: Path) -> None:
    df = study(tmp_path, noise=0.005, rng_seed=5)
    _, _, _ = analyze_cli(tmp_path, df)
    fits = pd.read_csv(tmp_path / "t-out" / "fits.csv")
    located = fits[fits["bracketed"] & np.isfinite(fits["d_opt"])]
    assert len(located) >= 6
    assert ((located["d_opt_lo"] <= located["d_opt"]) & (located["d_opt"] <= located["d_opt_hi"])).all()
    laws = pd.read_csv(tmp_path / "t-out" / "power_laws.csv")
    for law in laws.itertuples():
        assert law.exponent_lo <= law.exponent <= law.exponent_hi, law


# ---------------------------------------------------------------------------------------------- LR laws


def test_edge_points_enter_the_lr_law_as_bounds() -> None:
    """Small sizes whose best LR is the grid's top edge: dropping them fits the interior only; as censored
    points they pull the law up at small sizes, where the true lr* is above the grid."""
    true = lambda n: 3.0 * n**-0.5  # noqa: E731
    rows = []
    for params in np.geomspace(1e4, 1e6, 7):
        lr_star = true(params)
        top = 0.02
        edge = lr_star > top
        rows.append(
            {
                "variant": "baseline",
                "budget": 1e11,
                "params": params,
                "tokens": 1e11 / (6 * params),
                "lr": top if edge else lr_star,
                "lr_star": math.nan if edge else lr_star * (1 + 0.02 * (-1) ** len(rows)),
                "lr_edge": edge,
                "n_lrs": 4,
                "lr_tried_min": 0.0025,
                "lr_tried_max": top,
                "loss": 2.0,
            }
        )
    grid = pd.DataFrame(rows)
    assert grid["lr_edge"].sum() >= 2
    law = analysis.lrlaw.fit_lr_laws(grid).iloc[0]
    assert law["n_censored"] == grid["lr_edge"].sum()
    assert law["exponent"] == pytest.approx(-0.5, abs=0.05)
    assert law["params_min"] == pytest.approx(1e4) and law["params_max"] == pytest.approx(1e6)


def test_runs_outside_the_lr_law_s_sizes_are_flagged_in_the_plan(tmp_path: Path, capsys) -> None:
    law = "train.lr_law={baseline:{coefficient:6.35,exponent:-0.594,params_min:10000,params_max:40000}}"
    overrides = ["sweep=smoke", "sweep.variants=[baseline]", law, f"runs_dir={tmp_path}"]
    assert main(["plan", *overrides, "--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = pd.read_json(io.StringIO(captured.out))
    outside = rows[(rows["params"] < 10000) | (rows["params"] > 40000)]
    assert len(outside) and (outside["lr_domain"] != "").all()
    inside = rows[(rows["params"] >= 10000) & (rows["params"] <= 40000)]
    assert (inside["lr_domain"] == "").all()
    assert "outside the sizes it was fitted on" in captured.err


def test_a_half_given_lr_law_domain_is_one_line(tmp_path: Path, capsys) -> None:
    law = "train.lr_law={baseline:{coefficient:6.35,exponent:-0.594,params_min:10000}}"
    assert main(["plan", "sweep=smoke", law, f"runs_dir={tmp_path}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "params_max" in err[0] and "Traceback" not in err[0]


# ---------------------------------------------------------------------------------------------- epochs


def test_epochs_are_reported_and_a_repetition_gap_is_noted(tmp_path: Path) -> None:
    df = study(tmp_path)
    corpus = df["tokens"].max() / 3  # the largest run sees its data 3 times
    df["epochs"] = df["tokens"] / corpus
    by_budget, _, summary = analyze_cli(tmp_path, replace_epochs(df))
    assert "epochs over the training split" in summary
    assert "repeats its training data" in summary
    flagged = by_budget[by_budget["flags"].fillna("").str.contains("epochs")]
    assert len(flagged) and not flagged["estimate"].any()  # the estimand leaves those budgets out


def replace_epochs(df: pd.DataFrame) -> pd.DataFrame:
    # The variant trains on 1.2x the tokens of the baseline at a size: make its repetition 2x, as MoD's is.
    out = df.copy()
    out.loc[out["variant"] != "baseline", "epochs"] *= 2
    return out


def test_plan_notes_variants_repeating_data_differently() -> None:
    from modexp.plan import epoch_spread_notes

    runs = [("baseline", 1e11, 1.0), ("baseline", 1e11, 1.2), ("mod", 1e11, 2.0), ("mod", 1e11, 2.2)]
    (note,) = epoch_spread_notes(runs)
    assert "mod repeats its training data" in note and "1e11" in note
    assert epoch_spread_notes([("baseline", 1e11, 0.05), ("mod", 1e11, 0.09)]) == []  # nothing repeats
    assert epoch_spread_notes([("baseline", 1e11, 2.0), ("mod", 1e11, 2.5)]) == []


def test_selfcheck_refuses_a_bad_setting_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["selfcheck", "calibration", "--setting", "nope", "--out", str(tmp_path / "sc")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "presets-noisy-ends" in err[0]
    assert not (tmp_path / "sc").exists()


def test_selfcheck_writes_its_coverage_table(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sc"
    args = ["selfcheck", "calibration", "--studies", "10", "--replicates", "50", "--out", str(out)]
    assert main(args + ["--setting", "cosine"]) == 0
    table = pd.read_csv(out / "coverage.csv")
    assert list(table["design"]) == ["cosine"] and table["N* n"].iloc[0] > 0
    text = (out / "coverage.md").read_text()
    assert "| cosine |" in text and "null: excludes 1" in text


def test_selfcheck_help_names_every_design() -> None:
    from modexp.cli import parser

    selfcheck = parser()._subparsers._group_actions[0].choices["selfcheck"]
    text = "".join(selfcheck.format_help().split())  # argparse wraps lines, and breaks words at hyphens
    assert all(name in text for name in cal.DESIGNS), text
