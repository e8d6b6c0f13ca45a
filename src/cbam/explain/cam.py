"""Grad-CAM and its relatives on any classifier, through pytorch-grad-cam (the field's package).

`grad_cam` adds what the paper's Fig. 4 needs around it: the default layer (the network's last
convolutional output, after the last block's attention), the class (ground truth when given,
else the prediction), the softmax score P of that class, and a model left exactly as it was
(training flag, weights, BatchNorm statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from cbam.errors import ConfigError, unknown_name
from cbam.extras import import_optional

CAM_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
)


def _method_class(method: str) -> type:
    pgc = import_optional("pytorch_grad_cam", "explain", "Grad-CAM")

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "eigencam": pgc.EigenCAM,
        "eigengradcam": pgc.EigenGradCAM,
        "scorecam": pgc.ScoreCAM,
        "ablationcam": pgc.AblationCAM,
    }
    if method not in classes:
        raise unknown_name("CAM method", method, CAM_METHODS)
    return classes[method]


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage's output: the last residual block (attention included) for
    ResNets of this zoo, torchvision and timm, the last feature block for MobileNet/EfficientNet
    style networks, else the last Conv2d."""
    for path in ("layer4", "stages", "features", "blocks"):
        stage = getattr(model, path, None)
        if isinstance(stage, nn.Sequential | nn.ModuleList) and len(stage) > 0:
            return stage[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution; pass layer= to grad_cam")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """A module, its dotted name in `model`, or None for `default_cam_layer`."""
    if layer is None:
        return default_cam_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        top = [name for name, _ in model.named_children()]
        listed = [*top, f"and {len(names) - len(top)} nested ones (list all with `cbam cam --list-layers`)"]
        raise unknown_name("layer", layer, names, listed) from None


@contextlib.contextmanager
def _unchanged(model: nn.Module) -> Iterator[None]:
    """pytorch-grad-cam switches the model to eval mode and backpropagates into the parameters:
    put every module's flag and every parameter's gradient back as they were."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
        for parameter, grad in grads:
            parameter.grad = grad


def grad_cam(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[int] | Tensor | None = None,
    layer: nn.Module | str | None = None,
    method: str = "gradcam",
) -> tuple[Tensor, Tensor]:
    """Class activation maps `cams` (N, H, W) in [0, 1] at the input's size, and `probs` (N,), the
    softmax score of each map's class (the paper's P).

    The class is `targets[i]` where given (the ground truth), else the network's prediction. The
    model runs in eval mode for the maps and is left as it was found.
    """
    targets_module = import_optional("pytorch_grad_cam.utils.model_targets", "explain", "Grad-CAM")
    ClassifierOutputTarget = targets_module.ClassifierOutputTarget

    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    target_layer = resolve_layer(model, layer)
    with _unchanged(model):
        model.eval()
        with torch.no_grad():
            logits = model(images)
        classes = torch.as_tensor(targets).flatten() if targets is not None else logits.argmax(1)
        if classes.numel() != images.shape[0]:
            raise ValueError(f"targets has {classes.numel()} classes for {images.shape[0]} images")
        if ((classes < 0) | (classes >= logits.shape[1])).any():
            raise ValueError(f"targets must be class indices in [0, {logits.shape[1]})")
        with _method_class(method)(model=model, target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    probs = logits.float().softmax(1).gather(1, classes.to(logits.device).long().view(-1, 1)).squeeze(1)
    return torch.from_numpy(maps).float(), probs.cpu()
