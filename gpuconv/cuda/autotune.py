"""The autotuner behind ``algo="auto"`` on a GPU: time the candidates once per shape, remember the winner.

When a call meets a (device name, compute capability, pass, geometry, dtype, gpuconv version) that the
cache does not know, it times every candidate the planner allows for it (im2col + cuBLAS and each
applicable implicit-GEMM variant; those that do not fit in free memory, or fail, are skipped with the
reason), on the call's own arrays (the passes only read their operands): kernels are compiled first,
then each candidate gets an equal share of ``BUDGET_SECONDS``: one warm-up launch (never a sample),
one timed launch always, and more (up to ``REPEATS``) while the next would still fit its share; the
median of each decides. So one new shape costs at most about one second of launches, or two launches
per candidate where a single launch takes longer than its share. The winner is stored in the cache file
and reused by every later call and process. A choice made while some candidate did not fit in memory is
kept for this process only: with more memory free another one may win.

Cache file: ``autotune-v1.json`` in ``$GPUCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpuconv``, else
``~/.cache/gpuconv``. It is rewritten atomically (temporary file + rename) under an exclusive ``flock``,
merging what other processes wrote meanwhile, so several processes may tune at once; a cache directory
that cannot be written costs a warning, not the call. Its format::

    {"format": 1,
     "entries": {"<key>": {"choice": "fprop_simt_64x64x16_1stage",
                           "median_ms": {"im2col": 0.41, "fprop_simt_64x64x16_1stage": 0.23, ...},
                           "samples": {"im2col": 5, ...}, "skipped": {"name": "why", ...},
                           "budget_s": 1.0, "tuned_at": "2026-12-01T21:00:00Z",
                           "device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}}

with ``<key>`` = ``device|cc|pass|geometry|dtype|gpuconv version`` (``key(...)`` builds it).

``GPUCONV_AUTOTUNE=0`` in the environment, or ``set_enabled(False)``, makes ``auto`` apply the fixed
rule instead (reproducible runs: the choice then depends on nothing measured).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from .._shapes import ConvGeometry
from .registry import CONV_PASSES, PASS_OPERANDS

FORMAT = 1
CACHE_FILE = f"autotune-v{FORMAT}.json"  # versioned: another format never overwrites this one
#: Seconds of timed launches one new shape may take (compilation excluded).
BUDGET_SECONDS = 1.0
#: Timed launches per candidate, at most (after one warm-up).
REPEATS = 5

_enabled: bool | None = None   # None: follow GPUCONV_AUTOTUNE
_memory: dict[str, dict] = {}  # this process's view of the cache file
_lock = threading.Lock()


def set_enabled(enabled: bool | None) -> None:
    """Turn the autotuner on or off for this process (None: back to ``GPUCONV_AUTOTUNE``, default on)."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled)


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("GPUCONV_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("GPUCONV_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpuconv"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def geometry_key(g: ConvGeometry) -> str:
    return (f"N{g.N}-C{g.C}-H{g.H}-W{g.W}-K{g.K}-R{g.R}-S{g.S}-stride{g.stride[0]}x{g.stride[1]}-"
            f"dil{g.dilation[0]}x{g.dilation[1]}-pad{'x'.join(map(str, g.pad))}-groups{g.groups}")


def key(device: str, compute_capability: str, pass_name: str, g: ConvGeometry, dtype,
        version: str = __version__) -> str:
    return "|".join([device, compute_capability, pass_name, geometry_key(g), str(np.dtype(dtype)),
                     f"gpuconv {version}"])


# --------------------------------------------------------------------------------------- the file ---

def _read_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable or half-written by something else: start afresh (it is only a cache)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


@contextlib.contextmanager
def _file_lock(directory: Path):
    """An exclusive lock across processes (``flock`` on a side file) where the OS has one."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename below is still atomic; a concurrent merge may be lost
        yield
        return
    with open(directory / f"{CACHE_FILE}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store(entry_key: str, entry: dict) -> None:
    """Add one entry to the cache file: lock, re-read (other processes may have added entries), write a
    temporary file beside it and rename it over the old one. Raises OSError when it cannot."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.parent):
        entries = _read_file(path)
        entries[entry_key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"format": FORMAT, "entries": entries}, handle, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    with _lock:
        _memory.update(entries)


def remember(entry_key: str, entry: dict) -> None:
    """Keep an entry for this process only."""
    with _lock:
        _memory[entry_key] = entry


def lookup(entry_key: str) -> dict | None:
    """A cached entry: from this process's memory, else from the file (another process may have tuned it)."""
    with _lock:
        if entry_key in _memory:
            return _memory[entry_key]
    entries = _read_file(cache_path())
    with _lock:
        for k, v in entries.items():
            _memory.setdefault(k, v)
        return _memory.get(entry_key)


def forget_memory() -> None:
    """Drop this process's copy of the cache (the file stays)."""
    with _lock:
        _memory.clear()


_warned_unwritable = False


def _store_or_warn(entry_key: str, entry: dict) -> None:
    global _warned_unwritable
    try:
        store(entry_key, entry)
    except OSError as exc:
        remember(entry_key, entry)
        if not _warned_unwritable:
            _warned_unwritable = True
            warnings.warn(f"gpuconv: the autotuner cannot write its cache {cache_path()} ({exc}); its choices "
                          f"last only as long as this process (set GPUCONV_CACHE_DIR to a writable directory)",
                          RuntimeWarning, stacklevel=3)


# -------------------------------------------------------------------------------------- measuring ---

def measure(plans: dict, run, timer, budget: float = BUDGET_SECONDS, repeats: int = REPEATS,
            failures: dict | None = None) -> dict:
    """Time each plan: {name: [seconds, ...]}. ``run(plan)`` executes one; ``timer(fn)`` returns the
    seconds ``fn()`` took on the device. Each plan gets ``budget / len(plans)`` seconds: a warm-up
    launch (not a sample: first launches pay one-time costs), one timed launch, then more, up to
    ``repeats``, while the next one (as long as the last) still fits the share. A plan that fails --
    out of memory, a launch error -- is left out, its exception in ``failures``."""
    share = budget / max(1, len(plans))
    samples = {}
    for name, plan in plans.items():
        try:
            spent = timer(lambda: run(plan))  # warm-up
            times = [timer(lambda: run(plan))]
            spent += times[-1]
            while len(times) < repeats and spent + times[-1] <= share:
                times.append(timer(lambda: run(plan)))
                spent += times[-1]
        except Exception as exc:  # noqa: BLE001 -- a failing candidate must not fail the user's call
            if failures is not None:
                failures[name] = exc
            continue
        samples[name] = times
    return samples


def tune(pass_name: str, g: ConvGeometry, dtype, backend, operands, free_bytes=None, budget=BUDGET_SECONDS,
         timer=None, allow_tf32: bool = False) -> dict:
    """Time every candidate for one shape now (no cache involved); returns the cache entry. When none
    can run, raises the error of the one the fixed rule would have run."""
    from .conv import run_conv
    from .plan import candidates, fixed_rule, plan_conv

    plans, failures = {}, {}
    cc = backend.compute_capability()
    for name in candidates(pass_name, g, dtype, cc, allow_tf32):
        try:
            plan = plan_conv(pass_name, g, dtype, name, free_bytes, compute_capability=cc)
            for launch in plan.launches:
                backend.prepare(launch)  # compile before the clock starts
        except Exception as exc:  # noqa: BLE001 -- out of memory, or a kernel that does not compile here
            failures[name] = exc
            continue
        plans[name] = plan
    timer = backend.timer() if timer is None else timer
    samples = measure(plans, lambda plan: run_conv(plan, backend, *operands), timer, budget, failures=failures)
    if not samples:  # the error a user without the autotuner would have seen
        raise failures.get(fixed_rule(pass_name, g, dtype, cc, allow_tf32), next(iter(failures.values())))
    skipped = {name: f"{type(exc).__name__}: {exc}" for name, exc in failures.items()}
    medians = {name: statistics.median(times) for name, times in samples.items()}
    choice = min(medians, key=lambda name: (medians[name], name))
    return {"choice": choice, "median_ms": {n: round(t * 1e3, 6) for n, t in medians.items()},
            "samples": {n: len(t) for n, t in samples.items()}, "skipped": skipped, "budget_s": budget,
            "tuned_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _key_of(pass_name, g, dtype, backend, allow_tf32: bool = False) -> tuple[str, str, str]:
    """The cache key; float32 with TF32 allowed has its own entries ("float32+tf32": other candidates)."""
    device, cc = backend.device_identity()
    tf32 = allow_tf32 and np.dtype(dtype) == np.float32
    entry_key = key(device, cc, pass_name, g, dtype)
    if tf32:
        entry_key = entry_key.replace("|float32|", "|float32+tf32|", 1)
    return entry_key, device, cc


def cached_choice(pass_name: str, g: ConvGeometry, dtype, backend, allow_tf32: bool = False) -> str | None:
    """The cached winner for this shape on this device, or None (nothing is timed)."""
    from .plan import candidates

    entry = lookup(_key_of(pass_name, g, dtype, backend, allow_tf32)[0])
    if entry is not None and entry.get("choice") in candidates(pass_name, g, dtype, backend.compute_capability(),
                                                               allow_tf32):
        return entry["choice"]
    return None


def choose(pass_name: str, g: ConvGeometry, dtype, backend, operands, free_bytes=None,
           allow_tf32: bool = False) -> str:
    """The cached winner for this shape on this device, tuning it first when it is new."""
    choice = cached_choice(pass_name, g, dtype, backend, allow_tf32)
    if choice is not None:
        return choice
    entry_key, device, cc = _key_of(pass_name, g, dtype, backend, allow_tf32)
    entry = {**tune(pass_name, g, dtype, backend, operands, free_bytes, allow_tf32=allow_tf32), "device": device,
             "compute_capability": cc}
    if any(isinstance(why, str) and why.startswith("GPUOutOfMemoryError") for why in entry["skipped"].values()):
        remember(entry_key, entry)  # decided under memory pressure: not for other processes to inherit
    else:
        _store_or_warn(entry_key, entry)
    return entry["choice"]


def tune_suite(suite, batch: int, dtype, passes=CONV_PASSES, backend=None, report=print) -> list:
    """Fill the cache for every layer of a suite (``gpuconv.suites.load_suite``) at batch size ``batch``;
    ``report(line)`` gets one line per (layer, pass): the choice, each candidate's median and whether it
    was measured now or found in the cache. Returns [(layer name, pass, entry, was_cached)]."""
    from .backend import resolve_backend
    from .plan import check_geometry

    backend = resolve_backend(backend)
    device, cc = backend.device_identity()
    report(f"autotuning suite {suite.name} (batch {batch}, {np.dtype(dtype)}) on {device} (compute capability "
           f"{cc}); cache {cache_path()}")
    rng = np.random.default_rng(0)
    results = []
    for layer in suite.layers:
        g = layer.geometry(batch)
        check_geometry(g)
        data = {name: backend.xp.asarray(rng.standard_normal(shape).astype(dtype))
                for name, shape in (("x", g.input_shape), ("w", g.weight_shape), ("dy", g.output_shape))}
        for pass_name in passes:
            operands = PASS_OPERANDS[pass_name]
            entry_key = key(device, cc, pass_name, g, dtype)
            cached = lookup(entry_key) is not None
            choose(pass_name, g, dtype, backend, [data[o] for o in operands], backend.free_bytes())
            entry = lookup(entry_key)
            times = ", ".join(f"{name} {ms:.3f}" for name, ms in sorted(entry["median_ms"].items(),
                                                                       key=lambda item: item[1]))
            report(f"  {layer.name:<24} {pass_name}  {entry['choice']:<36} {'cached' if cached else 'tuned '}  "
                   f"median ms: {times}")
            results.append((layer.name, pass_name, entry, cached))
    return results


__all__ = ["BUDGET_SECONDS", "REPEATS", "set_enabled", "enabled", "cache_dir", "cache_path", "key",
           "geometry_key", "store", "remember", "lookup", "forget_memory", "measure", "tune", "cached_choice",
           "choose", "tune_suite"]
