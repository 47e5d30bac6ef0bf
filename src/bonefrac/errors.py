"""Exceptions a user can cause. Caught once, at the CLI and server edges, and shown as one line."""

from __future__ import annotations


class BonefracError(Exception):
    """Base class for every error bonefrac raises on purpose."""


class ImageReadError(BonefracError):
    """The file is not an X-ray image bonefrac can read (empty, not an image, corrupt, unsupported)."""


class ImageTooLargeError(ImageReadError):
    """The image declares more pixels than `MAX_PIXELS`: refused before decoding (decompression bomb)."""


class DatasetError(BonefracError):
    """A dataset folder or CSV that does not follow any supported layout."""


class ModelLoadError(BonefracError):
    """A checkpoint that is missing, corrupt, or fails its SHA-256 check."""


class NotARadiographError(ImageReadError):
    """A readable image that is not what the model is for: another modality than projection radiography
    (CT, MR, ultrasound, ...) or too small to hold a radiograph (`modality.check_radiograph` decides)."""
