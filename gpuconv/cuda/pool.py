"""2-D max and average pooling on the GPU (kernels/pooling.cu), PyTorch semantics.

Max pooling propagates NaN and sends each output's gradient to the first
maximum of its window; average pooling follows avg_pool2d's ceil_mode and
count_include_pad divisor rules (``PoolGeometry.window``). The backward kernels
are gathers, so every result is bitwise reproducible. Results have the input dtype.
"""
from __future__ import annotations


from .._shapes import PoolGeometry
from . import _launch
from .loader import get_kernel, kernel_name


def pool_shape_args(g: PoolGeometry) -> tuple:
    """The 12 ``int`` shape parameters every pooling kernel takes."""
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
    return _launch.int32(g.N, g.C, g.H, g.W, g.P, g.Q, kh, kw, sh, sw, ph, pw)


def _prepare(g: PoolGeometry, **arrays):
    _launch.check_extents("pool2d", H_times_W=g.H * g.W, P_times_Q=g.P * g.Q)
    return _launch.kernel_operands(**arrays)


def _run(base: str, out, *args) -> None:
    kernel = get_kernel("pooling.cu", kernel_name(base, out.dtype))
    kernel(_launch.elementwise_grid(out.size), (_launch.ELEMENTWISE_THREADS,), args)


def max_pool2d_forward(x, g: PoolGeometry):
    cupy, (x,) = _prepare(g, x=x)
    y = cupy.empty(g.output_shape, dtype=x.dtype)
    _run("gpuconv_maxpool2d_forward", y, x, y, *pool_shape_args(g))
    return y


def max_pool2d_grad(dy, x, g: PoolGeometry):
    cupy, (dy, x) = _prepare(g, dy=dy, x=x)
    dx = cupy.empty(g.input_shape, dtype=x.dtype)
    _run("gpuconv_maxpool2d_backward", dx, dy, x, dx, *pool_shape_args(g))
    return dx


def avg_pool2d_forward(x, g: PoolGeometry, count_include_pad: bool = True):
    cupy, (x,) = _prepare(g, x=x)
    y = cupy.empty(g.output_shape, dtype=x.dtype)
    _run("gpuconv_avgpool2d_forward", y, x, y, *pool_shape_args(g), *_launch.int32(bool(count_include_pad)))
    return y


def avg_pool2d_grad(dy, g: PoolGeometry, count_include_pad: bool = True):
    cupy, (dy,) = _prepare(g, dy=dy)
    dx = cupy.empty(g.input_shape, dtype=dy.dtype)
    _run("gpuconv_avgpool2d_backward", dx, dy, dx, *pool_shape_args(g), *_launch.int32(bool(count_include_pad)))
    return dx


__all__ = ["max_pool2d_forward", "max_pool2d_grad", "avg_pool2d_forward", "avg_pool2d_grad", "pool_shape_args"]
