"""The elementary differentiable operations behind Tensor's operators: arithmetic with NumPy's
broadcasting, matmul, exp/log/pow, sum/mean, reshape/permute, indexing, concatenation, casts and moves.

Each is a ``Function`` on arrays written once against ``xp`` (numpy or cupy, from the arrays).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._backend import array_module, to_device
from .autograd import Function, Tensor, as_array


def _xp(*arrays):
    """numpy or cupy from the array operands (numbers and NumPy's 0-d scalars count as NumPy)."""
    named = {f"operand{i}": a for i, a in enumerate(arrays) if hasattr(a, "shape") and not isinstance(a, np.generic)}
    return array_module(**named) if named else np


def _scalar(value):
    """NumPy scalars as Python numbers: a float64 scalar must not turn a float32 tensor into float64."""
    return value.item() if isinstance(value, np.generic) else value


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes broadcasting added to an operand of ``shape``."""
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, s in enumerate(shape) if s == 1 and grad.shape[i + extra] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape) if axes else grad.reshape(shape)


def _grad_for(grad, operand):
    """The gradient of one operand of a broadcasting op, in its shape and dtype (None for a constant)."""
    if not hasattr(operand, "shape"):
        return None
    return unbroadcast(grad, operand.shape).astype(operand.dtype, copy=False)


class _Binary(Function):
    def forward(self, a, b):
        a, b = _scalar(a), _scalar(b)
        self.saved = (a, b)
        return self.compute(a, b)


class Add(_Binary):
    @staticmethod
    def compute(a, b):
        return a + b

    def backward(self, grad):
        a, b = self.saved
        return (_grad_for(grad, a) if self.needs_input_grad[0] else None,
                _grad_for(grad, b) if self.needs_input_grad[1] else None)


class Sub(_Binary):
    @staticmethod
    def compute(a, b):
        return a - b

    def backward(self, grad):
        a, b = self.saved
        return (_grad_for(grad, a) if self.needs_input_grad[0] else None,
                _grad_for(-grad, b) if self.needs_input_grad[1] else None)


class Mul(_Binary):
    @staticmethod
    def compute(a, b):
        return a * b

    def backward(self, grad):
        a, b = self.saved
        return (_grad_for(grad * b, a) if self.needs_input_grad[0] else None,
                _grad_for(grad * a, b) if self.needs_input_grad[1] else None)


class Div(_Binary):
    @staticmethod
    def compute(a, b):
        return a / b

    def backward(self, grad):
        a, b = self.saved
        return (_grad_for(grad / b, a) if self.needs_input_grad[0] else None,
                _grad_for(-grad * a / (b * b), b) if self.needs_input_grad[1] else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, grad):
        return -grad


class Pow(Function):
    """a ** exponent for a constant exponent."""

    def forward(self, a):
        if not isinstance(self.exponent, numbers.Real):
            raise TypeError(f"the exponent must be a number, got {type(self.exponent).__name__}")
        self.exponent = _scalar(self.exponent)
        self.saved = a
        return a ** self.exponent

    def backward(self, grad):
        a = self.saved
        if self.exponent == 0:  # a ** 0 is constant: 0, not the NaN that 0 * a ** -1 gives at a = 0
            return _xp(grad).zeros_like(a)
        return (grad * (self.exponent * a ** (self.exponent - 1))).astype(a.dtype, copy=False)


class Exp(Function):
    def forward(self, a):
        self.saved = _xp(a).exp(a)
        return self.saved

    def backward(self, grad):
        return grad * self.saved


class Log(Function):
    def forward(self, a):
        self.saved = a
        return _xp(a).log(a)

    def backward(self, grad):
        return grad / self.saved


class MatMul(Function):
    """a @ b for 2-D operands, or a batch of matrices broadcast as NumPy's matmul does."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul takes operands of at least 2 dimensions, got {a.ndim}-D and {b.ndim}-D "
                             f"(use reshape for vectors)")
        self.saved = (a, b)
        return a @ b

    def backward(self, grad):
        a, b = self.saved
        xp = _xp(grad)
        da = _grad_for(grad @ xp.swapaxes(b, -1, -2), a) if self.needs_input_grad[0] else None
        db = _grad_for(xp.swapaxes(a, -1, -2) @ grad, b) if self.needs_input_grad[1] else None
        return da, db


