"""Faster R-CNN on the zoo's ResNets, attention in every block (paper Sec. 4.5, Table 7).

The paper plugs CBAM into the *base network* and keeps the detector as it is: its training code
follows the single-scale ResNet "C4" Faster R-CNN, `faster_rcnn_c4` here: stem to layer3 shared
(stride 16), the RPN on that one map, RoIAlign to 14x14, then layer4, with its attention, as the
box head. `faster_rcnn_fpn` is the common multi-scale variant (layer1-4 -> FPN). Everything but
the backbones comes from `torchvision.models.detection`, so both keep torchvision's contract.

Fine-tuning conventions (Detectron, torchvision): every BatchNorm is frozen and the stem and
layer1 do not train (`trainable_layers=3`). The BatchNorm that CBAM's spatial gate owns stays a
`BatchNorm2d` pinned in eval mode (`EvalBatchNorm2d`), not torchvision's `FrozenBatchNorm2d`:
the fused attention kernels run only for a real BatchNorm2d (`cbam.layers.fused.spatial_fusable`)
and fall back to the slower eager modules for anything else.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from cbam.detection.registry import register_detector
from cbam.errors import ConfigError
from cbam.layers.create import AttentionSpec
from cbam.layers.fused import FusableAttention
from cbam.networks.build import build_network
from cbam.networks.classifier import classifier_name
from cbam.networks.libraries import is_external
from cbam.networks.names import list_models, model_entry
from cbam.networks.request import NetworkRequest
from cbam.networks.zoo.resnet import ResNet

PAPER_ANCHOR_SIZES: tuple[float, ...] = (32, 64, 128, 256, 512)
"""Anchor sides in pixels of the resized image (Faster R-CNN, COCO)."""
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
TRAINABLE_STAGES: tuple[str, ...] = ("layer4", "layer3", "layer2", "layer1", "stem")
"""What `trainable_layers=k` trains: the first k of these, as torchvision counts them."""
C4_RPN_DEFAULTS: Mapping[str, int] = {
    "rpn_pre_nms_top_n_train": 12000,
    "rpn_pre_nms_top_n_test": 6000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_test": 1000,
}
"""Proposal counts of the single-map C4 RPN (Detectron); torchvision's defaults are per FPN level."""
C4_ROI_SIZE = 14  # RoIAlign output; layer4's stride 2 makes it 7x7


# ---------------------------------------------------------------------------------------- frozen BatchNorm


class EvalBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm1d that never leaves eval mode: fixed running statistics, whatever `train()` says."""

    def train(self, mode: bool = True) -> EvalBatchNorm1d:
        return super().train(False)


class EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that never leaves eval mode; still a BatchNorm2d, so the fused attention gate takes it."""

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


