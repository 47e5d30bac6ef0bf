"""`bonefrac inspect`: what a labelled dataset holds, checked before anyone trains or evaluates on it."""

from __future__ import annotations

import argparse
import json

from bonefrac.apps.commands.common import fracture_class_arg
from bonefrac.datasets.layouts import DATASET_HELP, LAYOUT_NAMES


def _inspect(args: argparse.Namespace) -> int:
    from bonefrac.datasets import format_summary, inspect_dataset

    summary = inspect_dataset(args.dataset, subset=args.subset, fracture_classes=args.fracture_class)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    layouts = ", ".join(LAYOUT_NAMES.values())
    i = sub.add_parser(
        "inspect",
        help="what a labelled dataset holds: classes, regions, boxes, unreadable images, duplicates",
        description=f"Summarise a labelled dataset before training or evaluating on it. Layouts: {layouts}.",
    )
    i.add_argument("dataset", help=DATASET_HELP)
    i.add_argument("--subset", choices=["train", "val", "test"], help="one subset of a YOLO dataset (default: all)")
    fracture_class_arg(i)
    i.add_argument("--json", action="store_true", help="the summary as one JSON object")
    i.set_defaults(func=_inspect)
