"""Issue 17's operations against PyTorch, forward and backward, from one table of cases and one helper.

Each case names an operation of ``gpuconv.functional`` (arrays) and ``gpuconv.nn.functional`` (tensors), the
PyTorch function it must agree with, the shapes of its floating inputs and its arguments. The helper checks
the forward values (and any indices, exactly) in float64 and float32, and the gradients of every floating
input through gpuconv's autograd against torch autograd. Where gpuconv's arguments go beyond PyTorch's
(conv padding "same_lower" or "same" with a stride, asymmetric padding, padding_mode in the functional form),
the torch side pads explicitly with ``torch.nn.functional.pad`` and convolves with padding 0.

The rules PyTorch does not define (pooling padding larger than half the kernel, windows with no real pixel,
"same"/"same_lower" pooling padding, asymmetric pooling padding, avg_pool2d's dilation, index -1 in
max_unpool, the first of several NaNs) are checked against the plain NumPy loops at the bottom of the
reference section, written from the spec (issue 17) without gpuconv's shape code.

The cases that run on convolution or pooling kernels run again on the emulated GPU path
(``tests/cuda_emulation``: our CUDA planner and kernels on the CPU emulator), float32, both schedules.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest

import gpuconv
from gpuconv import functional as gf
from gpuconv import nn
from gpuconv.autograd import as_array
from gpuconv.nn import functional as gnf

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cross-checks against torch need it")
tF = torch.nn.functional
tnn = torch.nn

from cuda_emulation.backend import EmulatorBackend, route_functional  # noqa: E402

# torch warns that its padding="same" with an even kernel copies the input: not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

INT_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64]
TORCH_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


# ------------------------------------------------------------------ helpers ---

def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def rand(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def tolerances(dtype):
    return (1e-10, 1e-12) if np.dtype(dtype) == np.float64 else (1e-4, 1e-5)


def close(ours, theirs, dtype, what):
    """ours (an array or tensor) equals theirs (a torch tensor or array) within dtype's tolerance; NaN == NaN."""
    ours = np.asarray(as_array(ours))
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, expected {theirs.shape}"
    assert ours.dtype == np.dtype(dtype), f"{what}: dtype {ours.dtype}, expected {np.dtype(dtype)}"
    rtol, atol = tolerances(dtype)
    finite = np.abs(theirs[np.isfinite(theirs)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * scale, err_msg=what)


def same_indices(ours, theirs, what):
    ours = np.asarray(as_array(ours))
    theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.dtype == np.int64, f"{what}: indices dtype {ours.dtype}, expected int64"
    assert ours.shape == theirs.shape, f"{what}: indices shape {ours.shape}, expected {theirs.shape}"
    np.testing.assert_array_equal(ours, theirs, err_msg=what)


def split(out):
    """(values, indices or None) of an operation's result."""
    if isinstance(out, tuple):
        assert len(out) == 2, f"expected (values, indices), got a {len(out)}-tuple"
        return out
    return out, None


def check_outputs(ours, theirs, dtype, what):
    y, idx = split(ours)
    ty, tidx = split(theirs)
    assert (idx is None) == (tidx is None), f"{what}: indices returned {idx is not None}, torch {tidx is not None}"
    close(y, ty, dtype, f"{what}: values")
    if tidx is not None:
        same_indices(idx, tidx, f"{what}: indices")


def ints(value, n):
    return (value,) * n if isinstance(value, int) else tuple(value)


def explicit_pads(padding, sizes, kernel, stride, dilation):
    """A conv/pool padding argument -> [(before, after)] per spatial dimension (the spec's rules, written here
    independently of gpuconv._shapes): int, 1-D (left, right), 2-D (ph, pw) or (top, bottom, left, right),
    "valid", "full", "same" (odd pixel after) and "same_lower" (odd pixel before)."""
    n = len(sizes)
    kernel, stride, dilation = ints(kernel, n), ints(stride, n), ints(dilation, n)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * n
        if padding == "full":
            return [(d * (k - 1),) * 2 for k, d in zip(kernel, dilation)]
        pads = []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((large, small) if padding == "same_lower" else (small, large))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * n
    padding = tuple(padding)
    if len(padding) == 2 * n:
        return [(padding[2 * i], padding[2 * i + 1]) for i in range(n)]
    assert len(padding) == n
    return [(p, p) for p in padding]


def torch_flat_pad(pads):
    """[(before, after)] per spatial dimension -> torch.nn.functional.pad's list (last dimension first)."""
    return [v for before, after in reversed(pads) for v in (before, after)]


def torch_conv_padded(conv):
    """torch's conv1d / conv2d with any padding and padding_mode: tF.pad explicitly, then padding 0."""
    def run(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        pads = explicit_pads(padding, tuple(x.shape[2:]), tuple(w.shape[2:]), stride, dilation)
        x = tF.pad(x, torch_flat_pad(pads), mode=TORCH_PAD_MODE[padding_mode])
        return conv(x, w, b, stride=stride, padding=0, dilation=dilation, groups=groups)
    return run


def unpool_indices(in_shape, kernel, stride, padding, out_sizes, seed):
    """Indices for max_unpool: for each input position one random plane index inside its window (clipped to
    the output plane); with stride >= kernel no two positions share an index."""
    rng = np.random.default_rng(seed)
    n = len(out_sizes)
    kernel, padding = ints(kernel, n), ints(padding, n)
    stride = kernel if stride is None else ints(stride, n)
    idx = np.empty(in_shape, np.int64)
    for pos in np.ndindex(*in_shape):
        flat = 0
        for d in range(n):
            lo = max(pos[2 + d] * stride[d] - padding[d], 0)
            hi = min(pos[2 + d] * stride[d] - padding[d] + kernel[d], out_sizes[d])
            flat = flat * out_sizes[d] + int(rng.integers(lo, hi))
        idx[pos] = flat
    return idx


# --------------------------------------------------------------- the table ---

@dataclass
class Case:
    id: str
    op: str                  # the name in gpuconv.functional and in gpuconv.nn.functional
    torch_fn: object         # (torch tensors..., **kwargs) -> torch's result
    shapes: tuple            # shapes of the floating inputs (x, weight, bias): each one gets a gradient
    kwargs: dict = field(default_factory=dict)
    extra: object = None     # seed -> the non-floating positional inputs after them (max_unpool's indices)
    kernels: bool = True     # runs on gpuconv's convolution / pooling kernels (the emulated GPU test)


def unpool(shape, kernel, stride, padding, out_sizes):
    return lambda seed: (unpool_indices(shape, kernel, stride, padding, out_sizes, seed),)


conv1d_padded = torch_conv_padded(tF.conv1d)
conv2d_padded = torch_conv_padded(tF.conv2d)

CASES = [
    # conv1d: PyTorch's own padding where it has it, explicit padding where it does not.
    Case("conv1d", "conv1d", tF.conv1d, ((2, 3, 9), (4, 3, 3), (4,))),
    Case("conv1d-stride2-pad1-dilation2", "conv1d", tF.conv1d, ((2, 3, 10), (4, 3, 3), (4,)),
         dict(stride=2, padding=1, dilation=2)),
    Case("conv1d-groups-nobias", "conv1d", tF.conv1d, ((1, 4, 8), (6, 2, 3)), dict(groups=2, padding=2)),
    Case("conv1d-depthwise", "conv1d", tF.conv1d, ((1, 3, 7), (3, 1, 3), (3,)), dict(groups=3, padding=1)),
    Case("conv1d-valid", "conv1d", tF.conv1d, ((1, 2, 6), (3, 2, 2)), dict(padding="valid")),
    Case("conv1d-same-even-kernel", "conv1d", tF.conv1d, ((1, 2, 7), (3, 2, 4), (3,)), dict(padding="same")),
    Case("conv1d-same-dilation", "conv1d", tF.conv1d, ((1, 2, 7), (3, 2, 3)), dict(padding="same", dilation=2)),
    Case("conv1d-same-stride2", "conv1d", conv1d_padded, ((1, 2, 8), (3, 2, 4), (3,)),
         dict(padding="same", stride=2)),
    Case("conv1d-same_lower-even-kernel", "conv1d", conv1d_padded, ((1, 2, 7), (3, 2, 4), (3,)),
         dict(padding="same_lower")),
    Case("conv1d-same_lower-stride2-dilation2", "conv1d", conv1d_padded, ((2, 2, 9), (3, 2, 2)),
         dict(padding="same_lower", stride=2, dilation=2)),
    Case("conv1d-left-right", "conv1d", conv1d_padded, ((1, 2, 6), (3, 2, 3), (3,)), dict(padding=(2, 1))),
    Case("conv1d-right-only-stride2", "conv1d", conv1d_padded, ((1, 2, 6), (3, 2, 3)),
         dict(padding=(0, 3), stride=2)),
    Case("conv1d-full", "conv1d", conv1d_padded, ((1, 2, 5), (3, 2, 3)), dict(padding="full")),
    Case("conv1d-reflect", "conv1d", conv1d_padded, ((1, 2, 6), (3, 2, 3), (3,)),
         dict(padding=2, padding_mode="reflect")),
    Case("conv1d-replicate-stride2", "conv1d", conv1d_padded, ((1, 2, 6), (3, 2, 3)),
         dict(padding=(1, 3), stride=2, padding_mode="replicate")),
    Case("conv1d-circular-same-groups", "conv1d", conv1d_padded, ((1, 4, 6), (4, 2, 4), (4,)),
         dict(padding="same", groups=2, padding_mode="circular")),
    # conv2d: "same_lower" and padding_mode.
    Case("conv2d-same_lower", "conv2d", conv2d_padded, ((1, 2, 5, 6), (3, 2, 3, 4), (3,)),
         dict(padding="same_lower")),
    Case("conv2d-same_lower-stride2-dilation", "conv2d", conv2d_padded, ((2, 2, 7, 6), (3, 2, 3, 2)),
         dict(padding="same_lower", stride=2, dilation=(1, 2))),
    Case("conv2d-same-stride2", "conv2d", conv2d_padded, ((1, 2, 6, 5), (3, 2, 2, 3), (3,)),
         dict(padding="same", stride=(2, 3))),
    Case("conv2d-reflect", "conv2d", conv2d_padded, ((1, 2, 5, 6), (3, 2, 3, 3), (3,)),
         dict(padding=1, padding_mode="reflect")),
    Case("conv2d-reflect-4-tuple", "conv2d", conv2d_padded, ((1, 2, 5, 6), (3, 2, 3, 3)),
         dict(padding=(1, 0, 2, 1), padding_mode="reflect")),
    Case("conv2d-replicate-pair", "conv2d", conv2d_padded, ((1, 2, 4, 5), (3, 2, 3, 2), (3,)),
         dict(padding=(1, 2), padding_mode="replicate")),
    Case("conv2d-circular-stride2-groups", "conv2d", conv2d_padded, ((1, 4, 5, 5), (4, 2, 3, 3), (4,)),
         dict(padding=2, stride=2, groups=2, padding_mode="circular")),
    Case("conv2d-reflect-same_lower-dilation", "conv2d", conv2d_padded, ((1, 2, 6, 6), (2, 2, 2, 3)),
         dict(padding="same_lower", dilation=2, padding_mode="reflect")),
    # conv_transpose2d as an array function.
    Case("conv_transpose2d-stride2-pad1-outpad1", "conv_transpose2d", tF.conv_transpose2d,
         ((1, 2, 3, 4), (2, 3, 3, 3), (3,)), dict(stride=2, padding=1, output_padding=1)),
    Case("conv_transpose2d-groups-dilation", "conv_transpose2d", tF.conv_transpose2d,
         ((2, 4, 3, 3), (4, 2, 2, 3), (4,)), dict(groups=2, dilation=2)),
    Case("conv_transpose2d-outpad-below-dilation", "conv_transpose2d", tF.conv_transpose2d,
         ((1, 2, 3, 3), (2, 2, 3, 3)), dict(stride=1, dilation=2, output_padding=1)),
    Case("conv_transpose2d-tuples", "conv_transpose2d", tF.conv_transpose2d, ((1, 3, 3, 4), (3, 2, 3, 2)),
         dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0))),
    Case("conv_transpose2d-depthwise-stride3", "conv_transpose2d", tF.conv_transpose2d,
         ((1, 3, 2, 3), (3, 1, 2, 2), (3,)), dict(stride=3, padding=(0, 1), groups=3)),
    # pad: every mode, 3-D and 4-D.
    Case("pad-3d-constant", "pad", tF.pad, ((2, 2, 5),), dict(pad=(1, 2)), kernels=False),
    Case("pad-3d-constant-value", "pad", tF.pad, ((2, 2, 5),), dict(pad=(0, 3), mode="constant", value=1.5),
         kernels=False),
    Case("pad-3d-reflect", "pad", tF.pad, ((2, 2, 5),), dict(pad=(2, 4), mode="reflect"), kernels=False),
    Case("pad-3d-replicate", "pad", tF.pad, ((2, 2, 5),), dict(pad=(3, 0), mode="replicate"), kernels=False),
    Case("pad-3d-circular", "pad", tF.pad, ((2, 2, 5),), dict(pad=(2, 5), mode="circular"), kernels=False),
    Case("pad-4d-constant-value", "pad", tF.pad, ((1, 2, 4, 5),), dict(pad=(1, 0, 2, 1), value=-2.0),
         kernels=False),
    Case("pad-4d-reflect", "pad", tF.pad, ((1, 2, 4, 5),), dict(pad=(1, 4, 3, 2), mode="reflect"), kernels=False),
    Case("pad-4d-replicate", "pad", tF.pad, ((1, 2, 4, 5),), dict(pad=(2, 0, 1, 3), mode="replicate"),
         kernels=False),
    Case("pad-4d-circular", "pad", tF.pad, ((1, 2, 4, 5),), dict(pad=(1, 2, 4, 1), mode="circular"),
         kernels=False),
    # max_pool2d: dilation, ceil_mode, padding, return_indices.
    Case("max_pool2d-dilation2", "max_pool2d", tF.max_pool2d, ((2, 2, 7, 7),), dict(kernel_size=3, stride=1,
                                                                                    dilation=2)),
    Case("max_pool2d-dilation-pad-ceil", "max_pool2d", tF.max_pool2d, ((1, 2, 8, 7),),
         dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    Case("max_pool2d-dilation-tuples", "max_pool2d", tF.max_pool2d, ((1, 2, 7, 8),),
         dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(2, 1))),
    Case("max_pool2d-return_indices", "max_pool2d", tF.max_pool2d, ((2, 2, 7, 6),),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True)),
    Case("max_pool2d-return_indices-dilation", "max_pool2d", tF.max_pool2d, ((1, 3, 6, 7),),
         dict(kernel_size=2, dilation=(1, 2), return_indices=True)),
    Case("max_pool2d-return_indices-nonsquare-ceil", "max_pool2d", tF.max_pool2d, ((1, 2, 8, 5),),
         dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True, return_indices=True)),
    # avg_pool2d: divisor_override, count_include_pad, ceil_mode.
    Case("avg_pool2d-divisor_override", "avg_pool2d", tF.avg_pool2d, ((1, 2, 7, 6),),
         dict(kernel_size=3, stride=2, padding=1, divisor_override=5)),
    Case("avg_pool2d-divisor_override-ceil-exclude-pad", "avg_pool2d", tF.avg_pool2d, ((1, 2, 7, 6),),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False, divisor_override=2)),
    Case("avg_pool2d-ceil-exclude-pad", "avg_pool2d", tF.avg_pool2d, ((2, 2, 7, 6),),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    Case("avg_pool2d-ceil-include-pad-nonsquare", "avg_pool2d", tF.avg_pool2d, ((1, 2, 6, 7),),
         dict(kernel_size=(2, 3), stride=2, padding=(1, 1), ceil_mode=True, count_include_pad=True)),
    Case("avg_pool2d-stride-pair", "avg_pool2d", tF.avg_pool2d, ((1, 2, 5, 6),), dict(kernel_size=2,
                                                                                      stride=(1, 2))),
    # 1-D pooling.
    Case("max_pool1d", "max_pool1d", tF.max_pool1d, ((2, 3, 9),), dict(kernel_size=3, stride=2, padding=1)),
    Case("max_pool1d-dilation-ceil", "max_pool1d", tF.max_pool1d, ((2, 2, 10),),
         dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    Case("max_pool1d-return_indices", "max_pool1d", tF.max_pool1d, ((2, 2, 7),),
         dict(kernel_size=2, return_indices=True)),
    Case("max_pool1d-return_indices-dilation-ceil", "max_pool1d", tF.max_pool1d, ((1, 2, 9),),
         dict(kernel_size=2, stride=2, padding=1, dilation=3, ceil_mode=True, return_indices=True)),
    Case("avg_pool1d", "avg_pool1d", tF.avg_pool1d, ((2, 3, 9),), dict(kernel_size=3, stride=2, padding=1)),
    Case("avg_pool1d-ceil", "avg_pool1d", tF.avg_pool1d, ((2, 2, 8),), dict(kernel_size=3, stride=2,
                                                                            ceil_mode=True)),
    Case("avg_pool1d-exclude-pad-ceil", "avg_pool1d", tF.avg_pool1d, ((1, 2, 8),),
         dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False)),
    Case("avg_pool1d-stride1", "avg_pool1d", tF.avg_pool1d, ((1, 2, 6),), dict(kernel_size=4, stride=1)),
    # max_unpool.
    Case("max_unpool2d", "max_unpool2d", tF.max_unpool2d, ((1, 2, 3, 3),), dict(kernel_size=2),
         extra=unpool((1, 2, 3, 3), 2, None, 0, (6, 6)), kernels=False),
    Case("max_unpool2d-output_size", "max_unpool2d", tF.max_unpool2d, ((2, 2, 3, 3),),
         dict(kernel_size=2, stride=2, output_size=(7, 7)), extra=unpool((2, 2, 3, 3), 2, 2, 0, (7, 7)),
         kernels=False),
    Case("max_unpool2d-padding-nonsquare", "max_unpool2d", tF.max_unpool2d, ((1, 1, 2, 3),),
         dict(kernel_size=3, stride=(3, 3), padding=1), extra=unpool((1, 1, 2, 3), 3, 3, 1, (4, 7)),
         kernels=False),
    Case("max_unpool1d", "max_unpool1d", tF.max_unpool1d, ((2, 2, 4),), dict(kernel_size=2),
         extra=unpool((2, 2, 4), 2, None, 0, (8,)), kernels=False),
    Case("max_unpool1d-output_size-padding", "max_unpool1d", tF.max_unpool1d, ((1, 2, 3),),
         dict(kernel_size=3, stride=3, padding=1, output_size=(8,)), extra=unpool((1, 2, 3), 3, 3, 1, (8,)),
         kernels=False),
    # adaptive and global pooling.
    Case("adaptive_avg_pool2d-nondivisible", "adaptive_avg_pool2d", tF.adaptive_avg_pool2d, ((1, 2, 7, 5),),
         dict(output_size=(3, 2)), kernels=False),
    Case("adaptive_avg_pool2d-none", "adaptive_avg_pool2d", tF.adaptive_avg_pool2d, ((1, 2, 5, 7),),
         dict(output_size=(None, 3)), kernels=False),
    Case("adaptive_avg_pool2d-larger-than-input", "adaptive_avg_pool2d", tF.adaptive_avg_pool2d, ((1, 2, 3, 3),),
         dict(output_size=(5, 4)), kernels=False),
    Case("adaptive_avg_pool2d-divisible", "adaptive_avg_pool2d", tF.adaptive_avg_pool2d, ((1, 2, 6, 4),),
         dict(output_size=(3, 2))),
    Case("adaptive_max_pool2d-nondivisible", "adaptive_max_pool2d", tF.adaptive_max_pool2d, ((2, 2, 7, 5),),
         dict(output_size=(3, 2)), kernels=False),
    Case("adaptive_max_pool2d-return_indices", "adaptive_max_pool2d", tF.adaptive_max_pool2d, ((1, 2, 7, 5),),
         dict(output_size=(3, 2), return_indices=True), kernels=False),
    Case("adaptive_max_pool2d-none-return_indices", "adaptive_max_pool2d", tF.adaptive_max_pool2d,
         ((1, 2, 5, 7),), dict(output_size=(None, 3), return_indices=True), kernels=False),
    Case("adaptive_max_pool2d-int-larger-than-input", "adaptive_max_pool2d", tF.adaptive_max_pool2d,
         ((1, 2, 3, 3),), dict(output_size=4, return_indices=True), kernels=False),
    Case("adaptive_avg_pool1d", "adaptive_avg_pool1d", tF.adaptive_avg_pool1d, ((2, 3, 7),), dict(output_size=3),
         kernels=False),
    Case("adaptive_avg_pool1d-larger", "adaptive_avg_pool1d", tF.adaptive_avg_pool1d, ((1, 2, 4),),
         dict(output_size=6), kernels=False),
    Case("adaptive_max_pool1d", "adaptive_max_pool1d", tF.adaptive_max_pool1d, ((2, 3, 7),), dict(output_size=3),
         kernels=False),
    Case("adaptive_max_pool1d-return_indices", "adaptive_max_pool1d", tF.adaptive_max_pool1d, ((1, 2, 9),),
         dict(output_size=4, return_indices=True), kernels=False),
    Case("global_avg_pool2d", "global_avg_pool2d", lambda x: tF.adaptive_avg_pool2d(x, 1), ((2, 3, 4, 5),)),
    Case("global_max_pool2d", "global_max_pool2d", lambda x: tF.adaptive_max_pool2d(x, 1), ((2, 3, 4, 5),)),
]
CASE_IDS = [c.id for c in CASES]


