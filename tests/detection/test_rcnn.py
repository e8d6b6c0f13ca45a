"""Faster R-CNN on attention ResNets (paper Table 7): sizes, frozen BatchNorm, training, backbone weights."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import cbam
from cbam.checkpoint import Checkpoint, save_checkpoint, save_weights
from cbam.classification.task import ClassificationConfig
from cbam.detection import rcnn
from cbam.detection.ssd import load_backbone
from cbam.engine.config import build_config
from cbam.errors import CheckpointError, ConfigError
from cbam.layers import ATTENTION_LAYERS, CBAM
from cbam.layers.fused import set_attention_impl, spatial_fusable
from cbam.layers.spatial import SpatialAttention
from cbam.networks.weights import read_network_weights
from tests.conftest import randomize_
from tests.layers.rounding import outcomes, rounding_bound

BUILDERS = {"c4": rcnn.faster_rcnn_c4, "fpn": rcnn.faster_rcnn_fpn}
# 64 px images: anchors that fit them, and few RoIs so the C4 box head (layer4 per RoI) stays fast on a CPU
SMALL = {"min_size": 64, "max_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 64}
SMALL_ANCHORS = {"c4": (8, 16, 32), "fpn": (8, 16, 24, 32, 48)}
BLOCKS = {"resnet18": 8, "resnet50": 16, "resnet101": 33}
NEWER = ("eca", "ese", "ge", "gc", "coord", "simam", "triplet")  # the modules CBAM is compared with (issue 24)
PARAMETER_FREE = ("ge", "simam")  # GE-theta-minus and SimAM


def small_detector(kind: str, attention="cbam", backbone="resnet18", **kwargs) -> nn.Module:
    options = {**SMALL, "anchor_sizes": SMALL_ANCHORS[kind], "rpn_post_nms_top_n_test": 32, **kwargs}
    return BUILDERS[kind](backbone=backbone, attention=attention, num_classes=11, **options)


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64 px images with one random box each, as `cluttered-digits` has."""
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = []
    for _ in images:
        x0, y0 = torch.randint(0, 40, (2,)).tolist()
        w, h = torch.randint(10, 24, (2,)).tolist()
        box = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32)
        targets.append({"boxes": box, "labels": torch.randint(1, 11, (1,))})
    return images, targets


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_key(detector_key: str) -> str | None:
    """The classification network's name for a detector weight (None for the detection heads)."""
    if detector_key.startswith("roi_heads.box_head.layer4."):  # the C4 box head
        return detector_key.removeprefix("roi_heads.box_head.")
    for prefix in ("backbone.body.", "backbone."):
        if detector_key.startswith(prefix) and not detector_key.startswith("backbone.fpn."):
            return detector_key.removeprefix(prefix)
    return None


