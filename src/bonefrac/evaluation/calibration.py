"""Calibrated probabilities: Platt scaling of the raw image logit, and `bonefrac calibrate`, which refits it
and the operating points on a site's own labelled images, keeping the weights.

probability = sigmoid(scale * z + bias), z the model's raw image logit (`Prediction.logit`). The model's
ranking is unchanged (scale > 0); only what a probability means moves, to the frequencies observed on the
images it was fitted on (their prevalence included).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bonefrac.errors import BonefracError, DatasetError
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE
from bonefrac.inference.decode import probabilities

IDENTITY = {"scale": 1.0, "bias": 0.0}


class CalibrationError(BonefracError):
    """Labels and logits from which no calibration can be fitted (one class, no spread, inverted ranking)."""


def apply(calibration: Mapping[str, float], logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (float64) of raw logits: sigmoid(scale * z + bias), as every prediction has
    them (`postprocess.probabilities`)."""
    return probabilities(logits, dict(calibration))


def fit_platt(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling: the (scale, bias) maximising the likelihood of `y` under sigmoid(scale * z + bias).

    The 0/1 labels are replaced by Platt's targets (n+ + 1) / (n+ + 2) and 1 / (n- + 2), which keep the fit
    finite on separable data (the plain maximum likelihood sends the scale to infinity there) and shrink
    towards 0.5 by about 1/n otherwise. The logits are standardised for the optimiser and the answer mapped
    back. Raises `CalibrationError` with one class, with equal logits, or when the fitted scale is not
    positive (the logits rank these images against their labels: a calibration would turn the model over).
    """
    from scipy.optimize import minimize

    z, y = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(y).astype(int).ravel()
    if len(z) != len(y):
        raise ValueError(f"{len(z)} logits but {len(y)} labels")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        raise CalibrationError(f"calibration needs images of both classes ({n_pos} fractured, {n_neg} not)")
    if not np.isfinite(z).all():
        raise CalibrationError("the model gave non-finite logits: nothing to calibrate")
    mu, sd = float(z.mean()), float(z.std())
    if sd <= 1e-12 * max(1.0, abs(mu)):
        raise CalibrationError(f"all {len(z)} logits are equal: they carry no ranking to calibrate")
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    u = (z - mu) / sd

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        x = w[0] * u + w[1]
        # cross-entropy -t log s(x) - (1 - t) log(1 - s(x)) = log(1 + e^x) - t x, stably
        nll = float(np.mean(np.logaddexp(0.0, x) - t * x))
        r = apply(IDENTITY, x) - t
        return nll, np.array([np.mean(r * u), np.mean(r)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = float(res.x[0]), float(res.x[1])
    if not a > 0:
        raise CalibrationError(
            f"the logits rank these images against their labels (Platt scale {a / sd:.3g}): not calibrating"
        )
    return {"scale": a / sd, "bias": b - a * mu / sd}


def compare(y: np.ndarray, logits: np.ndarray, before: Mapping[str, float], after: Mapping[str, float]) -> dict:
    """ECE and Brier score (`metrics.calibration`) of two calibrations of the same logits."""
    from bonefrac.evaluation.metrics import calibration

    b, a = calibration(y, apply(before, logits)), calibration(y, apply(after, logits))
    return {"ece_before": b["ece"], "ece_after": a["ece"], "brier_before": b["brier"], "brier_after": a["brier"]}


#: `bonefrac calibrate` refuses to fit on fewer images than this of either class (`allow_small` overrides):
#: below it one image moves a sensitivity by 5% or more, and a threshold chosen among them is mostly noise.
MIN_PER_CLASS = 20

#: Calibrated probabilities whose middle 90% spans less than this carry next to nothing: the fit has squashed
#: every image towards the prevalence (what Platt scaling does to logits that do not rank the images).
MIN_PROBABILITY_SPREAD = 0.1


def _split_training_images(
    dataset: str | Path, split_file: str | Path, fracture_classes: Sequence[str] | None
) -> list[str] | None:
    """The split's training images (the OOD Gaussian's fit set for a model without one); None when it has none."""
    from bonefrac.evaluation.evaluate import select_records

    try:
        return [r.path for r in select_records(dataset, split_file, "train", fracture_classes)]
    except DatasetError:  # a split of validation images only: the threshold alone can be fitted
        return None


def recalibrate(
    dataset: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str | None = None,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
    allow_small: bool = False,
    fracture_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`bonefrac calibrate`: predict the labelled images of `dataset` (with `split_file`, only its `subset`;
    "all" = every image), refit the calibration on their raw logits and the operating points on the
    calibrated probabilities, and write `out`: the same weights, the new spec, the old info plus
    info["calibration"] (what it was fitted on, by name and content digest; ECE and Brier before and after;
    the caveats) and info["validation"] (the figures on these images at the new thresholds).

    Raises `DatasetError` without writing anything when either class has fewer than `MIN_PER_CLASS` images,
    unless `allow_small`. Returns the calibration record."""
    from tqdm import tqdm

    from bonefrac.datasets import content_digest
    from bonefrac.evaluation.evaluate import select_records
    from bonefrac.evaluation.metrics import choose_operating_points, discrimination
    from bonefrac.evaluation.ood_fit import fit_ood
    from bonefrac.inference.detector import FractureDetector
    from bonefrac.models.checkpoint import bundled_model_path, load_model, resolve_checkpoint, save_model
    from bonefrac.models.metadata import without_machine_paths
    from bonefrac.results import Prediction

    source = resolve_checkpoint(bundled_model_path() if model is None else model)
    out = Path(out) / "model.pt" if Path(out).is_dir() else Path(out)
    if out.resolve() == source.resolve():
        raise BonefracError(f"{out}: --out is the model itself; write the recalibrated model beside it")
    if not out.parent.is_dir():
        raise BonefracError(f"{out}: the folder for the model does not exist")
    records = select_records(dataset, split_file if subset != "all" else None, subset, fracture_classes)
    _check_enough(dataset, [r.label for r in records], allow_small)  # before the model runs
    det = FractureDetector.load(source, backend=backend)
    labels, logits, digests = [], [], []
    stream = det.predict_many([r.path for r in records], batch_size=batch_size, workers=workers, heatmap=False)
    with tqdm(total=len(records), desc="calibrate", unit="img", disable=not progress) as bar:
        for rec, res in zip(records, stream, strict=True):
            if isinstance(res, Prediction):
                labels.append(rec.label)
                logits.append(res.logit)
                digests.append(f"{content_digest(rec.path)} {rec.label}")
            bar.update()
    _check_enough(dataset, labels, allow_small)
    y, z = np.array(labels, dtype=int), np.array(logits, dtype=np.float64)
    new = fit_platt(z, y)
    p = apply(new, z)
    points = choose_operating_points(y, p)
    validation = discrimination(y, p, points)

    torch_model, spec, info = load_model(source)
    previous = {"calibration": dict(spec.calibration), "operating_points": dict(spec.operating_points)}
    old_validation = info.get("validation") if isinstance(info.get("validation"), dict) else {}
    seen = info.get("image_digests") if isinstance(info.get("image_digests"), dict) else {}
    fitted_digests = [d.split()[0] for d in digests]
    same_images = set(fitted_digests) == set(seen.get("validation") or ())
    n_trained_on = len(set(seen.get("train") or ()).intersection(fitted_digests))
    if same_images and "pointing_game" in old_validation:  # the heatmap's peaks move with neither
        validation["pointing_game"] = old_validation["pointing_game"]
    spec.calibration, spec.operating_points = new, points
    # The OOD statistics: the threshold (and the Gaussian, given enough images) on these images (`ood_fit`).
    from_train = spec.ood is None and split_file and subset not in ("train", "all")
    train = _split_training_images(dataset, split_file, fracture_classes) if from_train else None
    spec.ood, ood_record = fit_ood(det, [r.path for r in records], spec.ood, train)
    before_after = compare(y, z, previous["calibration"], new)
    caveats = warnings(y, p, new, points, validation, before_after)
    if n_trained_on:  # the model's logits on its own training images are more confident than on new ones
        caveats.append(
            f"{n_trained_on} of these images trained the model: it is surer of them than of new images, so a "
            "calibration fitted on them is overconfident on new ones; fit on images it never trained on"
        )
    data = {
        # A name and a digest identify the images without the path of this machine (`without_machine_paths`).
        "fitted_on": Path(dataset).name,
        "images_sha256": hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(),
        "split_file": Path(split_file).name if split_file and subset != "all" else None,
        # with a split file, its subset; else the dataset's own subsets used (a YOLO data.yaml's), or all
        "subset": (subset or "val")
        if split_file
        else "+".join(sorted({r.subset for r in records if r.subset})) or "all",
    }
    record = {
        **data,
        "n_images": int(len(y)),
        "n_fractured": int(y.sum()),
        "n_unreadable": len(records) - len(y),
        "n_trained_on": n_trained_on,
        "caveat": "; ".join(caveats) or None,
        "caveats": caveats,
        **before_after,
        "ood": ood_record,
        "at_operating_points": {k: {s: v[s] for s in _SHOWN} for k, v in validation["operating_points"].items()},
        "fitted_at": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "previous_calibration": previous["calibration"],
        "previous_operating_points": previous["operating_points"],
        "previous_sha256": info.pop("sha256", None),  # load_model's digest of the source, not of `out`
    }
    validation |= {"measured_on": data, "by": "bonefrac calibrate (in-sample: the images it was fitted on)"}
    info = without_machine_paths({**info, "calibration": record, "validation": validation})
    digest = save_model(torch_model, spec, out, info)
    return {**record, "calibration": new, "path": str(out), "sha256": digest}


