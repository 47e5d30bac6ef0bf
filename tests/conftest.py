"""Shared fixtures: the tiny FracAtlas-style dataset in tests/fixtures, the full dataset when present."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from make_variants import BASE_IMAGE, FIXTURES

FRACATLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracatlas"


@pytest.fixture(scope="session", autouse=True)
def _caches_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test writes to the user's home: bonefrac's cache (decode cache, ONNX exports) goes to a temporary
    folder, and so do the caches that libraries keep under ~/.cache and ~/.config (onnxruntime's device id,
    matplotlib's font list, Chromium's dconf). Session-scoped so that module-scoped detectors (set up before
    any function fixture) use it too; os.environ, so the subprocesses the CLI tests start inherit it. Tests
    that need an empty bonefrac cache set their own."""
    root = tmp_path_factory.mktemp("home")
    folders = {"BONEFRAC_CACHE": "bonefrac", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config"}
    with pytest.MonkeyPatch.context() as mp:
        for name, folder in folders.items():
            (root / folder).mkdir()
            mp.setenv(name, str(root / folder))
        yield root / "bonefrac"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: a FracAtlas-style dataset (labels.csv + images/) of 14 real radiographs."""
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_rows() -> list[dict[str, str]]:
    with open(FIXTURES / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def fracatlas_dir() -> Path:
    """The full development dataset next to the repository; the test is skipped when it is absent."""
    if not (FRACATLAS / "labels.csv").is_file() or not (FRACATLAS / "images").is_dir():
        pytest.skip(f"FracAtlas dataset not found at {FRACATLAS} (needs labels.csv and images/)")
    return FRACATLAS


@pytest.fixture(scope="session")
def grey() -> np.ndarray:
    """The base radiograph as 8-bit grey values (H, W) uint8, exactly as the reader returns it x 255."""
    from bonefrac.io import read_image

    pixels = read_image(FIXTURES / "images" / BASE_IMAGE).pixels
    out = np.round(pixels * 255).astype(np.uint8)
    assert np.abs(out / 255.0 - pixels).max() < 1e-6  # an 8-bit JPEG: values are exact multiples of 1/255
    return out
