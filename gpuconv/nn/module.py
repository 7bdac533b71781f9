"""Module, Parameter, Sequential and weight files: the machinery every layer shares.

A layer keeps what its backward pass needs from its forward pass; ``backward``
returns the input gradient and *accumulates* parameter gradients (as PyTorch
does), so optimizers call ``zero_grad`` between steps.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

from .._backend import array_module, as_numpy, device_of, normalize_device, to_device


class Parameter:
    """A trainable array and its gradient, on the device the array lives on."""

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self):
        self.grad = None

    def accumulate(self, grad):
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base of every layer: parameters, buffers, children, modes, devices and weight files."""

    def __init__(self):
        self.training = True

    # -- structure -------------------------------------------------------
    def _children(self):
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self._children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    #: names of non-trainable arrays that belong in state_dict (running statistics)
    _buffers: tuple = ()

    def named_buffers(self, prefix: str = ""):
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for name, child in self._children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    # -- modes and devices ------------------------------------------------
    def train(self, mode: bool = True):
        self.training = mode
        for _, child in self._children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def _map_arrays(self, fn):
        for p in self.parameters():
            p.data = fn(p.data)
            if p.grad is not None:
                p.grad = fn(p.grad)
        self._map_buffers(fn)

    def _map_buffers(self, fn):
        for name in self._buffers:
            setattr(self, name, fn(getattr(self, name)))
        for _, child in self._children():
            child._map_buffers(fn)

    def to(self, target):
        """Move to a device ('cpu', 'cuda', 'auto') or cast to a floating dtype; returns self."""
        if isinstance(target, str):
            device = normalize_device(target)
            self._map_arrays(lambda a: to_device(a, device))
        else:
            dtype = np.dtype(target)
            if dtype.kind != "f":
                raise TypeError(f"a module can only be cast to a floating dtype, got {dtype}")
            self._map_arrays(lambda a: a.astype(dtype))
        return self

    @property
    def device(self) -> str:
        arrays = [p.data for p in self.parameters()] + [a for _, a in self.named_buffers()]
        return device_of(arrays[0]) if arrays else "cpu"

    # -- calls -------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- weights -----------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and buffer by dotted name, as NumPy copies."""
        state = OrderedDict((name, as_numpy(p.data).copy()) for name, p in self.named_parameters())
        state.update((name, as_numpy(a).copy()) for name, a in self.named_buffers())
        return state

    def load_state_dict(self, state) -> None:
        """Load arrays by name; names, shapes and dtypes must match the model exactly."""
        targets = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = list(targets) + list(buffers)
        missing = [n for n in expected if n not in state]
        unexpected = [n for n in state if n not in targets and n not in buffers]
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {unexpected}")
        for name in expected:
            current = targets[name].data if name in targets else buffers[name]
            value = state[name]
            if tuple(value.shape) != tuple(current.shape) or np.dtype(value.dtype) != np.dtype(current.dtype):
                raise ValueError(f"{name}: expected shape {tuple(current.shape)} dtype {current.dtype}, "
                                 f"got shape {tuple(value.shape)} dtype {value.dtype}")
        for name in expected:
            xp = array_module(current=targets[name].data if name in targets else buffers[name])
            value = xp.asarray(state[name]).copy()
            if name in targets:
                targets[name].data = value
            else:
                owner, attr = self._owner_of(name)
                setattr(owner, attr, value)

    def _owner_of(self, dotted: str):
        *path, attr = dotted.split(".")
        owner = self
        for part in path:
            owner = getattr(owner, part)
        return owner, attr

    def save(self, path) -> None:
        """Write the weights to ``path`` (.npz), atomically: a crash never leaves half a file."""
        save_arrays(path, self.state_dict())

    def load(self, path) -> None:
        """Read weights written by ``save``; refuses mismatched or damaged files with a clear error."""
        self.load_state_dict(load_arrays(path))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = self._children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): {child!r}".replace("\n", "\n  ") for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def save_arrays(path, arrays) -> None:
    """np.savez into a temporary file beside ``path``, then an atomic rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_arrays(path, what: str = "gpuconv weight file") -> "OrderedDict[str, np.ndarray]":
    """Every array of an .npz file, never unpickling; a damaged file is a ValueError naming it."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array has no names to load by
            raise ValueError(f"a single {data.dtype} array of shape {data.shape} (.npy), not an .npz archive")
        with data:
            return OrderedDict((name, data[name]) for name in data.files)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Modules, got {type(layer).__name__} at position {i}")
            setattr(self, str(i), layer)
        self._layers = list(layers)

    def __getitem__(self, i):
        return self._layers[i]

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def forward(self, x):
        for layer in self._layers:
            x = layer.forward(x)
        return x

    def backward(self, grad):
        for layer in reversed(self._layers):
            grad = layer.backward(grad)
        return grad
