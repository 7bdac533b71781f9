"""Autograd: finite-difference checks in float64 of every differentiable operation, on the CPU paths and on
the CUDA path (our kernels on the CPU emulator); and the engine's rules: sums over reuse, no recording under
no_grad, freed graphs, what is kept alive."""
from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import gpuconv
from gpuconv import functional, nn
from gpuconv.nn import functional as F

from cuda_emulation.backend import EmulatorBackend, route_functional


def rand(*shape, seed=0, low=None):
    x = np.random.default_rng(seed).standard_normal(shape)
    return x if low is None else np.abs(x) + low


def check_gradients(fn, *inputs, eps=1e-6, rtol=1e-6, atol=1e-8, directions=None, seed=1):
    """d sum(fn(*inputs) * R) / d input by autograd against central differences, R random.

    Every input element is perturbed, or, with ``directions``, that many random directions per input
    (two evaluations each: for slow paths such as the emulator).
    """
    rng = np.random.default_rng(seed)
    tensors = [gpuconv.tensor(a, requires_grad=True) for a in inputs]
    out = fn(*tensors)
    weights = rng.standard_normal(out.shape)
    (out * weights).sum().backward()

    def value(arrays):
        return float((np.asarray(fn(*[gpuconv.Tensor(a) for a in arrays]).numpy()) * weights).sum())

    for i, (a, t) in enumerate(zip(inputs, tensors)):
        assert t.grad is not None and t.grad.shape == a.shape and t.grad.dtype == a.dtype, i
        if directions is None:
            numeric = np.empty_like(a)
            for j in range(a.size):
                plus, minus = [x.copy() for x in inputs], [x.copy() for x in inputs]
                plus[i].flat[j] += eps
                minus[i].flat[j] -= eps
                numeric.flat[j] = (value(plus) - value(minus)) / (2 * eps)
            np.testing.assert_allclose(t.grad, numeric, rtol=rtol, atol=atol, err_msg=f"input {i}")
        else:
            for _ in range(directions):
                v = rng.standard_normal(a.shape)
                plus, minus = list(inputs), list(inputs)
                plus[i], minus[i] = a + eps * v, a - eps * v
                numeric = (value(plus) - value(minus)) / (2 * eps)
                np.testing.assert_allclose(float((t.grad * v).sum()), numeric, rtol=rtol, atol=atol,
                                           err_msg=f"input {i}")


