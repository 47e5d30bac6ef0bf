"""int8 against fp32 on a labelled split: the parity gates an int8 export must pass before "auto" runs it.

`bonefrac quantize` calibrates the int8 export on training images (`inference.quantize`), then runs both exports
over the validation images and compares what a user sees: the AUC, box AP@0.5 over fractured images, the
pointing game, and at each operating point the sensitivity, the specificity and the share of images that get
the same decision. The operating points and the calibration are the checkpoint's, applied to
int8 unchanged. The gates, and the measured parity, are stored in the int8 file's sidecar.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.datasets import Record
from bonefrac.errors import DatasetError
from bonefrac.evaluation.evaluate import compute_metrics, select_records
from bonefrac.inference.detector import FractureDetector
from bonefrac.inference.quantize import CALIBRATION_IMAGES, GATES
from bonefrac.preprocess import preprocess, read_for_model
from bonefrac.results import Prediction

CALIBRATION_SEED = 0


def figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The gated figures of one `compute_metrics` result, flat: auc, ap50_fractured, pointing_game and
    `<point>.sensitivity` / `<point>.specificity`."""
    out = {"auc": float(metrics["auc"])}
    if metrics.get("detection"):
        out["ap50_fractured"] = float(metrics["detection"]["ap50_fractured"])
    if metrics.get("localization"):
        out["pointing_game"] = float(metrics["localization"]["pointing_game"])
    for name, point in metrics["operating_points"].items():
        out[f"{name}.sensitivity"] = float(point["sensitivity"])
        out[f"{name}.specificity"] = float(point["specificity"])
    return out


def compare(
    records: list[Record], fp32: list[Prediction], int8: list[Prediction], operating_points: dict[str, float]
) -> dict[str, Any]:
    """Every gate's fp32 and int8 values, the difference, its limit and whether it holds; `passed` when all do."""
    a, b = (figures(compute_metrics(records, preds, operating_points)) for preds in (fp32, int8))
    rows = []
    for name, value in a.items():
        limit = GATES[name.rsplit(".", 1)[-1]]
        diff = b[name] - value
        rows.append({"figure": name, "fp32": value, "int8": b[name], "difference": diff, "limit": limit,
                     "holds": abs(diff) <= limit + 1e-12})  # fmt: skip
    p32, p8 = (np.array([p.probability for p in preds]) for preds in (fp32, int8))
    for name, threshold in operating_points.items():
        share = float(((p32 >= threshold) == (p8 >= threshold)).mean())
        rows.append({"figure": f"{name}.same_decisions", "fp32": 1.0, "int8": share, "difference": share - 1.0,
                     "limit": GATES["same_decisions"], "holds": share >= GATES["same_decisions"]})  # fmt: skip
    return {
        "images": len(records),
        "fractured": int(sum(r.label for r in records)),
        "max_probability_difference": float(np.abs(p32 - p8).max()),
        "gates": rows,
        "passed": all(r["holds"] for r in rows),
    }


def measure(records: list[Record], fp32: FractureDetector, int8: FractureDetector) -> dict[str, Any]:
    """Run both over `records` (every image must read) and `compare`."""
    paths = [r.path for r in records]
    runs = []
    for det in (fp32, int8):
        preds = list(det.predict_many(paths))
        bad = [p for p in preds if not isinstance(p, Prediction)]
        if bad:
            raise DatasetError(f"{bad[0].path}: {bad[0].error} (the parity check needs every image to read)")
        runs.append(preds)
    return compare(records, runs[0], runs[1], fp32.operating_points)


def calibration_paths(records: list[Record], n: int = CALIBRATION_IMAGES) -> list[str]:
    """A fixed random `n` of `records` (seeded: the same images every time), fractured and not alike."""
    paths = sorted(r.path for r in records)
    return random.Random(CALIBRATION_SEED).sample(paths, min(n, len(paths)))


def quantize_with_parity(
    dataset: str | Path,
    model: str | Path | None,
    split_file: str | Path,
    calibration_subset: str = "train",
    parity_subset: str = "val",
    n_images: int = CALIBRATION_IMAGES,
) -> tuple[Path, dict[str, Any]]:
    """`bonefrac quantize`: the checkpoint's int8 export beside it, calibrated on `n_images` of the split's
    `calibration_subset`, its parity measured on `parity_subset` and recorded; (int8 file, parity)."""
    from bonefrac.inference.backends import OnnxBackend
    from bonefrac.inference.quantize import record_parity, ship_int8

    det = FractureDetector.load(model, backend="onnx", precision="fp32")
    calibration = calibration_paths(select_records(dataset, split_file, calibration_subset), n_images)
    held_out = select_records(dataset, split_file, parity_subset)
    if set(calibration) & {r.path for r in held_out}:
        raise DatasetError(f"the {calibration_subset} and {parity_subset} subsets share images")

    def images() -> Iterator[np.ndarray]:
        for p in calibration:
            yield preprocess(read_for_model(p, det.spec), det.spec)[0]

    assert det.checkpoint is not None and isinstance(det.backend, OnnxBackend)
    spec = det.spec.to_dict()
    path = ship_int8(det.checkpoint, det.backend.path, calibration, spec, det.info, images())
    int8 = FractureDetector(det.spec, OnnxBackend(path), det.info, det.checkpoint)
    int8.precision = "int8"
    parity = {**measure(held_out, det, int8), "subset": parity_subset, "calibration_subset": calibration_subset}
    record_parity(path, parity)
    return path, parity


def summary(parity: dict[str, Any]) -> str:
    """The gates as a few lines for the terminal."""
    lines = [f"int8 against fp32 on {parity['images']} images ({parity['fractured']} fractured):"]
    for r in parity["gates"]:
        mark = "ok  " if r["holds"] else "FAIL"
        lines.append(f"  {mark} {r['figure']:<30} fp32 {r['fp32']:.4f}  int8 {r['int8']:.4f}  "
                     f"difference {r['difference']:+.4f} (limit {r['limit']})")  # fmt: skip
    lines.append("parity: " + ("passed" if parity["passed"] else "FAILED: `--precision auto` keeps fp32"))
    return "\n".join(lines)
