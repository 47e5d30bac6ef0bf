"""`bonefrac evaluate`: run a model over a labelled dataset and write metrics.json, results.txt and plots.

The operating points come from the checkpoint (chosen on the validation split during training) and are
applied unchanged: they are never re-fit on the data being evaluated.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .data import Record, load_dataset, load_split
from .detector import FractureDetector, Prediction
from .errors import DatasetError
from .jsonable import jsonable
from .metrics import auc, auc_ci, localization_scores, operating_point_stats
from .report import write_plots, write_results_txt
from .runtime import DEFAULT_BATCH_SIZE


def select_records(dataset: str | Path, split_file: str | Path | None, subset: str | None) -> list[Record]:
    records = load_dataset(dataset)
    if split_file:
        split = load_split(Path(split_file))
        want = subset or "val"
        records = [r for r in records if split.get(r.key) == want]
        if not records:
            raise DatasetError(f"{split_file}: no images of subset {want!r} in {dataset}")
    return records


def compute_metrics(
    records: list[Record], preds: list[Prediction], operating_points: dict[str, float]
) -> dict[str, Any]:
    """Every number of the report, from labels and predictions alone."""
    y = np.array([r.label for r in records])
    p = np.array([q.probability for q in preds])
    m: dict[str, Any] = {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "auc": auc(y, p),
        "auc_ci95": auc_ci(y, p),
        "operating_points": {k: operating_point_stats(y, p, t) for k, t in operating_points.items()},
    }
    regions: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        regions.setdefault(r.region, []).append(i)
    m["per_region"] = {
        reg: {
            "n": len(ix),
            "n_positive": int(y[ix].sum()),
            "auc": auc(y[ix], p[ix]),
            "auc_ci95": auc_ci(y[ix], p[ix]),
        }
        for reg, ix in sorted(regions.items())
    }
    # The hardware shortcut: implants are almost always on fractured limbs in FracAtlas. Report the AUC
    # without them so a model leaning on implants is visible.
    no_hw = [i for i, r in enumerate(records) if r.hardware == 0]
    if no_hw and len(no_hw) < len(records):
        m["auc_without_hardware"] = {"n": len(no_hw), "auc": auc(y[no_hw], p[no_hw])}
    boxed = [i for i, r in enumerate(records) if r.label == 1 and r.boxes]
    if boxed:
        m["localization"] = localization_scores(
            [tuple(preds[i].peak) for i in boxed],
            [preds[i].boxes for i in boxed],
            [records[i].boxes for i in boxed],
        )
    return m


def evaluate(
    dataset: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str | None = None,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` (default: the bundled one) on `dataset`; write the report into `out`."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det = FractureDetector.load(model, backend=backend)
    records = select_records(dataset, split_file, subset)
    kept: list[Record] = []
    preds: list[Prediction] = []
    errors: dict[str, str] = {}
    stream = det.predict_many([r.path for r in records], batch_size=batch_size, workers=workers)
    for rec, res in tqdm(zip(records, stream, strict=True), total=len(records), desc="evaluate", disable=not progress):
        if isinstance(res, Prediction):
            kept.append(rec)
            preds.append(res)
        else:
            errors[rec.path] = res.error
    if len({r.label for r in kept}) < 2:
        raise DatasetError(f"{dataset}: evaluation needs readable images of both classes")
    metrics = compute_metrics(kept, preds, det.operating_points)
    metrics["model"] = {
        "version": det.version,
        "arch": det.spec.arch,
        "image_size": det.spec.image_size,
        "sha256": det.sha256,
        "validation": det.info.get("validation"),
    }
    metrics["dataset"] = {
        "path": str(dataset),
        "split_file": str(split_file) if split_file else None,
        "subset": subset if split_file else "all",
    }
    metrics["unreadable"] = errors
    metrics["bonefrac_version"] = __version__
    metrics = jsonable(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "probability", "region"])
        w.writerows([r.path, r.label, f"{q.probability:.6f}", r.region] for r, q in zip(kept, preds, strict=True))
    y = np.array([r.label for r in kept])
    p = np.array([q.probability for q in preds])
    write_plots(y, p, det.operating_points, out)
    write_results_txt(metrics, out / "results.txt")
    return metrics
