"""Weights from elsewhere: the authors' released checkpoints, torchvision/timm state dicts, our own files.

The authors' `train_imagenet.py` saves `{"epoch", "arch", "state_dict", "best_prec1", "optimizer"}`
with DataParallel keys (`module.` prefix). Inside a block their CBAM is `cbam.ChannelGate.mlp.{1,3}`
(Flatten, Linear, ReLU, Linear) and `cbam.SpatialGate.spatial.{conv,bn}`, whose conv reads the
channel *max first, then the mean*; their BAM is `bam1..bam3` with `channel_att.gate_c.*` and
`spatial_att.gate_s.*`, combining the two maps by a product. `convert_authors_state` maps all of
it onto the zoo's names, so the converted network computes what theirs did.

`load_pretrained` builds a zoo network from any weights file and loads it strictly: weights that
do not fit the network are refused (`strict=False` loads what fits and logs the rest), except the
attention weights that plain torchvision/timm weights cannot hold, which keep their initial values.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cbam.attach import AttentionAfter
from cbam.checkpoint import (
    Checkpoint,
    checkpoint_in_safetensors,
    is_cbam_checkpoint,
    parse_checkpoint,
    read_safetensors,
    read_torch_file,
    save_weights,
)
from cbam.errors import CheckpointError
from cbam.external import attention_start, is_external
from cbam.layers.create import ATTENTION_MODULE_NAMES, AttentionSpec
from cbam.registry import Builder, create_model, model_entry

log = logging.getLogger(__name__)

# (block type, blocks per stage) -> zoo name
_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_CBAM_KEYS = [
    (r"\.cbam\.ChannelGate\.mlp\.1\.", ".attention.channel.mlp.0."),
    (r"\.cbam\.ChannelGate\.mlp\.3\.", ".attention.channel.mlp.2."),
    (r"\.cbam\.SpatialGate\.spatial\.conv\.", ".attention.spatial.conv."),
    (r"\.cbam\.SpatialGate\.spatial\.bn\.", ".attention.spatial.bn."),
]
_BAM_KEYS = [
    (r"^bam(\d)\.", lambda m: f"stage_attention.{int(m.group(1)) - 1}."),
    (r"channel_att\.gate_c\.gate_c_fc_0\.", "channel_mlp.0."),
    (r"channel_att\.gate_c\.gate_c_bn_1\.", "channel_mlp.1."),
    (r"channel_att\.gate_c\.gate_c_fc_final\.", "channel_mlp.3."),
    (r"spatial_att\.gate_s\.gate_s_conv_reduce0\.", "spatial_convs.0."),
    (r"spatial_att\.gate_s\.gate_s_bn_reduce0\.", "spatial_convs.1."),
    (r"spatial_att\.gate_s\.gate_s_conv_di_(\d)\.", lambda m: f"spatial_convs.{3 + 3 * int(m.group(1))}."),
    (r"spatial_att\.gate_s\.gate_s_bn_di_(\d)\.", lambda m: f"spatial_convs.{4 + 3 * int(m.group(1))}."),
    (r"spatial_att\.gate_s\.gate_s_conv_final\.", "spatial_convs.9."),
]


@dataclass(frozen=True)
class AuthorsNetwork:
    """What an authors' checkpoint holds: which network, and its weights under the zoo's names."""

    arch: str
    attention: Any
    num_classes: int
    state_dict: dict[str, Tensor] = field(repr=False)


def is_authors_checkpoint(state: Mapping[str, Any]) -> bool:
    sd = state.get("state_dict")
    return isinstance(sd, Mapping) and any(str(k).startswith("module.") for k in sd)


def _blocks_per_stage(keys: list[str]) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(indices))
    return tuple(counts)


def convert_authors_state(state: Mapping[str, Any]) -> AuthorsNetwork:
    """Rename an authors' checkpoint's weights to the zoo's and say which network they belong to."""
    if not is_authors_checkpoint(state):
        raise CheckpointError("not a checkpoint of the authors' code: no DataParallel 'state_dict' (module.* keys)")
    raw = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    keys = list(raw)
    bottleneck = "layer1.0.conv3.weight" in raw
    arch = _RESNETS.get((bottleneck, _blocks_per_stage(keys)))
    if arch is None:
        raise CheckpointError(f"unknown ResNet depth in the checkpoint (blocks per stage {_blocks_per_stage(keys)})")
    has_cbam = any(".cbam." in k for k in keys)
    has_bam = any(k.startswith("bam1.") for k in keys)
    if has_cbam and has_bam:
        raise CheckpointError("the checkpoint has both CBAM and BAM weights; the authors' code builds one or the other")
    attention: Any = "cbam" if has_cbam else {"name": "bam", "combine": "product"} if has_bam else "none"
    converted: dict[str, Tensor] = {}
    for key, value in raw.items():
        new = key
        for pattern, replacement in _CBAM_KEYS if has_cbam else _BAM_KEYS if has_bam else []:
            new = re.sub(pattern, replacement, new)
        if new.endswith("attention.spatial.conv.weight"):
            value = value[:, [1, 0]]  # their descriptor is [max; mean], ours (eq. 3) [mean; max]
        converted[new] = value
    if "fc.weight" not in converted:
        raise CheckpointError("the checkpoint has no classifier (fc.weight)")
    return AuthorsNetwork(arch, attention, converted["fc.weight"].shape[0], converted)


