"""What a study's analysis may and may not conclude: bracketing, pooling, learning rates, seeds, the verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_results import ALPHA, BETA, make_sweep, optimal_params
from scipy.interpolate import PchipInterpolator

from modexp import analysis
from modexp.analysis import optimum
from modexp.errors import ModexpError

LAW = {"e": 1.3, "a": 25.0, "b": 25.0}
MOD = "mod_c0.125_e2"


def law_loss(params, tokens):
    return (
        LAW["e"]
        + LAW["a"] / np.asarray(params, float) ** ALPHA
        + LAW["b"] / np.asarray(tokens, float) ** BETA
    )


def isoflop_rows(
    variant: str, budget: float, shift: float = 1.0, n_sizes: int = 7, span: float = 0.6
) -> list[dict]:
    """A variant whose isoFLOP curve at C is the law's curve at shift * C: it needs 1/shift of the compute."""
    centre = optimal_params(shift * budget, 1.0, LAW["a"], LAW["b"])
    rows = []
    for params in centre * 10 ** np.linspace(-span, span, n_sizes):
        tokens = shift * budget / (6 * params)
        rows.append(
            {
                "variant": variant,
                "budget": budget,
                "params": params,
                "tokens": tokens,
                "flops": budget,
                "val_loss": float(law_loss(params, tokens)),
            }
        )
    return rows


def with_seeds(rows: list[dict], seeds: int, noise: float, rng) -> list[dict]:
    return [
        {**r, "seed": s, "val_loss": r["val_loss"] + noise * rng.standard_normal()}
        for r in rows
        for s in range(seeds)
    ]


# ------------------------------------------------------------------ bracketing


def test_a_curve_rising_from_its_smallest_size_is_a_bound(tmp_path: Path) -> None:
    rows = []
    for budget in (1e18, 1e19):
        for params in np.geomspace(2e8, 2e9, 6) * (budget / 1e18) ** 0.5:
            rows.append(
                {
                    "variant": "baseline",
                    "budget": budget,
                    "params": params,
                    "tokens": budget / (6 * params),
                    "flops": budget,
                    "val_loss": 2.0 + 0.1 * math.log10(params / 1e8),
                }
            )
    path = tmp_path / "rising.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = analysis.analyze(table=path, out=tmp_path / "out")
    for fit in result.fits.itertuples():
        assert not fit.bracketed and fit.bound == "below" and math.isnan(fit.n_opt)
        assert fit.reason == "lowest loss at the smallest size"
        assert fit.n_opt_lo < fit.params_min  # the interval is not clamped to the sampled sizes
        # Unimodal and lowest at the smallest size: the optimum lies below the second-smallest size.
        assert fit.bound_params > fit.params_min and f"N* < {analysis_si(fit.bound_params)}" in result.summary
    assert result.power_laws.empty and "no power law: 0 bracketed" in result.summary
    assert "isoflop" in result.figures


def analysis_si(value: float) -> str:
    from modexp.units import si

    return si(value)


def test_bootstrap_minimum_beyond_the_sizes_is_not_clamped() -> None:
    x = np.log10(np.array([1e4, 2e4, 4e4, 8e4]))
    y = (x - np.log10(2e5)) ** 2  # falling all the way: the vertex lies 0.4 decades past the largest
    found = optimum.locate(x, y[None, :], np.ones_like(x))
    assert found["x_min"][0] == pytest.approx(np.log10(2e5)) and not found["interior"][0]
    concave = optimum.locate(x, -((x - 4.5) ** 2)[None, :], np.ones_like(x))
    assert np.isnan(concave["x_min"][0]) and not concave["interior"][0]  # no minimum: falls on past an edge


# ------------------------------------------------------------------ hyperparameters: seeds, LRs, refusals


def lr_seed_table(rng) -> pd.DataFrame:
    """Two LRs and two seeds per point; the better LR's penalty is zero, the other's 0.05 nats."""
    rows = []
    for variant, shift in (("baseline", 1.0), (MOD, 1.3)):
        for budget in (1e17, 1e18, 1e19):
            for point in isoflop_rows(variant, budget, shift):
                good = 3e-3 if point["params"] < optimal_params(budget, 1.0, LAW["a"], LAW["b"]) else 1e-3
                for lr in (1e-3, 3e-3):
                    for seed in (0, 1):
                        loss = point["val_loss"] + (0 if lr == good else 0.05) + 0.004 * rng.standard_normal()
                        rows.append({**point, "lr": lr, "seed": seed, "val_loss": loss})
    return pd.DataFrame(rows)


