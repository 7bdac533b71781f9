"""Module, Parameter, Sequential, ModuleList and weight files: the machinery every layer shares.

A Module is a function of tensors that holds parameters: ``forward`` is all a subclass defines, and
autograd (``gpuconv.autograd``) derives the backward of whatever it computes. A layer keeps nothing from
one call to the next, so it can be used at several places of a model, and a parameter shared between layers
(tied weights) is listed once by ``parameters()`` and receives the sum of its gradients.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections import OrderedDict, namedtuple

import numpy as np

from .._backend import array_module, as_numpy, device_of, is_device, normalize_device, to_device
from .._shapes import BFLOAT16, is_floating
from ..autograd import Tensor


class Parameter(Tensor):
    """A tensor that is a module's trainable state: it requires a gradient by default."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device='{self.device}')"


#: What ``load_state_dict`` returns, as PyTorch's: the names it expected and missed, and those it did not know.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _state_value(value):
    """A state_dict entry as an array: NumPy, CuPy, or a PyTorch tensor (copied to the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value.data if isinstance(value, Tensor) else value


class Module:
    """Base of every layer and model: parameters, buffers, submodules, modes, devices and weight files.

    Attributes that are Parameters, Modules or registered buffers make up the module, in the order they
    were assigned (as in PyTorch), and so do their names in ``state_dict``.
    """

    def __init__(self):
        self.training = True
        self._buffer_names = []

    # -- structure -------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return [child for _, child in self.named_children()]

    def named_modules(self, prefix: str = "", memo=None):
        """This module and every submodule once, depth first, with dotted names."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def _own_parameters(self):
        return [(name, v) for name, v in vars(self).items() if isinstance(v, Parameter)]

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(name, parameter) for every parameter once: a tied weight under the first name it was found."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, p in module._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self, recurse: bool = True) -> list:
        return [p for _, p in self.named_parameters(recurse=recurse)]

    def register_buffer(self, name: str, array) -> None:
        """A non-trainable array that belongs in state_dict (running statistics, counters)."""
        if name not in self._buffer_names:
            self._buffer_names.append(name)
        setattr(self, name, array)

    def named_buffers(self, prefix: str = ""):
        for module_name, module in self.named_modules(prefix):
            for name in getattr(module, "_buffer_names", ()):
                yield (f"{module_name}.{name}" if module_name else name), getattr(module, name)

    def buffers(self) -> list:
        return [b for _, b in self.named_buffers()]

    def zero_grad(self, set_to_none: bool = True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:  # zeros, not grad * 0: that would keep NaN and turn inf into NaN
                p.grad = array_module(grad=p.grad).zeros_like(p.grad)

    def requires_grad_(self, requires_grad: bool = True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn):
        """Call ``fn`` on every submodule (children first) and on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- modes and devices ------------------------------------------------
    def train(self, mode: bool = True):
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def _map_arrays(self, fn, floating_only: bool):
        """Apply ``fn`` to every parameter (in place: optimizers keep their references) and buffer."""
        for p in self.parameters():
            p.data = fn(p.data)
            if p.grad is not None:
                p.grad = fn(p.grad)
        for _, module in self.named_modules():
            for name in getattr(module, "_buffer_names", ()):
                value = getattr(module, name)
                if not floating_only or is_floating(value.dtype):
                    setattr(module, name, fn(value))

    def to(self, target):
        """Move to a device ('cpu', 'cuda', 'cuda:1', 'auto') or cast to a floating dtype; returns self.

        A cast changes the parameters and floating buffers; integer buffers (``num_batches_tracked``) stay.
        """
        if is_device(target):
            device = normalize_device(target)
            self._map_arrays(lambda a: to_device(a, device), floating_only=False)
        else:
            dtype = np.dtype(target)
            if not is_floating(dtype):
                raise TypeError(f"a module can only be cast to a floating dtype, got {dtype}")
            self._map_arrays(lambda a: a.astype(dtype), floating_only=True)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device: int | None = None):
        return self.to("cuda" if device is None else f"cuda:{device}")

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    @property
    def device(self) -> str:
        arrays = [p.data for p in self.parameters()] + self.buffers()
        return device_of(arrays[0]) if arrays else "cpu"

    # -- calls -------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(): a Module subclass computes its "
                                  f"output in forward(self, ...), and autograd derives the backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- weights -----------------------------------------------------------
    def _state_entries(self, prefix: str = ""):
        """(name, owner, attribute) of every parameter and buffer, module by module as PyTorch orders them.

        A tied weight appears under each of its names, as in PyTorch's state_dict.
        """
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, self, name
        for name in getattr(self, "_buffer_names", ()):
            yield prefix + name, self, name
        for name, child in self.named_children():
            yield from child._state_entries(f"{prefix}{name}.")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and buffer by dotted name, as NumPy copies."""
        state = OrderedDict()
        for name, owner, attr in self._state_entries():
            value = getattr(owner, attr)
            state[name] = as_numpy(value.data if isinstance(value, Tensor) else value).copy()
        return state

    def load_state_dict(self, state, strict: bool = True) -> IncompatibleKeys:
        """Load arrays by name (NumPy, CuPy or PyTorch tensors), each onto the device of the array it replaces.

        Shapes and dtypes must match. With ``strict`` (the default) the names must match exactly; with
        ``strict=False`` missing and unexpected names are returned rather than refused.
        """
        entries = {name: (owner, attr) for name, owner, attr in self._state_entries()}
        missing = [n for n in entries if n not in state]
        unexpected = [n for n in state if n not in entries]
        if strict and (missing or unexpected):
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {unexpected}")
        values = {}
        for name, (owner, attr) in entries.items():
            if name not in state:
                continue
            current = getattr(owner, attr)
            current = current.data if isinstance(current, Tensor) else current
            value = _state_value(state[name])
            if tuple(value.shape) != tuple(current.shape) or np.dtype(value.dtype) != np.dtype(current.dtype):
                raise ValueError(f"{name}: expected shape {tuple(current.shape)} dtype {current.dtype}, "
                                 f"got shape {tuple(value.shape)} dtype {value.dtype}")
            values[name] = array_module(current=current).asarray(value).copy()
        for name, value in values.items():  # only once every entry was checked: no half-loaded model
            owner, attr = entries[name]
            current = getattr(owner, attr)
            if isinstance(current, Tensor):
                current.data = value
            else:
                setattr(owner, attr, value)
        return IncompatibleKeys(missing, unexpected)

    def save(self, path, metadata: dict | None = None) -> None:
        """Write the weights to ``path`` (.npz), atomically: a crash never leaves half a file.

        ``metadata`` (JSON-serialisable: architecture, input shape, classes...) is stored beside them in the
        entry ``__metadata__``; ``read_metadata`` reads it back.
        """
        arrays = self.state_dict()
        if metadata is not None:
            arrays[METADATA] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
        save_arrays(path, arrays)

    def load(self, path) -> None:
        """Read weights written by ``save``; refuses mismatched or damaged files with a clear error."""
        arrays = load_arrays(path)
        arrays.pop(METADATA, None)
        self.load_state_dict(arrays)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): {child!r}".replace("\n", "\n  ") for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