def shown_names(names: Iterable[str], limit: int = 8) -> str:
    """The first `limit` names, comma-separated, and how many there are in all when some are left out."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Weights in a file: one flat state dict, and the network the file records


WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
"""Prefixes that DataParallel/DistributedDataParallel and `torch.compile` put before every key."""

OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)
"""Keys a file may have or lack without changing the network (frozen BatchNorm keeps no counter)."""


@dataclass(frozen=True)
class RecordedNetwork:
    """The network a file says its weights belong to: enough to build it again."""

    arch: str
    attention: Any
    num_classes: int | None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    attach_init: str = "paper"  # "identity": attention behind zero gates (a run that started from weights)


@dataclass(frozen=True)
class StoredWeights:
    """The weights in a file under the zoo's names; `network` where the file records it, `named_arch` where
    it only names one (a bare `"arch"` beside a `"state_dict"`)."""

    state: dict[str, Tensor] = field(repr=False)
    network: RecordedNetwork | None
    named_arch: str | None


def strip_wrappers(key: str) -> str:
    """`key` without DataParallel's and `torch.compile`'s prefixes, however deeply nested."""
    while key.startswith(WRAPPER_PREFIXES):  # nested wrappers: `module._orig_mod.conv1.weight`
        key = key.partition(".")[2]
    return key


def flat_state(raw: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """`raw` as a state dict with the wrapper prefixes removed; anything but tensors is refused by name."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source} is not a state dict: {key!r} holds a {type(value).__name__}, not a tensor")
        state[strip_wrappers(str(key))] = value
    if not state:
        raise CheckpointError(f"{source} holds no weights")
    return state


def _recorded(checkpoint: Checkpoint | None) -> RecordedNetwork | None:
    """The zoo network a cbam file records (None for a detector's, or a file that is not cbam's)."""
    if checkpoint is None or checkpoint.task != "classification" or not isinstance(checkpoint.config.get("arch"), str):
        return None
    config = checkpoint.config
    init = attention_start(config.get("attach_init"), config.get("weights"))
    return RecordedNetwork(config["arch"], config.get("attention", "none"), checkpoint.num_classes,
                           config.get("model_kwargs") or {}, init)  # fmt: skip