# One table of differentiable operations: (id, function of tensors, float64 inputs).
CONV_CASES = [
    ("plain", dict(), (2, 3, 5, 5), (4, 3, 3, 3)),
    ("stride-pad-dilation", dict(stride=2, padding=2, dilation=2), (1, 2, 7, 6), (3, 2, 3, 2)),
    ("groups-same", dict(padding="same", groups=2), (2, 4, 5, 5), (6, 2, 3, 3)),
    ("depthwise-4-sided", dict(padding=(1, 0, 2, 1), groups=3), (1, 3, 5, 6), (3, 1, 3, 3)),
]
CONV_TRANSPOSE_CASES = [
    ("plain", dict(), (2, 3, 4, 4), (3, 2, 3, 3)),
    ("stride-pad-outpad", dict(stride=2, padding=1, output_padding=1), (1, 2, 3, 4), (2, 3, 3, 3)),
    ("groups-dilation", dict(groups=2, dilation=2), (1, 4, 3, 3), (4, 1, 2, 2)),
    ("outpad-above-stride", dict(dilation=3, padding=2, output_padding=2), (1, 2, 4, 3), (2, 2, 3, 2)),
]
POOL_CASES = [
    ("max-2x2", lambda x: F.max_pool2d(x, 2)),
    ("max-3x3-s2-p1-ceil", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("avg-3x3-s2-p1", lambda x: F.avg_pool2d(x, 3, 2, 1)),
    ("avg-no-count-pad-ceil", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("max-dilated-asymmetric-pad", lambda x: F.max_pool2d(x, 2, 1, (0, 1, 1, 0), dilation=(2, 1), ceil_mode=True)),
    # The windows of padding only are -inf: the check sees the others (their gradient is tested elsewhere: none).
    ("max-padding-only-windows", lambda x: (lambda y: y[np.isfinite(y.data)])(F.max_pool2d(x, 2, 2, (3, 2, 0, 3)))),
    ("avg-divisor-override-same-lower", lambda x: F.avg_pool2d(x, 3, 2, "same_lower", divisor_override=4)),
    ("avg-dilated-exclude-pad", lambda x: F.avg_pool2d(x, 2, 1, (2, 0, 1, 1), count_include_pad=False,
                                                       dilation=2)),
    ("adaptive-max-overlapping", lambda x: F.adaptive_max_pool2d(x, (4, 3))),
    ("global-max", lambda x: F.global_max_pool2d(x)),
]

OPS = [
    ("add-broadcast", lambda a, b: a + b, [rand(2, 3, 4), rand(3, 1, seed=1)]),
    ("sub-scalar", lambda a: 2.5 - a - 1.0, [rand(3, 4)]),
    ("mul-broadcast", lambda a, b: a * b, [rand(2, 1, 4), rand(3, 1, seed=1)]),
    ("div", lambda a, b: a / b, [rand(3, 4), rand(3, 4, seed=1, low=0.5)]),
    ("rdiv", lambda a: 2.0 / a, [rand(5, low=0.5)]),
    ("neg-pow", lambda a: -(a ** 3), [rand(2, 3)]),
    ("sqrt", lambda a: a.sqrt(), [rand(4, low=0.5)]),
    ("exp-log", lambda a: (a.exp() + 1).log(), [rand(3, 3)]),
    ("matmul", lambda a, b: a @ b, [rand(3, 4), rand(4, 2, seed=1)]),
    ("matmul-batched-broadcast", lambda a, b: a @ b, [rand(2, 3, 4), rand(4, 2, seed=1)]),
    ("sum-all", lambda a: a.sum(), [rand(2, 3)]),
    ("sum-axes-keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), [rand(2, 3, 4)]),
    ("mean-dim", lambda a: a.mean(dim=1), [rand(2, 3, 4)]),
    ("reshape-view", lambda a: a.reshape(4, 6).view(-1, 2), [rand(2, 3, 4)]),
    ("flatten-range", lambda a: a.flatten(1, 2), [rand(2, 3, 4, 2)]),
    ("transpose-permute-T", lambda a: a.transpose(0, 2).permute(1, 0, 2).reshape(6, 4).T, [rand(2, 3, 4)]),
    ("unsqueeze-squeeze", lambda a: a.unsqueeze(1).squeeze(1) * a, [rand(2, 3)]),
    ("getitem-slices", lambda a: a[1:, ::2, -1], [rand(3, 4, 2)]),
    ("getitem-repeated-indices", lambda a: a[np.array([0, 2, 0, 0])], [rand(3, 2)]),
    ("getitem-mask", lambda a: a[a.data > 0], [rand(4, 3)]),
    ("cat", lambda a, b: gpuconv.cat([a, b, a], dim=1), [rand(2, 3), rand(2, 1, seed=1)]),
    ("stack", lambda a, b: gpuconv.stack([a, b], dim=-1), [rand(2, 3), rand(2, 3, seed=1)]),
    ("conv2d-bias", lambda x, w, b: F.conv2d(x, w, b, padding=1), [rand(1, 2, 4, 4), rand(3, 2, 3, 3, seed=1),
                                                                  rand(3, seed=2)]),
    *[(f"conv2d-{name}", (lambda args: lambda x, w: F.conv2d(x, w, **args))(args), [rand(*xs), rand(*ws, seed=1)])
      for name, args, xs, ws in CONV_CASES],
    *[(f"conv2d-reference-{name}", (lambda args: lambda x, w: F.conv2d(x, w, algo="reference", **args))(args),
       [rand(*xs), rand(*ws, seed=1)]) for name, args, xs, ws in CONV_CASES[:2]],
    *[(f"conv_transpose2d-{name}", (lambda args: lambda x, w, b: F.conv_transpose2d(x, w, b, **args))(args),
       [rand(*xs), rand(*ws, seed=1), rand(ws[1] * args.get("groups", 1), seed=2)])
      for name, args, xs, ws in CONV_TRANSPOSE_CASES],
    *[(f"pool-{name}", fn, [rand(2, 2, 6, 5)]) for name, fn in POOL_CASES],
    ("adaptive-avg-divisible", lambda x: F.adaptive_avg_pool2d(x, (2, 1)), [rand(1, 2, 4, 3)]),
    ("adaptive-avg-overlapping", lambda x: F.adaptive_avg_pool2d(x, (3, 2)), [rand(1, 2, 5, 5)]),
    ("adaptive-avg-1d-upsampling", lambda x: F.adaptive_avg_pool1d(x, 7), [rand(2, 2, 5)]),
    ("max_pool1d-dilated", lambda x: F.max_pool1d(x, 3, 2, 2, dilation=2, ceil_mode=True), [rand(2, 3, 9)]),
    ("avg_pool1d", lambda x: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False), [rand(2, 3, 9)]),
    ("max_unpool2d", lambda x: F.max_unpool2d(x, np.array([[[[0, 3], [8, 15]]]]), 2), [rand(1, 1, 2, 2)]),
    ("max_unpool1d-skips-minus-one", lambda x: F.max_unpool1d(x, np.array([[[1, -1, 4]]]), 2, output_size=(7,)),
     [rand(1, 1, 3)]),
    *[(f"pad-{mode}", (lambda mode: lambda x: F.pad(x, (2, 1, 1, 3), mode))(mode), [rand(1, 2, 4, 5)])
      for mode in ("constant", "reflect", "replicate", "circular")],
    ("pad-reflect-1d", lambda x: F.pad(x, (3, 2), "reflect"), [rand(2, 1, 4)]),
    *[(f"conv2d-padding-mode-{mode}", (lambda mode: lambda x, w, b: F.conv2d(x, w, b, 2, (1, 2), padding_mode=mode))(
        mode), [rand(1, 2, 5, 6), rand(3, 2, 3, 3, seed=1), rand(3, seed=2)]) for mode in ("reflect", "circular")],
    ("conv1d-same-lower-dilated", lambda x, w, b: F.conv1d(x, w, b, padding="same_lower", dilation=2, groups=2),
     [rand(2, 4, 7), rand(6, 2, 2, seed=1), rand(6, seed=2)]),
    ("conv1d-replicate-stride", lambda x, w: F.conv1d(x, w, stride=2, padding=(2, 1), padding_mode="replicate"),
     [rand(1, 2, 8), rand(3, 2, 3, seed=1)]),
    ("linear-2d", lambda x, w, b: F.linear(x, w, b), [rand(4, 3), rand(2, 3, seed=1), rand(2, seed=2)]),
    ("linear-3d", lambda x, w: F.linear(x, w), [rand(2, 4, 3), rand(5, 3, seed=1)]),
    ("relu", F.relu, [rand(3, 4) + 0.01]),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.2), [rand(3, 4) + 0.01]),
    ("sigmoid", F.sigmoid, [rand(3, 4) * 5]),
    ("tanh", F.tanh, [rand(3, 4)]),
    ("softmax", lambda x: F.softmax(x, dim=1), [rand(3, 4)]),
    ("log_softmax", lambda x: F.log_softmax(x, dim=-1), [rand(2, 3, 4)]),
    ("batch_norm-train", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
     [rand(3, 2, 2, 2), rand(2, seed=1), rand(2, seed=2)]),
    ("batch_norm-train-no-affine-2d", lambda x: F.batch_norm(x, None, None, training=True), [rand(5, 3)]),
    ("batch_norm-eval", lambda x, w, b: F.batch_norm(x, np.array([0.1, -0.2]), np.array([1.5, 0.5]), w, b),
     [rand(3, 2, 2, 2), rand(2, seed=1), rand(2, seed=2)]),
    ("cross_entropy-mean", lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2])), [rand(4, 3)]),
    ("cross_entropy-sum-smoothing", lambda x: F.cross_entropy(x, np.array([0, 2, 1]), reduction="sum",
                                                              label_smoothing=0.2), [rand(3, 3)]),
    ("cross_entropy-none-ignore-nd", lambda x: F.cross_entropy(x, np.array([[0, -100], [2, 1]]), reduction="none"),
     [rand(2, 3, 2)]),
    ("cross_entropy-mean-ignore-smoothing", lambda x: F.cross_entropy(x, np.array([1, 5, 0]), ignore_index=5,
                                                                      label_smoothing=0.1), [rand(3, 4)]),
    ("nll_loss", lambda x: F.nll_loss(F.log_softmax(x, dim=1), np.array([1, 0])), [rand(2, 3)]),
    ("mse_loss", lambda a, b: F.mse_loss(a, b), [rand(3, 2), rand(3, 2, seed=1)]),
    ("mse_loss-sum", lambda a, b: F.mse_loss(a, b, reduction="sum"), [rand(3, 2), rand(3, 2, seed=1)]),
]


