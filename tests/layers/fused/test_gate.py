"""The fused gate computes what the eager layers compute: outputs, every gradient, BN statistics.

Every comparison with the eager layers is bounded by their own rounding (`tests.layers.rounding`), and the C
kernels are checked as built for this CPU and for baseline x86-64 (`check_every_arch`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import cbam
from cbam.errors import ConfigError
from cbam.layers import fused
from cbam.layers.eca import EfficientChannelAttention
from cbam.layers.ese import EffectiveSqueezeExcite
from cbam.layers.fused import cpu_kernels, gate
from cbam.layers.gather_excite import GatherExcite
from cbam.layers.pooling import channel_pool
from cbam.networks.counting import saved_activation_ratio
from tests.conftest import randomize_
from tests.layers.rounding import RoundingBound, call, outcomes, rounding_bound

CPU_KERNELS = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler for the fused CPU kernels")

LAYERS = {
    "cbam": lambda c, impl: cbam.CBAM(c, impl=impl),
    "cbam-k3-no-bn": lambda c, impl: cbam.CBAM(c, kernel_size=3, spatial_batch_norm=False, impl=impl),
    "cbam-max-only": lambda c, impl: cbam.CBAM(c, pool_types="max", impl=impl),
    "cbam-spatial-channel": lambda c, impl: cbam.CBAM(c, arrangement="spatial-channel", impl=impl),
    "se": lambda c, impl: cbam.SqueezeExcite(c, impl=impl),
    "channel": lambda c, impl: cbam.ChannelAttention(c, impl=impl),
    "spatial": lambda c, impl: cbam.SpatialAttention(c, impl=impl),
    "eca": lambda c, impl: EfficientChannelAttention(c, kernel_size=5, impl=impl),
    "ceca": lambda c, impl: EfficientChannelAttention(c, kernel_size=5, circular=True, impl=impl),
    "ese": lambda c, impl: EffectiveSqueezeExcite(c, impl=impl),
    "ese-sigmoid": lambda c, impl: EffectiveSqueezeExcite(c, gate="sigmoid", impl=impl),
    "ge": lambda c, impl: GatherExcite(c, impl=impl),
}
CHANNEL_ONLY = ("se", "channel", "eca", "ceca", "ese", "ese-sigmoid", "ge")  # the gate's channel branch alone
CPU_ARCHS = ("native", "x86-64")


@contextlib.contextmanager
def kernels_built_for(arch: str) -> Iterator[bool]:
    """`CBAM_CPU_ARCH=arch` inside the block, which is told whether the kernels build for that target."""
    before = os.environ.get(cpu_kernels.ARCH_VARIABLE)
    os.environ[cpu_kernels.ARCH_VARIABLE] = arch
    try:
        yield cpu_kernels.available()
    finally:
        if before is None:
            del os.environ[cpu_kernels.ARCH_VARIABLE]
        else:
            os.environ[cpu_kernels.ARCH_VARIABLE] = before


def check_every_arch(bound: RoundingBound, layer: nn.Module, inputs: list, upstream, step=call, what: str = "") -> None:
    """A copy of `layer` run by `step` with the C kernels built for this CPU (`-march=native`: FMA, the widest
    vectors it has) and for baseline x86-64 (SSE2, no FMA), each checked against `bound`. (The two give the
    same bits on an AVX2 machine, as `-std=c11` keeps gcc from contracting to FMA; nothing here relies on it.)"""
    for arch in CPU_ARCHS:
        with kernels_built_for(arch) as built:
            if built:
                bound.check(outcomes(copy.deepcopy(layer), inputs, upstream, step), f"{what} (-march={arch})")


def compare(name: str, impl: str, x: torch.Tensor, train: bool = True) -> None:
    """One training (or eval) step of a layer with `impl` against the eager layer in x's dtype on the same
    inputs and weights: output, every gradient and the BatchNorm buffers, within the eager layer's rounding.

    In half precision the fused gate computes in float32 and rounds once, where the eager layer rounds every
    step, so it is usually much closer to float64 than eager is."""
    eager = randomize_(LAYERS[name](x.shape[1], "eager")).to(x.dtype).train(train)
    other = fused.set_attention_impl(copy.deepcopy(eager), impl)
    upstream = torch.randn(x.shape)
    out, expected = copy.deepcopy(other)(x), copy.deepcopy(eager)(x)  # copies: a step in training moves BatchNorm
    assert out.stride() == expected.stride() and out.dtype == x.dtype, "the output keeps the input's layout"
    check_every_arch(rounding_bound(eager, [x], upstream), other, [x], upstream, what=f"{name}, train={train}")


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
    for name in ("cbam", "se", "eca", "ese", "ge"):
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


def assert_backend_matches_eager(name: str, backend: str) -> None:
    """`fused_gate` on one kernel set against the eager layer: output, every gradient, BatchNorm buffers."""
    eager = randomize_(LAYERS[name](16, "eager")).train()
    x, upstream = torch.randn(2, 16, 7, 5), torch.randn(2, 16, 7, 5)

    def gate_only(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        channel = layer if name in CHANNEL_ONLY else getattr(layer, "channel", None)
        spatial = layer if name == "spatial" else getattr(layer, "spatial", None)
        return fused.fused_gate(x, channel, spatial, backend)

    actual = outcomes(copy.deepcopy(eager), [x], upstream, step=gate_only)
    rounding_bound(eager, [x], upstream).check(actual, f"{name} on the {backend} kernels")


@pytest.mark.parametrize("name", ["cbam", "se", "spatial", "eca", "ceca", "ese", "ge"])
def test_plain_pytorch_kernels_match_eager(name: str) -> None:
    """The fused op on `primitives.py` alone: the fallback where no C compiler exists."""
    assert_backend_matches_eager(name, "reference")


@CPU_KERNELS
@pytest.mark.parametrize("name", ["cbam", "se", "eca", "ese", "ge"])
def test_fused_layer_saves_no_more_than_its_input(name: str) -> None:
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert saved_activation_ratio(LAYERS[name](64, "compiled").train(), x) == 1.0
    assert saved_activation_ratio(LAYERS[name](64, "eager").train(), x) >= 1.0
    assert saved_activation_ratio(cbam.CBAM(64, impl="eager").train(), x) > 2.0, "what the fused gate saves"


@CPU_KERNELS
def test_torch_compile_traces_the_fused_op_in_one_graph() -> None:
    eager = randomize_(cbam.CBAM(32, impl="eager"))
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, upstream = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    actual = outcomes(layer, [x], upstream, step=lambda _, x: compiled(x))
    rounding_bound(eager, [x], upstream).check(actual, "torch.compile around the fused op")


@CPU_KERNELS
@pytest.mark.parametrize("with_shortcut", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_custom_op_registration_passes_opcheck(with_shortcut: bool, train: bool) -> None:
    layer = randomize_(cbam.CBAM(8)).train(train)
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    shortcut = torch.randn(2, 8, 5, 6, requires_grad=True) if with_shortcut else None
    args = gate.GateArgs.of_layers(x, layer.channel, layer.spatial, "cpu", shortcut, relu=with_shortcut)
    assert args.bn_training == train and args.conv_b is None
    torch.library.opcheck(torch.ops.cbam.attention_gate.default, tuple(args))


@CPU_KERNELS
@pytest.mark.parametrize("name", ["eca", "ceca", "ese", "ese-sigmoid", "ge"])
def test_every_channel_function_passes_opcheck(name: str) -> None:
    layer = randomize_(LAYERS[name](8, "compiled")).train()
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    args = gate.GateArgs.of_layers(x, layer, None, "cpu")
    assert args.channel_fn != "mlp" and args.use_avg and not args.use_max
    torch.library.opcheck(torch.ops.cbam.attention_gate.default, tuple(args))


def test_an_unknown_channel_function_is_named() -> None:
    args = gate.GateArgs(torch.randn(1, 4, 2, 2), use_avg=True, channel_fn="mystery")
    with pytest.raises(ValueError, match="unknown channel function 'mystery'; one of mlp, conv1d, linear, none"):
        gate.gate_forward(args)


@CPU_KERNELS
@pytest.mark.parametrize("name", ["cbam", "se", "spatial", "eca", "ese", "ge"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_residual_tail_matches_relu_of_attention_plus_shortcut(name: str, layout: str) -> None:
    eager = randomize_(LAYERS[name](16, "eager")).train()
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    x = as_layout(torch.randn(2, 16, 7, 9), layout)
    shortcut = torch.randn(2, 16, 7, 9)  # NCHW whatever x is: the kernels adapt it
    upstream = torch.randn(2, 16, 7, 9)
    bound = rounding_bound(eager, [x, shortcut], upstream, step=lambda attention, a, s: torch.relu(attention(a) + s))
    check_every_arch(bound, layer, [x, shortcut], upstream, step=fused.residual_tail, what=f"{name} as a residual tail")


@CPU_KERNELS
@pytest.mark.parametrize("arch", ["resnet18_cbam", "resnet50_se"])
def test_residual_blocks_fuse_their_tail_and_compute_the_same(arch: str) -> None:
    """One block, fused tail against the eager ops, every gradient within the eager block's own rounding."""
    model = cbam.create_model(arch, num_classes=3, impl="eager").train()
    block = randomize_(model.layer2[0])
    fused_block = fused.set_attention_impl(copy.deepcopy(block), "compiled")
    x = torch.randn(2, block.conv1.in_channels, 12, 12).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(copy.deepcopy(block)(x).shape)  # a copy: a step in training moves BatchNorm
    check_every_arch(rounding_bound(block, [x], upstream), fused_block, [x], upstream, what=arch)


