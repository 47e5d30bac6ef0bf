"""Re-record the bundled model's entries of `tests/models/reference_outputs.npz` (run when the bundled model
changes on purpose; the classifiers' entries are kept): `FractureDetector.load().predict(path, heatmap=True)`
on each bundled example through both backends, in fp32, as `tests/models/test_outputs_unchanged.py` reads it.

    BONEFRAC_PRECISION=fp32 .venv/bin/python tools/record_bundled_outputs.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bonefrac import FractureDetector
from bonefrac.paths import EXAMPLES_DIR

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "models" / "reference_outputs.npz"


def main() -> None:
    old = np.load(REFERENCE)
    out = {k: old[k] for k in old.files if not k.startswith("bundled/")}
    for backend in ("onnx", "torch"):
        det = FractureDetector.load(backend=backend, precision="fp32")
        for path in sorted(EXAMPLES_DIR.glob("*.jpg")):
            pred = det.predict(path, heatmap=True)
            key = f"bundled/{backend}/{path.name}"
            heat = pred.heatmap
            out |= {
                f"{key}/probability": np.float64(pred.probability),
                f"{key}/logit": np.float64(pred.logit),
                f"{key}/detections": np.asarray(pred.detections, np.float64).reshape(-1, 5),
                f"{key}/peak": np.asarray(pred.peak, np.float64),
                f"{key}/heatmap_shape": np.asarray(heat.shape),
                f"{key}/heatmap": heat[::32, ::32],
                f"{key}/heatmap_mean": np.float64(heat.astype(np.float64).mean()),
                f"{key}/heatmap_max": np.float64(heat.max()),
            }
    np.savez_compressed(REFERENCE, **out)
    print(f"{REFERENCE}: {len(out)} arrays, the bundled model's re-recorded")


if __name__ == "__main__":
    main()
