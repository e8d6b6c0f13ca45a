"""Datasets: the embedded `cluttered-digits`, ImageNet-layout folders, CIFAR; pre-processing."""

from cbam.data.cluttered_digits import ClutteredDigitsConfig, ensure_cluttered_digits, generate_cluttered_digits
from cbam.data.loading import DataError, open_split

__all__ = ["ClutteredDigitsConfig", "DataError", "ensure_cluttered_digits", "generate_cluttered_digits", "open_split"]
