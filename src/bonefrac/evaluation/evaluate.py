"""`bonefrac evaluate`: run a model over a labelled dataset and write report.html, metrics.json, results.txt
and plots.

The operating points come from the checkpoint (chosen on the validation split during training) and are
applied unchanged: they are never re-fit on the data being evaluated.

A model trained by bonefrac lists the content digests of its training and validation images. Evaluation
counts how many of the evaluated images are among them (`overlap`) and puts the figures of the unseen ones
first: figures over images a model was trained on flatter it, however they are named or wherever copied.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac._version import __version__
from bonefrac.datasets import Record, content_digest, detect_layout, load_dataset, load_split
from bonefrac.errors import DatasetError
from bonefrac.evaluation.detection import detection_scores
from bonefrac.evaluation.html import write_report_html
from bonefrac.evaluation.metrics import (
    auc_verdict,
    calibration,
    discrimination,
    localization_by_box_size,
    localization_scores,
    sensitivity_at_specificity,
)
from bonefrac.evaluation.report import write_froc_plot, write_plots, write_results_txt
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE
from bonefrac.inference.detector import FractureDetector
from bonefrac.models.metadata import jsonable
from bonefrac.results import Prediction

#: Overlap groups, in the order they are reported: the unbiased one first.
GROUPS = ("unseen", "validation", "train")


def select_records(
    dataset: str | Path,
    split_file: str | Path | None,
    subset: str | None,
    fracture_classes: Sequence[str] | None = None,
) -> list[Record]:
    """The labelled images to evaluate or calibrate on: with `split_file`, its `subset` (default val); for a
    YOLO dataset, which carries its own subsets, the data.yaml's `subset` (default val, or every image when it
    has none; "all": every subset); else every image. `fracture_classes`: the COCO/YOLO categories that mean
    fracture."""
    if not split_file and detect_layout(dataset)[0] == "yolo":
        records = load_dataset(dataset, fracture_classes=fracture_classes)  # each record knows its subset
        present = {r.subset for r in records}
        want = subset or ("val" if "val" in present else "all")
        if want != "all":
            if want not in present:
                raise DatasetError(f"{dataset}: no {want!r} subset (it has {', '.join(sorted(present))})")
            records = [r for r in records if r.subset == want]
        return records
    records = load_dataset(dataset, fracture_classes=fracture_classes)
    if split_file:
        want = subset or "val"
        subsets = split_subsets(records, load_split(Path(split_file)), split_file)
        records = [r for r, s in zip(records, subsets, strict=True) if s == want]
        if not records:
            raise DatasetError(f"{split_file}: no images of subset {want!r} in {dataset}")
    return records


def split_subsets(records: list[Record], split: dict[str, str], where: str | Path = "split") -> list[str | None]:
    """Each record's subset in `split` (None when it is not in it).

    A split file is keyed by the `Record.key` of the dataset it was made from (a FracAtlas file name, a path
    relative to a class-folder root, a CSV path as written). A record whose own key is not there is matched
    by the longest trailing part of its path that is: a CSV of absolute paths into the FracAtlas folder finds
    that folder's split. Two records matched to one key is an error, not a guess.
    """
    subsets: list[str | None] = []
    claimed: dict[str, str] = {}
    for r in records:
        key = r.key if r.key in split else _tail_in(Path(r.path).parts, split)
        if key is not None and key != r.key:
            if key in claimed:
                raise DatasetError(f"{where}: {key!r} matches both {claimed[key]} and {r.path}")
            claimed[key] = r.path
        subsets.append(split.get(key) if key is not None else None)
    return subsets


def _tail_in(parts: tuple[str, ...], split: dict[str, str]) -> str | None:
    for i in range(len(parts)):
        tail = "/".join(parts[i:])
        if tail in split:
            return tail
    return None


def overlap_groups(records: list[Record], image_digests: Any) -> list[str] | None:
    """The overlap group ("train", "validation" or "unseen") of each record, by its content digest; None when the
    model does not list its images (trained before bonefrac recorded them)."""
    if not isinstance(image_digests, dict):
        return None
    train = set(image_digests.get("train") or ())
    val = set(image_digests.get("validation") or ())
    groups = []
    for r in records:
        d = content_digest(r.path)
        groups.append("train" if d in train else "validation" if d in val else "unseen")
    return groups


def compute_metrics(
    records: list[Record],
    preds: list[Prediction],
    operating_points: dict[str, float],
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Every number of the report, from labels, predictions and (when known) each image's overlap group."""
    y = np.array([r.label for r in records])
    p = np.array([q.probability for q in preds])
    m: dict[str, Any] = {}
    if groups is None:
        m["overlap"] = m["by_overlap"] = None
    else:
        g = np.array(groups)
        m["overlap"] = {name: int((g == name).sum()) for name in ("train", "validation", "unseen")}
        m["by_overlap"] = {
            name: discrimination(y[g == name], p[g == name], operating_points) for name in GROUPS if (g == name).any()
        }
    m.update(discrimination(y, p, operating_points))
    # Read off the ROC at a fixed specificity: it compares models without any operating point of their own.
    m["sensitivity_at_specificity"] = sensitivity_at_specificity(y, p)
    m["calibration"] = calibration(y, p)
    m["verdict"] = verdict(m)
    regions: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        regions.setdefault(r.region, []).append(i)
    m["per_region"] = {reg: discrimination(y[ix], p[ix], operating_points) for reg, ix in sorted(regions.items())}
    # The hardware shortcut: implants are almost always on fractured limbs in FracAtlas. Report the AUC
    # without them so a model leaning on implants is visible.
    no_hw = [i for i, r in enumerate(records) if r.hardware == 0]
    if no_hw and len(no_hw) < len(records):
        m["auc_without_hardware"] = discrimination(y[no_hw], p[no_hw], operating_points)
    boxed = [i for i, r in enumerate(records) if r.label == 1 and r.boxes]
    if boxed:
        located = (
            [tuple(preds[i].peak) for i in boxed],
            [preds[i].boxes for i in boxed],
            [records[i].boxes for i in boxed],
        )
        m["localization"] = localization_scores(*located)
        m["localization"]["by_box_size"] = localization_by_box_size(*located)
        # Detection: over the images whose boxes are known, those without a fracture (nothing to find: their
        # detections are false positives) and the fractured ones with boxes. A fractured image without boxes
        # is left out (counted): its detections are neither right nor wrong as far as anyone can tell.
        known = [i for i, r in enumerate(records) if r.boxes or r.label == 0]
        m["detection"], m["froc_curve"] = detection_scores(
            [records[i].boxes for i in known], [detections(preds[i]) for i in known]
        )
        m["detection"]["n_fractured_without_boxes"] = len(records) - len(known)
    return m


