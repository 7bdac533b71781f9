"""Layers with PyTorch's constructor arguments; each has forward and backward.

The array code is written once against ``xp`` (numpy or cupy, picked by the
input array), so every layer runs on the CPU and the GPU; convolutions and
pooling go through ``gpuconv.functional`` and its kernels.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import functional as F
from .._backend import array_module
from .._shapes import check_float_dtype, check_same_dtype, pair, resolve_padding
from ..cuda import registry
from . import init
from .module import Module, Parameter


def _check_input(x, ndim: int, layer: str, layout: str):
    xp = array_module(x=x)
    check_float_dtype(x, "x")
    if x.ndim != ndim:
        raise ValueError(f"{layer} expects a {ndim}-D input ({layout}), got shape {tuple(x.shape)}")
    return xp


def _require_forward(layer, saved):
    if saved is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")


def _layer_algo(algo):
    """A layer runs fprop, dgrad and wgrad with one ``algo``: a family or "auto", not one pass's variant."""
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a string, got {algo!r}")
    if algo in registry.BY_NAME:
        raise ValueError(f"algo={algo!r} is one {registry.BY_NAME[algo].op} kernel variant, but a Conv2d layer runs "
                         f"fprop, dgrad and wgrad with its algo: give 'auto' or a family "
                         f"({', '.join(registry.FAMILIES)}), or call gpuconv.conv2d & co. with variant names")
    return algo


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, dtype=np.float32, algo="auto"):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
            raise TypeError(f"groups must be an int, got {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        # Check the arguments now rather than at the first forward (the input size only matters for "same").
        resolve_padding(padding, self.kernel_size, self.kernel_size, pair(stride, "stride"),
                        pair(dilation, "dilation"))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algo = _layer_algo(algo)
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self.weight = Parameter(init.kaiming_uniform(
            (out_channels, in_channels // groups) + self.kernel_size, fan_in, dtype))
        self.bias = Parameter(init.bias_uniform(out_channels, fan_in, dtype)) if bias else None
        self._x = None

    def _geometry_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    algo=self.algo)

    def forward(self, x):
        self._x = x
        return F.conv2d(x, self.weight.data, None if self.bias is None else self.bias.data,
                        **self._geometry_args())

    def backward(self, grad):
        _require_forward(self, self._x)
        args = self._geometry_args()
        self.weight.accumulate(F.conv2d_grad_weight(self._x, grad, self.weight.shape, **args))
        if self.bias is not None:
            self.bias.accumulate(F.conv2d_grad_bias(grad))
        return F.conv2d_grad_input(grad, self.weight.data, self._x.shape, **args)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features, dtype))
        self.bias = Parameter(init.bias_uniform(out_features, in_features, dtype)) if bias else None
        self._x = None

    def forward(self, x):
        _check_input(x, 2, "Linear", "batch, in_features")
        check_same_dtype(x=x, weight=self.weight.data)  # as conv2d does: no silent float64 promotion
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features, got {x.shape[1]}")
        self._x = x
        y = x @ self.weight.data.T
        return y if self.bias is None else y + self.bias.data

    def backward(self, grad):
        _require_forward(self, self._x)
        self.weight.accumulate(grad.T @ self._x)
        if self.bias is not None:
            self.bias.accumulate(grad.sum(axis=0))
        return grad @ self.weight.data

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def __init__(self):
        super().__init__()
        self._mask = None

    def forward(self, x):
        xp = array_module(x=x)
        self._mask = x > 0
        # maximum, not x * mask: -inf * 0 would be NaN and -1 * 0 is -0; maximum propagates NaN, as PyTorch does.
        return xp.maximum(x, x.dtype.type(0))

    def backward(self, grad):
        _require_forward(self, self._mask)
        xp = array_module(grad=grad)
        return xp.where(self._mask, grad, grad.dtype.type(0))


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.args = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
        self._x = None

    def forward(self, x):
        self._x = x
        return F.max_pool2d(x, **self.args)

    def backward(self, grad):
        _require_forward(self, self._x)
        return F.max_pool2d_grad(grad, self._x, **self.args)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.args.items())


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.args = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad)
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return F.avg_pool2d(x, **self.args)

    def backward(self, grad):
        _require_forward(self, self._shape)
        return F.avg_pool2d_grad(grad, self._shape, **self.args)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.args.items())


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        # The flattened size spelled out: reshape cannot infer -1 when the batch is empty.
        return x.reshape(x.shape[:self.start_dim] + (math.prod(x.shape[self.start_dim:]),))

    def backward(self, grad):
        _require_forward(self, self._shape)
        return grad.reshape(self._shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        self.p = p
        self._scale = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        xp = array_module(x=x)
        if xp is np:
            keep = init.generator().random(x.shape) >= self.p
        else:
            keep = xp.random.random_sample(x.shape, dtype=xp.float32) >= self.p
        self._scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        return x * self._scale

    def backward(self, grad):
        return grad if self._scale is None else grad * self._scale

    def extra_repr(self):
        return f"p={self.p}"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, with running statistics for eval mode."""

    _buffers = ("running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)
        self._saved = None

    def forward(self, x):
        xp = _check_input(x, 4, "BatchNorm2d", "N, C, H, W")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d expects {self.num_features} channels, got {x.shape[1]}")
        # A float64 batch would silently turn the float32 running statistics into float64.
        check_same_dtype(x=x, running_mean=self.running_mean)
        if self.training:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            if count < 2:
                raise ValueError(f"BatchNorm2d in training needs more than one value per channel, got input "
                                 f"shape {tuple(x.shape)}")
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + m * var * (count / (count - 1))
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = (x - mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)
        self._saved = (x_hat, inv_std, self.training)
        if self.weight is None:
            return x_hat.astype(x.dtype, copy=False)
        y = x_hat * self.weight.data.reshape(1, -1, 1, 1) + self.bias.data.reshape(1, -1, 1, 1)
        return y.astype(x.dtype, copy=False)

    def backward(self, grad):
        _require_forward(self, self._saved)
        x_hat, inv_std, batch_stats = self._saved
        if self.weight is not None:
            self.weight.accumulate((grad * x_hat).sum(axis=(0, 2, 3)))
            self.bias.accumulate(grad.sum(axis=(0, 2, 3)))
            grad = grad * self.weight.data.reshape(1, -1, 1, 1)
        if not batch_stats:  # eval mode: a fixed affine map
            return grad * inv_std.reshape(1, -1, 1, 1)
        # d/dx of (x - mean) / std with mean and std taken over the batch
        mean_grad = grad.mean(axis=(0, 2, 3), keepdims=True)
        mean_grad_xhat = (grad * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        return (grad - mean_grad - x_hat * mean_grad_xhat) * inv_std.reshape(1, -1, 1, 1)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"
