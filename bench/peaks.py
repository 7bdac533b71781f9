"""The card's peak FLOP/s and memory bandwidth: from a table of known cards, else estimated.

Table figures are NVIDIA's datasheet numbers for dense math (no 2:4 sparsity):
``fp32`` on the CUDA cores, ``tf32`` and ``fp16`` on the tensor cores with float32
accumulation (the mode cuDNN and cuBLAS use for float16 by default), memory
bandwidth in GB/s. ``bf16`` is the fp16 rate on the cards with bfloat16 tensor
cores (compute capability 8.0 on, the ones with TF32), else unknown. Cards not
in the table get an estimate from SM count x max SM clock x FLOPs per clock per
SM for their compute capability, and from memory clock x bus width; the
``source`` field says which it was.
"""
from __future__ import annotations

import re

# (key, regex matched against the NVML name, fp32, tf32, fp16 TFLOP/s, bandwidth GB/s). First match wins,
# so the specific variants come before the generic name (\b keeps 'GH200' from matching 'H200').
KNOWN_CARDS = (
    ("H100 PCIe", r"\bH100\b.*PCIe", 51.2, 378.0, 756.0, 2000.0),
    ("H100 NVL", r"\bH100 NVL\b", 60.0, 417.5, 835.0, 3900.0),
    ("H100 SXM", r"\bH100\b", 66.9, 494.7, 989.4, 3350.0),
    ("H200 NVL", r"\bH200 NVL\b", 60.0, 417.5, 835.5, 4800.0),
    ("H200 SXM", r"\bH200\b", 66.9, 494.7, 989.4, 4800.0),
    ("A100 PCIe 80GB", r"\bA100\b.*80GB.*PCIe|\bA100-PCIE-80GB\b", 19.5, 156.0, 312.0, 1935.0),
    ("A100 PCIe 40GB", r"\bA100\b.*PCIe", 19.5, 156.0, 312.0, 1555.0),
    ("A100 SXM 80GB", r"\bA100\b.*80GB", 19.5, 156.0, 312.0, 2039.0),
    ("A100 SXM 40GB", r"\bA100\b", 19.5, 156.0, 312.0, 1555.0),
    ("L40S", r"\bL40S\b", 91.6, 183.0, 362.0, 864.0),
    ("L40", r"\bL40\b", 90.5, 90.5, 181.0, 864.0),
    ("L4", r"\bL4\b", 30.3, 60.0, 121.0, 300.0),
    ("A10", r"\bA10\b", 31.2, 62.5, 125.0, 600.0),
    ("T4", r"\bT4\b", 8.1, None, 65.0, 320.0),
    ("V100 PCIe", r"\bV100\b.*PCIE", 14.0, None, 112.0, 900.0),
    ("V100 SXM2", r"\bV100\b", 15.7, None, 125.0, 900.0),
    ("GeForce RTX 4090", r"\bRTX 4090\b", 82.6, 82.6, 165.2, 1008.0),
    ("GeForce RTX 3090", r"\bRTX 3090\b", 35.6, 35.6, 71.0, 936.0),
)

# FLOPs per clock per SM, by compute capability: float32 FMA on the CUDA cores (2 FLOPs each) and dense
# float16 tensor-core math with float32 accumulation on the data-center parts. TF32 runs at half the float16
# rate from Ampere (8.0) on and does not exist before it.
FP32_FLOPS_PER_CLOCK_SM = {(7, 0): 128, (7, 5): 128, (8, 0): 128, (8, 6): 256, (8, 7): 256, (8, 9): 256,
                           (9, 0): 256, (10, 0): 256, (10, 3): 256, (12, 0): 256, (12, 1): 256}
FP16_TENSOR_FLOPS_PER_CLOCK_SM = {(7, 0): 1024, (7, 5): 1024, (8, 0): 2048, (8, 6): 1024, (8, 7): 1024,
                                  (8, 9): 1024, (9, 0): 4096, (10, 0): 8192, (10, 3): 8192, (12, 0): 1024,
                                  (12, 1): 1024}


