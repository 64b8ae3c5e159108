"""`modexp analyze`: runs -> points -> fits -> verdict -> files, figures and the summary."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from modexp import plugins as plugin_modules
from modexp.errors import ModexpError

from . import figure_pool
from .figure_options import figure_options
from .fits import (
    A3_COLUMNS,
    FITS_COLUMNS,
    N_BOOT,
    POWER_LAW_COLUMNS,
    SEED,
    fit_approach3,
    fit_isoflops,
    fit_power_laws,
)
from .isotime import read as read_time_verdict
from .isotime import speed_lines, time_verdict
from .lrlaw import fit_lr_laws, grid_points
from .points import DEFAULT_LOSS, LOSSES, loss_column, reduce_points
from .report import format_summary
from .table import (
    _load_metrics,
    _newest_summary_mtime,
    check_stems,
    load_routing_sample,
    load_table,
    pick_routing_run,
    scan_sweep,
)
from .verdict import OVERALL_COLUMNS, VERDICT_COLUMNS, compute_verdict

logger = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    summary: str
    results: pd.DataFrame  # one row per run
    points: pd.DataFrame  # one row per (curve, budget, size), under `loss`
    fits: pd.DataFrame  # under `loss`
    power_laws: pd.DataFrame
    approach3: pd.DataFrame
    verdict: pd.DataFrame  # by budget, under `loss`
    verdict_overall: pd.DataFrame
    loss: str
    out_dir: Path
    figure_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None
    lr_laws: pd.DataFrame | None = None
    verdict_time: pd.DataFrame | None = None  # the iso-time verdict (isotime.py)


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    # Parquet wants one type per column; a summary key that is a number in one run and text in another
    # (or null vs text) is written as text.
    out = df.copy()
    for column in [c for c in out.columns if pd.api.types.is_object_dtype(out[c])]:
        kinds = {
            type(v) for v in out[column] if v is not None and not (isinstance(v, float) and math.isnan(v))
        }
        if len(kinds) > 1:
            out[column] = out[column].map(lambda v: None if v is None else str(v))
    return out


def _write_results(df: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "results.csv", index=False)
    _arrow_safe(df).to_parquet(folder / "results.parquet", index=False)


def _lr_edge_notes(grid: pd.DataFrame) -> list[str]:
    edge = 0 if grid.empty else int(grid["lr_edge"].sum())
    if not edge:
        return []
    return [
        f"{edge} of {len(grid)} points have their best LR at the edge of the grid (LR-unbracketed): "
        "their loss is an upper bound; widen the grid there"
    ]


def _losses_available(df: pd.DataFrame) -> list[str]:
    has_causal = (
        loss_column("causal") in df
        and pd.to_numeric(df[loss_column("causal")], errors="coerce").notna().any()
    )
    return list(LOSSES) if has_causal else ["topk"]


def _lr_rules(df: pd.DataFrame) -> list[str]:
    if "lr_rule" not in df:
        return []
    rules = df.dropna(subset=["lr_rule"]).groupby("variant")["lr_rule"].unique()
    return [f"{variant}: {'; '.join(map(str, sorted(values)))}" for variant, values in rules.items()]


def _run_notes(df: pd.DataFrame) -> list[str]:
    """What the runs themselves say about the comparison: LRs outside their law's domain, repetition."""
    from modexp.repetition import epoch_spread_notes  # not modexp.plan: that loads Hydra

    notes = []
    if "lr_domain" in df:
        outside = df[df["lr_domain"].fillna("").astype(str) != ""]
        if not outside.empty:
            notes.append(
                f"{len(outside)} run(s) took their LR from a law outside the sizes it was fitted on "
                f"({', '.join(sorted(outside['variant'].astype(str).unique()))}; e.g. "
                f"{outside['lr_domain'].iloc[0]}): their LR is extrapolated"
            )
    if "epochs" in df:
        epochs = pd.to_numeric(df["epochs"], errors="coerce")
        notes += epoch_spread_notes(zip(df["variant"], df["budget"], epochs))
        if epochs.notna().any():
            notes.append(f"epochs over the training split: {epochs.min():.3g}-{epochs.max():.3g} per run")
    notes += _idle_causal_notes(df)
    return notes


