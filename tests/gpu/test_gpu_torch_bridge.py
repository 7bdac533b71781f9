"""gpuconv.torch on CUDA tensors: our kernels through DLPack, against cuDNN (TF32 off), with no copy of a
contiguous tensor and on PyTorch's current stream, forward and backward; float64 gradcheck; autocast;
a converted ResNet-18."""
from __future__ import annotations

import copy

import pytest

from gpuconv import functional
from gpuconv._backend import cuda_available

try:
    import torch
    import torch.nn.functional as F

    import gpuconv.torch as gt
    from bench import networks
    from bench.impls import set_cudnn_tf32
except ImportError:  # no PyTorch: every test skips (below)
    torch = None

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device"),
              pytest.mark.skipif(torch is None or not torch.cuda.is_available(),
                                 reason="PyTorch with CUDA is not installed")]

TOLERANCE = {"torch.float16": 1e-2, "torch.bfloat16": 2**-6, "torch.float32": 1e-5, "torch.float64": 1e-12}


@pytest.fixture(autouse=True)
def exact_cudnn():
    set_cudnn_tf32(torch, False)
    yield


def rand(*shape, dtype=None, seed=0, requires_grad=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=dtype or torch.float32).requires_grad_(requires_grad)


def assert_close(actual, expected, dtype, what=""):
    assert actual.dtype == expected.dtype and actual.device == expected.device, what
    error = float((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1))
    assert error <= TOLERANCE[str(dtype)], f"{what}: relative error {error:.2e}"


CASES = [
    ("conv2d-3x3-pad1-bias", lambda x, w, b: gt.conv2d(x, w, b, padding=1),
     lambda x, w, b: F.conv2d(x, w, b, padding=1), (4, 16, 14, 14), (32, 16, 3, 3), 32),
    ("conv2d-stride2-dilation2", lambda x, w, b: gt.conv2d(x, w, b, stride=2, padding=2, dilation=2),
     lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=2, dilation=2), (2, 8, 15, 13), (16, 8, 3, 3), 16),
    ("conv2d-depthwise-stride2", lambda x, w, b: gt.conv2d(x, w, b, stride=2, padding=1, groups=32),
     lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=32), (2, 32, 16, 16), (32, 1, 3, 3), 32),
    ("conv_transpose2d-stride2", lambda x, w, b: gt.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1), (2, 16, 7, 7),
     (16, 8, 3, 3), 8),
]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("ours,theirs,xs,ws,bs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_convolutions_equal_cudnn_forward_and_backward(ours, theirs, xs, ws, bs, dtype):
    dtype = getattr(torch, dtype)
    x, w, b = rand(*xs, dtype=dtype), rand(*ws, dtype=dtype, seed=1), rand(bs, dtype=dtype, seed=2)
    y = ours(x, w, b)
    expected = theirs(x, w, b)
    assert_close(y, expected, dtype, "forward")
    dy = rand(*y.shape, dtype=dtype, seed=3, requires_grad=False)
    for name, mine, cudnn in zip("xwb", torch.autograd.grad(y, (x, w, b), dy),
                                 torch.autograd.grad(expected, (x, w, b), dy)):
        assert_close(mine, cudnn, dtype, f"d{name}")


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_equals_pytorch_on_the_gpu(pool):
    x = rand(2, 8, 13, 12)
    ours, theirs = (gt.max_pool2d, F.max_pool2d) if pool == "max" else (gt.avg_pool2d, F.avg_pool2d)
    y, expected = ours(x, 3, 2, 1, ceil_mode=True), theirs(x, 3, 2, 1, ceil_mode=True)
    assert_close(y, expected, torch.float32, "forward")
    dy = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(expected, x, dy)[0], torch.float32, "dx")


def test_cuda_path_passes_gradcheck_in_float64():
    x, w, b = rand(1, 2, 5, 5, dtype=torch.float64), rand(3, 2, 3, 3, dtype=torch.float64, seed=1), \
        rand(3, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda x, w, b: gt.conv2d(x, w, b, stride=2, padding=1), (x, w, b))
    tw = rand(2, 3, 3, 3, dtype=torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda x, w: gt.conv_transpose2d(x, w, stride=2), (x, tw))
    assert torch.autograd.gradcheck(lambda x: gt.max_pool2d(x, 2), (x,))
    assert torch.autograd.gradcheck(lambda x: gt.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (x,))


def _spy_on_conv_calls(monkeypatch, cp):
    """Record, for every gpuconv.functional conv2d / conv2d_grad_* call, the first array's device pointer and
    CuPy's current stream."""
    seen = []
    for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
        real = getattr(functional, name)

        def spy(a, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, a.data.ptr, cp.cuda.get_current_stream().ptr))
            return _real(a, *args, **kwargs)
        monkeypatch.setattr(functional, name, spy)
    return seen


