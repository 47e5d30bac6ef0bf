"""`bonefrac predict` and `bonefrac demo`: images in, one line (or JSON object) per image out (`apps.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bonefrac.apps.commands.common import model_args, precision_arg
from bonefrac.apps.extras import require_extra
from bonefrac.paths import EXAMPLES_DIR

if TYPE_CHECKING:
    from bonefrac.inference.detector import FractureDetector


def _predict(args: argparse.Namespace) -> int:
    if args.dicom_out:
        require_extra("predict --dicom-out", "dicom")
    from bonefrac.apps.predict import PredictOptions, run_predict
    from bonefrac.inference.detector import FractureDetector
    from bonefrac.train import distributed

    distributed.init_from_env()
    try:
        with distributed.node_first():  # one ONNX export per node, not one per process
            det = FractureDetector.load(args.model, backend=args.backend, precision=args.precision)
        opts = PredictOptions(
            json=args.json,
            csv=args.csv,
            coco=args.coco,
            overlay_dir=args.overlay_dir,
            operating_point=args.operating_point,
            threshold=args.threshold,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
            any_modality=args.any_modality,
            dicom_out=args.dicom_out,
            by_study=args.by_study,
        )
        return run_predict(det, args.paths, opts)
    finally:
        distributed.cleanup()


def _demo(args: argparse.Namespace) -> int:
    from bonefrac.apps.predict import PredictOptions, run_predict
    from bonefrac.inference.detector import FractureDetector

    examples = EXAMPLES_DIR
    out = Path(args.out)
    det = FractureDetector.load(args.model)
    print(f"bonefrac demo: model {det.version} on the example radiographs in {examples}\n")
    out.mkdir(parents=True, exist_ok=True)  # the CSV's folder must exist before run_predict starts
    csv = out / "predictions.csv"
    code = run_predict(det, [str(examples)], PredictOptions(overlay_dir=str(out), csv=str(csv), progress=False))
    print("\n" + "\n".join(_demo_legend(det, out.resolve(), csv.resolve())))
    print("next: `bonefrac predict YOUR_IMAGES --overlay-dir out/`, `bonefrac serve`, or see README.md")
    return code


def _demo_legend(det: FractureDetector, out: Path, csv: Path) -> list[str]:
    """What the table's boxes and the overlays' two box kinds mean, with this model's thresholds."""
    from bonefrac.inference.decode import DETECTION_FLOOR
    from bonefrac.models.registry import kind_for

    ops, kind = det.operating_points, kind_for(det.spec)
    lines = [f"boxes: the detections kept at the default operating point (score >= {ops['default']:.3f})"]
    if kind.box_note:  # a detector's: a box's score is its own centre's; the decision weighs the whole image
        lines.append(kind.box_note)
    kinds = []
    if "high_specificity" in ops:
        kinds.append(f"solid 'fracture' boxes (score >= {ops['high_specificity']:.3f}, high_specificity)")
    if "high_sensitivity" in ops:
        kinds.append(f"dashed 'suspicious' boxes (score >= {ops['high_sensitivity']:.3f}, high_sensitivity)")
    lines.append(f"overlays in {out}/: the verdict, " + (", ".join(kinds) or "the boxes") + " and the heatmap")
    if kind.heatmap_note:
        lines.append(kind.heatmap_note)
    lines.append(f"every detection scoring >= {DETECTION_FLOOR:g}, with its score: {csv} (detections column)")
    return lines


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict on image files or folders (JPEG, PNG, DICOM)")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument(
        "--csv", help="also write results to this CSV file, a row per input as it is predicted (default: none)"
    )
    p.add_argument(
        "--coco",
        metavar="FILE",
        help="also write COCO-format predictions here: images (file_name relative to the input folder), the "
        "fracture category, an annotation per detection with its score (default: none)",
    )
    p.add_argument("--overlay-dir", help="write a heatmap + boxes overlay PNG per input here")
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="for DICOM inputs, write DICOM results here: a Structured Report per study and a Secondary Capture "
        "overlay per image, in the source's study (default: none; other inputs get none)",
    )
    p.add_argument(
        "--by-study",
        action="store_true",
        help="also give one line per study (DICOM: by Study Instance UID; other files: by folder): the maximum "
        "over its views, decided at the same threshold (default: image lines only)",
    )
    decide = p.add_mutually_exclusive_group()
    decide.add_argument(
        "--operating-point",
        default="default",
        help="the model's threshold to decide at: default | high_sensitivity | high_specificity (default %(default)s)",
    )
    decide.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="decide at this probability instead, strictly between 0 and 1 (operating point 'custom'; default: none)",
    )
    p.add_argument(
        "--any-modality",
        action="store_true",
        help="also predict on images that are not projection radiographs (CT, MR, US, ... or tiny images), which "
        "are refused by default: the model was not trained on them and its output means nothing there",
    )
    model_args(p)
    precision_arg(p)
    p.set_defaults(func=_predict)

    d = sub.add_parser("demo", help="run the bundled model on the bundled example radiographs")
    d.add_argument("--out", default="demo-out", help="where to write the overlays")
    d.add_argument("--model", help=argparse.SUPPRESS)
    d.set_defaults(func=_demo)
