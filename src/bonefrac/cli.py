"""bonefrac command line: parse, call one library function, turn user errors into one line.

Exit codes: 0 success; 1 some inputs failed or a user error (one-line message, no traceback); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .errors import BonefracError
from .io import REDUCE_FROM
from .runtime import DEFAULT_BATCH_SIZE
from .server_settings import TOKEN_ENV, ServerSettings

#: Set by the commands whose process has nothing left to do once they return (a single-process predict,
#: the demo): `run` then ends it without Python's teardown, which spends ~50 ms destroying the onnxruntime
#: sessions and their memory arenas and ~60 ms more on the interpreter's own, against ~0.25 s for the
#: whole of a one-image `bonefrac predict`.
_skip_teardown = False


def _train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train import TrainConfig, fit

    distributed.init_from_env()
    cfg = TrainConfig(
        dataset=args.dataset,
        out=args.out,
        arch=args.arch,
        epochs=args.epochs,
        image_size=args.image_size,
        reduce_from=args.reduce_from,
        batch_size=args.batch_size,
        lr=args.lr,
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
        progress=not args.no_progress,
    )
    try:
        fit(cfg, resume=args.resume)
    finally:
        distributed.cleanup()
    return 0


def _predict(args: argparse.Namespace) -> int:
    from . import distributed
    from .detector import FractureDetector
    from .predict import PredictOptions, run_predict

    single_process = not distributed.init_from_env()
    try:
        with distributed.node_first():  # one ONNX export per node, not one per process
            det = FractureDetector.load(args.model, backend=args.backend)
        opts = PredictOptions(
            json=args.json,
            csv=args.csv,
            overlay_dir=args.overlay_dir,
            operating_point=args.operating_point,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
        code = run_predict(det, args.paths, opts)
    finally:
        distributed.cleanup()
    global _skip_teardown
    _skip_teardown = single_process  # (torchrun ranks leave through the usual exit)
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

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


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import load_model
    from .detector import bundled_model_path
    from .export import export_onnx, parity
    from .io import read_image
    from .transforms import preprocess

    model, spec, _ = load_model(args.model or bundled_model_path())
    path = export_onnx(model, spec, args.out)
    examples = sorted((Path(__file__).parent / "examples").glob("*.jpg"))
    if examples:
        x = np.stack([preprocess(read_image(p), spec)[0] for p in examples])
        print(f"torch/onnxruntime parity on {len(examples)} example images: max |dp| = {parity(model, path, x):.2e}")
    print(f"exported {spec.arch} ({spec.image_size}px, dynamic batch, outputs: logit, cam) to {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    from .detector import FractureDetector
    from .server import serve  # FastAPI and uvicorn: imported only to serve, not by every command

    # Settings first: an exposed server without a token is refused before the model loads.
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        insecure_no_token=args.insecure_no_token,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(FractureDetector.load(args.model, backend=args.backend), settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .detector import FractureDetector
    from .predict import PredictOptions, run_predict

    examples = Path(__file__).parent / "examples"
    out = Path(args.out)
    det = FractureDetector.load(args.model)
    print(f"bonefrac demo: model {det.version} on the example radiographs in {examples}\n")
    code = run_predict(det, [str(examples)], PredictOptions(overlay_dir=str(out), progress=False))
    print(f"\noverlays (heatmap + boxes + verdict) written to {out.resolve()}/")
    print("next: `bonefrac predict YOUR_IMAGES --overlay-dir out/`, `bonefrac serve`, or see README.md")
    global _skip_teardown
    _skip_teardown = True
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonefrac", description="Find bone fractures in X-ray images.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"bonefrac {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="predict on image files or folders (JPEG, PNG, DICOM)")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--csv", help="also write results to this CSV file")
    p.add_argument("--overlay-dir", help="write a heatmap + boxes overlay PNG per input here")
    p.add_argument("--operating-point", default="default", help="default | high_sensitivity | high_specificity")
    _model_args(p)
    p.set_defaults(func=_predict)

    e = sub.add_parser("evaluate", help="metrics, plots and results.txt on a labelled dataset")
    e.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--split", help="a training run's split.json: evaluate only one subset of it")
    e.add_argument("--subset", default="val", help="with --split: which subset (default val)")
    _model_args(e)
    e.set_defaults(func=_evaluate)

    t = sub.add_parser("train", help="train a fracture classifier on a labelled dataset")
    t.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    t.add_argument("--out", required=True, help="run folder (checkpoints, logs, split)")
    t.add_argument(
        "--arch",
        default="efficientnet_lite0",
        help="efficientnet_lite0 | efficientnet_lite0_scratch | seed_cnn",
    )
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--image-size", type=int, default=256)
    t.add_argument(
        "--reduce-from",
        type=_at_least_two,
        default=REDUCE_FROM,
        metavar="K",
        help=f"read images with a long side of K x the image size or more reduced by 2, 4 or 8 (JPEGs decoded at "
        f"that scale: faster), never below 2x the size; recorded in the model (default {REDUCE_FROM}, as the bundled "
        "model; 8 reproduces models from before this option)",
    )
    t.add_argument("--batch-size", type=int, default=32, help="global batch (split across torchrun ranks)")
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better val AUC")
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument(
        "--loc-weight",
        type=float,
        default=0.5,
        help="weight of the heatmap box-supervision loss when the dataset has fracture boxes (0 = off)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init-from", help="fine-tune this checkpoint or run folder instead of starting from ImageNet")
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--split", help="reuse this split.json instead of making one")
    t.add_argument("--cache-dir", help="decode cache folder (default ~/.cache/bonefrac or $BONEFRAC_CACHE)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--max-train-images", type=int, help=argparse.SUPPRESS)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--no-progress", action="store_true")
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
    s.set_defaults(func=_serve)
    return parser


def _at_least_two(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be an integer of at least 2 (reduced images stay >= 2x the input), not {text}"
        )
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint file or training run folder (default: the bundled model)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"], help="auto = onnx when available")
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
    p.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    from .io import ImageReadWarning

    # Reader warnings (truncated JPEGs, extra frames) are reported per file in the output instead.
    warnings.filterwarnings("ignore", category=ImageReadWarning)
    warnings.formatwarning = lambda message, *_args, **_kw: f"bonefrac: warning: {message}\n"  # one line
    try:
        return args.func(args)
    except BonefracError as e:
        print(f"bonefrac: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bonefrac: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `bonefrac` console script and `python -m bonefrac`: `main`, then the exit."""
    code = main()
    if _skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # every output file is written and closed by now; see `_skip_teardown`
    sys.exit(code)


if __name__ == "__main__":
    run()
