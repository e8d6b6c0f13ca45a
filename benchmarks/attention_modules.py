"""Module level: how many passes over the map one attention layer costs, and what it keeps.

A "pass" is the time of one `x.clone()` of the same tensor (one read and one write), so the
numbers compare across machines. For each ResNet50 stage shape: forward and forward+backward
passes, and saved-for-backward bytes / input bytes, for our eager, compiled and Triton CBAM and SE,
timm's CbamModule, and every module CBAM is compared with (ECA, CECA, eSE, GE-theta-minus, GC,
CoordAtt, SimAM, Triplet) beside timm's version where timm has one.

    python benchmarks/attention_modules.py [--device cuda] [--dtype bf16] [--batch 8 64] [--cold]
    python benchmarks/attention_modules.py --layers "ECA eager" "timm EcaModule" --rounds 30  # a few rows

`--cold` evicts the caches before every timed call (a 1 GiB fill by default), so each layer and
the clone it is measured against read their maps from memory, as inside a network. A machine
with a large last-level cache otherwise serves both from the cache.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_utils import cache_evictor, interleaved_medians, machine_line, markdown, only
from torch import nn

import cbam
from cbam.layers.create import create_attention_factory
from cbam.networks.counting import saved_activation_ratio

STAGES: tuple[tuple[int, int], ...] = ((256, 56), (512, 28), (1024, 14), (2048, 7))
# The modules CBAM is compared with, by attention name and row label.
NEWER_ATTENTIONS: dict[str, str] = {
    "eca": "ECA", "ceca": "CECA", "ese": "eSE", "ge": "GE-theta-minus", "gc": "GC", "coord": "CoordAtt",
    "simam": "SimAM", "triplet": "Triplet",
}  # fmt: skip
# the ones with an `impl`: eager and fused rows
FUSED_ATTENTIONS = frozenset({"eca", "ceca", "ese", "ge", "simam", "triplet"})
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def candidates(channels: int, device: torch.device) -> dict[str, Callable[[], nn.Module]]:
    """Every layer under test, by row label."""
    layers: dict[str, Callable[[], nn.Module]] = {
        "CBAM eager": lambda: cbam.CBAM(channels, impl="eager"),
        "CBAM compiled": lambda: cbam.CBAM(channels, impl="compiled"),
        "SE eager": lambda: cbam.SqueezeExcite(channels, impl="eager"),
        "SE compiled": lambda: cbam.SqueezeExcite(channels, impl="compiled"),
    }
    if device.type == "cuda":
        layers["CBAM triton"] = lambda: cbam.CBAM(channels, impl="triton")
        layers["SE triton"] = lambda: cbam.SqueezeExcite(channels, impl="triton")
    impls = ("eager", "compiled", "triton") if device.type == "cuda" else ("eager", "compiled")
    for name, label in NEWER_ATTENTIONS.items():
        build = create_attention_factory(name)
        for impl in impls if name in FUSED_ATTENTIONS else ("eager",):
            options = {"impl": impl} if name in FUSED_ATTENTIONS else {}
            layers[f"{label} {impl}"] = lambda build=build, options=options: build(channels, **options)
    try:
        from timm.layers.cbam import CbamModule

        layers["timm CbamModule"] = lambda: CbamModule(channels)
        layers.update(timm_counterparts(channels))
    except ImportError:
        pass
    return layers


def timm_counterparts(channels: int) -> dict[str, Callable[[], nn.Module]]:
    """timm's version of each newer module that computes the same function (`tests/layers/test_references.py`)."""
    from timm.layers import CecaModule, EcaModule, EffectiveSEModule, GatherExcite, GlobalContext
    from timm.layers.coord_attn import CoordAttn

    return {
        "timm EcaModule": lambda: EcaModule(channels),
        "timm CecaModule": lambda: CecaModule(channels),
        "timm EffectiveSEModule": lambda: EffectiveSEModule(channels),
        "timm GatherExcite": lambda: GatherExcite(channels, use_mlp=False),
        "timm GlobalContext": lambda: GlobalContext(channels, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16),
        "timm CoordAttn": lambda: CoordAttn(channels),
    }


def measure(
    batch: int,
    channels: int,
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    rounds: int,
    before: Callable[[], object] | None = None,
    labels: list[str] | None = None,
) -> list[dict]:
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn_like(x)
    layers = {
        name: build().to(device=device, dtype=dtype).train()
        for name, build in only(candidates(channels, device), labels, "layer").items()
    }
    xg = x.detach().requires_grad_()

    def forward(layer: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return layer(x)

        return run

    def training(layer: nn.Module) -> Callable[[], object]:
        def run() -> object:
            out = layer(xg)
            out.backward(grad)
            xg.grad = None
            return out

        return run

    cases: dict[str, Callable[[], object]] = {"clone": x.clone}
    cases.update({f"{name}|fwd": forward(layer) for name, layer in layers.items()})
    cases.update({f"{name}|train": training(layer) for name, layer in layers.items()})
    times = interleaved_medians(cases, device, rounds, before=before)
    clone = times["clone"]
    return [
        {
            "layer": name,
            "map": f"{batch}x{channels}x{size}x{size}",
            "forward (passes)": times[f"{name}|fwd"] / clone,
            "forward+backward (passes)": times[f"{name}|train"] / clone,
            "saved / input": saved_activation_ratio(layer, x),
            "clone (ms)": clone * 1e3,
        }
        for name, layer in layers.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], help="which of the 4 ResNet50 stages")
    parser.add_argument("--cold", action="store_true", help="evict the caches before every timed call")
    parser.add_argument("--evict-mib", type=int, default=1024, help="how much --cold writes to evict them")
    parser.add_argument("--layers", nargs="+", metavar="LABEL", help="only these rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    before = cache_evictor(device, args.evict_mib) if args.cold else None
    rows = []
    for batch in args.batch:
        for stage in args.stages:
            channels, size = STAGES[stage]
            rows += measure(batch, channels, size, device, DTYPES[args.dtype], args.rounds, before, args.layers)
    cache = f"; cold: {args.evict_mib} MiB written before each timed call" if args.cold else ""
    print(f"{machine_line(device)}; {args.dtype}, channels_last{cache}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
