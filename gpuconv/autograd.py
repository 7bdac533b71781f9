"""Define-by-run autograd: ``Tensor``, the ``Function`` every differentiable operation is, and ``backward``.

An operation whose inputs include a tensor that requires a gradient records itself as the creator of its
output: the graph is the chain of creators, built as the code runs (Chainer's and PyTorch's design; DeZero
shows it small). ``loss.backward()`` walks the graph once in topological order, so a tensor used twice
(a reused layer, a tied weight) gets the sum of its gradients, then frees what the graph kept for it.
Under ``no_grad()``, or when no input requires a gradient, nothing is recorded and nothing is kept alive.

``Tensor.data`` is the NumPy or CuPy array itself, and so is ``.grad``: the arrays decide the device, as in
the functional API.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from ._backend import array_module, as_numpy, device_of, is_cupy_array, is_device, normalize_device, to_device
from ._shapes import is_floating


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _grad_mode.enabled


@contextlib.contextmanager
def _set_grad_enabled(mode: bool):
    previous = _grad_mode.enabled
    _grad_mode.enabled = mode
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def no_grad():
    """Context manager (or decorator) under which no operation records a backward."""
    return _set_grad_enabled(False)


def enable_grad():
    return _set_grad_enabled(True)


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def _differentiable(dtype) -> bool:
    """Floating (bfloat16 included, whose NumPy kind is "V") or complex."""
    return is_floating(dtype) or np.dtype(dtype).kind == "c"


class Tensor:
    """A NumPy or CuPy array (``.data``) that can record the operations made from it.

    ``requires_grad=True`` on a leaf (a tensor no recorded operation made) asks ``backward`` to accumulate
    d output / d leaf into ``.grad``, an array of the leaf's shape, dtype and device.
    """

    # NumPy and CuPy operators defer to ours (ndarray + Tensor records, rather than turning into an array).
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        elif not _is_array(data):
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self._creator = None  # the Function that made this tensor, when it was recorded
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- what it is ----------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._creator is None

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        where = "" if self.device == "cpu" else f", device='{self.device}'"
        return f"tensor({as_numpy(self.data)!r}{where}{grad})"

    # -- conversions ---------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array: the array itself on the CPU, a copy from the GPU."""
        return as_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item() if not is_cupy_array(self.data) else self.data.item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        if is_cupy_array(self.data):
            raise TypeError("this tensor lives on the GPU; call .numpy() to copy it to the CPU")
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def detach(self) -> "Tensor":
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True) -> "Tensor":
        if mode and not _differentiable(self.data.dtype):
            raise TypeError(f"only floating tensors can require a gradient, got dtype {self.data.dtype}")
        if not mode and self._creator is not None:
            raise RuntimeError("requires_grad can only be turned off on a leaf tensor; use .detach()")
        self.requires_grad = bool(mode)
        return self

    def to(self, target) -> "Tensor":
        """A copy on another device ('cpu', 'cuda', 'cuda:1', 'auto'), or cast to another dtype (recorded)."""
        if is_device(target):
            device = normalize_device(target)
            if device == self.device:
                return self
            from .ops import ToDevice
            return ToDevice.apply(self, device=device)
        return self.astype(target)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> "Tensor":
        return self.to("cuda" if device is None else f"cuda:{device}")

    def astype(self, dtype) -> "Tensor":
        from .ops import Cast
        return Cast.apply(self, dtype=np.dtype(dtype))

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    # -- backward -------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d self / d leaf into every leaf's ``.grad`` that requires one.

        ``grad`` defaults to 1 for a one-element tensor. The graph's saved arrays are freed afterwards unless
        ``retain_graph``; a second backward through a freed graph is an error, not a silent zero.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require a gradient: no input of the "
                               "operations that made it requires one (or they ran under no_grad())")
        xp = array_module(tensor=self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element output, got shape "
                                   f"{self.shape}; pass grad= of that shape")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = xp.array(grad, dtype=self.data.dtype)  # a copy: the caller's array never becomes a .grad
            if grad.shape != self.data.shape:
                raise ValueError(f"grad has shape {tuple(grad.shape)}, the tensor {self.shape}")
        run_backward(self, grad, retain_graph)

    # -- arithmetic, reductions and shapes (gpuconv.ops) -----------------------
    def __add__(self, other):
        from .ops import Add
        return Add.apply(self, other)

    def __radd__(self, other):
        from .ops import Add
        return Add.apply(other, self)

    def __sub__(self, other):
        from .ops import Sub
        return Sub.apply(self, other)

    def __rsub__(self, other):
        from .ops import Sub
        return Sub.apply(other, self)

    def __mul__(self, other):
        from .ops import Mul
        return Mul.apply(self, other)

    def __rmul__(self, other):
        from .ops import Mul
        return Mul.apply(other, self)

    def __truediv__(self, other):
        from .ops import Div
        return Div.apply(self, other)

    def __rtruediv__(self, other):
        from .ops import Div
        return Div.apply(other, self)

    def __neg__(self):
        from .ops import Neg
        return Neg.apply(self)

    def __pow__(self, exponent):
        from .ops import Pow
        return Pow.apply(self, exponent=exponent)

    def __matmul__(self, other):
        from .ops import MatMul
        return MatMul.apply(self, other)

    def __rmatmul__(self, other):
        from .ops import MatMul
        return MatMul.apply(other, self)

    def __getitem__(self, index):
        from .ops import GetItem
        return GetItem.apply(self, index=index.data if isinstance(index, Tensor) else index)

    def exp(self):
        from .ops import Exp
        return Exp.apply(self)

    def log(self):
        from .ops import Log
        return Log.apply(self)

    def sqrt(self):
        return self ** 0.5

    def sum(self, axis=None, keepdims: bool = False, *, dim=None):
        from .ops import Sum
        return Sum.apply(self, axis=_axis(axis, dim), keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False, *, dim=None):
        from .ops import Mean
        return Mean.apply(self, axis=_axis(axis, dim), keepdims=keepdims)

    def reshape(self, *shape):
        from .ops import Reshape
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        from .ops import flatten
        return flatten(self, start_dim, end_dim)

    def transpose(self, dim0: int, dim1: int):
        from .ops import Permute
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return Permute.apply(self, axes=tuple(axes))

    def permute(self, *axes):
        from .ops import Permute
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    def unsqueeze(self, dim: int):
        shape = list(self.shape)
        shape.insert(dim if dim >= 0 else len(shape) + dim + 1, 1)
        return self.reshape(tuple(shape))

    def squeeze(self, dim: int | None = None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        shape = list(self.shape)
        if shape[dim] == 1:
            del shape[dim]
        return self.reshape(tuple(shape))

    def argmax(self, axis=None, *, dim=None):
        return Tensor(self.data.argmax(axis=_axis(axis, dim)))

    def relu(self):
        from .nn import functional as F
        return F.relu(self)


def _axis(axis, dim):
    if axis is not None and dim is not None:
        raise TypeError("give axis or dim, not both")
    return dim if axis is None else axis


def tensor(data, requires_grad: bool = False, dtype=None, device: str | None = None) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (an array, a list or a number)."""
    data = data.data if isinstance(data, Tensor) else data
    xp = array_module(data=data) if _is_array(data) else np
    array = xp.array(data, dtype=dtype)
    if device is not None:
        array = to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)


def as_array(value):
    """The array behind a tensor, or the value itself."""
    return value.data if isinstance(value, Tensor) else value


class Function:
    """One differentiable operation: ``forward`` on arrays, ``backward`` from the output's gradient.

    Subclasses take their non-tensor arguments as keywords of ``apply`` (stored as attributes) and may
    save what backward needs with ``self.saved = ...``; ``self.needs_input_grad[i]`` says whether input i
    wants a gradient, so that backward computes (and forward keeps) only what is asked for. ``backward``
    returns one gradient (or None) per positional input.
    """

    inputs: tuple = ()
    needs_input_grad: tuple = ()

    def __init__(self, **params):
        for name, value in params.items():
            setattr(self, name, value)

    @classmethod
    def apply(cls, *inputs, **params) -> Tensor:
        fn = cls(**params)
        fn.needs_input_grad = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        recording = _grad_mode.enabled and any(fn.needs_input_grad)
        if not recording:
            fn.needs_input_grad = (False,) * len(inputs)
        out = fn.forward(*(t.data if isinstance(t, Tensor) else t for t in inputs))
        result = Tensor(out)
        if recording and _differentiable(result.dtype):
            # Leaves are kept (backward fills their .grad); of a recorded tensor only its place in the graph:
            # its array is kept only if the Function saved it.
            fn.inputs = tuple(None if not isinstance(t, Tensor) else t if t._creator is None else _Edge(t)
                              for t in inputs)
            result.requires_grad = True
            result._creator = fn
        return result

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def release(self) -> None:
        """Drop the inputs and saved arrays (after backward): the graph then holds no memory."""
        self.inputs = None
        self.__dict__.pop("saved", None)

    def __repr__(self):
        return f"<{type(self).__name__} backward>"


class _Edge:
    """What the graph needs of a recorded (non-leaf) input: its creator, shape and dtype, not its array."""

    __slots__ = ("_creator", "shape", "dtype")
    requires_grad = True

    def __init__(self, t: Tensor):
        self._creator, self.shape, self.dtype = t._creator, t.shape, t.dtype


def _graph_order(root: Function) -> list:
    """The recorded Functions reachable from ``root``, each after every Function that uses its output."""
    order, seen = [], {id(root)}
    stack = [(root, _parents(root))]
    while stack:
        fn, parents = stack[-1]
        for parent in parents:
            if id(parent) not in seen:
                seen.add(id(parent))
                stack.append((parent, _parents(parent)))
                break
        else:
            stack.pop()
            order.append(fn)
    order.reverse()
    return order


def _parents(fn: Function):
    if fn.inputs is None:
        raise RuntimeError("backward through a graph a second time, after its saved arrays were freed; call "
                           "backward(retain_graph=True) the first time to keep them")
    return iter([t._creator for t in fn.inputs if t is not None and t.requires_grad and t._creator is not None])


def _accumulate(held, grad):
    total = grad if held is None else held + grad
    # NumPy turns 0-d results into scalars; a gradient stays an array (of a one-element tensor's shape).
    return np.asarray(total) if isinstance(total, np.generic) else total


def run_backward(root: Tensor, grad, retain_graph: bool = False) -> None:
    if root._creator is None:  # a leaf: d leaf / d leaf
        root.grad = _accumulate(root.grad, grad)
        return
    pending = {id(root._creator): grad}  # d root / d (each Function's output), summed over its uses
    given_to_leaves = set()  # ids of the arrays made a leaf's .grad in this pass
    with no_grad():
        for fn in _graph_order(root._creator):
            out_grad = pending.pop(id(fn), None)
            if out_grad is None:
                continue
            grads = fn.backward(out_grad)
            del out_grad  # freed as soon as it is used: the peak of a backward pass is one gradient lower
            if not isinstance(grads, tuple):
                grads = (grads,)
            for t, g, wanted in zip(fn.inputs, grads, fn.needs_input_grad):
                if not wanted or g is None:
                    continue
                g = np.asarray(g) if isinstance(g, np.generic) else g
                if tuple(g.shape) != t.shape or g.dtype != t.dtype:
                    raise AssertionError(f"{type(fn).__name__}.backward gave a {g.dtype} gradient of shape "
                                         f"{tuple(g.shape)} for a {t.dtype} input of shape {t.shape}")
                if t._creator is not None:
                    pending[id(t._creator)] = _accumulate(pending.get(id(t._creator)), g)
                elif t.grad is None:
                    # A leaf's .grad is its own array: never one another leaf holds, nor a view into one.
                    if id(g) in given_to_leaves or getattr(g, "base", None) is not None:
                        g = g.copy()
                    t.grad = g
                    given_to_leaves.add(id(g))
                else:
                    t.grad = _accumulate(t.grad, g)
            grads = g = None
            if not retain_graph:
                fn.release()


__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "as_array"]
