"""SSD and StairNet on VGG16 or MobileNet v1, attention before every classifier (paper Sec. 4.6, Table 8).

SSD (Liu et al., ECCV 2016) classifies default boxes on six maps, 38/19/10/5/3/1 px for VGG16 at
300 px. StairNet (Woo et al., WACV 2018) first spreads the coarse maps' semantics down, coarsest
first: a learned deconvolution doubles the coarser *fused* map, it is added to that scale's own
features (through a 1x1 conv) and a 3x3 conv gives the fused map the scale's classifier sees. The
CBAM paper puts SE or CBAM "right before every classifier": one module on each of the six maps the
heads read. Default boxes, matching, box coding, hard negative mining, losses and post-processing
are torchvision's `SSD`; this file holds the backbones, the StairNet module and the attention slots.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDScoringHead

from cbam.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cbam.detection.registry import register_detector
from cbam.errors import CheckpointError, ConfigError, unknown_name
from cbam.layers.create import AttentionSpec, create_attention_factory
from cbam.networks.build import create_model
from cbam.networks.weights import StoredWeights, load_state_into, read_network_weights, recorded_options
from cbam.networks.zoo.common import attention_or_identity, initialize_weights
from cbam.networks.zoo.mobilenet import MobileNetV1

BACKBONES: tuple[str, ...] = ("vgg16", "mobilenet_v1")
SSD300_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
"""SSD300's default boxes: 4, 6, 6, 6, 4, 4 per location (2 squares + 2 per ratio)."""
TABLE8_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2, 3),) * 4 + ((2,),) * 2
"""Six boxes on the first scale too (6, 6, 6, 6, 4, 4): with these, all four VGG16 rows of Table 8 match as printed."""
VOC_BOX_SCALES: tuple[float, ...] = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
"""Box sides as fractions of the image, SSD300 on VOC: conv4_3 at 0.1, then from s_min 0.2 in SSD's integer-percent
steps toward s_max 0.9 (floor((90 - 20) / 4) = 17), the last being the extra box of the coarsest scale."""
L2NORM_SCALE = 20.0
"""Initial per-channel scale of the L2-normalised conv4_3 map (ParseNet, as SSD uses it)."""

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG16_FC_WIDTH = 1024  # fc6 and fc7 as convolutions, subsampled from 4096 (SSD Sec. 3)
# (in, 1x1 width, out, stride, padding) of the extra layers that add the coarse scales
VGG16_EXTRAS: tuple[tuple[int, int, int, int, int], ...] = (
    (1024, 256, 512, 2, 1),  # conv8_2, 10 px
    (512, 128, 256, 2, 1),  # conv9_2, 5 px
    (256, 128, 256, 1, 0),  # conv10_2, 3 px
    (256, 128, 256, 1, 0),  # conv11_2, 1 px
)
MOBILENET_TAP = 11  # features[11] ends the 512-wide stride-16 stage (conv11 of MobileNet-SSD)
# the first one's input is the trunk's last width (1024 at width_mult 1.0)
MOBILENET_EXTRAS: tuple[tuple[int, int, int, int, int], ...] = (
    (1024, 256, 512, 2, 1),  # 5 px
    (512, 128, 256, 2, 1),  # 3 px
    (256, 128, 256, 2, 1),  # 2 px
    (256, 64, 128, 2, 1),  # 1 px
)


@dataclass(frozen=True)
class BackboneLayout:
    """What differs between the two backbones' detectors, chosen to land near Table 8's counts."""

    head_kernel_size: int  # the classifiers' and box regressors' kernel
    fusion_channels: int  # width of StairNet's fused maps
    separable: bool  # StairNet's 3x3 convs depthwise-separable and its deconvolution depthwise


LAYOUTS: dict[str, BackboneLayout] = {
    "vgg16": BackboneLayout(head_kernel_size=3, fusion_channels=256, separable=False),
    "mobilenet_v1": BackboneLayout(head_kernel_size=1, fusion_channels=128, separable=True),
}