def test_contiguous_tensors_reach_the_kernels_without_a_copy_on_the_current_stream(monkeypatch, cp):
    seen = _spy_on_conv_calls(monkeypatch, cp)
    x, w = rand(2, 4, 8, 8), rand(8, 4, 3, 3, seed=1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = gt.conv2d(x, w, padding=1)
        dy = torch.ones_like(y)
        y.backward(dy)
        expected = F.conv2d(x, w, padding=1)
    side.synchronize()
    assert seen[0] == ("conv2d", x.data_ptr(), side.cuda_stream)  # x itself, on the side stream
    # The autograd engine runs each backward on its forward's stream.
    assert {stream for _, _, stream in seen} == {side.cuda_stream}, seen
    assert {name for name, _, _ in seen} == {"conv2d", "conv2d_grad_input", "conv2d_grad_weight"}
    assert_close(y, expected, torch.float32, "forward on a side stream")


def test_work_on_the_current_stream_is_ordered_without_synchronising(cp):
    """A result consumed at once on the same stream (no synchronisation in between) is complete."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.randn(16, 64, 56, 56, device="cuda")
        w = torch.randn(64, 64, 3, 3, device="cuda")
        y = gt.conv2d(x * 2, w, padding=1)  # x * 2 is queued on the stream just before our kernels
        total = (y - F.conv2d(x * 2, w, padding=1)).abs().max()
    stream.synchronize()
    assert float(total) / float(y.abs().max()) < 1e-5


def test_channels_last_and_strided_cuda_tensors_are_made_contiguous():
    x = rand(2, 8, 10, 10, requires_grad=False).to(memory_format=torch.channels_last).requires_grad_()
    w = rand(8, 8, 3, 3, seed=1, requires_grad=False)[:, :, :, :].transpose(2, 3).requires_grad_()
    y = gt.conv2d(x, w, padding=1)
    assert y.is_contiguous()
    assert_close(y, F.conv2d(x, w, padding=1), torch.float32, "channels_last")


def test_autocast_float16_on_cuda_computes_in_float16():
    x, w = rand(2, 8, 12, 12), rand(16, 8, 3, 3, seed=1)
    with torch.autocast("cuda", dtype=torch.float16):
        y, expected = gt.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    assert y.dtype == expected.dtype == torch.float16
    assert_close(y, expected, torch.float16, "autocast")
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32


def test_bfloat16_computes_in_bfloat16_and_so_does_autocast_to_it():
    """bfloat16 CUDA tensors run our kernels on CuPy bfloat16 arrays (the bits exchanged by DLPack): outputs and
    gradients are bfloat16, close to cuDNN's own (2^-6 of the output scale: a few bfloat16 roundings)."""
    x, w = rand(2, 16, 9, 9, dtype=torch.bfloat16), rand(32, 16, 3, 3, dtype=torch.bfloat16, seed=1)
    y, expected = gt.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    assert y.dtype == torch.bfloat16
    assert_close(y, expected, torch.bfloat16, "bfloat16 forward")
    dy = torch.randn_like(expected)
    ours = torch.autograd.grad(y, (x, w), dy)
    theirs = torch.autograd.grad(expected, (x, w), dy)
    for a, b, what in zip(ours, theirs, ("dx", "dw")):
        assert a.dtype == torch.bfloat16
        assert_close(a, b, torch.bfloat16, f"bfloat16 {what}")
    x32, w32 = rand(1, 2, 5, 5), rand(3, 2, 3, 3, seed=1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, expected = gt.conv2d(x32, w32), F.conv2d(x32, w32)
    assert y.dtype == expected.dtype == torch.bfloat16
    assert_close(y, expected, torch.bfloat16, "autocast bfloat16")


def test_converted_resnet18_equals_cudnn():
    torch.manual_seed(0)
    theirs = networks.build("resnet18", num_classes=10, prefer_torchvision=False)[0].cuda().eval()
    ours = gt.convert(copy.deepcopy(theirs))
    x, target = torch.randn(4, 3, 64, 64, device="cuda"), torch.arange(4, device="cuda")
    results = []
    for model in (ours, theirs):
        out = model(x)
        F.cross_entropy(out, target).backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert_close(out_a, out_b, torch.float32, "outputs")
    worst = max(float((grads_a[k] - grads_b[k]).abs().max() / grads_b[k].abs().max()) for k in grads_b)
    assert worst < 1e-4, worst