@pytest.mark.parametrize("fn,inputs", [op[1:] for op in OPS], ids=[op[0] for op in OPS])
def test_gradients_match_finite_differences(fn, inputs):
    check_gradients(fn, *inputs)


def test_dropout_gradient_is_its_mask():
    nn.manual_seed(3)
    x = gpuconv.tensor(rand(50, 40), requires_grad=True)
    y = F.dropout(x, 0.3, training=True)
    y.sum().backward()
    kept = y.data != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_array_equal(x.grad, np.where(kept, 1 / 0.7, 0.0))
    np.testing.assert_allclose(y.data[kept], x.data[kept] / 0.7, rtol=1e-15)


# ----------------------------------------------------- the CUDA path, emulated ---

@pytest.fixture(params=["auto", "implicit_gemm"])
def emulated_cuda(monkeypatch, request):
    """gpuconv.functional's convolution and pooling calls go to the CUDA planner and kernels, run by the CPU
    emulator (the autograd code above them is unchanged): NumPy arrays stand in for CuPy arrays. Convolutions
    run with algo "auto" (the fixed rule: im2col + GEMM for most of these shapes) or on the implicit-GEMM
    kernels."""
    backend = EmulatorBackend()
    route_functional(monkeypatch, backend, algo=request.param)
    return backend