def assert_backbone_equal(detector: nn.Module, classifier_state: dict[str, torch.Tensor]) -> None:
    own = {backbone_key(k): v for k, v in detector.state_dict().items() if backbone_key(k) and "num_batches" not in k}
    expected = {k: v for k, v in classifier_state.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert set(own) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------- sizes


# measured: 81 classes (COCO), torch 2.14.1 / torchvision 0.29.1; frozen BatchNorm holds buffers, not parameters
C4_PARAMS = {
    ("resnet50", "none"): 33_799_840,
    ("resnet50", "cbam"): 36_332_432,
    ("resnet101", "none"): 52_739_744,
    ("resnet101", "cbam"): 57_520_756,
}


@pytest.mark.parametrize(("arch", "attention"), list(C4_PARAMS))
def test_c4_full_size_parameters(arch, attention):
    detector = rcnn.faster_rcnn_c4(backbone=arch, attention=attention, num_classes=81)
    assert n_params(detector) == C4_PARAMS[arch, attention]
    modules = [m for m in detector.modules() if isinstance(m, CBAM)]
    assert len(modules) == (BLOCKS[arch] if attention == "cbam" else 0)
    box_head_blocks = len(detector.roi_heads.box_head.layer4)
    assert sum(isinstance(m, CBAM) for m in detector.roi_heads.box_head.modules()) == (
        box_head_blocks if attention == "cbam" else 0
    )


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_cbam_adds_exactly_the_classification_networks_cbam_parameters(arch):
    classification = n_params(cbam.create_model(arch, attention="cbam")) - n_params(cbam.create_model(arch))
    assert C4_PARAMS[arch, "cbam"] - C4_PARAMS[arch, "none"] == classification


def test_c4_parameters_follow_the_formula():
    """Backbone (no classifier, BatchNorm affine as frozen buffers) + RPN head + box predictor."""
    classes, net = 81, cbam.create_model("resnet50", attention="cbam")
    trunk_bn = sum(
        m.weight.numel() * 2
        for name, m in net.named_modules()
        if isinstance(m, nn.BatchNorm2d) and ".attention." not in name
    )
    backbone = n_params(net) - n_params(net.fc) - trunk_bn
    c3, anchors = 1024, 15
    rpn = c3 * c3 * 9 + c3 + (c3 + 1) * anchors + (c3 + 1) * 4 * anchors
    predictor = (2048 + 1) * classes * 5
    assert C4_PARAMS["resnet50", "cbam"] == backbone + rpn + predictor


def test_fpn_matches_torchvisions_resnet50_fpn():
    """With no attention the FPN detector has torchvision's fasterrcnn_resnet50_fpn weights, shape for shape."""
    ours = rcnn.faster_rcnn_fpn(backbone="resnet50", num_classes=81)
    # what fasterrcnn_resnet50_fpn builds from a trained backbone, without reading any weights
    body = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    theirs = FasterRCNN(body, num_classes=81)
    assert n_params(ours) == 41_704_036 == n_params(theirs)
    trained = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, theirs)]
    assert trained[0] == trained[1]

    def shapes(model):
        return sorted(tuple(v.shape) for k, v in model.state_dict().items() if "num_batches" not in k)

    assert shapes(ours) == shapes(theirs)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "attention", "expected"),
    [
        ("resnet50", "cbam", 44_236_628),
        ("resnet101", "none", 60_643_940),
        ("resnet101", "cbam", 65_424_952),
    ],
)
def test_fpn_full_size_parameters(arch, attention, expected):
    detector = rcnn.faster_rcnn_fpn(backbone=arch, attention=attention, num_classes=81)
    assert n_params(detector) == expected
    assert sum(isinstance(m, CBAM) for m in detector.modules()) == (BLOCKS[arch] if attention == "cbam" else 0)


def test_resnext_backbone_and_bad_names():
    detector = rcnn.faster_rcnn_c4(backbone="resnext50_32x4d", attention="se", num_classes=3, min_size=64, max_size=64)
    assert detector.backbone.out_channels == 1024 and detector.roi_heads.box_head.out_channels == 2048
    with pytest.raises(ValueError, match=r"not a ResNet.*resnet50"):
        rcnn.faster_rcnn_c4(backbone="mobilenet_v1", num_classes=3)
    with pytest.raises(ValueError, match="not a ResNet"):
        rcnn.faster_rcnn_c4(backbone="resnet5O", num_classes=3)
    with pytest.raises(ValueError, match="one anchor size per pyramid level"):
        rcnn.faster_rcnn_fpn(backbone="resnet18", num_classes=3, anchor_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="trainable_layers"):
        rcnn.faster_rcnn_c4(backbone="resnet18", num_classes=3, trainable_layers=6)


# ---------------------------------------------------------------------------------------- freezing


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize(("kind", "attention"), [("c4", "cbam"), ("c4", "bam"), ("fpn", "cbam")])
def test_batch_norm_is_frozen(kind, attention):
    model = small_detector(kind, attention)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, (rcnn.EvalBatchNorm1d, rcnn.EvalBatchNorm2d)) for m in norms)
    assert norms, "the attention layers' BatchNorm stays a BatchNorm (pinned in eval mode)"
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    model.train()
    assert not any(m.training for m in norms)
    before = bn_buffers(randomize_(model))
    images, targets = batch()
    model(images, targets)
    after = bn_buffers(model)
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)


def test_cbam_spatial_gate_keeps_the_fused_path():
    model = small_detector("c4")
    gates = [m for m in model.modules() if isinstance(m, SpatialAttention)]
    assert len(gates) == BLOCKS["resnet18"]
    assert all(spatial_fusable(g) and not g.bn.weight.requires_grad for g in gates)


