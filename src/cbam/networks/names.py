"""Network names: the zoo's (`resnet50`, `resnet50_cbam`) and other libraries' (`torchvision:resnet50`).

`model_entry` looks a zoo name up, `list_models` lists names, `base_name` says which network a name
builds whatever its library, weights tag or attention shortcut, and `check_network_name` is the one
check that a file naming a network holds the network asked for.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import cbam.networks.zoo  # noqa: F401  (registers the zoo's builders)
from cbam.errors import CheckpointError, unknown_name
from cbam.networks.libraries import is_external, list_external
from cbam.networks.registry import REGISTRY, SHORTCUT_ATTENTIONS, ModelEntry


def list_models(pattern: str = "*", *, include_shortcuts: bool = True) -> list[str]:
    """Registered names matching a shell-style `pattern`, sorted; `torchvision:*` or `timm:res*` lists
    that library's networks instead."""
    if is_external(pattern):
        return list_external(pattern)
    names = (n for n, e in REGISTRY.items() if include_shortcuts or not e.fixed)
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def model_entry(arch: str) -> ModelEntry:
    """The registry entry for `arch`; an unknown name raises with the close matches."""
    if arch not in REGISTRY:
        bases = sorted(n for n, e in REGISTRY.items() if not e.fixed)
        shortcuts = "|".join(SHORTCUT_ATTENTIONS)
        raise unknown_name("model", arch, REGISTRY, [*bases, f"(each also as <name>_{{{shortcuts}}})"])
    return REGISTRY[arch]


def base_name(arch: str) -> str:
    """The network a name builds, whatever library, weights tag or attention shortcut: `torchvision:resnet50`,
    `timm:resnet50.a1_in1k` and `resnet50_cbam` are all `resnet50`; a name the zoo lacks stays as it is."""
    if is_external(arch):
        return arch.partition(":")[2].split(".")[0]
    entry = REGISTRY.get(arch)
    return entry.builder.__name__ if entry is not None else arch


def check_network_name(path: str | Path, named: str | None, arch: str | None, role: str = "", advice: str = "") -> None:
    """Refuse a file at `path` that names the network `named` when `arch` was asked for (`role`: "backbone "),
    naming both and ending with `advice`; a file that names no network, or no network asked for, passes."""
    if arch is not None and named is not None and base_name(named) != base_name(arch):
        raise CheckpointError(f"{path} holds weights of a {named}, not of the {arch} {role}asked for{advice}")