EMULATED = [
    *[(f"conv2d-{name}", (lambda args: lambda x, w: F.conv2d(x, w, **args))(args), [rand(*xs), rand(*ws, seed=1)])
      for name, args, xs, ws in CONV_CASES],
    ("conv_transpose2d-stride-pad-outpad", lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1,
                                                                          output_padding=1),
     [rand(1, 2, 3, 4), rand(2, 3, 3, 3, seed=1)]),
    *[(f"pool-{name}", fn, [rand(2, 2, 6, 5)]) for name, fn in POOL_CASES],
    ("conv1d-same-lower-dilated", lambda x, w: F.conv1d(x, w, padding="same_lower", dilation=2),
     [rand(2, 2, 7), rand(3, 2, 2, seed=1)]),
    ("conv2d-padding-mode-reflect", lambda x, w: F.conv2d(x, w, padding=1, padding_mode="reflect"),
     [rand(1, 2, 4, 5), rand(3, 2, 3, 3, seed=1)]),
]


@pytest.mark.parametrize("fn,inputs", [op[1:] for op in EMULATED], ids=[op[0] for op in EMULATED])
def test_cuda_path_gradients_match_finite_differences(emulated_cuda, fn, inputs):
    check_gradients(fn, *inputs, directions=2)
    assert emulated_cuda.launches, "nothing ran on the emulated CUDA path"


