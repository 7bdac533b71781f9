"""Autograd on the GPU: the same graph on CuPy arrays gives the CPU's gradients, tensors move between
devices with their gradients, and device strings are PyTorch's."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import nn
from gpuconv.nn import functional as F
from gpuconv._backend import cuda_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]


def model_with_reuse():
    nn.manual_seed(0)
    relu, lin = nn.ReLU(), nn.Linear(8, 8)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), relu, nn.ConvTranspose2d(4, 4, 3, padding=1), relu,
                         nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d((1, 2)), nn.Flatten(), lin, relu,
                         lin, nn.Linear(8, 3)).double()


def test_model_gradients_on_the_gpu_equal_the_cpus(cp):
    x, y = np.random.default_rng(0).standard_normal((6, 2, 6, 6)), np.array([0, 1, 2, 2, 1, 0])
    cpu, gpu = model_with_reuse(), model_with_reuse().to("cuda")
    assert gpu.device == "cuda:0" and cpu.device == "cpu"
    for model, xs, ys in ((cpu, x, y), (gpu, cp.asarray(x), cp.asarray(y))):
        nn.CrossEntropyLoss(label_smoothing=0.1)(model(xs), ys).backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert isinstance(q.grad, cp.ndarray)
        np.testing.assert_allclose(q.grad.get(), p.grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_a_tensor_moved_to_the_gpu_sends_its_gradient_back(cp):
    x = gpuconv.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    g = x.to("cuda:0")
    assert g.device == "cuda:0" and isinstance(g.data, cp.ndarray)
    ((g * g).sum()).backward()
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_array_equal(x.grad, 2 * x.data)


def test_no_grad_on_the_gpu_records_nothing(cp):
    w = nn.Parameter(cp.ones((3, 2, 3, 3), cp.float32))
    with gpuconv.no_grad():
        y = F.conv2d(cp.ones((1, 2, 5, 5), cp.float32), w)
    assert not y.requires_grad and y.device == "cuda:0"


def test_an_absent_gpu_index_is_refused_with_the_count(cp):
    count = cp.cuda.runtime.getDeviceCount()
    with pytest.raises(gpuconv.CUDAUnavailableError, match=f"this machine has {count} GPU"):
        nn.Linear(2, 2).to(f"cuda:{count}")
