"""Calibrated probabilities: Platt scaling of the raw image logit, and `bonefrac calibrate`, which refits it
and the operating points on a site's own labelled images, keeping the weights.

probability = sigmoid(scale * z + bias), z the model's raw image logit (`Prediction.logit`). The model's
ranking is unchanged (scale > 0); only what a probability means moves, to the frequencies observed on the
images it was fitted on (their prevalence included).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
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


def recalibrate(
    dataset: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    split_file: str | Path | None = None,
    subset: str = "val",
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`bonefrac calibrate`: predict the labelled images of `dataset` (with `split_file`, only its `subset`;
    "all" = every image), refit the calibration on their raw logits and the operating points on the
    calibrated probabilities, and write `out`: the same weights, the new spec, the old info plus
    info["calibration"] (what it was fitted on, ECE and Brier before and after). Returns that record."""
    from tqdm import tqdm

    from bonefrac.evaluation.evaluate import select_records
    from bonefrac.evaluation.metrics import choose_operating_points, operating_point_stats
    from bonefrac.inference.detector import FractureDetector
    from bonefrac.models.checkpoint import bundled_model_path, load_model, resolve_checkpoint, save_model
    from bonefrac.results import Prediction

    source = resolve_checkpoint(bundled_model_path() if model is None else model)
    out = Path(out) / "model.pt" if Path(out).is_dir() else Path(out)
    if out.resolve() == source.resolve():
        raise BonefracError(f"{out}: --out is the model itself; write the recalibrated model beside it")
    if not out.parent.is_dir():
        raise BonefracError(f"{out}: the folder for the model does not exist")
    records = select_records(dataset, split_file if subset != "all" else None, subset)
    _check_both_classes(dataset, [r.label for r in records])
    det = FractureDetector.load(source, backend=backend)
    labels, logits, unreadable = [], [], 0
    stream = det.predict_many([r.path for r in records], batch_size=batch_size, workers=workers, heatmap=False)
    with tqdm(total=len(records), desc="calibrate", unit="img", disable=not progress) as bar:
        for rec, res in zip(records, stream, strict=True):
            if isinstance(res, Prediction):
                labels.append(rec.label)
                logits.append(res.logit)
            else:
                unreadable += 1
            bar.update()
    _check_both_classes(dataset, labels)
    y, z = np.array(labels, dtype=int), np.array(logits, dtype=np.float64)
    new = fit_platt(z, y)
    points = choose_operating_points(y, apply(new, z))

    torch_model, spec, info = load_model(source)
    previous = {"calibration": dict(spec.calibration), "operating_points": dict(spec.operating_points)}
    spec.calibration, spec.operating_points = new, points
    record = {
        "fitted_on": str(dataset),
        "split_file": str(split_file) if split_file and subset != "all" else None,
        "subset": subset if split_file else "all",
        "n_images": int(len(y)),
        "n_fractured": int(y.sum()),
        "n_unreadable": unreadable,
        "caveat": _few_images(int(y.sum()), int(len(y) - y.sum())),
        **compare(y, z, previous["calibration"], new),
        "at_operating_points": {
            k: {s: v for s, v in operating_point_stats(y, apply(new, z), t).items() if s in _SHOWN}
            for k, t in points.items()
        },
        "fitted_at": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "previous_calibration": previous["calibration"],
        "previous_operating_points": previous["operating_points"],
        "previous_sha256": info.pop("sha256", None),  # load_model's digest of the source, not of `out`
    }
    digest = save_model(torch_model, spec, out, {**info, "calibration": record})
    return {**record, "calibration": new, "path": str(out), "sha256": digest}


_SHOWN = ("threshold", "sensitivity", "specificity")


def _check_both_classes(dataset: str | Path, labels: list[int]) -> None:
    n_pos = sum(labels)
    if not n_pos or n_pos == len(labels):
        raise DatasetError(
            f"{dataset}: calibration needs readable images of both classes "
            f"({n_pos} fractured, {len(labels) - n_pos} not)"
        )


def _few_images(n_fractured: int, n_other: int) -> str | None:
    """A plain sentence when too few images of a class make the fit uncertain (`metrics.MIN_PER_CLASS`)."""
    from bonefrac.evaluation.metrics import MIN_PER_CLASS

    if min(n_fractured, n_other) >= MIN_PER_CLASS:
        return None
    return (
        f"only {n_fractured} fractured and {n_other} other images: a calibration and operating points fitted on "
        "so few are uncertain; fit on more before relying on them"
    )


def summary(record: Mapping[str, Any]) -> str:
    """The before/after table `bonefrac calibrate` prints, from what `recalibrate` returns."""
    prev, new = record["previous_calibration"], record["calibration"]
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
    for name, s in record["at_operating_points"].items():
        old = record["previous_operating_points"].get(name, float("nan"))
        lines.append(
            f"{name:<18}{old:>10.3f}{s['threshold']:>10.3f}  {s['sensitivity']:>11.3f}  {s['specificity']:>11.3f}"
        )
    return "\n".join(lines + ([f"caution: {record['caveat']}"] if record.get("caveat") else []))
