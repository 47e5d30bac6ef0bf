"""Average the weights of two fine-tuned models of one architecture ("model soup", Wortsman et al. 2022),
then choose the soup's operating points on the validation split, as training does for a single run.

    python tools/soup.py runs/A runs/B --weight 0.3 --dataset ../shared/data/fracatlas \
        --split runs/A/split.json --out src/bonefrac/weights/model.pt

`--weight` is A's share. Both models must share arch and input size (and should share the pretrained start).
A fine-tuned model averaged with the model it started from is WiSE-FT (Wortsman et al., "Robust fine-tuning of
zero-shot models", 2022): it tends to keep the fine-tune's robustness and the start's accuracy. The soup has no
calibration and no out-of-distribution statistics of its own (the ingredients' describe their own features):
run `bonefrac calibrate ... --split ... --subset val` on it next, which fits both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bonefrac import __version__
from bonefrac.evaluation.calibration import IDENTITY
from bonefrac.evaluation.metrics import choose_operating_points, discrimination
from bonefrac.models.checkpoint import load_checkpoint, save_model, sha256_file
from bonefrac.models.metadata import without_machine_paths
from bonefrac.models.registry import build_model
from bonefrac.spec import ModelSpec
from bonefrac.train.data import DecodeCache, load_dataset, load_split
from bonefrac.train.detector import CropSampler, pointing_game
from bonefrac.train.loop import predict_cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--weight", type=float, required=True, help="share of model A (0..1)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--cache-dir")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    spec = ModelSpec.from_dict(a["spec"])
    spec_b = ModelSpec.from_dict(b["spec"])
    if (spec.arch, spec.image_size, spec.reduce_from) != (spec_b.arch, spec_b.image_size, spec_b.reduce_from):
        sys.exit(f"cannot average {spec} with {spec_b}: different models or preprocessing")
    w = args.weight
    state = {
        k: (w * v.double() + (1 - w) * b["state_dict"][k].double()).to(v.dtype) if v.is_floating_point() else v
        for k, v in a["state_dict"].items()
    }  # BatchNorm running statistics are averaged too; num_batches_tracked is A's (unused in eval)
    model = build_model(spec, pretrained=False)
    model.load_state_dict(state)
    model.eval()

    split = load_split(Path(args.split))
    val = [r for r in load_dataset(args.dataset) if split.get(r.key) == "val"]
    cache = DecodeCache(args.cache_dir, spec.image_size, spec.reduce_from)
    cache.build([r.path for r in val], progress=False)
    torch.set_num_threads(2)
    out = predict_cached(model, spec, cache, val)
    logits = out[:, 0] if out.ndim == 2 else out  # a detector's rows: the logit, then its peak
    p = 1 / (1 + np.exp(-logits))  # raw logits; the soup is uncalibrated
    spec.calibration = dict(IDENTITY)
    spec.ood = None  # refitted on the soup's own features by `bonefrac calibrate`
    y = np.array([r.label for r in val])
    spec.operating_points = choose_operating_points(y, p)
    info = {
        "bonefrac_version": __version__,
        "soup": {  # run folder and file only: no path of the machine that made it
            "a": "/".join(Path(a["path"]).parts[-2:]),
            "b": "/".join(Path(b["path"]).parts[-2:]),
            "weight_a": w,
            "a_sha256": sha256_file(a["path"]),
            "b_sha256": sha256_file(b["path"]),
        },
        "config": {"a": a["info"].get("config"), "b": b["info"].get("config")},
        "dataset": str(args.dataset),
        "n_train": a["info"].get("n_train"),
        "n_val": len(val),
        "validation": discrimination(y, p, spec.operating_points),
    }
    if out.ndim == 2:  # a detector: its pointing game too, as training records it
        info["validation"]["pointing_game"] = pointing_game(CropSampler(cache, val), val, out[:, 1:])
    seen = [c["info"].get("image_digests") for c in (a, b)]
    if all(isinstance(d, dict) for d in seen):  # the soup has seen what either ingredient saw
        train = set().union(*(d.get("train", []) for d in seen))
        val = set().union(*(d.get("validation", []) for d in seen)) - train
        info["image_digests"] = {"train": sorted(train), "validation": sorted(val)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    digest = save_model(model, spec, args.out, without_machine_paths(info))
    v = info["validation"]
    lo, hi = v["auc_ci95"]
    print(f"soup {w:.2f} x {args.a} + {1 - w:.2f} x {args.b}: validation AUC {v['auc']:.4f} (95% CI {lo:.3f}-{hi:.3f})")
    print(f"written to {args.out} (sha256 {digest[:12]})")
    for name, st in v["operating_points"].items():
        print(f"  {name}: threshold {st['threshold']:.3f}  sens {st['sensitivity']:.3f}  spec {st['specificity']:.3f}")


if __name__ == "__main__":
    main()