def test_two_lrs_and_two_seeds_reduce_to_one_curve_per_variant(tmp_path: Path) -> None:
    runs = lr_seed_table(np.random.default_rng(0))
    path = tmp_path / "grid.csv"
    runs.to_csv(path, index=False)
    result = analysis.analyze(table=path, out=tmp_path / "out")
    assert sorted(result.fits["curve"].unique()) == ["baseline", MOD]
    assert len(result.points) == len(runs) / 4 and (result.points["n_seeds"] == 2).all()
    for point in result.points.itertuples():
        runs_here = runs[
            (runs["variant"] == point.variant)
            & (runs["budget"] == point.budget)
            & np.isclose(runs["params"], point.params)
        ]
        means = runs_here.groupby("lr")["val_loss"].mean()
        assert point.lr == means.idxmin() and point.loss == pytest.approx(means.min())
        assert point.lr_edge  # two LRs: the best is always at an edge of the grid
        assert point.loss_std == pytest.approx(runs_here[runs_here["lr"] == point.lr]["val_loss"].std())
    assert result.fits["bracketed"].all() and (result.fits["lr_edge_points"] == 7).all()
    assert "LR-unbracketed" in result.summary and "2 seeds" in result.summary
    assert (result.fits["n_runs"] == 28).all()


def test_a_third_lr_brackets_points_and_refines_lr_star() -> None:
    rows = []
    for params in (1e5, 2e5, 4e5, 8e5):
        best = 0.01 * (params / 1e5) ** -0.5
        for lr in (1e-3, 3e-3, 1e-2, 3e-2):
            rows.append(
                {
                    "variant": "baseline",
                    "budget": 1e15,
                    "params": params,
                    "tokens": 1e9,
                    "flops": 1e15,
                    "lr": lr,
                    "val_loss": 3.0 + 0.1 * math.log(lr / best) ** 2,
                }
            )
    points = analysis.reduce_points(pd.DataFrame(rows), "topk").table
    inside = points[~points["lr_edge"]]
    assert len(inside) >= 3
    for point in inside.itertuples():
        assert point.lr_star == pytest.approx(0.01 * (point.params / 1e5) ** -0.5, rel=1e-6)
    law = analysis.fit_lr_laws(analysis.lrlaw.grid_points(points)).iloc[0]
    assert law["exponent"] == pytest.approx(-0.5, abs=1e-6) and law[
        "coefficient"
    ] * 1e5**-0.5 == pytest.approx(0.01)


def test_runs_differing_in_another_setting_are_refused_or_split(tmp_path: Path) -> None:
    rows = [
        {**r, "beta2": beta2, "val_loss": r["val_loss"] + (0.01 if beta2 == 0.99 else 0)}
        for budget in (1e17, 1e18)
        for r in isoflop_rows("baseline", budget)
        for beta2 in (0.95, 0.99)
    ]
    path = tmp_path / "beta2.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    # A recorded setting that differs within a variant splits it into labelled curves, and says so: never pooled.
    split = analysis.analyze(table=path, out=tmp_path / "auto", n_boot=20)
    assert sorted(split.fits["curve"].unique()) == ["baseline [beta2=0.95]", "baseline [beta2=0.99]"]
    assert "beta2" in split.summary
    result = analysis.analyze(table=path, out=tmp_path / "out", split_by=("beta2",))
    assert sorted(result.fits["curve"].unique()) == ["baseline [beta2=0.95]", "baseline [beta2=0.99]"]


def test_twin_runs_without_a_distinguishing_column_are_refused() -> None:
    rows = isoflop_rows("baseline", 1e17)
    with pytest.raises(ModexpError, match="share curve, budget, size, learning rate and seed"):
        analysis.reduce_points(pd.DataFrame(rows + rows), "topk")


# ------------------------------------------------------------------ the verdict


def test_compute_multiplier_interpolates_and_marks_extrapolation() -> None:
    log_c, loss = np.array([11.0, 12.0, 13.0]), np.array([3.0, 2.5, 2.2])
    m, extrapolated = analysis.compute_multiplier(log_c[:2], loss[:2], 11.0, 2.75)  # two budgets: a line
    assert m == pytest.approx(10**0.5) and not extrapolated
    m, extrapolated = analysis.compute_multiplier(log_c, loss, 11.0, 2.75)  # three: a monotone cubic
    assert PchipInterpolator(log_c, loss)(11.0 + math.log10(m)) == pytest.approx(2.75, abs=1e-4)
    assert 1 < m < 10 and not extrapolated
    m, extrapolated = analysis.compute_multiplier(log_c, loss, 13.0, 2.05)  # past the last: the end segment
    assert m == pytest.approx(10**0.5) and extrapolated
    # A reference that got worse with compute is read as its running minimum; one budget is no curve.
    assert analysis.compute_multiplier(log_c, np.array([3.0, 3.2, 2.2]), 11.0, 2.6)[0] > 1
    assert math.isnan(analysis.compute_multiplier(log_c[:1], loss[:1], 11.0, 2.9)[0])