def _idle_causal_notes(df: pd.DataFrame) -> list[str]:
    """Runs whose causal routing processed no token: their causal loss is that of a model skipping every
    routed block, so a verdict on it says nothing about routing (typical of the few steps of sweep=smoke)."""
    if "val_causal_frac" not in df:
        return []
    idle = df[pd.to_numeric(df["val_causal_frac"], errors="coerce") == 0]
    if idle.empty:
        return []
    return [
        f"WARNING: causal routing processed 0% of tokens in {len(idle)} run(s) (e.g. {idle['run_id'].iloc[0]}): "
        "their routers' causal predictors never fire, so the causal loss skips every routed block; train "
        "longer or read the verdict on --loss topk"
    ]


def make_figures(
    result: AnalysisResult,
    metrics: pd.DataFrame | None,
    sample: dict | None,
    grid,
    formats: str | tuple[str, ...] | None = None,
    size: str | tuple[float, float] | None = None,
) -> list[str]:
    """Write every figure of figures.FIGURES the data allows into result.figure_dir (default PNG + SVG at
    each figure's own size; see figures.save); return notes on the rest. Drawn by the workers forked as the
    analysis began (figure_pool.py), else here."""
    fields = dict(
        results=result.results, points=result.points, fits=result.fits, power_laws=result.power_laws,
        verdict=result.verdict, lr_laws=result.lr_laws, grid=grid, metrics=metrics, sample=sample,
        verdict_overall=result.verdict_overall,
    )  # fmt: skip
    outcomes = figure_pool.draw(fields, result.figure_dir, formats, size) or _draw_here(
        fields, result.figure_dir, formats, size
    )
    notes = []
    for name, path, note in outcomes:
        if path is not None:
            result.figures[name] = path
        if note:
            notes.append(note)
    return notes


def _draw_here(fields: dict, out_dir: Path, formats, size) -> list[tuple[str, Path | None, str | None]]:
    from . import figures  # matplotlib is imported only when figures are drawn

    data = figures.FigureData(**fields)
    # Every skip is decided before anything is drawn: a skip check that raises does so before any file.
    skips = [(figure, figure.skip(data)) for figure in figures.FIGURES]
    drawn = iter(figures.draw_all([f for f, reason in skips if not reason], data, out_dir, formats, size))
    return [
        (figure.name, None, f"figure {figure.name}.png skipped: {reason}")
        if reason
        else (figure.name, *next(drawn))
        for figure, reason in skips
    ]


def _inputs(
    sweep_dir: Path | None, table: Path | None, out: Path | None, plugins: Any
) -> tuple[pd.DataFrame, Any, list[str], Path, Path, str, Path]:
    """(runs table, run states, notes, output folder, figure folder, source words, results folder) of a sweep
    folder or a --table file, as analyze reads them."""
    if table is not None:
        _plugin_notes(None, plugins)  # labels of the user's plug-in kinds
        table = Path(table)
        df = load_table(table)
        out_dir = Path(out) if out else table.with_name(f"{table.stem}-analysis")
        return df, None, [], out_dir, out_dir, f"table {table}", out_dir
    sweep_dir = Path(sweep_dir)
    notes = _plugin_notes(sweep_dir, plugins)
    collection = scan_sweep(sweep_dir)
    df, states = collection.table, collection.states
    check_stems(sweep_dir, df)  # a branch whose stem trained otherwise is no point of either training
    notes += collection.notes
    out_dir = Path(out) if out else sweep_dir
    fig_dir = Path(out) if out else sweep_dir / "plots"
    results_dir = (
        Path(out) if out else sweep_dir
    )  # --out: nothing is written into the sweep (it may be read-only)
    return df, states, notes, out_dir, fig_dir, f"sweep {sweep_dir}", results_dir


