"""Layers with PyTorch's names, constructor arguments and state_dict names.

Each layer holds its parameters and computes ``forward`` with ``gpuconv.nn.functional``; autograd records
the backward, so a layer can be called any number of times and at any place of a model. Convolutions and
pooling run on our CUDA kernels for CuPy arrays and on the CPU paths for NumPy arrays.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._shapes import line_as_plane, line_padding_as_plane, pair, resolve_padding
from ..autograd import Tensor, as_array
from ..amp import full_precision
from ..cuda import registry
from ..padding import CONV_PADDING_MODES
from . import functional as F
from . import init
from .module import Module, Parameter


def _layer_algo(algo):
    """A layer runs fprop, dgrad and wgrad with one ``algo``: a family or "auto", not one pass's variant."""
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a string, got {algo!r}")
    if algo in registry.BY_NAME:
        raise ValueError(f"algo={algo!r} is one {registry.BY_NAME[algo].op} kernel variant, but a Conv2d layer runs "
                         f"fprop, dgrad and wgrad with its algo: give 'auto' or a family "
                         f"({', '.join(registry.FAMILIES)}), or call gpuconv.conv2d & co. with variant names")
    return algo


def _check_groups(groups, in_channels, out_channels):
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")


def _check_ndim(x, ndims, layer: str, layout: str):
    x = as_array(x)
    if x.ndim not in ndims:
        raise ValueError(f"{layer} expects a {' or '.join(f'{n}-D' for n in ndims)} input ({layout}), got shape "
                         f"{tuple(x.shape)}")
    return x


