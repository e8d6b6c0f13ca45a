"""A network from a weights file alone (`load_pretrained`), and the authors' files converted (`convert_file`).

`load_pretrained` builds the network a file records (ours, the authors') or the one named for a plain
state dict (torchvision, timm), and loads the file strictly: weights that do not fit the network are
refused (`strict=False` loads what fits and logs the rest), except the attention weights that plain
weights cannot hold, which keep their initial values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cbam.checkpoint import Checkpoint, read_torch_file, save_weights
from cbam.errors import CheckpointError
from cbam.layers.create import AttentionSpec
from cbam.networks.authors import AuthorsNetwork, convert_authors_state
from cbam.networks.build import build_network
from cbam.networks.classifier import classes_in_state
from cbam.networks.libraries import is_external
from cbam.networks.names import check_network_name, model_entry
from cbam.networks.request import NetworkRequest
from cbam.networks.weights import RecordedNetwork, load_state_into, read_weights

RUNTIME_KWARGS: tuple[str, ...] = ("impl",)
"""`create_model` options that choose how the network runs, not which network it is."""

_ABSENT = object()


def _attention_of(arch: str, attention: AttentionSpec) -> AttentionSpec:
    """The attention a network has: the one given, else the one its name fixes, else none."""
    if attention is not None:
        return attention
    return "none" if is_external(arch) else model_entry(arch).fixed.get("attention", "none")


def _same_attention(a: AttentionSpec, b: AttentionSpec) -> bool:
    """Whether two attention specs build the same layers: `"cbam"` and `{"name": "cbam"}` do."""

    def normal(spec: AttentionSpec) -> Any:
        return {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, Mapping) else spec

    return normal(a) == normal(b)


def spec_text(spec: AttentionSpec) -> str:
    """An attention spec as a user wrote it: `cbam`, `{"name": "bam", "combine": "product"}`."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec), default=str)
    return getattr(spec, "__name__", repr(spec))


def _check_request(
    path: Path, recorded: RecordedNetwork, arch: str | None, attention: AttentionSpec, model_kwargs: Mapping[str, Any]
) -> None:
    """Refuse a network asked for that is not the one the file records, naming both."""
    check_network_name(
        path, recorded.arch, arch, advice=f"; leave the architecture out to load the {recorded.arch} it holds"
    )
    fixed = model_entry(arch).fixed.get("attention") if arch and not is_external(arch) else None
    asked = attention if attention is not None else fixed
    held = _attention_of(recorded.arch, recorded.attention)
    if asked is not None and not _same_attention(asked, held):
        raise CheckpointError(
            f"{path} records attention={spec_text(held)}, not the attention={spec_text(asked)} asked for; "
            "leave the attention out to load the one it holds"
        )
    for key, value in model_kwargs.items():
        held_value = recorded.num_classes if key == "num_classes" else recorded.model_kwargs.get(key, _ABSENT)
        if key not in RUNTIME_KWARGS and held_value not in (None, value):  # None: the classifier's shape decides
            held_text = "no value" if held_value is _ABSENT else f"{key}={held_value!r}"
            raise CheckpointError(f"{path} records {held_text}, not the {key}={value!r} asked for")


def _classes_from(arch: str, state: Mapping[str, Tensor]) -> dict[str, int]:
    """`num_classes` read off the classifier `arch` declares, where the state has one."""
    with torch.device("meta"):
        bare = build_network(NetworkRequest(arch), 1)
    classes = classes_in_state(bare, state)
    return {"num_classes": classes} if classes is not None else {}


def load_pretrained(
    source: str | Path,
    arch: str | None = None,
    *,
    attention: AttentionSpec = None,
    strict: bool = True,
    verbose: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """A zoo network with weights from `source`, whichever kind of file it is (see `read_weights`).

    A file that records its network (`cbam train`/`cbam convert` files, authors' checkpoints) builds
    that one; an `arch`, `attention` or model keyword that disagrees with it is refused. A plain
    state dict (torchvision, timm) needs `arch` (and `attention`, model keywords such as `num_classes`).
    Weights must fit the network: `strict=False` loads what fits and logs the rest as a WARNING.
    Attention weights a plain file cannot hold keep their initial values. The report is `model.cbam_load_report`.
    """
    path = Path(source)
    weights = read_weights(path)
    recorded = weights.network
    if recorded is not None:
        _check_request(path, recorded, arch, attention, model_kwargs)
        runtime = {k: v for k, v in model_kwargs.items() if k in RUNTIME_KWARGS}
        classes = (
            {"num_classes": recorded.num_classes}
            if recorded.num_classes
            else _classes_from(recorded.arch, weights.state)
        )
        kwargs = {**recorded.model_kwargs, **classes, **runtime, "attach_init": recorded.attach_init}
        arch, attention = recorded.arch, recorded.attention
    elif arch is None:
        raise CheckpointError(
            f"{path} holds weights but does not record which network they belong to; name it with arch= "
            "(and attention= for a network with attention)"
        )
    else:
        check_network_name(path, weights.named_arch, arch)
        classes = {} if "num_classes" in model_kwargs else _classes_from(arch, weights.state)
        kwargs = {**classes, **model_kwargs}
    options = {k: v for k, v in kwargs.items() if k not in ("num_classes", "attach_init", *RUNTIME_KWARGS)}
    request = NetworkRequest(arch, attention, options, attach_init=kwargs.get("attach_init"),
                             impl=kwargs.get("impl", "auto"))  # fmt: skip
    model = build_network(request, kwargs.get("num_classes", 1000))
    target = f"{arch} (attention={spec_text(_attention_of(arch, attention))})"
    model.cbam_load_report = load_state_into(
        model, weights.state, str(path), strict=strict, target=target, verbose=verbose
    )
    return model


def convert_file(source: str | Path, destination: str | Path) -> AuthorsNetwork:
    """An authors' checkpoint -> a `.safetensors` file that `load_pretrained` and `cbam eval` read."""
    network = convert_authors_state(read_torch_file(Path(source)))
    model = build_network(NetworkRequest(network.arch, network.attention), network.num_classes)
    load_state_into(model, network.state_dict, str(source), target=network.arch)
    config = {"arch": network.arch, "attention": network.attention, "model_kwargs": {}}
    extras = {"num_classes": network.num_classes, "source": str(source)}
    save_weights(Path(destination), Checkpoint("classification", config, None, 0, model.state_dict(), extras))
    return network