def test_emulated_model_gradients_equal_the_cpu_path(emulated_cuda, monkeypatch):
    """A whole small CNN's parameter gradients through our kernels (emulated) equal the CPU path's."""
    def grads():
        nn.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3, groups=1),
                              nn.Flatten(), nn.Linear(3, 2)).double()
        x = rand(3, 2, 6, 6)
        nn.CrossEntropyLoss()(model(x), np.array([0, 1, 1])).backward()
        return [p.grad for p in model.parameters()]

    emulated = grads()
    ran = {launch.variant.op for launch in emulated_cuda.launches}
    assert {"maxpool2d_forward", "maxpool2d_backward"} <= ran and ran & {"fprop", "im2col_nchw"}
    monkeypatch.undo()
    for a, b in zip(emulated, grads()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------ the engine ---

def test_a_tensor_used_twice_gets_the_sum_of_its_gradients():
    x = gpuconv.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = x * x + x  # d/dx = 2x + 1
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 5.0, 7.0])


def test_gradients_accumulate_across_backward_calls_until_cleared():
    x = gpuconv.tensor(np.ones(2), requires_grad=True)
    (x * 3).sum().backward()
    (x * 4).sum().backward()
    np.testing.assert_array_equal(x.grad, [7.0, 7.0])
    x.grad = None
    (x * 4).sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])


def test_two_leaves_never_share_one_gradient_array():
    a, b = gpuconv.tensor(np.ones(3), requires_grad=True), gpuconv.tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()
    assert a.grad is not b.grad
    a.grad *= 10  # a user scaling one gradient in place must not change the other
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_the_callers_gradient_array_is_copied():
    x = gpuconv.tensor(np.ones(3), requires_grad=True)
    dy = np.array([1.0, 2.0, 3.0])
    x.backward(dy)
    dy[:] = 0
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0])


def test_no_grad_records_nothing():
    w = nn.Parameter(np.ones((2, 3)))
    with gpuconv.no_grad():
        y = F.linear(np.ones((4, 3)), w)
    assert not y.requires_grad and y.is_leaf and gpuconv.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        y.sum().backward()


def test_inputs_without_gradients_record_nothing_and_arrays_stay_arrays():
    x, w = rand(1, 2, 4, 4), rand(3, 2, 3, 3)
    y = gpuconv.conv2d(x, w)
    assert isinstance(y, np.ndarray)
    t = gpuconv.conv2d(gpuconv.Tensor(x), w)
    assert isinstance(t, gpuconv.Tensor) and not t.requires_grad and t.is_leaf
    np.testing.assert_array_equal(t.data, y)
    t = gpuconv.conv2d(x, nn.Parameter(w))  # the array API records when given a tensor
    assert t.requires_grad and not t.is_leaf


def test_only_the_wanted_gradients_are_computed(monkeypatch):
    calls = []
    for name in ("conv2d_grad_input", "conv2d_grad_weight"):
        original = getattr(functional, name)
        monkeypatch.setattr(functional, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    w = nn.Parameter(rand(3, 2, 3, 3))
    F.conv2d(rand(1, 2, 4, 4), w).sum().backward()  # the input needs no gradient: no dgrad
    assert calls == ["conv2d_grad_weight"]


def test_backward_twice_through_a_freed_graph_is_an_error_and_retain_graph_allows_it():
    x = gpuconv.tensor(np.ones(2), requires_grad=True)
    y = (x * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])
    with pytest.raises(RuntimeError, match="backward through a graph a second time"):
        y.backward()


