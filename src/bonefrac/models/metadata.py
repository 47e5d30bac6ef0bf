"""What a model is, as plain JSON: the facts shown by `/api/model`, written into metrics.json and carried by
an ONNX export's `metadata_props`; and `jsonable`, which makes any such dict strict JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.spec import ModelSpec

# Training-config keys that are paths on the training machine: not a fact about the model, not for others.
_PRIVATE_CONFIG_KEYS = {"out", "cache_dir"}
_PATH_CONFIG_KEYS = {"dataset", "split_file", "init_from"}


def model_facts(spec: ModelSpec, info: dict[str, Any], version: str, sha256: str) -> dict[str, Any]:
    """The model's identity, kind, input, operating points, calibration, training summary and validation figures.

    `info` comes from whatever trained the checkpoint: any key may be missing or oddly typed, so every
    field is read defensively; paths of the training machine are reduced to their base names."""
    info = info if isinstance(info, dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else None
    if config is not None:
        config = {
            k: (_basename(v) if k in _PATH_CONFIG_KEYS else v)
            for k, v in config.items()
            if k not in _PRIVATE_CONFIG_KEYS
        }
    digests = info.get("image_digests") if isinstance(info.get("image_digests"), dict) else {}
    return jsonable(
        {
            "version": version,
            "arch": spec.arch,
            "image_size": spec.image_size,
            "sha256": sha256,
            "kind": "detector" if spec.is_detector else "classifier",
            "operating_points": dict(spec.operating_points),
            # Platt scaling of the image logit, and what it was fitted on (`bonefrac calibrate`).
            "calibration": {
                **dict(spec.calibration),
                "fitted": info.get("calibration") if isinstance(info.get("calibration"), dict) else None,
            },
            "training": {
                "dataset": _basename(info.get("dataset")),
                "n_train": info.get("n_train"),
                "n_val": info.get("n_val"),
                "trained_epochs": info.get("trained_epochs"),
                "bonefrac_version": info.get("bonefrac_version"),
                "config": config,
                "image_digests": {k: len(v) for k, v in digests.items() if isinstance(v, list)} or None,
            },
            "validation": info.get("validation") if isinstance(info.get("validation"), dict) else None,
        }
    )


def jsonable(obj: Any) -> Any:
    """Plain JSON types only: numpy scalars become Python numbers, NaN/inf become null (strict JSON, and
    Starlette refuses them), anything else unknown becomes its string."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def _basename(value: Any) -> str | None:
    return Path(str(value)).name if value else None
