"""The one place networks are built: `build_network(request, num_classes)`, and `create_model` on top of it.

A request (`cbam.networks.request.NetworkRequest`) names a zoo network (`resnet50`, `resnet50_cbam`) or
another library's (`torchvision:resnet50`, `timm:efficientnet_b0`), its attention, builder options,
the weights it starts from and how attention starts. The zoo builds its attention in; another
library's network gets it from `cbam.networks.attach`. Weights are read once (`cbam.networks.weights`),
the classifier is resized to the file's classes, loaded, then replaced where `num_classes` differs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cbam.errors import ConfigError, OptionError
from cbam.layers.create import AttentionSpec, attention_options
from cbam.layers.fused import check_impl, set_attention_impl
from cbam.networks.attach import attach, gate_built_in_attention
from cbam.networks.classifier import replace_classifier
from cbam.networks.libraries import build_bare, is_external, is_weights_file, named_weights, parse_external
from cbam.networks.names import model_entry
from cbam.networks.request import NetworkRequest
from cbam.networks.weights import StoredWeights, load_trained, read_network_weights, recorded_options

EXTERNAL_INPUT_SIZE: tuple[int, int, int] = (3, 224, 224)
"""The image size another library's network is traced at to find where attention goes."""


def requested_attention(request: NetworkRequest) -> AttentionSpec:
    """The attention a request builds: the one given, else the one its zoo name fixes (`resnet50_cbam`), else
    none; a given one that contradicts the name is refused."""
    if is_external(request.arch):
        return "none" if request.attention is None else request.attention
    entry = model_entry(request.arch)
    fixed = entry.fixed.get("attention")
    if request.attention is None:
        return fixed if fixed is not None else "none"
    if fixed is not None and request.attention != fixed:
        raise ConfigError(
            f"{request.arch!r} fixes attention={fixed!r}; got attention={request.attention!r}. "
            f"Use the base name {entry.builder.__name__!r} to choose the attention."
        )
    return request.attention


def _file_weights(request: NetworkRequest, role: str) -> StoredWeights | None:
    """The request's weights file, read once and checked to hold the network asked for."""
    if not request.weights or not is_weights_file(request.weights):
        return None
    return read_network_weights(request.weights, request.arch, role)


def _zoo_network(request: NetworkRequest, stored: StoredWeights | None, num_classes: int | None) -> nn.Module:
    if request.weights and stored is None:
        raise ConfigError(f"{request.arch} is cbam's own network: --weights takes a file (named weights are for "
                          "torchvision: and timm: networks)")  # fmt: skip
    entry = model_entry(request.arch)
    options = {**recorded_options(stored), **dict(request.options)}
    if num_classes is not None:
        options["num_classes"] = num_classes
    attention = requested_attention(request)
    try:
        model = entry.builder(attention=attention, **options)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise _misplaced_option(request.arch, attention, options) or OptionError(f"{request.arch}: {err}") from None
    if request.start == "identity":
        gate_built_in_attention(model)
    return model


def _misplaced_option(arch: str, attention: AttentionSpec, options: dict[str, Any]) -> OptionError | None:
    """A builder option the network refused that is its attention's (`--model-arg kernel_size=7` with ECA)."""
    misplaced = sorted(set(options) & set(attention_options(attention)))
    if not misplaced:
        return None
    name = attention if isinstance(attention, str) else attention["name"]
    return OptionError(
        f"{', '.join(misplaced)}: an option of the attention {name!r}, not of {arch}; give it in the attention "
        f'spec, e.g. --attention \'{{"name": "{name}", "{misplaced[0]}": ...}}\''
    )


def _library_network(request: NetworkRequest) -> nn.Module:
    if request.options:
        raise OptionError(f"{request.arch} takes no builder options, got {sorted(request.options)}")
    model = build_bare(parse_external(request.arch))
    attention = requested_attention(request)
    if attention != "none":
        attach(model, attention, init=request.start, input_size=EXTERNAL_INPUT_SIZE, verbose=False)
    return model


def build_network(
    request: NetworkRequest, num_classes: int | None = 1000, *, role: str = "", verbose: bool = False
) -> nn.Module:
    """The network `request` describes, with `num_classes` outputs; `num_classes=None` keeps the builder's
    classifier and neither loads nor needs the file's (a detector's backbone, `role="backbone "` in messages).
    `verbose` logs what was loaded at INFO rather than DEBUG."""
    check_impl(request.impl)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    stored = _file_weights(request, role)
    if is_external(request.arch):
        model = _library_network(request)
        if request.weights and stored is None:
            network = parse_external(request.arch)
            stored = StoredWeights(named_weights(network, request.weights), None, None)
    else:
        model = _zoo_network(request, stored, num_classes)
    if stored is not None:
        source = request.weights if is_weights_file(request.weights or "") else f"{request.arch} {request.weights}"
        target = f"the {request.arch} {role.strip()}" if role else request.arch
        load_trained(model, stored, str(source), target, strict=request.strict, use_classifier=num_classes is not None,
                     verbose=verbose)  # fmt: skip
    if num_classes is not None:
        replace_classifier(model, num_classes)
    return set_attention_impl(model, request.impl) if request.impl != "auto" else model


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
    """Build a network by name: `create_model("resnet50", attention="cbam")`.

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
    request = NetworkRequest(arch, attention, kwargs, weights, attach_init, strict, impl)
    return build_network(request, num_classes)
