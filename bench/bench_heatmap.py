"""The heatmap's cost: upsampling the class-activation map inside the ONNX graph three ways, and the boxes.

    python bench/bench_heatmap.py

Prints onnxruntime's time (one thread, batches of 2 maps of 8 x 8 onto 256 x 256) for its cubic Resize, its
linear Resize and the two matrix products of `models.bicubic_weights` that bonefrac's graph uses, each with its
largest difference from torch's bicubic `interpolate`; then `postprocess.boxes_from_heatmap` per image.
"""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from bonefrac.models.classifier import bicubic_weights
from bonefrac.models.kinds.classifier import boxes_from_heatmap, normalize_heatmap


class Resize(torch.nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, cam: torch.Tensor) -> torch.Tensor:
        return F.interpolate(cam[:, None], size=(256, 256), mode=self.mode, align_corners=False)[:, 0]


class Products(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", bicubic_weights(8, 256))

    def forward(self, cam: torch.Tensor) -> torch.Tensor:
        return self.w @ cam @ self.w.T


def per_call_ms(fn, repeat: int = 200) -> float:  # noqa: ANN001 (a zero-argument callable)
    fn()
    t0 = time.thread_time()
    for _ in range(repeat):
        fn()
    return (time.thread_time() - t0) / repeat * 1000


def main() -> None:
    cams = torch.randn(2, 8, 8)
    reference = Resize("bicubic")(cams).numpy()
    for name, module in (
        ("cubic Resize", Resize("bicubic")),
        ("linear Resize", Resize("bilinear")),
        ("matmul", Products()),
    ):
        buf = io.BytesIO()
        torch.onnx.export(module, (cams,), buf, input_names=["c"], output_names=["o"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        x = cams.numpy()
        ms = per_call_ms(lambda s=session, x=x: s.run(None, {"c": x}))
        diff = float(np.abs(session.run(None, {"c": x})[0] - reference).max())
        print(f"{name:<14} {ms:7.3f} ms per batch of 2   max |difference from torch bicubic| {diff:.1e}")
    heat = normalize_heatmap(reference[0][:, 23:233])  # a letterboxed 454 x 373 image's content
    print(f"boxes_from_heatmap: {per_call_ms(lambda: boxes_from_heatmap(heat, 0.5), 1000):.3f} ms per image")


if __name__ == "__main__":
    main()
