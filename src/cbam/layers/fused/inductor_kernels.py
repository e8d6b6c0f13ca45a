"""The fused passes as inductor-generated kernels: `primitives.py` under `torch.compile`.

The CUDA path of `impl="compiled"`; each pass compiles once per dtype and layout, with
dynamic shapes so that every stage of a network shares the code.
"""

from __future__ import annotations

import functools

import torch

from cbam.layers.fused import primitives


@functools.cache
def _compiled(name: str):
    return torch.compile(getattr(primitives, name), dynamic=True, fullgraph=True)


def channel_stats(x, with_index: bool = True):
    return _compiled("channel_stats")(x)


def spatial_stats(x, mc, with_index: bool = True):
    return _compiled("spatial_stats")(x, mc)


def spatial_grad(x, g, mc):
    return _compiled("spatial_grad")(x, g, mc)


def gate_apply(x, mc, ms, shortcut=None, relu=False, out=None):
    result = _compiled("gate_apply")(x, mc, ms, shortcut, relu)
    return out.copy_(result) if out is not None else result


def channel_grad(x, g, ms, dmean, dmax, sidx):
    return _compiled("channel_grad")(x, g, ms, dmean, dmax, sidx)


def input_grad(g, mc, ms, dmean, dmax, sidx, davg, dcmax, cidx):
    return _compiled("input_grad")(g, mc, ms, dmean, dmax, sidx, davg, dcmax, cidx)


def simam_stats(x, e_lambda):
    return _compiled("simam_stats")(x, e_lambda)


def simam_apply(x, mean, inv):
    return _compiled("simam_apply")(x, mean, inv)


def simam_grad_stats(x, g, mean, inv):
    return _compiled("simam_grad_stats")(x, g, mean, inv)


def simam_input_grad(x, g, mean, inv, a, b):
    return _compiled("simam_input_grad")(x, g, mean, inv, a, b)
