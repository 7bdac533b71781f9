"""The functional API: convolution and pooling, forward and backward, on any device.

Each call validates its arguments once (``ConvGeometry`` / ``PoolGeometry``),
then hands the arrays to the backend their type selects: NumPy arrays to the
CPU (``reference`` or the fast path), CuPy arrays to our CUDA kernels.

Arrays in, an array out. Given a ``gpuconv.Tensor``, ``conv2d``, ``max_pool2d`` and ``avg_pool2d``
return a tensor and record their backward (through ``gpuconv.nn.functional``).
"""
from __future__ import annotations

import numpy as np

from . import reference
from ._backend import array_module
from ._shapes import (ConvGeometry, PoolGeometry, accumulation_dtype, check_float_dtype, check_same_dtype,
                      pad_bottom_right)
from .cuda import plan, registry

#: Algorithms each device accepts. On the CPU "auto" is the fast path and
#: "reference" (alias "im2col") the textbook ground truth. On the GPU, besides "auto" and the families,
#: a pass takes the registry name of one of its kernel variants (``gpuconv.cuda.registry``).
CPU_ALGOS = ("auto", "fast", "reference", "im2col")
GPU_ALGOS = ("auto", *registry.FAMILIES)


def _cpu_module(algo: str):
    if algo in ("reference", "im2col"):
        return reference
    from . import cpu_fast
    return cpu_fast


def _check_algo(xp, algo, pass_name: str) -> None:
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a string, got {algo!r}")
    if xp is not np:
        plan.check_algo(pass_name, algo)
    elif algo not in CPU_ALGOS:
        kind = " names a GPU kernel variant and" if algo in registry.BY_NAME else ""
        raise ValueError(f"algo={algo!r}{kind} is not available for NumPy (CPU) arrays; choose one of {CPU_ALGOS}")


def _run_conv(pass_name: str, xp, algo: str, *args):
    """Call ``pass_name`` (conv2d_forward / conv2d_grad_input / conv2d_grad_weight) on the array's device."""
    if xp is np:
        return getattr(_cpu_module(algo), pass_name)(*args)
    from .cuda import conv as cuda_conv
    return getattr(cuda_conv, pass_name)(*args, algo=algo)


def _pool_module(xp):
    if xp is np:
        return reference
    from .cuda import pool as cuda_pool
    return cuda_pool


def _has_tensor(*values) -> bool:
    from .autograd import Tensor
    return any(isinstance(v, Tensor) for v in values)


def _contiguous(xp, a):
    return None if a is None else xp.ascontiguousarray(a)


# ------------------------------------------------------------ convolution ---

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto"):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` computes it.

    x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> (N, K, P, Q).
    padding: int, (pad_h, pad_w), (top, bottom, left, right), "valid", "same" or "full".
    """
    if _has_tensor(x, weight, bias):
        from .nn import functional as tensor_ops
        return tensor_ops.conv2d(x, weight, bias, stride, padding, dilation, groups, algo=algo)
    xp = array_module(x=x, weight=weight, bias=bias)
    dtype = check_same_dtype(x=x, weight=weight, bias=bias)
    g = ConvGeometry.create(x.shape, weight.shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "fprop")
    if bias is not None and tuple(bias.shape) != (g.K,):
        raise ValueError(f"bias must have shape ({g.K},), got {tuple(bias.shape)}")
    if g.N == 0:
        return xp.zeros(g.output_shape, dtype=dtype)
    y = _run_conv("conv2d_forward", xp, algo, _contiguous(xp, x), _contiguous(xp, weight), g)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y.astype(dtype, copy=False)


def conv2d_grad_input(grad_output, weight, input_shape, stride=1, padding=0, dilation=1, groups=1, *,
                      algo="auto"):
    """Gradient of ``conv2d`` with respect to its input (``torch.nn.grad.conv2d_input``)."""
    xp = array_module(grad_output=grad_output, weight=weight)
    dtype = check_same_dtype(grad_output=grad_output, weight=weight)
    g = ConvGeometry.create(input_shape, weight.shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "dgrad")
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=dtype)
    dx = _run_conv("conv2d_grad_input", xp, algo, _contiguous(xp, grad_output), _contiguous(xp, weight), g)
    return dx.astype(dtype, copy=False)


def conv2d_grad_weight(x, grad_output, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
                       algo="auto"):
    """Gradient of ``conv2d`` with respect to its weight (``torch.nn.grad.conv2d_weight``)."""
    xp = array_module(x=x, grad_output=grad_output)
    dtype = check_same_dtype(x=x, grad_output=grad_output)
    g = ConvGeometry.create(x.shape, weight_shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "wgrad")
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.weight_shape, dtype=dtype)
    dw = _run_conv("conv2d_grad_weight", xp, algo, _contiguous(xp, x), _contiguous(xp, grad_output), g)
    return dw.astype(dtype, copy=False)


def conv2d_grad_bias(grad_output):
    """Gradient of ``conv2d`` with respect to its bias: grad_output summed over N, P, Q."""
    xp = array_module(grad_output=grad_output)
    dtype = check_float_dtype(grad_output, "grad_output")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must be 4-D (N, K, P, Q), got {grad_output.ndim}-D shape "
                         f"{tuple(grad_output.shape)}")
    acc = accumulation_dtype(dtype)
    # Contiguous as in every other pass: the summation order, and so the rounding, then does not depend on
    # the memory layout of grad_output.
    return _contiguous(xp, grad_output).sum(axis=(0, 2, 3), dtype=acc).astype(dtype, copy=False)


# -------------------------------------------------- transposed convolution ---
# A transposed convolution is the input gradient of the convolution g (``_shapes.conv_transpose_geometry``)
# whose output x is: forward runs g's dgrad, its input gradient g's fprop, its weight gradient g's wgrad with
# x in the role of g's output gradient. The autograd function and the PyTorch bridge both run these.

def _transpose_args(g: ConvGeometry, algo: str) -> dict:
    return dict(stride=g.stride, padding=g.pad, dilation=g.dilation, groups=g.groups, algo=algo)


def _as_transpose_input(x, g: ConvGeometry):
    """x with the rows and columns g's output has beyond x's (output_padding >= stride), as zeros."""
    return pad_bottom_right(array_module(x=x), x, g.P - x.shape[2], g.Q - x.shape[3])


def conv_transpose2d_forward(x, weight, bias, g: ConvGeometry, algo: str = "auto"):
    """y (N, C_out, H_out, W_out) = g's dgrad of x (N, C_in, H, W) with weight (C_in, C_out/groups, kH, kW)."""
    y = conv2d_grad_input(_as_transpose_input(x, g), weight, g.input_shape, **_transpose_args(g, algo))
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def conv_transpose2d_grad_input(grad_output, weight, g: ConvGeometry, input_hw, algo: str = "auto"):
    """d loss / d x of ``conv_transpose2d_forward``: g's fprop of the output gradient, cut to x's H x W."""
    h, w = input_hw
    return conv2d(grad_output, weight, None, **_transpose_args(g, algo))[:, :, :h, :w]


