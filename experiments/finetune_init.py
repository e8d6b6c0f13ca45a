"""Does adding CBAM to a pretrained network hurt? Fine-tuning measured on the embedded data over seeds.

A plain network is pretrained on lightly cluttered digits (two renderings of each training digit),
then fine-tuned on heavily cluttered ones (the same digits' split, one other rendering each, much
more clutter) as (a) the plain network, (b) + CBAM with the paper's init, (c) + CBAM with the
identity init. For each, the validation top-1 error before the first step, after the first epoch
and at the end: the mean over seeds with a 95% t-interval. Each run is a folder under --output;
run again, finished runs are kept.

    make finetune        # or: python experiments/finetune_init.py --output runs/finetune
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from cbam.classification.task import ClassificationConfig
from cbam.data.cluttered_digits import ClutteredDigitsConfig, ensure_cluttered_digits
from cbam.engine.config import build_config
from cbam.engine.run import RunResult
from cbam.outputs import atomic_write
from cbam.report import format_markdown_table, write_csv
from cbam.tasks import fit_or_reuse

VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("plain", "none", "auto"),
    ("+ CBAM, paper init", "cbam", "paper"),
    ("+ CBAM, identity init", "cbam", "identity"),
)
MOMENTS: tuple[str, ...] = ("before the first step", "after epoch 1", "at the end")


@dataclass(frozen=True)
class Setup:
    arch: str
    seeds: int
    pretrain_epochs: int
    epochs: int
    source_clutter: tuple[int, int]
    target_clutter: tuple[int, int]
    workers: int


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of `values` (the interval is the mean itself for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run_config(setup: Setup, data: Path, output: Path, **values: object) -> ClassificationConfig:
    return build_config(ClassificationConfig, "cluttered-digits", data=str(data), output=str(output), arch=setup.arch,
                        workers=setup.workers, **values)  # fmt: skip


def errors_of(result: RunResult) -> tuple[float, float, float]:
    """Validation top-1 error (%) before the first step, after epoch 1 and after the last epoch."""
    assert result.initial is not None, "the fine-tuning runs evaluate before their first step"
    return result.initial["top1_error"], result.history[0]["val_top1_error"], result.final["val_top1_error"]


def run(setup: Setup, output: Path) -> tuple[list[str], list[list[str]], dict]:
    source = ensure_cluttered_digits(ClutteredDigitsConfig(clutter=setup.source_clutter, placements=(2, 1, 1)))
    target = ensure_cluttered_digits(ClutteredDigitsConfig(clutter=setup.target_clutter, placements=(1, 1, 1)))
    pretrained = fit_or_reuse(run_config(setup, source, output / "pretrain", attention="none",
                                         epochs=setup.pretrain_epochs, seed=0))  # fmt: skip
    weights = Path(pretrained.output) / "best.pt"
    measured: dict[str, list[tuple[float, float, float]]] = {}
    for label, attention, init in VARIANTS:
        name = label.replace("+ ", "").replace(", ", "-").replace(" ", "-").lower()
        configs = [
            run_config(
                setup,
                target,
                output / f"{name}-seed{seed}",
                attention=attention,
                attach_init=init,
                weights=str(weights),
                epochs=setup.epochs,
                seed=seed,
                eval_first=True,
            )
            for seed in range(setup.seeds)
        ]
        measured[label] = [errors_of(fit_or_reuse(config)) for config in configs]
    header = ["Fine-tuned network", *(f"top-1 err (%) {moment}" for moment in MOMENTS)]
    rows = []
    for label, runs in measured.items():
        cells = []
        for moment in range(len(MOMENTS)):
            mean, low, high = t_interval([errors[moment] for errors in runs])
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
        rows.append([label, *cells])
    report = {
        "setup": setup.__dict__,
        "pretrained_val_top1_error_on_source": pretrained.best_value,
        "runs": {
            label: [dict(zip(MOMENTS, errors, strict=True)) for errors in runs] for label, runs in measured.items()
        },
    }
    return header, rows, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/finetune")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--source-clutter", type=int, nargs=2, default=(0, 2), metavar=("LO", "HI"))
    parser.add_argument("--target-clutter", type=int, nargs=2, default=(10, 14), metavar=("LO", "HI"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    setup = Setup(args.arch, args.seeds, args.pretrain_epochs, args.epochs, tuple(args.source_clutter),
                  tuple(args.target_clutter), args.workers)  # fmt: skip
    output = Path(args.output)
    header, rows, report = run(setup, output)
    table = format_markdown_table(header, rows)
    caption = (f"{setup.arch} pretrained on clutter {setup.source_clutter} (val top-1 error "
               f"{report['pretrained_val_top1_error_on_source']:.2f}%), fine-tuned {setup.epochs} epochs on clutter "
               f"{setup.target_clutter}; mean [95% t-interval] over {setup.seeds} seeds")  # fmt: skip
    atomic_write(output / "finetune.md", lambda tmp: tmp.write_text(f"{caption}\n\n{table}\n"))
    write_csv(output / "finetune.csv", header, rows)
    atomic_write(output / "finetune.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"\n{caption}\n\n{table}\n\nwritten: {output / 'finetune.md'}, finetune.csv, finetune.json")


if __name__ == "__main__":
    main()
