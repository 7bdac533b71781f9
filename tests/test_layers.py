"""Layers and the loss: finite-difference gradients in float64, PyTorch cross-checks, init, modes, names."""
import math

import numpy as np
import pytest

from direct import numerical_grad
from gpuconv import nn

RTOL, ATOL = 1e-6, 1e-8  # float64 central differences with eps 1e-6 are good to ~1e-9


def rng(seed=0):
    return np.random.default_rng(seed)


def check_module_gradients(module, x, seed=1):
    """d sum(module(x) * dy) / d(x and every parameter), analytic (backward) against central differences."""
    module.to(np.float64)
    x = x.astype(np.float64)
    y = module.forward(x)
    dy = rng(seed).standard_normal(y.shape)

    module.zero_grad()
    y = module.forward(x)
    dx = module.backward(dy)
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}

    def f():
        return (module.forward(x) * dy).sum()

    np.testing.assert_allclose(dx, numerical_grad(f, x), rtol=RTOL, atol=ATOL, err_msg="input gradient")
    for name, p in module.named_parameters():
        np.testing.assert_allclose(analytic[name], numerical_grad(f, p.data), rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {name}")
    return y, dx


# ------------------------------------------------------- gradient checks ---

@pytest.mark.parametrize("kwargs,x_shape", [
    (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 5, 5)),
    (dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=2, padding=1), (2, 3, 6, 5)),
    (dict(in_channels=4, out_channels=6, kernel_size=3, padding=(0, 1, 2, 1), dilation=(1, 2), groups=2),
     (1, 4, 6, 6)),
    (dict(in_channels=3, out_channels=3, kernel_size=3, padding="same", groups=3, bias=False), (2, 3, 4, 5)),
    (dict(in_channels=2, out_channels=5, kernel_size=1, stride=(1, 2)), (2, 2, 3, 4)),
], ids=["plain", "stride-padding", "4-sided-dilation-groups", "depthwise-same-no-bias", "pointwise"])
def test_conv2d_gradients(kwargs, x_shape):
    nn.manual_seed(0)
    layer = nn.Conv2d(**kwargs)
    assert (layer.bias is None) == (kwargs.get("bias", True) is False)
    check_module_gradients(layer, rng().standard_normal(x_shape))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    check_module_gradients(nn.Linear(5, 3, bias=bias), rng().standard_normal((4, 5)))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)],
                         ids=["2x2", "3x3-s2-p1-ceil"])
def test_max_pool_gradients(kwargs):
    # Distinct values: no ties for a perturbation of 1e-6 to flip.
    x = rng().permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) / 10.0
    check_module_gradients(nn.MaxPool2d(**kwargs), x)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)],
                         ids=["2x2", "3x3-s2-p1-ceil", "no-count-pad"])
def test_avg_pool_gradients(kwargs):
    check_module_gradients(nn.AvgPool2d(**kwargs), rng().standard_normal((2, 3, 7, 6)))


def test_batchnorm_train_gradients():
    bn = nn.BatchNorm2d(3)
    bn.to(np.float64)
    bn.weight.data = rng(2).uniform(0.5, 1.5, 3)  # non-trivial affine, so every term of the gradient counts
    bn.bias.data = rng(3).standard_normal(3)
    x = rng().standard_normal((4, 3, 3, 2)) * 3 + 1
    y, _ = check_module_gradients(bn, x)
    # Training mode normalises with the batch's own statistics.
    normalised = (y - bn.bias.data.reshape(1, -1, 1, 1)) / bn.weight.data.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(normalised.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(normalised.var(axis=(0, 2, 3)), 1, rtol=1e-4)


def test_batchnorm_eval_gradients():
    bn = nn.BatchNorm2d(3).to(np.float64)
    bn.running_mean = rng(4).standard_normal(3)
    bn.running_var = rng(5).uniform(0.5, 2.0, 3)
    bn.weight.data = rng(2).uniform(0.5, 1.5, 3)
    bn.eval()
    x = rng().standard_normal((2, 3, 3, 3))
    y, _ = check_module_gradients(bn, x)
    expected = ((x - bn.running_mean.reshape(1, -1, 1, 1)) / np.sqrt(bn.running_var.reshape(1, -1, 1, 1) + bn.eps)
                * bn.weight.data.reshape(1, -1, 1, 1) + bn.bias.data.reshape(1, -1, 1, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_batchnorm_without_affine():
    bn = nn.BatchNorm2d(2, affine=False)
    assert bn.parameters() == []
    check_module_gradients(bn, rng().standard_normal((3, 2, 2, 2)))


def test_relu_gradients_and_special_values():
    x = rng().standard_normal((3, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    check_module_gradients(nn.ReLU(), x)
    relu = nn.ReLU()
    y = relu.forward(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf, np.nan]))
    assert np.array_equal(y, [0, 0, 0, 2, np.inf, np.nan], equal_nan=True)
    assert not np.signbit(y[:3]).any(), "ReLU of a negative number is +0, as in PyTorch"
    dx = relu.backward(np.array([np.inf, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert np.array_equal(dx, [0, 0, 0, 1, 1, 0]), "no gradient flows where the input was not > 0"


def test_flatten_gradients():
    x = rng().standard_normal((2, 3, 2, 2))
    y, dx = check_module_gradients(nn.Flatten(), x)
    assert y.shape == (2, 12)
    assert nn.Flatten(start_dim=2).forward(x).shape == (2, 3, 4)


def test_sequential_gradients_through_the_loss():
    nn.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding="same", groups=2), nn.AvgPool2d(2, padding=1), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).to(np.float64)
    loss_fn = nn.CrossEntropyLoss()
    x = rng().standard_normal((3, 2, 6, 6))
    target = np.array([0, 2, 1])

    model.zero_grad()
    loss_fn(model.forward(x), target)
    dx = model.backward(loss_fn.backward())
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert len(analytic) == 8

    def f():
        return loss_fn(model.forward(x), target)

    np.testing.assert_allclose(dx, numerical_grad(f, x), rtol=1e-5, atol=1e-8)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(analytic[name], numerical_grad(f, p.data), rtol=1e-5, atol=1e-8, err_msg=name)


def test_gradients_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2).to(np.float64)
    x, dy = rng().standard_normal((4, 3)), rng(1).standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 1, 1), nn.Linear(1, 1), nn.MaxPool2d(2), nn.AvgPool2d(2),
                                   nn.ReLU(), nn.Flatten(), nn.BatchNorm2d(1)],
                         ids=lambda m: type(m).__name__)
