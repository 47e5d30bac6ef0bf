"""`bonefrac evaluate` and `bonefrac calibrate`: a model against a labelled dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from bonefrac.apps.commands.common import fracture_class_arg, model_args, precision_arg
from bonefrac.apps.extras import require_extra
from bonefrac.datasets.layouts import DATASET_HELP


def _evaluate(args: argparse.Namespace) -> int:
    require_extra("evaluate", "eval")
    from bonefrac.evaluation.evaluate import evaluate

    m = evaluate(
        args.dataset,
        args.out,
        model=args.model,
        split_file=args.split,
        subset=args.subset,
        backend=args.backend,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        fracture_classes=args.fracture_class,
    )
    print((Path(args.out) / "results.txt").read_text(), end="")
    print(f"report written to {args.out}/ (report.html, metrics.json, results.txt, plots)")
    return 0 if not m["unreadable"] else 1


def _calibrate(args: argparse.Namespace) -> int:
    require_extra("calibrate", "train")  # it writes a torch checkpoint
    from bonefrac.evaluation.calibration import recalibrate, summary

    record = recalibrate(
        args.dataset,
        args.out,
        model=args.model,
        split_file=args.split,
        subset=args.subset,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        allow_small=args.allow_small,
        fracture_classes=args.fracture_class,
    )
    print(summary(record))
    print(f"recalibrated model written to {record['path']} (sha256 {record['sha256'][:12]}...)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="metrics, plots and results.txt on a labelled dataset",
        description="Evaluate a model on a labelled dataset: AUC with its CI, the model's operating points, "
        "per body region, localisation, plots. Images the model was trained or validated on are counted "
        "and the unseen images' figures come first.",
    )
    e.add_argument("dataset", help=DATASET_HELP)
    e.add_argument(
        "--out", required=True, help="report folder (report.html, metrics.json, results.txt, predictions.csv, plots)"
    )
    e.add_argument(
        "--split", help="a training run's split.json: evaluate only one subset of it (default: none, every image)"
    )
    e.add_argument(
        "--subset",
        choices=["train", "val", "test", "all"],
        help="with --split, or of a YOLO dataset's own subsets: which images (default val; a YOLO dataset "
        "without a val subset: all)",
    )
    fracture_class_arg(e)
    model_args(e)
    precision_arg(e)
    e.set_defaults(func=_evaluate)

    c = sub.add_parser(
        "calibrate",
        help="refit the model's calibration and operating points on your own labelled images",
        description="Refit a model's probability calibration (Platt scaling of its raw image logit) and its three "
        "operating points on a site's labelled images; write a new checkpoint with the same weights that records "
        "what it was fitted on, ECE and Brier before and after. Fit on images the model was not trained on, "
        "with both classes; the more the better.",
    )
    c.add_argument("dataset", help=DATASET_HELP)
    c.add_argument("--out", required=True, help="the recalibrated checkpoint (.pt; a folder: model.pt in it)")
    c.add_argument("--split", help="a split.json: fit on one subset of it only (default: none, every image)")
    c.add_argument(
        "--subset",
        choices=["val", "train", "test", "all"],
        help="with --split, or of a YOLO dataset's own subsets: which images (default val; all = every image of "
        "the dataset)",
    )
    fracture_class_arg(c)
    c.add_argument(
        "--allow-small",
        action="store_true",
        help="fit even with fewer than 20 images of a class (calibration.MIN_PER_CLASS); the caveat is printed "
        "and recorded",
    )
    model_args(c)
    c.set_defaults(func=_calibrate)
