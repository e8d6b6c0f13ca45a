"""SSD and StairNet (Table 8): exact parameter counts and the paper's, attention right before every
classifier, torchvision's detection contract, and backbone weights read from disk."""

import functools

import pytest
import torch
from torch import nn
from torchvision.models.detection import ssd300_vgg16

from cbam.checkpoint import Checkpoint, save_checkpoint, save_weights
from cbam.classification.task import ClassificationConfig
from cbam.detection.detectors import create_detector, list_detectors
from cbam.detection.ssd import (
    BACKBONES,
    TABLE8_ASPECT_RATIOS,
    TORCHVISION_VGG16_CONVS,
    VGG16_STAGES,
    map_sizes,
    ssd300,
    stairnet300,
    subsample_fc,
    upsample_padding,
)
from cbam.engine.config import build_config
from cbam.errors import CheckpointError, ConfigError
from cbam.layers import ATTENTION_LAYERS, BAM, CBAM, ChannelAttention, SpatialAttention, SqueezeExcite
from cbam.networks.build import create_model
from cbam.paper import load_tables
from tests.conftest import randomize_

BUILDERS = {"ssd300": ssd300, "stairnet300": stairnet300}
ATTENTIONS = ("none", "se", "cbam")

# Measured with 21 classes (VOC + background), SSD300's 4, 6, 6, 6, 4, 4 default boxes.
PARAMS = {
    ("ssd300", "vgg16", "none"): 26_285_486,  # torchvision's ssd300_vgg16(num_classes=21) counts the same
    ("ssd300", "vgg16", "se"): 26_509_662,
    ("ssd300", "vgg16", "cbam"): 26_510_262,
    ("stairnet300", "vgg16", "none"): 31_890_350,
    ("stairnet300", "vgg16", "se"): 31_941_134,
    ("stairnet300", "vgg16", "cbam"): 31_941_734,
    ("ssd300", "mobilenet_v1", "none"): 5_789_614,
    ("ssd300", "mobilenet_v1", "se"): 6_007_510,
    ("ssd300", "mobilenet_v1", "cbam"): 6_008_110,
    ("stairnet300", "mobilenet_v1", "none"): 5_988_142,
    ("stairnet300", "mobilenet_v1", "se"): 6_001_246,
    ("stairnet300", "mobilenet_v1", "cbam"): 6_001_846,
}
PAPER_TOLERANCE = 0.01  # relative; docs/detection.md says why each row differs
TABLE8_ROWS = {
    "SSD": ("ssd300", "none"),
    "StairNet": ("stairnet300", "none"),
    "StairNet+SE": ("stairnet300", "se"),
    "StairNet+CBAM": ("stairnet300", "cbam"),
}
TABLE8_BACKBONES = {"VGG16": "vgg16", "MobileNet": "mobilenet_v1"}


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def measured(detector: str, backbone: str, attention: str, table8_boxes: bool = False) -> tuple[int, tuple[int, ...]]:
    """(parameters, channels of the six maps the classifiers read) of a full-size 21-class build."""
    ratios = TABLE8_ASPECT_RATIOS if table8_boxes else None
    model = BUILDERS[detector](backbone=backbone, attention=attention, num_classes=21, aspect_ratios=ratios)
    return num_params(model), tuple(model.backbone.out_channels)


def table8() -> list[dict]:
    return load_tables()["table8_voc2007_stairnet"]


# ---------------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("detector", "backbone", "attention"), sorted(PARAMS))
def test_parameter_count_is_pinned(detector, backbone, attention):
    assert measured(detector, backbone, attention)[0] == PARAMS[detector, backbone, attention]


@pytest.mark.parametrize("row", table8(), ids=lambda r: f"{r['backbone']}-{r['detector']}")
def test_parameter_count_is_near_table8(row):
    detector, attention = TABLE8_ROWS[row["detector"]]
    ours = measured(detector, TABLE8_BACKBONES[row["backbone"]], attention)[0] / 1e6
    assert ours == pytest.approx(row["params_m"], rel=PAPER_TOLERANCE)


@pytest.mark.parametrize("row", [r for r in table8() if r["backbone"] == "VGG16"], ids=lambda r: r["detector"])
def test_six_boxes_on_conv4_3_reproduce_every_vgg16_row_as_printed(row):
    detector, attention = TABLE8_ROWS[row["detector"]]
    ours = measured(detector, "vgg16", attention, table8_boxes=True)[0]
    assert round(ours / 1e6, 1) == row["params_m"]


