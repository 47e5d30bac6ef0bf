"""ONNX export and the two inference backends (torch and onnxruntime) behind one `run(x)` call.

The exported graph takes a float32 batch (N, 1, S, S), already preprocessed by `transforms.preprocess`,
and returns `logit` (N,) and `cam` (N, h, w): the heatmap features travel as a second output so the
ONNX backend gives heatmaps too. onnxruntime runs these CNNs several times faster than eager torch on
CPU, so it is the default backend; the export is cached per checkpoint digest.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .models import FractureNet, ModelSpec

ONNX_OPSET = 17


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1, S, S) float32 -> (logits (N,), class-activation maps (N, h, w))."""
        ...


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

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cam = self.module(torch.from_numpy(x))
        return logits.numpy(), cam.numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.path = str(onnx_path)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cam = self.session.run(["logit", "cam"], {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return logits, cam


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


def onnx_cache_path(sha256: str) -> Path:
    from .data import default_cache_dir

    return default_cache_dir() / "onnx" / f"{sha256[:16]}.onnx"


def make_backend(model: FractureNet, spec: ModelSpec, sha256: str, name: str = "auto") -> Backend:
    """`torch`, `onnx`, or `auto` (onnx when onnxruntime imports: measured 3-6x faster on CPU)."""
    if name not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown backend {name!r}: choose onnx, torch or auto")
    if name == "torch":
        return TorchBackend(model)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if name == "onnx":
            raise
        return TorchBackend(model)
    path = onnx_cache_path(sha256)
    if not path.is_file():
        export_onnx(model, spec, path)
    return OnnxBackend(path)


def parity(model: FractureNet, onnx_path: str | Path, x: np.ndarray) -> float:
    """Max abs difference in probability between eager torch and onnxruntime on a batch."""
    p_torch = 1 / (1 + np.exp(-TorchBackend(model).run(x)[0]))
    p_onnx = 1 / (1 + np.exp(-OnnxBackend(onnx_path).run(x)[0]))
    return float(np.abs(p_torch - p_onnx).max())
