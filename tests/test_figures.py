"""Figures: readable variant labels, PDF and a chosen size on request, colours visible on white, titles."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from fixtures_results import chinchilla_table, make_sweep
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from modexp import analysis
from modexp.analysis import figures
from modexp.analysis.notebook import compare_verdicts
from modexp.errors import ModexpError
from modexp.plan import variant_name
from modexp.variants import model_config

# ------------------------------------------------------------------ labels

ROUTINGS = ("none", "topk", "random")
WEIGHTS = {"sigmoid": "", "linear": "linear router weight"}
CAUSAL = {"predictor": "", "aux_loss": "aux-loss causal router", "none": "no causal router"}


@pytest.mark.parametrize(
    ("variant", "label"),
    [
        ("baseline", "baseline"),
        ("mod_c0.125_e2", "MoD 12.5%, every 2nd block"),
        ("random_c0.125_e2", "MoD 12.5%, every 2nd block, random routing"),
        ("mod_c0.5_e1", "MoD 50%, every block"),
        ("mod_c1_e3", "MoD 100%, every 3rd block"),
        ("mod_c0.25_e4_lin", "MoD 25%, every 4th block, linear router weight"),
        ("mod_c0.125_e2_aux", "MoD 12.5%, every 2nd block, aux-loss causal router"),
        ("mod_c0.125_e2_nocausal", "MoD 12.5%, every 2nd block, no causal router"),
        (
            "mod_c0.125_e12_lin_aux",
            "MoD 12.5%, every 12th block, linear router weight, aux-loss causal router",
        ),
        ("mod_c0.125_e2 [beta2=0.95]", "MoD 12.5%, every 2nd block [beta2=0.95]"),
        ("baseline [beta2=0.95]", "baseline [beta2=0.95]"),
    ],
)
def test_variant_label(variant: str, label: str) -> None:
    assert figures.variant_label(variant) == label


def test_every_name_variant_name_makes_gets_its_own_readable_label() -> None:
    """All forms of modexp.plan.variant_name: routing x capacity x interval x router weight x causal router."""
    labels = {}
    for routing, capacity, every, weight, causal in itertools.product(
        ROUTINGS, (0.125, 0.5, 1.0, 1e-3), (1, 2, 3, 4, 11, 21), WEIGHTS, CAUSAL
    ):
        model = model_config(
            n_layers=24,
            routing=routing,
            capacity=capacity,
            route_every=every,
            router_weight=weight,
            causal_router=causal,
        )
        name = variant_name(model)
        label = figures.variant_label(name)
        labels.setdefault(label, set()).add(name)
        if routing == "none":
            assert label == "baseline"
            continue
        assert "_" not in label, (name, label)
        assert label.startswith(f"MoD {100 * capacity:g}%, ")
        ordinal = {1: "every block", 2: "every 2nd block", 3: "every 3rd block", 4: "every 4th block"}
        assert {**ordinal, 11: "every 11th block", 21: "every 21st block"}[every] in label
        if routing == "random":
            assert label.endswith(", random routing")
            assert "router weight" not in label and "causal" not in label
        else:
            assert "random" not in label
            for word in filter(None, (WEIGHTS[weight], CAUSAL[causal])):
                assert word in label, (name, label)
    assert all(len(names) == 1 for names in labels.values()), "two variants share a label"


@pytest.mark.parametrize(
    "variant",
    ["mod", "llama-7b", "mod_c0.125", "mod_cX_e2", "mod_c0.125_e2_foo", "random_c0.125_e2_lin", "mod_c2_e2"],
)
def test_unknown_variant_ids_are_shown_as_they_are(variant: str) -> None:
    assert figures.variant_label(variant) == variant


# ------------------------------------------------------------------ colours


def _luminance(colour) -> float:
    """WCAG relative luminance of an sRGB colour."""
    rgb = np.asarray(to_rgb(colour))
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def _contrast_on_white(colour) -> float:
    return 1.05 / (_luminance(colour) + 0.05)


@pytest.mark.parametrize("n_budgets", [2, 3, 5, 8])
def test_every_budget_colour_is_visible_on_white(n_budgets: int) -> None:
    """WCAG's 3:1 for graphics; the old lightest colour (viridis at 0.85, yellow-green) had 1.6:1."""
    colours = figures.budget_colours(np.geomspace(1e11, 1e13, n_budgets))
    assert min(_contrast_on_white(c) for c in colours.values()) >= 3.0
    assert max(_luminance(c) for c in colours.values()) < 0.3
    assert len({tuple(np.round(c, 3)) for c in colours.values()}) == n_budgets


