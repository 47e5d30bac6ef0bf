"""`bonefrac export`: the model as an ONNX file; `bonefrac quantize`: its int8 export, with measured parity."""

from __future__ import annotations

import argparse

from bonefrac.apps.extras import require_extra


def _export(args: argparse.Namespace) -> int:
    require_extra("export", "train")  # torch and onnx write the graph
    from bonefrac.inference.export import export_model
    from bonefrac.models.registry import kind_for

    report = export_model(args.model, args.out)
    if report.parity_images:
        print(
            f"torch/onnxruntime parity on {report.parity_images} example images: "
            f"max |dp| = {report.max_probability_difference:.2e}"
        )
    spec, outputs = report.spec, ", ".join(kind_for(report.spec).outputs)
    print(f"exported {spec.arch} ({spec.image_size}px, dynamic batch, outputs: {outputs}) to {report.path}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    require_extra("quantize", "train")  # onnx (onnxruntime's quantizer reads it) and the eval extra for the parity
    from bonefrac.evaluation.parity import quantize_with_parity, summary

    path, parity = quantize_with_parity(
        args.dataset, args.model, args.split, args.calibration_subset, args.parity_subset, args.calibration_images
    )
    print(summary(parity))
    print(f"int8 export written to {path} (with .sha256 and .json: settings, calibration images, parity)")
    return 0 if parity["passed"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    from bonefrac.datasets.layouts import DATASET_HELP
    from bonefrac.inference.quantize import CALIBRATION_IMAGES, GATES

    q = sub.add_parser(
        "quantize",
        help="make the model's int8 export (beside it) and measure its parity with fp32",
        description="Quantize a checkpoint's ONNX export to int8 (onnxruntime static quantization, its activation "
        "ranges calibrated on training images), write it beside the checkpoint as model.int8.onnx, and compare it "
        "with fp32 on held-out images: AUC, box AP@0.5, pointing game, each operating point's sensitivity and "
        "specificity, the share of images with the same decisions (gates: "
        + ", ".join(f"{k} {v}" for k, v in GATES.items())
        + "). `--precision auto` runs it only where every gate passed and it is faster on the machine. Exit 1 "
        "when a gate fails (the file is kept; `--precision int8` still runs it).",
    )
    q.add_argument("dataset", help=DATASET_HELP)
    q.add_argument("--model", help="checkpoint or run folder (default: the bundled model)")
    q.add_argument("--split", required=True, help="a split.json naming the training and validation images")
    q.add_argument("--calibration-subset", default="train", help="the split's subset calibrated on (default train)")
    q.add_argument("--parity-subset", default="val", help="the split's subset compared on (default val)")
    q.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"how many images of the calibration subset (default {CALIBRATION_IMAGES}, a fixed random draw)",
    )
    q.set_defaults(func=_quantize)

    x = sub.add_parser("export", help="export the model to ONNX (dynamic batch, the model kind's outputs)")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, help="output .onnx file")
    x.add_argument("--model", help="checkpoint or run folder (default: the bundled model)")
    x.set_defaults(func=_export)