def case_inputs(case, dtype):
    floats = [rand(shape, seed_of(case.id) + i, dtype) for i, shape in enumerate(case.shapes)]
    extra = case.extra(seed_of(case.id) + 99) if case.extra else ()
    return floats, extra


def run_theirs(case, floats, extra, grad_seed=None):
    """torch's result, and (when grad_seed is given) the gradients of d(sum(y * dy)) for a random dy."""
    leaves = [torch.tensor(a, requires_grad=grad_seed is not None) for a in floats]
    out = case.torch_fn(*leaves, *[torch.from_numpy(e) for e in extra], **case.kwargs)
    if grad_seed is None:
        return out, None, None
    y, _ = split(out)
    dy = rand(tuple(y.shape), grad_seed, floats[0].dtype)
    y.backward(torch.from_numpy(dy))
    return out, dy, [t.grad for t in leaves]


def run_ours(module, case, floats, extra, dy=None):
    """gpuconv's result (``module``: gpuconv.functional or gpuconv.nn.functional) and, given dy, the gradients
    of its floating inputs through gpuconv's autograd."""
    if dy is None:
        return getattr(module, case.op)(*floats, *extra, **case.kwargs), None
    leaves = [gpuconv.tensor(a, requires_grad=True) for a in floats]
    out = getattr(module, case.op)(*leaves, *extra, **case.kwargs)
    y, _ = split(out)
    assert isinstance(y, gpuconv.Tensor), f"{module.__name__}.{case.op} on tensors returned {type(y).__name__}"
    y.backward(dy)
    return out, [t.grad for t in leaves]


