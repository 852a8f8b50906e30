"""Notebooks in git: no outputs, the venv's kernel, no logic of their own, a temporary C360_HOME. `make test` also
executes each of them (nbmake)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

FOLDER = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing " \
                      f"(`jupyter nbconvert --clear-output --inplace {path.relative_to(FOLDER.parent)}`)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_on_the_python3_kernel_and_keeps_logic_in_the_package(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            defined = [node.name for node in ast.walk(ast.parse(TransformerManager().transform_cell(cell.source)))
                       if isinstance(node, ast.FunctionDef | ast.ClassDef)]
            assert not defined, f"{path.name} defines {defined}: move it into the package and import it"
    source = "\n".join(cell.source for cell in notebook.cells)
    if "C360_HOME" in source or "Settings()" in source:
        assert 'os.environ["C360_HOME"] = str(home)' in source, "state goes to a temporary C360_HOME"


def test_the_kernel_is_this_interpreter() -> None:
    """The notebooks' kernelspec says `python`; jupyter_client starts it as the interpreter running the tests (the
    venv's), so notebooks import the checked-out c360."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    assert manager.format_kernel_cmd()[0] == sys.executable
