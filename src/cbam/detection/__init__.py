"""Object detection with attention: Faster R-CNN on attention backbones (paper Table 7) and SSD/StairNet
with attention before every classifier (Table 8), built on `torchvision.models.detection`."""

from cbam.detection.detectors import create_detector, list_detectors
from cbam.detection.registry import register_detector

__all__ = ["create_detector", "list_detectors", "register_detector"]
