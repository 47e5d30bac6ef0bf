"""bonefrac: find bone fractures in X-ray images.

from bonefrac import FractureDetector, read_image
det = FractureDetector.load()          # the bundled default model
pred = det.predict("hand.jpg")         # probability, decision, heatmap, boxes
"""

from __future__ import annotations

__version__ = "0.1.0"

from .detector import FractureDetector, Prediction, PredictionError  # noqa: E402
from .errors import BonefracError, DatasetError, ImageReadError, ImageTooLargeError, ModelLoadError  # noqa: E402
from .io import XrayImage, read_image  # noqa: E402
from .spec import ModelSpec  # noqa: E402

__all__ = [
    "BonefracError",
    "DatasetError",
    "FractureDetector",
    "ImageReadError",
    "ImageTooLargeError",
    "ModelLoadError",
    "ModelSpec",
    "Prediction",
    "PredictionError",
    "XrayImage",
    "__version__",
    "read_image",
]
