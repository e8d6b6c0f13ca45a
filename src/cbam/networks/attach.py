"""Put attention into a network someone else built: `attach`, `detach`, `attention_modules`.

`attach` finds the blocks of a known architecture (torchvision's and timm's) and wraps the
last layer of each residual branch, so the attention acts on the branch's output before the
skip addition (paper Fig. 3); for plain stacks it wraps the end of each convolution stage. Another site of a block
may be asked for (`cbam.layers.create.SITES`), and a layer asks for its paper's by default: after the depthwise
convolution of an inverted residual (Coordinate Attention in MobileNetV2), or right after a block's last spatial
convolution, before its BatchNorm (SimAM in ResNets and MobileNetV2); in a ResNet, Global Context goes in stages
c3-c5 only, as GCNet places it (`cbam.layers.create.resnet_stages`). The
wrapped layer keeps its weights untouched, as `<name>.module`; the attention is `<name>.attention`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError, OptionError
from cbam.layers.bam import BAM
from cbam.layers.channel import ChannelAttention
from cbam.layers.create import (
    RESNET_STAGES,
    AttentionSpec,
    attention_site,
    check_site,
    create_attention_factory,
    explicit_site,
    is_attention_parameter,
    no_such_site,
    resnet_stages,
)
from cbam.layers.spatial import SpatialAttention
from cbam.networks.counting import count_macs, count_parameters, forward_zeros
from cbam.report import format_markdown_table

log = logging.getLogger(__name__)

INITS: tuple[str, ...] = ("paper", "identity")


class AttentionAfter(nn.Module):
    """`module`, then `attention` on its output; with `gate`, y + g * (attention(y) - y) (exactly y at g = 0 and
    attention(y) at g = 1).

    The gate (one scalar, 0 at first) makes the insertion an exact identity until training
    moves it: `attach(..., init="identity")` for fine-tuning pretrained networks.
    """

    def __init__(self, module: nn.Module, attention: nn.Module, gate: bool = False) -> None:
        super().__init__()
        self.module = module
        self.attention = attention
        self.gate = nn.Parameter(torch.zeros(1)) if gate else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x)
        if self.gate is None:
            return self.attention(y)
        # lerp is exact at both ends (torch computes end - (end - start) * (1 - w) for w >= 0.5): a closed gate
        # gives y, an open one the attention's output, bit for bit
        return torch.lerp(y, self.attention(y), self.gate.to(y.dtype))


# ---------------------------------------------------------------------------------------------
# Where attention goes in known architectures: block class -> the layers to wrap inside it


def _last_child(sequential_name: str) -> Callable[[nn.Module], list[str]]:
    def find(block: nn.Module) -> list[str]:
        children = list(getattr(block, sequential_name).named_children())
        return [f"{sequential_name}.{children[-1][0]}"]

    return find


def _fixed(name: str) -> Callable[[nn.Module], list[str]]:
    return lambda block: [name]


def _whole(block: nn.Module) -> list[str]:
    return [""]


def _vgg_stage_ends(features: nn.Module) -> list[str]:
    """The activation before each max-pool: the end of every convolution stage."""
    children = list(features.named_children())
    return [
        children[i - 1][0]
        for i, (_, child) in enumerate(children)
        if isinstance(child, nn.MaxPool2d) and i > 0 and not isinstance(children[i - 1][1], nn.MaxPool2d)
    ]


# Class names ("module.Class") so that timm is never imported just to look.
BLOCK_RULES: dict[str, Callable[[nn.Module], list[str]]] = {
    # torchvision: ResNet, ResNeXt, Wide ResNet
    "torchvision.models.resnet.BasicBlock": _fixed("bn2"),
    "torchvision.models.resnet.Bottleneck": _fixed("bn3"),
    # torchvision: MobileNetV2/V3 inverted residuals, EfficientNet MBConv/FusedMBConv
    "torchvision.models.mobilenetv2.InvertedResidual": _last_child("conv"),
    "torchvision.models.mobilenetv3.InvertedResidual": _last_child("block"),
    "torchvision.models.efficientnet.MBConv": _last_child("block"),
    "torchvision.models.efficientnet.FusedMBConv": _last_child("block"),
    # torchvision: RegNet (the branch's last conv), ConvNeXt (the whole branch, before layer scale)
    "torchvision.models.regnet.ResBottleneckBlock": _fixed("f.c"),
    "torchvision.models.convnext.CNBlock": _fixed("block"),
    # torchvision: plain and dense stacks, after each convolution stage
    "torchvision.models.densenet._DenseBlock": _whole,
    # timm: ResNet family and EfficientNet family blocks
    "timm.models.resnet.BasicBlock": _fixed("bn2"),
    "timm.models.resnet.Bottleneck": _fixed("bn3"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": _fixed("bn2"),
    "timm.models._efficientnet_blocks.InvertedResidual": _fixed("bn3"),
    "timm.models._efficientnet_blocks.CondConvResidual": _fixed("bn3"),
    "timm.models._efficientnet_blocks.EdgeResidual": _fixed("bn2"),
}


def _is_depthwise(module: nn.Module) -> bool:
    return any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        for m in module.modules()
    )


def _after_depthwise(sequential_name: str) -> Callable[[nn.Module], list[str]]:
    """The depthwise convolution (with its norm and activation) of a block that expands first; none in a block
    without expansion, as the Coordinate Attention authors' MobileNetV2 leaves its first block bare."""

    def find(block: nn.Module) -> list[str]:
        children = list(getattr(block, sequential_name).named_children())
        return [
            f"{sequential_name}.{name}" for i, (name, child) in enumerate(children) if i > 0 and _is_depthwise(child)
        ]

    return find