def test_every_variant_colour_is_visible_on_white() -> None:
    styles = figures.variant_styles([f"mod_c0.125_e{i}" for i in range(1, 12)] + ["baseline"])
    assert min(_contrast_on_white(s["colour"]) for s in styles.values()) >= 3.0


# ------------------------------------------------------------------ files: format and size


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A two-variant external table: baseline and MoD (the same law, MoD needing less compute)."""
    path = chinchilla_table(tmp_path_factory.mktemp("fig") / "t.csv", budgets=(1e18, 1e19, 1e20))
    import pandas as pd

    df = pd.read_csv(path)
    mod = df.assign(variant="mod_c0.125_e2", val_loss=df["val_loss"] - 0.01)
    pd.concat([df, mod]).to_csv(path, index=False)
    return path


def _pdf_size_inches(path: Path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*\]", path.read_bytes())
    assert box, f"{path} has no MediaBox"
    x0, y0, x1, y1 = map(float, box.groups())
    return (x1 - x0) / 72, (y1 - y0) / 72


def test_analyze_writes_pdf_at_the_size_asked(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "pdf"
    result = analysis.analyze(table=table, out=out, n_boot=50, figure_formats="pdf", figure_size=(6, 4))
    assert set(result.figures) >= {"isoflop", "verdict"}
    for name, path in result.figures.items():
        assert path == out / f"{name}.pdf" and path.read_bytes().startswith(b"%PDF")
        assert not (out / f"{name}.png").exists() and not (out / f"{name}.svg").exists()
        assert _pdf_size_inches(path) == pytest.approx((6, 4), abs=0.01)
    assert f"figures (PDF) in {out}" in result.summary


def test_png_size_is_honoured_and_default_is_png_and_svg(table: Path, tmp_path: Path) -> None:
    sized = analysis.analyze(
        table=table, out=tmp_path / "sized", n_boot=50, figure_formats=("png", "pdf"), figure_size="5x3.5"
    )
    png = imread(sized.figures["isoflop"])
    assert png.shape[:2] == (round(3.5 * 150), 5 * 150)  # rows, columns at 150 dpi
    assert (tmp_path / "sized" / "isoflop.pdf").is_file()
    default = analysis.analyze(table=table, out=tmp_path / "default", n_boot=50)
    assert default.figures["isoflop"] == tmp_path / "default" / "isoflop.png"
    assert (tmp_path / "default" / "isoflop.svg").is_file()
    assert not (tmp_path / "default" / "isoflop.pdf").exists()
    assert "figures (PNG + SVG)" in default.summary


@pytest.mark.parametrize(
    ("formats", "size", "message"),
    [
        ("jpeg", None, "figure format jpeg"),
        ("", None, "figure format (none)"),
        ("pdf", "6", "figure size 6"),
        ("pdf", "6x0", "figure size 6x0"),
        ("pdf", "axb", "figure size axb"),
        ("pdf", (6, -4), "figure size 6x-4"),
    ],
)
def test_bad_figure_options_fail_before_anything_is_written(
    table: Path, tmp_path: Path, formats, size, message: str
) -> None:
    with pytest.raises(ModexpError, match=re.escape(message)):
        analysis.analyze(table=table, out=tmp_path / "out", figure_formats=formats, figure_size=size)
    assert not (tmp_path / "out").exists()


def test_figure_options_normalise() -> None:
    assert figures.figure_options(None, None) == (("png", "svg"), None)
    assert figures.figure_options("PDF, png", "6X4") == (("pdf", "png"), (6.0, 4.0))
    assert figures.figure_options(["svg", ".pdf"], [3, 2.5]) == (("svg", "pdf"), (3.0, 2.5))


# ------------------------------------------------------------------ the registry


def test_analyze_draws_what_the_registry_lists(table: Path, tmp_path: Path, monkeypatch) -> None:
    """A new figure is a FigureSpec in figures.FIGURES: analyze draws it, or names why it skipped it."""
    from matplotlib.figure import Figure

    def draw(data: figures.FigureData) -> Figure:
        fig = Figure(figsize=(3, 2))
        fig.add_subplot().plot(data.points["params"], data.points["loss"], "o")
        return fig

    extra = [
        figures.FigureSpec("toy", lambda data: None, draw),
        figures.FigureSpec("toy_skipped", lambda data: "nothing to show", draw),
    ]
    monkeypatch.setattr(figures, "FIGURES", (*figures.FIGURES, *extra))
    result = analysis.analyze(table=table, out=tmp_path / "out", n_boot=20, figure_formats="png")
    assert list(result.figures)[-1] == "toy" and (tmp_path / "out" / "toy.png").is_file()
    assert "figure toy_skipped.png skipped: nothing to show" in result.summary
    assert not (tmp_path / "out" / "toy_skipped.png").exists()
    assert [f.name for f in figures.FIGURES[:9]] == [
        "isoflop",
        "optimal",
        "envelope",
        "verdict",
        "normalised",
        "lr_transfer",
        "learning_curves",
        "routing",
        "causal_acc",
    ]


def test_figures_drawn_by_workers_match_one_process_and_a_failure_is_a_note(
    table: Path, tmp_path: Path, monkeypatch
) -> None:
    """analyze draws figures in forked workers where it has two cores: the same files and notes as drawing
    them one by one, and a figure that raises costs only itself (a note naming it)."""
    from modexp.analysis.figures import render

    def broken(data: figures.FigureData):
        raise ValueError("no ink")

    monkeypatch.setattr(
        figures, "FIGURES", (*figures.FIGURES[:2], figures.FigureSpec("broken", lambda data: None, broken))
    )
    outcomes = {}
    for cores in (2, 1):
        monkeypatch.setattr(render, "usable_cores", lambda cores=cores: cores)
        out = tmp_path / f"cores{cores}"
        result = analysis.analyze(table=table, out=out, n_boot=20, figure_formats="png")
        outcomes[cores] = (sorted(p.name for p in out.glob("*.png")), list(result.figures))
        assert "figure broken.png failed: ValueError: no ink" in result.summary
    assert outcomes[2] == outcomes[1] == (["isoflop.png", "optimal.png"], ["isoflop", "optimal"])


# ------------------------------------------------------------------ what the figures say


@pytest.fixture(scope="module")
def sweep_result(tmp_path_factory) -> analysis.AnalysisResult:
    sweep_dir = make_sweep(tmp_path_factory.mktemp("fig-sweep"))
    return analysis.analyze(sweep_dir, n_boot=50, figures=False)


def test_figures_show_readable_labels_and_one_title_style(sweep_result) -> None:
    result = sweep_result
    metrics = analysis.load_metrics(result.sweep_dir, result.results["run_id"])
    drawn = {
        "isoflop": figures.isoflop_curves(result.points, result.fits),
        "optimal": figures.optimal_scaling(result.fits, result.power_laws),
        "verdict": figures.verdict(result.verdict),
        "normalised": figures.normalised(result.points, result.fits),
        "learning_curves": figures.learning_curves(metrics, result.results),
        "causal_acc": figures.causal_accuracy(metrics, result.results),
    }
    for name, fig in drawn.items():
        legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        legends += [t.get_text() for ax in fig.axes for a in ax.artists for t in getattr(a, "texts", [])]
        shown = " | ".join(legends)
        assert "mod_c0.125_e2" not in shown, (name, shown)
        assert "MoD 12.5%, every 2nd block" in shown, (name, shown)
        # One title per figure, at one size; panel titles smaller.
        assert fig._suptitle is not None and fig._suptitle.get_text(), name
        assert fig._suptitle.get_fontsize() == figures.TITLE_SIZE
        assert all(
            ax.title.get_fontsize() == figures.PANEL_TITLE_SIZE for ax in fig.axes if ax.get_title()
        ), name
    for name in ("isoflop", "optimal", "verdict", "normalised"):
        assert "causal routing loss" in drawn[name]._suptitle.get_text(), name
    assert "MoD 12.5%, every 2nd block vs baseline" in " ".join(
        t.get_text() for ax in drawn["verdict"].axes for t in ax.get_legend().get_texts()
    )


def test_compare_verdicts_labels_each_study_and_pair(sweep_result) -> None:
    other = sweep_result.verdict.assign(multiplier=sweep_result.verdict["multiplier"] * 1.5)
    fig = compare_verdicts(
        {"demo": sweep_result.verdict, "cpu": other},
        {"demo": sweep_result.verdict_overall, "cpu": sweep_result.verdict_overall},
    )
    left, right = fig.axes
    legends = [t.get_text() for a in [*left.artists, left.get_legend()] for t in a.get_texts()]
    assert {"demo", "cpu", "MoD 12.5%, every 2nd block vs baseline"} <= set(legends)
    assert [t.get_text() for t in right.get_yticklabels()] == ["demo", "cpu"]
    assert "MoD 12.5%, every 2nd block vs baseline" in [t.get_text() for t in right.texts]
    assert "demo vs cpu" in fig._suptitle.get_text()


# ------------------------------------------------------------------ layout and style (issue 26)


def _drawn_text(fig) -> list:
    """(text, its box in pixels) of every text the figure draws (ticks outside the view are not drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    drawn, original = [], Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Text, "draw", draw)
        FigureCanvasAgg(fig).draw()
    return drawn


