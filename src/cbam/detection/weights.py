"""Backbone weights for detectors, read from files on disk (never downloaded).

A detector starts from a classification network trained on ImageNet (paper Sec. 4.5). The file
may be a `cbam train` checkpoint (`.pt` or `.safetensors`), a `cbam convert` file, an authors'
checkpoint (Jongchan/attention-module, renamed with `cbam.convert`) or any plain state dict
(torchvision layout). `read_backbone_state` turns each into one flat state dict and
`load_backbone` loads it into a backbone, strictly; both are generic over the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cbam.convert import convert_authors_state, is_authors_checkpoint, load_state_into, shown_names
from cbam.engine.checkpoint import CheckpointError, load_safetensors, read_torch_file
from cbam.registry import model_entry

WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
"""Prefixes that DataParallel/DistributedDataParallel and `torch.compile` put before every key."""

OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)
"""Keys a file may have or lack without changing the network (frozen BatchNorm keeps no counter)."""


def _base_arch(arch: str) -> str:
    """The builder behind a zoo name (`resnet50_cbam` -> `resnet50`); unknown names stay as they are."""
    try:
        return model_entry(arch).builder.__name__
    except ValueError:
        return arch


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):  # nested wrappers: `module._orig_mod.conv1.weight`
        key = key.partition(".")[2]
    return key


def _unpack(path: Path) -> tuple[Mapping[str, Any], str | None]:
    """The raw state dict in `path` and the network it names (None where the file does not say)."""
    if path.suffix == ".safetensors":
        tensors, meta = load_safetensors(path)
        return tensors, meta.get("arch")
    state = read_torch_file(path)
    if is_authors_checkpoint(state) and any(str(k).startswith("module.layer1.") for k in state["state_dict"]):
        network = convert_authors_state(state)  # their CBAM/BAM names -> the zoo's
        return network.state_dict, network.arch
    if isinstance(state.get("model"), Mapping):  # a `cbam train` checkpoint
        config = state.get("config")
        return state["model"], config.get("arch") if isinstance(config, Mapping) else None
    if isinstance(state.get("state_dict"), Mapping):
        return state["state_dict"], state.get("arch") if isinstance(state.get("arch"), str) else None
    return state, None


def read_backbone_state(path: str | Path, *, arch: str | None = None) -> dict[str, Tensor]:
    """The weights in `path` as one flat state dict on the CPU, wrapper prefixes (`module.`) removed.

    With `arch`, a file that names another network (a `cbam train` checkpoint's config, a
    safetensors file's metadata, an authors' checkpoint) is refused. Every problem with the
    file raises one `CheckpointError` that names it.
    """
    path = Path(path)
    try:
        raw, saved_arch = _unpack(path)
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from None
    if arch is not None and saved_arch is not None and _base_arch(saved_arch) != _base_arch(arch):
        raise CheckpointError(f"{path} holds weights of a {saved_arch}, not of the {arch} backbone asked for")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path} is not a state dict: {key!r} holds a {type(value).__name__}, not a tensor")
        state[_strip_wrappers(str(key))] = value
    if not state:
        raise CheckpointError(f"{path} holds no weights")
    return state


def load_backbone(module: nn.Module, state: Mapping[str, Tensor], source: str, ignore: Iterable[str] = ()) -> None:
    """Load `state` into `module`, strictly: every weight of the module must come from `state` and every
    weight in `state` must have a place, except keys starting with an `ignore` prefix (a classifier,
    `("fc.",)`). Problems are reported together, the first keys of each kind, in one `CheckpointError`.
    """
    prefixes = tuple(ignore)
    kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    report = load_state_into(module, kept, source)
    missing = [
        k
        for k in report.missing
        if not k.startswith(prefixes) and not k.endswith(OPTIONAL_SUFFIXES) and k not in report.mismatched
    ]
    unexpected = [k for k in report.unexpected if not k.endswith(OPTIONAL_SUFFIXES)]
    problems = []
    if missing:
        problems.append(f"missing {shown_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {shown_names(unexpected)}")
    if report.mismatched:
        own = module.state_dict()
        shapes = [f"{k} {tuple(kept[k].shape)} vs {tuple(own[k].shape)}" for k in report.mismatched]
        problems.append(f"shape mismatch (file vs backbone) {shown_names(shapes)}")
    if problems:
        hint = ""
        if any(".attention." in k or "stage_attention." in k for k in missing + unexpected):
            hint = " (the file and the backbone disagree about attention modules: check `attention=`)"
        raise CheckpointError(
            f"{source} does not fit the {type(module).__name__} backbone{hint}: " + "; ".join(problems)
        )