def table_peaks(name: str):
    """The table's entry for an NVML device name, or None."""
    for key, pattern, fp32, tf32, fp16, bandwidth in KNOWN_CARDS:
        if re.search(pattern, name or "", flags=re.IGNORECASE):
            return {"source": "table", "card": key, "fp32_tflops": fp32, "tf32_tflops": tf32,
                    "fp16_tflops": fp16, "bf16_tflops": fp16 if tf32 else None, "bandwidth_gbs": bandwidth}
    return None


def _parse_cc(cc):
    """'90', '9.0', (9, 0) -> (9, 0)."""
    if isinstance(cc, (tuple, list)):
        return int(cc[0]), int(cc[1])
    text = str(cc)
    if "." in text:
        major, minor = text.split(".")
        return int(major), int(minor)
    return int(text[:-1]), int(text[-1])


def _per_clock(table: dict, cc):
    """The table's value for cc, else for the newest listed capability not above it."""
    known = [k for k in sorted(table) if k <= cc]
    return table[known[-1]] if known else None


def estimate_peaks(cc, sm_count, sm_clock_mhz, mem_clock_mhz=None, bus_width_bits=None, name: str = "") -> dict:
    """Peaks from SM count x clock x FLOPs/clock/SM and memory clock x bus width (double data rate)."""
    cc = _parse_cc(cc)
    fp32_rate = _per_clock(FP32_FLOPS_PER_CLOCK_SM, cc)
    fp16_rate = _per_clock(FP16_TENSOR_FLOPS_PER_CLOCK_SM, cc)
    if fp16_rate and "geforce" in name.lower() and cc >= (8, 6):
        fp16_rate //= 2  # GeForce cards run float16 with float32 accumulation at half rate
    scale = sm_count * sm_clock_mhz * 1e6 / 1e12 if sm_count and sm_clock_mhz else None
    fp32 = scale * fp32_rate if scale and fp32_rate else None
    fp16 = scale * fp16_rate if scale and fp16_rate else None
    tf32 = fp16 / 2 if fp16 and cc >= (8, 0) else None
    bandwidth = (mem_clock_mhz * 1e6 * 2 * bus_width_bits / 8 / 1e9
                 if mem_clock_mhz and bus_width_bits else None)
    return {"source": "estimate", "card": None, "fp32_tflops": fp32, "tf32_tflops": tf32, "fp16_tflops": fp16,
            "bf16_tflops": fp16 if cc >= (8, 0) else None, "bandwidth_gbs": bandwidth,
            "basis": {"compute_capability": f"{cc[0]}.{cc[1]}", "sm_count": sm_count, "sm_clock_mhz": sm_clock_mhz,
                      "mem_clock_mhz": mem_clock_mhz, "bus_width_bits": bus_width_bits}}


def device_peaks(device_info: dict) -> dict:
    """Peaks for the card a telemetry snapshot describes (table first, else estimate)."""
    name = device_info.get("name") or ""
    found = table_peaks(name)
    if found is not None:
        return found
    cc = device_info.get("compute_capability")
    if not cc:
        return {"source": "unknown", "card": None, "fp32_tflops": None, "tf32_tflops": None,
                "fp16_tflops": None, "bf16_tflops": None, "bandwidth_gbs": None}
    return estimate_peaks(cc, device_info.get("sm_count"), device_info.get("sm_clock_max_mhz"),
                          device_info.get("mem_clock_max_mhz"), device_info.get("memory_bus_width_bits"), name)


def cpu_peaks() -> dict:
    """No CPU peak model: percentages of peak are left empty on the CPU."""
    return {"source": "unknown", "card": None, "fp32_tflops": None, "tf32_tflops": None, "fp16_tflops": None,
            "bf16_tflops": None, "bandwidth_gbs": None}


def peak_kind(impl: str, dtype: str, precision: str | None = None) -> str:
    """Which peak a measurement is held against: float16 / bfloat16 -> tensor-core fp16 / bf16; TF32 runs (the
    impl's ``precision``, or a name ending in -tf32) -> tf32; else fp32."""
    half = {"float16": "fp16", "bfloat16": "bf16"}.get(dtype)
    if half:
        return half
    return "tf32" if precision == "tf32" or impl.endswith("-tf32") else "fp32"
