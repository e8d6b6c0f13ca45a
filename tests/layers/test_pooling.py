import pytest
import torch

from cbam.layers.pooling import channel_pool, global_pool, parse_pool_types


def test_parse_pool_types_accepts_plus_string_and_sequence():
    assert parse_pool_types("avg+max") == ["avg", "max"]
    assert parse_pool_types(("lp", "lse")) == ["lp", "lse"]


@pytest.mark.parametrize("bad", ["avg+median", "", ("avg", "avg")])
def test_parse_pool_types_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="pool"):
        parse_pool_types(bad)


def test_global_pools_equal_their_definitions():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    flat = x.flatten(2)
    torch.testing.assert_close(global_pool(x, "avg"), flat.sum(-1) / 20)
    torch.testing.assert_close(global_pool(x, "max"), flat.max(-1).values)
    torch.testing.assert_close(global_pool(x, "lp"), flat.pow(2).sum(-1).sqrt())
    torch.testing.assert_close(global_pool(x, "lse"), flat.exp().sum(-1).log())


def test_lse_pool_is_stable_for_large_activations():
    x = torch.full((1, 1, 2, 2), 1000.0)
    assert torch.isfinite(global_pool(x, "lse")).all()
    torch.testing.assert_close(global_pool(x, "lse"), torch.tensor([[1000.0 + torch.log(torch.tensor(4.0))]]))


def test_lp_pool_gradient_is_finite_at_zero():
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)
    global_pool(x, "lp").sum().backward()
    assert torch.isfinite(x.grad).all()


def test_channel_pool_is_mean_then_max_across_channels():
    x = torch.randn(2, 6, 3, 4)
    out = channel_pool(x)
    assert out.shape == (2, 2, 3, 4)
    torch.testing.assert_close(out[:, 0], x.mean(1))
    torch.testing.assert_close(out[:, 1], x.max(1).values)