@pytest.mark.parametrize("shift", [1.3, 0.8])
def test_verdict_recovers_a_known_compute_multiplier(tmp_path: Path, shift: float) -> None:
    """MoD's curve at C is the baseline's at shift * C: the baseline needs `shift` times the compute."""
    rng = np.random.default_rng(1)
    budgets = (1e11, 3e11, 1e12, 3e12, 1e13)  # CPU-study scale: L* falls ~0.05 nats per budget step
    rows = [r for b in budgets for r in isoflop_rows("baseline", b)]
    rows += [r for b in budgets for r in isoflop_rows(MOD, b, shift)]
    path = tmp_path / "shifted.csv"
    pd.DataFrame(with_seeds(rows, 3, 0.002, rng)).to_csv(path, index=False)  # seed noise of ~0.1%
    result = analysis.analyze(table=path, out=tmp_path / "out", figures=False)
    verdict = result.verdict.set_index("budget")
    inside = verdict[~verdict["extrapolated"]]
    assert len(inside) >= 3
    missed = 0
    for budget, row in inside.iterrows():
        assert row["multiplier"] == pytest.approx(shift, rel=0.05), budget
        missed += not row["multiplier_lo"] <= shift <= row["multiplier_hi"]  # 90% intervals: one may miss
        assert (row["delta_loss"] < 0) == (shift > 1)
    assert missed <= 1
    overall = result.verdict_overall.iloc[0]
    assert overall["multiplier"] == pytest.approx(shift, rel=0.05)
    assert (tmp_path / "out" / "verdict.csv").is_file() and "m = " in result.summary


def test_random_control_is_a_second_reference(tmp_path: Path) -> None:
    rows = [r for b in (1e17, 1e18, 1e19) for r in isoflop_rows("baseline", b)]
    rows += [r for b in (1e17, 1e18, 1e19) for r in isoflop_rows(MOD, b, 1.3)]
    rows += [r for b in (1e17, 1e18, 1e19) for r in isoflop_rows("random_c0.125_e2", b, 0.7)]
    path = tmp_path / "controls.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = analysis.analyze(table=path, out=tmp_path / "out", figures=False)
    pairs = set(zip(result.verdict_overall["curve"], result.verdict_overall["reference"]))
    assert pairs == {(MOD, "baseline"), ("random_c0.125_e2", "baseline"), (MOD, "random_c0.125_e2")}
    assert "MoD 12.5%, every 2nd block vs MoD 12.5%, every 2nd block, random routing: m = " in result.summary


# ------------------------------------------------------------------ both losses


def test_fits_on_both_losses_and_a_switch(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, budgets=(1e11, 3e11, 1e12), unbracketed_budget=None)
    causal = analysis.analyze(sweep, figures=False)
    fits = pd.read_csv(sweep / "fits.csv")
    assert set(fits["loss"]) == {"causal", "topk"} and causal.loss == "causal"
    assert "fits and figures use the causal loss" in causal.summary
    topk = analysis.analyze(sweep, figures=False, loss="topk")
    assert topk.loss == "topk" and "fits and figures use the topk loss" in topk.summary
    mod_c, mod_t = (r.fits[r.fits["curve"] == MOD]["loss_opt"].to_numpy() for r in (causal, topk))
    assert (mod_c > mod_t).all()  # the fixture's causal loss is 0.4% above its top-k loss
    with pytest.raises(ModexpError, match="loss=nll is not allowed"):
        analysis.analyze(sweep, figures=False, loss="nll")


def test_runs_from_before_hyperparameters_were_recorded_read_them_from_config(tmp_path: Path) -> None:
    """Old summaries lack lr and seed: a comma sweep of train.lr must still be reduced, not pooled or refused."""
    import json
    import shutil

    import yaml

    sweep = make_sweep(tmp_path, budgets=(1e11, 3e11), unbracketed_budget=None)
    done = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    for run in done:
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "train": {"lr": 1e-3, "beta2": 0.95}}))
    twin = sweep / f"{done[0].name}-lr3e-3"
    shutil.copytree(done[0], twin)
    (twin / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "train": {"lr": 3e-3, "beta2": 0.95}}))
    summary = json.loads((twin / "summary.json").read_text())
    (twin / "summary.json").write_text(json.dumps({**summary, "val_loss": summary["val_loss"] - 0.01}))
    (sweep / "plan.json").unlink()  # no planned_ids: every run folder belongs to the study
    result = analysis.analyze(sweep, figures=False, loss="topk")
    point = result.points[result.points["n_lrs"] == 2]
    assert len(point) == 1 and point["lr"].iloc[0] == 3e-3 and bool(point["lr_edge"].iloc[0])
    assert "predate hyperparameters in summary.json" in result.summary


