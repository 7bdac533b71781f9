"""The NumPy ground truth: convolution and pooling by im2col + GEMM + col2im.

Written as plainly as the textbooks write it (deep-learning-from-scratch's
``common/util.py``), extended with 4-sided padding, dilation and groups. Every
faster path, on the CPU or the GPU, is tested against this module; keep it
simple and obviously right rather than fast.

Column layout: ``col[(n, p, q), (c, r, s)]`` -- one row per output pixel, one
column per input tap.
"""
from __future__ import annotations

import numpy as np

from ._shapes import ConvGeometry, PoolGeometry, accumulation_dtype, is_floating


def im2col(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """x (N, C, H, W) -> col (N*P*Q, C*R*S)."""
    N, C = x.shape[:2]
    R, S = g.R, g.S
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = g.stride, g.dilation, g.pad
    img = np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
    col = np.zeros((N, C, R, S, g.P, g.Q), dtype=x.dtype)
    for r in range(R):
        y0 = r * dh
        for s in range(S):
            x0 = s * dw
            col[:, :, r, s, :, :] = img[:, :, y0:y0 + sh * g.P:sh, x0:x0 + sw * g.Q:sw]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * g.P * g.Q, C * R * S)


def col2im(col: np.ndarray, g: ConvGeometry, channels: int) -> np.ndarray:
    """col (N*P*Q, C*R*S) -> x (N, C, H, W), summing every tap that reads a pixel."""
    N, C, R, S = g.N, channels, g.R, g.S
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = g.stride, g.dilation, g.pad
    col = col.reshape(N, g.P, g.Q, C, R, S).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, g.H + pt + pb, g.W + pl + pr), dtype=col.dtype)
    for r in range(R):
        y0 = r * dh
        for s in range(S):
            x0 = s * dw
            img[:, :, y0:y0 + sh * g.P:sh, x0:x0 + sw * g.Q:sw] += col[:, :, r, s, :, :]
    return img[:, :, pt:pt + g.H, pl:pl + g.W]


def _group_slices(g: ConvGeometry):
    cg, kg = g.C // g.groups, g.K // g.groups
    for i in range(g.groups):
        yield slice(i * cg, (i + 1) * cg), slice(i * kg, (i + 1) * kg)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """y[n, k, p, q] = sum_{c, r, s} x[n, c, p*sh + r*dh - pt, q*sw + s*dw - pl] * w[k, c, r, s]."""
    acc = accumulation_dtype(x.dtype)
    x, weight = x.astype(acc, copy=False), weight.astype(acc, copy=False)
    y = np.empty((g.N, g.K, g.P, g.Q), dtype=acc)
    for cs, ks in _group_slices(g):
        col = im2col(x[:, cs], g)                      # (NPQ, Cg*R*S)
        w = weight[ks].reshape(ks.stop - ks.start, -1)  # (Kg, Cg*R*S)
        out = col @ w.T                                 # (NPQ, Kg)
        y[:, ks] = out.reshape(g.N, g.P, g.Q, -1).transpose(0, 3, 1, 2)
    return y


def conv2d_grad_input(grad_output: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    acc = accumulation_dtype(grad_output.dtype)
    grad_output, weight = grad_output.astype(acc, copy=False), weight.astype(acc, copy=False)
    grad_input = np.empty((g.N, g.C, g.H, g.W), dtype=acc)
    for cs, ks in _group_slices(g):
        dy = grad_output[:, ks].transpose(0, 2, 3, 1).reshape(g.N * g.P * g.Q, -1)  # (NPQ, Kg)
        w = weight[ks].reshape(ks.stop - ks.start, -1)                              # (Kg, Cg*R*S)
        grad_input[:, cs] = col2im(dy @ w, g, cs.stop - cs.start)
    return grad_input


def conv2d_grad_weight(x: np.ndarray, grad_output: np.ndarray, g: ConvGeometry) -> np.ndarray:
    acc = accumulation_dtype(x.dtype)
    x, grad_output = x.astype(acc, copy=False), grad_output.astype(acc, copy=False)
    grad_weight = np.empty(g.weight_shape, dtype=acc)
    for cs, ks in _group_slices(g):
        col = im2col(x[:, cs], g)
        dy = grad_output[:, ks].transpose(0, 2, 3, 1).reshape(g.N * g.P * g.Q, -1)
        grad_weight[ks] = (dy.T @ col).reshape(ks.stop - ks.start, -1, g.R, g.S)
    return grad_weight


# ---------------------------------------------------------------- pooling ---
# Every window is gathered whole through ``PoolGeometry.taps``: a tap outside the input reads a fill row /
# column appended after the input (row H, column W), so any padding, dilation, ceil_mode window or adaptive
# bin is the same code. The backward passes are the exact adjoint (np.add.at sums repeated taps).

def _tap_index(g: PoolGeometry):
    """(rows (P, 1, kh, 1), cols (1, Q, 1, kw)): the input pixel of every tap, H / W for a padding tap."""
    (rows, real_rows, _), (cols, real_cols, _) = g.taps(0), g.taps(1)
    rows, cols = np.where(real_rows, rows, g.H), np.where(real_cols, cols, g.W)
    return rows[:, None, :, None], cols[None, :, None, :]


def real_taps(g: PoolGeometry) -> np.ndarray:
    """(P, Q, kh*kw): whether each tap of each window reads an input pixel."""
    real_rows, real_cols = g.taps(0)[1], g.taps(1)[1]
    return (real_rows[:, None, :, None] & real_cols[None, :, None, :]).reshape(g.P, g.Q, -1)


def pool_windows(x: np.ndarray, g: PoolGeometry, fill) -> np.ndarray:
    """x (N, C, H, W) -> windows (N, C, P, Q, kh*kw), padding taps set to ``fill``."""
    img = np.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1)], constant_values=fill)
    rows, cols = _tap_index(g)
    return img[:, :, rows, cols].reshape(g.N, g.C, g.P, g.Q, -1)


