"""A network request: everything that decides which network `cbam.networks.build_network` returns.

Every way into a network (`create_model`, `load_pretrained`, a task's config, a detector's backbone)
fills one `NetworkRequest`; every decision it implies, how attention starts among them, is a property
here, made once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cbam.errors import ConfigError
from cbam.layers.create import AttentionSpec

ATTENTION_STARTS: tuple[str, ...] = ("auto", "identity", "paper")
"""How attention starts: an exact identity (zero gates), the layers' own (paper) init, or `auto`: identity
when the network starts from weights, the paper's otherwise."""


def attention_start(attach_init: str | None, weights: str | None) -> str:
    """How attention starts: `attach_init` as given, else (`None` or `"auto"`) an exact identity when the
    network starts from weights and the layers' own (paper) init when it does not."""
    if attach_init not in (None, "auto"):
        if attach_init not in ATTENTION_STARTS:
            raise ConfigError(f"attach_init must be one of {', '.join(ATTENTION_STARTS)}, got {attach_init!r}")
        return attach_init
    return "identity" if weights else "paper"


@dataclass(frozen=True)
class NetworkRequest:
    """Which network to build: `arch` (a zoo name or `torchvision:`/`timm:` one), its `attention` (None: the one
    the name fixes, else none), builder `options` (`stem`, `width_mult`, ...), `weights` to start from (a file,
    or a library's named weights), how attention starts (`attach_init`), whether weights that do not fit are
    refused (`strict`) and how attention layers run (`impl`)."""

    arch: str
    attention: AttentionSpec = None
    options: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    attach_init: str | None = None
    strict: bool = True
    impl: str = "auto"

    @property
    def start(self) -> str:
        """How attention starts: "identity" or "paper" (see `attention_start`)."""
        return attention_start(self.attach_init, self.weights)

    def without_weights(self) -> NetworkRequest:
        """The same network, to load trained weights into: built bare, attention shaped as it was trained."""
        return replace(self, weights=None, attach_init=self.start)
