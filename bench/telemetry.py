"""What the machine looked like when it ran: card telemetry (NVML) or CPU info, taken before and after.

Clocks, power, temperature and throttle reasons say whether a run was slowed
by heat or power caps; the host's load average says whether other work shared
the machine. Everything degrades gracefully: a missing NVML (no nvidia-ml-py,
no driver) leaves those fields out and says why in ``nvml``.
"""
from __future__ import annotations

import os
import platform

# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (nvml.h); the names drop the common prefix.
THROTTLE_REASON_BITS = {
    0x001: "GpuIdle",
    0x002: "ApplicationsClocksSetting",
    0x004: "SwPowerCap",
    0x008: "HwSlowdown",
    0x010: "SyncBoost",
    0x020: "SwThermalSlowdown",
    0x040: "HwThermalSlowdown",
    0x080: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
    0x200: "BoardLimit",
    0x400: "Reliability",
}


def decode_throttle_reasons(mask: int) -> list:
    """A throttle/clock-event bit mask -> its reason names (unknown bits as hex); [] when nothing limits clocks."""
    names, bit = [], 1
    while bit <= mask:
        if mask & bit:
            names.append(THROTTLE_REASON_BITS.get(bit, f"0x{bit:x}"))
        bit <<= 1
    return names


def host_load() -> dict:
    try:
        load1, load5, _ = os.getloadavg()
    except OSError:
        return {}
    return {"loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2), "cpu_count": os.cpu_count()}


def _cpuinfo_fields() -> tuple:
    """(model name, mean current MHz) from /proc/cpuinfo, or (None, None) off Linux."""
    model, mhz = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model is None:
                    model = value
                elif key == "cpu MHz":
                    mhz.append(float(value))
    except (OSError, ValueError):
        pass
    return model, (round(sum(mhz) / len(mhz)) if mhz else None)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_snapshot() -> dict:
    model, mhz = _cpuinfo_fields()
    return {"kind": "cpu", "name": model or platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(), "usable_cores": usable_cores(), "cpu_mhz": mhz,
            "host": host_load()}


def cuda_attributes(device_id: int = 0) -> dict:
    """Static facts of the CUDA device from the runtime (through CuPy)."""
    from gpuconv._backend import require_cuda

    cupy = require_cuda()
    rt = cupy.cuda.runtime
    out = {"device_index": device_id}
    props = rt.getDeviceProperties(device_id)
    name = props.get("name", b"")
    out["runtime_name"] = name.decode() if isinstance(name, bytes) else str(name)
    out["compute_capability"] = f"{props['major']}.{props['minor']}"
    out["total_memory_bytes"] = int(props.get("totalGlobalMem", 0)) or None
    attributes = {"sm_count": "cudaDevAttrMultiProcessorCount", "l2_cache_bytes": "cudaDevAttrL2CacheSize",
                  "sm_clock_attr_khz": "cudaDevAttrClockRate", "mem_clock_attr_khz": "cudaDevAttrMemoryClockRate",
                  "memory_bus_width_attr_bits": "cudaDevAttrGlobalMemoryBusWidth"}
    for key, enum_name in attributes.items():
        try:
            out[key] = int(rt.deviceGetAttribute(getattr(rt, enum_name), device_id))
        except Exception:  # attribute gone from this CUDA version (clock rates were deprecated in CUDA 13)
            out[key] = None
    try:
        out["pci_bus_id"] = cupy.cuda.Device(device_id).pci_bus_id
    except Exception:
        out["pci_bus_id"] = None
    return out


def nvml_snapshot(pci_bus_id=None, index: int = 0) -> dict:
    """Live card state from NVML; {'nvml': 'unavailable: ...'} when NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "unavailable: nvidia-ml-py (pynvml) is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {"nvml": f"unavailable: {type(exc).__name__}: {exc}"}
    try:
        try:
            handle = (pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id) if pci_bus_id
                      else pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception as exc:
            return {"nvml": f"unavailable: no NVML handle for the device: {exc}"}

        def throttle_reasons():
            get = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            try:
                mask = get(handle) if get else pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
            except pynvml.NVMLError_FunctionNotFound:  # older driver: only the deprecated name
                mask = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
            return decode_throttle_reasons(int(mask))

        fields = {
            "name": lambda: pynvml.nvmlDeviceGetName(handle),
            "driver_version": pynvml.nvmlSystemGetDriverVersion,
            "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "mem_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "memory_bus_width_bits": lambda: pynvml.nvmlDeviceGetMemoryBusWidth(handle),
            "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # NVML reports milliwatts
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "pstate": lambda: f"P{pynvml.nvmlDeviceGetPerformanceState(handle)}",
            "throttle_reasons": throttle_reasons,
            "utilization_gpu_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "memory_used_mib": lambda: round(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20),
            "compute_processes": lambda: len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)),
        }
        out, errors = {"nvml": "ok"}, {}
        for key, read in fields.items():
            try:
                value = read()
                out[key] = value.decode() if isinstance(value, bytes) else value
            except Exception as exc:  # one unsupported query must not lose the others
                out[key] = None
                errors[key] = f"{type(exc).__name__}: {exc}"
        if errors:
            out["nvml_errors"] = errors
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def gpu_snapshot(device_id: int = 0) -> dict:
    info = {"kind": "cuda"}
    info.update(cuda_attributes(device_id))
    info.update(nvml_snapshot(info.get("pci_bus_id"), device_id))
    info["name"] = info.get("name") or info["runtime_name"]
    # Estimates fall back on the runtime's attributes when NVML cannot say (kHz -> MHz).
    for key, attr in (("sm_clock_max_mhz", "sm_clock_attr_khz"), ("mem_clock_max_mhz", "mem_clock_attr_khz")):
        if info.get(key) is None and info.get(attr):
            info[key] = info[attr] / 1000.0
    if info.get("memory_bus_width_bits") is None:
        info["memory_bus_width_bits"] = info.get("memory_bus_width_attr_bits")
    info["host"] = host_load()
    return info


def busy_warnings(snap: dict) -> list:
    """Signs in a snapshot that other work shares the machine, which makes timings untrustworthy."""
    warnings = []
    host = snap.get("host") or {}
    cores = snap.get("usable_cores") or host.get("cpu_count") or 1
    load = host.get("loadavg_1m")
    if snap.get("kind") == "cpu" and load is not None and load >= 0.5 * cores:
        warnings.append(f"the host's load average is {load} on {cores} usable cores: other work shares the CPU, "
                        f"so CPU timings are unreliable (threads wait for each other; --threads 1 helps)")
    if snap.get("kind") == "cuda":
        if (snap.get("compute_processes") or 0) > 1:
            warnings.append(f"{snap['compute_processes']} processes use the GPU: timings may include their work")
        if (snap.get("utilization_gpu_pct") or 0) > 10:
            warnings.append(f"the GPU was {snap['utilization_gpu_pct']}% busy before the run started")
    return warnings


def snapshot(device: str, device_id: int = 0) -> dict:
    return gpu_snapshot(device_id) if device == "cuda" else cpu_snapshot()
