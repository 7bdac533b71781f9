"""Where a plan runs: the backend hands the run step its array module, kernels and free memory.

``CupyBackend`` is the real GPU: CuPy arrays, kernels compiled by NVRTC through ``cupy.RawModule``
(``loader.get_kernel``), cuBLAS GEMMs through ``cupy.matmul``. The tests hand the run step another
backend with the same methods, the CPU emulator (``tests/cuda_emulation/backend.py``), explicitly.
"""
from __future__ import annotations

import functools

from .._backend import require_cuda
from .._shapes import BFLOAT16
from . import loader
from .plan import KernelLaunch

#: Dynamic shared memory a kernel may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
DEFAULT_DYNAMIC_SHARED_LIMIT = 48 * 1024


def available_device_bytes(cupy) -> int:
    """What a new allocation can still get: free device memory plus the blocks CuPy's pool holds unused,
    within the pool's limit when one is set (``cupy.get_default_memory_pool().set_limit``)."""
    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    available = free + pool.free_bytes()
    limit = pool.get_limit()
    if limit:
        available = min(available, limit - pool.used_bytes())
    return max(0, int(available))


@functools.lru_cache(maxsize=None)
def _identity(cupy, device_id: int) -> tuple[str, str]:
    """Cached per device: getDeviceProperties is slow, and a device's name does not change."""
    name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    cc = str(cupy.cuda.Device(device_id).compute_capability)
    return name, f"{cc[:-1]}.{cc[-1]}"


class CupyBackend:
    """The current CUDA device, through CuPy."""

    name = "cuda"
    autotunable = True  # timings mean something here

    def __init__(self):
        self.xp = require_cuda()
        self.out_of_memory_errors = (self.xp.cuda.memory.OutOfMemoryError,)

    def launch(self, launch: KernelLaunch, args) -> None:
        kernel = loader.get_kernel(launch.variant, launch.dtype)
        if launch.dynamic_shared_bytes > DEFAULT_DYNAMIC_SHARED_LIMIT:
            kernel.max_dynamic_shared_size_bytes = launch.dynamic_shared_bytes
        kernel(launch.grid, launch.block, tuple(args), shared_mem=launch.dynamic_shared_bytes)

    def prepare(self, launch: KernelLaunch) -> None:
        """Compile (or load from CuPy's cache) the kernel of a launch ahead of timing it."""
        loader.get_kernel(launch.variant, launch.dtype)

    def matmul(self, a, b):
        if a.dtype == BFLOAT16:  # CuPy's bfloat16 matmul support is partial: float32 GEMM, rounded once
            return self.xp.matmul(a.astype(self.xp.float32), b.astype(self.xp.float32)).astype(a.dtype)
        return self.xp.matmul(a, b)

    def free_bytes(self) -> int:
        return available_device_bytes(self.xp)

    def compute_capability(self) -> int:
        """The current device's, as 90 for 9.0 (what Variant.min_compute_capability is compared with)."""
        return int(self.xp.cuda.Device().compute_capability)

    def device_identity(self) -> tuple[str, str]:
        """(device name, compute capability "9.0") of the current device: part of the autotuner's key."""
        return _identity(self.xp, self.xp.cuda.Device().id)

    def capturing(self) -> bool:
        """Whether the current stream is being captured into a CUDA graph (no timing, no sync then)."""
        return bool(self.xp.cuda.get_current_stream().is_capturing())

    def timer(self):
        """A function timing ``fn()`` on the current stream with CUDA events, in seconds."""
        cupy = self.xp

        def time(fn) -> float:
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return cupy.cuda.get_elapsed_time(start, stop) / 1e3
        return time


@functools.lru_cache(maxsize=None)
def default_backend() -> CupyBackend:
    return CupyBackend()


def resolve_backend(backend=None):
    """``backend``, or the GPU's when None."""
    return default_backend() if backend is None else backend


__all__ = ["CupyBackend", "default_backend", "resolve_backend", "available_device_bytes",
           "DEFAULT_DYNAMIC_SHARED_LIMIT"]
