"""Small real models for tests: built and checkpointed in tmp dirs, never downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from bonefrac.models.checkpoint import save_model
from bonefrac.models.registry import build_model, kind_of
from bonefrac.results import Prediction
from bonefrac.spec import ModelSpec

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_IMAGES = sorted((FIXTURES / "images").glob("*.jpg"))


def make_checkpoint(
    path: Path, arch: str = "seed_cnn", image_size: int = 64, seed: int = 0, **spec_fields: Any
) -> Path:
    """A randomly initialised (non-zero head) model saved as a bonefrac checkpoint; `spec_fields` (mean, std,
    calibration, ...) override the ModelSpec's defaults. `arch` "lite0_centernet" makes a detector."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        arch=arch,
        image_size=image_size,
        operating_points={"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8},
        **spec_fields,
    )
    model = build_model(spec, pretrained=False)
    if kind_of(spec.arch) == "detector":  # the dense head's last layers: spread-out centre scores, boxes of a few cells
        torch.nn.init.normal_(model.heatmap[-1].weight, std=4.0)
        torch.nn.init.constant_(model.heatmap[-1].bias, 0.0)
        torch.nn.init.normal_(model.size[-1].weight, std=0.05)
        torch.nn.init.constant_(model.size[-1].bias, 0.7)  # about 2 cells (16 input pixels)
        torch.nn.init.normal_(model.offset[-1].weight, std=0.05)
        torch.nn.init.constant_(model.offset[-1].bias, 0.5)
    else:
        torch.nn.init.normal_(model.head.fc.weight, std=0.5)  # a zero head would give p = 0.5 everywhere
    save_model(model.eval(), spec, path, info={"model_version": f"test-{arch}-{image_size}"})
    return path


#: `bonefrac train` settings of the tiny training runs (tests/train/test_loop.py and the session's `tiny_run`).
TINY_TRAIN_ARGS = ["--arch", "seed_cnn", "--image-size", "64", "--batch-size", "4", "--val-fraction", "0.34"]
#: The session's `tiny_run` (tests/conftest.py): 4 epochs, the 454 px fixtures read at 1/2.
TINY_RUN_EXTRA = ["--epochs", "4", "--reduce-from", "2"]
TINY_RUN_ARGS = [*TINY_TRAIN_ARGS, *TINY_RUN_EXTRA, "--no-progress"]


def copy_checkpoint(source: Path, folder: Path) -> Path:
    """A copy of a shared (session) checkpoint and its .sha256 sidecar in `folder`, for a test that changes it."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (source, source.with_name(source.name + ".sha256")):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    return folder / source.name


def prediction(
    probability: float,
    detections: list[list[float]],
    peak: tuple[float, float] = (15.0, 15.0),
    operating_points: dict[str, float] | None = None,
) -> Prediction:
    """A hand-made detector result on a 100 x 100 image for the metric tests: decided at each of
    `operating_points` (default: "default" at 0.5), its `boxes` the detections when the default point says
    fractured."""
    points = operating_points or {"default": 0.5}
    fractured = probability >= points["default"]
    return Prediction(
        path=None,
        probability=probability,
        fractured=fractured,
        threshold=points["default"],
        operating_point="default",
        operating_points={name: probability >= t for name, t in points.items()},
        boxes=detections if fractured else [],
        model_version="test",
        width=100,
        height=100,
        peak=list(peak),
        detections=detections,
    )