def test_one_seed_and_four_sizes_still_get_an_interval_three_sizes_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = [
        r
        for b in (1e11, 3e11, 1e12)
        for v, s in (("baseline", 1.0), (MOD, 1.3))
        for r in isoflop_rows(v, b, s, 4)
    ]
    rows = [{**r, "val_loss": r["val_loss"] + 0.003 * rng.standard_normal()} for r in rows]
    four = analysis.analyze(table=_csv(tmp_path / "four.csv", rows), out=tmp_path / "o4", figures=False)
    assert (four.fits["loss_opt_lo"] < four.fits["loss_opt_hi"]).all()  # residuals resampled: not zero width
    three_rows = [
        r for b in (1e11, 3e11) for v, s in (("baseline", 1.0), (MOD, 1.3)) for r in isoflop_rows(v, b, s, 3)
    ]
    three = analysis.analyze(
        table=_csv(tmp_path / "three.csv", three_rows), out=tmp_path / "o3", figures=False
    )
    assert three.fits["n_opt_lo"].isna().all() and three.verdict["multiplier_lo"].isna().all()
    assert "[n/a]" in three.summary


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_an_optimum_that_is_only_a_bound_makes_m_a_bound(tmp_path: Path) -> None:
    rows = [r for b in (1e11, 3e11, 1e12) for r in isoflop_rows("baseline", b)]
    # MoD sampled only above its optimum: lowest at its smallest size, so its L* is an upper bound, m a lower one.
    rows += [
        r
        for b in (1e11, 3e11, 1e12)
        for r in isoflop_rows(MOD, b, 1.3)
        if r["params"] > optimal_params(1.3 * b, 1.0, 25, 25)
    ]
    result = analysis.analyze(table=_csv(tmp_path / "t.csv", rows), out=tmp_path / "o", figures=False)
    inside = result.verdict[~result.verdict["extrapolated"]]
    assert (inside["bound"] == "variant").all() and (inside["multiplier_bound"] == ">=").all()
    assert (inside["multiplier"] <= 1.3 * 1.02).all() and "m >= " in result.summary


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"optimizer": ["adamw", "sgd"]}, "optimizer differs within one point"),
        ({"tokens": [1.0, 2.0]}, "tokens differs within one point"),
        ({"lr": [1e-3, None]}, "column lr has nothing"),
        ({"lr": [1e-3, "abc"]}, "column lr has 'abc'"),
        ({"seed": [0, None]}, "column seed is empty"),
    ],
)
def test_columns_that_would_pool_silently_or_crash_are_one_line(change: dict, says: str) -> None:
    runs = pd.DataFrame([{**r, "seed": s} for r in isoflop_rows("baseline", 1e17) for s in (0, 1)])
    for column, (first, second) in change.items():
        if column == "tokens":
            runs[column] = runs[column] * np.where(runs["seed"] == 0, first, second)
        else:
            runs[column] = pd.Series([first if seed == 0 else second for seed in runs["seed"]], dtype=object)
    with pytest.raises(ModexpError, match=says) as err:
        analysis.reduce_points(runs, "topk")
    assert "\n" not in str(err.value)


def test_an_unknown_numeric_column_that_differs_is_named_in_a_note() -> None:
    runs = pd.DataFrame(
        [{**r, "seed": s, "dropout": 0.1 * s} for r in isoflop_rows("baseline", 1e17) for s in (0, 1)]
    )
    assert any(
        "dropout" in note and "--split-by" in note for note in analysis.reduce_points(runs, "topk").notes
    )


def test_replicate_cubics_grouped_match_one_cubic_per_replicate() -> None:
    """_cubic_reps fits replicates that share budgets together; each must read as on its own cubic, including
    non-monotone replicates, a nan replicate loss and losses outside the curve (straight end segments)."""
    from types import SimpleNamespace

    from modexp.analysis import verdict as v

    rng = np.random.default_rng(0)
    for _ in range(60):
        n, b = int(rng.integers(2, 6)), int(rng.integers(1, 40))
        xs = rng.permutation(np.linspace(11, 12.5, n))
        reps = np.linspace(2.2, 1.6, n)[np.argsort(np.argsort(xs))][:, None] + rng.normal(0, 0.08, (n, b))
        reps[rng.integers(n), rng.integers(b)] = np.nan if rng.random() < 0.3 else reps[0, 0]
        losses = rng.uniform(1.4, 2.4, b)
        losses[0] = np.nan if rng.random() < 0.2 else losses[0]
        one_by_one = np.full(b, np.nan)
        for j, loss in enumerate(losses):
            x, y = v._monotone(xs, reps[:, j])
            if x.size >= 2 and math.isfinite(loss) and np.isfinite(y).all():
                one_by_one[j] = v._cubic_log_c(x, y, loss)
        grouped = v._cubic_reps(SimpleNamespace(xs=xs, reps=reps), losses)
        np.testing.assert_array_equal(grouped, one_by_one)
