"""The functional API: convolution and pooling, forward and backward, on any device.

Each call validates its arguments once (``ConvGeometry`` / ``PoolGeometry``),
then hands the arrays to the backend their type selects: NumPy arrays to the
CPU (``reference`` or the fast path), CuPy arrays to our CUDA kernels.

Arrays in, an array out. Given a ``gpuconv.Tensor``, each forward function returns a tensor and records its
backward (through ``gpuconv.nn.functional``). The 1-D operations are the 2-D ones over a one-row plane.
Pooling: every function turns its arguments into a ``PoolGeometry`` and runs one of the four geometry-level
passes (``pool_max``, ``pool_max_grad``, ``pool_avg``, ``pool_avg_grad``).
"""
from __future__ import annotations

import numpy as np

from . import padding as _padding, precision as _precision, reference
from ._backend import array_module
from ._shapes import (ConvGeometry, PoolGeometry, _is_int, accumulation_dtype, check_float_dtype, check_pool_dtype,
                      check_same_dtype, conv_transpose_geometry, line_as_plane, line_padding_as_plane,
                      pad_bottom_right, pair)
from .cuda import plan, registry
from .padding import pad_grad  # noqa: F401  (part of this API)

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


def _run_conv(pass_name: str, xp, algo: str, *args, precision: str | None = None):
    """Call ``pass_name`` (conv2d_forward / conv2d_grad_input / conv2d_grad_weight) on the array's device.
    ``precision`` (None: the policy, ``gpuconv.precision``) may allow TF32 for float32 on the GPU; the CPU paths
    compute exact float32 whatever it says."""
    allow_tf32 = _precision.allows_tf32(precision)  # checked on every device
    if xp is np:
        return getattr(_cpu_module(algo), pass_name)(*args)
    from .cuda import conv as cuda_conv
    return getattr(cuda_conv, pass_name)(*args, algo=algo, allow_tf32=allow_tf32 and args[0].dtype == np.float32)


def _pool_module(xp):
    """The pooling passes of the array's device: the fast CPU path (``cpu_fast``), or our CUDA kernels."""
    if xp is np:
        from . import cpu_fast
        return cpu_fast
    from .cuda import pool as cuda_pool
    return cuda_pool


def _has_tensor(*values) -> bool:
    from .autograd import Tensor
    return any(isinstance(v, Tensor) for v in values)


def _tensor_ops():
    from .nn import functional as tensor_ops
    return tensor_ops


def _contiguous(xp, a):
    return None if a is None else xp.ascontiguousarray(a)


# ------------------------------------------------------------ convolution ---

def pad(x, pad, mode: str = "constant", value: float = 0.0):
    """``torch.nn.functional.pad`` of the last one or two dimensions: pad = (left, right[, top, bottom]); modes
    "constant" (``value``), "reflect", "replicate", "circular" (``gpuconv.padding``)."""
    if _has_tensor(x):
        return _tensor_ops().pad(x, pad, mode, value)
    return _padding.pad(x, pad, mode, value)


