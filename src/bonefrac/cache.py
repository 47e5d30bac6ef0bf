"""Where bonefrac keeps what it can rebuild: decoded training images, ONNX exports."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$BONEFRAC_CACHE, else ~/.cache/bonefrac. Read at each call, so a test or a server can point it
    elsewhere after bonefrac was imported."""
    return Path(os.environ.get("BONEFRAC_CACHE") or Path.home() / ".cache" / "bonefrac")
