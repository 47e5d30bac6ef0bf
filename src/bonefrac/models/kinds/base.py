"""What every model kind provides (`Kind`), and the output side they share: calibrated probabilities, the
display size of a heatmap, the detection limits.

A kind's decoding runs on numpy alone, so that predicting through onnxruntime imports no torch; its graph,
loss and training step import torch when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from bonefrac.preprocess import Geometry, resized_shape

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Detections scoring below this are dropped (whatever the decision, `Prediction.detections` keeps the rest).
DETECTION_FLOOR = 0.01
#: At most this many detections per image, best first.
MAX_DETECTIONS = 20
#: Long side of the heatmap (and of overlays) unless the full resolution is asked for: the heatmap is smooth
#: (upsampled from the feature grid), so a display-sized map carries all of it, in bounded memory.
DISPLAY_SIDE = 1600

HeatmapOption = bool | Literal["full"]


def probabilities(logits: np.ndarray | float, calibration: dict[str, float] | None = None) -> np.ndarray:
    """Fracture probabilities (float64) from raw logits z: sigmoid(scale * z + bias) with the model's
    calibration (`ModelSpec.calibration`), the plain logistic function without one."""
    a, b = (float(calibration["scale"]), float(calibration["bias"])) if calibration else (1.0, 0.0)
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(logits, dtype=np.float64) + b)))


def display_shape(height: int, width: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(height, width) scaled down so that the long side is at most `side`."""
    return (height, width) if max(height, width) <= side else resized_shape(height, width, side)


class Read(NamedTuple):
    """What one image's model outputs say, before the decision (`inference.decode.predictions` decides)."""

    logit: float
    probability: float
    detections: list[list[float]]
    peak: list[float]
    heatmap: np.ndarray | None


@dataclass
class StepContext:
    """What a training step needs from the loop besides the model and the batch.

    Attributes:
        world: processes training together (1 without torchrun).
        share: this rank's share of the global batch times `world` (1.0 for equal shards).
        sum_ints: element-wise sums over the ranks (`train.distributed.sum_ints`), for the loss's counts.
        pos_weight: the positive class's weight in the image cross-entropy (class balance).
        loc_weight: the weight of a classifier's box-supervision loss.
    """

    world: int
    share: float
    sum_ints: Callable[[list[int]], list[int]]
    pos_weight: torch.Tensor
    loc_weight: float = 0.0


class Kind:
    """A model kind. Subclasses set the attributes and implement the methods; `registry.KINDS` names them."""

    #: "classifier", "detector": the key in `registry.KINDS`, and `model_facts`' "kind".
    name: str
    #: The inference graph's outputs, in order: the backends' and the ONNX export's names.
    outputs: tuple[str, ...]
    #: What the outputs mean, for the ONNX file's `outputs` metadata (`{calibrated}`: `export` says how the
    #: logits become probabilities).
    outputs_doc: str
    #: The outputs `export.parity` compares as calibrated probabilities, and those it compares as they are.
    parity_as_probability: tuple[str, ...]
    parity_as_is: tuple[str, ...] = ()
    #: Trains on crops with dense targets (`train.detector.CropSampler`) rather than on whole images.
    trains_on_crops: bool = False
    #: Whole-image training can add the box-supervision loss of the heatmap (`loc_weight`).
    box_supervision: bool = False
    #: A line for the demo's legend about boxes and about the heatmap, where this kind's differ.
    box_note: str | None = None
    heatmap_note: str | None = None

    def decode(
        self, outputs: dict[str, np.ndarray], i: int, g: Geometry, calibration: dict[str, float], heatmap: HeatmapOption
    ) -> Read:
        """Image `i` of a batch's named `outputs` (numpy only), on the image as read."""
        raise NotImplementedError

    def export_module(self, model: nn.Module, size: int) -> nn.Module:
        """The module whose forward on (N, 1, size, size) gives `outputs`, in order (torch backend, ONNX)."""
        raise NotImplementedError

    def slow_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters trained at `backbone_lr_scale` of the learning rate (none by default)."""
        return []

    def training_step(
        self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor], ctx: StepContext
    ) -> tuple[torch.Tensor, float, float | None]:
        """Forward and loss on this rank's batch: (the loss to back-propagate, its value to log, the
        localisation part to log or None)."""
        raise NotImplementedError

    def validation_outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What validation keeps per image: (N,) raw image logits, or (N, 3) logits and the heatmap peak's
        (x, y) in input pixels (then the loop also scores the pointing game)."""
        raise NotImplementedError