def se_params(channels: int) -> int:
    hidden = max(1, int(channels / 16 + 0.5))  # round(C / 16), MLP with biases
    return 2 * channels * hidden + hidden + channels


def cbam_params(channels: int) -> int:
    return se_params(channels) + 2 * 7 * 7 + 2  # + spatial 7x7 conv on [max; mean] without bias, BatchNorm(1)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_attention_adds_six_modules_on_the_classifiers_maps(detector, backbone):
    plain, channels = measured(detector, backbone, "none")
    assert len(channels) == 6
    if detector == "stairnet300":
        assert len(set(channels)) == 1  # every fused map has StairNet's width
    assert measured(detector, backbone, "se")[0] - plain == sum(se_params(c) for c in channels)
    assert measured(detector, backbone, "cbam")[0] - plain == sum(cbam_params(c) for c in channels)


# ---------------------------------------------------------------------------------------- structure


@pytest.mark.parametrize(("attention", "kind"), [("se", SqueezeExcite), ("cbam", CBAM), ("bam", BAM)])
def test_exactly_six_attention_modules(attention, kind):
    model = stairnet300(backbone="mobilenet_v1", attention=attention)
    assert sum(isinstance(m, kind) for m in model.modules()) == 6
    assert all(isinstance(m, kind) for m in model.backbone.attention)


@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_no_attention_means_no_attention_module(detector):
    model = BUILDERS[detector](backbone="mobilenet_v1", attention="none")
    assert not any(isinstance(m, (ChannelAttention, SpatialAttention, CBAM, BAM)) for m in model.modules())
    assert all(isinstance(m, nn.Identity) for m in model.backbone.attention)


def test_attention_spec_with_options_reaches_every_module():
    model = stairnet300(backbone="mobilenet_v1", attention={"name": "cbam", "kernel_size": 3})
    assert [m.spatial.conv.kernel_size for m in model.backbone.attention] == [(3, 3)] * 6


@pytest.mark.parametrize(
    ("backbone", "sides", "channels"),
    [
        ("vgg16", [38, 19, 10, 5, 3, 1], (512, 1024, 512, 256, 256, 256)),
        ("mobilenet_v1", [19, 10, 5, 3, 2, 1], (512, 1024, 512, 256, 256, 128)),
    ],
)
def test_six_scales_at_300_px(backbone, sides, channels):
    model = ssd300(backbone=backbone)
    assert map_sizes(model.backbone.body, 300) == sides
    assert measured("ssd300", backbone, "none")[1] == channels
    boxes = model.anchor_generator.num_anchors_per_location()
    assert boxes == [4, 6, 6, 6, 4, 4]
    if backbone == "vgg16":
        assert sum(s * s * b for s, b in zip(sides, boxes, strict=True)) == 8732  # SSD300's default boxes


def test_vgg16_ssd_has_torchvisions_ssd300_vgg16_parameter_shapes():
    ours = ssd300(backbone="vgg16", num_classes=21)
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in theirs.parameters())


def test_vgg16_layout():
    body = ssd300(backbone="vgg16").backbone.body
    assert [name for name, _ in body.trunk.named_children()] == list(TORCHVISION_VGG16_CONVS.values())
    assert torch.equal(body.l2norm.weight, torch.full((512,), 20.0))
    assert (body.fc6.kernel_size, body.fc6.dilation, body.fc6.out_channels) == ((3, 3), (6, 6), 1024)
    assert (body.fc7.kernel_size, body.fc7.out_channels) == ((1, 1), 1024)


@pytest.mark.parametrize(("coarse", "fine"), [(19, 38), (10, 19), (5, 10), (3, 5), (1, 3), (2, 3), (1, 2), (1, 1)])
def test_upsample_reaches_the_finer_side(coarse, fine):
    padding, output_padding = upsample_padding(coarse, fine)
    deconv = nn.ConvTranspose2d(1, 1, 3, 2, padding, output_padding)
    assert deconv(torch.zeros(1, 1, coarse, coarse)).shape[-1] == fine


def test_upsample_refuses_more_than_about_twice():
    with pytest.raises(ValueError, match="cannot reach 5 px from 1 px"):
        upsample_padding(1, 5)


