"""Small real models for tests: built and checkpointed in tmp dirs, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from bonefrac.checkpoint import save_model
from bonefrac.models import ModelSpec, build_model

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_IMAGES = sorted((FIXTURES / "images").glob("*.jpg"))


def make_checkpoint(
    path: Path, arch: str = "seed_cnn", image_size: int = 64, seed: int = 0, **spec_fields: float
) -> Path:
    """A randomly initialised (non-zero head) model saved as a bonefrac checkpoint; `spec_fields` (mean, std,
    ...) override the ModelSpec's defaults."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        arch=arch,
        image_size=image_size,
        operating_points={"default": 0.5, "high_sensitivity": 0.2, "high_specificity": 0.8},
        **spec_fields,
    )
    model = build_model(spec, pretrained=False)
    torch.nn.init.normal_(model.head.fc.weight, std=0.5)  # a zero head would give p = 0.5 everywhere
    save_model(model.eval(), spec, path, info={"model_version": f"test-{arch}-{image_size}"})
    return path
