"""Differentiable neural-network operations on tensors, with ``torch.nn.functional``'s names and arguments.

Each takes tensors or plain arrays and returns a tensor, recording its backward when an input requires a
gradient. Convolution and pooling run through the array API (``gpuconv.functional``: our CUDA kernels for
CuPy arrays, the CPU paths for NumPy arrays), forward and backward; the rest is array code written once
against ``xp``.
"""
from __future__ import annotations

import numpy as np

from .. import functional as arrays
from ..functional import line_to_plane, plane_to_line
from .._backend import array_module
from .._shapes import PoolGeometry, accumulation_dtype, check_float_dtype, check_same_dtype, conv_transpose_geometry
from ..padding import CONV_PADDING_MODES
from ..amp import full_precision, low_precision
from ..autograd import Function, Tensor, as_array
from ..ops import flatten  # noqa: F401  (torch.flatten's place in this namespace)
from . import init


def _xp(**named):
    return array_module(**{k: as_array(v) for k, v in named.items()})


def _shape(t) -> tuple:
    return tuple(as_array(t).shape)


# ------------------------------------------------------------ convolution ---

class _Conv2d(Function):
    def forward(self, x, weight, bias):
        y = arrays.conv2d(x, weight, bias, **self.args)  # first: it validates every argument
        # Keep only what the wanted gradients need: dgrad needs the weight, wgrad the input.
        self.saved = (x if self.needs_input_grad[1] else None, weight if self.needs_input_grad[0] else None)
        self.input_shape, self.weight_shape = x.shape, weight.shape
        return y

    def backward(self, grad):
        x, weight = self.saved
        need_x, need_w, need_b = self.needs_input_grad
        return (arrays.conv2d_grad_input(grad, weight, self.input_shape, **self.args) if need_x else None,
                arrays.conv2d_grad_weight(x, grad, self.weight_shape, **self.args) if need_w else None,
                arrays.conv2d_grad_bias(grad) if need_b else None)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           algo="auto", precision=None) -> Tensor:
    """2-D cross-correlation (``torch.nn.functional.conv2d``); backward runs our dgrad and wgrad.

    ``padding_mode`` "reflect", "replicate" or "circular" pads the input first (``pad``, PyTorch's Conv2d).
    Under ``gpuconv.amp.autocast`` it computes in the autocast dtype."""
    input, weight, bias = low_precision(input, weight, bias)
    mode_pad = None
    if padding_mode != "zeros":
        _xp(input=input, weight=weight)
        mode_pad = arrays.padding_mode_pad(_shape(input), _shape(weight), stride, padding, dilation, groups,
                                           padding_mode)
    if mode_pad is not None:
        input, padding = pad(input, mode_pad, CONV_PADDING_MODES[padding_mode]), 0
    return _Conv2d.apply(input, weight, bias, args=dict(stride=stride, padding=padding, dilation=dilation,
                                                        groups=groups, algo=algo, precision=precision))


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           algo="auto") -> Tensor:
    """1-D cross-correlation (``torch.nn.functional.conv1d``): ``conv2d`` over a one-row plane."""
    return plane_to_line(conv2d(line_to_plane(input, "input"), line_to_plane(weight, "weight"), bias, groups=groups,
                                padding_mode=padding_mode, algo=algo, **arrays.conv1d_plane_args(stride, padding,
                                                                                                  dilation)))


class _Pad(Function):
    def forward(self, x):
        self.input_shape = x.shape
        return arrays.pad(x, self.pad, self.mode, self.value)

    def backward(self, grad):
        return (arrays.pad_grad(grad, self.input_shape, self.pad, self.mode),)


