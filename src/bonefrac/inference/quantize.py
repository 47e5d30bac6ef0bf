"""int8 exports: onnxruntime's static quantization of a checkpoint's fp32 export, calibrated on training images.

`bonefrac quantize` writes `model.int8.onnx` beside the checkpoint (the bundled model ships one), with the same
`.sha256` and `.json` sidecars as `model.onnx` (`export.ship_export`); the JSON also records the calibration
images and the parity of int8 against fp32 measured on a validation split (`evaluation.parity`).
`FractureDetector.load(precision=...)` runs it (`inference.precision` chooses).

What is quantized, by measurement on the bundled detector's 653 validation images (bench/README.md): int8
everywhere but the heads moved the image's logit by 0.43 (standard deviation) and the heatmap's peak on 44% of
images; all of the backbone's blocks, by 0.31 and 22%, and 2-5% of the decisions. The sensitive part is the
high-resolution start of the network, where a radiograph's fine texture lives. So int8 runs only the backbone's
stride-16 and stride-32 stages (`QUANTIZED_BLOCKS`); the stem, the stride-2 to -8 blocks, the feature pyramid and
the heads stay fp32.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.inference.export import (
    EXPORT_SETTINGS,
    read_shipped_sidecar,
    shipped_export_path,
    write_json,
    write_shipped_sidecars,
)
from bonefrac.models.metadata import jsonable

VARIANT = "int8"
CALIBRATION_METHOD = "MinMax"  # each activation's range over the calibration images
#: The blocks of the backbone (`models.efficientnet`) that run in int8: its stride-16 and stride-32 stages
#: (the detector's c16 and c32 taps), a third of the fp32 model's time (onnxruntime's profile).
QUANTIZED_BLOCKS = range(5, 16)
#: The exported graph's nodes of those blocks (the exporter names a node by its module path, "/_blocks.7/...").
QUANTIZED_PREFIXES = tuple(f"/_blocks.{i}/" for i in QUANTIZED_BLOCKS)
#: What the int8 export must hold against fp32 on validation images (`evaluation.parity` measures it): the
#: largest allowed |int8 - fp32| of each figure, and the least share of images with the same decision.
GATES: dict[str, float] = {
    "auc": 0.005,
    "ap50_fractured": 0.01,
    "pointing_game": 0.01,
    "sensitivity": 0.01,
    "specificity": 0.01,
    "same_decisions": 0.99,
}
CALIBRATION_IMAGES = 64  # onnxruntime's activation ranges settle by ~50 images; each costs ~0.3 s
#: The part of the export's settings that int8 adds: a shipped int8 file made otherwise is stale.
INT8_SETTINGS = (
    f"{EXPORT_SETTINGS}|int8=QDQ;weights=QInt8 per channel;activations=QUInt8;calibration={CALIBRATION_METHOD};"
    f"quantized=blocks {QUANTIZED_BLOCKS.start}-{QUANTIZED_BLOCKS.stop - 1}"
)
#: onnxruntime collects every tensor of every calibration image at once by default (~13 GB for 64 images of
#: this model); a few at a time keeps it under 1 GB.
_CALIBRATION_CHUNK = 3


def fp32_nodes(graph: Any) -> list[str]:
    """The names of the nodes of an exported graph that stay fp32 (all but `QUANTIZED_PREFIXES`)."""
    return [node.name for node in graph.node if not node.name.startswith(QUANTIZED_PREFIXES)]


class _Batches:
    """onnxruntime's `CalibrationDataReader`: one preprocessed image per call, then None."""

    def __init__(self, images: Iterator[np.ndarray]) -> None:
        self.images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.images, None)
        return None if x is None else {"image": np.ascontiguousarray(x[None], np.float32)}


def quantize_export(fp32_onnx: str | Path, out: str | Path, images: Iterator[np.ndarray]) -> Path:
    """Write the int8 graph of `fp32_onnx` to `out`, its activation ranges calibrated on `images` (each a
    preprocessed (1, S, S) model input). The fp32 file's metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="bonefrac-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))  # shapes for every tensor; BatchNorms folded
        graph = onnx.load(str(prepared)).graph
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(staged),
            _Batches(images),  # type: ignore[arg-type]  (the reader protocol, without the base class)
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
            nodes_to_exclude=fp32_nodes(graph),
            extra_options={"CalibMaxIntermediateOutputs": _CALIBRATION_CHUNK},
        )
        quantized = onnx.load(str(staged))
        metadata = {p.key: p.value for p in onnx.load(str(fp32_onnx), load_external_data=False).metadata_props}
        onnx.helper.set_model_props(quantized, {**metadata, "precision": VARIANT})
        part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        onnx.save(quantized, str(part))
        os.replace(part, out)
    return out


def ship_int8(
    checkpoint: str | Path,
    fp32_onnx: str | Path,
    calibration: Sequence[str | Path],
    spec_dict: dict[str, Any],
    info: dict[str, Any],
    images: Iterator[np.ndarray],
) -> Path:
    """Quantize beside the checkpoint (`model.int8.onnx`) with its `.sha256` and a `.json` sidecar naming the
    checkpoint, the settings and the calibration images; `record_parity` adds the parity later."""
    path = quantize_export(fp32_onnx, shipped_export_path(checkpoint, VARIANT), images)
    names = [Path(p).name for p in calibration]
    write_shipped_sidecars(path, INT8_SETTINGS, spec_dict, info, precision=VARIANT, calibration_images=names,
                           parity=None)  # fmt: skip
    return path


def record_parity(path: str | Path, parity: dict[str, Any]) -> None:
    """Store the measured parity (`evaluation.parity.compare`) in the int8 file's sidecar."""
    path = Path(path)
    meta = json.loads(Path(f"{path}.json").read_text())
    meta["parity"] = jsonable(parity)
    write_json(Path(f"{path}.json"), meta)


def read_int8(checkpoint: str | Path, sha256: str) -> tuple[Path, dict[str, Any]] | None:
    """The int8 export shipped beside the checkpoint with this digest, fresh, and its sidecar; None when there
    is none (`export.read_shipped_sidecar`)."""
    return read_shipped_sidecar(checkpoint, sha256, VARIANT, INT8_SETTINGS)
