"""The registry of the zoo's builders: `register_model` adds one, under its name and its attention shortcuts.

Only storage lives here, so that the zoo's files can register themselves by importing it; looking a name up
(which needs the whole zoo imported) is `cbam.networks.names`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# Each zoo network is also registered as `<name>_<attention>` for these (`resnet50_cbam`, `resnet18_eca`).
SHORTCUT_ATTENTIONS: tuple[str, ...] = ("se", "cbam", "bam", "eca", "ese", "ge", "gc", "coord", "simam", "triplet")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: the builder and the keyword arguments the name fixes."""

    name: str
    builder: Builder
    fixed: Mapping[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, ModelEntry] = {}


def _add(entry: ModelEntry) -> None:
    if entry.name in REGISTRY:
        raise ValueError(f"model name {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry


def register_model(builder: Builder) -> Builder:
    """Register `builder` under its name and its attention shortcuts (`resnet50_cbam`); returns it unchanged."""
    _add(ModelEntry(builder.__name__, builder))
    for attention in SHORTCUT_ATTENTIONS:
        _add(ModelEntry(f"{builder.__name__}_{attention}", builder, {"attention": attention}))
    return builder