def pad(input, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """``torch.nn.functional.pad`` of the last one or two dimensions: constant, reflect, replicate, circular."""
    return _Pad.apply(input, pad=tuple(pad) if isinstance(pad, list) else pad, mode=mode, value=value)


class _ConvTranspose2d(Function):
    """y = dgrad(x, w): the input gradient of the convolution that maps y's shape to x's
    (``gpuconv._shapes.conv_transpose_geometry``; the array-level passes are ``gpuconv.functional``'s)."""

    def forward(self, x, weight, bias):
        array_module(x=x, weight=weight, bias=bias)
        check_same_dtype(x=x, weight=weight, bias=bias)
        self.g = conv_transpose_geometry(x.shape, weight.shape, self.stride, self.padding, self.output_padding,
                                         self.dilation, self.groups)
        self.saved = (x if self.needs_input_grad[1] else None, weight if self.needs_input_grad[0] else None)
        self.input_hw, self.weight_shape = x.shape[2:], weight.shape
        return arrays.conv_transpose2d_forward(x, weight, bias, self.g, self.algo)

    def backward(self, grad):
        x, weight = self.saved
        need_x, need_w, need_b = self.needs_input_grad
        g, algo = self.g, self.algo
        return (arrays.conv_transpose2d_grad_input(grad, weight, g, self.input_hw, algo) if need_x else None,
                arrays.conv_transpose2d_grad_weight(grad, x, g, self.weight_shape, algo) if need_w else None,
                arrays.conv2d_grad_bias(grad) if need_b else None)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     algo="auto") -> Tensor:
    """Transposed convolution (``torch.nn.functional.conv_transpose2d``); weight (C_in, C_out/groups, kH, kW).

    Forward runs our dgrad kernels, backward fprop (input gradient) and wgrad (weight gradient).
    """
    input, weight, bias = low_precision(input, weight, bias)
    return _ConvTranspose2d.apply(input, weight, bias, stride=stride, padding=padding,
                                  output_padding=output_padding, groups=groups, dilation=dilation, algo=algo)


# ---------------------------------------------------------------- pooling ---
# Each pooling function builds its PoolGeometry (gpuconv._shapes) and records one of two Functions over it.

class _MaxPool(Function):
    """Max pooling over ``self.g``; with ``self.indices`` (a list) the indices are appended to it."""

    def forward(self, x):
        result = arrays.pool_max(x, self.g, self.indices is not None)
        self.saved = x
        if self.indices is None:
            return result
        self.indices.append(result[1])
        return result[0]

    def backward(self, grad):
        return (arrays.pool_max_grad(grad, self.saved, self.g),)


def _max_pool(input, g: PoolGeometry, return_indices: bool):
    """y, or (y, indices) with the indices as a tensor without gradient (as PyTorch returns them)."""
    sink = [] if return_indices else None
    y = _MaxPool.apply(input, g=g, indices=sink)
    return (y, Tensor(sink[0])) if return_indices else y


class _AvgPool(Function):
    def forward(self, x):
        return arrays.pool_avg(x, self.g, self.count_include_pad, self.divisor_override)

    def backward(self, grad):
        return (arrays.pool_avg_grad(grad, self.g, self.count_include_pad, self.divisor_override),)


def _avg_pool(input, g: PoolGeometry, count_include_pad=True, divisor_override=None) -> Tensor:
    return _AvgPool.apply(input, g=g, count_include_pad=count_include_pad, divisor_override=divisor_override)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling (``torch.nn.functional.max_pool2d``); the gradient goes to each window's first maximum.
    Padding as ``gpuconv.functional.max_pool2d`` takes it; integer inputs pool without gradient."""
    return _max_pool(input, PoolGeometry.create(_shape(input), kernel_size, stride, padding, ceil_mode, dilation),
                     return_indices)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, dilation=1) -> Tensor:
    """Average pooling (``torch.nn.functional.avg_pool2d``), ``dilation`` as ONNX's AveragePool has it."""
    g = PoolGeometry.create(_shape(input), kernel_size, stride, padding, ceil_mode, dilation)
    return _avg_pool(input, g, count_include_pad, divisor_override)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``torch.nn.functional.max_pool1d`` over (N, C, L); indices are positions along L."""
    g = arrays.line_pool_geometry(_shape(input), kernel_size, stride, padding, dilation, ceil_mode)
    return plane_to_line(_max_pool(line_to_plane(input, "input"), g, return_indices))


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Tensor:
    """``torch.nn.functional.avg_pool1d`` over (N, C, L)."""
    g = arrays.line_pool_geometry(_shape(input), kernel_size, stride, padding, 1, ceil_mode)
    return plane_to_line(_avg_pool(line_to_plane(input, "input"), g, count_include_pad))


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Average pooling to a fixed output size (``torch.nn.functional.adaptive_avg_pool2d``); ``output_size`` an
    int or (h, w), None keeping that input size. Sizes that divide the input are ordinary pooling."""
    return _avg_pool(input, PoolGeometry.adaptive(_shape(input), output_size, "adaptive_avg_pool2d"))


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """``torch.nn.functional.adaptive_max_pool2d``."""
    return _max_pool(input, PoolGeometry.adaptive(_shape(input), output_size, "adaptive_max_pool2d"), return_indices)


