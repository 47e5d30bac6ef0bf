"""`bonefrac export`: the model as an ONNX file."""

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="export the model to ONNX (dynamic batch, the model kind's outputs)")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, help="output .onnx file")
    x.add_argument("--model", help="checkpoint or run folder (default: the bundled model)")
    x.set_defaults(func=_export)
