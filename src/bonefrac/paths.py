"""Where bonefrac's files live: what ships inside the package, and what it can rebuild (the user cache)."""

from __future__ import annotations

import os
from pathlib import Path

#: The installed package folder: the bundled weights and the example radiographs ship inside it.
PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
EXAMPLES_DIR = PACKAGE_DIR / "examples"


def cache_dir() -> Path:
    """$BONEFRAC_CACHE, else ~/.cache/bonefrac: decoded training images, ONNX exports. Read at each call, so a
    test or a server can point it elsewhere after bonefrac was imported."""
    return Path(os.environ.get("BONEFRAC_CACHE") or Path.home() / ".cache" / "bonefrac")