def adaptive_avg_pool1d(input, output_size) -> Tensor:
    g = arrays.line_adaptive_geometry(_shape(input), output_size, "adaptive_avg_pool1d")
    return plane_to_line(_avg_pool(line_to_plane(input, "input"), g))


def adaptive_max_pool1d(input, output_size, return_indices=False):
    g = arrays.line_adaptive_geometry(_shape(input), output_size, "adaptive_max_pool1d")
    return plane_to_line(_max_pool(line_to_plane(input, "input"), g, return_indices))


def global_avg_pool2d(input) -> Tensor:
    """(N, C, 1, 1): the mean of every plane (ONNX's GlobalAveragePool)."""
    return adaptive_avg_pool2d(input, 1)


def global_max_pool2d(input) -> Tensor:
    """(N, C, 1, 1): the maximum of every plane (ONNX's GlobalMaxPool)."""
    return adaptive_max_pool2d(input, 1)


class _MaxUnpool(Function):
    def forward(self, x):
        return arrays.max_unpool2d(x, self.indices, **self.args)

    def backward(self, grad):
        return (arrays.max_unpool2d_grad(grad, self.indices),)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """``torch.nn.functional.max_unpool2d``: each value written at its index of a zero output plane."""
    return _MaxUnpool.apply(input, indices=as_array(indices), args=dict(
        kernel_size=kernel_size, stride=stride, padding=padding, output_size=output_size))


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """``torch.nn.functional.max_unpool1d`` over (N, C, L)."""
    return plane_to_line(max_unpool2d(line_to_plane(input, "input"), line_to_plane(as_array(indices), "indices"),
                                      **arrays.unpool1d_plane_args(kernel_size, stride, padding, output_size)))


# ---------------------------------------------------------- dense layers ---

class _Linear(Function):
    def forward(self, x, weight, bias):
        array_module(x=x, weight=weight, bias=bias)
        check_same_dtype(x=x, weight=weight, bias=bias)  # as conv2d does: no silent float64 promotion
        if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear expects {weight.shape[1]} input features (the last dimension), got shape "
                             f"{tuple(x.shape)}")
        self.saved = (x if self.needs_input_grad[1] else None, weight)
        # float16 / bfloat16 multiply in float32 (NumPy has no BLAS for them) and round the result once.
        dtype, acc = x.dtype, accumulation_dtype(x.dtype)
        y = x.astype(acc, copy=False) @ weight.astype(acc, copy=False).T
        return (y if bias is None else y + bias.astype(acc, copy=False)).astype(dtype, copy=False)

    def backward(self, grad):
        x, weight = self.saved
        need_x, need_w, need_b = self.needs_input_grad
        dtype, acc = grad.dtype, accumulation_dtype(grad.dtype)
        g = grad.astype(acc, copy=False)
        rows = g.reshape(-1, g.shape[-1])
        return (((g @ weight.astype(acc, copy=False)).astype(dtype, copy=False)) if need_x else None,
                (rows.T @ x.reshape(-1, x.shape[-1]).astype(acc, copy=False)).astype(dtype, copy=False)
                if need_w else None,
                rows.sum(axis=0).astype(dtype, copy=False) if need_b else None)


def linear(input, weight, bias=None) -> Tensor:
    """y = input @ weight.T + bias over the last dimension of an input of any rank."""
    input, weight, bias = low_precision(input, weight, bias)
    return _Linear.apply(input, weight, bias)


# ------------------------------------------------------------ activations ---