def test_backward_of_a_non_scalar_needs_its_gradient():
    x = gpuconv.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"needs a one-element output, got shape \(3,\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(2,\), the tensor \(3,\)"):
        (x * 2).backward(np.ones(2))


def test_integer_tensors_cannot_require_gradients_and_detach_cuts_the_graph():
    with pytest.raises(TypeError, match="only floating tensors can require a gradient"):
        gpuconv.tensor([1, 2], requires_grad=True)
    x = gpuconv.tensor([1.0, 2.0], requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    with pytest.raises(RuntimeError, match="only be turned off on a leaf"):
        (x * 2).requires_grad_(False)


def test_casts_carry_gradients_back_in_the_input_dtype():
    x = gpuconv.tensor(np.ones(3, np.float32), requires_grad=True)
    y = x.double() * 2
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2, 2, 2])


def test_numpy_arrays_on_the_left_of_operators_record():
    x = gpuconv.tensor(np.ones(3), requires_grad=True)
    y = np.array([1.0, 2.0, 3.0]) * x + np.ones(3)
    assert isinstance(y, gpuconv.Tensor) and y.requires_grad
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0])


def test_float32_stays_float32_with_numpy_scalars():
    x = gpuconv.tensor(np.ones(2, np.float32), requires_grad=True)
    assert (x * np.float64(2.0)).dtype == np.float32 and (x / 3).dtype == np.float32


def test_a_deep_graph_does_not_hit_the_recursion_limit():
    x = gpuconv.tensor(np.ones(1), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0])


def _training_step(model, x, y, no_grad=False):
    if no_grad:
        with gpuconv.no_grad():
            return model(x)
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    return loss


