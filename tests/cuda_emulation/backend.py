"""The CPU emulator as a backend for gpuconv's run step (``gpuconv.cuda.conv.run_conv``, ``pool.run_pool``).

It has what ``gpuconv.cuda.backend.CupyBackend`` has: ``xp`` (NumPy standing in for CuPy, every new buffer
NaN-filled between guard zones), ``launch`` (the emulated kernel of a planned launch), ``matmul`` (float16
multiplied with float32 accumulation, as cuBLAS does under CuPy's default compute type), ``free_bytes``
and ``prepare``. The kernels are compiled by g++ from the text the loader assembles for NVRTC
(``loader.unit_source``): the same file, headers and generated export lines, but one emulated module per
kernel file holding all of that file's registered instantiations (NVRTC on a GPU gets one per variant),
so that g++ runs five times, not forty.

Every launch is recorded in ``launches``, so a test can say which kernels a plan really ran.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from gpuconv._shapes import HALF_DTYPES
from gpuconv.cuda import loader, registry

from . import emulator as emu

_modules: dict[str, emu.KernelModule] = {}


def emulated_module(source: str) -> emu.KernelModule:
    """The emulated module of one kernel file (compiled once per test session, cached on disk by content)."""
    if source not in _modules:
        unit = loader.unit_source(registry.instantiations(source))
        # Block size at most 256: the limit the kernels are written for (implicit_gemm.cuh asserts it too).
        _modules[source] = emu.load_source(f'#line 1 "{source}"\n' + unit, source, max_threads_per_block=256)
    return _modules[source]


class NumpyAsCupy:
    """The part of CuPy the run step uses, on NumPy: guarded buffers from ``empty``."""

    @staticmethod
    def empty(shape, dtype=np.float64):
        return emu.empty(shape, dtype)

    def __getattr__(self, name):
        return getattr(np, name)


class EmulatorBackend:
    name = "emulator"
    autotunable = False  # emulated time says nothing about a GPU

    def __init__(self, schedule: str = "forward", free_bytes: int = 1 << 40):
        if schedule not in ("forward", "reverse"):
            raise ValueError(f"schedule must be 'forward' or 'reverse', got {schedule!r}")
        self.schedule = schedule
        self._free = free_bytes
        self.xp = NumpyAsCupy()
        self.out_of_memory_errors = (MemoryError,)
        self.launches = []

    def prepare(self, launch) -> None:
        emulated_module(launch.variant.source)

    def launch(self, launch, args) -> None:
        if not launch.variant.emulatable:
            raise RuntimeError(f"{launch.variant.name} is registered as not runnable on the CPU emulator")
        module = emulated_module(launch.variant.source)
        module.configure(schedule=self.schedule)
        self.launches.append(launch)
        module.launch(launch.kernel_name, launch.grid, launch.block, *args, shared_mem=launch.dynamic_shared_bytes)

    @staticmethod
    def matmul(a, b):
        if a.dtype in HALF_DTYPES:  # cuBLAS: float32 accumulation, one rounding
            return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
        return np.matmul(a, b)

    def free_bytes(self) -> int:
        return self._free

    def compute_capability(self):
        return None  # emulates any GPU: no variant is excluded

    def capturing(self) -> bool:
        return False

    def device_identity(self):
        return "CPU emulator", "0.0"


def route_functional(monkeypatch, backend, algo=None) -> None:
    """Send ``gpuconv.functional``'s convolution and pooling calls to the CUDA planner and kernels, run by
    ``backend`` (an ``EmulatorBackend``): NumPy arrays stand in for CuPy arrays, and everything above the
    array API (gpuconv's autograd, the PyTorch bridge) is unchanged. ``algo`` replaces every convolution's
    own (None: keep the caller's)."""
    from gpuconv import functional
    from gpuconv.cuda import conv as cuda_conv, pool as cuda_pool

    def run_conv(pass_name, xp, call_algo, *args, precision=None):
        extra = {"allow_tf32": True} if functional._precision.allows_tf32(precision) and \
            args[0].dtype == np.float32 else {}
        return getattr(cuda_conv, pass_name)(*args, algo=call_algo if algo is None else algo, backend=backend,
                                             **extra)

    class EmulatedPool:  # gpuconv.cuda.pool's functions, with this backend
        def __getattr__(self, name):
            return functools.partial(getattr(cuda_pool, name), backend=backend)

    monkeypatch.setattr(functional, "_run_conv", run_conv)
    monkeypatch.setattr(functional, "_pool_module", lambda xp: EmulatedPool())


__all__ = ["EmulatorBackend", "NumpyAsCupy", "emulated_module", "route_functional"]


#: The emulator's two thread (and block) orders, and where buffers made meanwhile sit against their guard page:
#: forward order against the page after their end, reverse order against the one before their start.
SCHEDULES = {"forward": "end", "reverse": "start"}


@contextlib.contextmanager
def scheduled(schedule: str):
    """``with scheduled("reverse") as backend: ...``: the emulator backend in that order, buffers placed to match."""
    with emu.buffer_placement(SCHEDULES[schedule]):
        yield EmulatorBackend(schedule=schedule)