_SHOWN = ("threshold", "sensitivity", "specificity")


def warnings(
    y: np.ndarray,
    p: np.ndarray,
    fit: Mapping[str, float],
    points: Mapping[str, float],
    validation: Mapping[str, Any],
    before_after: Mapping[str, float],
) -> list[str]:
    """Plain sentences on what these images cannot support: few images, an AUC indistinguishable from chance,
    an operating point that finds nothing (or clears nothing), a fit that squashes every probability together
    or leaves them further from the frequencies than before, operating points that could not be fitted
    distinct and ordered. `p`: the calibrated probabilities of labels `y`; `before_after`: `compare`'s."""
    from bonefrac.evaluation.metrics import auc_verdict
    from bonefrac.spec import DEFAULT_OPERATING_POINTS

    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    out = []
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        out.append(
            f"only {n_pos} fractured and {n_neg} other images: a calibration and operating points fitted on so "
            f"few (under {MIN_PER_CLASS} of a class) are uncertain; fit on more before relying on them"
        )
    lo, hi = validation["auc_ci95"]
    if not (np.isfinite([lo, hi]).all() and (lo > 0.5 or hi < 0.5)):
        out.append(auc_verdict(validation, "these images") + "; its operating points here are guesses")
    for name, s in validation["operating_points"].items():
        for what in ("sensitivity", "specificity"):
            if s[what] == 0:
                finds = "finds no fracture" if what == "sensitivity" else "calls every image fractured"
                out.append(f"{name} (threshold {s['threshold']:.4g}) has {what} 0 on these images: it {finds}")
    p5, p50, p95 = np.quantile(p, [0.05, 0.5, 0.95])
    if p95 - p5 < MIN_PROBABILITY_SPREAD:
        out.append(
            f"the fitted scale ({fit['scale']:.3g} on the logit) squashes every image to a probability near "
            f"{p50:.2f} (90% of them {p5:.2f}-{p95:.2f}): the probabilities say little, and a low ECE here only "
            "means they are all close to the share of fractures"
        )
    if before_after["ece_after"] > before_after["ece_before"]:
        out.append(
            f"the ECE rose from {before_after['ece_before']:.3f} to {before_after['ece_after']:.3f} on these "
            "images: the new calibration is no closer to their frequencies than the old one (on few images both "
            "figures are noisy)"
        )
    if dict(points) == dict(DEFAULT_OPERATING_POINTS) and len(np.unique(p)) < 3:
        out.append(
            f"the model gives only {len(np.unique(p))} distinct probabilities here: no three distinct operating "
            "points can be chosen among them, the defaults are kept"
        )
    elif not points["high_sensitivity"] < points["default"] < points["high_specificity"]:
        out.append("the operating points are not ordered high_sensitivity < default < high_specificity")
    return out