# The "depthwise" site (`SITES`) of inverted residuals: block class -> the layer that ends its depthwise convolution
DEPTHWISE_RULES: dict[str, Callable[[nn.Module], list[str]]] = {
    "torchvision.models.mobilenetv2.InvertedResidual": _after_depthwise("conv"),
    "torchvision.models.mobilenetv3.InvertedResidual": _after_depthwise("block"),
    "torchvision.models.efficientnet.MBConv": _after_depthwise("block"),
    "timm.models._efficientnet_blocks.InvertedResidual": _fixed("bn2"),  # BatchNormAct2d: conv_dw's norm and act
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": lambda block: [],  # no expansion
}


def _after_spatial_conv(sequential_name: str) -> Callable[[nn.Module], list[str]]:
    """The depthwise convolution itself (before its norm) of every inverted residual, the first included, as SimAM's
    authors' MobileNetV2 places it."""

    def find(block: nn.Module) -> list[str]:
        children = getattr(block, sequential_name).named_children()
        return [f"{sequential_name}.{name}.0" for name, child in children if _is_depthwise(child)]

    return find


# The "conv" site (`SITES`): block class -> its last spatial convolution (wrapped before the norm that follows it)
CONV_RULES: dict[str, Callable[[nn.Module], list[str]]] = {
    "torchvision.models.resnet.BasicBlock": _fixed("conv2"),
    "torchvision.models.resnet.Bottleneck": _fixed("conv2"),
    "timm.models.resnet.BasicBlock": _fixed("conv2"),
    "timm.models.resnet.Bottleneck": _fixed("conv2"),
    "torchvision.models.mobilenetv2.InvertedResidual": _after_spatial_conv("conv"),
    "torchvision.models.mobilenetv3.InvertedResidual": _after_spatial_conv("block"),
    "torchvision.models.efficientnet.MBConv": _after_spatial_conv("block"),
    "timm.models._efficientnet_blocks.InvertedResidual": _fixed("conv_dw"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": _fixed("conv_dw"),
}
SITE_RULES: dict[str, dict[str, Callable[[nn.Module], list[str]]]] = {"depthwise": DEPTHWISE_RULES, "conv": CONV_RULES}
# Networks whose stages are not blocks: network class -> (container, stage ends inside it)
STACK_RULES: dict[str, tuple[str, Callable[[nn.Module], list[str]]]] = {
    "torchvision.models.vgg.VGG": ("features", _vgg_stage_ends),
}


def _class_key(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def has_site(model: nn.Module, site: str) -> bool:
    """Whether the network has blocks with `site` (every block has its output)."""
    return site == "output" or any(_class_key(module) in SITE_RULES[site] for module in model.modules())


def known_targets(model: nn.Module, site: str = "output") -> list[str]:
    """Names of the layers `attach` wraps in a network it knows, at `site` in the blocks that have it and on the
    output of the others; empty if it knows none."""
    rules = SITE_RULES.get(site, {})
    targets: list[str] = []
    for name, module in model.named_modules():
        key = _class_key(module)
        rule = rules[key] if key in rules else BLOCK_RULES.get(key)
        if rule is not None:
            targets += [_join(name, inner) for inner in rule(module)]
        stack = STACK_RULES.get(key)
        if stack is not None:
            container, find = stack
            targets += [_join(name, container, inner) for inner in find(module.get_submodule(container))]
    return targets


def _in_stages(model: nn.Module, names: list[str], factory: Callable[[int], nn.Module]) -> list[str]:
    """Of a ResNet's targets (under layer1-layer4), those in the stages its attention asks for (`resnet_stages`:
    GCNet's c3-c5); every target of any other network."""
    stages = resnet_stages(factory)
    if stages == RESNET_STAGES or not all(hasattr(model, f"layer{i}") for i in RESNET_STAGES):
        return names
    kept = {f"layer{i}" for i in stages}
    return [name for name in names if name.split(".")[0] in kept]


def _matching_targets(model: nn.Module, patterns: Sequence[str | type[nn.Module]]) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        for pattern in patterns:
            hit = fnmatch.fnmatchcase(name, pattern) if isinstance(pattern, str) else isinstance(module, pattern)
            if hit:
                names.append(name)
                break
    # a target inside another target would be wrapped twice over: keep the outermost
    return [n for n in names if not any(n.startswith(other + ".") for other in names)]


# ---------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Insertion:
    """One attention put into the network: where, on how many channels, at what cost."""

    name: str
    channels: int
    params: int


@dataclass(frozen=True)
class AttachReport:
    """What `attach` did: every insertion, and the parameters and GFLOPs it added."""

    insertions: tuple[Insertion, ...]
    added_params: int
    added_gflops: float
    input_size: tuple[int, ...]

    def __str__(self) -> str:
        rows = [[i.name, i.channels, f"{i.params:,}"] for i in self.insertions]
        table = format_markdown_table(["inserted after", "channels", "params"], rows)
        size = "x".join(map(str, self.input_size[1:]))
        return (
            f"{len(self.insertions)} attention modules: +{self.added_params:,} parameters, "
            f"+{self.added_gflops:.4f} GFLOPs at {size}\n{table}"
        )


# ---------------------------------------------------------------------------------------------
# attach / detach / attention_modules


def attention_wrappers(model: nn.Module) -> list[tuple[str, AttentionAfter]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionAfter)]


def _output_channels(model: nn.Module, names: list[str], input_size: Sequence[int]) -> dict[str, int]:
    """The channel count each named layer outputs, found by one forward pass on zeros."""
    found: dict[str, int] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def record(module: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            if isinstance(output, Tensor) and output.dim() == 4:
                found[name] = output.shape[1]

        handles.append(module.register_forward_hook(record))
    try:
        forward_zeros(model, input_size)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"these targets do not output (N, C, H, W) feature maps: {missing[:5]}")
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attach(
    model: nn.Module,
    attention: AttentionSpec = "cbam",
    *,
    targets: Sequence[str | type[nn.Module]] | None = None,
    site: str | None = None,
    init: str = "paper",
    input_size: Sequence[int] = (3, 224, 224),
    verbose: bool = True,
) -> nn.Module:
    """Insert `attention` where the paper puts it, in place; returns the model.

    `targets` (module-name patterns such as `"layer*.conv2"`, or module classes) overrides the
    known placements. `site` (`"output"` or `"depthwise"`) is where it goes in inverted residuals: by default the
    spec's `"site"`, else the layer's own (Coordinate Attention: after the depthwise convolution), else the block's
    output. `init="identity"` gates each insertion with a zero scalar so the network's
    output is unchanged at step 0 (for fine-tuning); `"paper"` keeps the layers' own init. The
    report (also `model.cbam_report`) gives every insertion and the added parameters and GFLOPs; it is
    logged at INFO (DEBUG with `verbose=False`).
    """
    if not isinstance(model, nn.Module):
        raise OptionError(f"attach needs an nn.Module, got {type(model).__name__}")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    existing = attention_wrappers(model)
    if existing:
        raise ConfigError(
            f"{type(model).__name__} already has {len(existing)} attention modules from cbam.attach "
            f"(e.g. at {existing[0][0]}); call cbam.detach(model) first"
        )
    factory = create_attention_factory(attention)
    if factory is None:
        raise ConfigError("attention='none' attaches nothing; name an attention such as 'cbam' or 'se'")
    chosen = check_site(site) if site is not None else explicit_site(attention)
    site = chosen or attention_site(attention)
    if chosen is not None and not targets and not has_site(model, chosen):
        raise no_such_site(chosen, type(model).__name__)
    names = _matching_targets(model, targets) if targets else _in_stages(model, known_targets(model, site), factory)
    if not names:
        hint = "no module matched the given targets" if targets else f"cbam does not know {type(model).__name__}"
        raise ConfigError(
            f"{hint}; pass targets= with module-name patterns (e.g. targets=['layer*.bn2']) or classes "
            "(e.g. targets=[torch.nn.BatchNorm2d]); attention goes after each target's output"
        )
    macs_before = count_macs(model, input_size[-3:])
    channels = _output_channels(model, names, input_size)
    parameter = next(model.parameters(), None)
    insertions = []
    for name in names:
        layer = factory(channels[name])
        if parameter is not None:
            layer = layer.to(device=parameter.device, dtype=parameter.dtype)
        layer.train(model.training)
        wrapper = AttentionAfter(model.get_submodule(name), layer, gate=init == "identity")
        if wrapper.gate is not None and parameter is not None:
            wrapper.gate.data = wrapper.gate.data.to(device=parameter.device, dtype=parameter.dtype)
        _replace(model, name, wrapper)
        insertions.append(Insertion(name, channels[name], count_parameters(layer) + (init == "identity")))
    added_macs = count_macs(model, input_size[-3:]) - macs_before
    report = AttachReport(tuple(insertions), sum(i.params for i in insertions), added_macs / 1e9, (1, *input_size[-3:]))
    model.cbam_report = report
    log.log(logging.INFO if verbose else logging.DEBUG, "attached %s", report)
    return model


def gate_built_in_attention(model: nn.Module) -> nn.Module:
    """Put a zero gate on each attention layer a zoo network built in (its blocks' `attention`, its stages'
    `stage_attention`), in place: the network then computes what it does without attention until training
    moves the gates, as `attach(..., init="identity")` does for the layers it inserts."""
    for module in list(model.modules()):
        if isinstance(module, AttentionAfter):
            continue
        for slot in ("attention", "stage_attention"):
            inner = getattr(module, slot, None)
            holder, names = (
                (inner, [str(i) for i in range(len(inner))]) if isinstance(inner, nn.ModuleList) else (module, [slot])
            )
            for name in names if isinstance(inner, nn.Module) else ():
                layer = getattr(holder, name)
                if not isinstance(layer, nn.Identity | AttentionAfter):
                    setattr(holder, name, AttentionAfter(nn.Identity(), layer, gate=True))
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove every attention `attach` inserted, in place; the original layers come back as they were."""
    wrappers = attention_wrappers(model)
    if not wrappers:
        raise ConfigError(f"{type(model).__name__} has no attention from cbam.attach")
    for name, wrapper in sorted(wrappers, key=lambda item: -item[0].count(".")):
        _replace(model, name, wrapper.module)
    if hasattr(model, "cbam_report"):
        del model.cbam_report
    return model


ATTENTION_TYPES: tuple[type[nn.Module], ...] = (ChannelAttention, SpatialAttention, BAM)


def attention_param_groups(model: nn.Module, attention_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """The parameters that train as optimizer groups: attention's (`is_attention_parameter`) in a group of its own
    at `lr_mult=attention_lr_mult` where that is not 1, so new attention can learn faster than pretrained weights;
    one group otherwise (a checkpoint's optimizer state then has the layout it always had)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    attention = [p for name, p in named if is_attention_parameter(name)]
    if attention_lr_mult == 1.0 or not attention:
        return [{"params": [p for _, p in named], "lr_mult": 1.0}]
    others = [p for name, p in named if not is_attention_parameter(name)]
    return [{"params": others, "lr_mult": 1.0}, {"params": attention, "lr_mult": attention_lr_mult}]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attention map producer in the network (channel, spatial, BAM), with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ATTENTION_TYPES)]


@contextlib.contextmanager
def _frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Recomputing a map in training mode must not move BatchNorm's running statistics again."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class AttentionRecorder:
    """While active, keeps the latest map of every attention module: `maps[name]`.

    with cbam.AttentionRecorder(model) as recorder:
        model(images)
    recorder.maps["layer4.2.attention.spatial"]  # (N, 1, H, W)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.maps: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> AttentionRecorder:
        for name, module in attention_modules(self.model):

            def keep(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name) -> None:
                with torch.no_grad(), _frozen_batchnorm_statistics(module):
                    self.maps[name] = module.attention_map(inputs[0])

            self._handles.append(module.register_forward_hook(keep))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
