"""modexp.analysis: isoFLOP fits, power laws, Approach 3, outputs, and errors on bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import (
    A_OPT,
    ALPHA,
    BETA,
    MOD_VARIANT,
    E,
    chinchilla_table,
    make_sweep,
    sweep_optimum,
)

from modexp import analysis
from modexp.errors import ModexpError

FIGURES = (
    "isoflop",
    "optimal",
    "envelope",
    "verdict",
    "normalised",
    "learning_curves",
    "routing",
    "causal_acc",
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def result(sweep: Path) -> analysis.AnalysisResult:
    return analysis.analyze(sweep)


@pytest.fixture(scope="module")
def chinchilla(tmp_path_factory) -> analysis.AnalysisResult:
    root = tmp_path_factory.mktemp("chinchilla")
    return analysis.analyze(table=chinchilla_table(root / "chinchilla.csv"), out=root / "out")


def _law(laws: pd.DataFrame, variant: str, quantity: str) -> pd.Series:
    rows = laws[(laws["curve"] == variant) & (laws["quantity"] == quantity)]
    assert len(rows) == 1, f"no {quantity} power law for {variant}"
    return rows.iloc[0]


# ------------------------------------------------------------------ the Chinchilla anchor (external table)


def test_approach2_recovers_chinchilla_exponent(chinchilla: analysis.AnalysisResult) -> None:
    # Noise-free points on the published law, 9 sizes per budget picked around the 20-tokens-per-parameter
    # guess (0.15-0.3 decades off the true optimum, drifting with C). A parabola is only a second-order
    # approximation of L(log N), so its vertex is biased by an amount that changes with that offset: we
    # measure 0.4510 against 0.4516. 2% (+-0.009) bounds that bias with room to spare, and is still tight
    # enough to fail on any real mistake (a wrong axis or a vertex from the wrong parabola moves it by
    # 0.05 or more; Kaplan's 0.73 and the naive 0.5 are far outside).
    n_law = _law(chinchilla.power_laws, "baseline", "n_opt")
    d_law = _law(chinchilla.power_laws, "baseline", "d_opt")
    assert n_law["exponent"] == pytest.approx(A_OPT, rel=0.02)
    assert d_law["exponent"] == pytest.approx(1 - A_OPT, rel=0.02)
    assert n_law["n_budgets"] == 5 and chinchilla.fits["bracketed"].all()
    assert n_law["exponent_lo"] <= n_law["exponent"] <= n_law["exponent_hi"]
    # At the optimum the law itself gives N* = G (C/6)^a: the fitted optima sit within 10% of it.
    g = (ALPHA * 406.4 / (BETA * 410.7)) ** (1 / (ALPHA + BETA))
    true_n = g * (chinchilla.fits["budget"] / 6) ** A_OPT
    assert np.allclose(chinchilla.fits["n_opt"], true_n, rtol=0.10)


def test_approach3_recovers_chinchilla_law(chinchilla: analysis.AnalysisResult) -> None:
    # The points lie exactly on the law, so the Huber fit must find it (to well under 1%).
    fit = chinchilla.approach3.set_index("curve").loc["baseline"]
    assert fit["alpha"] == pytest.approx(ALPHA, rel=0.01)
    assert fit["beta"] == pytest.approx(BETA, rel=0.01)
    assert fit["E"] == pytest.approx(E, rel=0.01)
    assert fit["a_opt"] == pytest.approx(A_OPT, rel=0.01)
    assert (chinchilla.out_dir / "approach3.csv").is_file()


def test_external_table_skips_figures_it_cannot_draw(chinchilla: analysis.AnalysisResult) -> None:
    out = chinchilla.out_dir
    assert set(chinchilla.figures) == {"isoflop", "optimal", "envelope"}  # a table's runs have their FLOPs
    for name in ("isoflop", "optimal", "envelope"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.svg").stat().st_size > 0
    for name in ("verdict", "normalised", "learning_curves", "routing", "causal_acc", "lr_transfer"):
        assert not (out / f"{name}.png").exists()
        assert f"figure {name}.png skipped" in chinchilla.summary
    for name in ("fits.csv", "power_laws.csv", "summary.txt", "results.csv", "results.parquet"):
        assert (out / name).is_file()


# ------------------------------------------------------------------ parabola and bracketing


def fit_parabola(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    return analysis.fit_optimum(x, y, np.full(x.size, 1.0))


def test_parabola_vertex_and_bracketing() -> None:
    x = np.array([1.0, 1.1, 1.2, 1.3, 1.4])  # within the window's reach (0.6 decades) of any lowest point
    exact = fit_parabola(x, (x - 1.24) ** 2 + 1.5)
    assert exact.bracketed and exact.x_min == pytest.approx(1.24) and exact.y_min == pytest.approx(1.5)

    beyond = fit_parabola(x, (x - 1.5) ** 2)
    assert (
        not beyond.bracketed
        and beyond.reason == "lowest loss at the largest size"
        and beyond.bound == "above"
    )
    # The vertex sits inside the sampled range, but no run on its left is worse than the best: not bracketed.
    at_edge = fit_parabola(x, (x - 1.04) ** 2)
    assert (
        not at_edge.bracketed
        and at_edge.bound == "below"
        and at_edge.reason == "lowest loss at the smallest size"
    )
    # Lowest run interior, but the best parabola is concave: its vertex is a maximum.
    down = fit_parabola(x, [1.0, 2.0, 0.95, 2.0, 1.0])
    assert not down.bracketed and "opens downward" in down.reason and math.isnan(down.x_min)
    # The runs bracket a minimum (1.1 is lowest) but the quadratic's vertex lies past the smallest size: a poor
    # fit, reported as such, not as a bound the runs contradict.
    poor = fit_parabola(x, [2.02, 2.00, 2.60, 3.20, 4.00])
    assert not poor.bracketed and poor.bound == "" and "vertex outside the sizes" in poor.reason
    two = fit_parabola([1.0, 1.0, 2.0, 2.0], [3.0, 3.1, 2.0, 2.1])
    assert not two.bracketed and two.reason == "fewer than 3 distinct sizes"


def test_the_window_closes_in_on_the_minimum_of_a_curve_that_is_not_a_parabola() -> None:
    """Far from its minimum a real isoFLOP curve flattens and bends asymmetrically: the sizes more than 0.6
    decades from the lowest one are left out, and a quadratic that misfits the noise narrows further."""
    x = np.linspace(7.0, 10.0, 16)
    y = 2.0 + 0.3 * np.abs(x - 8.6) ** 1.5 + 0.05 * (x - 8.6)  # asymmetric, not quadratic anywhere
    fit = analysis.fit_optimum(x, y, np.full(x.size, 1e-6))
    assert fit.bracketed and x[fit.lo] >= 8.0 - 1e-9 and x[fit.hi - 1] <= 9.2 + 1e-9
    assert abs(fit.y_min - y.min()) < 0.01 and abs(fit.x_min - x[np.argmin(y)]) < 0.2


def test_bootstrap_is_seeded_and_deterministic(result: analysis.AnalysisResult) -> None:
    points = analysis.reduce_points(result.results, result.loss)
    again = analysis.fit_isoflops(points).table
    pd.testing.assert_frame_equal(again, result.fits)
    other = analysis.fit_isoflops(points, seed=1).table
    # Intervals come from the bootstrap (N*'s joins Fieller's closed form to it), so they move with the seed;
    # N* ignores it, and L* moves only by its bias correction (the replicates' median offset).
    assert not np.allclose(other["loss_opt_lo"], again["loss_opt_lo"], equal_nan=True)
    assert np.array_equal(other["n_opt"], again["n_opt"], equal_nan=True)
    assert np.allclose(other["loss_opt"], again["loss_opt"], atol=2e-3, equal_nan=True)


def test_power_law_needs_two_bracketed_budgets() -> None:
    rows = [
        {
            "variant": "baseline",
            "budget": c,
            "params": n,
            "tokens": c / (6 * n),
            "val_loss": 2 + (math.log10(n) - 5) ** 2,
        }
        for c in (1e12, 1e13)
        for n in (1e4, 1e5, 1e6)
    ]
    fits = analysis.fit_isoflops(pd.DataFrame(rows)).table
    assert fits["bracketed"].all()
    law = _law(analysis.fit_power_laws(fits), "baseline", "n_opt")
    assert law["exponent"] == pytest.approx(0.0, abs=1e-9) and law["coefficient"] == pytest.approx(1e5)
    assert math.isnan(law["exponent_se"])  # two points: no residual degrees of freedom
    assert analysis.fit_power_laws(fits[fits["budget"] == 1e12]).empty
    points = analysis.reduce_points(pd.DataFrame(rows), "topk").table
    assert analysis.fit_approach3(points).empty  # 6 points: too few for 5 parameters


# ------------------------------------------------------------------ a sweep folder


def test_sweep_outputs(result: analysis.AnalysisResult, sweep: Path) -> None:
    for name in FIGURES:
        for suffix in ("png", "svg"):
            path = sweep / "plots" / f"{name}.{suffix}"
            assert path.is_file() and path.stat().st_size > 1000, path
    fits = pd.read_csv(sweep / "fits.csv")
    assert analysis.FITS_COLUMNS[:11] == list(fits.columns[:11])
    laws = pd.read_csv(sweep / "power_laws.csv")
    assert list(laws.columns[:7]) == [
        "curve",
        "quantity",
        "exponent",
        "coefficient",
        "exponent_lo",
        "exponent_hi",
        "n_budgets",
    ]
    for table in (pd.read_csv(sweep / "results.csv"), pd.read_parquet(sweep / "results.parquet")):
        # 2 variants x 3 budgets x 5 sizes + 3 unbracketed; not the failed, interrupted or summary-less runs
        assert len(table) == 33
        assert {
            "run_id",
            "variant",
            "budget",
            "params",
            "tokens",
            "val_loss",
            "forward_flops_per_token",
        } <= set(table)
        assert (
            not table["run_id"].isin(["baseline-failed", "baseline-interrupted", "baseline-nosummary"]).any()
        )
    assert (sweep / "summary.txt").read_text() == result.summary


def test_sweep_fits_and_bracketing(result: analysis.AnalysisResult) -> None:
    fits = result.fits.set_index(["variant", "budget"])
    # The 3e12 baseline runs all sit 0.8-1.4 decades below the optimum: the minimum is not bracketed.
    assert not fits.loc[("baseline", 3e12), "bracketed"]
    assert fits.loc[("baseline", 3e12), "reason"] == "lowest loss at the largest size"
    assert fits.loc[("baseline", 3e12), "bound"] == "above" and math.isnan(
        fits.loc[("baseline", 3e12), "n_opt"]
    )
    assert fits.drop(("baseline", 3e12))["bracketed"].all()
    for (variant, budget), row in fits.drop(("baseline", 3e12)).iterrows():
        true_n = sweep_optimum(budget, variant != "baseline")
        assert abs(math.log10(row["n_opt"] / true_n)) < 0.1, (variant, budget)
        assert row["n_opt_lo"] <= row["n_opt_hi"] and row["loss_opt_lo"] <= row["loss_opt_hi"]
    for budget in (1e11, 3e11, 1e12):  # MoD's optimum lies at larger models, as built into the fixture
        assert fits.loc[(MOD_VARIANT, budget), "n_opt"] > 1.3 * fits.loc[("baseline", budget), "n_opt"]

    laws = result.power_laws
    assert _law(laws, "baseline", "n_opt")["n_budgets"] == 3  # the unbracketed budget is left out
    for variant in ("baseline", MOD_VARIANT):
        law = _law(laws, variant, "n_opt")
        assert law["exponent"] == pytest.approx(A_OPT, abs=0.05)  # 0.2% loss noise, 3 budgets, 5 sizes
        assert law["interval"].startswith("weighted least squares over the 3 budgets' optimum intervals")
        assert law["exponent_lo"] < law["exponent"] < law["exponent_hi"]
    assert set(result.approach3["curve"]) == {"baseline", MOD_VARIANT}


def test_summary_names_variants_and_differences(result: analysis.AnalysisResult) -> None:
    text = result.summary
    assert "baseline" in text and MOD_VARIANT in text
    assert "1 failed" in text and "1 interrupted" in text and "baseline-nosummary" in text
    assert "optimum not located" in text and "N* > " in text and "Approach 3" in text
    assert (
        text.index("Verdict on the causal loss")
        < text.index("On the top-k loss")
        < text.index("Per budget, on the causal loss")
        < text.index("isoFLOP optima")
        < text.index("How to read this")
    )
    assert "MoD 12.5%, every 2nd block vs baseline: m = " in text.splitlines()[1]
    points = result.points[result.points["budget"] == 1e12]
    best = points.groupby("curve")["loss"].min()
    assert f"{best[MOD_VARIANT] - best['baseline']:+.4f} vs baseline" in text
    assert "top-k" in text and "causal" in text


def test_load_or_analyze_reads_back_tables(result: analysis.AnalysisResult, sweep: Path) -> None:
    loaded = analysis.load_or_analyze(sweep)
    assert loaded.summary == result.summary
    pd.testing.assert_frame_equal(loaded.fits, result.fits, check_dtype=False)
    assert len(loaded.results) == len(result.results)


def test_damaged_runs_degrade_gracefully(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, budgets=(1e11, 1e12), unbracketed_budget=None)
    runs = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    with (runs[0] / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 9')  # torn last line of a killed run
    (runs[1] / "routing_sample.json").unlink(missing_ok=True)
    summary = json.loads((runs[2] / "summary.json").read_text())
    (runs[2] / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "params"}))
    for i, run in enumerate(runs[3:5]):  # one key, two types: must still go to parquet
        data = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**data, "note": 3 if i else "text"}))

    res = analysis.analyze(sweep, figures=False)
    assert f"{runs[2].name}: summary.json lacks a usable params" in res.summary
    assert "1 unreadable line(s)" in res.summary
    assert (
        len(pd.read_parquet(sweep / "results.parquet")) == len(res.results) == 19
    )  # 20 runs, one without params


def test_runs_no_sweep_planned_stay_out_of_the_fits(tmp_path: Path) -> None:
    """A `modexp train` into a sweep's folder (other batch size, other data) must not bend its isoFLOP curves."""
    sweep = make_sweep(tmp_path, budgets=(1e11, 1e12), unbracketed_budget=None)
    done = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    stray = done[0]
    plan = json.loads((sweep / "plan.json").read_text())
    (sweep / "plan.json").write_text(json.dumps({**plan, "planned_ids": done[1:]}))
    res = analysis.analyze(sweep, figures=False)
    assert stray not in set(res.results["run_id"]) and len(res.results) == len(done) - 1
    assert "1 done run no sweep planned into this folder left out" in res.summary and stray in res.summary
    # A folder with no sweep's plan (runs from `modexp train` only) is analysed whole.
    (sweep / "plan.json").unlink()
    assert len(analysis.analyze(sweep, figures=False).results) == len(done)


