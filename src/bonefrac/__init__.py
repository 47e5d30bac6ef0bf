"""bonefrac: find bone fractures in X-ray images."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BonefracError, ImageReadError, ImageTooLargeError  # noqa: E402
from .io import XrayImage, read_image  # noqa: E402

__all__ = ["BonefracError", "ImageReadError", "ImageTooLargeError", "XrayImage", "read_image", "__version__"]
