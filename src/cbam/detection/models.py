"""Imports every detector module so that its builders register (see `cbam.detection.detectors`)."""

from cbam.detection import rcnn, ssd  # noqa: F401
