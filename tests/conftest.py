"""Shared fixtures: the tiny FracAtlas-style dataset in tests/fixtures, the full dataset when present, and the
session's tiny models and training run, each made once and shared read-only (a test that changes one copies it:
`_models.copy_checkpoint`, `shutil.copytree`)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from make_variants import BASE_IMAGE, FIXTURES

FRACATLAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracatlas"


#: Where libraries keep caches and settings under the home folder by default (onnxruntime's device id,
#: matplotlib's font list, Chromium's dconf and crash reports, the notebook kernel's IPython profile).
LIBRARY_HOME_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "IPYTHONDIR")
_saved_environ: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """No test writes to the user's home. The libraries' folders are moved here, before collection: importing
    a test module imports matplotlib, which settles its cache folder there and then."""
    root = Path(tempfile.mkdtemp(prefix="bonefrac-tests-home-"))
    _saved_environ.update({name: os.environ.get(name) for name in LIBRARY_HOME_DIRS})
    _saved_environ["_root"] = str(root)
    for name in LIBRARY_HOME_DIRS:
        (root / name.lower()).mkdir()
        os.environ[name] = str(root / name.lower())


def pytest_unconfigure(config: pytest.Config) -> None:
    root = _saved_environ.pop("_root", None)
    for name, value in _saved_environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if root:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _caches_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bonefrac's cache (decode cache, ONNX exports) in a temporary folder, not ~/.cache/bonefrac.
    Session-scoped so that module-scoped detectors (set up before any function fixture) use it too;
    os.environ, so the subprocesses the CLI tests start inherit it. Tests that need an empty cache set their own."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("bonefrac-cache")
        mp.setenv("BONEFRAC_CACHE", str(folder))
        # fp32 unless a test asks otherwise: the references are fp32's, and "auto" would run int8 on one machine
        # and fp32 on another (`inference.precision`); the int8 tests ask for it.
        mp.setenv("BONEFRAC_PRECISION", "fp32")
        yield folder


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
    from bonefrac.io.read import read_image

    pixels = read_image(FIXTURES / "images" / BASE_IMAGE).pixels
    out = np.round(pixels * 255).astype(np.uint8)
    assert np.abs(out / 255.0 - pixels).max() < 1e-6  # an 8-bit JPEG: values are exact multiples of 1/255
    return out


# ---------------------------------------------------------------- the session's tiny models, made once
@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random seed_cnn at 64 px (`make_checkpoint`'s defaults). Shared: copy it before changing it."""
    from _models import make_checkpoint  # imports torch: only for the tests that ask

    return make_checkpoint(tmp_path_factory.mktemp("tiny-classifier") / "model.pt")


@pytest.fixture(scope="session")
def tiny_lite0(tmp_path_factory: pytest.TempPathFactory, _caches_outside_home: Path) -> Path:
    """A random efficientnet_lite0 classifier at 96 px, exported to ONNX once: every later load of this path finds
    the export in the session's cache. Shared: copy it before changing it."""
    from _models import make_checkpoint

    from bonefrac import FractureDetector

    path = make_checkpoint(tmp_path_factory.mktemp("tiny-lite0") / "model.pt", arch="efficientnet_lite0", image_size=96)
    FractureDetector.load(path, backend="onnx")
    return path


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory, _caches_outside_home: Path) -> Path:
    """A random lite0_centernet detector at 96 px, exported to ONNX once (as `tiny_lite0`). Shared: copy it
    before changing it."""
    from _models import make_checkpoint

    from bonefrac import FractureDetector

    path = make_checkpoint(tmp_path_factory.mktemp("tiny-detector") / "model.pt", arch="lite0_centernet", image_size=96)
    FractureDetector.load(path, backend="onnx")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `bonefrac train` run folder (seed_cnn, 64 px, 4 epochs: _models.TINY_RUN_ARGS) on the fixtures,
    trained once for the session in a subprocess, as a user runs it. Shared: tests that resume, overwrite or
    otherwise write into a run copy it first (`shutil.copytree(tiny_run, tmp_path / "run")`)."""
    from _models import TINY_RUN_ARGS

    root = tmp_path_factory.mktemp("tiny-run")
    out, cache = root / "run", root / "cache"
    cmd = [sys.executable, "-m", "bonefrac", "train", str(FIXTURES), "--out", str(out), "--cache-dir", str(cache)]
    r = subprocess.run([*cmd, *TINY_RUN_ARGS], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out
