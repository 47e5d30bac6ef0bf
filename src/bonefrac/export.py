"""ONNX export, and the torch backend beside `runtime.OnnxBackend` behind one `run(x)` call.

The exported graph takes a float32 batch (N, 1, S, S), already preprocessed by `transforms.preprocess`,
and returns `logit` (N,) and `cam` (N, h, w): the heatmap features travel as a second output so the
ONNX backend gives heatmaps too. onnxruntime runs these CNNs several times faster than eager torch on
CPU, so it is the default backend; the export is cached per checkpoint digest (`runtime`).
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import FractureNet, ModelSpec
from .runtime import Backend, OnnxBackend, onnx_cache_path, onnxruntime_available, write_cache_meta

ONNX_OPSET = 17


class _LogitAndCam(torch.nn.Module):
    def __init__(self, model: FractureNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x, return_cam=True)


class TorchBackend:
    name = "torch"

    def __init__(self, model: FractureNet) -> None:
        self.module = _LogitAndCam(model.eval()).eval()
        # torch already spreads one call over every core; concurrent calls would only oversubscribe them.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            logits, cam = self.module(torch.from_numpy(x))
        return logits.numpy(), cam.numpy()

    def for_workers(self, workers: int) -> TorchBackend:
        return self  # calls are serialised instead (see __init__)

    def warm(self) -> None:
        pass  # the module is ready once built


def export_onnx(model: FractureNet, spec: ModelSpec, path: str | Path) -> Path:
    """Write the model as ONNX with a dynamic batch axis and the CAM as a second output (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dummy = torch.zeros(1, 1, spec.image_size, spec.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(
            _LogitAndCam(model.eval()).eval(),
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["logit", "cam"],
            dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}, "cam": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def cached_onnx(model: FractureNet, spec: ModelSpec, sha256: str, info: dict[str, Any]) -> Path:
    """The export of this checkpoint in the cache, made now if missing, with the spec and facts beside it
    (so later runs load it without torch)."""
    path = onnx_cache_path(sha256)
    try:
        if not path.is_file():
            export_onnx(model, spec, path)
        write_cache_meta(sha256, spec, {**info, "sha256": sha256})
    except OSError as e:  # a read-only home must not stop predictions: export for this run only
        tmp = Path(tempfile.mkdtemp(prefix="bonefrac-onnx-")) / path.name
        warnings.warn(
            f"cannot write the ONNX cache in {path.parent} ({e.strerror or e}); exported to {tmp.parent} for this "
            "run only (set BONEFRAC_CACHE to a writable folder)",
            stacklevel=2,
        )
        return export_onnx(model, spec, tmp)
    return path


def make_backend(
    model: FractureNet, spec: ModelSpec, sha256: str, name: str = "auto", info: dict[str, Any] | None = None
) -> Backend:
    """`torch`, `onnx`, or `auto` (onnx when onnxruntime imports: measured 3-6x faster on CPU)."""
    if name not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown backend {name!r}: choose onnx, torch or auto")
    if name == "torch" or (name == "auto" and not onnxruntime_available()):
        return TorchBackend(model)
    return OnnxBackend(cached_onnx(model, spec, sha256, info or {}))


def parity(model: FractureNet, onnx_path: str | Path, x: np.ndarray) -> float:
    """Max abs difference in probability between eager torch and onnxruntime on a batch."""
    p_torch = 1 / (1 + np.exp(-TorchBackend(model).run(x)[0]))
    p_onnx = 1 / (1 + np.exp(-OnnxBackend(onnx_path).run(x)[0]))
    return float(np.abs(p_torch - p_onnx).max())
