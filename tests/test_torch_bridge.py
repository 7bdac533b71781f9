"""gpuconv.torch, the PyTorch bridge, on the CPU: torch.autograd.gradcheck of every function (the CPU path,
and the CUDA path on the emulator), the gradients asked for and no others, layouts, dtypes, autocast, the
modules and convert(), whole ResNet-18 / MobileNet training steps against PyTorch's own convolutions, and
DistributedDataParallel over gloo."""
from __future__ import annotations

import copy
import itertools
import os
import socket
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gpuconv.torch as gt  # noqa: E402
from gpuconv import functional  # noqa: E402
from gpuconv._shapes import BFLOAT16  # noqa: E402
from gpuconv.suites import load_suite  # noqa: E402

from bench import networks  # noqa: E402
from cuda_emulation.backend import EmulatorBackend, route_functional  # noqa: E402
import torch_ddp_worker  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rand(*shape, seed=0, dtype=torch.float64, requires_grad=True):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.requires_grad_(requires_grad)


# One table per function: (id, keyword arguments, input shape, weight shape). Weights are PyTorch's layouts.
CONV_CASES = [
    ("plain", dict(), (2, 3, 5, 5), (4, 3, 3, 3)),
    ("stride2-pad1", dict(stride=2, padding=1), (1, 2, 7, 6), (3, 2, 3, 2)),
    ("dilation2-stride-1x2-pad2", dict(stride=(1, 2), padding=2, dilation=2), (1, 2, 7, 8), (3, 2, 3, 3)),
    ("groups2-same-even-kernel", dict(padding="same", groups=2), (2, 4, 5, 6), (6, 2, 2, 4)),  # asymmetric pads
    ("depthwise-stride2", dict(stride=2, padding=1, groups=3), (1, 3, 6, 5), (3, 1, 3, 3)),
    ("depthwise-multiplier2", dict(padding=(1, 0), groups=2), (1, 2, 5, 5), (4, 1, 3, 3)),
    ("pointwise", dict(), (2, 4, 3, 3), (5, 4, 1, 1)),
]
TRANSPOSE_CASES = [
    ("plain", dict(), (2, 3, 4, 4), (3, 2, 3, 3)),
    ("stride2-pad1-outpad1", dict(stride=2, padding=1, output_padding=1), (1, 2, 3, 4), (2, 3, 3, 3)),
    ("groups2-dilation2", dict(groups=2, dilation=2), (1, 4, 3, 3), (4, 1, 2, 2)),
    ("outpad-above-stride", dict(dilation=3, padding=2, output_padding=2), (1, 2, 4, 3), (2, 2, 3, 2)),
    ("depthwise-stride-2x1", dict(stride=(2, 1), padding=(1, 0), groups=3), (1, 3, 3, 4), (3, 1, 3, 3)),
]
POOL_CASES = [
    ("max-2x2", gt.max_pool2d, F.max_pool2d, dict(kernel_size=2)),
    ("max-3x3-s2-p1-ceil", gt.max_pool2d, F.max_pool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max-3x2-s-2x1-p-1x0", gt.max_pool2d, F.max_pool2d, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    ("avg-3x3-s2-p1", gt.avg_pool2d, F.avg_pool2d, dict(kernel_size=3, stride=2, padding=1)),
    ("avg-no-count-pad-ceil", gt.avg_pool2d, F.avg_pool2d,
     dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg-2x2-s1", gt.avg_pool2d, F.avg_pool2d, dict(kernel_size=2, stride=1)),
]


def conv_inputs(xs, ws, bias=True):
    return rand(*xs), rand(*ws, seed=1), (rand(ws[0], seed=2) if bias else None)


def transpose_inputs(xs, ws, groups, bias=True):
    return rand(*xs), rand(*ws, seed=1), (rand(ws[1] * groups, seed=2) if bias else None)


def gradcheck(fn, inputs, fast=False):
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


# ------------------------------------------------------------- gradcheck, CPU path ---

@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's own, about its copy
@pytest.mark.parametrize("name,kw,xs,ws", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv2d_equals_torch_and_passes_gradcheck(name, kw, xs, ws):
    x, w, b = conv_inputs(xs, ws)
    torch.testing.assert_close(gt.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw), rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: gt.conv2d(x, w, b, **kw), (x, w, b))


def test_conv2d_four_sided_padding_is_torch_on_a_padded_input():
    """gpuconv's (top, bottom, left, right) padding, which torch.nn.functional.conv2d does not take."""
    x, w, b = conv_inputs((1, 2, 5, 6), (3, 2, 3, 3))
    pads = (1, 0, 2, 1)
    expected = F.conv2d(F.pad(x, (pads[2], pads[3], pads[0], pads[1])), w, b)
    torch.testing.assert_close(gt.conv2d(x, w, b, padding=pads), expected, rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: gt.conv2d(x, w, b, padding=pads), (x, w, b))


@pytest.mark.parametrize("name,kw,xs,ws", TRANSPOSE_CASES, ids=[c[0] for c in TRANSPOSE_CASES])
def test_conv_transpose2d_equals_torch_and_passes_gradcheck(name, kw, xs, ws):
    x, w, b = transpose_inputs(xs, ws, kw.get("groups", 1))
    torch.testing.assert_close(gt.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw),
                               rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: gt.conv_transpose2d(x, w, b, **kw), (x, w, b))


@pytest.mark.parametrize("name,ours,theirs,kw", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pooling_equals_torch_and_passes_gradcheck(name, ours, theirs, kw):
    x = rand(2, 2, 6, 5)
    torch.testing.assert_close(ours(x, **kw), theirs(x, **kw), rtol=1e-12, atol=1e-12)
    gradcheck(lambda x: ours(x, **kw), (x,))


# --------------------------------------------------- gradcheck, CUDA path emulated ---

# (id, function, float64 inputs, the algo every convolution runs with, what must run: a part of a kernel's name).
# "auto" is the fixed rule: im2col + GEMM for dense convolutions, the depthwise stencil for depthwise ones.
EMULATED = [
    ("conv2d-plain-im2col", lambda x, w, b: gt.conv2d(x, w, b), conv_inputs((1, 2, 4, 4), (3, 2, 3, 3)), "auto",
     "im2col"),
    ("conv2d-stride2-dilation-implicit-gemm", lambda x, w: gt.conv2d(x, w, None, stride=2, padding=2, dilation=2),
     conv_inputs((1, 2, 6, 5), (3, 2, 3, 2), bias=False)[:2], "implicit_gemm", "simt"),
    ("conv2d-depthwise-direct", lambda x, w: gt.conv2d(x, w, None, stride=2, padding=1, groups=3),
     conv_inputs((1, 3, 5, 5), (3, 1, 3, 3), bias=False)[:2], "auto", "depthwise"),
    ("conv_transpose2d-stride2-outpad1",
     lambda x, w, b: gt.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
     transpose_inputs((1, 2, 3, 3), (2, 3, 3, 3), 1), "implicit_gemm", "dgrad_simt"),
    ("max-3x3-s2-p1-ceil", lambda x: gt.max_pool2d(x, 3, 2, 1, ceil_mode=True), (rand(1, 2, 6, 5),), "auto",
     "maxpool2d_backward"),
    ("avg-no-count-pad", lambda x: gt.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (rand(1, 2, 6, 5),), "auto",
     "avgpool2d_backward"),
]


@pytest.mark.parametrize("fn,inputs,algo,kernel", [c[1:] for c in EMULATED], ids=[c[0] for c in EMULATED])
def test_cuda_path_on_the_emulator_passes_gradcheck(monkeypatch, fn, inputs, algo, kernel):
    """The bridge's arrays go to gpuconv's CUDA planner and kernels, run by the CPU emulator."""
    backend = EmulatorBackend()
    route_functional(monkeypatch, backend, algo=algo)
    gradcheck(fn, inputs)
    ran = {launch.variant.name for launch in backend.launches}
    assert any(kernel in name for name in ran), ran


# ---------------------------------------------------------------- autograd rules ---

def _spy(monkeypatch, *names) -> dict:
    """{name: number of calls} of gpuconv.functional's ``names`` (the bridge looks them up at each call)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(functional, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(functional, name, spy)
    return calls


SUBSETS = [s for n in (1, 2, 3) for s in itertools.combinations("xwb", n)]


@pytest.mark.parametrize("wanted", SUBSETS, ids=["".join(s) for s in SUBSETS])
def test_conv2d_computes_exactly_the_gradients_asked_for(monkeypatch, wanted):
    tensors = dict(zip("xwb", conv_inputs((2, 3, 5, 5), (4, 3, 3, 3))))
    for key, t in tensors.items():
        t.requires_grad_(key in wanted)
    calls = _spy(monkeypatch, "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
    gt.conv2d(tensors["x"], tensors["w"], tensors["b"], padding=1).square().sum().backward()
    assert calls == {"conv2d_grad_input": "x" in wanted, "conv2d_grad_weight": "w" in wanted,
                     "conv2d_grad_bias": "b" in wanted}
    mine = {k: t.grad for k, t in tensors.items()}
    for t in tensors.values():
        t.grad = None
    F.conv2d(tensors["x"], tensors["w"], tensors["b"], padding=1).square().sum().backward()
    for key, t in tensors.items():
        if key in wanted:
            torch.testing.assert_close(mine[key], t.grad, rtol=1e-12, atol=1e-12)
        else:
            assert mine[key] is None and t.grad is None


@pytest.mark.parametrize("wanted", SUBSETS, ids=["".join(s) for s in SUBSETS])
def test_conv_transpose2d_computes_exactly_the_gradients_asked_for(monkeypatch, wanted):
    tensors = dict(zip("xwb", transpose_inputs((1, 2, 3, 4), (2, 3, 3, 3), 1)))
    for key, t in tensors.items():
        t.requires_grad_(key in wanted)
    y = gt.conv_transpose2d(tensors["x"], tensors["w"], tensors["b"], stride=2, padding=1)
    calls = _spy(monkeypatch, "conv2d", "conv2d_grad_weight", "conv2d_grad_bias")
    y.square().sum().backward()
    assert calls == {"conv2d": "x" in wanted, "conv2d_grad_weight": "w" in wanted, "conv2d_grad_bias": "b" in wanted}
    for key, t in tensors.items():
        assert (t.grad is not None) == (key in wanted)


def test_no_grad_records_nothing_and_computes_the_same():
    x, w, b = conv_inputs((2, 3, 5, 5), (4, 3, 3, 3))
    with torch.no_grad():
        y = gt.conv2d(x, w, b, padding=1)
        pooled = gt.max_pool2d(y, 2)
    assert not y.requires_grad and y.grad_fn is None and pooled.grad_fn is None
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1).detach(), rtol=1e-12, atol=1e-12)
    assert gt.conv2d(x, w, b).grad_fn is not None


def test_a_module_used_twice_gets_the_sum_of_its_gradients():
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64)
    ours = gt.convert(copy.deepcopy(theirs))
    x = rand(2, 3, 5, 5)
    for conv in (theirs, ours):
        conv(torch.relu(conv(x))).sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-12, atol=1e-12)


def test_double_backward_is_refused_clearly():
    x, w, _ = conv_inputs((1, 2, 4, 4), (3, 2, 3, 3))
    y = gt.conv2d(x, w)
    (gx,) = torch.autograd.grad(y, x, grad_outputs=rand(*y.shape, seed=3), create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


# ------------------------------------------------------------------------- layouts ---

@pytest.mark.parametrize("layout", ["strided-views", "channels_last", "expanded-bias"])
def test_non_contiguous_inputs_are_made_contiguous(layout):
    base_x, base_w = rand(2, 3, 10, 7, requires_grad=False), rand(4, 3, 3, 6, seed=1, requires_grad=False)
    b = rand(4, seed=2)
    if layout == "strided-views":
        x, w = base_x[:, :, ::2, 1:].transpose(2, 3), base_w[:, :, :, ::2]
    elif layout == "channels_last":
        x, w = base_x.to(memory_format=torch.channels_last), base_w[:, :, :, :3].to(memory_format=torch.channels_last)
    else:
        x, w, b = base_x, base_w[:, :, :, :3], rand(1, seed=2).expand(4)
    assert not x.is_contiguous() or not w.is_contiguous() or not b.is_contiguous()
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = gt.conv2d(x, w, b, padding=1)
    assert y.is_contiguous()  # NCHW, whatever the input's memory format
    grads = torch.autograd.grad(y.square().sum(), (x, w))
    expected = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(grads, torch.autograd.grad(expected.square().sum(), (x, w))):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    pooled = rand(2, 3, 8, 6)[:, :, 1:, ::2]
    torch.testing.assert_close(gt.max_pool2d(pooled, 2), F.max_pool2d(pooled, 2))


def test_unbatched_input_runs_as_a_batch_of_one():
    x, w, b = conv_inputs((3, 5, 5), (4, 3, 3, 3))
    torch.testing.assert_close(gt.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1))
    torch.testing.assert_close(gt.avg_pool2d(x, 2), F.avg_pool2d(x, 2))
    tw = rand(3, 2, 3, 3, seed=3)
    torch.testing.assert_close(gt.conv_transpose2d(x, tw, stride=2), F.conv_transpose2d(x, tw, stride=2))


# -------------------------------------------------------------------------- dtypes ---

def test_float16_bfloat16_and_float32_compute_in_their_dtype():
    x64, w64 = rand(2, 3, 6, 6, requires_grad=False), rand(4, 3, 3, 3, seed=1, requires_grad=False)
    reference = F.conv2d(x64, w64, padding=1)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 2e-2)):
        x, w = x64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
        y = gt.conv2d(x, w, padding=1)
        assert y.dtype == dtype
        error = (y.double() - reference).abs().max() / reference.abs().max()
        assert error < tolerance, (dtype, float(error))
        y.sum().backward()
        assert x.grad.dtype == w.grad.dtype == dtype


def test_unsupported_dtypes_devices_and_mixes_are_refused_clearly():
    x, w = rand(1, 2, 4, 4, requires_grad=False), rand(3, 2, 3, 3, requires_grad=False)
    assert all(gt.supports_dtype(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    with pytest.raises(TypeError, match="input is torch.int64: gpuconv computes in torch.float16, torch.bfloat16, "
                                        "torch.float32, torch.float64"):
        gt.max_pool2d(x.long(), 2)
    with pytest.raises(TypeError, match="input is torch.complex128: gpuconv computes in"):
        gt.conv2d(x.to(torch.complex128), w.to(torch.complex128))
    with pytest.raises(TypeError, match="input is torch.float64 but weight is torch.float32"):
        gt.conv2d(x, w.float())
    with pytest.raises(TypeError, match="input is torch.bfloat16 but weight is torch.float16"):
        gt.conv2d(x.bfloat16(), w.half())
    with pytest.raises(ValueError, match="meta"):
        gt.conv2d(x.to("meta"), w.to("meta"))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        gt.conv2d(x, w.numpy())


# bfloat16 keeps 8 significant bits: one rounding is off by at most 2**-8 of the value, and two roundings of
# nearly the same value (ours, a reference's) differ by at most one unit in the last place, 2**-7 of the
# value's binade. Errors below are normwise, max|a - b| / max|b|, so BF16_ULP is one ulp of the output scale.
BF16_ULP = 2.0 ** -7


def _error(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def _bf16(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def _forward_backward(fn, inputs, dtype, grad_seed=3):
    """fn's output and the gradients of every input, all computed in ``dtype`` from the same bfloat16 values;
    the output gradient is bfloat16 too, so that every dtype's backward starts from the same values."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(_bf16(*y.shape, seed=grad_seed).to(dtype))
    return [y.detach()] + [t.grad for t in leaves]


def test_bfloat16_crosses_the_bridge_as_its_bits_without_a_copy():
    """Every one of the 65536 bit patterns (NaNs, infinities, subnormals, -0) both ways, on shared memory."""
    bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
    t = bits.view(torch.bfloat16)
    a = gt._as_array(t)
    assert a.dtype == BFLOAT16 and a.ctypes.data == t.data_ptr()
    assert np.array_equal(a.view(np.int16), bits.numpy())
    back = gt._as_tensor(a)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == a.ctypes.data
    assert torch.equal(back.view(torch.int16), bits)
    flipped = gt._as_tensor(a[::-1])  # a negative stride is copied (from_numpy refuses it), bits unchanged
    assert torch.equal(flipped.view(torch.int16), bits.flip(0))


BF16_CONV_CASES = CONV_CASES + [
    ("wide-reduction", dict(padding=1), (2, 64, 9, 9), (32, 64, 3, 3))]  # 576 products per output: rounding shows


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name,kw,xs,ws", BF16_CONV_CASES, ids=[c[0] for c in BF16_CONV_CASES])
def test_bfloat16_conv2d_forward_and_backward_match_torch(name, kw, xs, ws):
    """Against PyTorch in float32 on the same bfloat16 values, rounded: gpuconv accumulates in float32 and
    rounds once, so one ulp apart at most; and against PyTorch's own bfloat16, which does the same."""
    inputs = _bf16(*xs), _bf16(*ws, seed=1), _bf16(ws[0], seed=2)
    ours = _forward_backward(lambda x, w, b: gt.conv2d(x, w, b, **kw), inputs, torch.bfloat16)
    exact = [t.bfloat16() for t in _forward_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), inputs, torch.float32)]
    theirs = _forward_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), inputs, torch.bfloat16)
    for what, mine, ref, own in zip(("y", "dx", "dw", "db"), ours, exact, theirs):
        assert mine.dtype == torch.bfloat16, what
        assert _error(mine, ref) <= BF16_ULP, (what, _error(mine, ref))
        assert _error(mine, own) <= 2 * BF16_ULP, (what, _error(mine, own))


