"""Regenerate the ONNX export that ships beside a checkpoint (the bundled model's `model.onnx`), one command:

    .venv/bin/python tools/ship_onnx.py                 # src/bonefrac/weights/model.pt -> model.onnx
    .venv/bin/python tools/ship_onnx.py path/to/model.pt [--variant NAME]

Run it whenever model.pt changes (retrained, recalibrated, stamped: `tools/stamp_digests.py` runs it itself):
`FractureDetector.load` uses a shipped export only while its `.json` sidecar names the checkpoint's SHA-256
and the current export settings, so a stale one is ignored, an install without torch cannot load the model,
and `tests/inference/test_shipped_onnx.py` fails until this is run. Writes `model.onnx`, `model.onnx.sha256`
and `model.onnx.json` (spec, facts, checkpoint digest, export settings), then checks onnxruntime against torch
on the example radiographs and prints the largest probability difference. The int8 export beside it
(`model.int8.onnx`) names the checkpoint too: make it again with `bonefrac quantize ../shared/data/fracatlas
--split src/bonefrac/weights/split.json` (`tests/inference/test_int8.py` fails until then).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bonefrac.errors import BonefracError
from bonefrac.inference.export import parity, ship_export
from bonefrac.io.read import read_image
from bonefrac.models.checkpoint import bundled_model_path, load_model
from bonefrac.paths import EXAMPLES_DIR
from bonefrac.preprocess import preprocess


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(bundled_model_path()), help="default: the bundled model")
    ap.add_argument("--variant", default="", help="write model.<variant>.onnx instead (reserved for new kinds)")
    args = ap.parse_args()
    try:
        path = ship_export(args.checkpoint, args.variant)
        model, spec, _ = load_model(args.checkpoint)
    except BonefracError as e:
        print(f"ship_onnx: error: {e}", file=sys.stderr)
        return 1
    files = sorted(EXAMPLES_DIR.glob("*.jpg"))
    x = np.stack([preprocess(read_image(p), spec)[0] for p in files])
    diff = parity(model, path, x, spec)
    size = Path(path).stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB) with .sha256 and .json")
    print(f"torch/onnxruntime parity on {len(files)} example images: max |dp| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