def read_weights(path: str | Path) -> StoredWeights:
    """The weights in any file this project reads, and the network the file records.

    `.safetensors` (with cbam's metadata or without), a cbam checkpoint (`cbam.checkpoint`), an authors'
    checkpoint (renamed to the zoo's keys), `{"state_dict": ...}` or `{"model": ...}` from other trainers, or
    a bare state dict. Never runs code from the file (`read_torch_file`); every problem is a `CheckpointError`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        network = _recorded(checkpoint_in_safetensors(tensors, meta))
        named = network.arch if network else meta.get("arch")
        return StoredWeights(flat_state(tensors, str(path)), network, named)
    state = read_torch_file(path)
    if is_authors_checkpoint(state) and any(str(k).startswith("module.layer1.") for k in state["state_dict"]):
        authors = convert_authors_state(state)  # their CBAM/BAM names -> the zoo's
        network = RecordedNetwork(authors.arch, authors.attention, authors.num_classes)
        return StoredWeights(authors.state_dict, network, authors.arch)
    if is_cbam_checkpoint(state):
        network = _recorded(parse_checkpoint(state))
        return StoredWeights(flat_state(state["model"], str(path)), network, network.arch if network else None)
    if isinstance(state.get("model"), Mapping):  # another trainer's `{"model": ...}`
        return StoredWeights(flat_state(state["model"], str(path)), None, None)
    if isinstance(state.get("state_dict"), Mapping):
        named = state.get("arch") if isinstance(state.get("arch"), str) else None
        return StoredWeights(flat_state(state["state_dict"], str(path)), None, named)
    return StoredWeights(flat_state(state, str(path)), None, None)


# ---------------------------------------------------------------------------------------------
# Loading weights into a network: strict unless asked otherwise


def _is_attention_key(key: str) -> bool:
    return any(part in ATTENTION_MODULE_NAMES for part in key.split(".")[:-1])


def attention_state_names(model: nn.Module) -> frozenset[str]:
    """The names in `model.state_dict()` that belong to attention: what plain weights cannot provide."""
    gates = {f"{name}.gate" for name, module in model.named_modules() if isinstance(module, AttentionAfter)}
    return frozenset(k for k in model.state_dict() if _is_attention_key(k) or k in gates)


@dataclass(frozen=True)
class LoadReport:
    """Which weights of a file fit a network and which do not: nothing is dropped silently.

    `new_attention` are the network's attention weights that a file without attention (plain torchvision
    or timm weights) cannot hold: they keep their initial values, as the user asked for attention.
    """

    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]
    new_attention: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict, repr=False)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        """Each kind of misfit: its count and first names (shapes as file vs network)."""
        shapes = [f"{k} {self.shapes[k][0]} vs {self.shapes[k][1]}" for k in self.mismatched]
        kinds = [
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch (file vs network)", shapes),
        ]
        return [f"{len(names)} {title}: {shown_names(names, 5)}" for title, names in kinds if names]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} weights from {self.source}"]
        lines += [f"  {problem}" for problem in self.problems()]
        if self.new_attention:
            lines.append(f"  {len(self.new_attention)} new attention weights at their initial values")
        return "\n".join(lines)


def check_state(model: nn.Module, state: Mapping[str, Tensor], source: str, ignore: Iterable[str] = ()) -> LoadReport:
    """How `state` fits `model`, loading nothing. Keys starting with an `ignore` prefix (a classifier, `("fc.",)`)
    and BatchNorm's counters are left out; missing attention weights are new ones when the file has no attention.
    """
    prefixes = tuple(ignore)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    given = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    shapes = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in given.items() if k in own and own[k].shape != v.shape
    }
    loaded = tuple(k for k in given if k in own and k not in shapes)
    unexpected = tuple(k for k in given if k not in own and not k.endswith(OPTIONAL_SUFFIXES))
    missing = [k for k in own if k not in given and not k.endswith(OPTIONAL_SUFFIXES)]
    attention = attention_state_names(model)
    new_attention: tuple[str, ...] = ()
    if not any(k in attention or _is_attention_key(k) for k in given):  # plain weights: attention is new
        new_attention = tuple(k for k in missing if k in attention)
        missing = [k for k in missing if k not in attention]
    return LoadReport(source, loaded, tuple(missing), unexpected, tuple(shapes), new_attention, shapes)


def wrapped_state(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` renamed for the attention wrappers in `model` (`cbam.attach`, identity-init gates): a layer saved
    unwrapped (`layer1.0.bn2.weight` of a plain network, `layer1.0.attention.channel...` of attention trained
    without a gate) goes to its place inside the wrapper, and a wrapper whose attention the file holds without a
    gate gets an open gate (1), so the network computes what the file's network did."""
    wrappers = [name for name, module in model.named_modules() if isinstance(module, AttentionAfter)]
    if not wrappers:
        return dict(state)
    own = model.state_dict()
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        wrapper = next((w for w in wrappers if key.startswith(f"{w}.")), None)
        if key in own or wrapper is None:
            renamed[key] = value
            continue
        rest = key[len(wrapper) + 1 :]
        inside = [f"{wrapper}.{part}.{rest}" for part in ("module", "attention") if f"{wrapper}.{part}.{rest}" in own]
        renamed[inside[0] if inside else key] = value
    for wrapper in wrappers:
        gate = f"{wrapper}.gate"
        trained = any(k.startswith(f"{wrapper}.attention.") for k in renamed)
        if gate in own and gate not in renamed and trained:
            renamed[gate] = torch.ones_like(own[gate])
    return renamed


