"""Every layer, loss and optimizer on the GPU (CuPy arrays) against the same objects on the CPU."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import gpuconv
from gpuconv import nn, optim
from gpuconv._backend import as_numpy, cuda_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _close(gpu, cpu, dtype, what):
    np.testing.assert_allclose(as_numpy(gpu), cpu, rtol=TOLERANCE[np.dtype(dtype)],
                               atol=TOLERANCE[np.dtype(dtype)], err_msg=what)


LAYERS = [
    pytest.param(lambda: nn.Conv2d(3, 8, 3, stride=2, padding=(1, 0, 2, 1)), (4, 3, 9, 8), id="conv"),
    pytest.param(lambda: nn.Conv2d(6, 6, 3, padding="same", groups=6), (2, 6, 7, 7), id="conv-depthwise"),
    pytest.param(lambda: nn.Conv2d(4, 6, 1, bias=False), (3, 4, 5, 5), id="conv-1x1-nobias"),
    pytest.param(lambda: nn.Linear(12, 5), (7, 12), id="linear"),
    pytest.param(lambda: nn.Linear(12, 5), (2, 3, 12), id="linear-3d"),
    pytest.param(lambda: nn.ReLU(), (3, 4, 5, 5), id="relu"),
    pytest.param(lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 8, 7), id="maxpool"),
    pytest.param(lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 3, 8, 7), id="avgpool"),
    pytest.param(lambda: nn.Flatten(), (2, 3, 4, 5), id="flatten"),
    pytest.param(lambda: nn.BatchNorm2d(4), (5, 4, 3, 3), id="batchnorm"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("make, shape", LAYERS)
def test_layer_forward_backward_on_gpu_matches_cpu(cp, make, shape, dtype):
    rng = np.random.default_rng(0)
    cpu_layer = make().to(dtype)
    gpu_layer = copy.deepcopy(cpu_layer).to("cuda")
    assert gpu_layer.device.startswith("cuda:") and cpu_layer.device == "cpu"
    x = rng.standard_normal(shape).astype(dtype)
    x_cpu = gpuconv.Tensor(x, requires_grad=True)
    x_gpu = gpuconv.Tensor(cp.asarray(x), requires_grad=True)
    y_cpu = cpu_layer(x_cpu)
    y_gpu = gpu_layer(x_gpu)
    assert isinstance(y_gpu, gpuconv.Tensor) and isinstance(y_gpu.data, cp.ndarray)
    assert y_gpu.device.startswith("cuda:") and y_gpu.dtype == dtype
    _close(y_gpu.data, y_cpu.numpy(), dtype, "forward")
    dy = rng.standard_normal(y_cpu.shape).astype(dtype)
    y_gpu.backward(cp.asarray(dy))
    y_cpu.backward(dy)
    assert isinstance(x_gpu.grad, cp.ndarray)
    _close(x_gpu.grad, x_cpu.grad, dtype, "backward (input gradient)")
    for (name, p_gpu), (_, p_cpu) in zip(gpu_layer.named_parameters(), cpu_layer.named_parameters()):
        assert isinstance(p_gpu.grad, cp.ndarray)
        _close(p_gpu.grad, p_cpu.grad, dtype, f"gradient of {name}")
    for (name, b_gpu), (_, b_cpu) in zip(gpu_layer.named_buffers(), cpu_layer.named_buffers()):
        assert isinstance(b_gpu, cp.ndarray), name  # num_batches_tracked too: it moves with the layer
        assert b_gpu.dtype == b_cpu.dtype, name
        _close(b_gpu, b_cpu, dtype, f"buffer {name}")


def test_dropout_on_gpu_keeps_the_expected_fraction_and_its_mask_in_backward(cp):
    nn.manual_seed(0)
    layer = nn.Dropout(0.25)
    x = cp.ones((200, 500), dtype=cp.float32)
    xt = gpuconv.Tensor(x, requires_grad=True)
    out = layer(xt)
    y = out.data
    assert isinstance(y, cp.ndarray)
    kept = float((y != 0).mean())
    assert abs(kept - 0.75) < 0.01
    assert cp.allclose(y[y != 0], 1 / 0.75)
    out.backward(x)
    assert isinstance(xt.grad, cp.ndarray)
    assert cp.array_equal(xt.grad != 0, y != 0)
    assert layer.eval()(x).data is x


def test_cross_entropy_on_gpu_matches_cpu(cp):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((16, 10)) * 5).astype(np.float32)
    target = rng.integers(0, 10, size=16)
    loss_fn = nn.CrossEntropyLoss()
    logits_cpu = gpuconv.Tensor(logits, requires_grad=True)
    logits_gpu = gpuconv.Tensor(cp.asarray(logits), requires_grad=True)
    loss_cpu = loss_fn(logits_cpu, target)
    loss_gpu = loss_fn(logits_gpu, cp.asarray(target))
    assert loss_gpu.shape == () and isinstance(loss_gpu.data, cp.ndarray)
    _close(loss_gpu.data, loss_cpu.numpy(), np.float32, "loss")
    loss_gpu.backward()
    loss_cpu.backward()
    _close(logits_gpu.grad, logits_cpu.grad, np.float32, "dlogits")


@pytest.mark.parametrize("make_optimizer", [lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                                            lambda p: optim.Adam(p, lr=1e-2)], ids=["sgd", "adam"])
def test_training_steps_on_gpu_follow_the_cpu(cp, make_optimizer):
    nn.manual_seed(3)
    cpu_model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 4 * 4, 3))
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    assert gpu_model.device.startswith("cuda:")
    cpu_opt, gpu_opt = make_optimizer(cpu_model.parameters()), make_optimizer(gpu_model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 3, size=8)
        for model, opt, xs, ys in ((cpu_model, cpu_opt, x, y), (gpu_model, gpu_opt, cp.asarray(x), cp.asarray(y))):
            loss = loss_fn(model(xs), ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert all(isinstance(v, cp.ndarray) for s in gpu_opt.state.values() for v in s.values() if hasattr(v, "shape"))
    for (name, p_gpu), (_, p_cpu) in zip(gpu_model.named_parameters(), cpu_model.named_parameters()):
        np.testing.assert_allclose(as_numpy(p_gpu.data), p_cpu.data, rtol=1e-4, atol=1e-5, err_msg=name)
    # Moving the model and its optimizer state back keeps training on the CPU.
    gpu_model.to("cpu")
    gpu_opt.to("cpu")
    assert gpu_model.device == "cpu"
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    loss = loss_fn(gpu_model(x), rng.integers(0, 3, size=8))
    gpu_opt.zero_grad()
    loss.backward()
    gpu_opt.step()
    assert all(isinstance(p.data, np.ndarray) for p in gpu_model.parameters())
    assert all(isinstance(p.grad, np.ndarray) for p in gpu_model.parameters())