def test_auto_picks_eager_for_small_maps_and_the_meta_device() -> None:
    small = torch.randn(1, 8, 4, 4)
    assert fused.backend_for("auto", small) is None
    assert fused.backend_for("auto", torch.empty(8, 256, 56, 56, device="meta")) is None
    assert fused.backend_for("eager", torch.randn(8, 256, 56, 56)) is None
    assert fused.backend_for("auto", torch.randn(2, 8, 4, 4, dtype=torch.float64)) is None


@CPU_KERNELS
def test_auto_fuses_large_cpu_maps() -> None:
    assert fused.backend_for("auto", torch.empty(2, 64, 32, 32)) is fused.BACKENDS["cpu"]


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
    upstream = torch.randn(x.shape)
    rounding_bound(eager, [x], upstream).check(outcomes(se, [x], upstream), "SE with autograd")
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
    with pytest.raises(ValueError, match=r"fuses Gather-Excite's global GE-theta-minus only \(extent=0"):
        GatherExcite(8, extent=2, impl="compiled")
    model = cbam.create_model("resnet18_cbam", impl="eager", num_classes=3)
    impls = {m.impl for m in model.modules() if hasattr(m, "impl")}
    assert impls == {"eager"}


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not fused.triton_available():
        pytest.skip("triton is not installed")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        cbam.CBAM(8, impl="triton")(torch.randn(1, 8, 4, 4))


