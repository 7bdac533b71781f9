"""How a call is timed: the first call apart, then warm-up, then the median of many runs.

GPU (``CudaTimer``): each timed run is bracketed by CUDA events recorded on the
current stream, so the figure is device time. Before each run the L2 cache is
flushed (a write over twice its size), so a small layer cannot be timed out of
the cache the previous run left warm, and a short sleep kernel holds the GPU
while the host enqueues the call: Python's per-call overhead (argument checks,
dispatch) then falls outside the events instead of showing up as idle device
time between them. The host time of each call is still reported (``host_ms``);
when it exceeds the sleep, the run was launch-bound and ``host_bound`` says so.

CPU (``CpuTimer``): ``time.perf_counter`` around each call.

Both repeat until at least ``min_runs`` runs and ``min_time_s`` of measured
time, stop at ``max_runs``, and give up adding runs after ``max_time_s`` of
wall time once ``floor_runs`` are in (``capped`` marks that: huge layers).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TimingPolicy:
    min_runs: int = 20
    min_time_s: float = 0.2
    max_runs: int = 10_000
    max_time_s: float = 5.0
    floor_runs: int = 3
    warmup_runs: int = 3
    flush_l2: bool = True  # GPU only
    device_warmup_s: float = 1.0  # GPU only: busy the card this long first, so its clocks are up

    def as_dict(self) -> dict:
        return asdict(self)


GPU_POLICY = TimingPolicy()
# The CPU paths are slow and the machines running them often shared: fewer runs, the same median.
CPU_POLICY = TimingPolicy(min_runs=5, min_time_s=0.2, max_time_s=2.0, warmup_runs=1, flush_l2=False,
                          device_warmup_s=0.0)


def summarize(times_ms) -> dict:
    """Median (the figure), minimum and interquartile range of the runs, in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    q1, median, q3 = np.percentile(t, [25, 50, 75])
    return {"time_ms": float(median), "min_ms": float(t.min()), "iqr_ms": float(q3 - q1), "runs": int(t.size)}


def enough_runs(times_ms, wall_s: float, policy: TimingPolicy) -> tuple:
    """(stop, capped): whether to stop adding runs, and whether the wall-time cap stopped it."""
    n = len(times_ms)
    if n >= policy.max_runs:
        return True, False
    if n >= policy.min_runs and sum(times_ms) / 1e3 >= policy.min_time_s:
        return True, False
    if wall_s >= policy.max_time_s and n >= policy.floor_runs:
        return True, True
    return False, False


def next_batch(times_ms, policy: TimingPolicy, largest: int = 50) -> int:
    """How many runs to queue before looking at the clock again: about what is still missing."""
    if not times_ms:
        return min(5, policy.min_runs)
    missing_runs = policy.min_runs - len(times_ms)
    missing_time = policy.min_time_s * 1e3 - sum(times_ms)
    by_time = math.ceil(missing_time / max(float(np.median(times_ms)), 1e-6)) if missing_time > 0 else 1
    return int(min(largest, policy.max_runs - len(times_ms), max(1, missing_runs, by_time)))


class CpuTimer:
    device = "cpu"

    def __init__(self, policy: TimingPolicy = CPU_POLICY):
        self.policy = policy

    def first_call(self, fn):
        """(result, ms) of the very first call: allocation, first-touch and caches included."""
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3

    def measure(self, fn, first_call_ms: float = 0.0) -> dict:
        # A call that takes a sizeable part of the time budget was warm enough after its first call.
        warmups = 0 if first_call_ms > 1e3 * self.policy.max_time_s / 4 else self.policy.warmup_runs
        for _ in range(warmups):
            fn()
        times, start = [], time.perf_counter()
        capped = False
        while True:
            for _ in range(next_batch(times, self.policy)):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            stop, capped = enough_runs(times, time.perf_counter() - start, self.policy)
            if stop:
                break
        return {**summarize(times), "capped": capped}