# ------------------------------------------------------------------ errors: one line naming the thing


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_table(tmp_path: Path) -> None:
    with pytest.raises(ModexpError) as err:
        analysis.analyze(table=tmp_path / "nope.csv", out=tmp_path / "out")
    assert "nope.csv" in _one_line(err) and "does not exist" in str(err.value)


def test_table_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"variant": ["baseline"], "budget": [1e18], "params": [1e8], "tokens": [1e9], "flops": [1e18]}
    ).to_csv(path, index=False)
    with pytest.raises(ModexpError) as err:
        analysis.analyze(table=path, out=tmp_path / "out")
    assert "val_loss" in _one_line(err) and "t.csv" in str(err.value)


def test_table_non_numeric_value(tmp_path: Path) -> None:
    path = chinchilla_table(tmp_path / "t.csv", budgets=(1e18, 1e19), n_sizes=3)
    table = pd.read_csv(path)
    table["params"] = table["params"].astype(object)
    table.loc[2, "params"] = "big"
    table.to_csv(path, index=False)
    with pytest.raises(ModexpError) as err:
        analysis.load_table(path)
    assert "column params line 4" in _one_line(err) and "'big'" in str(err.value)


def test_unreadable_table(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"")
    with pytest.raises(ModexpError) as err:
        analysis.load_table(path)
    assert "t.csv" in _one_line(err)