def test_stem_and_layer1_do_not_train():
    model = small_detector("c4", "bam")
    for name, p in model.named_parameters():
        frozen = name.startswith(("backbone.conv1.", "backbone.layer1.", "backbone.stage_attention.0."))
        pinned_bn = ".bn." in name or "channel_mlp.1." in name  # attention BatchNorm: frozen everywhere
        assert p.requires_grad == (not frozen and not pinned_bn), name
    everything = small_detector("fpn", trainable_layers=5)
    trained = {n for n, p in everything.named_parameters() if p.requires_grad}
    assert "backbone.body.conv1.weight" in trained and "backbone.body.layer1.0.conv1.weight" in trained
    nothing = small_detector("fpn", trainable_layers=0)
    assert not any(p.requires_grad for n, p in nothing.named_parameters() if n.startswith("backbone.body."))


def test_batch_norm_train_keeps_ordinary_batch_norm():
    model = small_detector("c4", batch_norm="train").train()
    assert not any(isinstance(m, (FrozenBatchNorm2d, rcnn.EvalBatchNorm2d)) for m in model.modules())
    assert model.backbone.layer2[0].bn1.training


def test_frozen_gate_fused_equals_eager():
    """CBAM with its BatchNorm frozen (as in the box head): the fused kernels give the eager modules' output
    and gradients, and the BatchNorm's own parameters get none."""
    gate = rcnn.freeze_batch_norm(randomize_(CBAM(256))).train()
    assert isinstance(gate.spatial.bn, rcnn.EvalBatchNorm2d) and spatial_fusable(gate.spatial)
    rois = torch.randn(6, 256, 7, 7)
    upstream = torch.randn(6, 256, 7, 7)
    bound = rounding_bound(set_attention_impl(copy.deepcopy(gate), "eager"), [rois], upstream)
    fused = outcomes(set_attention_impl(gate, "compiled"), [rois], upstream)
    bound.check(fused, "frozen CBAM, fused")
    got_gradient = {
        name.removeprefix("gradient of ") for name, g in fused.items() if "gradient of" in name and g is not None
    }
    assert got_gradient == {"input 0"} | {n for n, _ in gate.named_parameters() if ".bn." not in n}


# ---------------------------------------------------------------------------------------- train and eval


@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_train_step_and_inference(kind):
    model = small_detector(kind)
    with torch.no_grad():  # a trained spatial gate: its frozen BatchNorm scale is not the initial 0
        for gate in (m for m in model.modules() if isinstance(m, SpatialAttention)):
            gate.bn.weight.fill_(1.0)
    images, targets = batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    layer2 = [p for n, p in params.items() if ".layer2." in n and n.endswith("conv1.weight")]
    attention4 = [p for n, p in params.items() if ".layer4." in n and ".attention." in n and p.requires_grad]
    assert layer2 and attention4
    assert any(n.endswith("attention.spatial.conv.weight") for n, p in params.items() if ".layer4." in n)
    for p in layer2 + attention4:
        assert p.grad is not None and p.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for found in detections:
        assert set(found) == {"boxes", "labels", "scores"}
        assert found["boxes"].shape == (len(found["labels"]), 4) and found["scores"].shape == found["labels"].shape
        if len(found["labels"]):
            assert found["labels"].min() >= 1 and found["labels"].max() <= 10
            assert found["boxes"].min() >= 0 and found["boxes"].max() <= 64


@pytest.mark.parametrize("attention", NEWER)
@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_every_newer_attention_sits_in_every_block_and_trains(kind, attention):
    """Each module of issue 24 as a detection backbone's attention: one per block (the C4 box head's layer4
    included), its BatchNorm pinned like the backbone's, and a training step that reaches it."""
    model = small_detector(kind, attention)
    layers = [m for m in model.modules() if isinstance(m, ATTENTION_LAYERS[attention])]
    assert len(layers) == BLOCKS["resnet18"] - (2 if attention == "gc" else 0)  # GC: c3-c5 only, as GCNet's
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if attention == "coord":  # the only one with a BatchNorm (in its transform), frozen as the backbone's are
        assert all(isinstance(m.bn, FrozenBatchNorm2d) for m in layers)
    losses = model.train()(*batch())
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    trained = {n: p for n, p in model.named_parameters() if ".layer4." in n and ".attention." in n and p.requires_grad}
    assert bool(trained) == (attention not in PARAMETER_FREE)
    for name, p in trained.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not trained or any(p.grad.abs().sum() > 0 for p in trained.values()), "the loss moves the attention"


@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_create_detector_builds_both(kind):
    from cbam.detection.detectors import create_detector

    options = {**SMALL, "anchor_sizes": SMALL_ANCHORS[kind]}
    model = create_detector(f"faster_rcnn_{kind}", backbone="resnet18", attention="cbam", num_classes=11, **options)
    assert model.transform.min_size == (64,) and model.roi_heads.box_predictor.cls_score.out_features == 11
    assert sum(isinstance(m, CBAM) for m in model.modules()) == BLOCKS["resnet18"]