@pytest.mark.parametrize("name,kw,xs,ws", TRANSPOSE_CASES, ids=[c[0] for c in TRANSPOSE_CASES])
def test_bfloat16_conv_transpose2d_forward_and_backward_match_torch(name, kw, xs, ws):
    """As conv2d's, but two ulps for y: gpuconv rounds the dgrad to bfloat16 before the bias is added."""
    inputs = _bf16(*xs), _bf16(*ws, seed=1), _bf16(ws[1] * kw.get("groups", 1), seed=2)
    ours = _forward_backward(lambda x, w, b: gt.conv_transpose2d(x, w, b, **kw), inputs, torch.bfloat16)
    exact = [t.bfloat16() for t in
             _forward_backward(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), inputs, torch.float32)]
    for what, mine, ref in zip(("y", "dx", "dw", "db"), ours, exact):
        assert mine.dtype == torch.bfloat16, what
        assert _error(mine, ref) <= (2 if what == "y" else 1) * BF16_ULP, (what, _error(mine, ref))


@pytest.mark.parametrize("name,ours,theirs,kw", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_bfloat16_pooling_forward_and_backward_match_torch(name, ours, theirs, kw):
    """Distinct values (no ties: the gradient's pixel is the same for any tie rule), exact in bfloat16
    (integers below 2**8). Max pooling's output is exact; a gradient summed over overlapping windows and an
    average are rounded once, so one ulp from PyTorch in float32, rounded."""
    x = (torch.randperm(2 * 2 * 6 * 5, generator=torch.Generator().manual_seed(0)) - 60).reshape(2, 2, 6, 5)
    mine = _forward_backward(lambda x: ours(x, **kw), (x.bfloat16(),), torch.bfloat16)
    exact = [t.bfloat16() for t in _forward_backward(lambda x: theirs(x, **kw), (x.bfloat16(),), torch.float32)]
    own = _forward_backward(lambda x: theirs(x, **kw), (x.bfloat16(),), torch.bfloat16)
    if ours is gt.max_pool2d:
        assert torch.equal(mine[0], own[0])
    for what, m, ref in zip(("y", "dx"), mine, exact):
        assert m.dtype == torch.bfloat16 and _error(m, ref) <= BF16_ULP, (what, _error(m, ref))


def test_converted_bfloat16_model_trains_like_pytorchs_bfloat16():
    """A whole bfloat16 model (every converted module kind) against the same model on PyTorch's bfloat16:
    each layer rounds its output once on both sides, and the roundings differ by an ulp here and there, which
    later layers carry on: within 4 ulps of each tensor's scale. Gradients come back as bfloat16."""
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.AvgPool2d(2),
                           nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 2, 1)).bfloat16()
    ours = gt.convert(copy.deepcopy(theirs))
    x = _bf16(2, 3, 16, 16, seed=1)
    results = []
    for model in (ours, theirs):
        xs = x.clone().requires_grad_()
        y = model(xs)
        y.backward(_bf16(*y.shape, seed=3))
        results.append((y.detach(), xs.grad, {n: p.grad for n, p in model.named_parameters()}))
    (y, dx, grads), (y_t, dx_t, grads_t) = results
    assert y.dtype == dx.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads.values())
    assert _error(y, y_t) <= 4 * BF16_ULP and _error(dx, dx_t) <= 4 * BF16_ULP
    for name, g in grads.items():
        assert _error(g, grads_t[name]) <= 4 * BF16_ULP, (name, _error(g, grads_t[name]))
    torch.optim.SGD(ours.parameters(), lr=0.1).step()  # bfloat16 parameters take bfloat16 gradients
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())


