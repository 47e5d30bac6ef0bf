"""bonefrac command line: parse, call one library function, turn user errors into one line."""

from __future__ import annotations

import argparse
import sys

from .errors import BonefracError


def _train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train import TrainConfig, fit

    distributed.init_from_env()
    cfg = TrainConfig(dataset=args.dataset, out=args.out, arch=args.arch, epochs=args.epochs,
                      image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      patience=args.patience, split_file=args.split, cache_dir=args.cache_dir,
                      threads=args.threads, max_train_images=args.max_train_images,
                      progress=not args.no_progress)  # fmt: skip
    try:
        fit(cfg, resume=args.resume)
    finally:
        distributed.cleanup()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonefrac", description="Find bone fractures in X-ray images.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a fracture classifier on a labelled dataset")
    t.add_argument("dataset", help="FracAtlas-style folder, fractured/ + not_fractured/ folders, or a CSV")
    t.add_argument("--out", required=True, help="run folder (checkpoints, logs, split)")
    t.add_argument("--arch", default="efficientnet_lite0")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--image-size", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better val AUC")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--split", help="reuse this split.json instead of making one")
    t.add_argument("--cache-dir", help="decode cache folder (default ~/.cache/bonefrac or $BONEFRAC_CACHE)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--max-train-images", type=int, help=argparse.SUPPRESS)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BonefracError as e:
        print(f"bonefrac: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bonefrac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