def conv_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Conv (with a bias unless BatchNorm follows), optional BatchNorm, ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def xavier_init_(module: nn.Module) -> None:
    """SSD's init for the layers it adds: Xavier-uniform weights, zero biases, BatchNorm 1 and 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class ExtraLayers(nn.ModuleList):
    """SSD's extra layers: a 1x1 conv that narrows, then a 3x3 conv that shrinks the map, per coarse scale."""

    def __init__(self, config: Sequence[tuple[int, int, int, int, int]], batch_norm: bool) -> None:
        super().__init__(
            nn.Sequential(
                conv_relu(c_in, mid, 1, batch_norm=batch_norm),
                conv_relu(mid, c_out, 3, stride, padding, batch_norm=batch_norm),
            )
            for c_in, mid, c_out, stride, padding in config
        )
        self.out_channels = [c_out for _, _, c_out, _, _ in config]

    def forward(self, x: Tensor) -> list[Tensor]:
        """The map after each extra layer, finest first, starting from the trunk's last map `x`."""
        maps = []
        for extra in self:
            x = extra(x)
            maps.append(x)
        return maps


# ---------------------------------------------------------------------------------------- backbones


class L2Norm(nn.Module):
    """Each position's channel vector scaled to unit length, times a learned per-channel scale (ParseNet)."""

    def __init__(self, channels: int, scale: float = L2NORM_SCALE) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)


def _torchvision_vgg16_names() -> dict[int, str]:
    """Index in torchvision's `vgg16().features` of each conv, by its paper name (conv1_1 ... conv5_3)."""
    names, index = {}, 0
    for stage, widths in enumerate(VGG16_STAGES, 1):
        for i in range(1, len(widths) + 1):
            names[index] = f"conv{stage}_{i}"
            index += 2  # the conv, then its ReLU
        index += 1  # the stage's max-pool
    return names


TORCHVISION_VGG16_CONVS: dict[int, str] = _torchvision_vgg16_names()


