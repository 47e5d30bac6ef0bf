"""`bonefrac dicom-node`: a DICOM storage SCP that predicts each study it receives and sends the results back.

The parts, one job each: `scp` (associations, C-STORE), `spool` (acknowledged images, durably on disk),
`tracker` (when a study is complete), `worker` (predict, write, send), `service` (`DicomNode`: start, stop).
"""

from __future__ import annotations

from bonefrac.dicom.node.config import Allow, NodeConfig, quiet_dicom_library_logs
from bonefrac.dicom.node.service import DicomNode
from bonefrac.dicom.send import Destination, NodeConfigError

__all__ = ["Allow", "Destination", "DicomNode", "NodeConfig", "NodeConfigError", "quiet_dicom_library_logs"]
