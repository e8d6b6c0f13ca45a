"""torchvision and timm networks by prefixed name (`torchvision:resnet50`, `timm:efficientnet_b0`).

A network is built bare (its library's default classes, no weights), given weights (its library's own
by name, fetched by that library's code into its usual cache, or a file), its classifier resized for
the data's classes, and attention inserted by `cbam.attach` (`init="identity"` whenever weights are
loaded, so the network computes exactly what the pretrained one did until training moves it).
Nothing here downloads by itself: a named weight that is not cached is fetched by torchvision's or
timm's own code, and without a network that fails with one line saying which file to put where.
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

from cbam.errors import CheckpointError, ConfigError, unknown_name
from cbam.extras import import_optional
from cbam.layers.create import is_attention_parameter

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
# Building and classifiers


def build_bare(network: ExternalName) -> nn.Module:
    """The network with its library's default classes and random weights (nothing is fetched)."""
    if network.source == "torchvision":
        import torchvision.models

        return torchvision.models.get_model(network.name, weights=None)
    return _timm().create_model(network.name, pretrained=False)


def classifier_name(model: nn.Module) -> str:
    """The name of the network's last linear layer: the classifier that a new task replaces."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and not is_attention_parameter(f"{name}.weight")]  # fmt: skip
    if not names:
        raise ConfigError(f"{type(model).__name__} has no linear classifier that cbam can resize")
    return names[-1]


def set_classes(model: nn.Module, num_classes: int) -> nn.Module:
    """The network with a new, freshly initialised classifier of `num_classes` outputs (in place)."""
    name = classifier_name(model)
    old = model.get_submodule(name)
    if old.out_features == num_classes:
        return model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    log.debug("classifier %s: %d -> %d classes (new weights)", name, old.out_features, num_classes)
    return model


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
        from cbam.checkpoint import read_torch_file

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


def base_name(arch: str) -> str:
    """The network a name builds, whatever library, weights tag or attention shortcut: `torchvision:resnet50`,
    `timm:resnet50.a1_in1k` and `resnet50_cbam` are all `resnet50`."""
    if is_external(arch):
        return arch.partition(":")[2].split(".")[0]
    from cbam.registry import model_entry  # the registry builds external networks through this module

    try:
        return model_entry(arch).builder.__name__
    except ValueError:  # a name the zoo lacks (an authors' network, say) stays as it is
        return arch


def file_weights(path: str | Path, arch: str | None = None) -> dict[str, Tensor]:
    """A state dict from any weights file cbam reads (ours, the authors', a torchvision or timm state dict,
    `.safetensors`); a file that names another network than `arch` is refused by name."""
    from cbam.convert import read_weights

    weights = read_weights(path)
    named = weights.named_arch
    if arch is not None and named is not None and base_name(named) != base_name(arch):
        raise CheckpointError(f"{path} holds weights of a {named}, not of the {arch} asked for")
    return weights.state


def is_weights_file(weights: str) -> bool:
    return Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or Path(weights).is_file()


# ---------------------------------------------------------------------------------------------
# The whole network


def attention_start(attach_init: str | None, weights: str | None) -> str:
    """How attention starts: `attach_init` as given, else (`None` or `"auto"`) an exact identity when the
    network starts from weights and the layers' own (paper) init when it does not."""
    if attach_init not in (None, "auto"):
        return attach_init
    return "identity" if weights else "paper"


def load_trained(model: nn.Module, state: Mapping[str, Tensor], label: str, target: str, strict: bool) -> None:
    """Load `state` into `model`, its classifier first resized to the file's own class count (a fine-tuned
    network's); weights that do not fit are refused unless `strict=False`."""
    from cbam.convert import load_state_into

    classifier = state.get(f"{classifier_name(model)}.weight")
    if isinstance(classifier, Tensor) and classifier.dim() == 2:
        set_classes(model, int(classifier.shape[0]))
    advice = "; --partial-weights loads the weights that fit and reports the rest"
    load_state_into(model, state, label, strict=strict, target=target, advice=advice, verbose=False)


def create_external(
    arch: str,
    *,
    attention: Any = None,
    num_classes: int | None = None,
    weights: str | None = None,
    attach_init: str | None = None,
    strict: bool = True,
    input_size: tuple[int, int, int] = (3, 224, 224),
) -> nn.Module:
    """`arch` (`torchvision:resnet50`) with `weights` (a name its library knows, or a file), `num_classes`
    outputs (a new classifier where the count differs) and `attention` attached (`attach_init`, default:
    identity with weights, the paper's without). Weights that do not fit are refused unless `strict=False`."""
    from cbam.attach import attach

    network = parse_external(arch)
    model = build_bare(network)
    if attention not in (None, "none"):
        attach(model, attention, init=attention_start(attach_init, weights), input_size=input_size, verbose=False)
    if weights:
        state = file_weights(weights, arch) if is_weights_file(weights) else named_weights(network, weights)
        label = weights if is_weights_file(weights) else f"{network} {weights}"
        load_trained(model, state, label, str(network), strict)
    if num_classes is not None:
        set_classes(model, num_classes)
    return model


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
