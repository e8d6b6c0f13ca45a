"""Attention by name: the one place that maps a string or spec to an attention layer.

Networks take an *attention spec* and never import a concrete attention class:
- a name: `"none"`, `"se"`, `"cbam"`, `"bam"`, `"channel"`, `"spatial"`;
- a mapping with a `"name"` and constructor options: `{"name": "cbam", "kernel_size": 3}`;
- any callable `channels -> nn.Module` (a class, or `functools.partial(cbam.CBAM, ...)`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from cbam.errors import ConfigError, OptionError, unknown_name
from cbam.layers.bam import BAM
from cbam.layers.cbam import CBAM
from cbam.layers.channel import ChannelAttention
from cbam.layers.se import SqueezeExcite
from cbam.layers.spatial import SpatialAttention

AttentionFactory = Callable[[int], nn.Module]
AttentionSpec = str | Mapping[str, Any] | AttentionFactory | None

NO_ATTENTION = "none"
ATTENTION_LAYERS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "cbam": CBAM,
    "bam": BAM,
    "channel": ChannelAttention,
    "spatial": SpatialAttention,
}
PLACEMENTS: tuple[str, ...] = ("block", "stage")


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


def _layer_class(name: str) -> type[nn.Module]:
    if name not in ATTENTION_LAYERS:
        raise unknown_name("attention", name, attention_names())
    return ATTENTION_LAYERS[name]


def _check_options(cls: type[nn.Module], options: Mapping[str, Any]) -> None:
    """Reject options the layer does not take now, not deep inside a network build."""
    try:
        inspect.signature(cls).bind(1, **options)
    except TypeError as err:
        valid = [p for p in inspect.signature(cls).parameters if p != "channels"]
        raise OptionError(
            f"{cls.__name__} does not accept {dict(options)}: {err}. Options: {', '.join(valid)}"
        ) from None


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
        options = {k: v for k, v in spec.items() if k != "name"}
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


def attention_placement(factory: AttentionFactory) -> str:
    """Where a network puts this attention: `"block"` (every block, CBAM/SE) or `"stage"` (BAM)."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    placement = getattr(target, "placement", "block")
    if placement not in PLACEMENTS:
        raise ConfigError(f"attention placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return placement