def test_feature_strides_and_the_c4_box_head():
    """C4: one stride-16 map, and layer4 takes the 14x14 RoIs to 7x7 then pools; FPN: strides 4 to 64."""
    image = torch.rand(1, 3, 64, 64)
    c4 = small_detector("c4", "none").eval()
    with torch.no_grad():
        [c4_map] = c4.backbone(image).values()
        assert c4_map.shape == (1, 256, 4, 4)
        rois = torch.rand(3, 256, 14, 14)
        assert c4.roi_heads.box_head.layer4(rois).shape == (3, 512, 7, 7)
        assert c4.roi_heads.box_head(rois).shape == (3, 512)
        pyramid = small_detector("fpn", "none").eval().backbone(image)
    assert list(pyramid) == ["0", "1", "2", "3", "pool"]
    assert [tuple(m.shape[1:]) for m in pyramid.values()] == [(256, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]


def test_paper_defaults():
    c4 = rcnn.faster_rcnn_c4(backbone="resnet18", num_classes=81)
    assert (c4.transform.min_size, c4.transform.max_size) == ((600,), 1000)
    assert c4.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    assert c4.rpn.anchor_generator.num_anchors_per_location() == [15]
    assert c4.roi_heads.box_roi_pool.output_size == (14, 14)
    fpn = rcnn.faster_rcnn_fpn(backbone="resnet18", num_classes=81)
    assert (fpn.transform.min_size, fpn.transform.max_size) == ((800,), 1333)
    assert fpn.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))


# ---------------------------------------------------------------------------------------- backbone weights


def cbam_checkpoint(tmp_path, arch="resnet18", attention="cbam", **model_kwargs):
    """A classification network saved as `cbam train` saves it: last.pt and last.safetensors."""
    model = randomize_(cbam.create_model(arch, attention=attention, num_classes=10, **model_kwargs))
    config = build_config(ClassificationConfig, None, arch=arch, attention=attention, model_kwargs=model_kwargs)
    config = config.to_dict()
    checkpoint = Checkpoint("classification", config, list("0123456789"), 1, model.state_dict())
    save_checkpoint(tmp_path / "last.pt", checkpoint)
    save_weights(tmp_path / "last.safetensors", checkpoint)
    return model.state_dict()


@pytest.mark.parametrize("file", ["last.pt", "last.safetensors"])
def test_cbam_train_checkpoint_loads(tmp_path, file):
    state = cbam_checkpoint(tmp_path)
    model = small_detector("c4", backbone_weights=tmp_path / file)
    assert_backbone_equal(model, state)


@pytest.mark.parametrize("file", ["last.pt", "last.safetensors"])
def test_backbone_takes_the_shape_its_checkpoint_records(tmp_path, file):
    state = cbam_checkpoint(tmp_path, stem="cifar", width_mult=0.25)  # `make run`'s narrow ResNet-18
    model = small_detector("c4", backbone_weights=tmp_path / file)
    assert_backbone_equal(model, state)  # every weight, of the 3x3 stem's 16 channels too


def test_torchvision_state_dict_loads(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    assert_backbone_equal(small_detector("fpn", "none", backbone_weights=tmp_path / "resnet18.pth"), state)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}  # DataParallel, as the authors saved
    torch.save(wrapped, tmp_path / "wrapped.pth")
    assert read_weights_state(tmp_path / "wrapped.pth").keys() == state.keys()
    torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()}, tmp_path / "compiled.pth")  # compile(DDP)
    assert read_weights_state(tmp_path / "compiled.pth").keys() == state.keys()
    assert_backbone_equal(small_detector("c4", "none", backbone_weights=tmp_path / "wrapped.pth"), state)


def test_wrong_arch_checkpoint_is_refused(tmp_path):
    cbam_checkpoint(tmp_path, arch="resnet34")
    for file in ("last.pt", "last.safetensors"):
        with pytest.raises(CheckpointError, match=rf"{file}.* resnet34, not of the resnet18"):
            small_detector("c4", backbone_weights=tmp_path / file)