def _frozen_copy(bn: nn.BatchNorm1d | nn.BatchNorm2d, owner: nn.Module) -> nn.Module:
    """The frozen replacement of `bn`, with its statistics and affine values."""
    factory = {"device": bn.running_mean.device, "dtype": bn.running_mean.dtype}
    if isinstance(bn, nn.BatchNorm2d) and not isinstance(owner, FusableAttention):
        frozen: nn.Module = FrozenBatchNorm2d(bn.num_features, eps=bn.eps).to(**factory)
    else:
        cls = EvalBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else EvalBatchNorm1d
        frozen = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, track_running_stats=True, **factory)
    with torch.no_grad():
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
    return frozen.requires_grad_(False).eval()


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in `module` by a frozen one, in place; returns `module`.

    BatchNorm2d becomes torchvision's `FrozenBatchNorm2d` (statistics and affine as buffers),
    except where an attention layer that runs the fused gate owns it (CBAM's spatial gate): there
    it becomes an `EvalBatchNorm2d` whose parameters have `requires_grad=False`, so the fused
    kernels still run. BatchNorm1d (BAM's channel MLP) becomes an `EvalBatchNorm1d` likewise.
    """
    for owner in list(module.modules()):
        for name, child in list(owner.named_children()):
            if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d) and child.track_running_stats:
                setattr(owner, name, _frozen_copy(child, owner))
    return module


def freeze_stages(net: nn.Module, trainable_layers: int) -> None:
    """Stop gradients to all but the last `trainable_layers` stages (0-5, torchvision's count)."""
    if not 0 <= trainable_layers <= len(TRAINABLE_STAGES):
        raise ConfigError(f"trainable_layers must be between 0 and {len(TRAINABLE_STAGES)}, got {trainable_layers}")
    trained = set(TRAINABLE_STAGES[:trainable_layers])
    stem = [net.conv1, net.bn1]
    stages = [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
    # stage attention (BAM) after layer i belongs to stage i
    stages += [(f"layer{i + 1}", att) for i, att in enumerate(_stage_attention(net))]
    for module in stem:
        module.requires_grad_("stem" in trained)
    for name, module in stages:
        module.requires_grad_(name in trained)
    for module in net.modules():  # frozen BatchNorm stays frozen in a trained stage
        if isinstance(module, (EvalBatchNorm1d, EvalBatchNorm2d)):
            module.requires_grad_(False)


# ---------------------------------------------------------------------------------------- backbones

RESNET_PARTS: tuple[str, ...] = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")
"""What a ResNet-family network has, in torchvision's names (timm's ResNets too): a backbone's layout."""


def _is_resnet(name: str) -> bool:
    try:
        return model_entry(name).builder.__module__ == ResNet.__module__
    except ValueError:  # not a zoo name
        return False


def resnet_names() -> list[str]:
    """Zoo networks a Faster R-CNN backbone may be: the ResNets, Wide ResNets and ResNeXts."""
    return [n for n in list_models(include_shortcuts=False) if _is_resnet(n)]


def _stage_attention(net: nn.Module) -> Sequence[nn.Module]:
    """Attention after whole stages (the zoo's BAM); other libraries' networks have none."""
    return getattr(net, "stage_attention", ())


def build_resnet(
    backbone: str,
    attention: AttentionSpec,
    backbone_weights: str | Path | None,
    trainable_layers: int,
    batch_norm: str,
    backbone_kwargs: Mapping[str, Any] | None,
    attach_init: str | None = None,
) -> nn.Module:
    """A ResNet with its classification weights (`backbone_weights`, classifier unused), then frozen as detection
    fine-tuning does. `batch_norm` is "frozen" or "train". A zoo name (`resnet50`) keeps its attention's own
    init, as the paper's backbones bring trained attention; a torchvision:/timm: name (`torchvision:resnet50`,
    weights named as its library names them) gets attention by `cbam.attach`, starting as `attach_init` says."""
    if batch_norm not in ("frozen", "train"):
        raise ConfigError(f"batch_norm must be 'frozen' or 'train', got {batch_norm!r}")
    external = is_external(backbone)
    if not external and not _is_resnet(backbone):
        raise ConfigError(f"backbone {backbone!r} is not a ResNet; choose from {', '.join(resnet_names())} "
                          "or a torchvision:/timm: ResNet such as torchvision:resnet50")  # fmt: skip
    options = dict(backbone_kwargs or {})
    impl = options.pop("impl", "auto")  # how attention runs, not a builder option
    request = NetworkRequest(backbone, attention, options, None if backbone_weights is None else str(backbone_weights),
                             attach_init if external else "paper", impl=impl)  # fmt: skip
    net = build_network(request, None, role="backbone ", verbose=True)
    lacking = [part for part in RESNET_PARTS if not hasattr(net, part)]
    if lacking:
        raise ConfigError(f"backbone {backbone} is not a ResNet-family network (it has no {', '.join(lacking)}); "
                          f"Faster R-CNN takes a ResNet, ResNeXt or Wide ResNet: {', '.join(resnet_names())} "
                          "or torchvision:/timm: ones such as torchvision:resnet50")  # fmt: skip
    if batch_norm == "frozen":
        freeze_batch_norm(net)
    freeze_stages(net, trainable_layers)
    return net


def _out_channels(net: nn.Module) -> int:
    """Channels out of layer4: the zoo's and timm's `num_features`, the classifier's input in torchvision."""
    return int(getattr(net, "num_features", None) or net.get_submodule(classifier_name(net)).in_features)


def _stage_channels(net: nn.Module, stage: int) -> int:
    """Channels out of layer`stage` (1-4)."""
    if stage == 4:
        return _out_channels(net)
    return getattr(net, f"layer{stage + 1}")[0].conv1.in_channels


class ResNetFeatures(nn.Module):
    """The stem and the first stages of a zoo ResNet, returning the maps after `return_stages`.

    Module names are the ResNet's own (`conv1`, `layer1`, `stage_attention`), so a
    classification state dict maps onto it by name. Out: `{"0": map, "1": ...}` in stage order.
    """

    def __init__(self, net: nn.Module, return_stages: Sequence[int]) -> None:
        super().__init__()
        if not return_stages or sorted(set(return_stages)) != list(return_stages) or min(return_stages) < 1:
            raise ConfigError(f"return_stages must be increasing stages from 1 to 4, got {list(return_stages)}")
        self.depth = max(return_stages)
        if self.depth > 4:
            raise ConfigError(f"a ResNet has stages 1 to 4, got {list(return_stages)}")
        self.return_stages = tuple(return_stages)
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
        self.relu = getattr(net, "relu", None) or net.act1  # timm calls it act1
        for stage in range(1, self.depth + 1):
            setattr(self, f"layer{stage}", getattr(net, f"layer{stage}"))
        self.stage_attention = nn.ModuleList(list(_stage_attention(net))[: min(self.depth, 3)])
        self.channels = [_stage_channels(net, s) for s in self.return_stages]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for stage in range(1, self.depth + 1):
            x = getattr(self, f"layer{stage}")(x)
            if stage <= len(self.stage_attention):
                x = self.stage_attention[stage - 1](x)
            if stage in self.return_stages:
                out[str(len(out))] = x
        return out


class C4Backbone(ResNetFeatures):
    """Stem to layer3 (stride 16 with the ImageNet stem): the one map the C4 RPN and RoI pooling read."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net, (3,))
        self.out_channels = self.channels[0]


class ResNetFPN(nn.Module):
    """layer1-4 into a feature pyramid (strides 4-32, plus a max-pooled level at 64), `out_channels` each."""

    def __init__(self, net: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body = ResNetFeatures(net, (1, 2, 3, 4))
        self.fpn = FeaturePyramidNetwork(self.body.channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


class Res5BoxHead(nn.Module):
    """The C4 box head: layer4, attention included, on every RoI, then global average pooling.

    (R, C3, 14, 14) -> layer4 (stride 2) -> (R, C4, 7, 7) -> (R, C4).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.layer4 = net.layer4
        self.out_channels = _out_channels(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------- detectors


def _rpn(features: nn.Module, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float]) -> dict[str, nn.Module]:
    """`FasterRCNN`'s RPN keywords: anchors of `sizes` (one tuple per map of `features`) times `aspect_ratios`
    on every map, and an RPN head as wide as the maps."""
    ratios = tuple(float(r) for r in aspect_ratios)
    if not ratios or min(ratios) <= 0:
        raise ConfigError(f"aspect_ratios must be positive numbers, got {list(aspect_ratios)}")
    if any(not level or min(level) <= 0 for level in sizes):
        raise ConfigError(f"anchor sizes must be positive numbers, got {[list(level) for level in sizes]}")
    anchors = AnchorGenerator(tuple(tuple(level) for level in sizes), (ratios,) * len(sizes))
    rpn_head = RPNHead(features.out_channels, anchors.num_anchors_per_location()[0])
    return {"rpn_anchor_generator": anchors, "rpn_head": rpn_head}


@register_detector
def faster_rcnn_c4(
    *,
    backbone: str,
    attention: AttentionSpec = "none",
    num_classes: int,
    backbone_weights: str | Path | None = None,
    trainable_layers: int = 3,
    batch_norm: str = "frozen",
    anchor_sizes: Sequence[float] = PAPER_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    min_size: int = 600,
    max_size: int = 1000,
    roi_size: int = C4_ROI_SIZE,
    backbone_kwargs: Mapping[str, Any] | None = None,
    attach_init: str | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """The paper's Faster R-CNN (Table 7): a ResNet's stem..layer3 shared, the RPN on its stride-16 map
    (every anchor size x ratio there), RoIAlign 14x14, layer4 with attention as the box head.

    `num_classes` counts the background. `backbone_weights` is a classification checkpoint or state
    dict of the same network (its `fc` is ignored). `batch_norm="train"` keeps ordinary BatchNorm
    (training from scratch). `roi_size` (14: layer4 then sees 7x7) may be smaller where layer4 per RoI is
    too dear (a CPU run on small images). Other keywords go to torchvision's `FasterRCNN` (`box_detections_per_img`,
    `rpn_*`, `image_mean`, ...); `backbone_kwargs` to `cbam.create_model` (`impl`, `stride_in_1x1`). `backbone`
    may be a torchvision:/timm: ResNet (`torchvision:resnet50`, `backbone_weights="IMAGENET1K_V2"`), its attention
    attached and starting as `attach_init` says (see `build_resnet`).
    """
    net = build_resnet(backbone, attention, backbone_weights, trainable_layers, batch_norm, backbone_kwargs,
                       attach_init)  # fmt: skip
    trunk, box_head = C4Backbone(net), Res5BoxHead(net)
    return FasterRCNN(
        trunk,
        min_size=min_size,
        max_size=max_size,
        **_rpn(trunk, [anchor_sizes], aspect_ratios),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=roi_size, sampling_ratio=0),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_channels, num_classes),
        **{**C4_RPN_DEFAULTS, **kwargs},
    )


@register_detector
def faster_rcnn_fpn(
    *,
    backbone: str,
    attention: AttentionSpec = "none",
    num_classes: int,
    backbone_weights: str | Path | None = None,
    trainable_layers: int = 3,
    batch_norm: str = "frozen",
    anchor_sizes: Sequence[float] = PAPER_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = ASPECT_RATIOS,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    backbone_kwargs: Mapping[str, Any] | None = None,
    attach_init: str | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with a feature pyramid on layer1-4 (torchvision's `fasterrcnn_resnet50_fpn` layout):
    one anchor size per pyramid level (five: strides 4 to 64), torchvision's RPN and RoI heads.

    Keywords as `faster_rcnn_c4`; `fpn_channels` is the pyramid's width.
    """
    net = build_resnet(backbone, attention, backbone_weights, trainable_layers, batch_norm, backbone_kwargs,
                       attach_init)  # fmt: skip
    pyramid = ResNetFPN(net, fpn_channels)
    levels = len(pyramid.body.channels) + 1  # + the max-pooled level
    if len(anchor_sizes) != levels:
        raise ConfigError(
            f"faster_rcnn_fpn takes one anchor size per pyramid level ({levels}), got {list(anchor_sizes)}"
        )
    return FasterRCNN(
        pyramid,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        **_rpn(pyramid, [(size,) for size in anchor_sizes], aspect_ratios),
        **kwargs,
    )