def test_backward_before_forward_is_an_error(layer):
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward called before forward"):
        layer.backward(np.zeros((1, 1, 2, 2), np.float32))


# --------------------------------------------------------------- dropout ---

def test_dropout_mask_scaling_and_backward():
    p = 0.3
    layer = nn.Dropout(p).to(np.float64)
    x = rng().uniform(1, 2, (50, 40))
    nn.manual_seed(7)
    y = layer.forward(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    assert abs((~kept).mean() - p) < 0.03, f"dropped fraction {(~kept).mean():.3f}, expected about {p}"
    dy = rng(1).standard_normal(x.shape)
    dx = layer.backward(dy)  # the same mask and scale as the forward pass
    np.testing.assert_array_equal(dx == 0, ~kept)
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - p), rtol=1e-15)
    # The seed fixes the mask; a second draw differs.
    nn.manual_seed(7)
    np.testing.assert_array_equal(layer.forward(x), y)
    assert not np.array_equal(layer.forward(x) != 0, kept)


def test_dropout_eval_and_p0_are_identity():
    x = rng().standard_normal((4, 5)).astype(np.float32)
    layer = nn.Dropout(0.5).eval()
    assert layer.forward(x) is x
    dy = np.ones_like(x)
    assert layer.backward(dy) is dy
    assert nn.Dropout(0.0).forward(x) is x
    y = nn.Dropout(0.5).forward(x)
    assert y.dtype == np.float32
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"dropout probability p must be in \[0, 1\), got {p}"):
            nn.Dropout(p)


# ------------------------------------------------------------------ loss ---

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient(reduction):
    loss_fn = nn.CrossEntropyLoss(reduction)
    logits = rng().standard_normal((5, 4)) * 3
    target = np.array([0, 3, 1, 1, 2])
    loss_fn(logits, target)
    analytic = loss_fn.backward()
    np.testing.assert_allclose(analytic, numerical_grad(lambda: loss_fn(logits, target), logits), rtol=RTOL,
                               atol=ATOL)
    # The gradient of each row is softmax - onehot (divided by the batch for "mean"): rows sum to 0.
    np.testing.assert_allclose(analytic.sum(axis=1), 0, atol=1e-15)
    loss_fn(logits, target)  # numerical_grad left the loss holding a perturbed forward pass
    np.testing.assert_allclose(loss_fn.backward(2.0), 2 * analytic, rtol=1e-15)


def test_cross_entropy_value():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = np.array([2, 0])
    expected = (-math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))) + math.log(3)) / 2
    assert float(nn.CrossEntropyLoss()(logits, target)) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    small = np.array([[0.0, -1.0, -3.0], [-2.0, 0.0, -0.5], [0.0, -30.0, -1e4]])
    target = np.array([1, 2, 0])
    for offset in (1e4, -1e4):
        huge = (small + offset).astype(dtype)  # exp(1e4) overflows; the shifted computation must not
        loss_fn = nn.CrossEntropyLoss()
        loss = loss_fn(huge, target)
        grad = loss_fn.backward()
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        reference_fn = nn.CrossEntropyLoss()
        expected = reference_fn(small.astype(dtype), target)
        tol = 1e-12 if dtype == np.float64 else 1e-3  # float32 rounds small + 1e4 to ~1e-3
        assert float(loss) == pytest.approx(float(expected), rel=tol, abs=tol)
        np.testing.assert_allclose(grad, reference_fn.backward(), atol=tol)