class _ReLU(Function):
    def forward(self, x):
        xp = array_module(x=x)
        check_float_dtype(x, "x")
        self.saved = x > 0
        # maximum, not x * mask: -inf * 0 would be NaN and -1 * 0 is -0; maximum propagates NaN, as PyTorch does.
        return xp.maximum(x, x.dtype.type(0))

    def backward(self, grad):
        return array_module(grad=grad).where(self.saved, grad, grad.dtype.type(0))


def relu(input) -> Tensor:
    return _ReLU.apply(input)


class _LeakyReLU(Function):
    def forward(self, x):
        xp = array_module(x=x)
        self.saved = x > 0
        return xp.where(self.saved, x, x * x.dtype.type(self.slope))

    def backward(self, grad):
        return array_module(grad=grad).where(self.saved, grad, grad * grad.dtype.type(self.slope))


def leaky_relu(input, negative_slope: float = 0.01) -> Tensor:
    return _LeakyReLU.apply(input, slope=negative_slope)


class _Sigmoid(Function):
    def forward(self, x):
        xp = array_module(x=x)
        # exp of -|x| only: never overflows
        e = xp.exp(-xp.abs(x))
        self.saved = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return self.saved

    def backward(self, grad):
        y = self.saved
        return grad * y * (1 - y)


def sigmoid(input) -> Tensor:
    return _Sigmoid.apply(input)


class _Tanh(Function):
    def forward(self, x):
        self.saved = array_module(x=x).tanh(x)
        return self.saved

    def backward(self, grad):
        return grad * (1 - self.saved * self.saved)


def tanh(input) -> Tensor:
    return _Tanh.apply(input)


