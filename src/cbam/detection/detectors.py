"""Detectors by name: `register_detector`, `create_detector`, `list_detectors`.

A detector builder takes `backbone` (a zoo name such as "resnet50" or "vgg16"), `attention`
(an attention spec as in `cbam.create_model`) and `num_classes` (background included), plus its
own keywords, and returns a torchvision-style detector: `model(images, targets)` gives a loss
dict in train mode and a list of `{"boxes", "labels", "scores"}` in eval mode.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from cbam.detection import rcnn, ssd  # noqa: F401  (their builders register on import)
from cbam.detection.registry import DETECTORS
from cbam.errors import ConfigError, OptionError, unknown_name


def list_detectors(pattern: str = "*") -> list[str]:
    """Registered detector names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in DETECTORS if fnmatch.fnmatchcase(n, pattern))


def create_detector(
    name: str, *, backbone: str, attention: Any = "none", num_classes: int = 21, **kwargs: Any
) -> nn.Module:
    """Build a registered detector: `create_detector("faster_rcnn_c4", backbone="resnet50", attention="cbam",
    num_classes=81)`. `num_classes` counts the background class."""
    if name not in DETECTORS:
        raise unknown_name("detector", name, DETECTORS)
    if num_classes < 2:
        raise ConfigError(f"num_classes counts the background and must be at least 2, got {num_classes}")
    try:
        return DETECTORS[name](backbone=backbone, attention=attention, num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise OptionError(f"{name}: {err}") from None
        raise
