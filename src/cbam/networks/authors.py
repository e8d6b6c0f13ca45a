"""The authors' released checkpoints (Jongchan/attention-module) renamed onto the zoo's layers.

The authors' `train_imagenet.py` saves `{"epoch", "arch", "state_dict", "best_prec1", "optimizer"}`
with DataParallel keys (`module.` prefix). Inside a block their CBAM is `cbam.ChannelGate.mlp.{1,3}`
(Flatten, Linear, ReLU, Linear) and `cbam.SpatialGate.spatial.{conv,bn}`, whose conv reads the
channel *max first, then the mean*; their BAM is `bam1..bam3` with `channel_att.gate_c.*` and
`spatial_att.gate_s.*`, combining the two maps by a product. `convert_authors_state` maps all of
it onto the zoo's names, so the converted network computes what theirs did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from cbam.errors import CheckpointError
from cbam.networks.zoo.resnet import ResNet

CLASSIFIER_WEIGHT = f"{ResNet.classifier_name}.weight"
"""The authors' networks are the zoo's ResNets (their classifier is the one `ResNet` declares)."""

_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_CBAM_KEYS = [
    (r"\.cbam\.ChannelGate\.mlp\.1\.", ".attention.channel.mlp.0."),
    (r"\.cbam\.ChannelGate\.mlp\.3\.", ".attention.channel.mlp.2."),
    (r"\.cbam\.SpatialGate\.spatial\.conv\.", ".attention.spatial.conv."),
    (r"\.cbam\.SpatialGate\.spatial\.bn\.", ".attention.spatial.bn."),
]
_BAM_KEYS = [
    (r"^bam(\d)\.", lambda m: f"stage_attention.{int(m.group(1)) - 1}."),
    (r"channel_att\.gate_c\.gate_c_fc_0\.", "channel_mlp.0."),
    (r"channel_att\.gate_c\.gate_c_bn_1\.", "channel_mlp.1."),
    (r"channel_att\.gate_c\.gate_c_fc_final\.", "channel_mlp.3."),
    (r"spatial_att\.gate_s\.gate_s_conv_reduce0\.", "spatial_convs.0."),
    (r"spatial_att\.gate_s\.gate_s_bn_reduce0\.", "spatial_convs.1."),
    (r"spatial_att\.gate_s\.gate_s_conv_di_(\d)\.", lambda m: f"spatial_convs.{3 + 3 * int(m.group(1))}."),
    (r"spatial_att\.gate_s\.gate_s_bn_di_(\d)\.", lambda m: f"spatial_convs.{4 + 3 * int(m.group(1))}."),
    (r"spatial_att\.gate_s\.gate_s_conv_final\.", "spatial_convs.9."),
]


@dataclass(frozen=True)
class AuthorsNetwork:
    """What an authors' checkpoint holds: which network, and its weights under the zoo's names."""

    arch: str
    attention: Any
    num_classes: int
    state_dict: dict[str, Tensor] = field(repr=False)


def is_authors_checkpoint(state: Mapping[str, Any]) -> bool:
    sd = state.get("state_dict")
    return isinstance(sd, Mapping) and any(str(k).startswith("module.") for k in sd)


def _blocks_per_stage(keys: list[str]) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(indices))
    return tuple(counts)


def convert_authors_state(state: Mapping[str, Any]) -> AuthorsNetwork:
    """Rename an authors' checkpoint's weights to the zoo's and say which network they belong to."""
    if not is_authors_checkpoint(state):
        raise CheckpointError("not a checkpoint of the authors' code: no DataParallel 'state_dict' (module.* keys)")
    raw = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    keys = list(raw)
    bottleneck = "layer1.0.conv3.weight" in raw
    arch = _RESNETS.get((bottleneck, _blocks_per_stage(keys)))
    if arch is None:
        raise CheckpointError(f"unknown ResNet depth in the checkpoint (blocks per stage {_blocks_per_stage(keys)})")
    has_cbam = any(".cbam." in k for k in keys)
    has_bam = any(k.startswith("bam1.") for k in keys)
    if has_cbam and has_bam:
        raise CheckpointError("the checkpoint has both CBAM and BAM weights; the authors' code builds one or the other")
    attention: Any = "cbam" if has_cbam else {"name": "bam", "combine": "product"} if has_bam else "none"
    converted: dict[str, Tensor] = {}
    for key, value in raw.items():
        new = key
        for pattern, replacement in _CBAM_KEYS if has_cbam else _BAM_KEYS if has_bam else []:
            new = re.sub(pattern, replacement, new)
        if new.endswith("attention.spatial.conv.weight"):
            value = value[:, [1, 0]]  # their descriptor is [max; mean], ours (eq. 3) [mean; max]
        converted[new] = value
    if CLASSIFIER_WEIGHT not in converted:
        raise CheckpointError(f"the checkpoint has no classifier ({CLASSIFIER_WEIGHT})")
    return AuthorsNetwork(arch, attention, converted[CLASSIFIER_WEIGHT].shape[0], converted)
