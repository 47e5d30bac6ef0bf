"""bonefrac: find bone fractures in X-ray images.

from bonefrac import FractureDetector, read_image
det = FractureDetector.load()          # the bundled default model
pred = det.predict("hand.jpg")         # probability, decision, heatmap, boxes
"""

from __future__ import annotations

from bonefrac._version import __version__
from bonefrac.errors import BonefracError, DatasetError, ImageReadError, ImageTooLargeError, ModelLoadError
from bonefrac.inference.detector import FractureDetector
from bonefrac.io.image import XrayImage
from bonefrac.io.read import read_image
from bonefrac.results import Prediction, PredictionError, StudyResult
from bonefrac.spec import ModelSpec

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
    "StudyResult",
    "XrayImage",
    "__version__",
    "read_image",
]
