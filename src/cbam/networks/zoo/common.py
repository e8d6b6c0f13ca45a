"""Pieces every network file shares: attention slots, stems' names and the authors' init."""

from __future__ import annotations

from torch import nn

from cbam.errors import ConfigError
from cbam.layers.create import AttentionFactory

STEMS: tuple[str, ...] = ("imagenet", "cifar")


def attention_or_identity(factory: AttentionFactory | None, channels: int) -> nn.Module:
    """The attention layer for `channels`, or a parameter-free identity when there is none."""
    return factory(channels) if factory is not None else nn.Identity()


def check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")


def initialize_weights(model: nn.Module) -> None:
    """The authors' init: Kaiming (fan-out) convs, BatchNorm scale 1 and shift 0, zero biases.

    Linear weights keep PyTorch's default except the classifier's (the one the network declares as
    `classifier_name`), which gets Kaiming (fan-in) like the authors' `fc`. Afterwards every layer with
    its own `init_weights` (the spatial attention's zero BatchNorm scale) applies it.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    name = getattr(model, "classifier_name", None)  # a detector's body has no classifier
    classifier = model.get_submodule(name) if name else None
    if isinstance(classifier, nn.Linear):
        nn.init.kaiming_normal_(classifier.weight)
    for module in model.modules():
        if module is not model and callable(getattr(module, "init_weights", None)):
            module.init_weights()
