"""Attention by name: the one place that maps a string or spec to an attention layer.

Networks take an *attention spec* and never import a concrete attention class:
- a name: `"none"`, or one of `ATTENTION_LAYERS` (`"se"`, `"cbam"`, `"bam"`, `"eca"`, `"coord"`, ...);
- a mapping with a `"name"` and constructor options: `{"name": "cbam", "kernel_size": 3}`, and optionally a
  `"site"` (`SITES`): where in an inverted residual it goes, after the block's output or its depthwise convolution;
- any callable `channels -> nn.Module` (a class, or `functools.partial(cbam.CBAM, ...)`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from cbam.errors import ConfigError, OptionError, unknown_name
from cbam.layers.bam import BAM
from cbam.layers.cbam import CBAM
from cbam.layers.channel import ChannelAttention
from cbam.layers.coord import CoordinateAttention
from cbam.layers.eca import EfficientChannelAttention
from cbam.layers.ese import EffectiveSqueezeExcite
from cbam.layers.gather_excite import GatherExcite
from cbam.layers.global_context import GlobalContext
from cbam.layers.se import SqueezeExcite
from cbam.layers.simam import SimAM
from cbam.layers.spatial import SpatialAttention
from cbam.layers.triplet import TripletAttention

AttentionFactory = Callable[[int], nn.Module]
AttentionSpec = str | Mapping[str, Any] | AttentionFactory | None

NO_ATTENTION = "none"
# Every attention by name: a layer class, or a class with fixed options (`ceca`: ECA padded circularly).
ATTENTION_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "cbam": CBAM,
    "bam": BAM,
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
    "eca": EfficientChannelAttention,
    "ceca": functools.partial(EfficientChannelAttention, circular=True),
    "ese": EffectiveSqueezeExcite,
    "ge": GatherExcite,
    "gc": GlobalContext,
    "coord": CoordinateAttention,
    "simam": SimAM,
    "triplet": TripletAttention,
}


class About(NamedTuple):
    """How tables name an attention, and the paper that defines it (the reference its tests check it against)."""

    label: str
    paper: str


ATTENTION_ABOUT: dict[str, About] = {
    "se": About("SE", "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"),
    "cbam": About("CBAM", "Woo et al., CBAM, ECCV 2018"),
    "bam": About("BAM", "Park et al., BAM, BMVC 2018"),
    "channel": About("channel", "Woo et al., CBAM, ECCV 2018 (its channel branch)"),
    "spatial": About("spatial", "Woo et al., CBAM, ECCV 2018 (its spatial branch)"),
    "eca": About("ECA", "Wang et al., ECA-Net, CVPR 2020"),
    "ceca": About("CECA", "Wang et al., ECA-Net, CVPR 2020, padded circularly (timm's CECA)"),
    "ese": About("eSE", "Lee & Park, CenterMask (effective SE), CVPR 2020"),
    "ge": About("GE", "Hu et al., Gather-Excite, NeurIPS 2018 (GE-theta-minus; parametric=True: GE-theta)"),
    "gc": About("GC", "Cao et al., GCNet, ICCVW 2019"),
    "coord": About("CoordAtt", "Hou et al., Coordinate Attention, CVPR 2021"),
    "simam": About("SimAM", "Yang et al., SimAM, ICML 2021"),
    "triplet": About("Triplet", "Misra et al., Triplet Attention, WACV 2021"),
}
PLACEMENTS: tuple[str, ...] = ("block", "stage")
SITES: tuple[str, ...] = ("output", "depthwise", "conv")
"""Where in a block attention goes: on the block's output before the skip addition (CBAM's placement in every
block); in an inverted residual (MobileNetV2, EfficientNet), after the depthwise convolution with its norm and
activation, on the expanded channels (Coordinate Attention's, and where MobileNetV3 and EfficientNet keep their SE);
or right after the block's last spatial convolution (a ResNet block's conv2, an inverted residual's depthwise
convolution), before its BatchNorm (SimAM's authors' placement). A layer class names its own paper's choice as
`preferred_site` (a block without that site takes the output); a spec's `"site"` overrides it."""
SPEC_KEYS: frozenset[str] = frozenset({"name", "site"})
"""The keys of a spec mapping that are not the layer's constructor options."""


ATTENTION_MODULE_NAMES: tuple[str, ...] = ("attention", "stage_attention")
"""Module names under which attention lives: the zoo's blocks and stages, and `attach`'s wrappers."""


def is_attention_parameter(name: str) -> bool:
    """Whether a parameter (or state) name belongs to attention: a layer under an attention module, or the
    zero-started `gate` of an identity-initialised insertion."""
    parts = name.split(".")
    return parts[-1] == "gate" or any(part in ATTENTION_MODULE_NAMES for part in parts[:-1])


def attention_names() -> list[str]:
    """Every attention name a spec may use, `"none"` first."""
    return [NO_ATTENTION, *ATTENTION_LAYERS]


