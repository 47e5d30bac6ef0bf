"""notebooks/walkthrough.ipynb: it runs top to bottom against the current API, and is committed without outputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WALKTHROUGH = NOTEBOOKS / "walkthrough.ipynb"


def tagged(nb: Any, tag: str) -> Any:
    """The one cell carrying `tag` (the test finds cells by tag, not by position, so cells can be added)."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def has_image(cell: Any) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type == "display_data")


def test_committed_notebook_has_no_outputs() -> None:
    """Outputs are stripped before committing: no pictures in the diff, nothing stale (the test below runs it)."""
    nb = nbformat.read(WALKTHROUGH, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{WALKTHROUGH.name}: cells {dirty} have outputs; clear them before committing"


def kernel_manager(tmp_path: Path) -> Any:
    """A kernel on this interpreter (the venv's), whatever kernelspecs the machine has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "bonefrac-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bonefrac test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(
        kernel_name="bonefrac-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    )


@pytest.mark.slow
def test_walkthrough_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without error (nbclient raises on the first one that fails) and the key results show."""
    work = tmp_path / "work"
    shutil.copytree(NOTEBOOKS / "data", work / "data")  # the notebook reads data/ beside itself
    before = sorted(p.relative_to(NOTEBOOKS) for p in NOTEBOOKS.rglob("*"))
    # The kernel inherits os.environ: BONEFRAC_CACHE is already a temporary folder (conftest); the notebook's
    # mkdtemp lands under tmp_path; the inline backend draws the figures even where MPLBACKEND says Agg.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(WALKTHROUGH, as_version=4)
    client = nbclient.NotebookClient(
        nb, km=kernel_manager(tmp_path), timeout=300, resources={"metadata": {"path": str(work)}}
    )
    client.execute()

    examples = tagged(nb, "predict-examples")
    assert has_image(examples), "the example overlays were not drawn"
    assert stdout(examples).count("probability") == 4 and stdout(examples).count("detections") == 4
    assert "AUC 0." in stdout(tagged(nb, "evaluate-bundled"))
    tiny = stdout(tagged(nb, "evaluate-tiny"))
    assert "'train': 32" in tiny and "'validation': 8" in tiny, tiny  # the report counted the tiny model's images
    dicom = tagged(nb, "read-dicom")
    assert has_image(dicom)
    assert "'photometric': 'MONOCHROME1'" in stdout(dicom) and "multi-frame" in stdout(dicom)
    assert "probability from DICOM" in stdout(tagged(nb, "predict-dicom"))
    assert sorted(p.relative_to(NOTEBOOKS) for p in NOTEBOOKS.rglob("*")) == before, (
        "the notebook wrote into notebooks/"
    )
