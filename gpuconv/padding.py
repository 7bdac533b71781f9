"""Padding an array's spatial dimensions, as ``torch.nn.functional.pad`` does, and its gradient; any device.

Modes: "constant" (``value``), "reflect" (mirrored without repeating the edge; each pad below the size),
"replicate" (the edge repeated) and "circular" (wrapped around; each pad at most the size). Convolutions take
the last three as ``padding_mode``. Each non-constant mode is one table of source indices per axis
(``source_index``): the forward pass gathers through it, the backward pass sums the padded gradient back onto
the pixels each position copied, so the two are exact adjoints by construction. Written once against ``xp``
(NumPy or CuPy).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._backend import array_module

MODES = ("constant", "reflect", "replicate", "circular")
#: Convolution's padding_mode -> this module's mode ("zeros" is the convolution's own padding).
CONV_PADDING_MODES = {"zeros": None, "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def check_pad(pad, shape, mode: str) -> tuple[tuple[int, int], ...]:
    """``pad`` (left, right[, top, bottom]) -> ((before, after) per padded axis, first axis first), checked."""
    if mode not in MODES:
        raise ValueError(f"pad: mode must be one of {MODES}, got {mode!r}")
    if len(shape) not in (3, 4):
        raise ValueError(f"pad takes a 3-D (N, C, L) or 4-D (N, C, H, W) input, got shape {tuple(shape)}")
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
                                                      for p in pad):
        raise TypeError(f"pad must be a tuple of ints (left, right[, top, bottom]), got {pad!r}")
    if len(pad) not in (2, 4) or len(pad) // 2 > len(shape) - 2:
        raise ValueError(f"pad must have 2 (left, right) or 4 (left, right, top, bottom) entries, at most two per "
                         f"spatial dimension of the {len(shape)}-D input, got {len(pad)}: {tuple(pad)!r}")
    if min(pad) < 0:
        raise ValueError(f"pad must be >= 0, got {tuple(pad)!r}")
    pairs = tuple((int(pad[i]), int(pad[i + 1])) for i in range(len(pad) - 2, -1, -2))
    sizes = shape[len(shape) - len(pairs):]
    for (before, after), size in zip(pairs, sizes):
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"pad: reflect padding {tuple(pad)!r} must be smaller than the padded dimension "
                             f"(size {size}) of the input {tuple(shape)}")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(f"pad: circular padding {tuple(pad)!r} must be at most the padded dimension "
                             f"(size {size}) of the input {tuple(shape)}")
    return pairs


def source_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """The input position each of the size + before + after padded positions copies."""
    i = np.arange(-before, size + after)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i > size - 1, 2 * (size - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    return i % size  # circular


def pad(x, pad, mode: str = "constant", value: float = 0.0):
    """x (N, C, [H,] W) padded: ``pad`` = (left, right) pads the last dimension, (left, right, top, bottom) the
    last two (``torch.nn.functional.pad``)."""
    xp = array_module(x=x)
    pairs = check_pad(pad, x.shape, mode)
    if mode == "constant":
        return xp.pad(x, [(0, 0)] * (x.ndim - len(pairs)) + list(pairs), constant_values=value)
    for axis, (before, after) in zip(range(x.ndim - len(pairs), x.ndim), pairs):
        x = xp.take(x, xp.asarray(source_index(x.shape[axis], before, after, mode)), axis=axis)
    return x


def pad_grad(grad_output, input_shape, pad, mode: str = "constant"):
    """Gradient of ``pad``: each padded position's gradient summed onto the input position it copied."""
    xp = array_module(grad_output=grad_output)
    input_shape = tuple(input_shape)
    pairs = check_pad(pad, input_shape, mode)
    first = len(input_shape) - len(pairs)
    grad = grad_output
    for axis, (before, after) in zip(range(first, len(input_shape)), pairs):
        size = input_shape[axis]
        moved = xp.moveaxis(grad, axis, -1)
        folded = moved[..., before:before + size].copy()
        if mode != "constant":
            source = source_index(size, before, after, mode)
            for k in (*range(before), *range(before + size, before + size + after)):  # the pads only: few
                folded[..., int(source[k])] += moved[..., k]
        grad = xp.moveaxis(folded, -1, axis)
    return xp.ascontiguousarray(grad)


__all__ = ["MODES", "CONV_PADDING_MODES", "check_pad", "source_index", "pad", "pad_grad"]
