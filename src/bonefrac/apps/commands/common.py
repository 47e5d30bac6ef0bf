"""Options that several commands share."""

from __future__ import annotations

import argparse

from bonefrac.datasets.layouts import FRACTURE_CLASS_HELP
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint file or training run folder (default: the bundled model)")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "onnx", "torch"], help="default auto = onnx when available"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per model run (default {DEFAULT_BATCH_SIZE}: measured fastest)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="threads, each taking batches through read, model and heatmap (default: one per core, at most 8)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)")


def precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        help="int8 runs the model's int8 export (bonefrac quantize; the bundled model ships one); default: "
        "$BONEFRAC_PRECISION, else auto = int8 where its parity with fp32 passed and it is measured faster on this "
        "machine, else fp32",
    )


def fracture_class_arg(p: argparse.ArgumentParser) -> None:
    """--fracture-class, shared by every command that reads a labelled dataset."""
    p.add_argument(
        "--fracture-class",
        action="append",
        metavar="NAME",
        help=FRACTURE_CLASS_HELP,
    )
