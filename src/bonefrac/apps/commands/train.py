"""`bonefrac train`: settings checked before anything is decoded, then the training loop."""

from __future__ import annotations

import argparse
import sys


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


def add_parser(sub: argparse._SubParsersAction) -> None:
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
