"""Shape logic shared by every backend: argument parsing, validation, output sizes.

Every convolution and pooling call, on any device and with any algorithm, goes
through ``ConvGeometry.create`` / ``PoolGeometry.create`` first, so the rules
(and the error messages) live in exactly one place.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import ml_dtypes
import numpy as np

PADDING_STRINGS = ("valid", "same", "same_upper", "same_lower", "full")
#: bfloat16 (ml_dtypes' NumPy dtype; CuPy uses the same): a storage type like float16, computed in float32.
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
FLOAT_NAMES = "float16, bfloat16, float32 or float64"
#: The storage types whose sums are kept in float32.
HALF_DTYPES = (np.dtype(np.float16), BFLOAT16)
#: The integer dtypes max pooling's forward pass takes (on every device; it only compares).
INTEGER_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64))


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


def line_as_plane(value, name: str, fill: int = 1):
    """A 1-D operation's kernel_size / stride / dilation (an int or a 1-tuple) as its 2-D one over a 1-row
    plane: (fill, value). None stays None (a pooling stride defaulting to the kernel)."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not _is_int(value):
        raise TypeError(f"{name} must be an int (or a 1-tuple) for a 1-D operation, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return (fill, int(value))


def line_padding_as_plane(padding):
    """A 1-D operation's padding as the 2-D one of its 1-row plane: an int or (p,) pads both ends, a pair is
    (left, right), a string ("same", "valid", ...) applies along the line (a 1-tap axis needs none)."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, (tuple, list)) and len(padding) == 1:
        padding = padding[0]
    if _is_int(padding):
        return (0, 0, int(padding), int(padding))
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding):
        return (0, 0, int(padding[0]), int(padding[1]))
    raise TypeError(f"padding of a 1-D operation must be an int, (left, right) or a string, got {padding!r}")


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
    on the bottom/right; ONNX's SAME_UPPER, also spelled "same_upper"), "same_lower"
    (ONNX's SAME_LOWER: the odd pixel on the top/left) and "full" (dilation * (k - 1)
    on every side).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "full":
            ph, pw = (d * (k - 1) for d, k in zip(dilation, kernel_hw))
            return (ph, ph, pw, pw)
        if mode in ("same", "same_upper", "same_lower"):
            pads = []
            for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
                out = ceil_div(size, s)
                total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
                small, large = total // 2, total - total // 2
                pads += [large, small] if mode == "same_lower" else [small, large]
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
    """The dtype sums are kept in: float16 and bfloat16 are storage types, computed in float32 (as the GPU
    kernels do); NumPy has no BLAS for them either."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype in HALF_DTYPES else dtype


def is_floating(dtype) -> bool:
    """Whether ``dtype`` is one of gpuconv's floating dtypes (bfloat16 included: NumPy's kind for it is "V")."""
    return np.dtype(dtype) in FLOAT_DTYPES


def check_float_dtype(array, name: str) -> np.dtype:
    dtype = np.dtype(array.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype ({FLOAT_NAMES}), got {dtype}")
    return dtype


def check_pool_dtype(array, name: str, integers: bool) -> np.dtype:
    """A floating dtype, or with ``integers`` (max pooling's forward pass) also one of ``INTEGER_DTYPES``."""
    dtype = np.dtype(array.dtype)
    if integers and dtype in INTEGER_DTYPES:
        return dtype
    if not integers and dtype in INTEGER_DTYPES:
        raise TypeError(f"{name} has the integer dtype {dtype}: only max pooling's forward pass takes integers "
                        f"(average pooling and every gradient need {FLOAT_NAMES})")
    if dtype not in FLOAT_DTYPES:
        kinds = "a floating or integer dtype (" + ", ".join(str(d) for d in FLOAT_DTYPES + INTEGER_DTYPES) + ")" \
            if integers else f"a floating dtype ({FLOAT_NAMES})"
        raise TypeError(f"{name} must have {kinds}, got {dtype}")
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

    def dgrad_phases(self) -> tuple["DgradPhase", ...]:
        """dgrad split into its stride phases (the sub-pixel decomposition), one per (phase_h, phase_w) that
        holds input pixels: one at stride 1. See DgradPhase."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        rows = [_dgrad_phase_axis(self.H, self.pad[0], self.P, self.R, sh, dh, a) for a in range(min(sh, self.H))]
        cols = [_dgrad_phase_axis(self.W, self.pad[2], self.Q, self.S, sw, dw, b) for b in range(min(sw, self.W))]
        phases = []
        for (a, J, r_taps, top, bottom, dil_h) in rows:
            for (b, L, s_taps, left, right, dil_w) in cols:
                conv = None
                if r_taps is not None and s_taps is not None:
                    taps_h, taps_w = len(range(self.R)[r_taps]), len(range(self.S)[s_taps])
                    conv = ConvGeometry(self.N, self.K, self.P, self.Q, self.C, taps_h, taps_w, J, L, (1, 1),
                                        (dil_h, dil_w), (top, bottom, left, right), self.groups)
                phases.append(DgradPhase(a, b, slice(a, self.H, sh), slice(b, self.W, sw), r_taps, s_taps, conv))
        return tuple(phases)

    def check_output(self, grad_output, name: str = "grad_output") -> None:
        if tuple(grad_output.shape) != self.output_shape:
            raise ValueError(f"{name} must have shape {self.output_shape} for this convolution, "
                             f"got {tuple(grad_output.shape)}")


@dataclass(frozen=True)
class DgradPhase:
    """One stride phase of dgrad: the input pixels dx[:, :, rows, cols] (h = phase_h + t*stride_h) and the
    taps that reach them, w[:, :, r_taps, s_taps] (forward slices; None: no tap does, the gradient there is
    zero). Their gradient is a stride-1 forward convolution, ``conv``: of dy (N, K, P, Q) with those taps
    reversed and each group's weight transposed, (C, K / groups, R', S'), at dilation d / gcd(d, stride), with
    padding that may be negative (a crop of dy); its output is (N, C, len(rows), len(cols)). At stride 1 the
    one phase is the whole flipped filter with padding (R-1)*d - pad. Every tap belongs to one phase, so the
    phases' work is the forward's."""
    phase_h: int
    phase_w: int
    rows: slice
    cols: slice
    r_taps: slice | None
    s_taps: slice | None
    conv: "ConvGeometry | None"


def _dgrad_phase_axis(size, pad, out_size, taps, stride, dilation, phase):
    """One axis of a dgrad stride phase: (phase, J, tap slice or None, pad before, pad after, dilation).

    Input positions h = phase + t*stride (t < J) receive dy[p] * w[r] for each tap r with
    h + pad - r*dilation = p*stride: the taps r*dilation = phase + pad (mod stride), every
    stride / gcd-th from the first. With them reversed (r' = 0 .. n-1 for r = last - r'*step),
    p = t + r'*(dilation / gcd) - before: a stride-1 correlation whose padding before is
    before = (last*dilation - phase - pad) / stride, after as the output length J requires.
    """
    J = -(-(size - phase) // stride)
    reaching = [r for r in range(taps) if (phase + pad - r * dilation) % stride == 0]
    if not reaching:
        return phase, J, None, 0, 0, 1
    g = math.gcd(dilation, stride)
    first, last, step = reaching[0], reaching[-1], stride // g
    before = (last * dilation - phase - pad) // stride
    after = J - out_size + (dilation // g) * (len(reaching) - 1) - before
    return phase, J, slice(first, last + 1, step), before, after, dilation // g


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


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, dilation: int = 1,
                     pad_end: int | None = None) -> int:
    """PyTorch's rule, including dropping a last window that would start in the padding after the input;
    ``pad`` is the padding before the input and ``pad_end`` (default: ``pad``) the padding after it."""
    pad_end = pad if pad_end is None else pad_end
    span = size + pad + pad_end - dilation * (kernel - 1) - 1
    floor_out = span // stride + 1
    out = (span + ((stride - 1) if ceil_mode else 0)) // stride + 1
    # Only the window ceil_mode adds is dropped: with padding past half the kernel (ONNX) floor mode's own last
    # windows may lie in the padding, and ceil_mode never gives fewer outputs than floor mode.
    if out > floor_out and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _output_sizes(output_size, input_hw, what: str) -> tuple[int, ...]:
    """An adaptive pooling's output_size (an int, or one entry per dimension, None keeping that input size)."""
    n = len(input_hw)
    sizes = (output_size,) * n if output_size is None or _is_int(output_size) else output_size
    if not isinstance(sizes, (tuple, list)) or len(sizes) != n:
        raise TypeError(f"{what}: output_size must be an int or {n} ints (None keeps an input size), "
                        f"got {output_size!r}")
    sizes = tuple(size if s is None else s for s, size in zip(sizes, input_hw))
    if not all(_is_int(s) for s in sizes) or min(sizes) < 1:
        raise ValueError(f"{what}: output_size must hold positive ints (or None), got {output_size!r}")
    return tuple(int(s) for s in sizes)


@dataclass(frozen=True)
class PoolGeometry:
    """A 2-D pooling window over input (N, C, H, W) giving output (N, C, P, Q).

    Window (p, q) reads taps (i, j) < kernel at rows p * stride_h - pad_top + i * dilation_h and columns
    q * stride_w - pad_left + j * dilation_w. A tap outside the input is padding: it never wins a maximum and
    adds nothing to a sum; padding may exceed half the kernel (ONNX allows it), so a window may hold no input
    pixel at all. An adaptive geometry (``PoolGeometry.adaptive``) has PyTorch's adaptive bins instead: row
    bin p covers [floor(p * H / P), ceil((p + 1) * H / P)), ``kernel`` being the longest bin.
    ``taps`` gives every window's taps, the one definition the reference, the fast path and the kernels follow.
    """
    N: int
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    P: int
    Q: int
    ceil_mode: bool = False
    dilation: tuple[int, int] = (1, 1)
    is_adaptive: bool = False

    @classmethod
    def create(cls, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
               dilation=1) -> "PoolGeometry":
        """``padding``: an int, a pair (pad_h, pad_w), (top, bottom, left, right), "valid", "same" / "same_upper"
        (the odd pixel bottom/right) or "same_lower" (top/left), as for convolutions."""
        N, C, H, W = _check_shape(input_shape, 4, "input", "N, C, H, W")
        if min(C, H, W) < 1 or N < 0:
            raise ValueError(f"input shape {tuple(input_shape)} has an empty channel or spatial dimension")
        kernel = pair(kernel_size, "kernel_size")
        stride = kernel if stride is None else pair(stride, "stride")
        dilation = pair(dilation, "dilation")
        if isinstance(ceil_mode, str) or not isinstance(ceil_mode, (bool, np.bool_, int)):
            raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
        pad = resolve_padding(padding, (H, W), kernel, stride, dilation)
        P = pool_output_size(H, kernel[0], stride[0], pad[0], bool(ceil_mode), dilation[0], pad[1])
        Q = pool_output_size(W, kernel[1], stride[1], pad[2], bool(ceil_mode), dilation[1], pad[3])
        if P < 1 or Q < 1:
            spread = "" if dilation == (1, 1) else f" (dilation {dilation})"
            raise ValueError(f"pooling window {kernel}{spread} larger than the padded input "
                             f"{H + pad[0] + pad[1]}x{W + pad[2] + pad[3]}")
        return cls(N, C, H, W, kernel, stride, pad, P, Q, bool(ceil_mode), dilation)

    @classmethod
    def adaptive(cls, input_shape, output_size, what: str = "adaptive pooling") -> "PoolGeometry":
        """PyTorch's adaptive pooling to ``output_size``; sizes that divide the input are ordinary pooling
        (kernel = stride = H / P), so every path runs them as such."""
        N, C, H, W = _check_shape(input_shape, 4, "input", "N, C, H, W")
        if min(C, H, W) < 1 or N < 0:
            raise ValueError(f"input shape {tuple(input_shape)} has an empty channel or spatial dimension")
        P, Q = _output_sizes(output_size, (H, W), what)
        if H % P == 0 and W % Q == 0:
            return cls.create(input_shape, (H // P, W // Q))
        longest = tuple(max(ceil_div((i + 1) * size, out) - i * size // out for i in range(out))
                        for size, out in ((H, P), (W, Q)))
        return cls(N, C, H, W, longest, (1, 1), (0, 0, 0, 0), P, Q, is_adaptive=True)

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.P, self.Q)

    def taps(self, axis: int):
        """Rows (axis 0) or columns (axis 1) of every window's taps: ``(position, real, counted)``, each of
        shape (P, kernel_h) (or (Q, kernel_w)). ``position`` is the input row a tap reads, ``real`` whether it
        lies in the input, ``counted`` whether average pooling's count_include_pad divisor counts it (in the
        input or its padding; PyTorch clips ceil_mode windows at the end of the padding)."""
        size, out, k = (self.H, self.P, self.kernel[0]) if axis == 0 else (self.W, self.Q, self.kernel[1])
        i = np.arange(k)
        p = np.arange(out)[:, None]
        if self.is_adaptive:
            start, stop = p * size // out, -(-(p + 1) * size // out)
            position = start + i
            real = position < stop
            return position, real, real
        stride, dilation = self.stride[axis], self.dilation[axis]
        pad_begin, pad_end = self.pad[2 * axis], self.pad[2 * axis + 1]
        position = p * stride - pad_begin + i * dilation
        return position, (position >= 0) & (position < size), position < size + pad_end

    def divisors(self, count_include_pad: bool = True, divisor_override: int | None = None) -> np.ndarray:
        """Average pooling's divisor of every window, (P, Q) ints: ``divisor_override`` when given, else its
        counted taps (count_include_pad) or its real ones; 0 for a window with none (its average is 0)."""
        if divisor_override is not None:
            return np.full((self.P, self.Q), divisor_override, dtype=np.int64)
        pick = 2 if count_include_pad else 1
        rows, cols = self.taps(0)[pick].sum(axis=1), self.taps(1)[pick].sum(axis=1)
        return rows[:, None] * cols[None, :]

    def check_output(self, grad_output, name: str = "grad_output") -> None:
        if tuple(grad_output.shape) != self.output_shape:
            raise ValueError(f"{name} must have shape {self.output_shape} for this pooling, "
                             f"got {tuple(grad_output.shape)}")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["ConvGeometry", "DgradPhase", "PoolGeometry", "pair", "resolve_padding", "conv_output_size",
           "pool_output_size", "accumulation_dtype", "check_float_dtype", "check_pool_dtype", "check_same_dtype",
           "ceil_div", "FLOAT_DTYPES", "FLOAT_NAMES", "HALF_DTYPES", "BFLOAT16", "is_floating", "INTEGER_DTYPES",
           "line_as_plane", "line_padding_as_plane"]
