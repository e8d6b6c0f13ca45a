"""The fused gate computes what the eager layers compute: outputs, every gradient, BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cbam
from cbam.layers import fused
from cbam.layers.fused import cpu_kernels, gate
from cbam.profile import saved_activation_ratio
from tests.conftest import randomize_

CPU_KERNELS = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the fused CPU kernels")

LAYERS = {
    "cbam": lambda c, impl: cbam.CBAM(c, impl=impl),
    "cbam-k3-no-bn": lambda c, impl: cbam.CBAM(c, kernel_size=3, spatial_batch_norm=False, impl=impl),
    "cbam-max-only": lambda c, impl: cbam.CBAM(c, pool_types="max", impl=impl),
    "cbam-spatial-channel": lambda c, impl: cbam.CBAM(c, arrangement="spatial-channel", impl=impl),
    "se": lambda c, impl: cbam.SqueezeExcite(c, impl=impl),
    "channel": lambda c, impl: cbam.ChannelAttention(c, impl=impl),
    "spatial": lambda c, impl: cbam.SpatialAttention(c, impl=impl),
}
# Errors relative to the largest magnitude of the reference. In half precision the reference is
# the eager layer in float32 on the same (rounded) inputs and weights: the fused gate computes in
# float32 and rounds once, while the eager half-precision layer rounds every step, so near-equal
# maxima can swap and move a gradient.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def run(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output, input gradient and parameter gradients for a fixed upstream gradient."""
    x = x.detach().requires_grad_()
    out = layer(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(upstream)
    return out, x.grad, {name: p.grad for name, p in layer.named_parameters()}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = expected.abs().max().item() or 1.0
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= TOLERANCE[dtype] * scale + 1e-6, f"{what}: max error {error:.3g} at scale {scale:.3g}"


def compare(name: str, impl: str, x: torch.Tensor, train: bool = True) -> None:
    eager = randomize_(LAYERS[name](x.shape[1], "eager")).to(x.dtype).train(train)
    other = copy.deepcopy(eager)
    fused.set_attention_impl(other, impl)
    eager.float()
    expected, other_x_grad, other_grads = run(eager, x.float())
    actual, x_grad, grads = run(other, x)
    assert_matches(actual, expected, x.dtype, "output")
    assert actual.stride() == expected.stride() and actual.dtype == x.dtype, "the output keeps the input's layout"
    assert_matches(x_grad, other_x_grad, x.dtype, "input gradient")
    for param, grad in grads.items():
        assert_matches(grad, other_grads[param], x.dtype, f"gradient of {param}")
    for (buffer, value), (_, reference) in zip(other.named_buffers(), eager.named_buffers(), strict=True):
        assert_matches(value, reference, x.dtype, f"BatchNorm buffer {buffer}")


def as_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other channel of a wider map: neither layout
        wide = torch.randn(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@CPU_KERNELS
@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_compiled_matches_eager_in_float32(name: str, layout: str) -> None:
    x = as_layout(torch.randn(3, 24, 9, 11), layout)
    compare(name, "compiled", x, train=True)
    compare(name, "compiled", x, train=False)


@CPU_KERNELS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_compiled_matches_eager_in_half_precision(dtype: torch.dtype, layout: str) -> None:
    x = as_layout(torch.randn(2, 32, 8, 8, dtype=dtype), layout)
    for name in ("cbam", "se"):
        compare(name, "compiled", x)


@CPU_KERNELS
@pytest.mark.parametrize("name", ["cbam", "channel", "spatial"])
def test_max_pool_ties_send_the_gradient_to_the_first_maximum(name: str) -> None:
    # After a ReLU whole channels and positions are 0: every max pool is a tie.
    x = torch.relu(torch.randn(2, 16, 6, 6))
    x[:, 3] = 0.0
    x[:, :, 2, 2] = 1.5
    x[0, :, 4, 1] = 1.5
    compare(name, "compiled", x)
    compare(name, "compiled", torch.zeros(2, 16, 5, 5))


def assert_backend_matches_eager(name: str, backend: str, **output_tolerance: float) -> None:
    """`fused_gate` on one kernel set against the eager layer: output, input gradient, parameter gradients."""
    eager = randomize_(LAYERS[name](16, "eager"))
    reset = copy.deepcopy(eager)
    x = torch.randn(2, 16, 7, 5)
    expected = run(eager, x)
    channel = reset if name == "se" else getattr(reset, "channel", None)
    spatial = reset if name == "spatial" else getattr(reset, "spatial", None)
    xg = x.clone().requires_grad_()
    out = fused.fused_gate(xg, channel, spatial, backend)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(out, expected[0], **output_tolerance)
    torch.testing.assert_close(xg.grad, expected[1], rtol=1e-4, atol=1e-5)
    for param, grad in expected[2].items():
        torch.testing.assert_close(dict(reset.named_parameters())[param].grad, grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["cbam", "se", "spatial"])
def test_plain_pytorch_kernels_match_eager(name: str) -> None:
    """The fused op on `primitives.py` alone: the fallback where no C compiler exists."""
    assert_backend_matches_eager(name, "reference")


@CPU_KERNELS
@pytest.mark.parametrize("name", ["cbam", "se"])
def test_fused_layer_saves_no_more_than_its_input(name: str) -> None:
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert saved_activation_ratio(LAYERS[name](64, "compiled").train(), x) == 1.0
    assert saved_activation_ratio(LAYERS[name](64, "eager").train(), x) >= 1.0
    assert saved_activation_ratio(cbam.CBAM(64, impl="eager").train(), x) > 2.0, "what the fused gate saves"


@CPU_KERNELS
def test_torch_compile_traces_the_fused_op_in_one_graph() -> None:
    eager = randomize_(cbam.CBAM(32, impl="eager"))
    layer = copy.deepcopy(eager)
    fused.set_attention_impl(layer, "compiled")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 32, 8, 8)
    expected, actual = run(eager, x), run(compiled, x)
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-4, atol=1e-5)
    for param, grad in expected[2].items():
        torch.testing.assert_close(actual[2]["_orig_mod." + param], grad, rtol=1e-4, atol=1e-5)


