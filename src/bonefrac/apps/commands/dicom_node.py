"""`bonefrac dicom-node`: a DICOM storage node that sends results back to PACS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bonefrac.apps.commands.common import precision_arg
from bonefrac.apps.extras import require_extra


def _dicom_node(args: argparse.Namespace) -> int:
    require_extra("dicom-node", "dicom")
    import logging

    from bonefrac.dicom.node import Allow, Destination, DicomNode, NodeConfig, quiet_dicom_library_logs
    from bonefrac.inference.detector import FractureDetector

    send_to = Destination.parse(args.send_to) if args.send_to else None  # before the model loads: fail fast
    allow = [Allow.parse(text) for text in args.allow]
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
        allow=allow,
    )
    return DicomNode(FractureDetector.load(args.model, backend=args.backend, precision=args.precision), config).run()


def add_parser(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser(
        "dicom-node",
        help="DICOM node: receive radiographs (C-STORE), predict each study, send SR + overlays back",
        description="A DICOM storage SCP for CR, DX and Secondary Capture images. A study is predicted once the "
        "associations that sent it have ended and --study-idle seconds have passed without a new image of it; "
        "its results (a TID 1500 SR and one overlay per view) are written to --out and sent to --send-to. "
        "An image is acknowledged once it is safely on disk (--out/spool): a study a stop, crash or power cut "
        "interrupts is predicted and sent on the next start. See docs/pacs.md.",
    )
    n.add_argument("--port", type=int, required=True, help="TCP port to listen on (104 and 11112 are usual)")
    n.add_argument("--ae-title", default="BONEFRAC", help="the node's AE title (default %(default)s)")
    n.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default %(default)s: this machine only; 0.0.0.0: all)",
    )
    n.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="AET[@HOST]",
        help="only this calling AE title (from HOST, if given) may send; repeatable (default: any)",
    )
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
    precision_arg(n)
    n.set_defaults(func=_dicom_node)