def check_case(case, dtype, module=gnf):
    """The whole comparison: forward through gpuconv.functional on arrays, forward and backward through
    ``module`` on tensors, both against torch."""
    floats, extra = case_inputs(case, dtype)
    theirs, _, _ = run_theirs(case, floats, extra)
    ours, _ = run_ours(gf, case, floats, extra)
    check_outputs(ours, theirs, dtype, f"{case.op} forward (arrays)")
    theirs, dy, theirs_grads = run_theirs(case, floats, extra, grad_seed=seed_of(case.id) + 7)
    ours, ours_grads = run_ours(module, case, floats, extra, dy)
    check_outputs(ours, theirs, dtype, f"{case.op} forward (tensors)")
    names = ["input", "weight", "bias"]
    for name, g, tg in zip(names, ours_grads, theirs_grads):
        assert g is not None, f"{case.op}: no gradient for the {name}"
        close(g, tg, dtype, f"{case.op}: {name} gradient")


# --------------------------------------------------------------- the tests ---

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_operation_matches_torch_forward_and_backward(case, dtype):
    check_case(case, dtype)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_array_function_given_tensors_returns_a_tensor_with_the_same_backward(case):
    """gpuconv.functional.<op> on gpuconv.Tensor returns a Tensor and records the backward (the spec)."""
    check_case(case, np.float64, module=gf)


