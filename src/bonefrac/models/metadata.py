"""What a model is, as plain JSON: the facts shown by `/api/model`, written into metrics.json and carried by
an ONNX export's `metadata_props`; and `jsonable`, which makes any such dict strict JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.models.registry import kind_of
from bonefrac.spec import ModelSpec

# Training-config keys that are paths on the training machine: not a fact about the model, not for others.
_PRIVATE_CONFIG_KEYS = {"out", "cache_dir"}
_PATH_CONFIG_KEYS = {"dataset", "split_file", "init_from"}


def model_facts(spec: ModelSpec, info: dict[str, Any], version: str, sha256: str) -> dict[str, Any]:
    """The model's identity, kind, input, operating points, calibration, training summary and validation figures.

    `info` comes from whatever trained the checkpoint: any key may be missing or oddly typed, so every
    field is read defensively; paths of the training machine are reduced to their base names. The validation
    figures of an operating point are shown only when they were measured at the threshold the model uses
    (`measured_operating_points`): a checkpoint recalibrated after its validation keeps its old figures, which
    belong to other thresholds."""
    info = without_machine_paths(info if isinstance(info, dict) else {})
    digests = info.get("image_digests") if isinstance(info.get("image_digests"), dict) else {}
    validation = info.get("validation") if isinstance(info.get("validation"), dict) else None
    fitted = info.get("calibration") if isinstance(info.get("calibration"), dict) else None
    if validation is not None:
        measured = measured_operating_points(spec.operating_points, info)
        validation = {
            **validation,
            "operating_points": {k: v for k, v in measured.items() if v is not None},
            "not_measured": [k for k, v in measured.items() if v is None],
        }
    return jsonable(
        {
            "version": version,
            "arch": spec.arch,
            "image_size": spec.image_size,
            "sha256": sha256,
            "kind": kind_of(spec.arch),
            "operating_points": dict(spec.operating_points),
            # Platt scaling of the image logit, and what it was fitted on (`bonefrac calibrate`).
            "calibration": {**dict(spec.calibration), "fitted": fitted},
            "training": {
                "dataset": info.get("dataset"),
                "n_train": info.get("n_train"),
                "n_val": info.get("n_val"),
                "trained_epochs": info.get("trained_epochs"),
                "bonefrac_version": info.get("bonefrac_version"),
                "config": info.get("config"),
                "image_digests": {k: len(v) for k, v in digests.items() if isinstance(v, list)} or None,
            },
            "validation": validation,
        }
    )


def measured_operating_points(operating_points: Mapping[str, float], info: dict[str, Any]) -> dict[str, Any]:
    """For each operating point in use, the validation figures measured at its threshold, or None.

    Looked up by threshold, not by name, in info["validation"]["operating_points"] (what `train` or
    `calibrate` measured) and then info["calibration"]["at_operating_points"]: a name says nothing about the
    threshold its figures were measured at. Thresholds match to a relative 1e-9 (a float64 written and read
    back is exact; the slack only forgives a round trip through float32 or JSON printing)."""
    sources = []
    for block in (info.get("validation"), info.get("calibration")):
        ops = None
        if isinstance(block, dict):
            ops = block.get("operating_points") or block.get("at_operating_points")
        if isinstance(ops, dict):
            sources += [v for v in ops.values() if isinstance(v, dict) and _is_number(v.get("threshold"))]
    out: dict[str, Any] = {}
    for name, t in operating_points.items():
        out[name] = next((dict(s) for s in sources if math.isclose(s["threshold"], t, rel_tol=1e-9)), None)
    return out


def without_machine_paths(info: dict[str, Any]) -> dict[str, Any]:
    """`info` fit to travel with the weights: no path of the machine that trained or calibrated the model.

    The training config's output and cache folders go; the dataset, split file and initial checkpoint keep
    their base names (a dataset is identified by its name and the content digests of its images, not by where
    it lay); the same for the dataset names of the training and calibration records."""
    out = dict(info)
    if isinstance(out.get("config"), dict):
        out["config"] = {
            k: (_basename(v) if k in _PATH_CONFIG_KEYS else v)
            for k, v in out["config"].items()
            if k not in _PRIVATE_CONFIG_KEYS
        }
    if "dataset" in out:
        out["dataset"] = _basename(out["dataset"])
    if isinstance(out.get("calibration"), dict):
        out["calibration"] = {
            k: (_basename(v) if k in ("fitted_on", "split_file") else v) for k, v in out["calibration"].items()
        }
    return out


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


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
