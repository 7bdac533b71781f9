"""Which device an array lives on, and whether CUDA is usable here.

Arrays decide the device: NumPy in, NumPy out; CuPy in, CuPy out. CuPy is
optional: without it (or without a GPU) everything on the CPU still works and
asking for CUDA raises ``CUDAUnavailableError`` with the reason.
"""
from __future__ import annotations

import functools

import numpy as np


class CUDAUnavailableError(RuntimeError):
    """CUDA was asked for but cannot be used on this machine."""


class GPUOutOfMemoryError(MemoryError):
    """A GPU computation cannot fit in the memory that is free; the message says how many bytes of each."""


@functools.lru_cache(maxsize=None)
def _import_cupy():
    """(cupy module or None, reason string when unusable)."""
    try:
        import cupy
    except ImportError as exc:
        return None, (f"CuPy is not installed ({exc}); install gpuconv with the cuda12 or cuda13 extra, "
                      f"e.g. pip install 'gpuconv[cuda13]'")
    except Exception as exc:  # a broken CuPy install must not break the CPU path
        return None, f"CuPy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return cupy, f"CuPy is installed but no CUDA device is usable: {type(exc).__name__}: {exc}"
    if count < 1:
        return cupy, "CuPy is installed but no CUDA device is present"
    return cupy, None


def cupy_module():
    """The cupy module if it imports, else None (a GPU may still be absent)."""
    return _import_cupy()[0]


def cuda_available() -> bool:
    return _import_cupy()[1] is None


def cuda_unavailable_reason() -> str | None:
    return _import_cupy()[1]


def require_cuda():
    """Return cupy, or raise one clear error saying why CUDA cannot be used."""
    cupy, reason = _import_cupy()
    if reason is not None:
        raise CUDAUnavailableError(f"CUDA requested but unavailable: {reason}")
    return cupy


def is_cupy_array(array) -> bool:
    cupy = cupy_module()
    return cupy is not None and isinstance(array, cupy.ndarray)


def array_module(**arrays):
    """numpy or cupy, from the named arrays (None entries skipped).

    Raises TypeError on anything that is not an ndarray, on a mix of NumPy and
    CuPy arrays, and on CuPy arrays that live on different GPUs.
    """
    kinds = {}
    for name, a in arrays.items():
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            kinds[name] = "numpy"
        elif is_cupy_array(a):
            kinds[name] = f"cupy:{a.device.id}"
        else:
            hint = (": a gpuconv.Tensor here takes its array, tensor.data" if hasattr(a, "requires_grad")
                    and hasattr(a, "data") else "")
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}{hint}")
    if not kinds:
        raise TypeError("no array given")
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{n} on {'CPU (numpy)' if k == 'numpy' else 'GPU ' + k[5:] + ' (cupy)'}"
                          for n, k in kinds.items())
        raise TypeError(f"arrays are on different devices: {where}; move them to one device first")
    return np if next(iter(kinds.values())) == "numpy" else cupy_module()


def device_of(array) -> str:
    """'cpu', or 'cuda:N' for a CuPy array on GPU N (PyTorch's device strings)."""
    return f"cuda:{array.device.id}" if is_cupy_array(array) else "cpu"


def is_device(target) -> bool:
    """Whether ``target`` names a device (a string or a torch.device) rather than a dtype."""
    return isinstance(target, str) or type(target).__name__ == "device"


def normalize_device(device) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (or a torch.device) -> 'cpu' or 'cuda:N'.

    'cuda' is the current GPU; asking for CUDA where it is unusable, or for a GPU that is not there, raises.
    """
    if is_device(device) and not isinstance(device, str):  # a torch.device
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:0', got {device!r}")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return device
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    cupy = require_cuda()
    if not index:
        return f"cuda:{cupy.cuda.runtime.getDevice()}"
    count = cupy.cuda.runtime.getDeviceCount()
    if int(index) >= count:
        raise CUDAUnavailableError(f"device {device!r} asked for, but this machine has {count} GPU(s): "
                                   f"cuda:0..cuda:{count - 1}")
    return f"cuda:{int(index)}"


def to_device(array, device: str):
    """Copy an array to 'cpu' (NumPy) or a GPU (CuPy); a no-op when it is there already."""
    device = normalize_device(device)
    if device == "cpu":
        return array.get() if is_cupy_array(array) else np.asarray(array)
    cupy = require_cuda()
    with cupy.cuda.Device(int(device.partition(":")[2])):
        return cupy.asarray(array)


def as_numpy(array):
    return array.get() if is_cupy_array(array) else np.asarray(array)