def _softmax_parts(x, dim):
    xp = array_module(x=x)
    shifted = x - x.max(axis=dim, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
    return shifted - log_sum


class _LogSoftmax(Function):
    def forward(self, x):
        array_module(x=x)
        check_float_dtype(x, "x")
        self.saved = _softmax_parts(x, self.dim)
        return self.saved

    def backward(self, grad):
        xp = array_module(grad=grad)
        return grad - xp.exp(self.saved) * grad.sum(axis=self.dim, keepdims=True)


class _Softmax(Function):
    def forward(self, x):
        array_module(x=x)
        check_float_dtype(x, "x")
        self.saved = array_module(x=x).exp(_softmax_parts(x, self.dim))
        return self.saved

    def backward(self, grad):
        y = self.saved
        return y * (grad - (grad * y).sum(axis=self.dim, keepdims=True))


def _dim(dim, name):
    if dim is None:
        raise TypeError(f"{name}: give dim (the axis to normalise over); PyTorch's implicit choice is deprecated")
    return dim


def softmax(input, dim=None) -> Tensor:
    (input,) = full_precision(input)
    return _Softmax.apply(input, dim=_dim(dim, "softmax"))


def log_softmax(input, dim=None) -> Tensor:
    (input,) = full_precision(input)
    return _LogSoftmax.apply(input, dim=_dim(dim, "log_softmax"))


# ------------------------------------------------------- regularisation ---

class _Scale(Function):
    """x * mask, the mask fixed (dropout's kept elements scaled by 1/(1-p))."""

    def forward(self, x):
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask


def dropout(input, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    x = as_array(input)
    array_module(x=x)
    if not training or p == 0.0:
        return input if isinstance(input, Tensor) else Tensor(input)
    xp = array_module(input=x)
    if p == 1.0:
        return _Scale.apply(input, mask=xp.zeros(x.shape, x.dtype))
    if xp is np:
        keep = init.generator().random(x.shape) >= p
    else:
        keep = xp.random.random_sample(x.shape, dtype=xp.float32) >= p
    return _Scale.apply(input, mask=keep.astype(x.dtype) / x.dtype.type(1.0 - p))


class _BatchNorm(Function):
    def forward(self, x, weight, bias):
        xp = array_module(x=x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv_std = 1.0 / xp.sqrt(self.var + self.eps)
        x_hat = (x - self.mean.reshape(shape)) * inv_std.reshape(shape)
        self.saved = (x_hat, inv_std, weight)
        if weight is None:
            return x_hat.astype(x.dtype, copy=False)
        return (x_hat * weight.reshape(shape) + bias.reshape(shape)).astype(x.dtype, copy=False)

    def backward(self, grad):
        x_hat, inv_std, weight = self.saved
        shape = (1, -1) + (1,) * (grad.ndim - 2)
        axes = (0,) + tuple(range(2, grad.ndim))
        dweight = (grad * x_hat).sum(axis=axes).astype(grad.dtype) if self.needs_input_grad[1] else None
        dbias = grad.sum(axis=axes) if self.needs_input_grad[2] else None
        if not self.needs_input_grad[0]:
            return None, dweight, dbias
        if weight is not None:
            grad = grad * weight.reshape(shape)
        if not self.batch_stats:  # eval mode: a fixed affine map
            dx = grad * inv_std.reshape(shape)
        else:  # d/dx of (x - mean) / std with mean and std taken over the batch
            mean_grad = grad.mean(axis=axes, keepdims=True)
            mean_grad_xhat = (grad * x_hat).mean(axis=axes, keepdims=True)
            dx = (grad - mean_grad - x_hat * mean_grad_xhat) * inv_std.reshape(shape)
        return dx.astype(grad.dtype, copy=False), dweight, dbias


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, num_batches_tracked=None) -> Tensor:
    """Batch normalisation per channel (axis 1) over every other axis (``torch.nn.functional.batch_norm``).

    In training the batch's statistics normalise, and the running statistics (arrays) are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance; ``momentum=None``
    takes the cumulative average over ``num_batches_tracked`` (a 0-d integer array, already incremented).
    Under ``gpuconv.amp.autocast`` it computes in float32.
    """
    input, weight, bias = full_precision(input, weight, bias)
    x = as_array(input)
    array_module(x=x)
    check_same_dtype(x=x, weight=as_array(weight), bias=as_array(bias))
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects an input of shape (N, C, ...), got {tuple(x.shape)}")
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        count = x.size // max(x.shape[1], 1)
        if count < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, got input shape "
                             f"{tuple(x.shape)}")
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        if running_mean is not None:
            m = (1.0 / float(num_batches_tracked)) if momentum is None else momentum
            # In place, as PyTorch: the module's buffers stay the same arrays.
            running_mean *= 1 - m
            running_mean += (m * mean).astype(running_mean.dtype, copy=False)
            running_var *= 1 - m
            running_var += (m * var * (count / (count - 1))).astype(running_var.dtype, copy=False)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm outside training needs running_mean and running_var")
        mean, var = running_mean, running_var
    return _BatchNorm.apply(input, weight, bias, mean=mean, var=var, eps=eps, batch_stats=training)


# ---------------------------------------------------------------- losses ---

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


class _NLLLoss(Function):
    """-(1 - eps) log p[target] - eps/C sum_c log p[c], per sample; ignored samples contribute 0.

    With ``from_logits`` the input is logits and log p their log-softmax, fused (cross-entropy): one
    backward, d loss / d logits = softmax * row weight - coefficients.
    """

    def forward(self, log_probs, target):
        xp = array_module(input=log_probs, target=target)
        classes = log_probs.shape[1]
        # class axis last, samples flattened: (M, C) and (M,)
        lp = xp.moveaxis(log_probs, 1, -1).reshape(-1, classes)
        if self.from_logits:
            lp = _softmax_parts(lp, 1)
        t = target.reshape(-1)
        m = lp.shape[0]
        # valid is None when no sample is ignored (the common case: no masking work)
        valid = None if self.all_valid else t != self.ignore_index
        safe = t if valid is None else xp.where(valid, t, 0)
        losses = -lp[xp.arange(m), safe] * (1 - self.smoothing)
        if self.smoothing:
            losses = losses - lp.sum(axis=1) * (self.smoothing / classes)
        if valid is not None:
            losses = xp.where(valid, losses, losses.dtype.type(0))
        self.saved = (safe, valid, log_probs.shape, lp if self.from_logits else None)
        if self.reduction == "none":
            return losses.reshape(target.shape)
        total = losses.sum()
        if self.reduction == "sum":
            return total
        self.count = m if valid is None else int(valid.sum())
        with np.errstate(invalid="ignore", divide="ignore"):  # every sample ignored: NaN, as PyTorch
            return total / losses.dtype.type(self.count) if self.count else total * losses.dtype.type(np.nan)

    def backward(self, grad):
        safe, valid, shape, log_probs = self.saved
        xp = array_module(grad=grad)
        classes = shape[1]
        m = safe.shape[0]
        coef = xp.full((m, classes), self.smoothing / classes, grad.dtype)
        coef[xp.arange(m), safe] += grad.dtype.type(1 - self.smoothing)
        if self.reduction == "none":
            scale = grad.reshape(-1)
        elif self.reduction == "sum":
            scale = xp.broadcast_to(grad, (m,))
        else:
            scale = xp.broadcast_to(grad / grad.dtype.type(max(self.count, 1)), (m,))
        row_weight = (scale if valid is None else xp.where(valid, scale, grad.dtype.type(0)))[:, None]
        coef *= row_weight
        # d/d log p = -coef; through the log-softmax, -coef + softmax * sum(coef) with sum(coef) = row weight
        dinput = xp.exp(log_probs) * row_weight - coef if self.from_logits else -coef
        moved = (shape[0],) + tuple(shape[2:]) + (classes,)
        return xp.moveaxis(dinput.reshape(moved), -1, 1), None


def _check_classification(x, target, name):
    xp = array_module(input=x, target=target)
    check_float_dtype(x, "input")
    if x.ndim < 2:
        raise ValueError(f"{name}: input must be (N, C) or (N, C, d1, ...), got shape {tuple(x.shape)}")
    expected = x.shape[:1] + x.shape[2:]
    if tuple(target.shape) != expected or target.dtype.kind not in "iu":
        raise ValueError(f"{name}: target must be integer class indices of shape {expected}, got shape "
                         f"{tuple(target.shape)} dtype {target.dtype}")
    return xp


def _classification_loss(input, target, name, from_logits, ignore_index, reduction, label_smoothing):
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    (input,) = full_precision(input)
    x, t = as_array(input), as_array(target)
    _check_classification(x, t, name)
    classes = x.shape[1]
    low, high = (int(t.min()), int(t.max())) if t.size else (0, 0)
    all_valid = not low <= ignore_index <= high
    if low < 0 or high >= classes:  # out of range, unless those are ignored samples
        real = t[t != ignore_index]
        if real.size and (int(real.min()) < 0 or int(real.max()) >= classes):
            raise ValueError(f"target holds class indices outside [0, {classes}) (ignore_index={ignore_index}): "
                             f"min {int(real.min())}, max {int(real.max())}")
    return _NLLLoss.apply(input, t, ignore_index=ignore_index, reduction=reduction, smoothing=label_smoothing,
                          from_logits=from_logits, all_valid=all_valid)


def nll_loss(input, target, *, ignore_index: int = -100, reduction: str = "mean",
             label_smoothing: float = 0.0) -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` (N, C, ...) at integer ``target`` (N, ...)."""
    return _classification_loss(input, target, "nll_loss", False, ignore_index, reduction, label_smoothing)


def cross_entropy(input, target, *, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits ``input`` (N, C, ...) at integer ``target`` (N, ...), as PyTorch's.

    One fused operation: log-softmax and the negative log-likelihood, forward and backward.
    """
    return _classification_loss(input, target, "cross_entropy", True, ignore_index, reduction, label_smoothing)


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean (or sum, or elementwise) squared error; input and target must have one shape."""
    _check_reduction(reduction)
    input, target = full_precision(input, target)
    x, t = as_array(input), as_array(target)
    array_module(input=x, target=t)
    if tuple(x.shape) != tuple(t.shape):
        raise ValueError(f"mse_loss: input shape {tuple(x.shape)} and target shape {tuple(t.shape)} differ "
                         f"(broadcasting them is almost always a bug)")
    diff = (input if isinstance(input, Tensor) else Tensor(input)) - target
    squared = diff * diff
    return squared if reduction == "none" else squared.sum() if reduction == "sum" else squared.mean()


__all__ = ["conv1d", "conv2d", "conv_transpose2d", "pad", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
           "global_avg_pool2d", "global_max_pool2d", "max_unpool1d", "max_unpool2d", "linear", "relu",
           "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "batch_norm", "cross_entropy",
           "nll_loss", "mse_loss", "flatten"]
