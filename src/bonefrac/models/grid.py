"""The detector's output grid, torch-free: shared by the network that builds its head on it (`centernet`), the
decoding of its outputs (`kinds.detector`) and the training targets (`train.detector`)."""

from __future__ import annotations

#: Input pixels per cell of the detector's heatmap (its head sits on the stride-8 level of the pyramid).
STRIDE = 8
#: Architectures whose head sits on another level (issue 24 point 3: a finer grid for small fractures).
STRIDES = {"lite0_centernet_s4": 4}


def stride_of(arch: str) -> int:
    """Input pixels per heatmap cell of a detector architecture."""
    return STRIDES.get(arch, STRIDE)


def stride_for(input_size: int, cells: int) -> int:
    """The stride of a heatmap of `cells` columns on a square input of `input_size` pixels (decoding reads it
    from the outputs, so that it serves every architecture and the ONNX export alike)."""
    return input_size // cells