# ---------------------------------------------------------- initialisation ---

@pytest.mark.parametrize("make,fan_in", [
    (lambda: nn.Conv2d(16, 32, 3), 16 * 9),
    (lambda: nn.Conv2d(8, 64, (3, 5), groups=4), 2 * 15),
    (lambda: nn.Linear(200, 100), 200),
], ids=["conv", "conv-groups", "linear"])
def test_kaiming_uniform_bound_and_spread(make, fan_in):
    nn.manual_seed(0)
    layer = make()
    bound = 1 / math.sqrt(fan_in)
    for name, p in layer.named_parameters():
        values = p.data.ravel()
        assert p.data.dtype == np.float32
        assert np.abs(values).max() <= bound * (1 + 1e-6), f"{name} outside +-1/sqrt(fan_in)"
        # Spread over the whole interval, as a uniform distribution: extremes near the bound, std bound/sqrt(3).
        assert np.abs(values).max() > 0.8 * bound, name
        assert values.min() < -0.5 * bound and values.max() > 0.5 * bound, name
        if values.size >= 1000:
            assert abs(values.std() - bound / math.sqrt(3)) < 0.05 * bound, name
            assert abs(values.mean()) < 0.05 * bound, name
    nn.manual_seed(0)
    again = make()
    assert all(np.array_equal(a.data, b.data) for a, b in zip(layer.parameters(), again.parameters()))
    assert not np.array_equal(make().weight.data, layer.weight.data)  # the generator moves on


def test_init_bound_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is optional: cross-checks against PyTorch need it")
    torch.manual_seed(0)
    ours = nn.Conv2d(16, 32, 3)
    theirs = torch.nn.Conv2d(16, 32, 3)
    bound = 1 / 12  # 1/sqrt(fan_in), fan_in = 16 * 3 * 3
    for a, b in ((ours.weight.data, theirs.weight), (ours.bias.data, theirs.bias)):
        b = b.detach().numpy()
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a).max() <= bound and np.abs(b).max() <= bound
    # The same uniform distribution: with 4608 weights each reaches within 0.2% of the bound, spread alike.
    a, b = ours.weight.data, theirs.weight.detach().numpy()
    assert np.abs(a).max() > 0.998 * bound and np.abs(b).max() > 0.998 * bound
    assert abs(a.std() - b.std()) < 0.05 * bound
    ours_bn, theirs_bn = nn.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    for name, value in ours_bn.state_dict().items():
        np.testing.assert_array_equal(value, theirs_bn.state_dict()[name].numpy())


# --------------------------------------------------- structure and modes ---

def small_model():
    nn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout(0.25), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))


def test_parameters_order_count_and_state_dict_names():
    model = small_model()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    params = model.parameters()
    assert len(params) == 6 and all(isinstance(p, nn.Parameter) for p in params)
    assert [p.shape for p in params] == [(4, 3, 3, 3), (4,), (4,), (4,), (5, 16), (5,)]
    assert params[0] is model[0].weight and params[-1] is model[6].bias
    state = model.state_dict()
    assert list(state) == names + ["1.running_mean", "1.running_var"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["0.weight"][...] = 0  # a copy, not a view of the model's weights
    assert np.any(model[0].weight.data != 0)


def test_state_dict_names_and_values_load_from_torch():
    torch = pytest.importorskip("torch", reason="torch is optional: cross-checks against PyTorch need it")
    tnn = torch.nn
    theirs = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
                            tnn.Dropout(0.25), tnn.Flatten(), tnn.Linear(4 * 2 * 2, 5)).double()
    with torch.no_grad():
        theirs[1].running_mean.uniform_(-1, 1)
        theirs[1].running_var.uniform_(0.5, 2)
    their_state = {k: v.numpy() for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert [k for k, _ in theirs.named_parameters()] == [k for k, _ in small_model().named_parameters()]
    ours = small_model().to(np.float64)
    assert set(ours.state_dict()) == set(their_state)
    ours.load_state_dict(their_state)
    ours.eval(), theirs.eval()
    x = rng().standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10,
                               atol=1e-12)