def verdict(m: dict[str, Any]) -> str:
    """The report's first sentence (`metrics.auc_verdict`): on the images the model never saw when some of
    these trained or validated it (their figures flatter it), else on all of them."""
    overlap, groups = m.get("overlap"), m.get("by_overlap") or {}
    if overlap and overlap["train"] + overlap["validation"] and "unseen" in groups:
        group, said = groups["unseen"], f"the {groups['unseen']['n']} images of this set it never saw"
        text = auc_verdict(group, said)
    else:
        group, text = m, auc_verdict(m, "this set")
        if overlap and overlap["unseen"] == 0:
            text += " (every image here trained or validated the model: optimistic)"
    return text + (" (few images: see the caveat)" if group.get("caveat") else "")


def detections(pred: Prediction) -> list[list[float]]:
    """The model's detections [x0, y0, x1, y1, score], whatever its decision (`Prediction.detections`)."""
    return pred.detections


def evaluate(
    dataset: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str | None = None,
    backend: str = "auto",
    precision: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    fracture_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (default: the bundled one) on `dataset`; write the report into `out`."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det = FractureDetector.load(model, backend=backend, precision=precision)
    records = select_records(dataset, split_file, subset, fracture_classes)
    kept: list[Record] = []
    preds: list[Prediction] = []
    errors: dict[str, str] = {}
    stream = det.predict_many([r.path for r in records], batch_size=batch_size, workers=workers)
    # The bar is closed (its line finished) before anything else is printed, an error included.
    with tqdm(total=len(records), desc="evaluate", unit="img", file=sys.stderr, disable=not progress) as bar:
        for rec, res in zip(records, stream, strict=True):
            if isinstance(res, Prediction):
                kept.append(rec)
                preds.append(res)
            else:
                errors[rec.path] = res.error
            bar.update()
    if len({r.label for r in kept}) < 2:
        raise DatasetError(f"{dataset}: evaluation needs readable images of both classes")
    groups = overlap_groups(kept, det.info.get("image_digests"))
    metrics = compute_metrics(kept, preds, det.operating_points, groups)
    froc = metrics.pop("froc_curve", None)  # drawn in froc.png, not written into metrics.json
    metrics["model"] = det.facts()
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
        w.writerow(["path", "label", "probability", "region", "seen_by_model"])
        w.writerows(
            [r.path, r.label, f"{q.probability:.6f}", r.region, g]
            for r, q, g in zip(kept, preds, groups or ["unknown"] * len(kept), strict=True)
        )
    y = np.array([r.label for r in kept])
    p = np.array([q.probability for q in preds])
    write_plots(y, p, det.operating_points, out)
    if froc is not None:
        write_froc_plot(froc, out / "froc.png")
    write_results_txt(metrics, out / "results.txt")
    write_report_html(metrics, out)
    return metrics