class _Conv(Module):
    """What Conv1d and Conv2d share: weight (out_channels, in_channels/groups, *kernel_size), bias, the
    arguments checked at construction, PyTorch's initialisation."""
    dims = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 padding_mode, dtype, algo):
        super().__init__()
        _check_groups(groups, in_channels, out_channels)
        if padding_mode not in CONV_PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {tuple(CONV_PADDING_MODES)}, got {padding_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        if self.dims == 1:
            kernel = line_as_plane(kernel_size, "kernel_size")
            # Check the arguments now rather than at the first forward (the input size only matters for "same").
            resolve_padding(line_padding_as_plane(padding), kernel, kernel, line_as_plane(stride, "stride"),
                            line_as_plane(dilation, "dilation"))
            self.kernel_size = kernel[1:]
        else:
            self.kernel_size = pair(kernel_size, "kernel_size")
            resolve_padding(padding, self.kernel_size, self.kernel_size, pair(stride, "stride"),
                            pair(dilation, "dilation"))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.padding_mode = padding_mode
        self.algo = _layer_algo(algo)
        fan_in = (in_channels // groups) * int(np.prod(self.kernel_size))
        self.weight = Parameter(init.kaiming_uniform(
            (out_channels, in_channels // groups) + self.kernel_size, fan_in, dtype))
        self.bias = Parameter(init.bias_uniform(out_channels, fan_in, dtype)) if bias else None

    def extra_repr(self):
        mode = "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode!r}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}{mode}")


class Conv2d(_Conv):
    """2-D convolution: weight (out_channels, in_channels/groups, kH, kW), bias (out_channels,).

    ``padding``: an int, a pair, (top, bottom, left, right), "valid", "same", "same_lower" or "full";
    ``padding_mode``: "zeros", "reflect", "replicate" or "circular" (PyTorch's). ``algo`` picks the kernel
    family every pass of this layer runs on the GPU ("auto", "im2col", "implicit_gemm", "direct", "tensor_core";
    a family without a kernel for one of the passes -- "direct" beyond depthwise, "tensor_core" for wgrad and
    strided dgrad -- fails on that pass).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", *, dtype=np.float32, algo="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, dtype, algo)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        padding_mode=self.padding_mode, algo=self.algo)


class Conv1d(_Conv):
    """1-D convolution over (N, C, L): weight (out_channels, in_channels/groups, kL); runs as a 2-D
    convolution of one-row planes. ``padding``: an int, (left, right) or a string, as for Conv2d."""
    dims = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", *, dtype=np.float32, algo="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, dtype, algo)

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        padding_mode=self.padding_mode, algo=self.algo)


class ConvTranspose2d(Module):
    """Transposed 2-D convolution: weight (in_channels, out_channels/groups, kH, kW), as PyTorch's.

    Output size: (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1. Forward runs our
    dgrad kernels, its backward fprop and wgrad.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, *, dtype=np.float32, algo="auto"):
        super().__init__()
        _check_groups(groups, in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.output_padding = pair(stride, "stride"), pair(padding, "padding", 0), \
            pair(output_padding, "output_padding", 0)
        self.groups, self.dilation = groups, pair(dilation, "dilation")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not (op < s or op < d):
                raise ValueError(f"output_padding {output_padding} must be smaller than the stride {stride} or "
                                 f"the dilation {dilation}")
        self.algo = _layer_algo(algo)
        # PyTorch's fan_in for this weight layout: its second dimension times the kernel area.
        fan_in = (out_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(init.kaiming_uniform(
            (in_channels, out_channels // groups) + self.kernel_size, fan_in, dtype))
        self.bias = Parameter(init.bias_uniform(out_channels, fan_in, dtype)) if bias else None

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation, algo=self.algo)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}, groups={self.groups}, "
                f"bias={self.bias is not None}, dilation={self.dilation}")


class Linear(Module):
    """y = x @ weight.T + bias over the last dimension; weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features, dtype))
        self.bias = Parameter(init.bias_uniform(out_features, in_features, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input: a placeholder where a model has no layer."""

    def __init__(self, *args, **kwargs):  # PyTorch's ignores its arguments too
        super().__init__()

    def forward(self, x):
        return x


class ReLU(Module):
    """max(x, 0); NaN propagates."""

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """x where x > 0, negative_slope * x elsewhere."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), computed without overflow."""

    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    """The hyperbolic tangent."""

    def forward(self, x):
        return F.tanh(x)


class Softmax(Module):
    """exp(x) / sum(exp(x)) over ``dim``, shifted by the maximum for stability."""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log(softmax(x)) over ``dim``, computed as x - max - log(sum(exp(x - max)))."""

    def forward(self, x):
        return F.log_softmax(x, self.dim)


class MaxPool2d(Module):
    """Max pooling; the gradient goes to each window's first maximum; NaN propagates. ``return_indices``
    makes forward return (y, indices) for ``MaxUnpool2d``."""
    _forward = staticmethod(F.max_pool2d)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = bool(return_indices), ceil_mode

    def forward(self, x):
        return self._forward(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                             self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
                + (", return_indices=True" if self.return_indices else ""))


class MaxPool1d(MaxPool2d):
    """Max pooling over (N, C, L)."""
    _forward = staticmethod(F.max_pool1d)


class AvgPool2d(Module):
    """Average pooling, with PyTorch's divisor rules (``count_include_pad``, ``ceil_mode``, ``divisor_override``)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")


class AvgPool1d(Module):
    """Average pooling over (N, C, L)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}")


class AdaptiveAvgPool2d(Module):
    """Average pooling to ``output_size`` (an int, or (h, w) with None keeping that input size)."""
    _forward = staticmethod(F.adaptive_avg_pool2d)

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return self._forward(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(AdaptiveAvgPool2d):
    _forward = staticmethod(F.adaptive_avg_pool1d)


class AdaptiveMaxPool2d(Module):
    """Max pooling to ``output_size`` over PyTorch's adaptive bins; ``return_indices`` as MaxPool2d."""
    _forward = staticmethod(F.adaptive_max_pool2d)

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, bool(return_indices)

    def forward(self, x):
        return self._forward(x, self.output_size, self.return_indices)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(AdaptiveMaxPool2d):
    _forward = staticmethod(F.adaptive_max_pool1d)


class MaxUnpool2d(Module):
    """The partial inverse of MaxPool2d: ``forward(x, indices, output_size=None)``."""
    _forward = staticmethod(F.max_unpool2d)

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x, indices, output_size=None):
        return self._forward(x, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(MaxUnpool2d):
    _forward = staticmethod(F.max_unpool1d)


class Flatten(Module):
    """Merge dimensions start_dim..end_dim (default: all but the batch), as torch.nn.Flatten."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x if isinstance(x, Tensor) else Tensor(x), self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class _BatchNorm(Module):
    """Normalisation per channel (axis 1) over every other axis, with running statistics for eval mode."""

    _ndims: tuple = ()
    _layout = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        (x,) = full_precision(x)  # under autocast batch norm computes in float32
        array = _check_ndim(x, self._ndims, type(self).__name__, self._layout)
        if array.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects {self.num_features} channels, got {array.shape[1]}")
        if self.running_mean is not None and array.dtype != self.running_mean.dtype:
            # A float64 batch would silently turn the float32 running statistics into float64.
            raise TypeError(f"{type(self).__name__}: input dtype {array.dtype} differs from the layer's "
                            f"{self.running_mean.dtype}; cast one of them (model.to(dtype))")
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1  # in place: a 0-d array stays one
        # Without running statistics, eval mode normalises with the batch's, as PyTorch does.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or self.running_mean is None, self.momentum, self.eps,
                            num_batches_tracked=self.num_batches_tracked)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel; buffers running_mean, running_var, num_batches_tracked."""

    _ndims, _layout = (4,), "N, C, H, W"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) per channel, as BatchNorm2d."""

    _ndims, _layout = (2, 3), "N, C or N, C, L"