def load_state_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    *,
    strict: bool = True,
    ignore: Iterable[str] = (),
    target: str | None = None,
    advice: str = "",
    verbose: bool = True,
) -> LoadReport:
    """Load `state` into `model`: all of it, or with `strict=False` what fits, the rest logged as a WARNING.

    Strict, a file that does not fit raises one `CheckpointError` (naming `target`, the network, and
    ending with `advice`) and loads nothing. New attention weights (see `check_state`) are fine either
    way and reported at INFO (DEBUG with `verbose=False`), like what was loaded.
    """
    state = wrapped_state(model, state)
    report = check_state(model, state, source, ignore)
    target = target or type(model).__name__
    problems = "; ".join(report.problems())
    if not report.fits and strict:
        keys = report.missing + report.unexpected + report.mismatched
        hint = (
            " (the file and the network disagree about attention: check attention=)"
            if any(_is_attention_key(k) for k in keys)
            else ""
        )
        raise CheckpointError(f"{source} does not fit {target}{hint}: {problems}{advice}")
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    level = logging.INFO if verbose else logging.DEBUG
    log.log(level, "loaded %d weights from %s into %s", len(report.loaded), source, target)
    if report.new_attention:
        log.log(
            level,
            "%s holds no attention weights: %d new attention weights of %s keep their initial values (%s)",
            source,
            len(report.new_attention),
            target,
            shown_names(report.new_attention, 3),
        )
    if not report.fits:
        log.warning("%s does not fit %s; left out: %s", source, target, problems)
    return report


# ---------------------------------------------------------------------------------------------
# load_pretrained: a zoo network from any file

RUNTIME_KWARGS: tuple[str, ...] = ("impl",)
"""`create_model` options that choose how the network runs, not which network it is."""

_ABSENT = object()


def _builder(arch: str) -> Builder | str | None:
    """The builder behind a zoo name (`resnet50_cbam` -> resnet50's), another library's name as it is; None
    for a name the zoo lacks."""
    if is_external(arch):
        return arch
    try:
        return model_entry(arch).builder
    except ValueError:
        return None


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
    if arch is not None and _builder(arch) is not _builder(recorded.arch):
        raise CheckpointError(
            f"{path} records the network {recorded.arch}, not the {arch} asked for; "
            f"leave the architecture out to load the {recorded.arch} it holds"
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


def _classes_from(state: Mapping[str, Tensor]) -> dict[str, int]:
    """`num_classes` read off the classifier's weight, where the state has one."""
    fc = state.get("fc.weight")
    return {"num_classes": fc.shape[0]} if isinstance(fc, Tensor) and fc.dim() == 2 else {}


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
        classes = {"num_classes": recorded.num_classes} if recorded.num_classes else _classes_from(weights.state)
        kwargs = {**recorded.model_kwargs, **classes, **runtime, "attach_init": recorded.attach_init}
        arch, attention = recorded.arch, recorded.attention
    elif arch is None:
        raise CheckpointError(
            f"{path} holds weights but does not record which network they belong to; name it with arch= "
            "(and attention= for a network with attention)"
        )
    else:
        named = weights.named_arch
        if named is not None and _builder(named) not in (None, model_entry(arch).builder):
            raise CheckpointError(f"{path} names the network {named}, not the {arch} asked for")
        classes = {} if "num_classes" in model_kwargs else _classes_from(weights.state)
        kwargs = {**classes, **model_kwargs}
    model = create_model(arch, attention=attention, **kwargs)
    target = f"{arch} (attention={spec_text(_attention_of(arch, attention))})"
    advice = "; with strict=False the weights that fit are loaded and the rest is reported"
    model.cbam_load_report = load_state_into(
        model, weights.state, str(path), strict=strict, target=target, advice=advice, verbose=verbose
    )
    return model


def convert_file(source: str | Path, destination: str | Path) -> AuthorsNetwork:
    """An authors' checkpoint -> a `.safetensors` file that `load_pretrained` and `cbam eval` read."""
    network = convert_authors_state(read_torch_file(Path(source)))
    model = create_model(network.arch, attention=network.attention, num_classes=network.num_classes)
    load_state_into(model, network.state_dict, str(source), target=network.arch)
    config = {"arch": network.arch, "attention": network.attention, "model_kwargs": {}}
    extras = {"num_classes": network.num_classes, "source": str(source)}
    save_weights(Path(destination), Checkpoint("classification", config, None, 0, model.state_dict(), extras))
    return network
