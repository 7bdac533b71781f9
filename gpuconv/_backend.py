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
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
    if not kinds:
        raise TypeError("no array given")
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{n} on {'CPU (numpy)' if k == 'numpy' else 'GPU ' + k[5:] + ' (cupy)'}"
                          for n, k in kinds.items())
        raise TypeError(f"arrays are on different devices: {where}; move them to one device first")
    return np if next(iter(kinds.values())) == "numpy" else cupy_module()


def device_of(array) -> str:
    return "cuda" if is_cupy_array(array) else "cpu"


def normalize_device(device: str) -> str:
    """'cpu', 'cuda' or 'auto' -> 'cpu' or 'cuda' (raising if CUDA is asked for and unusable)."""
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda":
        require_cuda()
    return device


def to_device(array, device: str):
    """Copy an array to 'cpu' (NumPy) or 'cuda' (CuPy); a no-op when it is there already."""
    device = normalize_device(device)
    if device == "cpu":
        return array.get() if is_cupy_array(array) else np.asarray(array)
    cupy = require_cuda()
    return cupy.asarray(array)


def as_numpy(array):
    return array.get() if is_cupy_array(array) else np.asarray(array)