def test_autocast_to_bfloat16_on_the_cpu_computes_convolutions_in_bfloat16_as_torch_does():
    """CPU autocast's default dtype: convolutions cast to bfloat16 and return it, pooling keeps its input's
    dtype (a bfloat16 one stays bfloat16); the parameters' gradients come back in their own float32."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    theirs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 2, 1))
    ours = gt.convert(copy.deepcopy(theirs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_t = ours(x), theirs(x)
        pooled, pooled_float = gt.max_pool2d(x.bfloat16(), 2), gt.max_pool2d(x, 2)
    assert y.dtype == y_t.dtype == pooled.dtype == torch.bfloat16 and pooled_float.dtype == torch.float32
    assert _error(y, y_t) <= 2 * BF16_ULP  # an ulp flip in the first convolution's output reaches the second
    y.float().sum().backward()
    theirs_grads = torch.autograd.grad(y_t.float().sum(), list(theirs.parameters()))
    for p, g in zip(ours.parameters(), theirs_grads):
        assert p.grad.dtype == torch.float32 and _error(p.grad, g) <= 4 * BF16_ULP


def test_autocast_to_float16_on_the_cpu_computes_in_float16_as_torch_does():
    x, w, b = (t.detach().float().requires_grad_() for t in conv_inputs((2, 3, 6, 6), (4, 3, 3, 3)))
    with torch.autocast("cpu", dtype=torch.float16):
        ours, theirs = gt.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)
        pooled = gt.max_pool2d(x, 2)
    assert ours.dtype == theirs.dtype == torch.float16 and pooled.dtype == torch.float32  # pooling never casts
    torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)
    ours.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32  # the casts are differentiable: grads in the tensors' dtype


# --------------------------------------------------------------- modules, convert ---

def test_conv2d_module_is_a_torch_conv2d_with_the_same_state_dict():
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3)
    torch.manual_seed(0)
    ours = gt.Conv2d(3, 6, 3, stride=2, padding=1, groups=3, algo="reference")
    assert isinstance(ours, nn.Conv2d) and ours.algo == "reference" and "algo='reference'" in repr(ours)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(ours(x), theirs(x))
    ours.load_state_dict(nn.Conv2d(3, 6, 3, groups=3).state_dict())


def test_conv_transpose2d_module_takes_output_size_as_pytorchs_does():
    torch.manual_seed(0)
    theirs = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    ours = gt.convert(copy.deepcopy(theirs))
    x = torch.randn(1, 4, 5, 5)
    for size in (None, [10, 9]):
        torch.testing.assert_close(ours(x, output_size=size), theirs(x, output_size=size))


def test_transposed_convolution_padding_modes_are_refused_clearly():
    with pytest.raises(ValueError, match="zeros"):  # PyTorch's own refusal, which ours keeps
        gt.ConvTranspose2d(3, 4, 3, padding_mode="reflect")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_modes_match_torch(mode):
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode=mode)
    ours = gt.convert(copy.deepcopy(theirs))
    assert type(ours) is gt.Conv2d
    x, x_ours = torch.randn(2, 3, 6, 7, requires_grad=True), None
    x_ours = x.detach().clone().requires_grad_()
    torch.testing.assert_close(ours(x_ours), theirs(x))
    ours(x_ours).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
                                    dict(kernel_size=(2, 3), stride=1, padding=(1, 0), dilation=(2, 1))])
def test_max_pool2d_dilation_and_indices_match_torch(kwargs):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    x_ours = x.detach().clone().requires_grad_()
    y, indices = gt.max_pool2d(x_ours, return_indices=True, **kwargs)
    y_t, indices_t = F.max_pool2d(x, return_indices=True, **kwargs)
    torch.testing.assert_close(y, y_t)
    assert indices.dtype == torch.int64 and torch.equal(indices, indices_t) and not indices.requires_grad
    y.sum().backward()
    y_t.sum().backward()
    torch.testing.assert_close(x_ours.grad, x.grad)
    unbatched, unbatched_indices = gt.MaxPool2d(return_indices=True, **kwargs)(x[0].detach())
    assert torch.equal(unbatched_indices, indices_t[0]) and torch.equal(unbatched, y_t[0].detach())


def test_avg_pool2d_divisor_override_matches_torch():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    x_ours = x.detach().clone().requires_grad_()
    y = gt.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=4)(x_ours)
    y_t = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4)
    torch.testing.assert_close(y, y_t)
    y.sum().backward()
    y_t.sum().backward()
    torch.testing.assert_close(x_ours.grad, x.grad)


def test_convert_swaps_modules_in_place_keeping_parameters_and_the_optimizer():
    torch.manual_seed(0)
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), shared, nn.ReLU(), shared, nn.MaxPool2d(2),
                          nn.AvgPool2d(2), nn.ConvTranspose2d(4, 2, 2, stride=2),
                          nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.MaxPool2d(2, dilation=2),
                          nn.ConvTranspose2d(2, 2, 1))
    model[-1].padding_mode = "reflect"  # PyTorch refuses it at construction; its forward too
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # made before convert
    with pytest.warns(UserWarning, match=r"10 \(ConvTranspose2d: padding_mode='reflect' is not supported"):
        assert gt.convert(model, algo="reference") is model
    kinds = [type(m) for m in model]
    assert kinds == [gt.Conv2d, nn.ReLU, gt.Conv2d, nn.ReLU, gt.Conv2d, gt.MaxPool2d, gt.AvgPool2d,
                     gt.ConvTranspose2d, gt.Conv2d, gt.MaxPool2d, nn.ConvTranspose2d]
    del model[10], reference[10]
    assert model[2] is model[4] is shared and model[0].algo == "reference"
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, 16, 16)
    for m in (model, reference):
        m(x).square().sum().backward()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_convert_passes_algo_through_and_converts_the_model_itself():
    conv = gt.convert(nn.Conv2d(2, 2, 3), algo="implicit_gemm")  # a GPU family: the CPU path refuses it
    assert type(conv) is gt.Conv2d and conv.algo == "implicit_gemm"
    with pytest.raises(ValueError, match="implicit_gemm"):
        conv(torch.randn(1, 2, 5, 5))
    assert gt.convert(conv, algo="auto").algo == "auto"  # converting again updates algo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gt.convert(nn.Sequential(nn.Linear(2, 2)))  # nothing to convert: no warning


def test_pytorch_streams_are_wrapped_for_cupy_not_created():
    """What _running_on makes CuPy's current stream: PyTorch's own (its pointer), through the CUDA stream
    protocol (CuPy >= 14) or, for a PyTorch without it, ExternalStream. Stand-ins: no GPU needed."""
    cupy = pytest.importorskip("cupy")

    class Modern:
        cuda_stream, device_index = 0x1234, 0

        def __cuda_stream__(self):
            return (0, self.cuda_stream)

    class Old:
        cuda_stream, device_index = 0x5678, 0

    assert gt._stream_of(cupy, Modern()).ptr == 0x1234 and gt._stream_of(cupy, Old()).ptr == 0x5678


def test_import_gets_the_real_torch_and_without_torch_says_how_to_install():
    assert gt.torch is torch
    code = "import sys; sys.modules['torch'] = None; import gpuconv.torch"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0 and "pip install 'gpuconv[torch]'" in done.stderr


# ------------------------------------------------------------------ whole networks ---

def _train(model, x, target, steps=3):
    """Outputs and parameter gradients of the first step, and the parameters after ``steps`` SGD steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, target).backward()
        if step == 0:
            first = out.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
    return first, {n: p.detach().clone() for n, p in model.named_parameters()}


