"""The paper's Fig. 4 for any checkpoints: each image, then each network's Grad-CAM with its P."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cbam.data.loading import DataError, class_names, open_split
from cbam.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from cbam.explain.cam import grad_cam
from cbam.explain.maps import attention_maps
from cbam.extras import import_optional
from cbam.outputs import atomic_write


@dataclass(frozen=True)
class Network:
    """A checkpoint ready to explain: its label in the figure, the model and its input geometry."""

    label: str
    model: nn.Module
    image_size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def transform(self) -> Any:
        """The network's own evaluation transform (crop, resize, normalisation)."""
        return eval_transform(self.image_size, self.resize, self.mean, self.std)


def load_networks(paths: list[Path]) -> tuple[list[Network], str | None]:
    """Each checkpoint's network (eval mode) and the dataset the first one was trained on."""
    from cbam.runs import load_model

    networks, data = [], None
    for path in paths:
        loaded = load_model(Path(path), task="classification")
        config = loaded.config
        label = str(config.attention) or Path(path).parent.name
        networks.append(Network(label if label != "none" else "baseline", loaded.model, config.image_size,
                                config.eval_resize, config.mean, config.std))  # fmt: skip
        data = data or config.data
    return networks, data


def choose_images(
    dataset, networks: list[Network], indices: list[int] | None, count: int, seed: int, correct_only: bool
) -> list[int]:
    """The given indices, else `count` random validation images (seeded), optionally only those
    every network classifies correctly (the paper's selection for its study)."""
    if indices:
        for i in indices:
            if not 0 <= i < len(dataset):
                raise DataError(f"image index {i} is outside the split's {len(dataset)} images")
        return list(indices)
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    chosen = []
    for i in order:
        image, label = dataset[i]
        if not correct_only or all(_predict(n, image) == label for n in networks):
            chosen.append(i)
        if len(chosen) == count:
            break
    if not chosen:
        raise DataError("no image is classified correctly by every network")
    return chosen


def _predict(network: Network, image: Image.Image) -> int:
    x = network.transform()(image.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return int(network.model(x).argmax(1))


def draw_figure(
    networks: list[Network], data: str, output: Path, *, split: str = "val", indices: list[int] | None = None,
    count: int = 4, seed: int = 0, correct_only: bool = False, method: str = "gradcam", layer: str | None = None,
    with_attention_maps: bool = False,
) -> list[int]:  # fmt: skip
    """Write the grid to `output` (PNG, or PDF by suffix); returns the dataset indices shown.

    `with_attention_maps` adds, after each network's Grad-CAM, the spatial map Ms of the last
    attention block of every stage (CBAM networks only).
    """
    matplotlib = import_optional("matplotlib", "explain", "Grad-CAM figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = open_split(data, split)
    names = class_names(dataset)
    shown = choose_images(dataset, networks, indices, count, seed, correct_only)
    stages = {n.label: _stage_blocks(n) if with_attention_maps else [] for n in networks}
    rows, cols = len(shown), 1 + sum(1 + len(stages[n.label]) for n in networks)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 0.6, 2.5 * rows), squeeze=False)
    mappable = None
    for r, index in enumerate(shown):
        image, label = dataset[index]
        rgb = image.convert("RGB")
        size = networks[0].image_size
        display = eval_transform(size, networks[0].resize).transforms[:2]  # resize and crop, no normalisation
        shown_image = np.asarray(display[1](display[0](rgb)))
        axes[r][0].imshow(shown_image)
        axes[r][0].set_title(f"{names[label]}", fontsize=11)
        c = 1
        for network in networks:
            x = network.transform()(rgb).unsqueeze(0)
            cams, probs = grad_cam(network.model, x, targets=[label], layer=layer, method=method)
            mappable = _overlay(axes[r][c], shown_image, cams[0])
            if r == 0:
                axes[r][c].set_title(network.label, fontsize=11)
            axes[r][c].set_xlabel(f"P = {probs[0]:.2f}", fontsize=10)
            c += 1
            if stages[network.label]:
                maps = attention_maps(network.model, x)
                for block in stages[network.label]:
                    _overlay(axes[r][c], shown_image, maps[block].spatial[0, 0])
                    if r == 0:
                        axes[r][c].set_title(f"{network.label}: Ms {block.split('.')[0]}", fontsize=9)
                    c += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("input", fontsize=10)
    scale = f"{method} (normalised)" + (", attention Ms" if with_attention_maps else "")
    fig.colorbar(mappable, ax=axes, shrink=0.6, label=scale)
    output = Path(output)
    figure_format = output.suffix.lstrip(".").lower() or "png"
    atomic_write(output, lambda tmp: fig.savefig(tmp, format=figure_format, dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return shown


def _overlay(ax, image: np.ndarray, heat: torch.Tensor):
    """`heat` (any size, values in [0, 1]) over `image`, on the shared colour scale."""
    ax.imshow(image)
    resized = Image.fromarray(heat.float().numpy()).resize(image.shape[1::-1], Image.BILINEAR)
    return ax.imshow(np.asarray(resized), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)


def _stage_blocks(network: Network) -> list[str]:
    """The last CBAM block of every stage (`layer1.1.attention` ...), in order."""
    from cbam.layers import CBAM

    last: dict[str, str] = {}
    for name, module in network.model.named_modules():
        if isinstance(module, CBAM) and module.spatial is not None:
            last[name.split(".")[0]] = name
    return list(last.values())


def write_gallery(
    networks: list[Network], data: str, folder: Path, *, split: str = "val", indices: list[int] | None = None,
    count: int = 24, seed: int = 0, correct_only: bool = False, method: str = "gradcam", layer: str | None = None,
    with_attention_maps: bool = False,
) -> Path:  # fmt: skip
    """An HTML page with one figure row per image (`folder/index.html`, images beside it)."""
    import html

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = open_split(data, split)
    names = class_names(dataset)
    shown = choose_images(dataset, networks, indices, count, seed, correct_only)
    items = []
    for index in shown:
        draw_figure(
            networks, data, folder / f"image-{index:06d}.png", split=split, indices=[index], method=method,
            layer=layer, with_attention_maps=with_attention_maps,
        )  # fmt: skip
        label = html.escape(names[dataset[index][1]])
        items.append(f'<figure><img src="image-{index:06d}.png" alt="image {index}, class {label}">'
                     f"<figcaption>#{index}: {label}</figcaption></figure>")  # fmt: skip
    columns = html.escape(", ".join(n.label for n in networks))
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{method}: {columns}</title><style>img{{max-width:100%}}figure{{margin:1em 0}}</style>"
        f"</head><body><h1>{method} on {html.escape(data)} ({split})</h1><p>Columns: input, {columns}.</p>"
        + "".join(items)
        + "</body></html>\n"
    )
    atomic_write(folder / "index.html", lambda tmp: tmp.write_text(page))
    return folder / "index.html"
