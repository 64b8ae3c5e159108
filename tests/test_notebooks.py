"""Both notebooks execute top to bottom against a synthetic sweep folder, and are stored without outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from fixtures_results import make_sweep
from nbclient import NotebookClient

from modexp import analysis

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Figures each notebook must show when every input is present.
EXPECTED_IMAGES = {"isoflop.ipynb": 4, "routing.ipynb": 2}


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


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_executes_on_a_sweep(name: str, sweep: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODEXP_SWEEP_DIR", str(sweep))  # the kernel process inherits this environment
    monkeypatch.delenv("MODEXP_RUN_ID", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # An extra first cell reports the kernel's interpreter: it must be this environment's python.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()

    kernel_python = nb.cells[0].outputs[0]["text"].strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve()
    assert _images(nb) == EXPECTED_IMAGES[name]
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