def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    return tuple(a % ndim for a in axes) if ndim else ()


class Sum(Function):
    def forward(self, a):
        self.shape = a.shape
        self.axes = _normalize_axes(self.axis, a.ndim)
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, grad):
        xp = _xp(grad)
        if not self.keepdims:
            grad = grad.reshape([1 if i in self.axes else s for i, s in enumerate(self.shape)])
        # A real array, not a broadcast view: a leaf's .grad must be writable and its own.
        return xp.array(xp.broadcast_to(grad, self.shape))


class Mean(Sum):
    def forward(self, a):
        super().forward(a)
        self.count = math.prod(self.shape[i] for i in self.axes)
        return a.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, grad):
        return super().backward(grad / max(self.count, 1))


class Reshape(Function):
    def forward(self, a):
        self.input_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, grad):
        return grad.reshape(self.input_shape)


def flatten(t, start_dim: int = 0, end_dim: int = -1):
    """Merge the dimensions start_dim..end_dim (inclusive), as ``torch.flatten``."""
    shape = t.shape
    if not shape:
        return Reshape.apply(t, shape=(1,))
    start, end = start_dim % len(shape), end_dim % len(shape)
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a {len(shape)}-D input")
    # The merged size spelled out: reshape cannot infer -1 when another dimension is 0.
    new_shape = shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]
    return Reshape.apply(t, shape=new_shape)


class Permute(Function):
    def forward(self, a):
        self.axes = tuple(axis % a.ndim for axis in self.axes)  # argsort in backward needs them non-negative
        return _xp(a).transpose(a, self.axes)

    def backward(self, grad):
        return _xp(grad).transpose(grad, tuple(np.argsort(self.axes)))


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral)) for p in parts)


class GetItem(Function):
    """t[index]: basic indexing (ints, slices) or advanced (integer or boolean arrays)."""

    def forward(self, a):
        self.shape, self.dtype = a.shape, a.dtype
        return a[self.index]

    def backward(self, grad):
        xp = _xp(grad)
        out = xp.zeros(self.shape, self.dtype)
        if _is_basic_index(self.index):
            out[self.index] = grad  # basic indexing never picks an element twice
        elif xp is np:
            np.add.at(out, self.index, grad)
        else:  # repeated indices must add up, not overwrite
            import cupyx
            cupyx.scatter_add(out, self.index, grad)
        return out


class Concatenate(Function):
    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        self.dtypes = [a.dtype for a in arrays]
        return _xp(*arrays).concatenate(arrays, axis=self.axis)

    def backward(self, grad):
        xp = _xp(grad)
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(g.astype(d, copy=False) for g, d in zip(xp.split(grad, bounds, axis=self.axis), self.dtypes))


class Stack(Function):
    def forward(self, *arrays):
        self.dtypes = [a.dtype for a in arrays]
        return _xp(*arrays).stack(arrays, axis=self.axis)

    def backward(self, grad):
        xp = _xp(grad)
        axis = self.axis % grad.ndim
        return tuple(xp.take(grad, i, axis=axis).astype(d, copy=False) for i, d in enumerate(self.dtypes))


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate tensors (or arrays) along an existing dimension, as ``torch.cat``."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    return Concatenate.apply(*tensors, axis=dim)


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack tensors of one shape along a new dimension, as ``torch.stack``."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    return Stack.apply(*tensors, axis=dim)


class Cast(Function):
    def forward(self, a):
        self.input_dtype = a.dtype
        return a.astype(self.dtype, copy=False)

    def backward(self, grad):
        return grad.astype(self.input_dtype, copy=False)


class ToDevice(Function):
    def forward(self, a):
        self.input_device = "cuda" if not isinstance(a, np.ndarray) else "cpu"
        if self.input_device == "cuda":
            self.input_device = f"cuda:{a.device.id}"
        return to_device(a, self.device)

    def backward(self, grad):
        return to_device(grad, self.input_device)


__all__ = ["cat", "stack", "flatten", "unbroadcast", "as_array"]