def _largest_difference(mine: dict, theirs: dict) -> tuple:
    """(max over tensors of max|a - b| / max|b|, the tensor's name)."""
    return max(((float((mine[k] - theirs[k]).abs().max() / theirs[k].abs().max().clamp_min(1e-30)), k)
                for k in theirs))


def _network(name):
    """(PyTorch's model in eval mode, a converted copy). BatchNorm in eval mode is a fixed affine map: with
    batch statistics over 2 images (1x1 pixels in the last stage at 32x32) these networks are so
    ill-conditioned that PyTorch's own float32 gradients differ from its float64 ones by 1e-2 (ResNet-18) and
    4e-1 (MobileNet), and a 1e-7 relative change of the input moves MobileNet's by up to 50% (measured), so no
    float32 tolerance would mean anything there. Without batch statistics activations must keep their scale by
    themselves: ResNet-18's do with torchvision's initialisation; MobileNet's convolutions get fan-in Kaiming
    (with fan-out its 13 depthwise layers shrink them to 1e-19)."""
    torch.manual_seed(0)
    theirs = networks.build(name, num_classes=10, prefer_torchvision=False)[0].eval()
    if name == "mobilenet":
        for m in theirs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    ours = gt.convert(copy.deepcopy(theirs))
    assert sum(type(m) is gt.Conv2d for m in ours.modules()) == sum(
        type(m) is nn.Conv2d for m in theirs.modules()) >= 20
    return theirs, ours


