"""The float32 precision policy, named after PyTorch's ``torch.set_float32_matmul_precision``.

float32 convolutions are exact float32 by default ("highest"). "high" and "medium" allow TF32 on the GPU: the
tensor-core kernels then multiply float32 inputs rounded to TF32 (10 mantissa bits, ``cvt.rna.tf32.f32``) and
accumulate in float32, as cuDNN does with ``torch.backends.cudnn.allow_tf32``. A call's ``precision=`` (the same
names) overrides the policy for that call. The CPU paths always compute exact float32: the setting is a
permission, never a requirement.
"""
from __future__ import annotations

import threading

PRECISIONS = ("highest", "high", "medium")

_policy = {"float32": "highest"}
_lock = threading.Lock()


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def set_float32_matmul_precision(precision: str) -> None:
    """"highest" (exact float32, the default), "high" or "medium" (TF32 allowed on the GPU's tensor cores)."""
    with _lock:
        _policy["float32"] = check_precision(precision)


def get_float32_matmul_precision() -> str:
    return _policy["float32"]


def allows_tf32(precision: str | None = None) -> bool:
    """Whether a float32 convolution may run in TF32: the call's ``precision``, else the policy."""
    return (get_float32_matmul_precision() if precision is None else check_precision(precision)) != "highest"


__all__ = ["PRECISIONS", "check_precision", "set_float32_matmul_precision", "get_float32_matmul_precision",
           "allows_tf32"]