def _layout_problems(fig) -> list[str]:
    boxes = _drawn_text(fig)
    width, height = fig.bbox.width, fig.bbox.height
    problems = [
        f"{text!r} leaves the canvas"
        for text, b in boxes
        if b.x0 < -1 or b.y0 < -1 or b.x1 > width + 1 or b.y1 > height + 1
    ]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if w > 1 and h > 1:
                problems.append(f"{a!r} overlaps {b!r}")
    return problems


@pytest.fixture(scope="module")
def figure_data(sweep_result) -> figures.FigureData:
    from modexp.analysis.lrlaw import grid_points
    from modexp.analysis.table import load_routing_sample, pick_routing_run

    result = sweep_result
    routing_run = pick_routing_run(result.results, result.sweep_dir)
    return figures.FigureData(
        results=result.results,
        points=result.points,
        fits=result.fits,
        power_laws=result.power_laws,
        verdict=result.verdict,
        lr_laws=result.lr_laws,
        grid=grid_points(result.points),
        metrics=analysis.load_metrics(result.sweep_dir, result.results["run_id"]),
        sample=load_routing_sample(result.sweep_dir / routing_run),
    )


@pytest.mark.parametrize("size", [None, (3.5, 2.6), (7, 4.5)], ids=["own", "column", "page"])
def test_no_text_overlaps_or_leaves_the_canvas(figure_data, size: tuple[float, float] | None) -> None:
    """At each figure's own size (what `modexp analyze` writes), a paper column's and a page's."""
    drawn = 0
    for spec in figures.FIGURES:
        if spec.skip(figure_data):
            continue
        with figures.styled():
            fig = spec.draw(figure_data)
            if size is not None:
                figures.style.resize(fig, size)
            assert _layout_problems(fig) == [], (spec.name, size)
        drawn += 1
    assert drawn >= 6