class VGG16Trunk(nn.Module):
    """conv1_1 to conv5_3 of VGG16, named as in the paper; pool3 rounds up, as SSD's 38 px map needs."""

    def __init__(self) -> None:
        super().__init__()
        channels = 3
        for stage, widths in enumerate(VGG16_STAGES, 1):
            for i, width in enumerate(widths, 1):
                self.add_module(f"conv{stage}_{i}", nn.Conv2d(channels, width, 3, padding=1))
                channels = width
        initialize_weights(self)  # Kaiming fan-out, zero bias: torchvision's VGG init too, for training from scratch

    def _stage(self, x: Tensor, stage: int) -> Tensor:
        for i in range(1, len(VGG16_STAGES[stage - 1]) + 1):
            x = F.relu(getattr(self, f"conv{stage}_{i}")(x), inplace=True)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conv4_3, conv5_3), (N, 512, 38, 38) and (N, 512, 19, 19) at 300 px."""
        x = F.max_pool2d(self._stage(x, 1), 2)
        x = F.max_pool2d(self._stage(x, 2), 2)
        x = F.max_pool2d(self._stage(x, 3), 2, ceil_mode=True)
        conv4_3 = self._stage(x, 4)
        return conv4_3, self._stage(F.max_pool2d(conv4_3, 2), 5)


class VGG16Body(nn.Module):
    """SSD's VGG16: the trunk, L2Norm on conv4_3, pool5 3x3 stride 1, fc6 (3x3, dilation 6), fc7 (1x1), extras."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = VGG16Trunk()
        self.l2norm = L2Norm(VGG16_STAGES[3][-1])
        self.fc6 = nn.Conv2d(VGG16_STAGES[4][-1], VGG16_FC_WIDTH, 3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(VGG16_FC_WIDTH, VGG16_FC_WIDTH, 1)
        self.extras = ExtraLayers(VGG16_EXTRAS, batch_norm=False)
        xavier_init_(nn.ModuleList([self.fc6, self.fc7, self.extras]))
        self.out_channels = [VGG16_STAGES[3][-1], VGG16_FC_WIDTH, *self.extras.out_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3, conv5_3 = self.trunk(x)
        x = F.max_pool2d(conv5_3, 3, stride=1, padding=1)  # pool5
        x = F.relu(self.fc7(F.relu(self.fc6(x), inplace=True)), inplace=True)
        return [self.l2norm(conv4_3), x, *self.extras(x)]


class MobileNetV1Trunk(nn.Module):
    """The zoo's MobileNet v1 convolutions (`features`, keyed as in `mobilenet_v1`), no attention; `options`
    go to its builder (`width_mult`, `stem`), as a `cbam train` checkpoint records them."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.features = create_model("mobilenet_v1", **options).features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The stride-16 and stride-32 maps, (N, 512, 19, 19) and (N, 1024, 10, 10) at 300 px and width 1.0."""
        x = self.features[: MOBILENET_TAP + 1](x)
        return x, self.features[MOBILENET_TAP + 1 :](x)


class MobileNetV1Body(nn.Module):
    """MobileNet-SSD: maps at strides 16 and 32, then four extra layers (with BatchNorm) to six scales.

    `options` shape the trunk (`width_mult=0.5` halves its widths); the extra layers keep their widths.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.trunk = MobileNetV1Trunk(**options)
        features = self.trunk.features
        stride16, stride32 = features[MOBILENET_TAP][-1].conv.out_channels, features[-1][-1].conv.out_channels
        (_, *first), *rest = MOBILENET_EXTRAS
        self.extras = ExtraLayers([(stride32, *first), *rest], batch_norm=True)
        xavier_init_(self.extras)
        self.out_channels = [stride16, stride32, *self.extras.out_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        stride16, x = self.trunk(x)
        return [stride16, x, *self.extras(x)]


def _build_body(backbone: str, options: Mapping[str, Any]) -> VGG16Body | MobileNetV1Body:
    """The body of `backbone`, its trunk built with the builder `options` (MobileNet v1's; VGG16 takes none)."""
    if backbone == "vgg16":
        if options:
            raise ConfigError(f"backbone vgg16 takes no builder options, got {sorted(options)}")
        return VGG16Body()
    if backbone == "mobilenet_v1":
        return MobileNetV1Body(**options)
    raise unknown_name("backbone", backbone, BACKBONES)


def map_sizes(body: nn.Module, size: int) -> list[int]:
    """Side in px of each map `body` gives for a `size` px image, run on the meta device (no memory, no compute)."""
    meta = {k: torch.empty_like(v, device="meta") for k, v in (*body.named_parameters(), *body.named_buffers())}
    image = torch.empty(2, 3, size, size, device="meta")  # 2: BatchNorm refuses one value per channel in training
    try:
        maps = torch.func.functional_call(body, meta, (image,))
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(f"size {size} px is too small for the {type(body).__name__}'s six scales: {reason}") from None
    return [m.shape[-1] for m in maps]


# ---------------------------------------------------------------------------------------- StairNet


def upsample_padding(coarse: int, fine: int) -> tuple[int, int]:
    """(padding, output_padding) of a 3x3 stride-2 deconvolution from `coarse` to `fine` px.

    Its output side is 2 * coarse + 1 - 2 * padding + output_padding, so one of padding 0 or 1 and
    output_padding 0 or 1 reaches any of 2c-1 .. 2c+2: every step of SSD's pyramids (19 -> 38, 10 -> 19, 1 -> 3).
    """
    for padding in (1, 0):
        output_padding = fine - (2 * coarse + 1 - 2 * padding)
        if output_padding in (0, 1):
            return padding, output_padding
    raise ConfigError(f"StairNet upsamples by about 2; it cannot reach {fine} px from {coarse} px")


class StairNet(nn.Module):
    """StairNet's top-down aggregation (Woo et al.): fused_i = smooth_i(relu(lateral_i(x_i) + up_i(fused_i+1))).

    From the coarsest scale down, a learned 3x3 stride-2 deconvolution (`up`) brings the coarser
    fused map to this scale's side, a 1x1 conv (`lateral`) brings this scale's features to the
    common width, they are added, and a 3x3 conv (`smooth`) gives the fused map. `separable` makes
    the deconvolution depthwise and `smooth` depthwise-separable, MobileNet's own economy.
    """

    def __init__(self, in_channels: Sequence[int], sizes: Sequence[int], channels: int, separable: bool) -> None:
        super().__init__()
        if len(in_channels) != len(sizes):
            raise ConfigError(f"StairNet needs one size per map: {len(in_channels)} maps, {len(sizes)} sizes")
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels)) for c in in_channels
        )
        self.up = nn.ModuleList()
        for coarse, fine in zip(sizes[1:], sizes[:-1], strict=True):
            padding, output_padding = upsample_padding(coarse, fine)
            groups = channels if separable else 1
            deconv = nn.ConvTranspose2d(channels, channels, 3, 2, padding, output_padding, groups=groups, bias=False)
            self.up.append(nn.Sequential(deconv, nn.BatchNorm2d(channels)))
        self.smooth = nn.ModuleList(self._smooth(channels, separable) for _ in in_channels)
        self.out_channels = [channels] * len(in_channels)
        xavier_init_(self)

    @staticmethod
    def _smooth(channels: int, separable: bool) -> nn.Sequential:
        if not separable:
            return conv_relu(channels, channels, 3, padding=1, batch_norm=True)
        return nn.Sequential(
            *conv_relu(channels, channels, 3, padding=1, groups=channels, batch_norm=True),
            *conv_relu(channels, channels, 1, batch_norm=True),
        )

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        fused = self.smooth[-1](F.relu(self.lateral[-1](maps[-1])))
        out = [fused]
        for i in range(len(maps) - 2, -1, -1):
            fused = self.smooth[i](F.relu(self.lateral[i](maps[i]) + self.up[i](fused), inplace=True))
            out.append(fused)
        return out[::-1]


