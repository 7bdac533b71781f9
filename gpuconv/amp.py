"""Mixed precision, with PyTorch's names: ``autocast`` and ``GradScaler``.

Under ``autocast(dtype)`` (bfloat16 or float16) convolutions and linear layers cast their floating inputs,
weights included, to ``dtype`` and compute in it (our kernels and CPU paths accumulate in float32 and round
the result); batch norm, softmax and the losses compute in float32 whatever they are given. Parameters stay
float32 (the master weights): the recorded cast sends each gradient back to them in float32. Everything else
(ReLU, pooling, additions) runs in the dtype it is given.

``GradScaler`` is float16's dynamic loss scaling: the loss is multiplied by the scale before backward, the
gradients divided by it before the step; a step whose gradients hold an inf or NaN (float16 overflowed) is
skipped, counted and the scale halved; after ``growth_interval`` good steps the scale doubles. bfloat16 has
float32's exponent range and needs no scaling.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from ._backend import array_module
from ._shapes import BFLOAT16, is_floating

#: ``gpuconv train --precision`` -> the autocast dtype (None: plain float32).
PRECISIONS = {"fp32": None, "bf16": BFLOAT16, "fp16": np.dtype(np.float16)}
_LOW = (BFLOAT16, np.dtype(np.float16))

_state = threading.local()


def get_autocast_dtype():
    """The dtype of the innermost active ``autocast``, or None."""
    return getattr(_state, "dtype", None)


@contextlib.contextmanager
def autocast(dtype=BFLOAT16, enabled: bool = True):
    """Compute convolutions and linear layers in ``dtype`` (bfloat16 or float16) within the block."""
    dtype = np.dtype(dtype)
    if dtype not in _LOW:
        raise ValueError(f"autocast computes in bfloat16 or float16, got {dtype}")
    previous = get_autocast_dtype()
    _state.dtype = dtype if enabled else None
    try:
        yield
    finally:
        _state.dtype = previous


def _dtype(value):
    from .autograd import Tensor
    data = value.data if isinstance(value, Tensor) else value
    return np.dtype(data.dtype) if hasattr(data, "dtype") else None


def _cast(value, dtype):
    """A floating tensor or array in ``dtype`` (a tensor through the recorded cast); anything else as it is."""
    current = _dtype(value)
    if current is None or not is_floating(current) or current == dtype:
        return value
    return value.astype(dtype)


def low_precision(*values):
    """The inputs of a convolution or linear layer: float32 ones in the autocast dtype when one is active
    (float64 stays float64, as in PyTorch)."""
    dtype = get_autocast_dtype()
    if dtype is None:
        return list(values)
    return [v if _dtype(v) == np.float64 else _cast(v, dtype) for v in values]


def full_precision(*values):
    """The inputs of batch norm, softmax and the losses: float32 under autocast (float64 stays)."""
    if get_autocast_dtype() is None:
        return list(values)
    return [_cast(v, np.dtype(np.float32)) if _dtype(v) in _LOW else v for v in values]


class GradScaler:
    """Dynamic loss scaling (``torch.amp.GradScaler``): ``scaler.scale(loss).backward()``,
    ``scaler.step(optimizer)`` (skipped when a gradient is not finite), ``scaler.update()``."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not (init_scale > 0 and growth_factor > 1 and 0 < backoff_factor < 1 and growth_interval >= 1):
            raise ValueError("GradScaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
                             "growth_interval >= 1")
        self._scale, self.growth_factor, self.backoff_factor = float(init_scale), growth_factor, backoff_factor
        self.growth_interval, self.enabled = int(growth_interval), bool(enabled)
        self._good_steps, self.skipped_steps, self._found_inf = 0, 0, None

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def scale(self, loss):
        return loss * self._scale if self.enabled else loss

    def unscale_(self, optimizer) -> bool:
        """Divide every gradient by the scale (once per step: a second call is an error, as in PyTorch);
        return whether they are all finite."""
        if not self.enabled:
            return True
        if self._found_inf is not None:
            raise RuntimeError("GradScaler.unscale_ was already called since the last update()")
        finite = True
        inverse = 1.0 / self._scale
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                xp = array_module(grad=p.grad)
                p.grad *= p.grad.dtype.type(inverse)
                finite = finite and bool(xp.isfinite(p.grad).all())
        self._found_inf = not finite
        return finite

    def step(self, optimizer) -> bool:
        """The optimizer's step unless a gradient overflowed; returns whether it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            self.skipped_steps += 1
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        if not self.enabled or self._found_inf is None:
            self._found_inf = None
            return
        if self._found_inf:
            self._scale *= self.backoff_factor
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= self.growth_interval and math.isfinite(self._scale * self.growth_factor):
                self._scale *= self.growth_factor
                self._good_steps = 0
        self._found_inf = None

    def state_dict(self) -> dict:
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self._scale, self._good_steps = float(state["scale"]), int(state["_growth_tracker"])
        self.growth_factor, self.backoff_factor = state["growth_factor"], state["backoff_factor"]
        self.growth_interval, self.skipped_steps = int(state["growth_interval"]), int(state.get("skipped_steps", 0))


__all__ = ["autocast", "get_autocast_dtype", "low_precision", "full_precision", "GradScaler", "PRECISIONS"]
