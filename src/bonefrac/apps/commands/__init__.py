"""One module per `bonefrac` command: `add_parser(sub)` declares its options, the handler parses and calls."""

from __future__ import annotations

from bonefrac.apps.commands import dicom_node, evaluate, export, inspect, predict, serve, train

COMMANDS = (predict, evaluate, inspect, train, export, serve, dicom_node)
