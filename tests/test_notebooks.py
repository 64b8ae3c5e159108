"""The notebooks execute top to bottom on synthetic sweep folders and on `modexp analyze` output (sweep,
--out and --table), take their folders from a papermill parameters cell, write nothing into the folders they
read, and are stored without outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from fixtures_results import chinchilla_table, make_sweep
from nbclient import NotebookClient

from modexp import analysis

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Figures each notebook must show when every input is present (the fixture sweep has no LR grid):
# isoflop: verdict, isoFLOP curves, optimal scaling, normalised, learning curves; routing: routing, accuracy;
# compare: one figure.
EXPECTED_IMAGES = {"isoflop.ipynb": 5, "routing.ipynb": 2}
PARAMETERS = {"isoflop.ipynb": ["sweep_dir", "loss"], "routing.ipynb": ["sweep_dir", "run_id"]}
PARAMETERS["compare.ipynb"] = ["sweep_a", "sweep_b", "names", "loss"]
ALL_NOTEBOOKS = sorted(PARAMETERS)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep already analysed without figures, as after `modexp analyze`: the notebooks load its tables
    (the compute path is tested in test_analysis.py) and draw every figure inline."""
    sweep_dir = make_sweep(tmp_path_factory.mktemp("nb-runs"))
    analysis.analyze(sweep_dir, figures=False)
    return sweep_dir


def _images(nb) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def _stdout(nb) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("name") == "stdout"
    )


def _parameters_index(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))


def _inject(nb, **parameters) -> None:
    """What papermill does: a cell tagged injected-parameters right after the cell tagged parameters."""
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(_parameters_index(nb) + 1, cell)


def _execute(nb) -> None:
    """Run every cell in a kernel, which must be this environment's python; no cell may fail."""
    # An extra first cell reports the kernel's interpreter.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    kernel_python = nb.cells[0].outputs[0]["text"].strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"
    ]
    assert not errors


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and modification time: what a notebook must leave as it was."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _run(name: str, **parameters):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _inject(nb, **parameters)
    _execute(nb)
    return nb


def _reads_well(nb) -> None:
    """Tables written for a reader (no 1.000000e+11, no 0.000000), no warning printed by a cell, and no
    description of the method that the analysis does not do (issue 35)."""
    tables = [
        o["data"]["text/html"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "text/html" in o.get("data", {})
    ]
    for html in tables:
        # Run ids are shown as they are named (the fixture's hold Python's 1e+11): row labels and id lists.
        cells = re.sub(r"<th>[^<]*</th>|[\w.]+-\de\+\d\d-\d+", "", html)
        assert not re.search(r"\de[+-]\d\d", cells) and "0.000000" not in cells and "NaN" not in cells, cells
    warned = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [w for w in warned if "Warning" in w], warned
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "interpolated between its budgets" not in text and "bootstrap over seeds" not in text
    assert "paired over seeds" not in text.replace("never paired over seeds", "")


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_executes_on_a_sweep_and_writes_nothing_there(name: str, sweep: Path) -> None:
    before = _snapshot(sweep)
    nb = _run(name, sweep_dir=str(sweep))
    assert _images(nb) == EXPECTED_IMAGES[name]
    assert _snapshot(sweep) == before
    _reads_well(nb)


def test_isoflop_takes_its_parameters(tmp_path: Path) -> None:
    """loss="topk" refits a sweep analysed on the causal loss, in memory: the sweep's tables stay as they are."""
    sweep_dir = make_sweep(tmp_path, name="param-sweep")
    analysis.analyze(sweep_dir, figures=False)
    before = _snapshot(sweep_dir)
    nb = _run("isoflop.ipynb", sweep_dir=str(sweep_dir), loss="topk")

    assert f"{sweep_dir}: " in _stdout(nb)
    assert "fitted on another loss; fitted again in memory" in _stdout(nb)
    assert "fitted on the topk loss (val_loss)" in _stdout(nb)
    assert _snapshot(sweep_dir) == before
    assert pd.read_csv(sweep_dir / "fits.csv")["loss"].iloc[0] == "causal"
    assert _images(nb) == EXPECTED_IMAGES["isoflop.ipynb"]


def test_isoflop_on_a_sweep_never_analysed(tmp_path: Path) -> None:
    """Runs only, no tables: fitted in memory, nothing written (no results.csv, no plots/)."""
    sweep_dir = make_sweep(tmp_path, name="raw")
    before = _snapshot(sweep_dir)
    nb = _run("isoflop.ipynb", sweep_dir=str(sweep_dir))
    assert "tables not analysed yet; fitted again in memory" in _stdout(nb)
    assert _images(nb) == EXPECTED_IMAGES["isoflop.ipynb"]
    assert _snapshot(sweep_dir) == before


def test_a_relative_sweep_dir_is_taken_from_the_working_directory(sweep: Path, tmp_path: Path) -> None:
    """As for the CLI's runs_dir: relative to the kernel's working directory, never to the repository."""
    nb = nbformat.read(NOTEBOOKS / "isoflop.ipynb", as_version=4)
    _inject(nb, sweep_dir=sweep.name)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(sweep.parent)}}
    ).execute()
    assert f"{sweep}: " in _stdout(nb)
    nb = nbformat.read(NOTEBOOKS / "isoflop.ipynb", as_version=4)
    _inject(nb, sweep_dir="runs/no-such-sweep")
    with pytest.raises(Exception, match="relative path is taken from the working directory"):
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()


