"""Direct loop definitions that the tests compare gpuconv against.

Written straight from the definitions, independently of gpuconv's im2col and
of ``gpuconv._shapes``: plain Python loops over every index, bounds checks for
padding, arithmetic in Python floats (float64). Slow by design -- use small
shapes. Import from a test module as ``import direct`` (pytest puts tests/ on
sys.path).
"""
from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def four_sided(padding):
    """int, (pad_h, pad_w) or (top, bottom, left, right) -> (top, bottom, left, right)."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def same_padding(in_hw, kernel_hw, stride=1, dilation=1):
    """TensorFlow's "same": output ceil(size / stride), the odd padding pixel at the bottom/right."""
    pads = []
    for size, k, s, d in zip(in_hw, kernel_hw, _pair(stride), _pair(dilation)):
        out = math.ceil(size / s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, k, p, q] = bias[k] + sum_{c, r, s} x[n, g*Cg + c, p*sh + r*dh - top, q*sw + s*dw - left] * w[k, c, r, s]

    with g = k // (K / groups) the group of output channel k, and x read as 0
    outside the input. padding: int, pair or 4-tuple. Returns float64.
    """
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = four_sided(padding)
    assert C == Cg * groups and K % groups == 0
    P = (H + top + bottom - dh * (R - 1) - 1) // sh + 1
    Q = (W + left + right - dw * (S - 1) - 1) // sw + 1
    Kg = K // groups
    xl, wl = x.tolist(), w.tolist()  # Python lists: fast scalar indexing, float64 arithmetic
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            group = k // Kg
            for p in range(P):
                for q in range(Q):
                    acc = 0.0 if bias is None else float(bias[k])
                    for c in range(Cg):
                        plane = xl[n][group * Cg + c]
                        for r in range(R):
                            h = p * sh + r * dh - top
                            if not 0 <= h < H:
                                continue
                            for s in range(S):
                                v = q * sw + s * dw - left
                                if 0 <= v < W:
                                    acc += plane[h][v] * wl[k][c][r][s]
                    y[n, k, p, q] = acc
    return y


def pool_output_size(size, kernel, stride, pad, ceil_mode):
    """PyTorch's pooling output size: floor or ceil, and with ceil_mode a last
    window that would start in the bottom/right padding is dropped."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_setup(x, kernel_size, stride, padding, ceil_mode):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    P = pool_output_size(H, kh, sh, ph, ceil_mode)
    Q = pool_output_size(W, kw, sw, pw, ceil_mode)
    return N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q


def _max_window(plane, H, W, h0, w0, kh, kw):
    """(value, (h, w)) of the first maximum in row-major window order; padding is -inf; a NaN wins, the last
    one when there are several (PyTorch's loop: keep v when v > max or v is NaN)."""
    best, where = -math.inf, None
    for i in range(kh):
        for j in range(kw):
            h, v = h0 + i, w0 + j
            if 0 <= h < H and 0 <= v < W:
                val = plane[h][v]
                if where is None or (val > best) or math.isnan(val):
                    best, where = val, (h, v)
    return best, where


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q = _pool_setup(x, kernel_size, stride, padding, ceil_mode)
    xl = x.tolist()
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    y[n, c, p, q] = _max_window(xl[n][c], H, W, p * sh - ph, q * sw - pw, kh, kw)[0]
    return y


def max_pool2d_grad(dy, x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Each output's gradient is added to the first maximum of its window."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q = _pool_setup(x, kernel_size, stride, padding, ceil_mode)
    xl = x.tolist()
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    h, v = _max_window(xl[n][c], H, W, p * sh - ph, q * sw - pw, kh, kw)[1]
                    dx[n, c, h, v] += dy[n, c, p, q]
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """PyTorch's divisor: with count_include_pad, the window clipped to the padded
    input (not to the ceil_mode overhang); without, the taps inside the input."""
    N, C, H, W, kh, kw, sh, sw, ph, pw, P, Q = _pool_setup(x, kernel_size, stride, padding, ceil_mode)
    xl = x.tolist()
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    total, inside, in_padded = 0.0, 0, 0
                    for i in range(kh):
                        for j in range(kw):
                            h, v = p * sh - ph + i, q * sw - pw + j
                            if h < H + ph and v < W + pw:
                                in_padded += 1
                            if 0 <= h < H and 0 <= v < W:
                                total += xl[n][c][h][v]
                                inside += 1
                    y[n, c, p, q] = total / (in_padded if count_include_pad else inside)
    return y


def numerical_grad(f, array, eps=1e-6):
    """Central-difference gradient of the scalar ``f()`` with respect to ``array`` (float64).

    ``array`` is perturbed in place, one element at a time, and restored; ``f``
    takes no arguments and must read ``array`` on every call.
    """
    assert array.dtype == np.float64, "numerical gradients need float64"
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        f_plus = float(f())
        array[index] = saved - eps
        f_minus = float(f())
        array[index] = saved
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad
