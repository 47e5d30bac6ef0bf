"""`ModelSpec`: everything a checkpoint needs to rebuild its model and prepare its input.

Kept free of torch so that inference through onnxruntime (`bonefrac predict`) starts without importing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Images whose long side is at least this many times the model input are read and box-reduced by 2, 4 or 8
#: before the resize (`transforms.reduction_factor`); models record the value they were trained with
#: (`ModelSpec.reduce_from`).
REDUCE_FROM = 4
#: The value for checkpoints from before `ModelSpec.reduce_from` existed: only very large images reduced.
LEGACY_REDUCE_FROM = 8

#: Default decision thresholds before a model has been calibrated on a validation split.
DEFAULT_OPERATING_POINTS = {"default": 0.5, "high_sensitivity": 0.3, "high_specificity": 0.7}


@dataclass
class ModelSpec:
    """What a checkpoint needs to rebuild the model and prepare its input (nanoGPT-style config).

    Attributes:
        arch: a key of `models.registry.ARCHS` (which also says its kind: `registry.kind_for(spec)`).
        image_size: side of the square, letterboxed model input, in pixels.
        mean, std: intensity normalisation applied after per-image min-max scaling to [0, 1].
        operating_points: name -> probability threshold, chosen on the validation split.
        drop_rate: dropout before the classifier (training only).
        drop_path_rate: stochastic depth in MBConv blocks (training only).
        reduce_from: images with a long side of at least reduce_from x image_size are box-reduced by 2, 4
            or 8 before the resize (`transforms.reduction_factor`); part of the preprocessing the model was trained
            with, so it travels with it (checkpoints without it: 8).
        calibration: Platt scaling of the image logit z, probability = sigmoid(scale * z + bias), fitted on
            validation images (`bonefrac calibrate`); the identity until fitted.
        ood: the out-of-distribution statistics (`models.ood.OodGaussian.to_dict`: plain lists and numbers),
            fitted on the training images' `ood_features` and thresholded on validation; None for models
            without them (classifiers, older checkpoints): their predictions carry no ood_score.
    """

    arch: str = "efficientnet_lite0"
    image_size: int = 256
    mean: float = 0.5
    std: float = 0.5
    operating_points: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_OPERATING_POINTS))
    drop_rate: float = 0.2
    drop_path_rate: float = 0.1
    reduce_from: int = REDUCE_FROM
    calibration: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "bias": 0.0})
    ood: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known.setdefault("reduce_from", LEGACY_REDUCE_FROM)  # trained before the field: only >= 8x reduced
        return cls(**known)