# ---------------------------------------------------------------------------------------- the detector


class SSDFeatures(nn.Module):
    """The maps the classifiers read: the body's six, through StairNet if any, then one attention module each.

    `attention[i]` is applied last, to exactly the map that classifier i and box regressor i see
    (the paper's "right before every classifier"); `nn.Identity` where there is no attention.
    """

    def __init__(self, body: VGG16Body | MobileNetV1Body, fusion: StairNet | None, attention: AttentionSpec) -> None:
        super().__init__()
        self.body = body
        self.fusion = fusion
        self.out_channels = list(fusion.out_channels if fusion is not None else body.out_channels)
        factory = create_attention_factory(attention)
        self.attention = nn.ModuleList(attention_or_identity(factory, c) for c in self.out_channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)
        if self.fusion is not None:
            maps = self.fusion(maps)
        return OrderedDict((str(i), attend(m)) for i, (attend, m) in enumerate(zip(self.attention, maps, strict=True)))


class SSDPredictionHead(nn.Module):
    """One classifier and one box regressor conv per map (`kernel_size` 3 as SSD, 1 for MobileNet-SSD).

    Returns torchvision's head contract, `{"bbox_regression": (N, boxes, 4), "cls_logits": (N, boxes, K)}`.
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        classifiers = nn.ModuleList(
            nn.Conv2d(c, a * num_classes, kernel_size, padding=pad)
            for c, a in zip(in_channels, num_anchors, strict=True)
        )
        regressors = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel_size, padding=pad) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        xavier_init_(classifiers)
        xavier_init_(regressors)
        self.classification_head = SSDScoringHead(classifiers, num_classes)
        self.regression_head = SSDScoringHead(regressors, 4)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


# ---------------------------------------------------------------------------------------- backbone weights


def subsample_fc(w6: Tensor, b6: Tensor, w7: Tensor, b7: Tensor, width: int) -> dict[str, Tensor]:
    """SSD's fc6/fc7 (`width` wide) subsampled from VGG's ImageNet classifier.0/.3, as SSD Sec. 3 does.

    Every (outputs / width)-th unit is kept; fc6's 7x7 kernel keeps every 3rd tap (a 3x3 kernel that
    the dilation spreads back out) and fc7 keeps the rows and columns of the kept units.
    """
    outputs, inputs = w6.shape
    step = outputs // width
    shapes_fit = w7.shape == (outputs, outputs) and b6.shape == b7.shape == (outputs,)
    if outputs % width or inputs % 49 or not shapes_fit:
        raise ValueError(f"classifier.0 {tuple(w6.shape)} / classifier.3 {tuple(w7.shape)} are not VGG's fc6/fc7")
    return {
        "fc6.weight": w6.view(outputs, inputs // 49, 7, 7)[::step, :, ::3, ::3].contiguous(),  # (width, C, 3, 3)
        "fc6.bias": b6[::step].contiguous(),
        "fc7.weight": w7[::step, ::step].contiguous().view(width, width, 1, 1),
        "fc7.bias": b7[::step].contiguous(),
    }


def _fc_from_classifier(body: VGG16Body, state: Mapping[str, Tensor], source: str) -> None:
    """Load fc6/fc7 from the file's classifier where it has one (torchvision's "features only" weights store
    NaN there, which counts as none)."""
    keys = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")
    if not all(k in state for k in keys) or not all(torch.isfinite(state[k]).all() for k in keys):
        return
    try:
        fc = subsample_fc(*(state[k] for k in keys), width=VGG16_FC_WIDTH)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    own = body.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in fc.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: the classifier does not subsample to fc6/fc7: {', '.join(wrong)}")
    body.load_state_dict(fc, strict=False)


def load_backbone(module: nn.Module, state: Mapping[str, Tensor], source: str, ignore: tuple[str, ...] = ()) -> None:
    """Load `state` into a body's `module` strictly (see `cbam.networks.weights.load_state_into`), keys starting
    with an `ignore` prefix left out."""
    load_state_into(module, state, source, ignore=ignore, target=f"the {type(module).__name__} backbone", advice="")


def load_backbone_weights(
    body: VGG16Body | MobileNetV1Body, path: str | Path, backbone: str, weights: StoredWeights | None = None
) -> None:
    """Load ImageNet weights from `path` into `body`'s trunk (and, for VGG16, fc6/fc7 where the file has them).

    mobilenet_v1: a `cbam train` checkpoint (`.pt` or `.safetensors`) or any state dict with the zoo's
    `features.*` keys (`fc.*` is ignored). vgg16: torchvision's layout, `features.N.*` -> conv1_1 ...
    conv5_3, `classifier.0/.3` -> fc6/fc7 when present. Never downloads. Every problem with the file raises
    one `CheckpointError` that names it, as for the Faster R-CNN backbones. `weights`: the file as
    `read_network_weights(path, backbone, "backbone ")` already read it, so that it is not read again.
    """
    source = str(path)
    state = (weights if weights is not None else read_network_weights(path, backbone, "backbone ")).state
    if backbone == "mobilenet_v1":
        load_backbone(body.trunk, state, source, ignore=(f"{MobileNetV1.classifier_name}.",))
        return
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        index, dot, param = key.removeprefix("features.").partition(".")
        if key.startswith("features.") and dot and index.isdigit() and int(index) in TORCHVISION_VGG16_CONVS:
            renamed[f"{TORCHVISION_VGG16_CONVS[int(index)]}.{param}"] = value
        elif not key.startswith("classifier."):
            renamed[key] = value  # reported as unexpected under its own name
    load_backbone(body.trunk, renamed, f"{source} (torchvision vgg16 layout: features.N -> conv1_1..conv5_3)")
    _fc_from_classifier(body, state, source)


# ---------------------------------------------------------------------------------------- builders


def _build(
    backbone: str,
    attention: AttentionSpec,
    num_classes: int,
    size: int,
    backbone_weights: str | Path | None,
    aspect_ratios: Sequence[Sequence[int]] | None,
    backbone_kwargs: Mapping[str, Any] | None,
    kwargs: dict[str, Any],
    *,
    stairnet: bool = False,
    fusion_channels: int | None = None,
) -> SSD:
    """SSD on `backbone`, with StairNet's fusion (`fusion_channels` wide, or the layout's width) if `stairnet`.

    The body takes the builder options the weights file records (a `cbam train` checkpoint's `width_mult`,
    `stem`), `backbone_kwargs` overriding them."""
    if num_classes < 2:
        raise ConfigError(f"num_classes counts the background and must be at least 2, got {num_classes}")
    if backbone not in BACKBONES:
        raise unknown_name("backbone", backbone, BACKBONES)
    weights = read_network_weights(backbone_weights, backbone, "backbone ") if backbone_weights is not None else None
    body = _build_body(backbone, {**recorded_options(weights), **dict(backbone_kwargs or {})})
    layout = LAYOUTS[backbone]
    if backbone_weights is not None:
        load_backbone_weights(body, backbone_weights, backbone, weights)
    sizes = map_sizes(body, size)  # also refuses a size too small for the six scales
    fusion = None
    if stairnet:
        width = fusion_channels if fusion_channels is not None else layout.fusion_channels
        if width < 1:
            raise ConfigError(f"fusion_channels must be positive, got {width}")
        fusion = StairNet(body.out_channels, sizes, width, layout.separable)
    features = SSDFeatures(body, fusion, attention)
    channels = features.out_channels
    ratios = [list(r) for r in (aspect_ratios if aspect_ratios is not None else SSD300_ASPECT_RATIOS)]
    if len(ratios) != len(channels):
        raise ConfigError(f"aspect_ratios needs one list per scale ({len(channels)}), got {len(ratios)}")
    boxes = DefaultBoxGenerator(ratios, scales=list(VOC_BOX_SCALES))  # centres at (i + 0.5) / map side (SSD eq. 4)
    head = SSDPredictionHead(channels, boxes.num_anchors_per_location(), num_classes, layout.head_kernel_size)
    options = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), **kwargs}
    return SSD(features, boxes, (size, size), num_classes, head=head, **options)


@register_detector
def ssd300(
    *,
    backbone: str = "vgg16",
    attention: AttentionSpec = "none",
    num_classes: int = 21,
    size: int = 300,
    backbone_weights: str | Path | None = None,
    aspect_ratios: Sequence[Sequence[int]] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SSD:
    """SSD300 (Table 8's "SSD" rows): 26.29M on VGG16, 5.79M on MobileNet v1, 21 classes.

    `attention` goes on each of the six maps before its classifier (none in the paper's SSD rows).
    `aspect_ratios` replaces SSD300's (4, 6, 6, 6, 4, 4 boxes); other keywords go to torchvision's `SSD`.
    The backbone takes the builder options its `backbone_weights` file records (a `cbam train` checkpoint of
    `mobilenet_v1` with `width_mult=0.5` gives a half-width trunk); `backbone_kwargs` (to `cbam.create_model`,
    `width_mult`, `stem`) override them. VGG16 takes none.
    """
    return _build(backbone, attention, num_classes, size, backbone_weights, aspect_ratios, backbone_kwargs, kwargs)


@register_detector
def stairnet300(
    *,
    backbone: str = "vgg16",
    attention: AttentionSpec = "none",
    num_classes: int = 21,
    size: int = 300,
    backbone_weights: str | Path | None = None,
    aspect_ratios: Sequence[Sequence[int]] | None = None,
    fusion_channels: int | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SSD:
    """StairNet300 (Table 8): SSD300 with top-down fusion, attention on each fused map before its classifier.

    `fusion_channels` is the fused maps' width (256 for VGG16, 128 for MobileNet v1); the other keywords as
    `ssd300`'s.
    """
    return _build(
        backbone,
        attention,
        num_classes,
        size,
        backbone_weights,
        aspect_ratios,
        backbone_kwargs,
        kwargs,
        stairnet=True,
        fusion_channels=fusion_channels,
    )
