"""Weights from elsewhere: the authors' released checkpoints, torchvision/timm state dicts, our own files.

The authors' `train_imagenet.py` saves `{"epoch", "arch", "state_dict", "best_prec1", "optimizer"}`
with DataParallel keys (`module.` prefix). Inside a block their CBAM is `cbam.ChannelGate.mlp.{1,3}`
(Flatten, Linear, ReLU, Linear) and `cbam.SpatialGate.spatial.{conv,bn}`, whose conv reads the
channel *max first, then the mean*; their BAM is `bam1..bam3` with `channel_att.gate_c.*` and
`spatial_att.gate_s.*`, combining the two maps by a product. `convert_authors_state` maps all of
it onto the zoo's names, so the converted network computes what theirs did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cbam.engine.checkpoint import CheckpointError, load_safetensors, read_torch_file, save_safetensors
from cbam.registry import create_model

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


@dataclass(frozen=True)
class LoadReport:
    """Which weights loaded, and which did not: nothing is dropped silently."""

    source: str
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"loaded {self.source}"]
        for title, names in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if names:
                lines.append(f"  {title}: {shown_names(names)}")
        return "\n".join(lines)


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str) -> LoadReport:
    """Load every tensor whose name and shape agree; report the rest by name."""
    own = model.state_dict()
    mismatched = tuple(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    result = model.load_state_dict(usable, strict=False)
    unexpected = tuple(k for k in state if k not in own)
    return LoadReport(source, tuple(result.missing_keys), unexpected, mismatched)


def load_pretrained(
    source: str | Path,
    arch: str | None = None,
    *,
    attention: Any = None,
    verbose: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """A zoo network with weights from `source`, whichever kind of file it is.

    - an authors' checkpoint (Jongchan/attention-module): network and attention are read from it;
    - a `.safetensors` or `.pt` file written by `cbam train` or `cbam convert`: likewise;
    - a plain state dict on disk (torchvision, timm): give `arch` (and `attention`); weights whose
      names and shapes agree are loaded, and the rest are reported (`model.cbam_load_report`).
    """
    path = Path(source)
    if path.suffix == ".safetensors":
        tensors, meta = load_safetensors(path)
        if "arch" not in meta:
            raise CheckpointError(f"{path} lacks cbam's 'arch' metadata; pass arch= and load it as a state dict")
        num_classes = meta.get("num_classes") or len(meta["classes"])
        model = create_model(
            meta["arch"],
            attention=meta.get("attention", "none"),
            num_classes=num_classes,
            **meta.get("model_kwargs", {}),
        )
        model.load_state_dict(tensors)
        return model
    state = read_torch_file(path)
    if is_authors_checkpoint(state):
        network = convert_authors_state(state)
        model = create_model(network.arch, attention=network.attention, num_classes=network.num_classes)
        model.load_state_dict(network.state_dict)
        return model
    if "model" in state and "config" in state:  # a cbam training checkpoint
        config = state["config"]
        model = create_model(
            config["arch"], attention=config["attention"], num_classes=len(state["classes"]), **config["model_kwargs"]
        )
        model.load_state_dict(state["model"])
        return model
    if arch is None:
        raise CheckpointError(f"{path} is a plain state dict; say which network it is with arch=")
    weights = state.get("state_dict", state)
    fc = weights.get("fc.weight")
    kwargs = {"num_classes": fc.shape[0]} if isinstance(fc, Tensor) and "num_classes" not in model_kwargs else {}
    model = create_model(arch, attention=attention, **kwargs, **model_kwargs)
    report = load_state_into(model, weights, str(path))
    model.cbam_load_report = report
    if verbose:
        print(report)
    return model


def convert_file(source: str | Path, destination: str | Path) -> AuthorsNetwork:
    """An authors' checkpoint -> a `.safetensors` file that `load_pretrained` and `cbam eval` read."""
    network = convert_authors_state(read_torch_file(Path(source)))
    model = create_model(network.arch, attention=network.attention, num_classes=network.num_classes)
    model.load_state_dict(network.state_dict)
    metadata = {
        "arch": network.arch,
        "attention": network.attention,
        "model_kwargs": {},
        "num_classes": network.num_classes,
        "source": str(source),
    }
    save_safetensors(Path(destination), model, metadata)
    return network