def scatter_windows(grad_win: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """The adjoint of ``pool_windows``: window gradients (N, C, P, Q, kh*kw) summed back onto the input."""
    img = np.zeros((g.N, g.C, g.H + 1, g.W + 1), dtype=grad_win.dtype)
    rows, cols = _tap_index(g)
    np.add.at(img, (slice(None), slice(None), rows, cols), grad_win.reshape(g.N, g.C, g.P, g.Q, *g.kernel))
    return img[:, :, :g.H, :g.W]


def lowest(dtype):
    """What a padding tap holds for max pooling: -inf, or an integer dtype's minimum."""
    dtype = np.dtype(dtype)
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


def first_max(win: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tap, has_pixel) of each window's maximum, PyTorch's rule (its loop keeps a value when ``v > max or
    isnan(v)``): the last NaN, else the first real tap holding the largest value, so that when every real
    pixel is -inf it is the first of them, never padding; has_pixel is False for a window of padding only."""
    nan = real & (np.isnan(win) if is_floating(win.dtype) else np.zeros(win.shape, bool))
    best = np.where(real & ~nan, win, lowest(win.dtype)).max(axis=-1, keepdims=True)
    first_best = (real & (win == best)).argmax(axis=-1)
    last_nan = win.shape[-1] - 1 - nan[..., ::-1].argmax(axis=-1)
    return np.where(nan.any(axis=-1), last_nan, first_best), real.any(axis=-1)


def max_pool2d_forward(x: np.ndarray, g: PoolGeometry, return_indices: bool = False):
    """The maximum of every window (NaN propagates); with ``return_indices`` also its per-plane flat index
    h * W + w (int64), -1 for a window of padding only (its value is ``lowest``)."""
    win = pool_windows(x, g, lowest(x.dtype))
    tap, has_pixel = first_max(win, real_taps(g))
    y = np.take_along_axis(win, tap[..., None], axis=-1)[..., 0]
    if not return_indices:
        return y
    rows, cols = _tap_index(g)
    flat = np.broadcast_to(rows * g.W + cols, (g.P, g.Q, *g.kernel)).reshape(g.P, g.Q, -1)
    index = np.take_along_axis(np.broadcast_to(flat, win.shape), tap[..., None], axis=-1)[..., 0]
    return y, np.where(has_pixel, index, -1).astype(np.int64)


def max_window_grads(win: np.ndarray, grad_output: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Window gradients (N, C, P, Q, kh*kw) of max pooling: each output's gradient at its window's maximum
    (``first_max``), nowhere for a padding-only window; in float32 for float16 / bfloat16, so that overlapping
    windows sum before rounding once (as the kernels do)."""
    tap, has_pixel = first_max(win, real_taps(g))
    grad_win = np.zeros(win.shape, dtype=accumulation_dtype(grad_output.dtype))
    np.put_along_axis(grad_win, tap[..., None], np.where(has_pixel, grad_output, 0)[..., None], axis=-1)
    return grad_win


def averages(sums: np.ndarray, g: PoolGeometry, count_include_pad: bool, divisor_override) -> np.ndarray:
    """Window sums (N, C, P, Q) over ``PoolGeometry.divisors``; 0 for a window without a divisor."""
    divisors = g.divisors(count_include_pad, divisor_override).astype(sums.dtype)
    return np.divide(sums, divisors, out=np.zeros_like(sums), where=divisors != 0)


def average_grad_windows(grad_output: np.ndarray, g: PoolGeometry, count_include_pad: bool,
                         divisor_override) -> np.ndarray:
    """Window gradients of average pooling: each output's gradient over its divisor, at every tap (a view)."""
    share = averages(grad_output.astype(accumulation_dtype(grad_output.dtype), copy=False), g, count_include_pad,
                     divisor_override)
    return np.broadcast_to(share[..., None], share.shape + (g.kernel[0] * g.kernel[1],))


def max_pool2d_grad(grad_output: np.ndarray, x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Each output's gradient goes to its window's maximum (``first_max``); nowhere for a padding-only one."""
    return scatter_windows(max_window_grads(pool_windows(x, g, lowest(x.dtype)), grad_output, g), g)


def avg_pool2d_forward(x: np.ndarray, g: PoolGeometry, count_include_pad: bool = True,
                       divisor_override: int | None = None) -> np.ndarray:
    sums = pool_windows(x.astype(accumulation_dtype(x.dtype), copy=False), g, 0).sum(axis=-1)
    return averages(sums, g, count_include_pad, divisor_override)


def avg_pool2d_grad(grad_output: np.ndarray, g: PoolGeometry, count_include_pad: bool = True,
                    divisor_override: int | None = None) -> np.ndarray:
    # Padding taps land on the fill row / column, which is dropped.
    return scatter_windows(average_grad_windows(grad_output, g, count_include_pad, divisor_override), g)