# Spins one thread until `duration_ns` of the GPU's global timer have passed. The clock64() bound is a
# guard for a global timer that does not advance: the kernel always ends.
SLEEP_KERNEL_SOURCE = r"""
extern "C" __global__ void bench_sleep(unsigned long long duration_ns, long long max_cycles) {
    unsigned long long start, now;
    long long first_cycle = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < duration_ns && clock64() - first_cycle < max_cycles);
}
"""

MIN_SLEEP_MS = 0.05
MAX_SLEEP_MS = 20.0


class CudaTimer:
    device = "cuda"

    def __init__(self, policy: TimingPolicy = GPU_POLICY):
        from gpuconv._backend import require_cuda

        self.policy = policy
        self.cupy = cp = require_cuda()
        self.stream = cp.cuda.get_current_stream()
        self._sleep = cp.RawKernel(SLEEP_KERNEL_SOURCE, "bench_sleep")
        self._flush = None
        self.flush_bytes = 0
        if policy.flush_l2:
            l2 = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrL2CacheSize,
                                                    cp.cuda.Device().id)
            self.flush_bytes = max(2 * int(l2), 8 << 20)
            self._flush = cp.empty(self.flush_bytes, dtype=cp.uint8)

    def warm_up_device(self) -> float:
        """Keep the card busy with matrix products for device_warmup_s, so that the first layers are not
        timed while an idle GPU is still raising its clocks. Returns the seconds spent."""
        cp = self.cupy
        start = time.perf_counter()
        if self.policy.device_warmup_s <= 0:
            return 0.0
        a = cp.ones((2048, 2048), dtype=cp.float32)
        while time.perf_counter() - start < self.policy.device_warmup_s:
            for _ in range(10):
                a = cp.matmul(a, a) * (1.0 / 2048)  # ones stay ones: no overflow however long it runs
            self.synchronize()
        return time.perf_counter() - start

    def synchronize(self):
        # The whole device, not one stream: PyTorch may run its work on its own current stream.
        self.cupy.cuda.Device().synchronize()

    def first_call(self, fn):
        """(result, ms) of the very first call, synchronized: compilation, autotuning, handle creation."""
        self.synchronize()
        t0 = time.perf_counter()
        out = fn()
        self.synchronize()
        return out, (time.perf_counter() - t0) * 1e3

    def _sleep_gpu(self, ms: float):
        ns = int(ms * 1e6)
        self._sleep((1,), (1,), (np.uint64(ns), np.int64(ns * 10)))  # on the current stream, like the events

    def measure(self, fn, first_call_ms: float = 0.0) -> dict:
        cp = self.cupy
        host = []
        for _ in range(self.policy.warmup_runs):
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            self.synchronize()
        # Long enough to cover the host's enqueue time with margin, short enough not to waste the run.
        sleep_ms = min(MAX_SLEEP_MS, max(MIN_SLEEP_MS, 2.0 * float(np.median(host)) if host else MIN_SLEEP_MS))
        times, host, start = [], [], time.perf_counter()
        capped = False
        while True:
            pending = []
            for _ in range(next_batch(times, self.policy)):
                if self._flush is not None:
                    self._flush.fill(0)
                self._sleep_gpu(sleep_ms)
                begin, end = cp.cuda.Event(), cp.cuda.Event()
                begin.record(self.stream)
                t0 = time.perf_counter()
                fn()
                host.append((time.perf_counter() - t0) * 1e3)
                end.record(self.stream)
                pending.append((begin, end))
            self.synchronize()
            times += [cp.cuda.get_elapsed_time(begin, end) for begin, end in pending]
            stop, capped = enough_runs(times, time.perf_counter() - start, self.policy)
            if stop:
                break
        host_ms = float(np.median(host))
        return {**summarize(times), "capped": capped, "host_ms": host_ms, "sleep_ms": sleep_ms,
                "host_bound": host_ms > sleep_ms}


def make_timer(device: str, policy: TimingPolicy | None = None):
    if device == "cuda":
        return CudaTimer(policy or GPU_POLICY)
    return CpuTimer(policy or CPU_POLICY)