def analyze(
    sweep_dir: Path | None = None,
    table: Path | None = None,
    out: Path | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    figures: bool = True,
    loss: str = DEFAULT_LOSS,
    split_by: tuple[str, ...] = (),
    figure_formats: str | tuple[str, ...] | None = None,
    figure_size: str | tuple[float, float] | None = None,
    plugins: str | Sequence[str] | None = None,
) -> AnalysisResult:
    """Collect (or read a table), reduce, fit, compare, draw and summarise; writes every output.

    Sweep mode: results.csv/.parquet go into `out`, else the sweep folder; points.csv, fits.csv, verdict.csv,
    power_laws.csv, approach3.csv and summary.txt into `out` (default the sweep folder); figures into `out`
    (default <sweep>/plots). Table mode: everything into `out` (default <table dir>/<table stem>-analysis).
    figure_formats: "pdf", "png,svg" or a sequence of png/svg/pdf (None: PNG + SVG); figure_size: width and
    height in inches, (6, 4) or "6x4" (None: each figure's own size, cropped to its contents).
    plugins: modules to import first ("a,b" or a list; also MODEXP_PLUGINS). The plug-ins the study's runs name
    are never imported: reading a study never runs code that came with it (the summary says how to trust it).
    """
    if (sweep_dir is None) == (table is None):
        raise ModexpError("analyze needs exactly one of a sweep folder or --table FILE.csv")
    loss_column(loss)  # a bad --loss fails before anything is read or written
    plugin_modules.load_named(plugins)  # before the figure workers fork: they label the plug-ins' kinds too
    if figures:  # so do bad figure options
        figure_formats, figure_size = figure_options(figure_formats, figure_size)
        figure_pool.start()  # its workers import matplotlib while this process reads and fits
    metrics, sample = None, None
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else None
    df, states, notes, out_dir, fig_dir, source, results_dir = _inputs(sweep_dir, table, out, plugins)

    available = _losses_available(df)
    if loss not in available:
        notes.append(f"no run has a {loss_column(loss)}: fits and figures use the top-k loss instead")
        loss = "topk"
    per_loss = {}
    for name in [loss] + [other for other in available if other != loss]:
        points = reduce_points(df, name, tuple(split_by))
        iso = fit_isoflops(points, n_boot=n_boot, seed=seed)
        per_loss[name] = (points, iso, compute_verdict(iso.table, iso.boot, points.table))
    points, iso, verdict = per_loss[loss]
    notes += points.notes
    laws = fit_power_laws(iso.table, iso.boot)
    a3 = fit_approach3(points.table)
    grid = grid_points(points.table)
    lr_laws = fit_lr_laws(grid) if not grid.empty else None
    notes += _lr_edge_notes(grid) + _run_notes(df)
    timed = time_verdict(df, loss, iso.noise, tuple(split_by), n_boot=n_boot, seed=seed)

    # Nothing is written until every fit succeeded: a refused analysis leaves the folder as it was.
    _write_tables(df, results_dir, out_dir, points, per_loss, laws, a3, lr_laws)
    timed.table.to_csv(out_dir / "verdict_time.csv", index=False)

    result = AnalysisResult(
        summary="",
        results=df,
        points=points.table,
        fits=iso.table,
        power_laws=laws,
        approach3=a3,
        verdict=verdict.by_budget,
        verdict_overall=verdict.overall,
        loss=loss,
        out_dir=out_dir,
        figure_dir=fig_dir,
        notes=notes,
        sweep_dir=sweep_dir,
        lr_laws=lr_laws,
        verdict_time=timed.table,
    )
    if sweep_dir is not None:
        metrics, metric_notes = _load_metrics(sweep_dir, df["run_id"])
        notes += metric_notes
        routing_run = pick_routing_run(df, sweep_dir)
        sample = load_routing_sample(sweep_dir / routing_run) if routing_run else None
        if routing_run:
            notes.append(f"routing figure drawn from run {routing_run}")
    if figures:
        notes += make_figures(result, metrics, sample, grid, figure_formats, figure_size)
        if result.figures:
            kinds = " + ".join(f.upper() for f in figure_formats)
            notes.append(f"figures ({kinds}) in {fig_dir}: {', '.join(result.figures)}")

    verdicts = {name: v for name, (_, _, v) in per_loss.items()}
    result.summary = format_summary(
        source, df, points.table, iso.table, laws, a3, verdicts, loss, states, notes, lr_laws, _lr_rules(df),
        speed=speed_lines(timed, loss, df, sweep_dir),
    )  # fmt: skip
    (out_dir / "summary.txt").write_text(result.summary)
    logger.info("analysis written to %s", out_dir)
    return result


