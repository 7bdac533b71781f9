"""Seeded initialisation, as PyTorch initialises its layers (Kaiming uniform)."""
from __future__ import annotations

import math

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator used by layer initialisation and dropout (CPU and, when present, CuPy's)."""
    global _generator
    _generator = np.random.default_rng(seed)
    from .._backend import cuda_available, cupy_module
    if cuda_available():
        cupy_module().random.seed(seed)


def generator() -> np.random.Generator:
    return _generator


def get_rng_state() -> dict:
    """The state of the generator behind initialisation and dropout on the CPU (a checkpoint records it)."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    _generator.bit_generator.state = state


def kaiming_uniform(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    """PyTorch's default for Conv2d/Linear weights: kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))."""
    gain = math.sqrt(2.0 / (1 + 5))
    bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
    return _generator.uniform(-bound, bound, size=shape).astype(dtype)


def bias_uniform(size: int, fan_in: int, dtype=np.float32) -> np.ndarray:
    """PyTorch's default bias: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return _generator.uniform(-bound, bound, size=(size,)).astype(dtype)
