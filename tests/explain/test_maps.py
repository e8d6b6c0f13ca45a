"""cbam.attention_maps: every block's Ms and Mc, equal to the layer's own formulas."""

from __future__ import annotations

import torch

import cbam
from tests.conftest import randomize_


def test_maps_of_every_cbam_block_match_the_branches() -> None:
    model = randomize_(cbam.create_model("resnet18_cbam", num_classes=3)).eval()
    images = torch.randn(2, 3, 64, 64)
    maps = cbam.attention_maps(model, images)
    blocks = [name for name, m in model.named_modules() if isinstance(m, cbam.CBAM)]
    assert list(maps) == blocks
    first = model.layer1[0]
    with torch.no_grad():
        x = first.bn2(
            first.conv2(first.relu(first.bn1(first.conv1(model.maxpool(model.relu(model.bn1(model.conv1(images))))))))
        )
        mc = first.attention.channel.attention_map(x)
        ms = first.attention.spatial.attention_map(x * mc)
    torch.testing.assert_close(maps["layer1.0.attention"].channel, mc.flatten(1))
    torch.testing.assert_close(maps["layer1.0.attention"].spatial, ms)
    assert maps["layer4.1.attention"].spatial.shape == (2, 1, 2, 2)


def test_bam_stage_maps_and_the_model_state_is_kept() -> None:
    model = randomize_(cbam.create_model("resnet18_bam", num_classes=3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = cbam.attention_maps(model, torch.randn(2, 3, 64, 64))
    assert list(maps) == ["stage_attention.0", "stage_attention.1", "stage_attention.2"]
    assert maps["stage_attention.0"].channel.shape == (2, 64)
    assert maps["stage_attention.0"].spatial.shape == (2, 1, 16, 16)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