#: The entry of a weights file that holds its metadata (JSON as bytes).
METADATA = "__metadata__"


def read_metadata(path) -> dict | None:
    """The metadata ``Module.save`` stored in a weights file, or None if it has none."""
    arrays = load_arrays(path)
    if METADATA not in arrays:
        return None
    try:
        return json.loads(arrays[METADATA].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged metadata in the weights file ({exc})") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: .npy has no bfloat16: such an array is saved as its uint16 bits under its name plus this suffix.
BFLOAT16_SUFFIX = "::bfloat16"


def _to_npz(arrays) -> dict:
    return {(name + BFLOAT16_SUFFIX if a.dtype == BFLOAT16 else name): (a.view(np.uint16) if a.dtype == BFLOAT16
                                                                        else a)
            for name, a in ((name, np.asarray(a)) for name, a in arrays.items())}


def _from_npz(name: str, a: np.ndarray):
    if name.endswith(BFLOAT16_SUFFIX) and a.dtype == np.uint16:
        return name[:-len(BFLOAT16_SUFFIX)], a.view(BFLOAT16)
    return name, a


def save_arrays(path, arrays) -> None:
    """np.savez into a temporary file beside ``path``, then an atomic rename.

    The file gets the usual permissions (0666 less the umask), not the 0600 of a temporary file. bfloat16
    arrays are stored as their bits (``BFLOAT16_SUFFIX``) and come back as bfloat16 from ``load_arrays``.
    """
    arrays = _to_npz(arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
            return OrderedDict(_from_npz(name, data[name]) for name in data.files)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc


class _ModuleSequence(Module):
    """Modules held in order under the names "0", "1", ...: what Sequential and ModuleList share."""

    def append(self, module: Module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__} holds Modules, got {type(module).__name__} at position "
                            f"{len(self)}")
        setattr(self, str(len(self)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return type(self)._of(self.children()[i])
        return self.children()[i]

    def __len__(self):
        return len(self.children())

    def __iter__(self):
        return iter(self.children())


class Sequential(_ModuleSequence):
    """Modules applied in order."""

    def __init__(self, *layers):
        super().__init__()
        self.extend(layers)

    @classmethod
    def _of(cls, modules):
        return cls(*modules)

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


class ModuleList(_ModuleSequence):
    """A list of modules that belong to the model (their parameters, state and modes); no forward of its own."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    @classmethod
    def _of(cls, modules):
        return cls(modules)