def test_empty_or_missing_sweep_dir(tmp_path: Path) -> None:
    with pytest.raises(ModexpError) as err:
        analysis.analyze(tmp_path)
    assert str(tmp_path) in _one_line(err) and "no finished runs" in str(err.value)
    with pytest.raises(ModexpError) as err:
        analysis.analyze(tmp_path / "missing")
    assert "does not exist" in _one_line(err)
    with pytest.raises(ModexpError):
        analysis.analyze(tmp_path, table=tmp_path / "t.csv")


def test_resolve_sweep_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(analysis.SWEEP_ENV, raising=False)
    runs = tmp_path / "runs"
    old, new = make_sweep(runs, name="old", budgets=(1e11,), unbracketed_budget=None), runs / "new"
    for path in old.glob("*/summary.json"):  # an older sweep, whatever the file system's time resolution
        os.utime(path, (1e9, 1e9))
    make_sweep(runs, name="_data", budgets=(1e11,), unbracketed_budget=None)
    with pytest.raises(ModexpError):
        analysis.resolve_sweep_dir(runs_dir=runs / "empty")
    make_sweep(runs, name="new", budgets=(1e11,), unbracketed_budget=None)
    (runs / "_data" / "baseline-failed" / "summary.json").write_text("{}")  # newest file, but in _data
    assert analysis.resolve_sweep_dir(runs_dir=runs) == new
    monkeypatch.setenv(analysis.SWEEP_ENV, str(old))
    assert analysis.resolve_sweep_dir(runs_dir=runs) == old