EMULATED = [c for c in CASES if c.kernels]


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("case", EMULATED, ids=[c.id for c in EMULATED])
def test_emulated_gpu_path_matches_torch(monkeypatch, case, schedule):
    """The same comparison with gpuconv.functional's convolution and pooling calls sent to our CUDA planner and
    kernels on the CPU emulator (NumPy arrays standing in for CuPy arrays), float32."""
    backend = EmulatorBackend(schedule=schedule)
    route_functional(monkeypatch, backend, None)
    check_case(case, np.float32)
    assert backend.launches, f"{case.id}: nothing ran on the emulated CUDA path"


def test_positional_argument_order_is_torchs():
    x2, x1 = rand((1, 2, 7, 8), 1), rand((1, 2, 9), 2)
    w1, b1, wt = rand((3, 2, 3), 3), rand((3,), 4), rand((2, 3, 3, 3), 5)
    t = torch.from_numpy
    close(gf.conv1d(x1, w1, b1, 2, 1, 2, 1), tF.conv1d(t(x1), t(w1), t(b1), 2, 1, 2, 1), np.float64, "conv1d")
    close(gf.conv_transpose2d(x2, wt, None, 2, 1, 1, 1, 1), tF.conv_transpose2d(t(x2), t(wt), None, 2, 1, 1, 1, 1),
          np.float64, "conv_transpose2d")
    close(gf.pad(x1, (2, 1), "reflect"), tF.pad(t(x1), (2, 1), "reflect"), np.float64, "pad")
    check_outputs(gf.max_pool2d(x2, 3, 2, 1, 2, True, True), tF.max_pool2d(t(x2), 3, 2, 1, 2, True, True),
                  np.float64, "max_pool2d")
    close(gf.avg_pool2d(x2, 3, 2, 1, True, False, 5), tF.avg_pool2d(t(x2), 3, 2, 1, True, False, 5), np.float64,
          "avg_pool2d")
    check_outputs(gf.max_pool1d(x1, 3, 2, 1, 2, True, True), tF.max_pool1d(t(x1), 3, 2, 1, 2, True, True),
                  np.float64, "max_pool1d")
    close(gf.avg_pool1d(x1, 3, 2, 1, True, False), tF.avg_pool1d(t(x1), 3, 2, 1, True, False), np.float64,
          "avg_pool1d")
    y, idx = tF.max_pool2d(t(x2), 2, 2, return_indices=True)
    close(gf.max_unpool2d(y.numpy(), idx.numpy(), 2, 2, 0, (7, 9)), tF.max_unpool2d(y, idx, 2, 2, 0, (7, 9)),
          np.float64, "max_unpool2d")
    y, idx = tF.max_pool1d(t(x1), 2, 2, return_indices=True)
    close(gf.max_unpool1d(y.numpy(), idx.numpy(), 2, 2, 0, (9,)), tF.max_unpool1d(y, idx, 2, 2, 0, (9,)),
          np.float64, "max_unpool1d")
    check_outputs(gf.adaptive_max_pool2d(x2, (3, 5), True), tF.adaptive_max_pool2d(t(x2), (3, 5), True),
                  np.float64, "adaptive_max_pool2d")


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)],
                         ids=["2x2", "3x3-s2-p1", "3x3-s2-p1-ceil"])
def test_max_pool2d_indices_round_trip_through_max_unpool2d(kwargs):
    """y, indices = max_pool2d(..., return_indices=True); max_unpool2d(y, indices) as torch's, overlapping
    windows (one pixel the maximum of two windows) included; the unpool gradient through both."""
    x = rand((2, 2, 7, 6), 11)
    y, idx = gf.max_pool2d(x, return_indices=True, **kwargs)
    ty, tidx = tF.max_pool2d(torch.from_numpy(x), return_indices=True, **kwargs)
    check_outputs((y, idx), (ty, tidx), np.float64, "max_pool2d")
    unpool_kwargs = {k: v for k, v in kwargs.items() if k != "ceil_mode"}
    out_size = x.shape[2:]
    yo = gpuconv.tensor(y, requires_grad=True)
    tyo = ty.clone().requires_grad_(True)
    out = gnf.max_unpool2d(yo, idx, output_size=out_size, **unpool_kwargs)
    tout = tF.max_unpool2d(tyo, tidx, output_size=out_size, **unpool_kwargs)
    close(out, tout, np.float64, "max_unpool2d")
    dy = rand(tuple(tout.shape), 12)
    out.backward(dy)
    tout.backward(torch.from_numpy(dy))
    close(yo.grad, tyo.grad, np.float64, "max_unpool2d gradient")


# ------------------------------------------------------------------- layers ---

def unpool_extra(shape, kernel, stride, out_sizes):
    return (unpool_indices(shape, kernel, stride, 0, out_sizes, 5),)


LAYERS = [
    ("Conv1d", lambda m: m.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9), (), {}),
    ("Conv1d-same-dilation-groups-nobias", lambda m: m.Conv1d(4, 6, 4, padding="same", dilation=2, groups=2,
                                                              bias=False), (1, 4, 9), (), {}),
    ("Conv1d-reflect", lambda m: m.Conv1d(2, 3, 3, padding=2, padding_mode="reflect"), (1, 2, 6), (), {}),
    ("Conv1d-replicate-stride2", lambda m: m.Conv1d(2, 3, 3, stride=2, padding=1, padding_mode="replicate"),
     (1, 2, 7), (), {}),
    ("Conv1d-circular", lambda m: m.Conv1d(2, 2, 4, padding=3, padding_mode="circular"), (2, 2, 6), (), {}),
    ("Conv2d-reflect", lambda m: m.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (1, 2, 5, 6), (), {}),
    ("Conv2d-replicate-pair", lambda m: m.Conv2d(2, 3, (3, 2), padding=(1, 2), padding_mode="replicate"),
     (1, 2, 4, 5), (), {}),
    ("Conv2d-circular-stride2-groups", lambda m: m.Conv2d(4, 4, 3, stride=2, padding=2, groups=2,
                                                          padding_mode="circular"), (1, 4, 5, 5), (), {}),
    ("Conv2d-reflect-same", lambda m: m.Conv2d(2, 3, (3, 4), padding="same", padding_mode="reflect"),
     (1, 2, 5, 6), (), {}),
    ("MaxPool1d-dilation-ceil", lambda m: m.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True), (2, 2, 9), (), {}),
    ("MaxPool1d-return_indices", lambda m: m.MaxPool1d(2, return_indices=True), (2, 2, 7), (), {}),
    ("AvgPool1d", lambda m: m.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 2, 8), (), {}),
    ("MaxPool2d-dilation-return_indices", lambda m: m.MaxPool2d(3, 2, 1, dilation=2, return_indices=True),
     (1, 2, 8, 7), (), {}),
    ("MaxPool2d-dilation-ceil", lambda m: m.MaxPool2d(2, dilation=(1, 2), ceil_mode=True), (1, 2, 7, 8), (), {}),
    ("AvgPool2d-divisor_override", lambda m: m.AvgPool2d(3, 2, 1, divisor_override=4), (1, 2, 7, 6), (), {}),
    ("AvgPool2d-divisor_override-ceil", lambda m: m.AvgPool2d(2, ceil_mode=True, divisor_override=3),
     (1, 2, 5, 5), (), {}),
    ("AdaptiveMaxPool2d-none-return_indices", lambda m: m.AdaptiveMaxPool2d((3, None), return_indices=True),
     (1, 2, 7, 5), (), {}),
    ("AdaptiveMaxPool2d", lambda m: m.AdaptiveMaxPool2d(2), (1, 2, 5, 5), (), {}),
    ("AdaptiveAvgPool1d", lambda m: m.AdaptiveAvgPool1d(3), (2, 2, 7), (), {}),
    ("AdaptiveMaxPool1d", lambda m: m.AdaptiveMaxPool1d(3), (2, 2, 7), (), {}),
    ("AdaptiveMaxPool1d-return_indices", lambda m: m.AdaptiveMaxPool1d(4, return_indices=True), (2, 2, 7), (), {}),
    ("MaxUnpool2d", lambda m: m.MaxUnpool2d(2), (1, 2, 3, 3), unpool_extra((1, 2, 3, 3), 2, 2, (6, 6)), {}),
    ("MaxUnpool2d-output_size", lambda m: m.MaxUnpool2d(2, 2), (1, 2, 3, 3),
     unpool_extra((1, 2, 3, 3), 2, 2, (7, 7)), dict(output_size=(7, 7))),
]


