"""The detector's output grid, torch-free: shared by the network that builds its head on it (`centernet`), the
decoding of its outputs (`kinds.detector`) and the training targets (`train.detector`)."""

from __future__ import annotations

#: Input pixels per cell of the detector's heatmap (its head sits on the stride-8 level of the pyramid).
STRIDE = 8