@pytest.mark.parametrize("name", ["resnet18", "mobilenet"])
def test_converted_network_trains_like_pytorch(name):
    """Outputs and every parameter gradient, then the weights after 3 SGD steps (momentum 0.9), float32."""
    theirs, ours = _network(name)
    x, target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 7])
    (out_a, grads_a), weights_a = _train(ours, x, target)
    (out_b, grads_b), weights_b = _train(theirs, x, target)
    out_err = float((out_a - out_b).abs().max() / out_b.abs().max())
    grad_err, grad_where = _largest_difference(grads_a, grads_b)
    weight_err, weight_where = _largest_difference(weights_a, weights_b)
    print(f"\n{name}, 2x3x32x32 float32: outputs {out_err:.1e}, gradients {grad_err:.1e} ({grad_where}), weights "
          f"after 3 SGD steps {weight_err:.1e} ({weight_where}); max|gpuconv - torch| / max|torch| per tensor")
    assert out_err < 1e-5 and grad_err < 1e-4 and weight_err < 1e-5


def test_converted_resnet18_with_batch_statistics_computes_pytorchs_first_step():
    """BatchNorm in training mode, over a batch of 8 (well-conditioned: PyTorch's float32 gradients are within
    2e-5 of its float64 ones here): outputs and parameter gradients of one step."""
    torch.manual_seed(0)
    theirs = networks.build("resnet18", num_classes=10, prefer_torchvision=False)[0]
    ours = gt.convert(copy.deepcopy(theirs))
    x, target = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    (out_a, grads_a), _ = _train(ours, x, target, steps=1)
    (out_b, grads_b), _ = _train(theirs, x, target, steps=1)
    out_err = float((out_a - out_b).abs().max() / out_b.abs().max())
    grad_err, grad_where = _largest_difference(grads_a, grads_b)
    print(f"\nresnet18 in training mode, 8x3x32x32 float32: outputs {out_err:.1e}, gradients {grad_err:.1e} "
          f"({grad_where})")
    assert out_err < 1e-4 and grad_err < 1e-3