def _table_output(folder: Path, shift: float = 0.01) -> Path:
    """`modexp analyze --table t.csv --out DIR` (the CLI, as a user runs it) on a table of only the six
    required columns: a baseline and a MoD variant whose losses lie `shift` nats lower."""
    folder.mkdir(parents=True)
    table = chinchilla_table(folder / "t.csv", budgets=(1e18, 1e19, 1e20), n_sizes=7)
    df = pd.read_csv(table)
    mod = df.assign(variant="mod_c0.125_e2", val_loss=df["val_loss"] - shift)
    pd.concat([df, mod]).to_csv(table, index=False)
    assert list(pd.read_csv(table).columns) == ["variant", "budget", "params", "tokens", "flops", "val_loss"]
    out = folder / "analysis"
    subprocess.run(
        [sys.executable, "-m", "modexp.cli", "analyze", "--table", str(table), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert (out / "verdict.csv").is_file()
    return out


@pytest.fixture(scope="module")
def table_outputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nb-tables")
    return _table_output(root / "a", shift=0.01), _table_output(root / "b", shift=0.03)


def test_isoflop_executes_on_analyze_table_output(table_outputs: tuple[Path, Path]) -> None:
    """`modexp analyze --table any.csv --out DIR` (docs/getting-started.md): no run_id, no metrics, no FLOPs per token."""
    out = table_outputs[0]
    before = _snapshot(out)
    nb = _run("isoflop.ipynb", sweep_dir=str(out))
    assert "fitted on the topk loss (val_loss)" in _stdout(nb)  # a table without val_loss_causal
    assert "no metrics.jsonl here" in _stdout(nb)
    assert _images(nb) == 3  # verdict, isoFLOP curves, optimal scaling
    assert _snapshot(out) == before


def test_routing_on_analyze_output_says_it_needs_the_sweep(table_outputs: tuple[Path, Path]) -> None:
    nb = _run("routing.ipynb", sweep_dir=str(table_outputs[0]))
    assert "routing needs the sweep folder" in _stdout(nb)
    assert _images(nb) == 0


def test_isoflop_executes_on_analyze_out_of_a_sweep(tmp_path: Path) -> None:
    """`modexp analyze SWEEP --out DIR` leaves the tables in DIR and the results in the sweep."""
    sweep_dir = make_sweep(tmp_path, name="s")
    analysis.analyze(sweep_dir, out=tmp_path / "out", figures=False)
    nb = _run("isoflop.ipynb", sweep_dir=str(tmp_path / "out"))
    assert "fitted on the causal loss" in _stdout(nb)
    assert _images(nb) == 4  # all but the learning curves, whose metrics stay in the sweep's run folders


def test_compare_shows_two_verdicts_side_by_side(table_outputs: tuple[Path, Path]) -> None:
    a, b = table_outputs
    before = _snapshot(a.parent), _snapshot(b.parent)
    nb = _run("compare.ipynb", sweep_a=str(a), sweep_b=str(b), names=["small gain", "large gain"])
    assert _images(nb) == 1
    out = _stdout(nb)
    assert "small gain: " in out and "large gain: " in out
    assert "no causal verdict; showing its topk verdict" in out
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert "MoD 12.5%, every 2nd block vs baseline" in html
    assert "small gain: m" in html and "large gain: m" in html
    headline = {
        name: pd.read_csv(f / "verdict_overall.csv").query("loss == 'topk'") for name, f in zip("ab", (a, b))
    }
    # A constant loss gap on a flattening L*(C) is an m that grows with compute: a study whose m changes with
    # compute shows its trend (its first and last budget's m), the other its pooled m.
    level = {}
    for name, row in ((n, h.iloc[0]) for n, h in headline.items()):
        if bool(row["heterogeneous"]):
            assert f"trend: {row['m_first']:.2f}x" in html and f"to {row['m_last']:.2f}x" in html
            level[name] = (row["m_first"] * row["m_last"]) ** 0.5
        else:
            assert f"{row['multiplier']:.2f}x" in html
            level[name] = row["multiplier"]
    assert level["b"] > level["a"]
    assert (_snapshot(a.parent), _snapshot(b.parent)) == before


def test_compare_on_two_sweeps_default_names(sweep: Path, tmp_path: Path) -> None:
    """Two sweep folders analysed in place, same folder name: told apart by their parents."""
    other = make_sweep(tmp_path, name=sweep.name)
    analysis.analyze(other, figures=False, n_boot=50)
    nb = _run("compare.ipynb", sweep_a=str(sweep), sweep_b=str(other))
    assert _images(nb) == 1
    assert f"{sweep.parent.name}/{sweep.name}: " in _stdout(nb)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    # The first code cell holds the parameters (papermill's convention): a folder relative to the working
    # directory, as modexp's CLI takes it; no environment variable.
    assert nb.cells.index(code[0]) == _parameters_index(nb)
    assigned = [line.split("=")[0].strip() for line in code[0].source.splitlines() if "=" in line]
    assert assigned == PARAMETERS[name]
    assert '"runs/' in code[0].source
    assert all("environ" not in cell.source for cell in code)