def test_learning_curves_over_less_than_a_decade_of_flops_keep_their_labels_apart(figure_data) -> None:
    """A branching study's runs log only their cooldown: every curve spans under a decade of FLOPs, where
    matplotlib labels minor ticks (2x10^10, 3x10^10, ...) that ran into each other in the demo's figure."""
    import dataclasses

    metrics = figure_data.metrics
    end = metrics.groupby("run_id")["flops"].transform("max")
    budgets = figure_data.results.set_index("run_id")["budget"]
    small = metrics["run_id"].map(budgets) <= sorted(budgets.unique())[1]  # the demo's span: under a decade
    narrow = dataclasses.replace(figure_data, metrics=metrics[(metrics["flops"] >= 0.8 * end) & small])
    for size in (None, (3.5, 2.6), (7, 4.5)):
        with figures.styled():
            fig = figures.learning_curves(narrow.metrics, narrow.results)
            if size is not None:
                figures.style.resize(fig, size)
            assert _layout_problems(fig) == [], size
            for ax in fig.axes[:4:2]:  # the FLOPs panels: labels 1e11, 2e11, 5e11, never minor ones
                labels = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
                assert labels == [], labels


def test_isoflop_marks_every_optimum_it_did_not_fit(sweep_result) -> None:
    """A star per located optimum; a triangle at the end for a bound; a downward triangle at the best point
    where the lowest run is interior but the parabola's vertex lies outside (L* is only at most that)."""
    fits = sweep_result.fits.copy()
    poor = fits.index[fits["bracketed"].astype(bool)][0]
    fits.loc[poor, ["bracketed", "bound"]] = [False, ""]
    fig = figures.isoflop_curves(sweep_result.points, fits)
    markers = [line.get_marker() for line in fig.axes[0].lines]
    unbracketed = fits[~fits["bracketed"].astype(bool)]
    assert markers.count("*") == int(fits["bracketed"].astype(bool).sum())
    assert markers.count("v") == int((unbracketed["bound"] == "").sum()) == 1
    assert markers.count("<") + markers.count(">") == int(unbracketed["bound"].isin(["below", "above"]).sum())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "optimum not located: L* at most" in labels


