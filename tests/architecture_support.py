"""Model YAMLs past the architecture validation budget, and the process's RSS, for the budget tests."""

from __future__ import annotations

from pathlib import Path

WIDE_CONVS = """\
nc: 2
backbone:
  - [-1, 1, Conv, [4096, 3, 1]]
  - [-1, 1, Conv, [4096, 3, 1]]
head:
  - [-1, 1, Classify, [nc]]
"""
"""The outside test's attack: two 4,096-channel 3x3 convolutions (151 M parameters)."""
FULL_RESOLUTION = """\
nc: 2
backbone:
  - [-1, 1, Conv, [64, 1, 1]]
  - [-1, 1, Conv, [64, 1, 1]]
  - [-1, 1, Conv, [64, 1, 1]]
head:
  - [-1, 1, Classify, [nc]]
"""
"""Few parameters, but 64 full-resolution channels per layer: past the activation budget at imgsz 2048."""


def rss_mb() -> float:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS")) / 1024
