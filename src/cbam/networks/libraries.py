"""torchvision's and timm's networks by prefixed name (`torchvision:resnet50`, `timm:efficientnet_b0`).

What cbam needs of another library: its names, a network built bare (its default classes, no weights),
its own weights by name (fetched by that library's code into its usual cache) and the preprocessing they
were trained with. Nothing here downloads by itself: a named weight that is not cached is fetched by
torchvision's or timm's own code, and without a network that fails with one line saying which file to
put where. `cbam.networks.build` puts the pieces together.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from cbam.checkpoint import read_torch_file
from cbam.errors import CheckpointError, ConfigError, unknown_name
from cbam.extras import import_optional

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("torchvision", "timm")
TIMM_PRETRAINED = "pretrained"  # `--weights pretrained`: timm's default pretrained tag for the name


@dataclass(frozen=True)
class ExternalName:
    """A network of another library: `source` ("torchvision" or "timm") and its name there."""

    source: str
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def is_external(arch: str) -> bool:
    """Whether `arch` names another library's network (`torchvision:...`, `timm:...`)."""
    return ":" in arch


def parse_external(arch: str) -> ExternalName:
    """`torchvision:resnet50` -> ExternalName; an unknown library or network is refused with close matches."""
    source, _, name = arch.partition(":")
    if source not in SOURCES:
        raise unknown_name("model library", source, SOURCES)
    names = source_names(source)
    if name.split(".")[0] not in names:  # timm names may carry a weights tag: resnet18.a1_in1k
        raise unknown_name(f"{source} model", name, names, [f"see `cbam models '{source}:*'`"])
    return ExternalName(source, name)


def _timm() -> Any:
    return import_optional("timm", "timm", "a timm network")


def source_names(source: str) -> list[str]:
    """The classification networks `source` builds by name."""
    if source == "torchvision":
        import torchvision.models

        return torchvision.models.list_models(module=torchvision.models)
    return _timm().list_models()


def list_external(pattern: str) -> list[str]:
    """Prefixed names matching a shell-style `pattern` such as `torchvision:*` or `timm:resnet*`."""
    source, _, name_pattern = pattern.partition(":")
    if source not in SOURCES:
        raise unknown_name("model library", source, SOURCES)
    return [f"{source}:{name}" for name in source_names(source) if fnmatch.fnmatchcase(name, name_pattern or "*")]


def library_versions(arch: str) -> dict[str, str]:
    """The version of the library that builds `arch`, for a checkpoint to record."""
    if arch.partition(":")[0] == "torchvision":
        import torchvision

        return {"torchvision": torchvision.__version__}
    return {"timm": _timm().__version__}


# ---------------------------------------------------------------------------------------------
# Building


def build_bare(network: ExternalName) -> nn.Module:
    """The network with its library's default classes and random weights (nothing is fetched)."""
    if network.source == "torchvision":
        import torchvision.models

        return torchvision.models.get_model(network.name, weights=None)
    return _timm().create_model(network.name, pretrained=False)


# ---------------------------------------------------------------------------------------------
# Weights


def _torchvision_weights(name: str, weights: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    if weights not in enum.__members__:
        raise unknown_name(f"torchvision weights of {name}", weights, enum.__members__)
    return enum[weights]


def cached_file(url: str) -> Path:
    """Where torch.hub keeps the download of `url` (what torchvision's weights are fetched into)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def named_weights(network: ExternalName, weights: str) -> dict[str, Tensor]:
    """The library's own weights called `weights` (torchvision: `IMAGENET1K_V2`, `DEFAULT`; timm: `pretrained`),
    read from its cache or fetched by its own code; without a network, one line saying which file goes where."""
    if network.source == "torchvision":
        url = _torchvision_weights(network.name, weights).url
        target = cached_file(url)
        if not target.is_file():
            log.info("fetching %s's %s weights into %s", network, weights, target)
            try:
                torch.hub.download_url_to_file(url, str(target), progress=False)
            except Exception as err:  # urllib raises several types for a missing network
                raise CheckpointError(
                    f"{network} {weights} is not in torch's cache and could not be fetched ({type(err).__name__}); "
                    f"download {url} elsewhere and put it at {target}, or give --weights FILE"
                ) from None
        return read_torch_file(target)
    if weights != TIMM_PRETRAINED:
        raise ConfigError(f"timm weights are named by the network (timm:{network.name}.<tag>); give --weights "
                          f"{TIMM_PRETRAINED} or a file")  # fmt: skip
    timm = _timm()
    try:
        return timm.create_model(network.name, pretrained=True).state_dict()
    except Exception as err:  # huggingface_hub and urllib raise many types for a missing network
        source = timm.models.get_pretrained_cfg(network.name)
        where = getattr(source, "hf_hub_id", None) or getattr(source, "url", None) or network.name
        raise CheckpointError(
            f"timm could not fetch {network}'s pretrained weights ({type(err).__name__}); download {where} "
            "elsewhere (its Hugging Face cache or the .safetensors/.pth file) and give --weights FILE"
        ) from None


def is_weights_file(weights: str) -> bool:
    """Whether `weights` is a file rather than the name of a library's weights (`IMAGENET1K_V2`)."""
    return Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or Path(weights).is_file()


def weights_preprocessing(arch: str, weights: str | None) -> Mapping[str, Any]:
    """The preprocessing the weights were trained with: crop size, resize, mean and std (empty for a file)."""
    network = parse_external(arch)
    if not weights or is_weights_file(weights):
        return {}
    if network.source == "torchvision":
        transform = _torchvision_weights(network.name, weights).transforms()
        return {"image_size": transform.crop_size[0], "eval_resize": transform.resize_size[0],
                "mean": tuple(transform.mean), "std": tuple(transform.std)}  # fmt: skip
    config = _timm().data.resolve_data_config(model=build_bare(network))
    size = config["input_size"][-1]
    return {"image_size": size, "eval_resize": round(size / config["crop_pct"]),
            "mean": tuple(config["mean"]), "std": tuple(config["std"])}  # fmt: skip
