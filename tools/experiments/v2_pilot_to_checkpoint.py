"""Convert the session-7 pilot (`v2_pilot.py`'s V2Net, /tmp/v2pilot/ckpt_last.pt) into a bonefrac checkpoint of
arch lite0_centernet, so that `bonefrac calibrate`, `evaluate`, `predict` and the benchmarks run it as any model.

The two networks are the same layers under other names (V2Net was the prototype of `CenterNetLite0`); the
renaming below is checked by a strict load and by equal outputs on a random input. The spec: image size 448
(the pilot trained and was evaluated at native scale, and FracAtlas images are ~454 px on their long side),
the pilot's normalisation (min-max to [0, 1], then (x - 0.5) / 0.5: bonefrac's default mean/std), identity
calibration and default operating points until `bonefrac calibrate` fits them on the validation split.

Usage (from the repository root; the pilot's module is imported from beside this file):
    python tools/experiments/v2_pilot_to_checkpoint.py /tmp/v2pilot/ckpt_last.pt --out /work/runs/pilot.pt
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # v2_pilot.py (an experiment, not in the package)

#: (pilot key pattern, bonefrac key template) pairs, first match wins; block indices shift by the stage start.
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^stem\.0\.(.+)$", "backbone._conv_stem.{0}"),
    (r"^stem\.1\.(.+)$", "backbone._bn0.{0}"),
    (r"^s8\.(\d+)\.(.+)$", "backbone._blocks.{0+0}.{1}"),
    (r"^s16\.(\d+)\.(.+)$", "backbone._blocks.{0+5}.{1}"),
    (r"^s32\.(\d+)\.(.+)$", "backbone._blocks.{0+11}.{1}"),
    (r"^conv_head\.(.+)$", "backbone._conv_head.{0}"),
    (r"^bn_head\.(.+)$", "backbone._bn1.{0}"),
    (r"^hm\.(.+)$", "heatmap.{0}"),
    (r"^wh\.(.+)$", "size.{0}"),
    (r"^off\.(.+)$", "offset.{0}"),
    (r"^((?:lat8|lat16|lat32|smooth16|smooth8|cls)\..+)$", "{0}"),
)


def rename(key: str) -> str:
    """The bonefrac (`CenterNetLite0`) name of a pilot (`V2Net`) state-dict key; KeyError when none fits."""
    for pattern, template in RENAMES:
        m = re.match(pattern, key)
        if m is None:
            continue
        groups = m.groups()

        def field(ref: re.Match[str], groups: tuple[str, ...] = groups) -> str:
            i, _, shift = ref.group(1).partition("+")
            return str(int(groups[int(i)]) + int(shift)) if shift else groups[int(i)]

        return re.sub(r"\{(\d+(?:\+\d+)?)\}", field, template)
    raise KeyError(f"no bonefrac name for the pilot's {key!r}")


def convert_state(pilot_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {rename(k): v for k, v in pilot_state.items()}


def main(argv: list[str] | None = None) -> int:
    from v2_pilot import V2Net

    from bonefrac.models.centernet import build_detector
    from bonefrac.models.checkpoint import save_model
    from bonefrac.spec import ModelSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pilot", type=Path, help="the pilot's checkpoint (torch.save of {'model': state_dict, ...})")
    ap.add_argument("--out", type=Path, required=True, help="the bonefrac checkpoint to write (+ .sha256)")
    ap.add_argument("--image-size", type=int, default=448, help="letterboxed input side (default 448: native)")
    a = ap.parse_args(argv)

    ckpt = torch.load(a.pilot, map_location="cpu", weights_only=True)
    pilot = V2Net(pretrained=False).eval()
    pilot.load_state_dict(ckpt["model"])
    spec = ModelSpec(arch="lite0_centernet", image_size=a.image_size)
    model = build_detector(spec, pretrained=False).eval()
    model.load_state_dict(convert_state(ckpt["model"]), strict=True)  # every key, each exactly once

    # The same layers must compute the same outputs (V2Net's forward is the prototype of CenterNetLite0's).
    torch.manual_seed(0)
    x = torch.randn(2, 1, a.image_size, a.image_size)
    with torch.no_grad():
        for name, p, q in zip(("heatmap", "size", "offset", "global", "cam"), pilot(x), model(x), strict=True):
            if not torch.allclose(p, q, rtol=0, atol=1e-5):
                raise SystemExit(f"{name}: outputs differ by {(p - q).abs().max().item():.3g} after conversion")

    info = {
        "model_version": f"v2-pilot-session7-ep{ckpt.get('epoch')}",
        "description": (
            "The issue-16 pilot of session 7 (tools/experiments/v2_pilot.py: CenterNet-style head on a stride-8 "
            "FPN of EfficientNet-Lite0, 256 px crops at native scale, 4 epochs in 23 min on the 2-core CPU, fp32), "
            f"converted by tools/experiments/v2_pilot_to_checkpoint.py to image_size {a.image_size}. Trained on the "
            "train subset of weights/split.json; its epoch was not selected on validation (the last one). "
            "Identity calibration and default operating points until `bonefrac calibrate`."
        ),
        "converted_from": {
            "path": str(a.pilot),
            "epoch": ckpt.get("epoch"),
            "steps": ckpt.get("steps"),
            "bf16": ckpt.get("bf16"),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    digest = save_model(model, spec, a.out, info=info)
    print(f"{a.pilot} -> {a.out} (sha256 {digest[:12]}...): strict load, outputs equal to the pilot's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
