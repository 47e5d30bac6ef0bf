"""The bundled model's ONNX export ships beside model.pt (model.onnx, .sha256, .json): it is the current
checkpoint's, under the current export settings, digest-checked, the one `FractureDetector.load` runs, and it
predicts what model.pt predicts through torch. A stale or altered shipped file is never run.

After model.pt changes, `python tools/ship_onnx.py` regenerates the three files (the first test says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bonefrac import FractureDetector
from bonefrac.errors import ModelLoadError
from bonefrac.inference.export import (
    EXPORT_SETTINGS,
    SHIPPED_FORMAT,
    parity,
    read_shipped_export,
    shipped_export_path,
)
from bonefrac.models.checkpoint import bundled_model_path, sha256_file, verified_digest
from bonefrac.paths import EXAMPLES_DIR, WEIGHTS_DIR

SHIPPED = WEIGHTS_DIR / "model.onnx"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.jpg"))
REGENERATE = "model.pt changed: run `python tools/ship_onnx.py` to ship a fresh model.onnx"


def test_the_shipped_export_is_the_current_checkpoints() -> None:
    meta = json.loads(Path(f"{SHIPPED}.json").read_text())
    assert shipped_export_path(bundled_model_path()) == SHIPPED
    assert meta["format"] == SHIPPED_FORMAT
    assert meta["checkpoint_sha256"] == verified_digest(bundled_model_path()), REGENERATE
    assert meta["export_settings"] == EXPORT_SETTINGS, "the export changed: " + REGENERATE
    assert Path(f"{SHIPPED}.sha256").read_text().split() == [sha256_file(SHIPPED), "model.onnx"]
    assert meta["info"]["sha256"] == meta["checkpoint_sha256"]  # facts and version as load_model gives them


def test_load_runs_the_shipped_export_without_importing_torch(tmp_path: Path) -> None:
    probe = (
        "import sys; from bonefrac import FractureDetector; det = FractureDetector.load(); "
        f"p = det.predict({str(EXAMPLES[0])!r}); "
        "print(det.backend.path); print(p.probability); print('torch' in sys.modules)"
    )
    env = {**os.environ, "BONEFRAC_CACHE": str(tmp_path / "empty-cache")}  # nothing cached: only the shipped file
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    path, probability, torch_imported = out.stdout.split()
    assert Path(path) == SHIPPED and torch_imported == "False"
    assert 0.0 <= float(probability) <= 1.0
    assert not (tmp_path / "empty-cache").exists()  # no export was made


def _copy_bundled(tmp_path: Path) -> Path:
    for name in ("model.pt", "model.pt.sha256", "model.onnx", "model.onnx.sha256", "model.onnx.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    return tmp_path / "model.pt"


def test_a_stale_or_altered_shipped_export_is_not_run(tmp_path: Path) -> None:
    checkpoint = _copy_bundled(tmp_path)
    digest = verified_digest(checkpoint)
    found = read_shipped_export(checkpoint, digest)
    assert found is not None and found[0] == tmp_path / "model.onnx"
    assert found[1].to_dict() == json.loads((tmp_path / "model.onnx.json").read_text())["spec"]
    assert read_shipped_export(checkpoint, "0" * 64) is None  # made from another checkpoint
    assert read_shipped_export(checkpoint, digest, variant="int8") is None  # no such variant beside it
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    (tmp_path / "model.onnx.json").write_text(json.dumps({**meta, "export_settings": "opset=11"}))
    assert read_shipped_export(checkpoint, digest) is None  # made by an older export
    (tmp_path / "model.onnx.json").write_text(json.dumps(meta))
    with open(tmp_path / "model.onnx", "r+b") as f:  # one byte changed: the digest no longer matches
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelLoadError, match="SHA-256 mismatch"):
        read_shipped_export(checkpoint, digest)


@pytest.mark.numeric
@pytest.mark.slow
def test_the_shipped_export_predicts_what_the_checkpoint_predicts_through_torch() -> None:
    """Tolerances as in tests/models/test_outputs_unchanged.py: torch and onnxruntime sum the same float32
    graph in other orders, which moves a logit by about 1e-6 of its size; 1e-4 relative leaves a hundredfold
    margin. The cells' probabilities get the same 1e-4 as an absolute bound (`bonefrac export`'s check)."""
    pytest.importorskip("torch")
    from bonefrac.io.read import read_image
    from bonefrac.preprocess import preprocess

    shipped, eager = FractureDetector.load(), FractureDetector.load(backend="torch")
    assert Path(shipped.backend.path) == SHIPPED and eager.backend.name == "torch"
    assert shipped.spec == eager.spec and shipped.version == eager.version
    assert len(EXAMPLES) == 4
    for path in EXAMPLES:
        a, b = shipped.predict(path, heatmap=False), eager.predict(path, heatmap=False)
        np.testing.assert_allclose(a.probability, b.probability, rtol=1e-4, atol=1e-7, err_msg=path.name)
        np.testing.assert_allclose(a.logit, b.logit, rtol=1e-4, atol=1e-4, err_msg=path.name)
    x = np.stack([preprocess(read_image(p), eager.spec)[0] for p in EXAMPLES])
    assert parity(eager.model, SHIPPED, x, eager.spec) < 1e-4