def _check_enough(dataset: str | Path, labels: list[int], allow_small: bool) -> None:
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        raise DatasetError(
            f"{dataset}: calibration needs readable images of both classes ({n_pos} fractured, {n_neg} not)"
        )
    if min(n_pos, n_neg) < MIN_PER_CLASS and not allow_small:
        raise DatasetError(
            f"{dataset}: only {n_pos} fractured and {n_neg} other images; calibration needs at least "
            f"{MIN_PER_CLASS} of each (--allow-small to fit anyway, with a caveat)"
        )


def summary(record: Mapping[str, Any]) -> str:
    """The before/after table `bonefrac calibrate` prints, from what `recalibrate` returns; each caveat on a
    line of its own after it."""
    prev, new = record["previous_calibration"], record["calibration"]
    points = record["at_operating_points"]
    digits = _distinct_digits([s["threshold"] for s in points.values()])
    lines = [
        f"fitted on {record['n_images']} images ({record['n_fractured']} fractured) of {record['fitted_on']}, "
        f"subset {record['subset']}"
        + (f"; {record['n_unreadable']} unreadable, left out" if record["n_unreadable"] else ""),
        f"{'':<18}{'before':>10}{'after':>10}",
        f"{'ECE':<18}{record['ece_before']:>10.3f}{record['ece_after']:>10.3f}",
        f"{'Brier':<18}{record['brier_before']:>10.3f}{record['brier_after']:>10.3f}",
        f"{'scale':<18}{prev['scale']:>10.3f}{new['scale']:>10.3f}",
        f"{'bias':<18}{prev['bias']:>10.3f}{new['bias']:>10.3f}",
        f"{'operating point':<18}{'before':>10}{'after':>10}  sensitivity  specificity (on these images)",
    ]
    for name, s in points.items():
        old = record["previous_operating_points"].get(name, float("nan"))
        lines.append(
            f"{name:<18}{old:>10.{digits}f}{s['threshold']:>10.{digits}f}  {s['sensitivity']:>11.3f}  "
            f"{s['specificity']:>11.3f}"
        )
    ood = record.get("ood") or {}
    if ood.get("threshold") is not None:
        lines.append(
            f"out of distribution: ood_score > {ood['threshold']:.3f} ({ood['method']}; {ood['flagged_here']:.1%} "
            "of these images flagged)"
        )
    elif ood:
        lines.append(f"out of distribution: {ood['method']}")
    caveats = record.get("caveats") or ([record["caveat"]] if record.get("caveat") else [])
    return "\n".join(lines + [f"caution: {c}" for c in caveats])


def _distinct_digits(thresholds: list[float]) -> int:
    """The fewest decimals (3 to 8) that print distinct thresholds distinctly: a fit that squashes the
    probabilities puts its operating points within 0.001 of each other, and equal printed thresholds with
    different sensitivities read as a bug."""
    for d in range(3, 9):
        if len({f"{t:.{d}f}" for t in thresholds}) == len(set(thresholds)):
            return d
    return 8