def test_nothing_is_kept_alive_after_backward_or_under_no_grad():
    """Every array a forward pass makes is freed once backward ran, and under no_grad once the output is."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Dropout(0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x, y = rand(5, 1, 8, 8).astype(np.float32), np.array([0, 1, 2, 1, 0])
    alive = []
    original = gpuconv.Tensor.__init__

    def tracking_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        alive.append(weakref.ref(self))

    gpuconv.Tensor.__init__ = tracking_init
    try:
        loss = _training_step(model, x, y)
        made = len(alive)
        del loss
        gc.collect()
        left = [r() for r in alive if r() is not None and not isinstance(r(), nn.Parameter)]
        assert made >= 8 and left == []  # one tensor per layer and the loss
        alive.clear()
        out = _training_step(model, x, y, no_grad=True)
        assert out._creator is None
        del out
        gc.collect()
        assert [r() for r in alive if r() is not None and not isinstance(r(), nn.Parameter)] == []
    finally:
        gpuconv.Tensor.__init__ = original


def test_memory_of_a_training_step_is_released_and_no_grad_keeps_less():
    """Measured with tracemalloc (NumPy reports its array memory to it): what one step leaves allocated once
    its loss is dropped, and the peak of a forward pass with and without recording."""
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    opt = gpuconv.optim.Adam(model.parameters())
    x, y = rand(64, 1, 16, 16).astype(np.float32), np.arange(64) % 10

    def step():
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(x), y)
        loss.backward()
        opt.step()

    tracemalloc.start()
    try:
        step()  # optimizer state and gradients exist from here on, and are traced
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        step()
        retained = tracemalloc.get_traced_memory()[0] - before
        base = tracemalloc.get_traced_memory()[0]
        out = model(x)
        recording_held = tracemalloc.get_traced_memory()[0] - base - out.data.nbytes
        del out
        base = tracemalloc.get_traced_memory()[0]
        with gpuconv.no_grad():
            out = model(x)
        no_grad_kept = tracemalloc.get_traced_memory()[0] - base - out.data.nbytes
        del out
    finally:
        tracemalloc.stop()
    first_activation = x.nbytes * 16  # the first conv's (and ReLU's) output
    assert abs(retained) < 64 * 1024, retained  # a step leaves nothing behind but Python noise
    assert no_grad_kept < 64 * 1024, no_grad_kept  # under no_grad only the output stays
    # Recording keeps what backward needs (the first pool's input, the ReLU masks, each layer's input).
    assert recording_held > first_activation, recording_held


def test_the_graph_keeps_only_the_arrays_its_functions_saved():
    w = nn.Parameter(rand(4, 3))
    y = F.linear(rand(2, 3), w)
    alive = weakref.ref(y.data)
    z = F.relu(y)  # ReLU keeps its mask, not its input
    del y
    assert alive() is None
    z.sum().backward()
    assert w.grad.shape == (4, 3)


def test_backward_frees_every_saved_array_of_the_graph():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(model(rand(4, 1, 6, 6).astype(np.float32)), np.arange(4) % 3)
    fn = loss._creator
    loss.backward()
    arrays = [k for k, v in vars(fn).items() if hasattr(v, "shape") and getattr(v, "size", 0) > 1]
    assert fn.inputs is None and "saved" not in vars(fn) and arrays == []


def test_zero_grad_without_none_gives_zeros_even_from_inf_and_nan():
    lin = nn.Linear(2, 1)
    opt = gpuconv.optim.SGD(lin.parameters(), lr=0.1)
    for clear in (lin.zero_grad, opt.zero_grad):
        lin.weight.grad = np.array([[np.inf, np.nan]], np.float32)
        clear(set_to_none=False)
        assert lin.weight.grad.tolist() == [[0.0, 0.0]] and lin.weight.grad.dtype == np.float32


def test_to_takes_dtype_objects_as_casts_not_devices():
    assert nn.Linear(2, 2).to(np.dtype(np.float64)).weight.dtype == np.float64
    assert gpuconv.tensor([1.0]).to(np.dtype(np.float32)).dtype == np.float32


def test_batch_norm_without_running_statistics_refuses_a_dtype_mismatch():
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(TypeError, match="dtype mismatch: x is float64 but weight is float32"):
        bn(rand(2, 4, 3, 3))


def test_permute_with_negative_axes_sends_the_gradient_back_transposed():
    x = gpuconv.tensor(rand(2, 3), requires_grad=True)
    w = rand(3, 2, seed=1)
    (x.permute(-1, 0) * w).sum().backward()
    np.testing.assert_array_equal(x.grad, w.T)


def test_zero_dimensional_parameters_stay_arrays_through_steps_and_reuse():
    s = nn.Parameter(np.array(2.0, np.float32))
    opt = gpuconv.optim.Adam([s], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (s * s + s).backward()  # used twice: the two gradients are summed into an array
        assert isinstance(s.grad, np.ndarray) and s.grad.shape == ()
        opt.step()
        assert isinstance(s.data, np.ndarray) and s.data.dtype == np.float32 and s.data.shape == ()
    state = opt.state_dict()
    fresh = gpuconv.optim.Adam([nn.Parameter(s.data.copy())], lr=0.1)
    fresh.load_state_dict(state)
    assert isinstance(next(iter(fresh.state.values()))["exp_avg"], np.ndarray)


def test_gradients_come_back_in_each_operands_dtype():
    x = gpuconv.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    (x @ np.ones((3, 2))).sum().backward()  # float32 @ float64
    assert x.grad.dtype == np.float32
    y = gpuconv.tensor(np.ones(2, np.float32), requires_grad=True)
    gpuconv.cat([y, np.ones(2)]).sum().backward()
    gpuconv.stack([y, gpuconv.tensor(np.ones(2))]).sum().backward()
    assert y.grad.dtype == np.float32 and y.grad.tolist() == [2.0, 2.0]


def test_the_zeroth_power_has_a_zero_gradient_even_at_zero():
    x = gpuconv.tensor(np.array([0.0, 2.0]), requires_grad=True)
    (x ** 0).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]
