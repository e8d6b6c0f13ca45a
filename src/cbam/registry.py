"""Networks by name: `register_model`, `create_model`, `list_models`.

Each builder registers under its function name, and under `<name>_se`, `<name>_cbam` and
`<name>_bam` with that attention fixed (`resnet50_cbam`). Prefixed names are other libraries'
networks (`torchvision:resnet50`, `timm:efficientnet_b0`; see `cbam.external`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cbam.errors import ConfigError, OptionError, unknown_name
from cbam.external import (
    attention_start,
    create_external,
    file_weights,
    is_external,
    is_weights_file,
    list_external,
    load_trained,
    set_classes,
)
from cbam.layers.create import AttentionSpec
from cbam.layers.fused import check_impl, set_attention_impl

SHORTCUT_ATTENTIONS: tuple[str, ...] = ("se", "cbam", "bam")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: the builder and the keyword arguments the name fixes."""

    name: str
    builder: Builder
    fixed: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def _add(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model name {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry


def register_model(builder: Builder) -> Builder:
    """Register `builder` under its name and its attention shortcuts; returns it unchanged."""
    _add(ModelEntry(builder.__name__, builder))
    for attention in SHORTCUT_ATTENTIONS:
        _add(ModelEntry(f"{builder.__name__}_{attention}", builder, {"attention": attention}))
    return builder


def _load_builtin_models() -> None:
    import cbam.models  # noqa: F401  (registers the zoo on import)


def list_models(pattern: str = "*", *, include_shortcuts: bool = True) -> list[str]:
    """Registered names matching a shell-style `pattern`, sorted; `torchvision:*` or `timm:res*` lists
    that library's networks instead."""
    if is_external(pattern):
        return list_external(pattern)
    _load_builtin_models()
    names = (n for n, e in _REGISTRY.items() if include_shortcuts or not e.fixed)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def model_entry(arch: str) -> ModelEntry:
    """The registry entry for `arch`; an unknown name raises with the close matches."""
    _load_builtin_models()
    if arch not in _REGISTRY:
        bases = sorted(n for n, e in _REGISTRY.items() if not e.fixed)
        shortcuts = "|".join(SHORTCUT_ATTENTIONS)
        raise unknown_name("model", arch, _REGISTRY, [*bases, f"(each also as <name>_{{{shortcuts}}})"])
    return _REGISTRY[arch]


def create_model(
    arch: str,
    *,
    attention: AttentionSpec | None = None,
    num_classes: int = 1000,
    impl: str = "auto",
    weights: str | None = None,
    attach_init: str | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered network: `create_model("resnet50", attention="cbam")`.

    `attention` is a name (`"none"`, `"se"`, `"cbam"`, `"bam"`, ...), a mapping with a
    `"name"` and options, or a `channels -> nn.Module` callable; left out, it is the one the
    name fixes (`resnet50_cbam`) or none. Other keywords go to the builder
    (`stride_in_1x1`, `stem`, `widen_factor`, `width_mult`, ...). `impl` sets how every
    attention layer runs (`"auto"`, `"eager"`, `"compiled"`, `"triton"`; see `cbam.layers.fused`).

    `weights` starts from trained weights: a file (ours, the authors', a torchvision or timm state dict),
    or for `torchvision:`/`timm:` names their library's own (`IMAGENET1K_V2`, `DEFAULT`; `pretrained`).
    The classifier is then replaced where `num_classes` differs, and attention starts as an exact
    identity (`attach_init="identity"`, the default with weights; `"paper"` for the layers' own init).
    Weights that do not fit are refused, or with `strict=False` loaded where they fit.
    """
    check_impl(impl)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if is_external(arch):
        if kwargs:
            raise OptionError(f"{arch} takes no builder options, got {sorted(kwargs)}")
        model = create_external(arch, attention=attention, num_classes=num_classes, weights=weights,
                                attach_init=attach_init, strict=strict)  # fmt: skip
        return set_attention_impl(model, impl) if impl != "auto" else model
    entry = model_entry(arch)
    fixed_attention = entry.fixed.get("attention")
    if attention is None:
        attention = fixed_attention if fixed_attention is not None else "none"
    elif fixed_attention is not None and attention != fixed_attention:
        raise ConfigError(
            f"{arch!r} fixes attention={fixed_attention!r}; got attention={attention!r}. "
            f"Use the base name {entry.builder.__name__!r} to choose the attention."
        )
    if weights and not is_weights_file(weights):
        raise ConfigError(f"{arch} is cbam's own network: --weights takes a file (named weights are for "
                          "torchvision: and timm: networks)")  # fmt: skip
    try:
        model = entry.builder(attention=attention, num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise OptionError(f"{arch}: {err}") from None
        raise
    if attention_start(attach_init, weights) == "identity":
        from cbam.attach import gate_built_in_attention  # attach imports the registry (through profile)

        gate_built_in_attention(model)
    if weights:
        load_trained(model, file_weights(weights, arch), weights, arch, strict)
        set_classes(model, num_classes)
    return set_attention_impl(model, impl) if impl != "auto" else model
