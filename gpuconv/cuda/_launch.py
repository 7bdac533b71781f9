"""Launch arguments and limits shared by the conv and pool modules.

CuPy's RawKernel passes each argument as its NumPy type and does not check it
against the kernel's C signature, so every ``int`` parameter is passed as
``numpy.int32`` and every ``long long`` as ``numpy.int64`` -- built only here.
"""
from __future__ import annotations

import numpy as np

from .registry import DTYPE_INFO

INT32_MAX = 2**31 - 1
GRID_YZ_MAX = 65535


def int32(*values: int) -> tuple:
    """Arguments for ``int`` parameters, refusing values the kernels cannot index with."""
    for v in values:
        if not -INT32_MAX - 1 <= int(v) <= INT32_MAX:
            raise ValueError(f"{v} does not fit the 32-bit int a kernel parameter holds; the shape is too large")
    return tuple(np.int32(v) for v in values)


def int64(value: int) -> np.int64:
    """An argument for a ``long long`` parameter."""
    return np.int64(value)


def check_extents(what: str, **extents: int) -> None:
    """The kernels index planes and reductions with 32-bit ints: refuse shapes where one exceeds that."""
    for name, value in extents.items():
        if value > INT32_MAX:
            raise ValueError(f"{what}: {name} = {value} exceeds 2**31 - 1, which gpuconv's CUDA kernels "
                             f"index with 32-bit ints; split the input")


def check_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    if grid[0] > INT32_MAX or any(d > GRID_YZ_MAX for d in grid[1:]):
        raise ValueError(f"{what}: launch grid {grid} exceeds CUDA's limits (x < 2**31, y and z <= 65535)")
    return grid


def kernel_operands(xp, **arrays) -> list:
    """C-contiguous versions of the arrays (``xp``: cupy, or the emulator's stand-in), after checking they
    share one dtype some kernel is instantiated for (``registry.DTYPE_INFO``; each plan checks its own)."""
    dtypes = {np.dtype(a.dtype) for a in arrays.values()}
    if len(dtypes) != 1 or not dtypes <= DTYPE_INFO.keys():
        given = ", ".join(f"{name} {a.dtype}" for name, a in arrays.items())
        names = ", ".join(str(d) for d in DTYPE_INFO)
        raise TypeError(f"the CUDA kernels need arrays of one dtype, one of {names}; got {given}")
    return [xp.ascontiguousarray(a) for a in arrays.values()]