def _layer_class(name: str) -> Callable[..., nn.Module]:
    if name not in ATTENTION_LAYERS:
        raise unknown_name("attention", name, attention_names())
    return ATTENTION_LAYERS[name]


def _check_options(cls: Callable[..., nn.Module], options: Mapping[str, Any]) -> None:
    """Reject options the layer does not take now, not deep inside a network build."""
    try:
        inspect.signature(cls).bind(1, **options)
    except TypeError as err:
        valid = [p for p in inspect.signature(cls).parameters if p != "channels"]
        name = getattr(cls, "__name__", None) or cls.func.__name__
        raise OptionError(f"{name} does not accept {dict(options)}: {err}. Options: {', '.join(valid)}") from None


def attention_options(spec: AttentionSpec) -> list[str]:
    """The options a named spec's layer takes (none for "none" or a callable): to tell a misplaced one apart."""
    name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, Mapping) else None
    if name not in ATTENTION_LAYERS:
        return []
    return [p for p in inspect.signature(ATTENTION_LAYERS[name]).parameters if p != "channels"]


def create_attention_factory(spec: AttentionSpec) -> AttentionFactory | None:
    """Resolve a spec to a `channels -> module` factory, or None for no attention."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == NO_ATTENTION:
            return None
        return _layer_class(spec)
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"an attention spec mapping needs a 'name' key, got {dict(spec)}")
        options = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
        if spec["name"] == NO_ATTENTION:
            if options:
                raise ConfigError(f"attention 'none' takes no options, got {options}")
            return None
        cls = _layer_class(spec["name"])
        _check_options(cls, options)
        return functools.partial(cls, **options)
    if callable(spec):
        return spec
    raise OptionError(f"attention must be a name, a mapping with 'name', or a callable; got {type(spec).__name__}")


def _layer_class_of(factory: AttentionFactory) -> Callable[..., nn.Module]:
    """The class (or callable) a factory builds, under any fixed options."""
    return factory.func if isinstance(factory, functools.partial) else factory


RESNET_STAGES: tuple[int, ...] = (1, 2, 3, 4)


def resnet_stages(factory: AttentionFactory) -> tuple[int, ...]:
    """The ResNet stages (1-4) whose blocks get this attention by default: its layer's own `resnet_stages` (GCNet's
    c3-c5), else every stage, as CBAM and SE place it."""
    return tuple(getattr(_layer_class_of(factory), "resnet_stages", RESNET_STAGES))


def attention_placement(factory: AttentionFactory) -> str:
    """Where a network puts this attention: `"block"` (every block, CBAM/SE) or `"stage"` (BAM)."""
    target = _layer_class_of(factory)
    placement = getattr(target, "placement", "block")
    if placement not in PLACEMENTS:
        raise ConfigError(f"attention placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return placement


def check_site(site: object) -> str:
    """`site` itself if it names one of `SITES`, else one line listing them."""
    if site not in SITES:
        raise ConfigError(f"attention site must be one of {', '.join(SITES)}, got {site!r}")
    return site


def explicit_site(spec: AttentionSpec) -> str | None:
    """The `"site"` a spec mapping gives, checked; None where it gives none (the layer's own then applies)."""
    return check_site(spec["site"]) if isinstance(spec, Mapping) and "site" in spec else None


def attention_site(spec: AttentionSpec) -> str:
    """Where this attention goes in a block (`SITES`): the spec's `"site"`, else its layer's own
    (`preferred_site`), else the block's output."""
    factory = create_attention_factory(spec)
    return explicit_site(spec) or check_site(getattr(_layer_class_of(factory), "preferred_site", "output"))


SITE_BLOCKS: dict[str, str] = {
    "depthwise": "inverted residuals (MobileNetV2/V3, EfficientNet)",
    "conv": "residual blocks (ResNet, ResNeXt, Wide ResNet) and inverted residuals (MobileNetV2/V3, EfficientNet)",
}


def no_such_site(site: str, network: str) -> ConfigError:
    """The one error for a site asked of a network whose blocks do not have it."""
    return ConfigError(
        f"site {site!r} is inside {SITE_BLOCKS[site]}; {network} has none: leave the site out (attention then goes "
        "on each block's output), or use a network that has them (e.g. torchvision:mobilenet_v2)"
    )


def site_in(site: str, sites: tuple[str, ...], network: str) -> str:
    """`site` (one of `SITES`) if the network's blocks have it (`sites`), else one line saying they do not."""
    if check_site(site) not in sites:
        raise no_such_site(site, network)
    return site


def block_site(spec: AttentionSpec, sites: tuple[str, ...], network: str) -> str:
    """Where this attention goes in a network whose blocks have `sites`: the spec's `"site"`, refused by name where
    the blocks lack it; else its layer's own where they have it; else the block's output."""
    chosen = explicit_site(spec)
    if chosen is not None:
        return site_in(chosen, sites, network)
    preferred = attention_site(spec)
    return preferred if preferred in sites else "output"
