"""What ``gpuconv info`` reports: the backend, CUDA versions, the GPUs, and whether each kernel compiles.

``collect_info()`` never raises: on a machine without CuPy, without a GPU or
without a driver every missing piece is None and ``cuda_unavailable_reason``
says why. Kernels are compiled on the GPU through CuPy when CUDA is usable (CuPy's
disk cache makes a second check fast), otherwise with NVRTC from cuda-bindings for
``FALLBACK_ARCH`` (no GPU needed); NVRTC's verdict is cached in ``info-v1.json`` beside
the autotuner's cache, keyed by the compiled text, the architecture and NVRTC's version,
so a second ``gpuconv info`` answers at once. ``progress(file, index, count)`` is told of
each file before it is compiled (on a GPU: every file, which CuPy may then load from its cache).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np

from .. import __version__
from .._backend import cuda_available, cuda_unavailable_reason, cupy_module
from . import autotune, loader, registry

#: The architecture kernels are compiled for when there is no GPU to compile for.
FALLBACK_ARCH = "sm_90"


def _version(encoded: int) -> str:
    """CUDA's 1000 * major + 10 * minor -> "major.minor"."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cuda_versions(cupy) -> dict:
    versions = {"cuda_runtime": None, "cuda_driver": None, "nvrtc": None}
    if cupy is None:
        return versions
    for key, read in (("cuda_runtime", lambda: _version(cupy.cuda.runtime.runtimeGetVersion())),
                      ("cuda_driver", lambda: _version(cupy.cuda.runtime.driverGetVersion())),
                      ("nvrtc", lambda: "%d.%d" % cupy.cuda.nvrtc.getVersion())):
        try:
            versions[key] = read()
        except Exception:  # noqa: BLE001 -- a missing library only means "unknown"
            pass
    if versions["cuda_driver"] == "0.0":  # no driver installed
        versions["cuda_driver"] = None
    return versions


