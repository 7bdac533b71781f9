"""Shape logic shared by every backend: argument parsing, validation, output sizes.

Every convolution and pooling call, on any device and with any algorithm, goes
through ``ConvGeometry.create`` / ``PoolGeometry.create`` first, so the rules
(and the error messages) live in exactly one place.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

PADDING_STRINGS = ("valid", "same", "full")
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w), each >= minimum."""
    if _is_int(value):
        result = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        result = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(result) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return result


def _check_shape(shape, ndim: int, name: str, layout: str) -> tuple[int, ...]:
    if not all(_is_int(s) for s in shape):  # int(6.5) would silently truncate a bad shape
        raise TypeError(f"{name} shape must hold ints, got {tuple(shape)!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({layout}), got shape {shape} ({len(shape)}-D)")
    return shape


def resolve_padding(padding, in_hw, kernel_hw, stride, dilation) -> tuple[int, int, int, int]:
    """Padding argument -> (top, bottom, left, right).

    Accepts an int, a pair (pad_h, pad_w), a 4-tuple (top, bottom, left, right),
    or "valid", "same" (TensorFlow's rule: output ceil(H / stride), the odd pixel
    on the bottom/right) and "full" (dilation * (k - 1) on every side).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "full":
            ph, pw = (d * (k - 1) for d, k in zip(dilation, kernel_hw))
            return (ph, ph, pw, pw)
        if mode == "same":
            pads = []
            for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
                out = ceil_div(size, s)
                total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, a 4-tuple or one of {PADDING_STRINGS}, "
                         f"got unknown padding string {padding!r}")
    if _is_int(padding):
        pads = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and all(_is_int(p) for p in padding):
        if len(padding) == 2:
            pads = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
        elif len(padding) == 4:
            pads = tuple(int(p) for p in padding)
        else:
            raise ValueError(f"padding as a tuple must have 2 (pad_h, pad_w) or 4 (top, bottom, left, right) "
                             f"entries, got {len(padding)}: {padding!r}")
    else:
        raise TypeError(f"padding must be an int, a pair, a 4-tuple or a string, got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype sums are kept in: float16 is a storage type, computed in float32 (as the GPU kernels do)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def check_float_dtype(array, name: str) -> np.dtype:
    dtype = np.dtype(array.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16, float32 or float64), got {dtype}")
    return dtype


def check_same_dtype(**arrays) -> np.dtype:
    """All given arrays (None skipped) share one floating dtype; return it."""
    named = [(name, a) for name, a in arrays.items() if a is not None]
    for name, a in named:
        check_float_dtype(a, name)
    first_name, first = named[0]
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise TypeError(f"dtype mismatch: {first_name} is {first.dtype} but {name} is {a.dtype}; "
                            f"cast them to one dtype")
    return np.dtype(first.dtype)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about one 2-D convolution but the data.

    Input (N, C, H, W), weight (K, C // groups, R, S), output (N, K, P, Q).
    """
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    groups: int

    @classmethod
    def create(cls, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> "ConvGeometry":
        N, C, H, W = _check_shape(input_shape, 4, "input", "N, C, H, W")
        K, Cg, R, S = _check_shape(weight_shape, 4, "weight", "out_channels, in_channels/groups, kH, kW")
        stride = pair(stride, "stride")
        dilation = pair(dilation, "dilation")
        if not _is_int(groups):
            raise TypeError(f"groups must be an int, got {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if min(N, C, H, W) < 0 or min(C, H, W) == 0:
            raise ValueError(f"input shape {tuple(input_shape)} has an empty channel or spatial dimension")
        if min(K, Cg, R, S) < 1:
            raise ValueError(f"weight shape {tuple(weight_shape)} has an empty dimension")
        if C % groups:
            raise ValueError(f"groups={groups} does not divide the input channels C={C}")
        if K % groups:
            raise ValueError(f"groups={groups} does not divide the output channels K={K}")
        if Cg * groups != C:
            raise ValueError(f"channel mismatch: input has C={C} channels, so weight.shape[1] must be "
                             f"C/groups={C // groups}, got {Cg}")
        pad = resolve_padding(padding, (H, W), (R, S), stride, dilation)
        P = conv_output_size(H, R, stride[0], pad[0] + pad[1], dilation[0])
        Q = conv_output_size(W, S, stride[1], pad[2] + pad[3], dilation[1])
        if P < 1 or Q < 1:
            raise ValueError(
                f"kernel larger than the padded input: input {H}x{W} padded by {pad} is "
                f"{H + pad[0] + pad[1]}x{W + pad[2] + pad[3]}, but the dilated kernel spans "
                f"{dilation[0] * (R - 1) + 1}x{dilation[1] * (S - 1) + 1}")
        return cls(N, C, H, W, K, R, S, P, Q, stride, dilation, pad, groups)

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def is_pointwise(self) -> bool:
        """1x1, stride 1, no padding: the convolution is a plain GEMM."""
        return (self.R, self.S, self.stride, sum(self.pad)) == (1, 1, (1, 1), 0)

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.C and self.groups > 1

    @property
    def channels_per_group(self) -> int:
        """Input channels of one group (the weight's second dimension): Cg = C / groups."""
        return self.C // self.groups

    @property
    def filters_per_group(self) -> int:
        """Output channels of one group: Kg = K / groups."""
        return self.K // self.groups

    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs; the same count for fprop, dgrad and wgrad."""
        return 2 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    def check_output(self, grad_output, name: str = "grad_output") -> None:
        if tuple(grad_output.shape) != self.output_shape:
            raise ValueError(f"{name} must have shape {self.output_shape} for this convolution, "
                             f"got {tuple(grad_output.shape)}")


def conv_transpose_geometry(input_shape, weight_shape, stride=1, padding=0, output_padding=0, dilation=1,
                            groups=1) -> ConvGeometry:
    """The convolution whose input gradient a transposed convolution is (``torch.nn.functional.conv_transpose2d``).

    The transposed convolution of x (N, C_in, H, W) with weight (C_in, C_out/groups, kH, kW) is
    ``conv2d_grad_input(x, weight, g.input_shape, g.stride, g.pad, g.dilation, g.groups)`` of the returned g:
    g's input is the transposed convolution's output, (H - 1) * stride - 2 * padding + dilation * (kH - 1) +
    output_padding + 1 rows high, and g's output is x. With output_padding >= stride (PyTorch allows it when it
    is below the dilation) g has more output rows than x has (g.P > H): x then takes g.P - H rows (g.Q - W
    columns) of zeros at the bottom (right), which add nothing to any output.
    """
    input_shape = _check_shape(input_shape, 4, "conv_transpose2d input", "N, C_in, H, W")
    weight_shape = _check_shape(weight_shape, 4, "conv_transpose2d weight", "C_in, C_out/groups, kH, kW")
    (N, C_in, H, W), (C_w, C_out_g, kH, kW) = input_shape, weight_shape
    if C_in != C_w:
        raise ValueError(f"conv_transpose2d: the input has {C_in} channels but the weight expects {C_w} "
                         f"(its first dimension)")
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding, output_padding = pair(padding, "padding", 0), pair(output_padding, "output_padding", 0)
    for op, s, d in zip(output_padding, stride, dilation):
        if not (op < s or op < d):
            raise ValueError(f"output_padding {output_padding} must be smaller than the stride {stride} or the "
                             f"dilation {dilation}")
    if not _is_int(groups) or groups < 1 or C_in % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing the {C_in} input channels")
    out_hw = [(size - 1) * s - 2 * p + d * (k - 1) + op + 1
              for size, k, s, p, op, d in zip((H, W), (kH, kW), stride, padding, output_padding, dilation)]
    if min(out_hw) < 1:
        raise ValueError(f"conv_transpose2d output would be {out_hw[0]}x{out_hw[1]}: check padding")
    return ConvGeometry.create((N, C_out_g * groups, *out_hw), weight_shape, stride, padding, dilation, groups)


def pad_bottom_right(xp, x, rows: int, cols: int):
    """x (N, C, H, W) with ``rows`` zero rows below and ``cols`` zero columns to the right (x itself when none):
    the rows a transposed convolution's input takes when ``conv_transpose_geometry`` says g.P > H."""
    if rows == 0 and cols == 0:
        return x
    return xp.pad(x, ((0, 0), (0, 0), (0, rows), (0, cols)))


def conv_output_size(size: int, kernel: int, stride: int, total_pad: int, dilation: int) -> int:
    return (size + total_pad - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """PyTorch's rule, including dropping a last window that would start in the padding."""
    numerator = size + 2 * pad - kernel + ((stride - 1) if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """A 2-D pooling window over input (N, C, H, W) giving output (N, C, P, Q)."""
    N: int
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]  # symmetric (pad_h, pad_w), as PyTorch pools take it
    P: int
    Q: int
    ceil_mode: bool

    @classmethod
    def create(cls, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False) -> "PoolGeometry":
        N, C, H, W = _check_shape(input_shape, 4, "input", "N, C, H, W")
        if min(C, H, W) < 1:
            raise ValueError(f"input shape {tuple(input_shape)} has an empty channel or spatial dimension")
        kernel = pair(kernel_size, "kernel_size")
        stride = kernel if stride is None else pair(stride, "stride")
        pad = pair(padding, "padding", minimum=0)
        for p, k in zip(pad, kernel):
            if p > k // 2:
                raise ValueError(f"padding must be at most half the kernel size, got padding={padding!r} "
                                 f"for kernel_size={kernel_size!r}")
        P = pool_output_size(H, kernel[0], stride[0], pad[0], bool(ceil_mode))
        Q = pool_output_size(W, kernel[1], stride[1], pad[1], bool(ceil_mode))
        if P < 1 or Q < 1:
            raise ValueError(f"pooling window {kernel} larger than the padded input "
                             f"{H + 2 * pad[0]}x{W + 2 * pad[1]}")
        return cls(N, C, H, W, kernel, stride, pad, P, Q, bool(ceil_mode))

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.P, self.Q)

    def window(self, p: int, q: int, count_include_pad: bool = True):
        """(h0, h1, w0, w1, divisor) of output pixel (p, q), clipped to the input.

        The divisor follows PyTorch's avg_pool2d: with count_include_pad the
        window is clipped to the padded input, otherwise to the input itself.
        """
        h0 = p * self.stride[0] - self.pad[0]
        w0 = q * self.stride[1] - self.pad[1]
        h1 = min(h0 + self.kernel[0], self.H + self.pad[0])
        w1 = min(w0 + self.kernel[1], self.W + self.pad[1])
        padded_count = (h1 - h0) * (w1 - w0)
        h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, self.H), min(w1, self.W)
        divisor = padded_count if count_include_pad else (h1 - h0) * (w1 - w0)
        return h0, h1, w0, w1, divisor

    def check_output(self, grad_output, name: str = "grad_output") -> None:
        if tuple(grad_output.shape) != self.output_shape:
            raise ValueError(f"{name} must have shape {self.output_shape} for this pooling, "
                             f"got {tuple(grad_output.shape)}")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["ConvGeometry", "PoolGeometry", "pair", "resolve_padding", "conv_output_size",
           "pool_output_size", "accumulation_dtype", "check_float_dtype", "check_same_dtype", "ceil_div"]