@pytest.mark.parametrize("make,shape,extra,call_kwargs", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_layer_matches_torch(make, shape, extra, call_kwargs):
    """The layer with torch's weights (state_dict), float64: outputs, indices, input and parameter gradients."""
    nn.manual_seed(0)
    torch.manual_seed(0)
    theirs = make(tnn).double()
    ours = make(nn).double()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = rand(shape, seed_of(str(shape)))
    xt, xo = torch.tensor(x, requires_grad=True), gpuconv.tensor(x, requires_grad=True)
    out_t = theirs(xt, *[torch.from_numpy(e) for e in extra], **call_kwargs)
    out_o = ours(xo, *extra, **call_kwargs)
    check_outputs(out_o, out_t, np.float64, "layer forward")
    (yt, _), (yo, _) = split(out_t), split(out_o)
    dy = rand(tuple(yt.shape), 3)
    yt.backward(torch.from_numpy(dy))
    yo.backward(dy)
    close(xo.grad, xt.grad, np.float64, "input gradient")
    theirs_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in ours_params.items():
        close(p.grad, theirs_params[name].grad, np.float64, name)


# ------------------------------------------- -inf, NaN: the rules torch has ---

def torch_max_pool(x, dims, kwargs):
    xt = torch.tensor(x, requires_grad=True)
    y, idx = (tF.max_pool2d if dims == 2 else tF.max_pool1d)(xt, return_indices=True, **kwargs)
    dy = rand(tuple(y.shape), 21, x.dtype)
    y.backward(torch.from_numpy(dy))
    return y, idx, dy, xt.grad


def ours_max_pool(x, dims, kwargs, dy):
    op = "max_pool2d" if dims == 2 else "max_pool1d"
    y, idx = getattr(gf, op)(x, return_indices=True, **kwargs)
    xo = gpuconv.tensor(x, requires_grad=True)
    yo, idx_o = getattr(gnf, op)(xo, return_indices=True, **kwargs)
    np.testing.assert_array_equal(np.asarray(as_array(yo)), y)
    np.testing.assert_array_equal(np.asarray(as_array(idx_o)), np.asarray(as_array(idx)))
    yo.backward(dy)
    return y, idx, xo.grad


MINUS_INF_CASES = [
    ("2d-pad1", 2, dict(kernel_size=3, stride=2, padding=1)),
    ("2d-dilation-pad-ceil", 2, dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("2d-nonsquare", 2, dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1))),
    ("1d-pad1-dilation2", 1, dict(kernel_size=3, stride=2, padding=1, dilation=2)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("dims,kwargs", [c[1:] for c in MINUS_INF_CASES], ids=[c[0] for c in MINUS_INF_CASES])
def test_max_pool_window_of_only_minus_inf_goes_to_its_first_real_pixel_as_torch(dims, kwargs, dtype):
    """Windows whose real pixels are all -inf (padding, corners, a whole -inf block): the value -inf, the index
    and the gradient at the window's first real pixel, as PyTorch's."""
    shape = (1, 2, 7, 8) if dims == 2 else (2, 2, 11)
    x = rand(shape, 31, dtype)
    if dims == 2:
        x[0, 0, :4, :5] = -np.inf
        x[0, 1] = -np.inf
    else:
        x[0, 0, :6] = -np.inf
        x[1, 1] = -np.inf
    ty, tidx, dy, tgrad = torch_max_pool(x, dims, kwargs)
    y, idx, grad = ours_max_pool(x, dims, kwargs, dy)
    check_outputs((y, idx), (ty, tidx), dtype, "values")
    close(grad, tgrad, dtype, "gradient")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("dims,kwargs", [c[1:] for c in MINUS_INF_CASES], ids=[c[0] for c in MINUS_INF_CASES])
def test_max_pool_nan_propagates_with_its_index_as_torch(dims, kwargs, dtype):
    """One NaN per window (NaNs far apart): every window holding it is NaN, its index is the NaN's, and the
    gradient goes to it, as PyTorch's."""
    shape = (1, 2, 7, 8) if dims == 2 else (2, 2, 11)
    x = rand(shape, 41, dtype)
    if dims == 2:
        x[0, 0, 1, 1] = x[0, 0, 6, 7] = x[0, 1, 0, 0] = np.nan
    else:
        x[0, 0, 1] = x[1, 1, 10] = np.nan
    ty, tidx, dy, tgrad = torch_max_pool(x, dims, kwargs)
    assert torch.isnan(ty).any()
    y, idx, grad = ours_max_pool(x, dims, kwargs, dy)
    check_outputs((y, idx), (ty, tidx), dtype, "values")
    close(grad, tgrad, dtype, "gradient")


def test_adaptive_max_pool2d_nan_and_minus_inf_as_torch():
    x = rand((1, 2, 7, 5), 51)
    x[0, 0, 2, 1] = np.nan
    x[0, 1, :3, :] = -np.inf
    xt = torch.tensor(x, requires_grad=True)
    ty, tidx = tF.adaptive_max_pool2d(xt, (3, 2), return_indices=True)
    dy = rand(tuple(ty.shape), 52)
    ty.backward(torch.from_numpy(dy))
    xo = gpuconv.tensor(x, requires_grad=True)
    yo, idx = gnf.adaptive_max_pool2d(xo, (3, 2), return_indices=True)
    check_outputs((yo, idx), (ty, tidx), np.float64, "adaptive_max_pool2d")
    yo.backward(dy)
    close(xo.grad, xt.grad, np.float64, "gradient")


# --------------------------------------------------------- integer dtypes ---

INT_POOL_CASES = [
    ("2x2", dict(kernel_size=2)),
    ("3x3-s2-p1-ceil", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("3x3-s1-p1-dilation2", dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ("nonsquare", dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ("padding-larger-than-kernel", dict(kernel_size=2, stride=2, padding=3)),
    ("same_lower", dict(kernel_size=2, stride=2, padding="same_lower")),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in INT_POOL_CASES], ids=[c[0] for c in INT_POOL_CASES])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=[np.dtype(d).name for d in INT_DTYPES])
def test_integer_max_pool2d(dtype, kwargs):
    """Integer max pooling, exact over the dtype's whole range: values and indices against the NumPy loop, and
    against torch where torch takes the dtype and the arguments; windows with no real pixel give the dtype's
    minimum and index -1."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(61)
    x = rng.integers(info.min, info.max, size=(2, 2, 5, 7), dtype=dtype, endpoint=True)
    x[0, 0, :2, :] = info.min  # whole windows at the minimum: the first real pixel
    x[0, 1, 1:3, 2:5] = info.max  # ties: the first maximum
    x[1, 0, 4, 6] = info.max - 1  # values a float64 cast would round (int64)
    x[1, 0, 4, 5] = info.max
    y, idx = gf.max_pool2d(x, return_indices=True, **kwargs)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(gf.max_pool2d(x, **kwargs), y)
    ry, ridx = brute_max_pool(x, **kwargs)
    np.testing.assert_array_equal(y, ry)
    same_indices(idx, ridx, "indices vs the loop")
    yo = gnf.max_pool2d(gpuconv.tensor(x), **kwargs)
    assert isinstance(yo, gpuconv.Tensor) and yo.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(yo.numpy(), y)
    try:
        ty, tidx = tF.max_pool2d(torch.from_numpy(x), return_indices=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return  # torch lacks this dtype or these arguments: the loop above is the reference
    np.testing.assert_array_equal(y, ty.numpy())
    same_indices(idx, tidx, "indices vs torch")


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("kwargs", [INT_POOL_CASES[1][1], INT_POOL_CASES[4][1]], ids=[INT_POOL_CASES[1][0],
                                                                                       INT_POOL_CASES[4][0]])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=[np.dtype(d).name for d in INT_DTYPES])
def test_emulated_gpu_integer_max_pool2d(monkeypatch, dtype, kwargs, schedule):
    """The integer max pooling kernels (emulated), values and indices, against the NumPy loop."""
    backend = EmulatorBackend(schedule=schedule)
    route_functional(monkeypatch, backend, None)
    info = np.iinfo(dtype)
    x = np.random.default_rng(62).integers(info.min, info.max, size=(1, 2, 5, 7), dtype=dtype, endpoint=True)
    x[0, 0, :2, :] = info.min
    x[0, 1, 1:3, 2:5] = info.max
    y, idx = gf.max_pool2d(x, return_indices=True, **kwargs)
    ry, ridx = brute_max_pool(x, **kwargs)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, ry)
    same_indices(idx, ridx, "indices")
    np.testing.assert_array_equal(gf.max_pool2d(x, **kwargs), ry)
    assert {launch.variant.op for launch in backend.launches} >= {"maxpool2d_forward", "maxpool2d_forward_indices"}


# ------------------------------------------ the rules torch does not have ---
# Plain loops from the spec: window tap i of output p sits at p * stride - pad_before + i * dilation; a tap is a
# real pixel when it falls inside the input. Max: the last NaN, else the first maximum in row-major order, over
# the real pixels; no real pixel -> -inf (integers: the dtype's minimum), index -1, no gradient. Avg: the sum of
# the real pixels over divisor_override, else over the taps inside the padded input (count_include_pad) or the
# real pixels (not); no real pixel with count_include_pad=False -> 0.

def pool_output_size(size, k, s, before, after, d, ceil_mode):
    span = d * (k - 1) + 1
    floor_out = (size + before + after - span) // s + 1
    out = (size + before + after - span + ((s - 1) if ceil_mode else 0)) // s + 1
    if out > floor_out and (out - 1) * s >= size + before:  # the window ceil_mode added starts past the input
        out -= 1
    return out


def pool_windows(shape, kernel_size, stride, padding, dilation, ceil_mode):
    """shape (N, C, H, W) -> output (P, Q) and, per output pixel, its taps [(h, w, inside_padded, real)]."""
    H, W = shape[2:]
    kernel = ints(kernel_size, 2)
    stride = kernel if stride is None else ints(stride, 2)
    dilation = ints(dilation, 2)
    (top, bottom), (left, right) = explicit_pads(padding, (H, W), kernel, stride, dilation)
    P = pool_output_size(H, kernel[0], stride[0], top, bottom, dilation[0], ceil_mode)
    Q = pool_output_size(W, kernel[1], stride[1], left, right, dilation[1], ceil_mode)
    windows = {}
    for p in range(P):
        for q in range(Q):
            taps = []
            for i in range(kernel[0]):
                h = p * stride[0] - top + i * dilation[0]
                for j in range(kernel[1]):
                    w = q * stride[1] - left + j * dilation[1]
                    inside = -top <= h < H + bottom and -left <= w < W + right
                    taps.append((h, w, inside, 0 <= h < H and 0 <= w < W))
            windows[p, q] = taps
    return (P, Q), windows


def brute_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    (P, Q), windows = pool_windows(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    N, C, H, W = x.shape
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    y = np.empty((N, C, P, Q), x.dtype)
    idx = np.empty((N, C, P, Q), np.int64)
    for n in range(N):
        for c in range(C):
            for (p, q), taps in windows.items():
                best, arg = low, -1
                for h, w, _, real in taps:
                    if not real:
                        continue
                    v = x[n, c, h, w]
                    if arg == -1 or v > best or v != v:  # PyTorch's test; v != v: NaN (the last one stays)
                        best, arg = v, h * W + w
                y[n, c, p, q], idx[n, c, p, q] = best, arg
    return y, idx


def brute_max_pool_grad(dy, idx, x_shape):
    dx = np.zeros(x_shape, dy.dtype)
    N, C, H, W = x_shape
    for n, c, p, q in np.ndindex(*dy.shape):
        if idx[n, c, p, q] >= 0:
            dx[n, c, idx[n, c, p, q] // W, idx[n, c, p, q] % W] += dy[n, c, p, q]
    return dx


def avg_windows(shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation):
    """Per output pixel: its real taps and its divisor (None: no real pixel and nothing to divide by)."""
    out, windows = pool_windows(shape, kernel_size, stride, padding, dilation, ceil_mode)
    result = {}
    for pq, taps in windows.items():
        real = [(h, w) for h, w, _, is_real in taps if is_real]
        divisor = divisor_override if divisor_override is not None else \
            sum(inside for _, _, inside, _ in taps) if count_include_pad else len(real)
        result[pq] = real, divisor
    return out, result


def brute_avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None, dilation=1):
    (P, Q), windows = avg_windows(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override, dilation)
    y = np.zeros(x.shape[:2] + (P, Q), x.dtype)
    for n, c in np.ndindex(*x.shape[:2]):
        for (p, q), (real, divisor) in windows.items():
            if real:
                y[n, c, p, q] = sum(float(x[n, c, h, w]) for h, w in real) / divisor
    return y


def brute_avg_pool_grad(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None, dilation=1):
    _, windows = avg_windows(x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override, dilation)
    dx = np.zeros(x_shape, dy.dtype)
    for n, c in np.ndindex(*x_shape[:2]):
        for (p, q), (real, divisor) in windows.items():
            for h, w in real:
                dx[n, c, h, w] += dy[n, c, p, q] / divisor
    return dx


RULE_CASES = [
    ("padding-larger-than-half", (1, 2, 4, 5), dict(kernel_size=3, stride=1, padding=2)),
    ("padding-larger-than-kernel", (1, 2, 3, 4), dict(kernel_size=2, stride=2, padding=3)),
    ("padding-larger-dilated-pair", (1, 1, 5, 5), dict(kernel_size=2, stride=3, padding=(4, 1), dilation=2)),
    ("padding-4-tuple", (1, 2, 6, 5), dict(kernel_size=3, stride=2, padding=(0, 2, 1, 0))),
    ("padding-4-tuple-ceil", (1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=(1, 0, 0, 2), ceil_mode=True)),
    ("padding-4-tuple-larger-than-kernel", (1, 1, 3, 3), dict(kernel_size=2, stride=1, padding=(3, 0, 0, 2))),
    ("valid", (1, 2, 5, 7), dict(kernel_size=2, stride=2, padding="valid")),
    ("same-stride2", (1, 2, 5, 6), dict(kernel_size=3, stride=2, padding="same")),
    ("same_lower-stride2", (1, 2, 5, 6), dict(kernel_size=3, stride=2, padding="same_lower")),
    ("same-even-kernel", (1, 2, 5, 5), dict(kernel_size=2, stride=1, padding="same")),
    ("same_lower-even-kernel", (1, 2, 5, 5), dict(kernel_size=2, stride=1, padding="same_lower")),
    ("same_lower-dilation-nonsquare", (1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1),
                                                         padding="same_lower")),
    ("same-kernel4-stride3", (1, 1, 7, 8), dict(kernel_size=4, stride=3, padding="same")),
    ("dilation-pad-ceil", (1, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
]
RULE_IDS = [c[0] for c in RULE_CASES]


def check_max_rule(shape, kwargs, dtype, seed):
    x = rand(shape, seed, dtype)
    ry, ridx = brute_max_pool(x, **kwargs)
    y, idx = gf.max_pool2d(x, return_indices=True, **kwargs)
    close(y, ry, dtype, "max values")
    same_indices(idx, ridx, "max indices")
    np.testing.assert_array_equal(gf.max_pool2d(x, **kwargs), y)
    xo = gpuconv.tensor(x, requires_grad=True)
    yo = gnf.max_pool2d(xo, **kwargs)
    dy = rand(ry.shape, seed + 1, dtype)
    yo.backward(dy)
    close(xo.grad, brute_max_pool_grad(dy, ridx, x.shape), dtype, "max gradient")


def check_avg_rule(shape, kwargs, dtype, seed, count_include_pad, divisor_override):
    x = rand(shape, seed, dtype)
    args = dict(kwargs, count_include_pad=count_include_pad, divisor_override=divisor_override)
    ry = brute_avg_pool(x, **args)
    close(gf.avg_pool2d(x, **args), ry, dtype, "avg values")
    xo = gpuconv.tensor(x, requires_grad=True)
    yo = gnf.avg_pool2d(xo, **args)
    dy = rand(ry.shape, seed + 1, dtype)
    yo.backward(dy)
    close(xo.grad, brute_avg_pool_grad(dy, x.shape, **args), dtype, "avg gradient")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape,kwargs", [c[1:] for c in RULE_CASES], ids=RULE_IDS)
def test_max_pool2d_rules_torch_lacks_match_the_loop(shape, kwargs, dtype):
    check_max_rule(shape, kwargs, dtype, seed_of(str(kwargs)))


@pytest.mark.parametrize("divisor_override", [None, 3], ids=["divisor", "divisor_override"])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("shape,kwargs", [c[1:] for c in RULE_CASES], ids=RULE_IDS)
def test_avg_pool2d_rules_torch_lacks_match_the_loop(shape, kwargs, count_include_pad, divisor_override):
    check_avg_rule(shape, kwargs, np.float64, seed_of(str(kwargs)), count_include_pad, divisor_override)


def test_windows_with_no_real_pixel_by_hand():
    """kernel 2, stride 2, padding 3 on a 3x4 input: window rows -3..-2, -1..0, 1..2, 3..4 and columns -3..-2,
    -1..0, 1..2, 3..4, 5..6; the first and last window rows and columns hold no real pixel."""
    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4) + 1
    y, idx = gf.max_pool2d(x, 2, 2, 3, return_indices=True)
    assert y.shape == idx.shape == (1, 1, 4, 5)
    empty = np.zeros((4, 5), bool)
    empty[[0, 3], :] = empty[:, [0, 4]] = True
    assert np.all(y[0, 0][empty] == -np.inf) and np.all(idx[0, 0][empty] == -1)
    np.testing.assert_array_equal(y[0, 0, 1:3, 1:4], [[1.0, 3.0, 4.0], [9.0, 11.0, 12.0]])
    np.testing.assert_array_equal(idx[0, 0, 1:3, 1:4], [[0, 2, 3], [8, 10, 11]])
    for count_include_pad in (False, True):
        avg = gf.avg_pool2d(x, 2, 2, 3, count_include_pad=count_include_pad)
        assert np.all(avg[0, 0][empty] == 0)
    np.testing.assert_array_equal(gf.avg_pool2d(x, 2, 2, 3, count_include_pad=False)[0, 0, 1:3, 1:4],
                                  [[1.0, 2.5, 4.0], [7.0, 8.5, 10.0]])
    ones = np.ones((1, 1, 4, 5))
    xo = gpuconv.tensor(x, requires_grad=True)
    gnf.max_pool2d(xo, 2, 2, 3).backward(ones)
    assert xo.grad.sum() == 6  # the six windows with a real pixel; the empty ones send nothing
    np.testing.assert_array_equal(xo.grad, brute_max_pool_grad(ones, idx, x.shape))
    xo = gpuconv.tensor(x, requires_grad=True)
    gnf.avg_pool2d(xo, 2, 2, 3, count_include_pad=False).backward(ones)
    np.testing.assert_array_equal(xo.grad[0, 0], [[1.0, 0.5, 0.5, 1.0], [0.5, 0.25, 0.25, 0.5],
                                                  [0.5, 0.25, 0.25, 0.5]])
    np.testing.assert_array_equal(xo.grad, brute_avg_pool_grad(ones, x.shape, 2, 2, 3, count_include_pad=False))


def test_max_pool1d_large_padding_and_float32_min_window():
    x = rand((2, 2, 5), 71, np.float32)
    x[0, 0] = -np.inf
    kwargs = dict(kernel_size=2, stride=2, padding=3)
    y, idx = gf.max_pool1d(x, return_indices=True, **kwargs)
    ry, ridx = brute_max_pool(x[:, :, None, :], kernel_size=(1, 2), stride=(1, 2), padding=(0, 3))
    close(y, ry[:, :, 0], np.float32, "values")
    same_indices(idx, ridx[:, :, 0], "indices")
    assert ridx[0, 0, 0, 0] == -1 and ridx[0, 0, 0, 1] == 0  # no real pixel; only -inf pixels: the first one


def test_max_pool2d_several_nans_last_wins():
    """PyTorch's rule (its loop keeps v when v > max or v is NaN): the last NaN in row-major window order is
    the value's index and takes the gradient."""
    x = rand((1, 2, 4, 6), 81)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # window (0, 0) of 2x2: last NaN at (1, 0)
    x[0, 1, 2, 5] = x[0, 1, 3, 4] = x[0, 1, 3, 5] = np.nan
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1, dilation=1),
                   dict(kernel_size=2, stride=1, dilation=2, padding="same")):
        ry, ridx = brute_max_pool(x, **kwargs)
        y, idx = gf.max_pool2d(x, return_indices=True, **kwargs)
        close(y, ry, np.float64, f"{kwargs}: values")
        same_indices(idx, ridx, f"{kwargs}: indices")
        xo = gpuconv.tensor(x, requires_grad=True)
        dy = rand(ry.shape, 82)
        gnf.max_pool2d(xo, **kwargs).backward(dy)
        close(xo.grad, brute_max_pool_grad(dy, ridx, x.shape), np.float64, f"{kwargs}: gradient")


def test_max_unpool_skips_index_minus_one():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    idx = np.array([[[[0, -1], [9, -1]]]])
    y = gf.max_unpool2d(x, idx, 2)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 0, 0], expected[0, 0, 2, 1] = 1.0, 3.0
    np.testing.assert_array_equal(y, expected)
    xo = gpuconv.tensor(x, requires_grad=True)
    dy = rand((1, 1, 4, 4), 91)
    gnf.max_unpool2d(xo, idx, 2).backward(dy)
    np.testing.assert_array_equal(xo.grad, [[[[dy[0, 0, 0, 0], 0.0], [dy[0, 0, 2, 1], 0.0]]]])
    # The -1 of a pooling window with no real pixel round-trips.
    x = rand((1, 2, 3, 4), 92)
    y, idx = gf.max_pool2d(x, 2, 2, 3, return_indices=True)
    assert (idx == -1).any()
    out = gf.max_unpool2d(np.where(idx >= 0, y, 0.0), idx, 2, 2, 3, output_size=(3, 4))
    expected = np.zeros_like(x)
    for n, c, p, q in np.ndindex(*idx.shape):
        if idx[n, c, p, q] >= 0:
            expected[n, c, idx[n, c, p, q] // 4, idx[n, c, p, q] % 4] = y[n, c, p, q]
    np.testing.assert_array_equal(out, expected)
    y1 = gf.max_unpool1d(np.array([[[5.0, 6.0, 7.0]]]), np.array([[[1, -1, 4]]]), 2)
    np.testing.assert_array_equal(y1, [[[0.0, 5.0, 0.0, 0.0, 7.0, 0.0]]])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_conv_padding_taps_take_part_with_an_inf_weight():
    """PyTorch's CPU rule (the spec): fprop's y includes 0 * w for each padding tap (an inf weight makes every
    output whose window touches padding NaN) and wgrad's dw includes dy * 0 (a NaN in dy reaches every dw tap);
    checked with conv1d and conv2d "same_lower" against torch on an explicitly zero-padded input."""
    for op, x_shape, w_shape, kwargs, torch_fn in [
            ("conv1d", (1, 2, 6), (2, 2, 3), dict(padding=(2, 1)), conv1d_padded),
            ("conv1d", (1, 2, 6), (2, 2, 4), dict(padding="same_lower"), conv1d_padded),
            ("conv2d", (1, 2, 5, 4), (2, 2, 3, 2), dict(padding="same_lower"), conv2d_padded)]:
        x, w = rand(x_shape, 101), rand(w_shape, 102)
        w[(0, 1) + (0,) * (len(w_shape) - 2)] = np.inf
        wt = torch.tensor(w, requires_grad=True)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_fn(xt, wt, None, **kwargs)
        dy = rand(tuple(yt.shape), 103)
        dy[(0, 1) + (1,) * (len(w_shape) - 2)] = np.nan
        yt.backward(torch.from_numpy(dy))
        xo, wo = gpuconv.tensor(x, requires_grad=True), gpuconv.tensor(w, requires_grad=True)
        yo = getattr(gnf, op)(xo, wo, None, **kwargs)
        close(yo, yt, np.float64, f"{op} {kwargs}: forward")
        assert np.isnan(yo.numpy()).any()
        yo.backward(dy)
        close(wo.grad, wt.grad, np.float64, f"{op} {kwargs}: weight gradient")
        close(xo.grad, xt.grad, np.float64, f"{op} {kwargs}: input gradient")


EMULATED_RULES = ["padding-larger-than-kernel", "padding-4-tuple-ceil", "same_lower-dilation-nonsquare",
                  "same-kernel4-stride3"]


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("shape,kwargs", [c[1:] for c in RULE_CASES if c[0] in EMULATED_RULES],
                         ids=EMULATED_RULES)
def test_emulated_gpu_pooling_rules_match_the_loop(monkeypatch, shape, kwargs, schedule):
    """The pooling kernels (emulated) on windows with no real pixel, asymmetric and "same" padding."""
    backend = EmulatorBackend(schedule=schedule)
    route_functional(monkeypatch, backend, None)
    seed = seed_of(str(kwargs))
    check_max_rule(shape, kwargs, np.float32, seed)
    check_avg_rule(shape, kwargs, np.float32, seed, False, None)
    check_avg_rule(shape, kwargs, np.float32, seed, True, None)
    assert backend.launches


def test_brute_force_loops_agree_with_torch_where_torch_defines_the_result():
    """The loops above are the reference for the rules torch lacks: on arguments torch takes they give torch's
    results, so they are written right."""
    x = rand((2, 2, 7, 6), 111)
    x[0, 0, :3, :3] = -np.inf
    for kwargs in (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=2, dilation=2),
                   dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True)):
        ry, ridx = brute_max_pool(x, **kwargs)
        ty, tidx = tF.max_pool2d(torch.from_numpy(x), return_indices=True, **kwargs)
        np.testing.assert_array_equal(ry, ty.numpy())
        np.testing.assert_array_equal(ridx, tidx.numpy())
    x = rand((2, 2, 7, 6), 112)
    for kwargs in (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
                   dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                   dict(kernel_size=(2, 3), stride=2, padding=(1, 1), ceil_mode=True, divisor_override=5)):
        xt = torch.tensor(x, requires_grad=True)
        ty = tF.avg_pool2d(xt, **kwargs)
        dy = rand(tuple(ty.shape), 113)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(brute_avg_pool(x, **kwargs), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(brute_avg_pool_grad(dy, x.shape, **kwargs), xt.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)
    assert explicit_pads("same", (7, 6), (3, 4), (2, 1), (1, 1)) == [(1, 1), (1, 2)]
    assert explicit_pads("same_lower", (7, 6), (3, 4), (2, 1), (1, 1)) == [(1, 1), (2, 1)]
    assert math.ceil(7 / 2) == pool_output_size(7, 3, 2, 1, 1, 1, False)


# --------------------------------------------- views and empty batches ---

VIEW_CASES = ["conv1d-stride2-pad1-dilation2", "conv1d-reflect", "conv2d-same_lower", "conv2d-circular-stride2-groups",
              "conv_transpose2d-stride2-pad1-outpad1", "pad-3d-reflect", "pad-4d-circular",
              "max_pool2d-return_indices-dilation", "avg_pool2d-divisor_override", "max_pool1d-return_indices",
              "avg_pool1d-exclude-pad-ceil", "max_unpool2d-output_size", "max_unpool1d",
              "adaptive_max_pool2d-return_indices", "adaptive_avg_pool1d", "global_max_pool2d"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in VIEW_CASES], ids=VIEW_CASES)
