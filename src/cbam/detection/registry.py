"""The registry of detector builders: `register_detector` adds one under its function name.

Only storage lives here, so that detector files can register themselves by importing it; building
by name (which needs every detector file imported) is `cbam.detection.detectors`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

DetectorBuilder = Callable[..., nn.Module]

DETECTORS: dict[str, DetectorBuilder] = {}


def register_detector(builder: DetectorBuilder) -> DetectorBuilder:
    """Register `builder` under its function name; returns it unchanged."""
    name = builder.__name__
    if name in DETECTORS:
        raise ValueError(f"detector name {name!r} is registered twice")
    DETECTORS[name] = builder
    return builder