def test_train_eval_switching():
    model = small_model()
    modules = [model] + list(model)
    assert all(m.training for m in modules)
    assert model.eval() is model
    assert not any(m.training for m in modules)
    x = rng().standard_normal((2, 3, 4, 4)).astype(np.float32)
    running = model[1].running_mean.copy()
    first = model.forward(x)
    np.testing.assert_array_equal(model.forward(x), first)  # eval: no dropout, running statistics
    np.testing.assert_array_equal(model[1].running_mean, running)  # and they are not updated
    model.train()
    assert all(m.training for m in modules)
    model.forward(x)
    assert not np.array_equal(model[1].running_mean, running)
    model.train(False)
    assert not any(m.training for m in modules)


def test_to_float64_casts_parameters_buffers_and_gradients():
    model = small_model()
    model.forward(rng().standard_normal((2, 3, 4, 4)).astype(np.float32))
    model.backward(np.ones((2, 5), np.float32))
    assert model.to(np.float64) is model
    for name, value in model.state_dict().items():
        assert value.dtype == np.float64, name
    assert all(p.grad.dtype == np.float64 for p in model.parameters())
    with pytest.raises(TypeError, match="a module can only be cast to a floating dtype, got int32"):
        model.to(np.int32)


# ------------------------------------------------- cross-checks with torch ---

@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is optional: cross-checks against PyTorch need it")


def torch_tensor(torch, a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("kwargs,x_shape", [
    (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=1, groups=2), (3, 4, 9, 8)),
    (dict(in_channels=3, out_channels=5, kernel_size=(2, 3), stride=1, padding=(2, 0), dilation=(2, 1)),
     (2, 3, 6, 7)),
], ids=["stride-groups", "dilation-pair-padding"])
def test_conv2d_matches_torch(torch, kwargs, x_shape):
    ours = nn.Conv2d(**kwargs).to(np.float64)
    theirs = torch.nn.Conv2d(**kwargs).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    x = rng().standard_normal(x_shape)
    xt = torch_tensor(torch, x, grad=True)
    yt = theirs(xt)
    y = ours.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng(1).standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_matches_torch(torch):
    ours = nn.Linear(7, 4).to(np.float64)
    theirs = torch.nn.Linear(7, 4).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    x = rng().standard_normal((5, 7))
    xt = torch_tensor(torch, x, grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), rtol=1e-12)
    dy = rng(1).standard_normal((5, 4))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-12)


def test_batchnorm_matches_torch(torch):
    ours = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2).to(np.float64)
    theirs = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2).double()
    weight, bias = rng(2).uniform(0.5, 1.5, 3), rng(3).standard_normal(3)
    ours.weight.data, ours.bias.data = weight.copy(), bias.copy()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(weight))
        theirs.bias.copy_(torch.from_numpy(bias))
    for step in range(3):  # running statistics over several batches (unbiased variance, as PyTorch)
        x = rng(10 + step).standard_normal((4, 3, 5, 3)) * 2 + step
        xt = torch_tensor(torch, x, grad=True)
        yt = theirs(xt)
        y = ours.forward(x)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        dy = rng(20 + step).standard_normal(y.shape)
        ours.zero_grad()
        theirs.zero_grad()
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
    ours.eval(), theirs.eval()
    x = rng(30).standard_normal((2, 3, 4, 4))
    xt = torch_tensor(torch, x, grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng(31).standard_normal(x.shape)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(torch, reduction):
    logits = rng().standard_normal((6, 5)) * 4
    target = np.array([0, 4, 2, 2, 1, 3])
    ours = nn.CrossEntropyLoss(reduction)
    lt = torch_tensor(torch, logits, grad=True)
    loss_t = torch.nn.CrossEntropyLoss(reduction=reduction)(lt, torch.from_numpy(target))
    loss_t.backward()
    assert float(ours(logits, target)) == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(ours.backward(), lt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_dropout_statistics_match_torch_semantics(torch):
    # Not the same random stream, but the same rule: inverted dropout, identity in eval.
    x = np.ones((200, 200))
    ours = nn.Dropout(0.4).forward(x)
    theirs = torch.nn.Dropout(0.4)(torch.from_numpy(x)).numpy()
    assert set(np.unique(ours)) == set(np.unique(theirs)) == {0.0, 1 / 0.6}
    assert abs((ours == 0).mean() - (theirs == 0).mean()) < 0.01


def test_conv2d_layer_refuses_one_pass_kernel_variants():
    """A layer runs fprop, dgrad and wgrad with its one algo: a variant of one pass would fail at backward."""
    with pytest.raises(ValueError, match="one fprop kernel variant, but a Conv2d layer runs fprop, dgrad and wgrad"):
        nn.Conv2d(3, 4, 3, algo="fprop_simt_64x64x16_1stage")
    with pytest.raises(TypeError, match="algo must be a string"):
        nn.Conv2d(3, 4, 3, algo=None)
    assert nn.Conv2d(3, 4, 3, algo="implicit_gemm").algo == "implicit_gemm"