def conv_transpose2d_grad_weight(grad_output, x, g: ConvGeometry, weight_shape, algo: str = "auto"):
    """d loss / d weight of ``conv_transpose2d_forward``: g's wgrad, x standing for g's output gradient."""
    return conv2d_grad_weight(grad_output, _as_transpose_input(x, g), weight_shape, **_transpose_args(g, algo))


# ---------------------------------------------------------------- pooling ---

def _pool_input(x, name="x"):
    xp = array_module(**{name: x})
    check_float_dtype(x, name)
    return xp


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling over (N, C, H, W); stride defaults to kernel_size; NaN propagates."""
    if _has_tensor(x):
        from .nn import functional as tensor_ops
        return tensor_ops.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
    xp = _pool_input(x)
    g = PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode)
    if g.N == 0:
        return xp.zeros(g.output_shape, dtype=x.dtype)
    return _pool_module(xp).max_pool2d_forward(xp.ascontiguousarray(x), g).astype(x.dtype, copy=False)


def max_pool2d_grad(grad_output, x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Gradient of ``max_pool2d``: each output's gradient goes to its window's first maximum."""
    xp = array_module(grad_output=grad_output, x=x)
    dtype = check_same_dtype(grad_output=grad_output, x=x)
    g = PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode)
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=dtype)
    dx = _pool_module(xp).max_pool2d_grad(xp.ascontiguousarray(grad_output), xp.ascontiguousarray(x), g)
    return dx.astype(dtype, copy=False)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling over (N, C, H, W), with PyTorch's divisor rules."""
    if _has_tensor(x):
        from .nn import functional as tensor_ops
        return tensor_ops.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    xp = _pool_input(x)
    g = PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode)
    if g.N == 0:
        return xp.zeros(g.output_shape, dtype=x.dtype)
    y = _pool_module(xp).avg_pool2d_forward(xp.ascontiguousarray(x), g, bool(count_include_pad))
    return y.astype(x.dtype, copy=False)


def avg_pool2d_grad(grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                    count_include_pad=True):
    """Gradient of ``avg_pool2d``."""
    xp = _pool_input(grad_output, "grad_output")
    g = PoolGeometry.create(input_shape, kernel_size, stride, padding, ceil_mode)
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=grad_output.dtype)
    dx = _pool_module(xp).avg_pool2d_grad(xp.ascontiguousarray(grad_output), g, bool(count_include_pad))
    return dx.astype(grad_output.dtype, copy=False)


__all__ = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
           "max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad", "CPU_ALGOS", "GPU_ALGOS"]