def _devices_from_nvml() -> tuple[list, str | None]:
    """(devices, driver version) from NVML (nvidia-ml-py), or ([], None) when it is unavailable."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no package, no library or no driver
        return [], None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            devices.append({"index": index, "name": pynvml.nvmlDeviceGetName(handle),
                            "compute_capability": f"{major}.{minor}",
                            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                            "multiprocessors": None})
        return devices, driver if isinstance(driver, str) else driver.decode()
    except Exception:  # noqa: BLE001
        return [], None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _devices_from_cupy(cupy) -> list:
    devices = []
    for index in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"]
        devices.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                        "compute_capability": f"{props['major']}.{props['minor']}",
                        "memory_bytes": int(props["totalGlobalMem"]),
                        "multiprocessors": int(props["multiProcessorCount"])})
    return devices


def _check_kernels_on_gpu(cupy, progress=None) -> dict:
    """Compile every registered variant for every dtype, as the first calls would (one module each)."""
    device = cupy.cuda.Device()
    capability = int(device.compute_capability)
    results = {}
    files = registry.sources()
    for index, file in enumerate(files):
        if progress is not None:
            progress(file, index + 1, len(files))
        errors = []
        instantiations = [(v, d) for v, d in registry.instantiations(file) if v.min_compute_capability <= capability]
        if not instantiations:  # the tensor-core kernels before sm_80: nothing this GPU could run
            needs = min(v.min_compute_capability for v, _ in registry.instantiations(file))
            results[file] = f"skipped: needs compute capability {needs // 10}.{needs % 10}"
            continue
        for variant, dtype in instantiations:
            try:
                loader.get_kernel(variant, dtype)
            except Exception as exc:  # noqa: BLE001 -- report every variant, not just the first failure
                errors.append(f"{variant.kernel_name(dtype)}: {_error(exc)}")
        results[file] = "ok" if not errors else "\n".join(errors)
    return {"compiler": f"CuPy (NVRTC) on GPU {device.id}, sm_{device.compute_capability}", "files": results}


def _cache_path():
    return autotune.cache_dir() / "info-v1.json"


def _read_cache() -> dict:
    try:
        with open(_cache_path(), encoding="utf-8") as f:
            entries = json.load(f)
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # an unwritable cache only costs the next call its compile time
        pass


def _check_kernels_with_nvrtc(arch: str, progress=None) -> dict:
    try:
        version = ".".join(map(str, loader.nvrtc_version()))
    except Exception as exc:  # noqa: BLE001 -- cuda-bindings missing or NVRTC not loadable
        return {"compiler": None, "files": {}, "reason": f"kernels not compiled: {_error(exc)}"}
    compiler = f"NVRTC {version} (cuda-bindings) for {arch}, no GPU used"
    cache = _read_cache()
    results, cached, files = {}, 0, registry.sources()
    for index, file in enumerate(files):
        text = loader.unit_source(registry.instantiations(file))
        key = hashlib.sha256(f"{arch}\0{version}\0{text}".encode()).hexdigest()
        if key in cache:
            results[file] = cache[key]
            cached += 1
            continue
        if progress is not None:
            progress(file, index + 1, len(files))
        try:
            loader.compile_file(file, arch)  # all of a file's variants in one NVRTC run: a quick check
            results[file] = "ok"
        except Exception as exc:  # noqa: BLE001
            results[file] = _error(exc)
        cache[key] = results[file]
    if cached < len(files):
        _write_cache(cache)
    if cached:
        compiler += f"; {cached} of {len(files)} files answered from the cache ({_cache_path()})"
    return {"compiler": compiler, "files": results}


def collect_info(check_kernels: bool = True, progress=None) -> dict:
    """Everything ``gpuconv info`` prints, as a dict of plain values. Never raises."""
    cupy = cupy_module()
    usable = cuda_available()
    info = {
        "gpuconv": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": getattr(cupy, "__version__", None),
        "backend": "cuda" if usable else "cpu",
        "cuda_available": usable,
        "cuda_unavailable_reason": cuda_unavailable_reason(),
        **_cuda_versions(cupy),
        "driver": None,
        "devices": [],
        "kernels": None,
    }
    info["devices"], info["driver"] = _devices_from_nvml()
    if usable:
        try:
            info["devices"] = _devices_from_cupy(cupy)  # has SM counts; agrees with CUDA's numbering
        except Exception as exc:  # noqa: BLE001
            info["devices_error"] = _error(exc)
    if check_kernels:
        try:
            info["kernels"] = (_check_kernels_on_gpu(cupy, progress) if usable
                               else _check_kernels_with_nvrtc(FALLBACK_ARCH, progress))
        except Exception as exc:  # noqa: BLE001
            info["kernels"] = {"compiler": None, "files": {}, "reason": _error(exc)}
    return info


def format_info(info: dict) -> str:
    """``collect_info()``'s dict as the text ``gpuconv info`` prints."""
    def show(value):
        return "not found" if value is None else value

    lines = [f"gpuconv {info.get('gpuconv')}  (Python {info.get('python')}, NumPy {info.get('numpy')})",
             f"backend:        {info.get('backend')}",
             f"CuPy:           {show(info.get('cupy'))}"]
    if info.get("cuda_available"):
        lines.append("CUDA usable:    yes")
    else:
        lines.append(f"CUDA usable:    no -- {info.get('cuda_unavailable_reason')}")
    lines.append(f"CUDA runtime:   {show(info.get('cuda_runtime'))}    NVRTC: {show(info.get('nvrtc'))}    "
                 f"driver supports CUDA: {show(info.get('cuda_driver'))}")
    lines.append(f"NVIDIA driver:  {show(info.get('driver'))}")
    devices = info.get("devices") or []
    if not devices:
        error = info.get("devices_error")
        lines.append("GPUs:           none found" + (f" ({error})" if error else ""))
    for d in devices:
        sms = f", {d['multiprocessors']} SMs" if d.get("multiprocessors") else ""
        lines.append(f"GPU {d['index']}:          {d['name']}, compute capability {d['compute_capability']}, "
                     f"{d['memory_bytes'] / 2**30:.1f} GiB{sms}")
    kernels = info.get("kernels")
    if kernels is None:
        lines.append("kernels:        not checked")
    elif not kernels.get("files"):
        lines.append(f"kernels:        {kernels.get('reason', 'not checked')}")
    else:
        lines.append(f"kernels:        compiled with {kernels['compiler']}")
        width = max(len(f) for f in kernels["files"])
        for file, status in kernels["files"].items():
            names = [v.name for v in registry.variants(source=file)]
            count = len(registry.instantiations(file))
            skipped = status.startswith("skipped")
            text = (f"ok ({count} kernels: {', '.join(names)})" if status == "ok"
                    else status if skipped else "FAILED: " + status.splitlines()[0])
            lines.append(f"  {file:<{width}}  {text}")
            if status != "ok" and not skipped:
                lines.extend("      " + line for line in status.splitlines()[1:21])
    return "\n".join(lines)


__all__ = ["collect_info", "format_info", "FALLBACK_ARCH"]
