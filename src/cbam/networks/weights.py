"""Weights in files, and loading them into a network: our files, the authors', torchvision's and timm's.

`read_weights` turns any file this project reads into one flat state dict under the zoo's names and
the network the file records, if it does; `read_network_weights` adds the one check that the file
holds the network asked for. `load_state_into` loads strictly: weights that do not fit are refused
(`strict=False` loads what fits and logs the rest), except the attention weights that plain
torchvision/timm weights cannot hold, which keep their initial values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cbam.checkpoint import (
    Checkpoint,
    checkpoint_in_safetensors,
    is_cbam_checkpoint,
    parse_checkpoint,
    read_safetensors,
    read_torch_file,
)
from cbam.errors import CheckpointError
from cbam.layers.create import ATTENTION_MODULE_NAMES
from cbam.networks.attach import AttentionAfter
from cbam.networks.authors import convert_authors_state, is_authors_checkpoint
from cbam.networks.classifier import classes_in_state, classifier_name, replace_classifier
from cbam.networks.names import check_network_name
from cbam.networks.request import attention_start

log = logging.getLogger(__name__)


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


def read_network_weights(path: str | Path, arch: str | None = None, role: str = "") -> StoredWeights:
    """`read_weights(path)`, refusing a file that names another network than `arch` (`role`: "backbone "); every
    problem names the file."""
    try:
        weights = read_weights(path)
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None
    check_network_name(path, weights.named_arch, arch, role)
    return weights


def recorded_options(weights: StoredWeights | None) -> dict[str, Any]:
    """The builder options a file records (a `cbam train` checkpoint's `stem`, `width_mult`), `{}` for one that
    records none: a network built for the file takes the trained network's shape. The classifier's size is the
    caller's business, not a builder option here."""
    if weights is None or weights.network is None:
        return {}
    return {key: value for key, value in weights.network.model_kwargs.items() if key != "num_classes"}


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


# What a refused load says the user can do (`cbam.load_pretrained(strict=False)`, `cbam train --partial-weights`).
PARTIAL_ADVICE = "; strict=False (--partial-weights) loads the weights that fit and reports the rest"


def load_state_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    *,
    strict: bool = True,
    ignore: Iterable[str] = (),
    target: str | None = None,
    advice: str = PARTIAL_ADVICE,
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


def load_trained(model: nn.Module, weights: StoredWeights, source: str, target: str, *, strict: bool = True,
                 use_classifier: bool = True, verbose: bool = True) -> LoadReport:  # fmt: skip
    """Load `weights` into `model`, its classifier first resized to the file's own class count (a fine-tuned
    network's); with `use_classifier=False` (a detector's backbone) the classifier is neither loaded nor needed.
    Weights that do not fit are refused unless `strict=False`."""
    ignore: tuple[str, ...] = ()
    if use_classifier:
        classes = classes_in_state(model, weights.state)
        if classes is not None:
            replace_classifier(model, classes)
    else:
        ignore = (f"{classifier_name(model)}.",)
    return load_state_into(model, weights.state, source, strict=strict, ignore=ignore, target=target,
                           verbose=verbose)  # fmt: skip
