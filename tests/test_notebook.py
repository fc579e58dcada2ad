"""``examples/quickstart.ipynb`` runs top to bottom in a real Jupyter kernel, and is committed clean.

The notebook is executed with nbclient in the ``python3`` kernel (ipykernel),
from a scratch copy, with the repository on ``PYTHONPATH``: once on the offline
model (its default) and once against the real llama.cpp server, the way a user
points it at a local model (``OPENAI_BASE_URL`` and ``CHAIN_RUNNER_MODEL``).
Any cell that raises fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import ROOT
from llama_server import MODEL_ALIAS

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 300


def test_committed_notebook_has_no_outputs() -> None:
    """Outputs and execution counts would drift with every run: the committed file holds none."""
    raw = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:1]
    assert "asyncio.run(" not in NOTEBOOK.read_text(encoding="utf-8")  # cells await on the kernel's loop


def execute(workdir: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Run a copy of the notebook in ``workdir``; returns the executed notebook."""
    from nbclient import NotebookClient

    copy = workdir / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, copy)
    # The kernel inherits this process's environment (already stripped of keys by conftest).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's migration warning, at its source
    monkeypatch.delenv("CHAIN_RUNNER_MODEL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return nb


def outputs(nb: Any, marker: str) -> list[dict[str, Any]]:
    """The outputs of the code cell whose source contains ``marker``."""
    [cell] = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return list(cell.outputs)


def text_of(cell_outputs: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(
        o.get("text", "") for o in cell_outputs if o.get("output_type") == "stream" and o.get("name") == stream
    )


def check_executed(nb: Any) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert all(o.get("output_type") != "error" for o in cell.outputs), cell.source[:80]
    stories = text_of(outputs(nb, "async for record in batch"))
    assert "6 of 6 stories written" in stories
    streamed = text_of(outputs(nb, "stream_one("))
    assert "what streamed is the story: True" in streamed
    progress = outputs(nb, "async for record in batch")
    assert any(o.get("output_type") == "display_data" and "6/6" in o["data"].get("text/markdown", "") for o in progress)
    plot = outputs(nb, "plt.show()")
    assert any("image/png" in o.get("data", {}) for o in plot), "the latency plot was not drawn"
    pipeline = outputs(nb, "build_story_chain(session.model)")
    assert any("penguin" in o.get("data", {}).get("text/markdown", "") for o in pipeline)


@pytest.mark.slow
def test_notebook_runs_on_the_offline_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute(tmp_path, monkeypatch)
    check_executed(nb)
    setup = outputs(nb, "session.announce()")
    assert "model: fake" in text_of(setup)
    assert "offline 'fake' model" in text_of(setup, "stderr")


@pytest.mark.slow
def test_notebook_runs_on_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server: str) -> None:
    nb = execute(tmp_path, monkeypatch, OPENAI_BASE_URL=llama_server, CHAIN_RUNNER_MODEL=f"openai:{MODEL_ALIAS}")
    check_executed(nb)
    assert f"model: openai:{MODEL_ALIAS} at {llama_server}" in text_of(outputs(nb, "session.announce()"))
