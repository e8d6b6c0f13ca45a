"""Network level: what attention costs a ResNet50 in wall-clock time, as ratios to the plain one.

Plain ResNet50, SE-ResNet50 and CBAM-ResNet50 (ours, default `impl="auto"`, and ours eager),
ResNet50 with each module CBAM is compared with (ECA, eSE, GE, GC, CoordAtt, SimAM, Triplet),
and timm's CBAM, SE, ECA, eSE, GC and CoordAtt ResNet50s (timm's defaults), measured in one run with the cases
interleaved; medians. Inference (eval, no grad) at batch 1 and 8, and a training step (forward, backward, SGD
step).

    python benchmarks/networks.py [--device cuda --dtype bf16 --batch 256] [--write benchmarks/RESULTS.md]
    python benchmarks/networks.py --networks "CBAM-ResNet50" "timm CBAM-ResNet50" --rounds 15  # a few rows, more rounds
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from bench_utils import interleaved_medians, machine_line, markdown, only
from torch import nn

import cbam

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NEWER = [("eca", "ECA"), ("ese", "eSE"), ("ge", "GE"), ("gc", "GC"), ("coord", "CoordAtt"), ("simam", "SimAM"),
         ("triplet", "Triplet")]  # fmt: skip
BASELINE = "ResNet50"
TIMM_NEWER = [("eca", "ECA"), ("ese", "eSE"), ("gc", "GC"), ("coord", "CoordAtt")]  # timm's layers, at their defaults


def networks() -> dict[str, Callable[[], nn.Module]]:
    """Every network under test, by label; the first is the plain baseline."""
    nets: dict[str, Callable[[], nn.Module]] = {
        BASELINE: lambda: cbam.create_model("resnet50"),
        "SE-ResNet50": lambda: cbam.create_model("resnet50_se"),
        "CBAM-ResNet50": lambda: cbam.create_model("resnet50_cbam"),
        "CBAM-ResNet50 eager": lambda: cbam.create_model("resnet50_cbam", impl="eager"),
        **{f"{label}-ResNet50": (lambda name=name: cbam.create_model(f"resnet50_{name}")) for name, label in NEWER},
    }
    try:
        import timm

        nets["timm CBAM-ResNet50"] = lambda: timm.create_model("resnet50", block_args={"attn_layer": "cbam"})
        nets["timm SE-ResNet50"] = lambda: timm.create_model("resnet50", block_args={"attn_layer": "se"})
        for name, label in TIMM_NEWER:
            nets[f"timm {label}-ResNet50"] = lambda name=name: timm.create_model(
                "resnet50", block_args={"attn_layer": name}
            )
    except ImportError:
        pass
    return nets


def inference(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), torch.autocast(x.device.type, autocast, enabled=autocast is not None):
            return model(x)

    return run


def training_step(
    model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None, optimizer: torch.optim.Optimizer
) -> Callable[[], object]:
    target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def run() -> object:
        with torch.autocast(x.device.type, autocast, enabled=autocast is not None):
            loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return run


def measure(
    nets: dict[str, Callable[[], nn.Module]],
    device: torch.device,
    dtype: str,
    batches: list[int],
    train_batch: int,
    size: int,
    rounds: int,
) -> list[dict]:
    autocast = None if dtype == "fp32" else DTYPES[dtype]
    built = {name: build().to(device, memory_format=torch.channels_last) for name, build in nets.items()}
    rows = []
    steps = [("training step", train_batch)] if train_batch > 0 else []
    for mode, batch in [*(("inference", b) for b in batches), *steps]:
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        cases = {}
        for name, model in built.items():
            if mode == "inference":
                cases[name] = inference(model.eval(), x, autocast)
            else:
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
                cases[name] = training_step(model.train(), x, autocast, optimizer)
        times = interleaved_medians(cases, device, rounds)
        base = times[BASELINE]
        rows += [
            {"mode": mode, "batch": batch, "network": name, "ms": t * 1e3, "/ ResNet50": t / base}
            for name, t in times.items()
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=8, help="0: no training step")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--networks", nargs="+", metavar="LABEL", help="only these rows (and the plain ResNet50)")
    parser.add_argument("--write", type=Path, help="also append the table, machine and command to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    table = markdown(
        measure(
            only(networks(), args.networks, "network", keep=(BASELINE,)),
            device,
            args.dtype,
            args.batch,
            args.train_batch,
            args.size,
            args.rounds,
        )
    )
    header = f"{machine_line(device)}; {args.dtype}, channels_last, {args.size} px, {args.rounds} rounds"
    command = "python " + shlex.join(sys.argv)
    print(f"{header}\n\n{table}")
    if args.write:
        with args.write.open("a") as out:
            out.write(f"\n### Networks: {header}\n\n`{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