def _conv_keys(model, size):
    """The suite conv keys (C, H, W, K, R, S, stride, pad, dilation, groups) of every convolution a forward
    at size x size meets, counted; on the meta device, so nothing is computed."""
    keys = Counter()

    def hook(m, args, out):
        _, C, H, W = args[0].shape
        (ph, pw), (R, S) = m.padding, m.kernel_size
        keys[(C, H, W, m.out_channels, R, S, m.stride, (ph, ph, pw, pw), m.dilation, m.groups)] += 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    model(torch.empty(1, 3, size, size, device="meta"))
    return keys


@pytest.mark.parametrize("name", ["resnet50", "mobilenet"])
def test_networks_are_the_architectures_of_their_layer_suites(name):
    model = networks.build(name, prefer_torchvision=False)[0].to("meta")
    suite = load_suite(name)
    assert _conv_keys(model, 224) == Counter({layer.conv_key: layer.count for layer in suite.layers})
    parameters = {"resnet50": 25_557_032, "mobilenet": 4_231_976}[name]  # torchvision's / the paper's counts
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_resnet18_has_torchvisions_parameter_count():
    assert sum(p.numel() for p in networks.resnet18().parameters()) == 11_689_512


# ------------------------------------------------------------ DistributedDataParallel ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_gloo_gives_the_gradients_of_one_process_over_the_global_batch(tmp_path):
    world, port = 2, _free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    worker = Path(torch_ddp_worker.__file__)
    outs = [tmp_path / f"rank{rank}.npz" for rank in range(world)]
    procs = [subprocess.Popen([sys.executable, str(worker), str(out)], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, out in enumerate(outs)]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * world, "\n".join(logs)

    model = gt.convert(torch_ddp_worker.small_model())
    x, y = torch_ddp_worker.global_batch()
    F.cross_entropy(model(x), y).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    ranks = [{k: torch.from_numpy(v) for k, v in np.load(out).items()} for out in outs]
    torch.testing.assert_close(ranks[0], ranks[1], rtol=0, atol=0)  # DDP left every rank the same gradients
    error, where = _largest_difference(ranks[0], expected)
    print(f"\nDDP, 2 gloo ranks x 4 images vs 1 process x 8: max|grad difference| / max|grad| = {error:.2e} ({where})")
    assert error < 1e-5
