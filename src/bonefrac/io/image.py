"""`XrayImage`, what every reader returns, and what the readers share: warnings, size limits.

The readers (`io` for JPEG/PNG and dispatch, `dicom` for DICOM) import from here and never from each
other, so there is no import cycle between them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bonefrac.errors import ImageReadError, ImageTooLargeError

#: Largest image accepted, in pixels (width x height of one frame). Checked from the header, before any
#: decoding, so a decompression bomb costs nothing. 80 MP is well above any plain radiograph
#: (a 43x43 cm detector at 100 um is 18 MP) and far below what would exhaust memory.
MAX_PIXELS = 80_000_000

#: DICOM photometric interpretations the reader turns into grey (colour ones through ITU-R 601 luma).
DICOM_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")


class ImageReadWarning(UserWarning):
    """A file was read, but something about it deserves a look (truncated JPEG, extra frames)."""


@dataclass(eq=False)
class XrayImage:
    """A radiograph as read from disk.

    Attributes:
        pixels: float32 array (H, W) in [0, 1], higher = brighter (bone), orientation as displayed.
            A read at reduced scale (`read_image(reduce=...)`) holds the reduced pixels.
        meta: format, width, height (the full size, as displayed), bit_depth, reduced_by (when read at
            reduced scale), warnings, and for DICOM photometric, body_part, modality, sop_class_uid, frames.
            Never patient identifiers.
        path: where it came from, if it came from a file.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def height(self) -> int:
        """Rows of `pixels` (of the reduced image, for a reduced read; the full size is in `meta`)."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns of `pixels` (see `height`)."""
        return int(self.pixels.shape[1])

    def __repr__(self) -> str:
        return f"XrayImage({self.height}x{self.width}, path={self.path!r}, meta={self.meta!r})"


def warn(meta: dict[str, Any], message: str, stacklevel: int = 2) -> None:
    """Warn library users, and keep the message in `meta["warnings"]`: batch prediction reads files in
    threads, where catching `warnings` is not thread-safe, and reports these per file instead."""
    meta.setdefault("warnings", []).append(message)
    warnings.warn(message, ImageReadWarning, stacklevel=stacklevel + 1)


def check_size(width: int, height: int, name: str) -> None:
    """Refuse absurd declared sizes before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{name}: declares an empty image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} "
            "(bonefrac.io.image.MAX_PIXELS); refused before decoding"
        )
