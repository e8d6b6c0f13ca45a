import functools

import pytest
from torch import nn

import cbam
from cbam.layers.create import attention_names, attention_placement, create_attention_factory


def test_none_means_no_attention():
    assert create_attention_factory("none") is None
    assert create_attention_factory(None) is None
    assert create_attention_factory({"name": "none"}) is None


@pytest.mark.parametrize(("name", "cls"), [("se", cbam.SqueezeExcite), ("cbam", cbam.CBAM), ("bam", cbam.BAM)])
def test_names_build_their_layer(name, cls):
    assert type(create_attention_factory(name)(64)) is cls


def test_mapping_spec_passes_options():
    layer = create_attention_factory({"name": "cbam", "kernel_size": 3, "arrangement": "parallel"})(64)
    assert layer.spatial.conv.kernel_size == (3, 3)
    assert layer.arrangement == "parallel"


def test_callable_spec_is_used_as_is():
    factory = functools.partial(cbam.CBAM, reduction=8)
    assert create_attention_factory(factory) is factory
    assert create_attention_factory(factory)(64).channel.mlp[0].out_features == 8


def test_unknown_name_suggests_the_close_match():
    with pytest.raises(
        ValueError,
        match=r"unknown attention 'cbma'; did you mean cbam, eca, bam, ceca\? Valid attentions: bam, cbam, ceca, "
        r"channel, coord, eca, ese, gc, ge, none, se, simam, spatial, triplet$",
    ):
        create_attention_factory("cbma")


def test_unknown_option_is_reported_with_the_valid_options():
    with pytest.raises(TypeError, match=r"CBAM does not accept.*kernel.*Options: reduction, pool_types, kernel_size"):
        create_attention_factory({"name": "cbam", "kernel": 3})


def test_mapping_without_name_and_wrong_types_are_rejected():
    with pytest.raises(ValueError, match="'name'"):
        create_attention_factory({"kernel_size": 3})
    with pytest.raises(TypeError, match="must be a name"):
        create_attention_factory(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arrangement": "serial"}, "arrangement"),
        ({"channel": False, "spatial": False}, "both were disabled"),
        ({"kernel_size": 4}, "odd"),
        ({"spatial_descriptor": "attention"}, "spatial descriptor"),
        ({"pool_types": "avg+mode"}, "pool type"),
        ({"reduction": 0}, "reduction"),
    ],
)
def test_bad_cbam_options_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cbam.CBAM(64, **kwargs)


def test_placement_is_stage_for_bam_and_block_otherwise():
    assert attention_placement(create_attention_factory("bam")) == "stage"
    assert attention_placement(create_attention_factory({"name": "bam", "combine": "product"})) == "stage"
    assert attention_placement(create_attention_factory("cbam")) == "block"
    assert attention_placement(lambda c: nn.Identity()) == "block"


def test_attention_names_lists_none_first():
    assert attention_names()[:4] == ["none", "se", "cbam", "bam"]
