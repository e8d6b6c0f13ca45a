"""Backbone weights for detectors, read from files on disk (never downloaded).

A detector starts from a classification network trained on ImageNet (paper Sec. 4.5). The file
may be a `cbam train` checkpoint (`.pt` or `.safetensors`), a `cbam convert` file, an authors'
checkpoint (Jongchan/attention-module, renamed with `cbam.convert`) or any plain state dict
(torchvision layout). `read_backbone_weights` turns each into one flat state dict (and the network the
file records, whose builder options shape the backbone) and
`load_backbone` loads it into a backbone, strictly; both are generic over the network.
`recorded_options` gives the builder options the file records, for building the backbone in the trained shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cbam.convert import StoredWeights, load_state_into, read_weights
from cbam.errors import CheckpointError
from cbam.external import base_name


def read_backbone_weights(path: str | Path, *, arch: str | None = None) -> StoredWeights:
    """The weights in `path` as one flat state dict on the CPU, wrapper prefixes (`module.`) removed, with
    the network the file records (a `cbam train` checkpoint's arch and builder options) where it does.

    With `arch`, a file that names another network (a `cbam train` checkpoint's config, a
    safetensors file's metadata, an authors' checkpoint) is refused. Every problem with the
    file raises one `CheckpointError` that names it.
    """
    path = Path(path)
    try:
        weights = read_weights(path)
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None
    saved_arch = weights.named_arch
    if arch is not None and saved_arch is not None and base_name(saved_arch) != base_name(arch):
        raise CheckpointError(f"{path} holds weights of a {saved_arch}, not of the {arch} backbone asked for")
    return weights


def recorded_options(weights: StoredWeights | None) -> dict[str, Any]:
    """The builder options a `cbam train` checkpoint records (`stem`, `width_mult`), `{}` for a file that
    records none (or no file): the backbone takes the trained network's shape; the classifier's size
    (`num_classes`) is not the detector's business."""
    if weights is None or weights.network is None:
        return {}
    return {key: value for key, value in weights.network.model_kwargs.items() if key != "num_classes"}


def recorded_backbone_options(path: str | Path, backbone: str) -> dict[str, Any]:
    """The builder options the backbone file at `path` records, `{}` where it records none or cannot be read
    (building the detector then says what is wrong with it)."""
    if not Path(path).is_file():
        return {}
    try:
        return recorded_options(read_backbone_weights(path, arch=backbone))
    except CheckpointError:
        return {}


def read_backbone_state(path: str | Path, *, arch: str | None = None) -> dict[str, Tensor]:
    """`read_backbone_weights(path, arch=arch)`'s state dict alone."""
    return read_backbone_weights(path, arch=arch).state


def load_backbone(module: nn.Module, state: Mapping[str, Tensor], source: str, ignore: Iterable[str] = ()) -> None:
    """Load `state` into `module`, strictly: every weight of the module must come from `state` and every
    weight in `state` must have a place, except keys starting with an `ignore` prefix (a classifier,
    `("fc.",)`) and the attention weights of a backbone given plain weights (new, logged at INFO).
    Problems are reported together, the count and first keys of each kind, in one `CheckpointError`.
    """
    target = f"the {type(module).__name__} backbone"
    load_state_into(module, state, source, ignore=ignore, target=target)