def padding_mode_pad(x_shape, weight_shape, stride, padding, dilation, groups, padding_mode: str):
    """For a ``padding_mode`` other than "zeros": the (left, right, top, bottom) ``pad`` the input takes before a
    convolution with padding 0 (PyTorch's Conv2d); None for "zeros"."""
    if padding_mode not in _padding.CONV_PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {tuple(_padding.CONV_PADDING_MODES)}, got {padding_mode!r}")
    if padding_mode == "zeros":
        return None
    top, bottom, left, right = ConvGeometry.create(x_shape, weight_shape, stride, padding, dilation, groups).pad
    return (left, right, top, bottom)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros", algo="auto",
           precision=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` computes it.

    x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> (N, K, P, Q).
    padding: int, (pad_h, pad_w), (top, bottom, left, right), "valid", "same" (= "same_upper", the odd pixel
    bottom/right), "same_lower" (top/left) or "full". Zero padding takes part in the arithmetic, as in PyTorch:
    a NaN or inf weight reaches every output whose window touches the padding. padding_mode: "zeros",
    "reflect", "replicate" or "circular" (PyTorch's Conv2d: the input is padded by ``pad`` first).
    precision: None (the policy, ``gpuconv.set_float32_matmul_precision``), "highest" (exact float32), "high" or
    "medium" (TF32 allowed for float32 on the GPU's tensor cores).
    """
    if _has_tensor(x, weight, bias):
        from .nn import functional as tensor_ops
        return tensor_ops.conv2d(x, weight, bias, stride, padding, dilation, groups, padding_mode=padding_mode,
                                 algo=algo, precision=precision)
    xp = array_module(x=x, weight=weight, bias=bias)
    dtype = check_same_dtype(x=x, weight=weight, bias=bias)
    mode_pad = padding_mode_pad(x.shape, weight.shape, stride, padding, dilation, groups, padding_mode)
    if mode_pad is not None:
        x, padding = pad(x, mode_pad, _padding.CONV_PADDING_MODES[padding_mode]), 0
    g = ConvGeometry.create(x.shape, weight.shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "fprop")
    if bias is not None and tuple(bias.shape) != (g.K,):
        raise ValueError(f"bias must have shape ({g.K},), got {tuple(bias.shape)}")
    if g.N == 0:
        return xp.zeros(g.output_shape, dtype=dtype)
    y = _run_conv("conv2d_forward", xp, algo, _contiguous(xp, x), _contiguous(xp, weight), g, precision=precision)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y.astype(dtype, copy=False)


def conv2d_grad_input(grad_output, weight, input_shape, stride=1, padding=0, dilation=1, groups=1, *,
                      algo="auto", precision=None):
    """Gradient of ``conv2d`` with respect to its input (``torch.nn.grad.conv2d_input``)."""
    xp = array_module(grad_output=grad_output, weight=weight)
    dtype = check_same_dtype(grad_output=grad_output, weight=weight)
    g = ConvGeometry.create(input_shape, weight.shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "dgrad")
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=dtype)
    dx = _run_conv("conv2d_grad_input", xp, algo, _contiguous(xp, grad_output), _contiguous(xp, weight), g,
                   precision=precision)
    return dx.astype(dtype, copy=False)


def conv2d_grad_weight(x, grad_output, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
                       algo="auto", precision=None):
    """Gradient of ``conv2d`` with respect to its weight (``torch.nn.grad.conv2d_weight``)."""
    xp = array_module(x=x, grad_output=grad_output)
    dtype = check_same_dtype(x=x, grad_output=grad_output)
    g = ConvGeometry.create(x.shape, weight_shape, stride, padding, dilation, groups)
    _check_algo(xp, algo, "wgrad")
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.weight_shape, dtype=dtype)
    dw = _run_conv("conv2d_grad_weight", xp, algo, _contiguous(xp, x), _contiguous(xp, grad_output), g,
                   precision=precision)
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


def line_to_plane(a, name: str):
    """A 1-D operation's (N, C, L) array or tensor as the (N, C, 1, L) plane its 2-D operation takes (for a
    tensor the reshape is recorded): the 1-D operations are the 2-D ones over a one-row plane."""
    if len(a.shape) != 3:
        raise ValueError(f"{name} must be 3-D (N, C, L) for a 1-D operation, got shape {tuple(a.shape)}")
    N, C, L = a.shape
    return a.reshape(N, C, 1, L)


def plane_to_line(result):
    """A 2-D operation's result over a one-row plane (or a tuple of them) as the 1-D operation's (N, C, L')."""
    if isinstance(result, tuple):
        return tuple(plane_to_line(r) for r in result)
    N, C, _, L = result.shape
    return result.reshape(N, C, L)


def conv1d_plane_args(stride, padding, dilation) -> dict:
    """conv1d's stride, padding and dilation as those of its conv2d over a one-row plane."""
    return dict(stride=line_as_plane(stride, "stride"), padding=line_padding_as_plane(padding),
                dilation=line_as_plane(dilation, "dilation"))


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros", algo="auto"):
    """1-D cross-correlation (``torch.nn.functional.conv1d``): x (N, C, L), weight (K, C/groups, kL) -> (N, K, L').

    ``padding``: an int, (left, right), "valid", "same", "same_lower" or "full"; runs as ``conv2d`` over a
    one-row plane (every path, every kernel)."""
    if _has_tensor(x, weight, bias):
        from .nn import functional as tensor_ops
        return tensor_ops.conv1d(x, weight, bias, stride, padding, dilation, groups, padding_mode=padding_mode,
                                 algo=algo)
    return plane_to_line(conv2d(line_to_plane(x, "input"), line_to_plane(weight, "weight"), bias, groups=groups,
                                padding_mode=padding_mode, algo=algo, **conv1d_plane_args(stride, padding, dilation)))


# -------------------------------------------------- transposed convolution ---
# A transposed convolution is the input gradient of the convolution g (``_shapes.conv_transpose_geometry``)
# whose output x is: forward runs g's dgrad, its input gradient g's fprop, its weight gradient g's wgrad with
# x in the role of g's output gradient. The autograd function and the PyTorch bridge both run these.

def _transpose_args(g: ConvGeometry, algo: str) -> dict:
    return dict(stride=g.stride, padding=g.pad, dilation=g.dilation, groups=g.groups, algo=algo)


def _as_transpose_input(x, g: ConvGeometry):
    """x with the rows and columns g's output has beyond x's (output_padding >= stride), as zeros."""
    return pad_bottom_right(array_module(x=x), x, g.P - x.shape[2], g.Q - x.shape[3])


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     algo="auto"):
    """Transposed 2-D convolution (``torch.nn.functional.conv_transpose2d``): x (N, C_in, H, W), weight
    (C_in, C_out/groups, kH, kW), bias (C_out,) -> (N, C_out, (H - 1) * stride - 2 * padding + dilation * (kH - 1)
    + output_padding + 1, ...). Runs our dgrad kernels (backward: fprop and wgrad)."""
    if _has_tensor(x, weight, bias):
        from .nn import functional as tensor_ops
        return tensor_ops.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation,
                                           algo=algo)
    array_module(x=x, weight=weight, bias=bias)
    dtype = check_same_dtype(x=x, weight=weight, bias=bias)
    g = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    return conv_transpose2d_forward(x, weight, bias, g, algo).astype(dtype, copy=False)


def conv_transpose2d_forward(x, weight, bias, g: ConvGeometry, algo: str = "auto"):
    """y (N, C_out, H_out, W_out) = g's dgrad of x (N, C_in, H, W) with weight (C_in, C_out/groups, kH, kW)."""
    if bias is not None and tuple(bias.shape) != (g.C,):
        raise ValueError(f"conv_transpose2d: bias must have shape ({g.C},) (the output channels), got "
                         f"{tuple(bias.shape)}")
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
# Max pooling: NaN propagates (the last NaN wins, as in PyTorch); ties and all--inf windows go to the first
# maximum among the real pixels, never padding (PyTorch); a window of padding only (padding larger than the
# kernel, ONNX) gives the lowest value (-inf, an integer dtype's minimum) and index -1, and passes no gradient.
# Average pooling over no pixel (count_include_pad=False) gives 0.

def pool_max(x, g: PoolGeometry, return_indices: bool = False):
    """Max pooling of x over geometry g: y, or (y, int64 per-plane indices h * W + w)."""
    xp = array_module(x=x)
    check_pool_dtype(x, "x", integers=True)
    if g.N == 0:
        y = xp.zeros(g.output_shape, dtype=x.dtype)
        return (y, xp.zeros(g.output_shape, dtype=np.int64)) if return_indices else y
    return _pool_module(xp).max_pool2d_forward(xp.ascontiguousarray(x), g, bool(return_indices))


def pool_max_grad(grad_output, x, g: PoolGeometry):
    """Gradient of ``pool_max``: each output's gradient goes to its window's first maximum."""
    xp = array_module(grad_output=grad_output, x=x)
    dtype = check_same_dtype(grad_output=grad_output, x=x)
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=dtype)
    dx = _pool_module(xp).max_pool2d_grad(xp.ascontiguousarray(grad_output), xp.ascontiguousarray(x), g)
    return dx.astype(dtype, copy=False)


def _check_divisor(divisor_override):
    if divisor_override is not None and (not _is_int(divisor_override) or divisor_override < 1):
        raise ValueError(f"divisor_override must be None or a positive int, got {divisor_override!r}")
    return None if divisor_override is None else int(divisor_override)


def pool_avg(x, g: PoolGeometry, count_include_pad: bool = True, divisor_override: int | None = None):
    """Average pooling of x over geometry g, with PyTorch's divisor rules (``PoolGeometry.divisors``)."""
    xp = array_module(x=x)
    check_pool_dtype(x, "x", integers=False)
    divisor_override = _check_divisor(divisor_override)
    if g.N == 0:
        return xp.zeros(g.output_shape, dtype=x.dtype)
    y = _pool_module(xp).avg_pool2d_forward(xp.ascontiguousarray(x), g, bool(count_include_pad), divisor_override)
    return y.astype(x.dtype, copy=False)


def pool_avg_grad(grad_output, g: PoolGeometry, count_include_pad: bool = True, divisor_override: int | None = None):
    """Gradient of ``pool_avg``."""
    xp = array_module(grad_output=grad_output)
    check_pool_dtype(grad_output, "grad_output", integers=False)
    divisor_override = _check_divisor(divisor_override)
    g.check_output(grad_output)
    if g.N == 0:
        return xp.zeros(g.input_shape, dtype=grad_output.dtype)
    dx = _pool_module(xp).avg_pool2d_grad(xp.ascontiguousarray(grad_output), g, bool(count_include_pad),
                                          divisor_override)
    return dx.astype(grad_output.dtype, copy=False)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling over (N, C, H, W) (``torch.nn.functional.max_pool2d``); stride defaults to kernel_size.

    padding: an int, (pad_h, pad_w), (top, bottom, left, right), "valid", "same" or "same_lower"; it may exceed
    half the kernel. Floating or integer dtypes. With ``return_indices``: (y, indices), indices the int64
    per-plane flat index h * W + w of each maximum (-1 for a window of padding only)."""
    if _has_tensor(x):
        return _tensor_ops().max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    array_module(x=x)
    g = PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode, dilation)
    return pool_max(x, g, return_indices)


def max_pool2d_grad(grad_output, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Gradient of ``max_pool2d``: each output's gradient goes to its window's first maximum."""
    array_module(grad_output=grad_output, x=x)
    return pool_max_grad(grad_output, x, PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode,
                                                             dilation))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, dilation=1):
    """Average pooling over (N, C, H, W) (``torch.nn.functional.avg_pool2d``), with PyTorch's divisor rules;
    ``dilation`` (ONNX's AveragePool) spreads the taps as for max pooling."""
    if _has_tensor(x):
        return _tensor_ops().avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                        divisor_override, dilation=dilation)
    array_module(x=x)
    g = PoolGeometry.create(x.shape, kernel_size, stride, padding, ceil_mode, dilation)
    return pool_avg(x, g, count_include_pad, divisor_override)


def avg_pool2d_grad(grad_output, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                    count_include_pad=True, divisor_override=None, *, dilation=1):
    """Gradient of ``avg_pool2d``."""
    array_module(grad_output=grad_output)
    g = PoolGeometry.create(input_shape, kernel_size, stride, padding, ceil_mode, dilation)
    return pool_avg_grad(grad_output, g, count_include_pad, divisor_override)


def line_pool_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """The ``PoolGeometry`` of a 1-D pooling of (N, C, L): its 2-D pooling over a one-row plane."""
    if len(input_shape) != 3:
        raise ValueError(f"input must be 3-D (N, C, L) for 1-D pooling, got shape {tuple(input_shape)}")
    N, C, L = input_shape
    return PoolGeometry.create((N, C, 1, L), line_as_plane(kernel_size, "kernel_size"),
                               line_as_plane(stride, "stride"), line_padding_as_plane(padding), ceil_mode,
                               line_as_plane(dilation, "dilation"))


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling over (N, C, L) (``torch.nn.functional.max_pool1d``); indices are positions along L."""
    if _has_tensor(x):
        return _tensor_ops().max_pool1d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    array_module(x=x)
    g = line_pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return plane_to_line(pool_max(line_to_plane(x, "input"), g, return_indices))


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling over (N, C, L) (``torch.nn.functional.avg_pool1d``)."""
    if _has_tensor(x):
        return _tensor_ops().avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    array_module(x=x)
    g = line_pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    return plane_to_line(pool_avg(line_to_plane(x, "input"), g, count_include_pad))


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to ``output_size`` (an int or (h, w), None keeping that input size): PyTorch's bins,
    [floor(i * H / h), ceil((i + 1) * H / h)) (``torch.nn.functional.adaptive_avg_pool2d``)."""
    if _has_tensor(x):
        return _tensor_ops().adaptive_avg_pool2d(x, output_size)
    array_module(x=x)
    return pool_avg(x, PoolGeometry.adaptive(x.shape, output_size, "adaptive_avg_pool2d"))


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """Max pooling to ``output_size`` over PyTorch's adaptive bins (``torch.nn.functional.adaptive_max_pool2d``)."""
    if _has_tensor(x):
        return _tensor_ops().adaptive_max_pool2d(x, output_size, return_indices)
    array_module(x=x)
    return pool_max(x, PoolGeometry.adaptive(x.shape, output_size, "adaptive_max_pool2d"), return_indices)


def line_adaptive_geometry(input_shape, output_size, what: str) -> PoolGeometry:
    if len(input_shape) != 3:
        raise ValueError(f"{what}: input must be 3-D (N, C, L), got shape {tuple(input_shape)}")
    N, C, L = input_shape
    if isinstance(output_size, (tuple, list)) and len(output_size) == 1:
        output_size = output_size[0]
    if not (output_size is None or _is_int(output_size)):
        raise TypeError(f"{what}: output_size must be an int (or a 1-tuple), got {output_size!r}")
    return PoolGeometry.adaptive((N, C, 1, L), (1, output_size), what)


def adaptive_avg_pool1d(x, output_size):
    """``torch.nn.functional.adaptive_avg_pool1d`` over (N, C, L)."""
    if _has_tensor(x):
        return _tensor_ops().adaptive_avg_pool1d(x, output_size)
    array_module(x=x)
    g = line_adaptive_geometry(x.shape, output_size, "adaptive_avg_pool1d")
    return plane_to_line(pool_avg(line_to_plane(x, "input"), g))


def adaptive_max_pool1d(x, output_size, return_indices=False):
    """``torch.nn.functional.adaptive_max_pool1d`` over (N, C, L)."""
    if _has_tensor(x):
        return _tensor_ops().adaptive_max_pool1d(x, output_size, return_indices)
    array_module(x=x)
    g = line_adaptive_geometry(x.shape, output_size, "adaptive_max_pool1d")
    return plane_to_line(pool_max(line_to_plane(x, "input"), g, return_indices))


def global_avg_pool2d(x):
    """The mean of every (H, W) plane, (N, C, 1, 1) (ONNX's GlobalAveragePool; adaptive pooling to 1)."""
    return adaptive_avg_pool2d(x, 1)


def global_max_pool2d(x):
    """The maximum of every (H, W) plane, (N, C, 1, 1) (ONNX's GlobalMaxPool; adaptive pooling to 1)."""
    return adaptive_max_pool2d(x, 1)


# ------------------------------------------------------------ max unpooling ---

def unpool_output_hw(input_hw, kernel_size, stride=None, padding=0, output_size=None) -> tuple[int, int]:
    """``max_unpool2d``'s output (H, W): (H_in - 1) * stride - 2 * padding + kernel, or ``output_size`` ((H, W)
    or a whole shape ending in them) within stride of it either way (PyTorch's rule)."""
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    pads = pair(padding, "padding", 0)
    default = tuple((size - 1) * s - 2 * p + k for size, k, s, p in zip(input_hw, kernel, stride, pads))
    if output_size is None:
        if min(default) < 1:
            raise ValueError(f"max_unpool2d: the output would be {default[0]}x{default[1]}; check padding")
        return default
    if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4) or \
            not all(_is_int(v) for v in output_size):
        raise TypeError(f"max_unpool2d: output_size must be (H, W) or (N, C, H, W), got {output_size!r}")
    hw = tuple(int(v) for v in output_size[-2:])
    for size, d, s in zip(hw, default, stride):
        if not d - s < size < d + s:
            raise ValueError(f"max_unpool2d: output_size {tuple(output_size)!r} must lie within the stride of the "
                             f"default size {default} (between {tuple(x - y for x, y in zip(default, stride))} and "
                             f"{tuple(x + y for x, y in zip(default, stride))}, exclusive)")
    return hw


def _check_unpool(x, indices, out_hw):
    xp = array_module(x=x, indices=indices)
    if tuple(indices.shape) != tuple(x.shape):
        raise ValueError(f"max_unpool2d: input and indices must have one shape, got "
                         f"{tuple(x.shape)} and {tuple(indices.shape)}")
    if np.dtype(indices.dtype).kind not in "iu":
        raise TypeError(f"max_unpool2d: indices must be integers, got {indices.dtype}")
    plane = out_hw[0] * out_hw[1]
    if indices.size and (int(indices.max()) >= plane or int(indices.min()) < -1):
        raise ValueError(f"max_unpool2d: indices must lie in [0, {plane}) (the {out_hw[0]}x{out_hw[1]} output "
                         f"plane), or be -1 (a window of padding only: skipped); got {int(indices.min())}.."
                         f"{int(indices.max())}")
    return xp


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """The partial inverse of ``max_pool2d`` (``torch.nn.functional.max_unpool2d``): zeros of the output size
    with each value of x written at its index; -1 indices are skipped. Indices met twice keep one of their
    values (which one is unspecified on the GPU, as in PyTorch)."""
    if _has_tensor(x):
        return _tensor_ops().max_unpool2d(x, indices, kernel_size, stride, padding, output_size)
    array_module(x=x, indices=indices)
    if x.ndim != 4:
        raise ValueError(f"max_unpool2d: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    out_hw = unpool_output_hw(x.shape[2:], kernel_size, stride, padding, output_size)
    xp = _check_unpool(x, indices, out_hw)
    N, C = x.shape[:2]
    y = xp.zeros((N * C, out_hw[0] * out_hw[1]), dtype=x.dtype)
    if x.size == 0:
        return y.reshape(N, C, *out_hw)
    flat, values = indices.reshape(N * C, -1), x.reshape(N * C, -1)
    plane = xp.broadcast_to(xp.arange(N * C)[:, None], flat.shape)
    keep = flat >= 0
    y[plane[keep], flat[keep]] = values[keep]
    return y.reshape(N, C, *out_hw)


def max_unpool2d_grad(grad_output, indices):
    """Gradient of ``max_unpool2d`` with respect to its input: grad_output read at each index (0 at -1)."""
    xp = array_module(grad_output=grad_output, indices=indices)
    if indices.size == 0:
        return xp.zeros(indices.shape, dtype=grad_output.dtype)
    N, C = indices.shape[:2]
    flat = indices.reshape(N * C, -1)
    grad = grad_output.reshape(N * C, -1)
    picked = xp.take_along_axis(grad, xp.maximum(flat, 0), axis=1)
    return xp.where(flat >= 0, picked, 0).astype(grad_output.dtype).reshape(indices.shape)


def max_unpool1d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """``torch.nn.functional.max_unpool1d`` over (N, C, L): ``max_unpool2d`` of a one-row plane."""
    if _has_tensor(x):
        return _tensor_ops().max_unpool1d(x, indices, kernel_size, stride, padding, output_size)
    return plane_to_line(max_unpool2d(line_to_plane(x, "input"), line_to_plane(indices, "indices"),
                                      **unpool1d_plane_args(kernel_size, stride, padding, output_size)))


def unpool1d_plane_args(kernel_size, stride, padding, output_size) -> dict:
    """max_unpool1d's arguments as those of its max_unpool2d over a one-row plane; output_size (L,) or
    (N, C, L) becomes (1, L)."""
    if output_size is not None:
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (1, 3):
            raise TypeError(f"max_unpool1d: output_size must be (L,) or (N, C, L), got {output_size!r}")
        output_size = (1, output_size[-1])
    return dict(kernel_size=line_as_plane(kernel_size, "kernel_size"), stride=line_as_plane(stride, "stride"),
                padding=(0, _line_padding(padding)), output_size=output_size)


def _line_padding(padding) -> int:
    if isinstance(padding, (tuple, list)) and len(padding) == 1:
        padding = padding[0]
    if not _is_int(padding):
        raise TypeError(f"padding of max_unpool1d must be an int, got {padding!r}")
    return int(padding)


__all__ = ["conv1d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "conv_transpose2d",
           "conv_transpose2d_forward", "conv_transpose2d_grad_input", "conv_transpose2d_grad_weight", "pad",
           "pad_grad", "padding_mode_pad", "max_pool1d", "max_pool2d", "max_pool2d_grad", "avg_pool1d",
           "avg_pool2d", "avg_pool2d_grad", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "global_avg_pool2d", "global_max_pool2d", "max_unpool1d", "max_unpool2d",
           "max_unpool2d_grad", "pool_max", "pool_max_grad", "pool_avg", "pool_avg_grad", "line_pool_geometry",
           "line_adaptive_geometry", "unpool_output_hw", "line_to_plane", "plane_to_line", "conv1d_plane_args",
           "unpool1d_plane_args", "CPU_ALGOS", "GPU_ALGOS"]
