"""Shared by the benchmarks: where the real images are, and a Lite0 checkpoint to time."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "data" / "fracatlas"
FIXTURES = ROOT / "tests" / "fixtures"


def real_images(n: int) -> list[Path]:
    """n real radiographs: the FracAtlas folder when present, else the test fixtures repeated."""
    pool = sorted((DATASET / "images").glob("*.jpg")) or sorted((FIXTURES / "images").glob("*.jpg"))
    if not pool:
        sys.exit("no images found (need ../shared/data/fracatlas or tests/fixtures)")
    return [pool[i % len(pool)] for i in range(n)]


def bundled_or_fresh(tmp: Path, image_size: int = 256) -> Path:
    """The bundled model when it exists; otherwise an untrained Lite0 of the same shape (same speed)."""
    from bonefrac.models.checkpoint import bundled_model_path, save_model
    from bonefrac.models.registry import build_model
    from bonefrac.spec import ModelSpec

    if bundled_model_path().is_file():
        return bundled_model_path()
    spec = ModelSpec(image_size=image_size)
    path = tmp / "model.pt"
    save_model(build_model(spec, pretrained=False), spec, path)
    return path


def stored_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