def test_non_contiguous_inputs_give_the_same_results(case):
    """Every input a view with negative strides (the last axis reversed, then reversed back by the view): the
    values are the contiguous case's, so the results and gradients must be too."""
    floats, extra = case_inputs(case, np.float64)
    views = [np.ascontiguousarray(a[..., ::-1])[..., ::-1] if a.ndim > 1 else a for a in floats]
    extra_views = [np.ascontiguousarray(e[..., ::-1])[..., ::-1] for e in extra]
    assert all(not v.flags.c_contiguous for v in views + extra_views if v.ndim > 1)
    theirs, dy, theirs_grads = run_theirs(case, floats, extra, grad_seed=5)
    check_outputs(run_ours(gf, case, views, extra_views)[0], theirs, np.float64, f"{case.op} forward (views)")
    ours, grads = run_ours(gnf, case, views, extra_views, dy[..., ::-1][..., ::-1])
    for g, tg in zip(grads, theirs_grads):
        close(g, tg, np.float64, f"{case.op}: gradient (views)")


EMPTY_BATCH = [
    ("conv1d", lambda m, t: m.conv1d(t(rand((0, 2, 6), 1)), t(rand((3, 2, 3), 2)), padding=1)),
    # torch's conv1d has no padding_mode: its zero-padded result has the same (empty) shape.
    ("conv1d-reflect", lambda m, t: m.conv1d(t(rand((0, 2, 6), 1)), t(rand((3, 2, 3), 2)), padding=1,
                                             **({"padding_mode": "reflect"} if m is not tF else {}))),
    ("conv_transpose2d", lambda m, t: m.conv_transpose2d(t(rand((0, 2, 3, 3), 1)), t(rand((2, 3, 3, 3), 2)),
                                                         stride=2)),
    ("pad-reflect", lambda m, t: m.pad(t(rand((0, 2, 4, 5), 1)), (1, 2, 2, 1), mode="reflect")),
    ("max_pool2d-indices", lambda m, t: m.max_pool2d(t(rand((0, 2, 5, 5), 1)), 3, 2, 1, 2, return_indices=True)),
    ("avg_pool2d-divisor", lambda m, t: m.avg_pool2d(t(rand((0, 2, 5, 5), 1)), 2, divisor_override=3)),
    ("max_pool1d-indices", lambda m, t: m.max_pool1d(t(rand((0, 2, 7), 1)), 2, return_indices=True)),
    ("avg_pool1d", lambda m, t: m.avg_pool1d(t(rand((0, 2, 7), 1)), 3, 2, 1)),
    ("max_unpool2d", lambda m, t: m.max_unpool2d(t(rand((0, 2, 2, 2), 1)), t(np.zeros((0, 2, 2, 2), np.int64)), 2)),
    ("adaptive_avg_pool2d", lambda m, t: m.adaptive_avg_pool2d(t(rand((0, 2, 5, 7), 1)), (3, 2))),
    ("adaptive_max_pool1d", lambda m, t: m.adaptive_max_pool1d(t(rand((0, 2, 7), 1)), 3, return_indices=True)),
]


@pytest.mark.parametrize("call", [c[1] for c in EMPTY_BATCH], ids=[c[0] for c in EMPTY_BATCH])
def test_empty_batch_gives_torchs_empty_result(call):
    theirs = call(tF, torch.from_numpy)
    ours = call(gf, lambda a: a)
    check_outputs(ours, theirs, np.float64, "empty batch")
