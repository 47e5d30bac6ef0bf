"""`bonefrac train`: settings checked before anything is decoded, then the training loop.

The options are generated from `TrainConfig`'s fields (`train.config.setting`: each one's help and bounds
are declared there, once); only `--resume` and `--overwrite`, which say what to do with the run folder, are
this command's own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from bonefrac.apps.extras import require_extra


def _train(args: argparse.Namespace) -> int:
    require_extra("train", "train")
    from bonefrac.train import distributed
    from bonefrac.train.config import TrainConfig, check_start
    from bonefrac.train.run_folder import resume_command

    cfg = TrainConfig(**{f.name: _value(args, f.name, f.type) for f in fields(TrainConfig)})
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


def _value(args: argparse.Namespace, name: str, annotation: object) -> object:
    """A `TrainConfig` field's value from the parsed options (a switch on by default is given as --no-NAME)."""
    if annotation == "bool":
        return getattr(args, name) if hasattr(args, name) else not getattr(args, f"no_{name}")
    return getattr(args, name)


#: Option values by the field's type (`from __future__ import annotations`: the annotation as written).
_TYPES = {"int": int, "float": float, "str": str}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from bonefrac.train.config import OneOf, TrainConfig, flag_of

    t = sub.add_parser(
        "train",
        help="train a fracture classifier on a labelled dataset",
        description="Train a fracture classifier. Settings that cannot work are refused before anything is "
        "decoded or written; a finished run folder needs --resume (same settings) or --overwrite.",
    )
    for f in fields(TrainConfig):
        meta, kw = f.metadata, {}
        help_text = meta.get("help") or argparse.SUPPRESS
        if f.type == "bool" and f.default:  # a switch on by default: --no-NAME turns it off
            t.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f"no_{f.name}", action="store_true", help=help_text)
            continue
        if f.type == "bool":  # a switch off by default: --NAME turns it on
            t.add_argument(flag_of(f), dest=f.name, action="store_true", help=help_text)
            continue
        if str(f.type).startswith("list[str]"):  # repeatable: each use adds one
            t.add_argument(flag_of(f), dest=f.name, action="append", metavar=f.metadata.get("metavar"), help=help_text)
            continue
        if f.default is MISSING and f.name == "dataset":  # the one thing every command line starts with
            t.add_argument(f.name, help=help_text)
            continue
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        bound = meta.get("bound")
        if isinstance(bound, OneOf) and bound.listed:
            kw["choices"] = bound.choices
        kind = _TYPES[str(f.type).removesuffix(" | None")]
        if kind is not str:
            kw["type"] = kind
        if meta.get("metavar") or meta.get("flag"):  # --split SPLIT, not --split SPLIT_FILE
            kw["metavar"] = meta.get("metavar") or flag_of(f).lstrip("-").upper().replace("-", "_")
        t.add_argument(flag_of(f), dest=f.name, help=help_text, **kw)
    run_folder: dict[str, Any] = {"action": "store_true"}
    t.add_argument(
        "--resume", help="continue OUT from its last.pt, with the same settings (default: off)", **run_folder
    )
    t.add_argument("--overwrite", help="start again in an OUT that holds a trained run (default: off)", **run_folder)
    t.set_defaults(func=_train)