@CPU_KERNELS
@pytest.mark.parametrize("with_shortcut", [False, True])
def test_custom_op_registration_passes_opcheck(with_shortcut: bool) -> None:
    layer = randomize_(cbam.CBAM(8))
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    shortcut = torch.randn(2, 8, 5, 6, requires_grad=True) if with_shortcut else None
    bn = layer.spatial.bn
    mlp = layer.channel.mlp
    args = (
        x, shortcut, mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias, layer.spatial.conv.weight, None,
        bn.weight, bn.bias, bn.running_mean, bn.running_var, True, True, False, 1e-5, "cpu", with_shortcut,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.cbam.attention_gate.default, args)


@CPU_KERNELS
@pytest.mark.parametrize("name", ["cbam", "se", "spatial"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_residual_tail_matches_relu_of_attention_plus_shortcut(name: str, layout: str) -> None:
    eager = randomize_(LAYERS[name](16, "eager")).train()
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    x = as_layout(torch.randn(2, 16, 7, 9), layout)
    shortcut = torch.randn(2, 16, 7, 9)  # NCHW whatever x is: the kernels adapt it
    upstream = torch.randn(2, 16, 7, 9)
    results = []
    for tail in (lambda a, s: torch.relu(eager(a) + s), lambda a, s: fused.residual_tail(layer, a, s)):
        a, s = x.detach().requires_grad_(), shortcut.clone().requires_grad_()
        out = tail(a, s)
        out.backward(upstream)
        results.append((out, a.grad, s.grad))
    for expected, actual in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for (name_, p), (_, q) in zip(layer.named_parameters(), eager.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name_}")


@CPU_KERNELS
@pytest.mark.parametrize("arch", ["resnet18_cbam", "resnet50_se"])
def test_residual_blocks_fuse_their_tail_and_compute_the_same(arch: str) -> None:
    """One block, fused tail against the eager ops (a whole deep network amplifies 1-ulp differences)."""
    model = cbam.create_model(arch, num_classes=3, impl="eager").train()
    block = randomize_(model.layer2[0])
    fused_block = fused.set_attention_impl(copy.deepcopy(block), "compiled")
    x = torch.randn(2, block.conv1.in_channels, 12, 12).contiguous(memory_format=torch.channels_last)
    expected, expected_grad, expected_params = run(block, x)
    actual, grad, params = run(fused_block, x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)
    for param, value in expected_params.items():
        assert_matches(params[param], value, torch.float32, f"gradient of {param}")


def test_auto_picks_eager_for_small_maps_and_the_meta_device() -> None:
    small = torch.randn(1, 8, 4, 4)
    assert fused.backend_for("auto", small) is None
    assert fused.backend_for("auto", torch.empty(8, 256, 56, 56, device="meta")) is None
    assert fused.backend_for("eager", torch.randn(8, 256, 56, 56)) is None
    assert fused.backend_for("auto", torch.randn(2, 8, 4, 4, dtype=torch.float64)) is None


@CPU_KERNELS
def test_auto_fuses_large_cpu_maps() -> None:
    assert fused.backend_for("auto", torch.empty(2, 64, 32, 32)) == "cpu"


def test_auto_runs_a_float32_squeeze_excite_eagerly_in_inference_unless_it_is_a_large_residual_tail() -> None:
    se, cbam_layer = cbam.SqueezeExcite(64), cbam.CBAM(64)
    x, large = torch.empty(2, 64, 32, 32), torch.empty(1, 256, 64, 64)
    prefers_eager = fused.eager_squeeze_excite_is_faster
    with torch.no_grad():
        assert prefers_eager(se, None, x, None)
        assert prefers_eager(se, None, x, x)  # a residual tail, but a small map
        assert not prefers_eager(se, None, large, large)
        assert not prefers_eager(se, None, x.bfloat16(), None)
        assert not prefers_eager(cbam_layer.channel, None, x, None)  # avg and max pools
        assert not prefers_eager(cbam_layer.channel, cbam_layer.spatial, x, None)
    assert not prefers_eager(se, None, x, None)  # autograd is on


@CPU_KERNELS
def test_auto_squeeze_excite_calls_the_fused_gate_only_where_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = fused.fused_gate
    monkeypatch.setattr(fused, "fused_gate", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    se = randomize_(cbam.SqueezeExcite(64)).eval()
    eager = fused.set_attention_impl(copy.deepcopy(se), "eager")
    x = torch.randn(2, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(se(x), eager(x), rtol=0, atol=0)
    assert calls == []
    torch.testing.assert_close(se(x), eager(x), rtol=1e-5, atol=1e-6)
    assert calls == [1]


def test_impl_is_checked_and_set_through_create_model() -> None:
    with pytest.raises(ValueError, match="unknown attention impl 'fast'"):
        cbam.CBAM(8, impl="fast")
    with pytest.raises(ValueError, match="unknown attention impl"):
        cbam.create_model("resnet18_cbam", impl="fast")
    with pytest.raises(ValueError, match="fuses the avg and max pools only"):
        cbam.ChannelAttention(8, pool_types="avg+lp", impl="compiled")
    with pytest.raises(ValueError, match="not 'parallel'"):
        cbam.CBAM(8, arrangement="parallel", impl="triton")
    model = cbam.create_model("resnet18_cbam", impl="eager", num_classes=3)
    impls = {m.impl for m in model.modules() if hasattr(m, "impl")}
    assert impls == {"eager"}


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not fused.triton_available():
        pytest.skip("triton is not installed")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cbam.CBAM(8, impl="triton")(torch.randn(1, 8, 4, 4))


@CPU_KERNELS
def test_hooks_on_a_branch_run_the_eager_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "AUTO_MIN_ELEMENTS", 0)
    model = randomize_(cbam.create_model("resnet18_cbam", num_classes=3)).eval()
    eager = fused.set_attention_impl(copy.deepcopy(model), "eager")
    images = torch.randn(1, 3, 32, 32)
    with cbam.AttentionRecorder(model) as recorder, cbam.AttentionRecorder(eager) as reference:
        out, expected = model(images), eager(images)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the hooked branches ran the eager ops
    assert recorder.maps.keys() == reference.maps.keys()
    for name, value in reference.maps.items():
        torch.testing.assert_close(recorder.maps[name], value, rtol=0, atol=0, msg=name)
    assert recorder.maps["layer1.0.attention.spatial"].shape == (1, 1, 8, 8)


def test_without_a_compiler_the_build_error_is_readable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("CBAM_CACHE", str(tmp_path))
    cpu_kernels._library.cache_clear()
    try:
        with pytest.raises(cpu_kernels.KernelBuildError, match="building the fused CPU attention kernels failed"):
            cpu_kernels._library(torch.float32)
        assert not cpu_kernels.available(torch.float32)
    finally:
        cpu_kernels._library.cache_clear()
    assert not list(tmp_path.rglob("*.so")), "a failed build leaves no library behind"


def test_running_statistics_follow_batchnorm() -> None:
    bn = nn.BatchNorm2d(1)
    reference = copy.deepcopy(bn).train()
    z = torch.randn(4, 1, 5, 5)
    reference(z)
    gate.update_running_stats(bn, z.mean(), z.var(unbiased=False), count=z.numel())
    torch.testing.assert_close(bn.running_mean, reference.running_mean)
    torch.testing.assert_close(bn.running_var, reference.running_var)
    assert bn.num_batches_tracked == reference.num_batches_tracked


@CPU_KERNELS
def test_output_can_be_modified_in_place_like_torchvision_blocks_do() -> None:
    eager = randomize_(cbam.CBAM(16, impl="eager"))
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    grads = []
    for module in (eager, layer):
        x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
        out = module(x)
        out += 1.0  # torchvision's Bottleneck: `out += identity` on the attention's output
        out.square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cbam", "se"])
def test_inductor_kernels_match_eager(name: str) -> None:
    """The passes compiled by inductor (the CUDA path of impl="compiled"), here on the CPU."""
    assert_backend_matches_eager(name, "inductor", rtol=1e-5, atol=1e-5)


@CPU_KERNELS
@pytest.mark.slow
def test_inductor_compiles_a_network_around_the_fused_op() -> None:
    model = randomize_(cbam.create_model("resnet18_cbam", num_classes=3, impl="compiled")).eval()
    reference = fused.set_attention_impl(copy.deepcopy(model), "eager")
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)


@CPU_KERNELS
def test_inference_may_write_the_result_over_a_temporary_input() -> None:
    eager = randomize_(cbam.CBAM(16, impl="eager")).eval()
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    x, shortcut = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    expected = torch.relu(eager(x) + shortcut)
    with torch.no_grad():
        temporary = x.clone()
        out = fused.residual_tail(layer, temporary, shortcut, overwrite_input=True)
    assert out.data_ptr() == temporary.data_ptr(), "no new map is allocated"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    kept = x.clone().requires_grad_()
    out = fused.residual_tail(layer, kept, shortcut, overwrite_input=True)  # autograd needs x: never overwritten
    assert out.data_ptr() != kept.data_ptr()
    torch.testing.assert_close(kept.detach(), x)


@CPU_KERNELS
@pytest.mark.parametrize("arch", ["resnet18_cbam", "resnet50_cbam", "resnet50_se"])
def test_networks_in_inference_match_their_eager_selves(arch: str) -> None:
    model = randomize_(cbam.create_model(arch, num_classes=5)).eval()
    eager = fused.set_attention_impl(copy.deepcopy(model), "eager")
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fused.set_attention_impl(model, "compiled")(x), eager(x), rtol=1e-4, atol=1e-4)


@CPU_KERNELS
def test_cpu_kernels_refuse_a_small_operand_of_the_wrong_shape() -> None:
    """The C loops index (N, C) and (N, P) operands without bounds: a wrong shape is an error, not a stray read."""
    with pytest.raises(ValueError, match=r"expected a \(2, 8\) tensor, got \(1, 8\)"):
        cpu_kernels.gate_apply(torch.randn(2, 8, 12), torch.rand(1, 8), None)
