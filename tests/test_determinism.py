"""Every forward and backward result is bitwise identical from run to run, on every backend.

Each op runs twice on the same inputs and the two results must have the same
bits: no floating-point atomics, no reduction whose order depends on timing.
The CPU runs always; the GPU variants skip with "no CUDA device" when there is
none.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn
from gpuconv._backend import as_numpy, cuda_available, cupy_module

GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not cuda_available(),
                                                                         reason="no CUDA device")])
BACKENDS = [  # (device, algo)
    pytest.param(("cpu", "auto"), id="cpu-fast"),
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cuda", "im2col"), id="cuda-im2col", marks=GPU.marks),
    pytest.param(("cuda", "implicit_gemm"), id="cuda-implicit_gemm", marks=GPU.marks),
]
GEOMETRIES = [
    pytest.param(dict(stride=2, padding=(1, 2, 0, 1), dilation=1, groups=1), id="strided-asymmetric"),
    pytest.param(dict(stride=1, padding="same", dilation=2, groups=2), id="dilated-grouped"),
    pytest.param(dict(stride=1, padding=1, dilation=1, groups=12), id="depthwise"),
]


def _on(device, array):
    return cupy_module().asarray(array) if device == "cuda" else array


def _assert_same_bits(first, second, what):
    a, b = as_numpy(first), as_numpy(second)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: two runs gave different bits"


@pytest.mark.parametrize("options", GEOMETRIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_convolution_passes_are_bitwise_reproducible(backend, options):
    device, algo = backend
    rng = np.random.default_rng(0)
    x = _on(device, rng.standard_normal((6, 12, 23, 19)).astype(np.float32))
    w = _on(device, rng.standard_normal((24, 12 // options["groups"], 3, 3)).astype(np.float32))
    b = _on(device, rng.standard_normal(24).astype(np.float32))
    y = gpuconv.conv2d(x, w, b, algo=algo, **options)
    dy = _on(device, rng.standard_normal(y.shape).astype(np.float32))
    for what, run in [
        ("forward", lambda: gpuconv.conv2d(x, w, b, algo=algo, **options)),
        ("grad_input", lambda: gpuconv.conv2d_grad_input(dy, w, x.shape, algo=algo, **options)),
        ("grad_weight", lambda: gpuconv.conv2d_grad_weight(x, dy, w.shape, algo=algo, **options)),
        ("grad_bias", lambda: gpuconv.conv2d_grad_bias(dy)),
    ]:
        _assert_same_bits(run(), run(), what)


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_pooling_passes_are_bitwise_reproducible(device):
    rng = np.random.default_rng(1)
    x = _on(device, rng.standard_normal((4, 5, 17, 13)).astype(np.float32))
    y = gpuconv.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    dy = _on(device, rng.standard_normal(y.shape).astype(np.float32))
    for what, run in [
        ("max forward", lambda: gpuconv.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
        ("max grad", lambda: gpuconv.max_pool2d_grad(dy, x, 3, 2, 1, ceil_mode=True)),
        ("avg forward", lambda: gpuconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
        ("avg grad", lambda: gpuconv.avg_pool2d_grad(dy, x.shape, 3, 2, 1, ceil_mode=True,
                                                     count_include_pad=False)),
    ]:
        _assert_same_bits(run(), run(), what)


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_a_training_step_is_bitwise_reproducible(device):
    """Two identically seeded models take one step on the same batch: the same bits in every parameter."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=16)

    def one_step():
        nn.manual_seed(7)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(8, 8, 3, groups=8, padding="same"), nn.AvgPool2d(2), nn.Flatten(),
                              nn.Dropout(0.3), nn.Linear(8 * 3 * 3, 5)).to(device)
        optimizer = gpuconv.optim.Adam(model.parameters(), lr=1e-2)
        loss = nn.CrossEntropyLoss()(model(_on(device, x)), _on(device, y))
        loss.backward()
        grads = {name: as_numpy(p.grad).copy() for name, p in model.named_parameters()}
        optimizer.step()
        return loss.numpy(), grads, model.state_dict()

    (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) = one_step(), one_step()
    _assert_same_bits(loss_a, loss_b, "loss")
    assert list(grads_a) == list(grads_b) and len(grads_a) == 8
    for name in grads_a:
        _assert_same_bits(grads_a[name], grads_b[name], f"gradient of {name}")
    for name in state_a:
        _assert_same_bits(state_a[name], state_b[name], name)