@CPU_KERNELS
def test_hooks_on_a_branch_run_the_eager_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused.backends, "AUTO_MIN_ELEMENTS", 0)
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
    cpu_kernels._built.cache_clear()
    try:
        with pytest.raises(cpu_kernels.KernelBuildError, match=r"kernels for -march=\S+ \(CBAM_CPU_ARCH\) failed"):
            cpu_kernels._library(torch.float32)
        assert not cpu_kernels.available(torch.float32)
    finally:
        cpu_kernels._built.cache_clear()
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

    def add_in_place(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        out += 1.0  # torchvision's Bottleneck: `out += identity` on the attention's output
        return out.square()

    x, upstream = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    actual = outcomes(layer, [x], upstream, step=add_in_place)
    rounding_bound(eager, [x], upstream, step=add_in_place).check(actual, "output modified in place")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cbam", "se"])
def test_inductor_kernels_match_eager(name: str) -> None:
    """The passes compiled by inductor (the CUDA path of impl="compiled"), here on the CPU."""
    assert_backend_matches_eager(name, "inductor")


@CPU_KERNELS
@pytest.mark.slow
def test_inductor_compiles_a_network_around_the_fused_op() -> None:
    model = randomize_(cbam.create_model("resnet18_cbam", num_classes=3, impl="compiled")).eval()
    reference = fused.set_attention_impl(copy.deepcopy(model), "eager")
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        actual = outcomes(model, [x], None, step=lambda _, x: compiled(x))
        rounding_bound(reference, [x], None).check(actual, "inductor around the fused op")


@CPU_KERNELS
def test_inference_may_write_the_result_over_a_temporary_input() -> None:
    eager = randomize_(cbam.CBAM(16, impl="eager")).eval()
    layer = fused.set_attention_impl(copy.deepcopy(eager), "compiled")
    x, shortcut = torch.randn(2, 16, 6, 6), torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        temporary = x.clone()
        out = fused.residual_tail(layer, temporary, shortcut, overwrite_input=True)
        bound = rounding_bound(eager, [x, shortcut], None, step=lambda attention, a, s: torch.relu(attention(a) + s))
    assert out.data_ptr() == temporary.data_ptr(), "no new map is allocated"
    bound.check({"output": out, **{f"buffer {n}": b for n, b in layer.named_buffers()}}, "written over x")
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
    fused.set_attention_impl(model, "compiled")
    with torch.inference_mode():
        check_every_arch(rounding_bound(eager, [x], None), model, [x], None, what=arch)


@CPU_KERNELS
def test_cpu_kernels_refuse_a_small_operand_of_the_wrong_shape() -> None:
    """The C loops index (N, C) and (N, P) operands without bounds: a wrong shape is an error, not a stray read."""
    with pytest.raises(ValueError, match=r"expected a \(2, 8\) tensor, got \(1, 8\)"):
        cpu_kernels.gate_apply(torch.randn(2, 8, 12), torch.rand(1, 8), None)


@pytest.mark.parametrize("impl", ["eager", "compiled", "reference"])
def test_a_training_step_moves_the_spatial_running_statistics_with_momentum_0_01(impl: str) -> None:
    """The authors' spatial gate (`BasicConv`) has BatchNorm momentum 0.01, eps 1e-5: from a known state, one step
    sets running = 0.99 running + 0.01 batch statistic (the variance unbiased), eagerly and through the fused gate."""
    if impl == "compiled" and not cpu_kernels.available():
        pytest.skip("no C compiler for the fused CPU kernels")
    layer = randomize_(cbam.CBAM(16, impl="eager")).train()
    bn = layer.spatial.bn
    assert (bn.momentum, bn.eps) == (0.01, 1e-5)
    with torch.no_grad():
        bn.running_mean.fill_(0.25)
        bn.running_var.fill_(1.5)
        bn.num_batches_tracked.fill_(7)
    x, upstream = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 9, 11)
    wide = copy.deepcopy(layer).double()
    with torch.no_grad():
        z = wide.spatial.conv(channel_pool(wide.channel(x.double())))  # what the spatial BatchNorm normalises
    bound = rounding_bound(layer, [x], upstream)
    expected = {"running_mean": 0.99 * 0.25 + 0.01 * z.mean(), "running_var": 0.99 * 1.5 + 0.01 * z.var()}
    for name, value in expected.items():
        torch.testing.assert_close(bound.exact[f"buffer spatial.bn.{name}"], value.reshape(1), msg=name)

    def step(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if impl == "reference":
            return fused.fused_gate(x, module.channel, module.spatial, "reference")
        return module(x)

    other = fused.set_attention_impl(copy.deepcopy(layer), "eager" if impl == "reference" else impl)
    actual = outcomes(other, [x], upstream, step)
    bound.check(actual, impl)
    assert actual["buffer spatial.bn.num_batches_tracked"].item() == 8


@CPU_KERNELS
def test_cbam_cpu_arch_picks_the_kernels_target_and_each_target_has_a_build_of_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv(cpu_kernels.ARCH_VARIABLE, raising=False)
    assert cpu_kernels.target_arch() == "native"
    builds = {}
    for arch in CPU_ARCHS:
        with kernels_built_for(arch) as built:
            if built:
                builds[arch] = cpu_kernels._library(torch.float32)._name
    assert len(set(builds.values())) == len(builds) > 0, "a target never reuses another's build"
    monkeypatch.setenv(cpu_kernels.ARCH_VARIABLE, "native -O0")
    with pytest.raises(ConfigError, match=r"CBAM_CPU_ARCH='native -O0' is not a -march value"):
        cpu_kernels._library(torch.float32)
    monkeypatch.setenv("CBAM_CACHE", str(tmp_path))
    monkeypatch.setenv(cpu_kernels.ARCH_VARIABLE, "no-such-cpu")
    with pytest.raises(cpu_kernels.KernelBuildError, match=r"for -march=no-such-cpu \(CBAM_CPU_ARCH\) failed"):
        cpu_kernels._library(torch.float32)
    with pytest.warns(RuntimeWarning, match=r"-march=no-such-cpu \(CBAM_CPU_ARCH\).*runs eagerly"):
        assert fused.backend_for("auto", torch.empty(2, 64, 32, 32)) is None


def test_every_backend_in_the_table_provides_the_passes_and_unknown_names_are_refused() -> None:
    passes = ("channel_stats", "spatial_stats", "spatial_grad", "gate_apply", "channel_grad", "input_grad",
              "simam_stats", "simam_apply", "simam_grad_stats", "simam_input_grad")  # fmt: skip
    for backend in fused.BACKENDS.values():
        if backend.name != "triton":  # importing triton here would fix TRITON_INTERPRET for this process
            assert all(callable(getattr(backend.kernels(), name)) for name in passes), backend.name
    with pytest.raises(ConfigError, match="unknown fused backend 'cuda'"):
        fused.backends.kernels("cuda")
