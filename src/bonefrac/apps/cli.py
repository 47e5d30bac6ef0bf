"""bonefrac command line: parse, call one library function, turn user errors into one line.

Exit codes: 0 success; 1 some inputs failed or a user error (one-line message, no traceback); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from bonefrac.apps.server.settings import TOKEN_ENV, ServerSettings
from bonefrac.errors import BonefracError
from bonefrac.inference.backends import DEFAULT_BATCH_SIZE
from bonefrac.paths import EXAMPLES_DIR

if TYPE_CHECKING:  # imported where used: `bonefrac --help` stays quick
    from bonefrac.inference.detector import FractureDetector


def _train(args: argparse.Namespace) -> int:
    from bonefrac.train import distributed
    from bonefrac.train.config import TrainConfig, check_start
    from bonefrac.train.run_folder import resume_command

    cfg = TrainConfig(
        dataset=args.dataset,
        out=args.out,
        arch=args.arch,
        epochs=args.epochs,
        image_size=args.image_size,
        reduce_from=args.reduce_from,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        backbone_lr_scale=args.backbone_lr_scale,
        crop_size=args.crop_size,
        seed=args.seed,
        patience=args.patience,
        val_fraction=args.val_fraction,
        split_file=args.split,
        cache_dir=args.cache_dir,
        threads=args.threads,
        max_train_images=args.max_train_images,
        loc_weight=args.loc_weight,
        init_from=args.init_from,
        warmup_epochs=args.warmup_epochs,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    check_start(cfg, args.resume, args.overwrite)  # before torch is imported: bad settings answer at once
    from bonefrac.train.loop import fit

    distributed.init_from_env(cfg.device)
    try:
        fit(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if distributed.is_main():
            print(f"bonefrac: interrupted; to continue: {resume_command(sys.argv[1:])}", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    return 0


def _predict(args: argparse.Namespace) -> int:
    from bonefrac.apps.predict import PredictOptions, run_predict
    from bonefrac.inference.detector import FractureDetector
    from bonefrac.train import distributed

    distributed.init_from_env()
    try:
        with distributed.node_first():  # one ONNX export per node, not one per process
            det = FractureDetector.load(args.model, backend=args.backend)
        opts = PredictOptions(
            json=args.json,
            csv=args.csv,
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


def _evaluate(args: argparse.Namespace) -> int:
    from bonefrac.evaluation.evaluate import evaluate

    m = evaluate(
        args.dataset,
        args.out,
        model=args.model,
        split_file=args.split,
        subset=args.subset,
        backend=args.backend,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print((Path(args.out) / "results.txt").read_text(), end="")
    print(f"report written to {args.out}/ (metrics.json, results.txt, plots)")
    return 0 if not m["unreadable"] else 1


def _calibrate(args: argparse.Namespace) -> int:
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
    )
    print(summary(record))
    print(f"recalibrated model written to {record['path']} (sha256 {record['sha256'][:12]}...)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from bonefrac.inference.export import export_model

    report = export_model(args.model, args.out)
    if report.parity_images:
        print(
            f"torch/onnxruntime parity on {report.parity_images} example images: "
            f"max |dp| = {report.max_probability_difference:.2e}"
        )
    spec = report.spec
    print(f"exported {spec.arch} ({spec.image_size}px, dynamic batch, outputs: logit, cam) to {report.path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from bonefrac.apps.server.app import serve  # FastAPI and uvicorn: imported only to serve, not by every command
    from bonefrac.inference.detector import FractureDetector

    # Settings first: an exposed server without a token is refused before the model loads.
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        insecure_no_token=args.insecure_no_token,
        any_modality=args.any_modality,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(FractureDetector.load(args.model, backend=args.backend), settings)
    return 0


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

    ops = det.operating_points
    lines = [f"boxes: the detections kept at the default operating point (score >= {ops['default']:.3f})"]
    if det.spec.is_detector:  # a box's score is its own centre's; the decision weighs the whole image too
        lines.append("  (a box is scored on its own, the decision on the whole image: a FRACTURE may have no box)")
    kinds = []
    if "high_specificity" in ops:
        kinds.append(f"solid 'fracture' boxes (score >= {ops['high_specificity']:.3f}, high_specificity)")
    if "high_sensitivity" in ops:
        kinds.append(f"dashed 'suspicious' boxes (score >= {ops['high_sensitivity']:.3f}, high_sensitivity)")
    lines.append(f"overlays in {out}/: the verdict, " + (", ".join(kinds) or "the boxes") + " and the heatmap")
    if det.spec.is_detector:
        lines.append("  (the heatmap is the detector's score on the probability's scale: a normal image stays dark)")
    lines.append(f"every detection scoring >= {DETECTION_FLOOR:g}, with its score: {csv} (detections column)")
    return lines


def _dicom_node(args: argparse.Namespace) -> int:
    import logging

    from bonefrac.dicom.node import Destination, DicomNode, NodeConfig, quiet_dicom_library_logs
    from bonefrac.inference.detector import FractureDetector

    send_to = Destination.parse(args.send_to) if args.send_to else None  # before the model loads: fail fast
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bonefrac dicom-node: %(message)s", stream=sys.stderr)
    quiet_dicom_library_logs()
    config = NodeConfig(
        port=args.port,
        out=Path(args.out),
        ae_title=args.ae_title,
        host=args.host,
        send_to=send_to,
        operating_point=args.operating_point,
        study_idle=args.study_idle,
        max_pending=args.max_pending,
    )
    return DicomNode(FractureDetector.load(args.model, backend=args.backend), config).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonefrac", description="Find bone fractures in X-ray images.")
    from bonefrac._version import __version__

    parser.add_argument("--version", action="version", version=f"bonefrac {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict on image files or folders (JPEG, PNG, DICOM)")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--csv", help="also write results to this CSV file")
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
    _model_args(p)
    p.set_defaults(func=_predict)

    e = sub.add_parser(
        "evaluate",
        help="metrics, plots and results.txt on a labelled dataset",
        description="Evaluate a model on a labelled dataset: AUC with its CI, the model's operating points, "
        "per body region, localisation, plots. Images the model was trained or validated on are counted "
        "and the unseen images' figures come first.",
    )
    e.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    e.add_argument("--out", required=True, help="report folder (metrics.json, results.txt, predictions.csv, plots)")
    e.add_argument(
        "--split", help="a training run's split.json: evaluate only one subset of it (default: none, every image)"
    )
    e.add_argument(
        "--subset", default="val", choices=["train", "val"], help="with --split: which subset (default %(default)s)"
    )
    _model_args(e)
    e.set_defaults(func=_evaluate)

    c = sub.add_parser(
        "calibrate",
        help="refit the model's calibration and operating points on your own labelled images",
        description="Refit a model's probability calibration (Platt scaling of its raw image logit) and its three "
        "operating points on a site's labelled images; write a new checkpoint with the same weights that records "
        "what it was fitted on, ECE and Brier before and after. Fit on images the model was not trained on, "
        "with both classes; the more the better.",
    )
    c.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    c.add_argument("--out", required=True, help="the recalibrated checkpoint (.pt; a folder: model.pt in it)")
    c.add_argument("--split", help="a split.json: fit on one subset of it only (default: none, every image)")
    c.add_argument(
        "--subset",
        default="val",
        choices=["val", "train", "all"],
        help="with --split: which images (default %(default)s; all = every image of the dataset)",
    )
    _model_args(c)
    c.set_defaults(func=_calibrate)

    from bonefrac.train.config import ARCHS, DEVICES, PRECISIONS, TrainConfig

    t = sub.add_parser(
        "train",
        help="train a fracture classifier on a labelled dataset",
        description="Train a fracture classifier. Settings that cannot work are refused before anything is "
        "decoded or written; a finished run folder needs --resume (same settings) or --overwrite.",
    )
    t.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    t.add_argument("--out", required=True, help="run folder (checkpoints, logs, split)")
    t.add_argument("--arch", default=TrainConfig.arch, help=f"{' | '.join(ARCHS)} (default %(default)s)")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="at most this many (default %(default)s)")
    t.add_argument(
        "--image-size", type=int, default=TrainConfig.image_size, help="model input side, pixels (default %(default)s)"
    )
    t.add_argument(
        "--reduce-from",
        type=int,
        default=TrainConfig.reduce_from,
        metavar="K",
        help="read images with a long side of K x the image size or more reduced by 2, 4 or 8 (JPEGs decoded at "
        "that scale: faster), never below 2x the size; recorded in the model (default %(default)s, as the bundled "
        "model; 8 reproduces models from before this option)",
    )
    t.add_argument(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help="global batch, split across torchrun ranks (default %(default)s)",
    )
    t.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (default %(default)g)")
    t.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="AdamW (default %(default)g)")
    t.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=TrainConfig.backbone_lr_scale,
        help="detectors: the pretrained backbone's learning rate as a share of --lr (default %(default)g)",
    )
    t.add_argument(
        "--crop-size",
        type=int,
        default=TrainConfig.crop_size,
        help="detectors: side of the training crops, at the input's scale (default %(default)s)",
    )
    t.add_argument(
        "--warmup-epochs",
        type=float,
        default=TrainConfig.warmup_epochs,
        help="linear learning-rate warm-up, then cosine decay (default %(default)g)",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=TrainConfig.patience,
        help="early stopping: epochs without a better val AUC (default %(default)s)",
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=TrainConfig.val_fraction,
        help="share held out for validation, above 0 and at most 0.5, rounded to 1 in k (default %(default)g)",
    )
    t.add_argument(
        "--loc-weight",
        type=float,
        default=TrainConfig.loc_weight,
        help="weight of the heatmap box-supervision loss when the dataset has fracture boxes, 0 = off "
        "(default %(default)g)",
    )
    t.add_argument(
        "--seed", type=int, default=TrainConfig.seed, help="split, order and augmentation (default %(default)s)"
    )
    t.add_argument(
        "--init-from", help="fine-tune this checkpoint or run folder (default: none, start from ImageNet weights)"
    )
    t.add_argument("--split", help="reuse this split.json (default: make one from --val-fraction and --seed)")
    t.add_argument("--cache-dir", help="decode cache folder (default: $BONEFRAC_CACHE, else ~/.cache/bonefrac)")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    t.add_argument(
        "--device",
        choices=DEVICES,
        default=TrainConfig.device,
        help="where to train: auto = a CUDA GPU when torch sees one (one per torchrun process), else the CPU "
        "(default %(default)s)",
    )
    t.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=TrainConfig.precision,
        help="training arithmetic: auto = mixed precision on a GPU (bf16 where supported, else fp16 with loss "
        "scaling), fp32 on a CPU; bf16 on a CPU pays only with AVX512-BF16 (default %(default)s)",
    )
    t.add_argument("--max-train-images", type=int, help=argparse.SUPPRESS)
    t.add_argument(
        "--resume", action="store_true", help="continue OUT from its last.pt, with the same settings (default: off)"
    )
    t.add_argument(
        "--overwrite", action="store_true", help="start again in an OUT that holds a trained run (default: off)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    t.set_defaults(func=_train)

    x = sub.add_parser("export", help="export the model to ONNX (dynamic batch, heatmap features output)")
    x.add_argument("--format", choices=["onnx"], default="onnx")
    x.add_argument("--out", required=True, help="output .onnx file")
    x.add_argument("--model", help="checkpoint or run folder (default: the bundled model)")
    x.set_defaults(func=_export)

    d = sub.add_parser("demo", help="run the bundled model on the bundled example radiographs")
    d.add_argument("--out", default="demo-out", help="where to write the overlays")
    d.add_argument("--model", help=argparse.SUPPRESS)
    d.set_defaults(func=_demo)

    s = sub.add_parser(
        "serve",
        help="web page + REST API (FastAPI); see `bonefrac serve --help`",
        description="Serve the fracture finder page and its REST API (OpenAPI docs at /docs). Any address but "
        f"loopback needs an access token (${TOKEN_ENV} or --token); put a TLS reverse proxy in front (README).",
    )
    s.add_argument(
        "--host",
        default=ServerSettings.host,
        help="interface to listen on (default %(default)s: this machine only; 0.0.0.0 = every interface)",
    )
    s.add_argument("--port", type=int, default=ServerSettings.port, help="TCP port (default %(default)d)")
    s.add_argument("--model", help="checkpoint file or training run folder (default: the bundled model)")
    s.add_argument(
        "--backend", default="auto", choices=["auto", "onnx", "torch"], help="default auto = onnx when available"
    )
    s.add_argument(
        "--max-upload-mb",
        type=float,
        default=ServerSettings.max_upload_mb,
        help="largest upload accepted, in MB (default %(default)g)",
    )
    s.add_argument(
        "--concurrency",
        type=int,
        default=ServerSettings.concurrency,
        help="predictions run at once (default %(default)d)",
    )
    s.add_argument(
        "--token",
        help=f"access token that requests must send as 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set, "
        f"else none; prefer ${TOKEN_ENV}: other users of this machine can read a command line)",
    )
    s.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="serve a non-loopback address without a token: anyone who reaches the port can use it",
    )
    s.add_argument(
        "--any-modality",
        action="store_true",
        help="also predict on uploads that are not projection radiographs (refused by default)",
    )
    s.set_defaults(func=_serve)
    n = sub.add_parser(
        "dicom-node",
        help="DICOM node: receive radiographs (C-STORE), predict each study, send SR + overlays back",
        description="A DICOM storage SCP for CR, DX and Secondary Capture images. A study is predicted once the "
        "associations that sent it have ended and --study-idle seconds have passed without a new image of it; "
        "its results (a TID 1500 SR and one overlay per view) are written to --out and sent to --send-to. "
        "Ctrl-C / SIGTERM finish the study in progress and drop the rest. See README, Connecting to PACS.",
    )
    n.add_argument("--port", type=int, required=True, help="TCP port to listen on (104 and 11112 are usual)")
    n.add_argument("--ae-title", default="BONEFRAC", help="the node's AE title (default %(default)s)")
    n.add_argument("--host", default="0.0.0.0", help="interface to listen on (default %(default)s: all)")
    n.add_argument("--send-to", metavar="AET@HOST:PORT", help="C-STORE the results here (default: --out only)")
    n.add_argument("--out", default="dicom-results", help="results folder, a subfolder per study (default %(default)s)")
    n.add_argument(
        "--operating-point",
        default="default",
        help="default | high_sensitivity | high_specificity (default %(default)s)",
    )
    n.add_argument(
        "--study-idle",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a study is complete this long after its last image, its associations ended (default %(default)g)",
    )
    n.add_argument(
        "--max-pending",
        type=int,
        default=500,
        help="images waiting at most; beyond, C-STORE answers 'out of resources' (default %(default)d)",
    )
    n.add_argument("--model", help="checkpoint file or training run folder (default: the bundled model)")
    n.add_argument(
        "--backend", default="auto", choices=["auto", "onnx", "torch"], help="default auto = onnx when available"
    )
    n.set_defaults(func=_dicom_node)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    from bonefrac.io.read import ImageReadWarning

    # For this command only (restored on return, so an in-process caller keeps its own settings): reader
    # warnings (truncated JPEGs, extra frames) are reported per file in the output, others in one line.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ImageReadWarning)
        warnings.showwarning = _one_line_warning
        try:
            return args.func(args)
        except BonefracError as e:
            print(f"bonefrac: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bonefrac: interrupted", file=sys.stderr)
            return 130


def _one_line_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    print(f"bonefrac: warning: {message}", file=sys.stderr)


def run() -> None:
    """The `bonefrac` console script and `python -m bonefrac`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