def test_one_style_whatever_the_users_matplotlibrc(sweep_result, tmp_path: Path) -> None:
    import matplotlib

    with matplotlib.rc_context({"pdf.fonttype": 3, "font.size": 30, "axes.facecolor": "black"}):
        fig = figures.verdict(sweep_result.verdict)
        path = figures.save(fig, tmp_path, "verdict", "pdf", (3.5, 2.6))
        assert matplotlib.rcParams["font.size"] == 30  # the user's settings are theirs again afterwards
    assert fig.axes[0].get_facecolor()[:3] == (1, 1, 1)
    pdf = path.read_bytes()
    assert b"/Type3" not in pdf and b"/CIDFontType2" in pdf  # fonttype 42: TrueType, no Type 3 fonts


def test_a_figure_saved_twice_at_two_sizes_is_laid_out_for_each(tmp_path: Path) -> None:
    """save lays a figure out once for all its formats, then gives its layout engine back: a notebook that
    saves the same figure at a column's and a page's width gets each laid out for its own size."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([1, 2], [3, 4])
    ax.set_title("a title long enough to need room " * 2)
    figures.save(fig, tmp_path, "column", "png", (3.5, 2.6))
    column = ax.get_position().bounds
    figures.save(fig, tmp_path, "page", "png", (7, 4.5))
    assert ax.get_position().bounds != column and fig.get_layout_engine() is not None
    assert imread(tmp_path / "page.png").shape[:2] == (round(4.5 * 150), 7 * 150)
