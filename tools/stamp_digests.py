"""Add `info["image_digests"]` to a checkpoint trained before bonefrac recorded them; the weights stay as they are.

    python tools/stamp_digests.py src/bonefrac/weights/model.pt \
        --split src/bonefrac/weights/split.json --dataset ../shared/data/fracatlas

`bonefrac train` stores the content digests (`data.content_digest`: the first 16 hex digits of each file's
SHA-256) of its training and validation images, so that `bonefrac evaluate` can say how many evaluated
images the model has already seen. This writes the same list for an older checkpoint, from the run's
split.json and the dataset it split. Spec, weights and the rest of `info` are kept exactly (checked after
writing), the file is replaced atomically and its `.sha256` sidecar rewritten: the checkpoint's SHA-256
(and so the version derived from it) changes, its predictions do not. An ONNX export shipped beside it
(`model.onnx`, see tools/ship_onnx.py) names the old digest, so it is regenerated too.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bonefrac.datasets import content_digest, load_dataset, load_split
from bonefrac.errors import BonefracError
from bonefrac.evaluation.evaluate import split_subsets
from bonefrac.inference.export import ship_export, shipped_export_path
from bonefrac.models.checkpoint import atomic_save, load_checkpoint, sha256_file

#: split.json's names for the subsets -> the names `info["image_digests"]` uses.
SUBSETS = {"train": "train", "val": "validation"}


def split_digests(dataset: str | Path, split_file: str | Path) -> dict[str, list[str]]:
    """The sorted, distinct content digests of the split's training and validation images."""
    split = load_split(Path(split_file))
    records = load_dataset(dataset)
    subsets = split_subsets(records, split, split_file)
    found = Counter(s for s in subsets if s is not None)
    expected = Counter(split.values())
    if found != expected:  # a different dataset, or files missing from it: the list would be wrong
        raise BonefracError(f"{split_file}: {dict(expected)} images listed, {dict(found)} found in {dataset}")
    digests: dict[str, set[str]] = {name: set() for name in SUBSETS.values()}
    for r, s in zip(records, subsets, strict=True):
        if s in SUBSETS:
            digests[SUBSETS[s]].add(content_digest(r.path))
    return {name: sorted(d) for name, d in digests.items()}


def stamp(checkpoint: str | Path, digests: dict[str, list[str]], out: str | Path | None = None) -> str:
    """Write `checkpoint` (or `out`) with `digests` as `info["image_digests"]`; returns the new SHA-256."""
    ckpt = load_checkpoint(checkpoint)  # verified against its sidecar; weights_only
    out = Path(out or ckpt["path"])
    # Everything as read, less the two keys `load_checkpoint` adds, plus the digests.
    saved: dict[str, Any] = {k: v for k, v in ckpt.items() if k not in ("path", "sha256")}
    saved["info"] = {**(ckpt.get("info") or {}), "image_digests": digests}
    atomic_save(saved, out)
    digest = sha256_file(out)
    Path(f"{out}.sha256").write_text(f"{digest}  {out.name}\n")
    again = load_checkpoint(out)
    same = again["spec"] == ckpt["spec"] and again["state_dict"].keys() == ckpt["state_dict"].keys()
    same = same and all(torch.equal(again["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    if not same:
        raise BonefracError(f"{out}: spec or weights changed while stamping")
    if Path(f"{shipped_export_path(ckpt['path'])}.json").is_file():  # it names the old digest: ship a fresh one
        ship_export(out)
    return digest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="model.pt to stamp (rewritten in place unless --out)")
    ap.add_argument("--split", required=True, help="the training run's split.json")
    ap.add_argument("--dataset", required=True, help="the dataset that split was made from")
    ap.add_argument("--out", help="write the stamped checkpoint here instead (default: in place)")
    args = ap.parse_args()
    try:
        digests = split_digests(args.dataset, args.split)
        old = sha256_file(args.checkpoint)
        new = stamp(args.checkpoint, digests, args.out)
    except BonefracError as e:
        print(f"stamp_digests: error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(v)} {k}" for k, v in digests.items())
    print(f"image digests ({counts}) added; weights unchanged; sha256 {old[:12]} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