def test_bad_arguments_are_refused_where_they_enter():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet50'.*vgg16"):
        ssd300(backbone="resnet50")
    with pytest.raises(ValueError, match="too small"):
        ssd300(backbone="vgg16", size=200)
    with pytest.raises(ValueError, match="one list per scale"):
        ssd300(backbone="mobilenet_v1", aspect_ratios=[[2]] * 5)
    with pytest.raises(ValueError, match="unknown attention"):
        stairnet300(backbone="mobilenet_v1", attention="sea")


def test_registered_and_built_through_the_registry():
    assert {"ssd300", "stairnet300"} <= set(list_detectors())
    model = create_detector("stairnet300", backbone="mobilenet_v1", attention="se", num_classes=5, size=128)
    assert model.head.classification_head.num_columns == 5


# ---------------------------------------------------------------------------------------- forward and backward


def images_and_targets(size: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different shapes; boxes from small to whole-image, so every scale has positives."""
    images = [torch.rand(3, size, size), torch.rand(3, size - 16, size)]
    small, medium, whole = [4.0, 8.0, 30.0, 40.0], [10.0, 12.0, 70.0, 90.0], [0.0, 0.0, size - 1.0, size - 17.0]
    targets = [
        {"boxes": torch.tensor([small, medium]), "labels": torch.tensor([3, 20])},
        {"boxes": torch.tensor([medium, whole]), "labels": torch.tensor([1, 7])},
    ]
    return images, targets


def attention_feeds_every_classifier(model: nn.Module, images: list[torch.Tensor]) -> None:
    """Forward hooks: the tensor each classifier and box regressor reads is its attention module's output,
    and each attention module reads the fused map (StairNet's output) or the body's map."""
    attended, classifier_inputs, regressor_inputs, fused = {}, {}, {}, {}
    hooks = []
    for i, module in enumerate(model.backbone.attention):
        hooks.append(module.register_forward_hook(lambda m, args, out, i=i: attended.__setitem__(i, (args[0], out))))
    for i, conv in enumerate(model.head.classification_head.module_list):
        hooks.append(conv.register_forward_pre_hook(lambda m, args, i=i: classifier_inputs.__setitem__(i, args[0])))
    for i, conv in enumerate(model.head.regression_head.module_list):
        hooks.append(conv.register_forward_pre_hook(lambda m, args, i=i: regressor_inputs.__setitem__(i, args[0])))
    source = model.backbone.fusion if model.backbone.fusion is not None else model.backbone.body
    hooks.append(source.register_forward_hook(lambda m, args, out: fused.update(enumerate(out))))
    with torch.no_grad():
        model.eval()(images)
    for hook in hooks:
        hook.remove()
    assert len(attended) == len(classifier_inputs) == len(regressor_inputs) == len(fused) == 6
    for i, (attention_input, attention_output) in attended.items():
        assert attention_input is fused[i]
        assert classifier_inputs[i] is attention_output
        assert regressor_inputs[i] is attention_output


@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_attention_sits_right_before_every_classifier(detector):
    model = BUILDERS[detector](backbone="mobilenet_v1", attention="cbam", size=128)
    attention_feeds_every_classifier(model, images_and_targets(128)[0])


@pytest.mark.parametrize("attention", ["eca", "ese", "ge", "gc", "coord", "simam", "triplet"])
@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_every_newer_attention_sits_before_every_classifier_and_trains(detector, attention):
    """Each module of issue 24 on the six maps, down to the 1 x 1 one, and a training step that reaches it."""
    model = BUILDERS[detector](backbone="mobilenet_v1", attention=attention, size=128)
    assert all(isinstance(m, ATTENTION_LAYERS[attention]) for m in model.backbone.attention)
    attention_feeds_every_classifier(model, images_and_targets(128)[0])
    losses = model.train()(*images_and_targets(128))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trained = dict(model.backbone.attention.named_parameters())
    assert bool(trained) == (attention not in ("ge", "simam"))  # GE-theta-minus and SimAM have no parameters
    for name, p in trained.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not trained or any(p.grad.abs().sum() > 0 for p in trained.values()), "the loss moves the attention"


@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_train_step_and_inference_follow_torchvisions_contract(detector):
    model = BUILDERS[detector](backbone="mobilenet_v1", attention="cbam", size=128)
    images, targets = images_and_targets(128)
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    stem = model.backbone.body.trunk.features[0].conv.weight.grad
    assert stem is not None and stem.abs().sum() > 0  # gradients reach the backbone's first conv
    # a scale's attention learns when the loss reads its boxes (the finest always; coarse ones depend on the boxes)
    assert model.backbone.attention[0].channel.mlp[0].weight.grad.abs().sum() > 0
    if model.backbone.fusion is not None:  # the top-down path carries the fine scales' loss to every coarser map
        assert all(up[0].weight.grad.abs().sum() > 0 for up in model.backbone.fusion.up)

    detections = model.eval()(images)
    assert len(detections) == 2
    for image, found in zip(images, detections, strict=True):
        assert set(found) == {"boxes", "labels", "scores"}
        n = found["boxes"].shape[0]
        assert found["boxes"].shape == (n, 4) and found["labels"].shape == found["scores"].shape == (n,)
        assert (found["boxes"][:, 2:] <= torch.tensor([image.shape[2], image.shape[1]])).all()  # original size
        assert ((found["labels"] >= 1) & (found["labels"] <= 20)).all()


@pytest.mark.slow
@pytest.mark.parametrize("detector", sorted(BUILDERS))
def test_vgg16_train_step_and_attention_placement_at_300_px(detector):
    model = BUILDERS[detector](backbone="vgg16", attention="cbam")
    images, targets = images_and_targets(300)
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.trunk.conv1_1.weight.grad.abs().sum() > 0
    assert model.backbone.body.l2norm.weight.grad.abs().sum() > 0
    attention_feeds_every_classifier(model, images)


# ---------------------------------------------------------------------------------------- backbone weights


def fake_torchvision_vgg16(classifier: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's `vgg16()` keys and shapes (features; a classifier if given)."""
    state, channels = {}, 3
    widths = [w for stage in VGG16_STAGES for w in stage]
    for index, width in zip(TORCHVISION_VGG16_CONVS, widths, strict=True):
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(width)
        channels = width
    return {**state, **(classifier or {})}


def test_torchvision_vgg16_weights_load_onto_conv1_1_to_conv5_3(tmp_path):
    # torchvision's "features only" weights keep NaN in the classifier: it must be skipped, not loaded
    nan = {f"classifier.{i}.{p}": torch.full((2, 2) if p == "weight" else (2,), float("nan")) for i in (0, 3, 6)
           for p in ("weight", "bias")}  # fmt: skip
    state = fake_torchvision_vgg16(nan)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = stairnet300(backbone="vgg16", backbone_weights=path)
    trunk = model.backbone.body.trunk
    for index, name in TORCHVISION_VGG16_CONVS.items():
        assert torch.equal(getattr(trunk, name).weight, state[f"features.{index}.weight"])
        assert torch.equal(getattr(trunk, name).bias, state[f"features.{index}.bias"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fc6_fc7_are_subsampled_from_the_classifier():
    c, width, outputs = 2, 2, 8  # VGG16: 512, 1024, 4096
    w6, b6 = torch.randn(outputs, c * 49), torch.randn(outputs)
    w7, b7 = torch.randn(outputs, outputs), torch.randn(outputs)
    fc = subsample_fc(w6, b6, w7, b7, width=width)
    assert fc["fc6.weight"].shape == (width, c, 3, 3) and fc["fc7.weight"].shape == (width, width, 1, 1)
    kernel = w6.view(outputs, c, 7, 7)
    for o in range(width):
        assert fc["fc6.bias"][o] == b6[4 * o] and fc["fc7.bias"][o] == b7[4 * o]
        for i in range(width):
            assert fc["fc7.weight"][o, i, 0, 0] == w7[4 * o, 4 * i]
        for i in range(c):
            for a in range(3):
                for b in range(3):
                    assert fc["fc6.weight"][o, i, a, b] == kernel[4 * o, i, 3 * a, 3 * b]


@pytest.mark.slow
def test_full_vgg16_classifier_fills_fc6_and_fc7(tmp_path):
    classifier = {
        "classifier.0.weight": torch.randn(4096, 512 * 7 * 7),
        "classifier.0.bias": torch.randn(4096),
        "classifier.3.weight": torch.randn(4096, 4096),
        "classifier.3.bias": torch.randn(4096),
        "classifier.6.weight": torch.randn(1000, 4096),
        "classifier.6.bias": torch.randn(1000),
    }
    state = fake_torchvision_vgg16(classifier)
    torch.save(state, tmp_path / "vgg16.pth")
    body = ssd300(backbone="vgg16", backbone_weights=tmp_path / "vgg16.pth").backbone.body
    expected = subsample_fc(*(classifier[f"classifier.{i}.{p}"] for i in (0, 3) for p in ("weight", "bias")), 1024)
    for name, value in expected.items():
        assert torch.equal(body.get_parameter(name), value)


def test_mobilenet_weights_from_a_cbam_train_checkpoint_and_safetensors(tmp_path):
    network = randomize_(create_model("mobilenet_v1"))
    checkpoint = Checkpoint("classification", {"arch": "mobilenet_v1"}, None, 1, network.state_dict())
    save_checkpoint(tmp_path / "last.pt", checkpoint)
    save_weights(tmp_path / "last.safetensors", checkpoint)
    for name in ("last.pt", "last.safetensors"):
        model = stairnet300(backbone="mobilenet_v1", backbone_weights=tmp_path / name)
        trunk = model.backbone.body.trunk
        for key, value in network.features.state_dict().items():
            assert torch.equal(trunk.features.state_dict()[key], value), (name, key)


@pytest.mark.parametrize("file", ["last.pt", "last.safetensors"])
def test_mobilenet_trunk_takes_the_width_its_checkpoint_records(tmp_path, file):
    """A half-width MobileNet v1 saved as `cbam train` saves it (its config records `width_mult`)."""
    model_kwargs = {"width_mult": 0.5}
    network = randomize_(create_model("mobilenet_v1", num_classes=10, **model_kwargs))
    config = build_config(ClassificationConfig, None, arch="mobilenet_v1", model_kwargs=model_kwargs).to_dict()
    checkpoint = Checkpoint("classification", config, list("0123456789"), 1, network.state_dict())
    save_checkpoint(tmp_path / "last.pt", checkpoint)
    save_weights(tmp_path / "last.safetensors", checkpoint)
    expected = network.features.state_dict()
    for builder in (ssd300, stairnet300):
        model = builder(backbone="mobilenet_v1", num_classes=5, size=128, backbone_weights=tmp_path / file)
        body = model.backbone.body
        state = body.trunk.features.state_dict()
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(state[key], value), (builder.__name__, key)
        assert body.out_channels[:2] == [256, 512]  # half of 512 and 1024
        assert body.extras[0][0][0].in_channels == 512
    with pytest.raises(CheckpointError, match=r"shape mismatch"):  # explicit options win over recorded ones
        ssd300(backbone="mobilenet_v1", size=128, backbone_weights=tmp_path / file, backbone_kwargs={"width_mult": 1})


def test_backbone_kwargs_shape_the_mobilenet_trunk_and_vgg16_refuses_them():
    body = ssd300(backbone="mobilenet_v1", size=128, backbone_kwargs={"width_mult": 0.25}).backbone.body
    assert body.out_channels[:2] == [128, 256]
    with pytest.raises(ConfigError, match=r"vgg16 takes no builder options, got \['width_mult'\]"):
        stairnet300(backbone="vgg16", backbone_kwargs={"width_mult": 0.5})


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        ssd300(backbone="vgg16", backbone_weights=tmp_path / "nowhere.pth")


def test_a_state_dict_that_does_not_fit_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(10, 512)}, path)
    fit = r"resnet\.pth.*missing: conv1_1\.weight.*unexpected: conv1\.weight"
    with pytest.raises(CheckpointError, match=fit) as err:
        ssd300(backbone="vgg16", backbone_weights=path)
    assert "fc.weight" in str(err.value)

    state = fake_torchvision_vgg16()
    state["features.0.weight"] = torch.randn(32, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv1_1\.weight \(32, 3, 3, 3\) vs \(64, 3, 3, 3\)"):
        ssd300(backbone="vgg16", backbone_weights=path)

    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"resnet\.pth"):
        ssd300(backbone="mobilenet_v1", backbone_weights=path)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    network = create_model("resnet18")
    checkpoint = Checkpoint("classification", {"arch": "resnet18"}, None, 1, network.state_dict())
    save_checkpoint(tmp_path / "best.pt", checkpoint)
    with pytest.raises(CheckpointError, match=r"best\.pt.*resnet18"):
        stairnet300(backbone="mobilenet_v1", backbone_weights=tmp_path / "best.pt")
