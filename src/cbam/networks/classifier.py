"""The classifier every network declares, and how a new task replaces it.

Each network says which layer is its classifier instead of cbam guessing: the zoo's classes by
`classifier_name`, timm's networks by their `pretrained_cfg["classifier"]` (what timm's own
`reset_classifier` uses), torchvision's by `TORCHVISION_CLASSIFIERS` below, one entry per family.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import Tensor, nn

from cbam.errors import ConfigError

log = logging.getLogger(__name__)

TORCHVISION_CLASSIFIERS: dict[str, str] = {
    "AlexNet": "classifier.6",
    "ConvNeXt": "classifier.2",
    "DenseNet": "classifier",
    "EfficientNet": "classifier.1",
    "GoogLeNet": "fc",
    "Inception3": "fc",
    "MNASNet": "classifier.1",
    "MaxVit": "classifier.5",
    "MobileNetV2": "classifier.1",
    "MobileNetV3": "classifier.3",
    "RegNet": "fc",
    "ResNet": "fc",
    "ShuffleNetV2": "fc",
    "SwinTransformer": "head",
    "VGG": "classifier.6",
    "VisionTransformer": "heads.head",
}
"""torchvision's classification families (by class name) and the name of each one's classifier."""


def classifier_name(model: nn.Module) -> str:
    """The name of the layer that `model` declares as its classifier; a network that declares none is refused."""
    declared = getattr(model, "classifier_name", None)
    if isinstance(declared, str):
        return declared
    timm_config = getattr(model, "pretrained_cfg", None)
    if isinstance(timm_config, Mapping) and isinstance(timm_config.get("classifier"), str):
        return timm_config["classifier"]
    if type(model).__module__.startswith("torchvision.") and type(model).__name__ in TORCHVISION_CLASSIFIERS:
        return TORCHVISION_CLASSIFIERS[type(model).__name__]
    raise ConfigError(f"{type(model).__name__} declares no classifier that cbam can resize (the zoo's networks, "
                      f"timm's and torchvision's {', '.join(sorted(TORCHVISION_CLASSIFIERS))} do)")  # fmt: skip


def classifier(model: nn.Module) -> nn.Linear:
    """The classifier `model` declares, which must be a linear layer."""
    name = classifier_name(model)
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{type(model).__name__}'s classifier {name} is a {type(layer).__name__}, not a linear "
                          "layer that cbam can resize")  # fmt: skip
    return layer


def classes_in_state(model: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """How many classes the weights in `state` classify into, read off `model`'s classifier; None where absent."""
    weight = state.get(f"{classifier_name(model)}.weight")
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.dim() == 2 else None


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """`model` with a new, freshly initialised classifier of `num_classes` outputs (in place); kept where it
    already has that many."""
    old = classifier(model)
    if old.out_features == num_classes:
        return model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    name = classifier_name(model)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    log.debug("classifier %s: %d -> %d classes (new weights)", name, old.out_features, num_classes)
    return model