def test_bad_files_give_one_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt"):
        small_detector("c4", backbone_weights=corrupt)
    with pytest.raises(CheckpointError, match=r"missing\.pt.*does not exist"):
        small_detector("c4", backbone_weights=tmp_path / "missing.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        read_weights_state(tmp_path / "bad.safetensors")
    torch.save({"conv1.weight": torch.zeros(1), "note": "text"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed\.pt is not a state dict: 'note'"):
        read_weights_state(tmp_path / "mixed.pt")


def test_attention_mismatch_names_the_keys(tmp_path):
    cbam_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"last.pt does not fit .*attention=.*unexpected: layer1.0.attention"):
        small_detector("c4", "none", backbone_weights=tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.1.attention.")}, tmp_path / "some.pth")
    with pytest.raises(CheckpointError, match=r"some.pth does not fit .*attention=.*missing: layer4.1.attention"):
        small_detector("c4", backbone_weights=tmp_path / "some.pth")


def test_plain_weights_leave_the_new_attention_at_its_init(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("cbam"), "propagate", True)  # as a CLI test may have left it
    monkeypatch.setattr(logging.getLogger("cbam"), "handlers", [])
    caplog.set_level(logging.INFO, logger="cbam")
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    detector = small_detector("c4", "cbam", backbone_weights=tmp_path / "resnet18.pth")
    own = {backbone_key(k): v for k, v in detector.state_dict().items() if backbone_key(k)}
    for key, value in state.items():
        if not key.startswith("fc.") and "num_batches" not in key:
            torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)
    [new] = [r.getMessage() for r in caplog.records if "new attention weights" in r.getMessage()]
    assert "resnet18.pth holds no attention weights: 72 new attention weights of the resnet18 backbone" in new
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_load_backbone_is_strict_and_reports_shapes():
    net = cbam.create_model("resnet18")
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.1.")}
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_backbone(net, state, "weights.pt", ignore=("fc.",))
    message = str(err.value)
    assert "weights.pt does not fit the ResNet backbone: 10 missing: layer4.1.conv1.weight" in message
    assert "1 unexpected: extra.weight" in message
    assert "1 shape mismatch (file vs network): conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in message
    assert "fc." not in message


# ---------------------------------------------------------------------------------------- torchvision/timm backbones


def _plain_resnet(source: str) -> nn.Module:
    if source == "timm":
        return pytest.importorskip("timm").create_model("resnet18", pretrained=False)
    return torchvision.models.resnet18()


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_a_torchvision_or_timm_resnet_is_a_backbone_that_starts_where_its_weights_left_off(tmp_path, source):
    """`--backbone torchvision:resnet18 --backbone-weights FILE`: the C4 trunk and box head compute what the
    pretrained network's layer3 and layer4 do, CBAM in every block starting as an exact identity (BatchNorm
    left as it is: frozen, it computes the same in another order)."""
    plain = randomize_(_plain_resnet(source)).eval()
    torch.save(plain.state_dict(), tmp_path / "pretrained.pth")
    detector = small_detector("c4", backbone=f"{source}:resnet18", backbone_weights=tmp_path / "pretrained.pth",
                              attach_init="identity", batch_norm="train").eval()  # fmt: skip
    gates = [n for n, _ in detector.named_parameters() if n.endswith(".gate")]
    assert len(gates) == 8, "CBAM after each of the 8 blocks (layer4's in the box head)"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = plain.maxpool(
            plain.act1(plain.bn1(plain.conv1(x))) if source == "timm" else plain.relu(plain.bn1(plain.conv1(x)))
        )
        layer3 = plain.layer3(plain.layer2(plain.layer1(stem)))
        torch.testing.assert_close(detector.backbone(x)["0"], layer3, rtol=0, atol=0)
        torch.testing.assert_close(detector.roi_heads.box_head.layer4(layer3), plain.layer4(layer3), rtol=0, atol=0)
    trained = {n for n, p in detector.backbone.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv1", "layer1.")) for n in trained) and any(
        n.startswith("layer2.") for n in trained
    )


def test_a_backbone_of_another_layout_or_a_zoo_backbone_with_attach_init_is_refused():
    with pytest.raises(ConfigError, match="torchvision:mobilenet_v3_small is not a ResNet-family network"):
        small_detector("c4", backbone="torchvision:mobilenet_v3_small")
    from cbam.detection.task import DetectionConfig

    with pytest.raises(ConfigError, match="attach_init applies to torchvision:/timm: backbones"):
        build_config(DetectionConfig, None, backbone="resnet18", attach_init="identity")


def read_weights_state(path):
    return read_network_weights(path).state
