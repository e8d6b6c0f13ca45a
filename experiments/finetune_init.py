"""Does adding CBAM to a pretrained network hurt? Fine-tuning measured on the embedded data over seeds.

A plain network is pretrained on lightly cluttered digits (two renderings of each training digit),
then fine-tuned on heavily cluttered ones (the same digits' split, one other rendering each, much
more clutter) as (a) the plain network, (b) + CBAM with the paper's init, (c) + CBAM with the
identity init. For each, the validation top-1 error before the first step and after the first
epoch (the mean over seeds and their range), at the end (the mean with the 95% interval of
`cbam.stats` over seeds and source digits, from each run's per-image predictions); each CBAM
variant's final error minus the plain network's, paired by seed and image, with its interval; and
where attention starts behind a gate (the identity init), the gates' final values, which say how far
the network moved from the plain one. Each run is a folder
under --output; run again, finished runs are kept.

    make finetune        # or: python experiments/finetune_init.py --output runs/finetune
    python experiments/finetune_init.py --recipe cluttered-digits-compare --epochs 6 --attention-lr-mult 10 \
        --output runs/finetune-long
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbam.classification.evaluate import evaluate_checkpoint
from cbam.classification.predictions import PREDICTIONS_FILE, Predictions, image_groups, read_predictions
from cbam.classification.task import ClassificationConfig
from cbam.data.cluttered_digits import ClutteredDigitsConfig, ensure_cluttered_digits
from cbam.engine.config import build_config
from cbam.engine.run import RunResult
from cbam.outputs import atomic_write
from cbam.report import format_markdown_table, write_csv
from cbam.runs import fit_or_reuse
from cbam.stats import format_points, mean_error, paired_difference

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
    attention_lr_mult: float = 1.0
    recipe: str = "cluttered-digits"


def spread_text(values: list[float]) -> str:
    """The mean over seeds and their range: a description of the runs, not an interval."""
    return f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run_config(setup: Setup, data: Path, output: Path, **values: object) -> ClassificationConfig:
    return build_config(ClassificationConfig, setup.recipe, data=str(data), output=str(output), arch=setup.arch,
                        workers=setup.workers, **values)  # fmt: skip


def errors_of(result: RunResult) -> tuple[float, float, float]:
    """Validation top-1 error (%) before the first step, after epoch 1 and after the last epoch."""
    assert result.initial is not None, "the fine-tuning runs evaluate before their first step"
    return result.initial["top1_error"], result.history[0]["val_top1_error"], result.final["val_top1_error"]


def final_gates(result: RunResult) -> list[float]:
    """The gates `g` of `y + g * (attention(y) - y)` in the run's final network (none without the identity init)."""
    import torch

    state = torch.load(Path(result.output) / "last.pt", weights_only=True, map_location="cpu")["model"]
    return [float(value) for key, value in state.items() if key.endswith(".gate")]


def final_errors(result: RunResult) -> Predictions:
    """The run's final network's per-image validation predictions (written beside it once)."""
    folder = Path(result.output)
    predictions = folder / PREDICTIONS_FILE
    if not predictions.is_file() or predictions.stat().st_mtime < (folder / "last.pt").stat().st_mtime:
        evaluate_checkpoint(folder / "last.pt", predictions=predictions, workers=0, device="cpu")
    return read_predictions(predictions)


def run(setup: Setup, output: Path) -> tuple[list[str], list[list[str]], dict]:
    source = ensure_cluttered_digits(ClutteredDigitsConfig(clutter=setup.source_clutter, placements=(2, 1, 1)))
    target = ensure_cluttered_digits(ClutteredDigitsConfig(clutter=setup.target_clutter, placements=(1, 1, 1)))
    pretrained = fit_or_reuse(run_config(setup, source, output / "pretrain", attention="none",
                                         epochs=setup.pretrain_epochs, seed=0))  # fmt: skip
    weights = Path(pretrained.output) / "best.pt"
    measured: dict[str, list[tuple[float, float, float]]] = {}
    gates: dict[str, list[list[float]]] = {}
    predicted: dict[str, np.ndarray] = {}
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
                attention_lr_mult=setup.attention_lr_mult,
            )
            for seed in range(setup.seeds)
        ]
        results = [fit_or_reuse(config) for config in configs]
        measured[label] = [errors_of(result) for result in results]
        gates[label] = [final_gates(result) for result in results]
        predicted[label] = np.stack([final_errors(result).errors(1) for result in results])
        files = final_errors(results[0]).files
    groups = image_groups(str(target), "val", files)
    plain = predicted[VARIANTS[0][0]]
    header = ["Fine-tuned network", *(f"top-1 err (%) {moment}" for moment in MOMENTS[:-1]),
              f"top-1 err (%) {MOMENTS[-1]}", "at the end, minus plain", "final gates g: mean [min, max]"]  # fmt: skip
    rows = []
    estimates: dict[str, dict[str, Any]] = {}
    for label, runs in measured.items():
        cells = [spread_text([errors[moment] for errors in runs]) for moment in range(len(MOMENTS) - 1)]
        end = mean_error(predicted[label], groups)
        difference = paired_difference(predicted[label], plain, groups) if label != VARIANTS[0][0] else None
        estimates[label] = {"end": end.to_dict(), "minus_plain": difference.to_dict() if difference else None}
        flat = [g for seed in gates[label] for g in seed]
        gate_text = f"{statistics.fmean(flat):+.3f} [{min(flat):+.3f}, {max(flat):+.3f}]" if flat else "-"
        paired_text = format_points(difference, sign=True) if difference else "-"
        if difference is not None and difference.p_value is not None:
            paired_text += f" (p = {difference.p_value:.2g})"
        rows.append([label, *cells, format_points(end), paired_text, gate_text])
    report = {
        "setup": setup.__dict__,
        "pretrained_val_top1_error_on_source": pretrained.best_value,
        "runs": {
            label: [{**dict(zip(MOMENTS, errors, strict=True)), "gates": seed_gates}
                    for errors, seed_gates in zip(runs, gates[label], strict=True)]
            for label, runs in measured.items()
        },
        "intervals": estimates,
    }  # fmt: skip
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
    parser.add_argument("--attention-lr-mult", type=float, default=1.0, help="the attention's (and gates') lr factor")
    parser.add_argument("--recipe", default="cluttered-digits", help="the recipe of every run "
                        "(cluttered-digits-compare: the narrow network at 32 px, 0.035 GFLOPs)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    setup = Setup(args.arch, args.seeds, args.pretrain_epochs, args.epochs, tuple(args.source_clutter),
                  tuple(args.target_clutter), args.workers, args.attention_lr_mult, args.recipe)  # fmt: skip
    output = Path(args.output)
    header, rows, report = run(setup, output)
    table = format_markdown_table(header, rows)
    caption = (f"{setup.arch} ({setup.recipe} recipe) pretrained on clutter {setup.source_clutter} (val top-1 error "
               f"{report['pretrained_val_top1_error_on_source']:.2f}%), fine-tuned {setup.epochs} epochs on clutter "
               f"{setup.target_clutter} (attention lr x{setup.attention_lr_mult:g}) over {setup.seeds} seeds: mean "
               "(range over seeds); at the end, mean [95% interval over seeds and source digits]")  # fmt: skip
    atomic_write(output / "finetune.md", lambda tmp: tmp.write_text(f"{caption}\n\n{table}\n"))
    write_csv(output / "finetune.csv", header, rows)
    atomic_write(output / "finetune.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"\n{caption}\n\n{table}\n\nwritten: {output / 'finetune.md'}, finetune.csv, finetune.json")


if __name__ == "__main__":
    main()
