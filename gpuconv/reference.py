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

from ._shapes import ConvGeometry, PoolGeometry, accumulation_dtype


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

def _pool_windows(x: np.ndarray, g: PoolGeometry, fill: float) -> np.ndarray:
    """x (N, C, H, W) -> windows (N, C, P, Q, kh*kw), out-of-input taps set to ``fill``."""
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
    # Pad enough for ceil_mode windows that run past the bottom/right edge.
    extra_h = max((g.P - 1) * sh + kh - g.H - ph, 0)
    extra_w = max((g.Q - 1) * sw + kw - g.W - pw, 0)
    img = np.pad(x, [(0, 0), (0, 0), (ph, extra_h), (pw, extra_w)], constant_values=fill)
    win = np.empty(x.shape[:2] + (g.P, g.Q, kh * kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            win[..., i * kw + j] = img[:, :, i:i + sh * g.P:sh, j:j + sw * g.Q:sw]
    return win


def _scatter_windows(grad_win: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """The adjoint of ``_pool_windows``: sum window gradients back onto the input."""
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
    extra_h = max((g.P - 1) * sh + kh - g.H - ph, 0)
    extra_w = max((g.Q - 1) * sw + kw - g.W - pw, 0)
    img = np.zeros((g.N, g.C, g.H + ph + extra_h, g.W + pw + extra_w), dtype=grad_win.dtype)
    for i in range(kh):
        for j in range(kw):
            img[:, :, i:i + sh * g.P:sh, j:j + sw * g.Q:sw] += grad_win[..., i * kw + j]
    return img[:, :, ph:ph + g.H, pw:pw + g.W]


def max_pool2d_forward(x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    # NaN propagates (np.max), as PyTorch's max pooling does.
    return _pool_windows(x, g, -np.inf).max(axis=-1)


def max_pool2d_grad(grad_output: np.ndarray, x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """Each output's gradient goes to the first maximum of its window (PyTorch's choice)."""
    win = _pool_windows(x, g, -np.inf)
    first_max = win.argmax(axis=-1)
    grad_win = np.zeros_like(win)
    np.put_along_axis(grad_win, first_max[..., None], grad_output[..., None], axis=-1)
    return _scatter_windows(grad_win, g)


def _avg_divisors(g: PoolGeometry, count_include_pad: bool) -> np.ndarray:
    return np.array([[g.window(p, q, count_include_pad)[4] for q in range(g.Q)] for p in range(g.P)])


def avg_pool2d_forward(x: np.ndarray, g: PoolGeometry, count_include_pad: bool = True) -> np.ndarray:
    acc = accumulation_dtype(x.dtype)
    sums = _pool_windows(x.astype(acc, copy=False), g, 0.0).sum(axis=-1)
    return sums / _avg_divisors(g, count_include_pad).astype(acc)


def avg_pool2d_grad(grad_output: np.ndarray, g: PoolGeometry, count_include_pad: bool = True) -> np.ndarray:
    acc = accumulation_dtype(grad_output.dtype)
    share = grad_output.astype(acc, copy=False) / _avg_divisors(g, count_include_pad).astype(acc)
    (kh, kw) = g.kernel
    grad_win = np.broadcast_to(share[..., None], share.shape + (kh * kw,))
    return _scatter_windows(np.ascontiguousarray(grad_win), g)