def _write_tables(
    df: pd.DataFrame,
    results_dir: Path,
    out_dir: Path,
    points: Any,
    per_loss: dict[str, tuple[Any, Any, Any]],
    laws: pd.DataFrame,
    a3: pd.DataFrame,
    lr_laws: pd.DataFrame | None,
) -> None:
    """analyze's tables: the results, points, fits and verdicts of every loss, power laws, Approach 3, LR laws."""
    _write_results(df, results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points.table.to_csv(out_dir / "points.csv", index=False)
    pd.concat([iso_.table for _, iso_, _ in per_loss.values()]).to_csv(out_dir / "fits.csv", index=False)
    pd.concat([v.by_budget for _, _, v in per_loss.values()]).to_csv(out_dir / "verdict.csv", index=False)
    pd.concat([v.overall for _, _, v in per_loss.values()]).to_csv(
        out_dir / "verdict_overall.csv", index=False
    )
    laws.to_csv(out_dir / "power_laws.csv", index=False)
    a3.to_csv(out_dir / "approach3.csv", index=False)
    if lr_laws is not None:
        lr_laws.to_csv(out_dir / "lr_laws.csv", index=False)


OUTPUTS = ("results.parquet", "points.csv", "fits.csv", "verdict.csv", "verdict_overall.csv", "summary.txt")


def _plugin_notes(sweep_dir: Path | None, names: str | Sequence[str] | None) -> list[str]:
    """Import the plug-ins the user named (`plugins`, MODEXP_PLUGINS), never those the study's config.yaml
    files name: those are listed in one note saying how to trust them (their curves keep their ids)."""
    plugin_modules.load_named(names)
    if sweep_dir is None:
        return []
    note = plugin_modules.untrusted_note(plugin_modules.listed_by_study(sweep_dir))
    return [note] if note else []


def load_or_analyze(sweep_dir: Path) -> AnalysisResult:
    """Read the tables a previous analyze() left in the sweep folder, or analyze again if they are stale."""
    sweep_dir = Path(sweep_dir)
    files = {name: sweep_dir / name for name in OUTPUTS + ("power_laws.csv", "approach3.csv")}
    if not all(p.is_file() for p in files.values()) or min(
        p.stat().st_mtime for p in files.values()
    ) < _newest_summary_mtime(sweep_dir):
        return analyze(sweep_dir)
    points = pd.read_csv(files["points.csv"])
    loss = str(pd.read_csv(files["fits.csv"])["loss"].iloc[0])
    fits = pd.read_csv(files["fits.csv"], keep_default_na=True).fillna({"reason": "", "bound": ""})
    verdict = pd.read_csv(files["verdict.csv"])
    overall = pd.read_csv(files["verdict_overall.csv"])
    lr_path = sweep_dir / "lr_laws.csv"
    return AnalysisResult(
        summary=files["summary.txt"].read_text(),
        results=pd.read_parquet(files["results.parquet"]),
        points=points,
        fits=fits[fits["loss"] == loss].reset_index(drop=True),
        power_laws=pd.read_csv(files["power_laws.csv"]).reindex(columns=POWER_LAW_COLUMNS),
        approach3=pd.read_csv(files["approach3.csv"]).reindex(columns=A3_COLUMNS),
        verdict=verdict[verdict["loss"] == loss].reindex(columns=VERDICT_COLUMNS).reset_index(drop=True),
        verdict_overall=overall[overall["loss"] == loss]
        .reindex(columns=OVERALL_COLUMNS)
        .reset_index(drop=True),
        loss=loss,
        out_dir=sweep_dir,
        figure_dir=sweep_dir / "plots",
        sweep_dir=sweep_dir,
        lr_laws=pd.read_csv(lr_path) if lr_path.is_file() else None,
        verdict_time=read_time_verdict(sweep_dir / "verdict_time.csv"),
    )


__all__ = ["AnalysisResult", "FITS_COLUMNS", "analyze", "load_or_analyze"]
