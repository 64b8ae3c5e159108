"""Both notebooks execute top to bottom against a synthetic sweep folder, and are stored without outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from fixtures_results import make_sweep
from nbclient import NotebookClient

from modexp import analysis

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Figures each notebook must show when every input is present (the fixture sweep has no LR grid):
# isoflop: verdict, isoFLOP curves, optimal scaling, normalised, learning curves; routing: routing, accuracy.
EXPECTED_IMAGES = {"isoflop.ipynb": 5, "routing.ipynb": 2}


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


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_executes_on_a_sweep(name: str, sweep: Path, monkeypatch) -> None:
    monkeypatch.setenv(analysis.SWEEP_ENV, str(sweep))  # the kernel process inherits this environment
    monkeypatch.delenv("MODEXP_RUN_ID", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _execute(nb)
    assert _images(nb) == EXPECTED_IMAGES[name]


def test_isoflop_takes_its_parameters(tmp_path: Path, monkeypatch) -> None:
    """sweep_dir set in the notebook wins over $MODEXP_SWEEP_DIR; loss="topk" refits a sweep analysed on
    the causal loss."""
    sweep_dir = make_sweep(tmp_path, name="param-sweep")
    analysis.analyze(sweep_dir, figures=False)
    assert analysis.load_or_analyze(sweep_dir).loss == "causal"
    monkeypatch.setenv(analysis.SWEEP_ENV, str(tmp_path / "not-this-folder"))
    nb = nbformat.read(NOTEBOOKS / "isoflop.ipynb", as_version=4)
    _inject(nb, sweep_dir=str(sweep_dir), loss="topk")
    _execute(nb)

    assert f"{sweep_dir}: " in _stdout(nb)
    assert "fitted on the topk loss (val_loss)" in _stdout(nb)
    assert pd.read_csv(sweep_dir / "fits.csv")["loss"].iloc[0] == "topk"
    assert _images(nb) == EXPECTED_IMAGES["isoflop.ipynb"]


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    # The first code cell holds the parameters (papermill's convention) and sets sweep_dir to None.
    assert nb.cells.index(code[0]) == _parameters_index(nb)
    assert "sweep_dir = None" in code[0].source
