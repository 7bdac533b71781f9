"""Layers and the loss: finite-difference gradients in float64, PyTorch cross-checks, init, modes, names.

Layers define only ``forward``: gradients come from autograd (``y.backward(dy)``, ``loss.backward()``), the
input gradient from an input tensor that requires one.
"""
import math

import numpy as np
import pytest

import gpuconv
from direct import numerical_grad
from gpuconv import nn

RTOL, ATOL = 1e-6, 1e-8  # float64 central differences with eps 1e-6 are good to ~1e-9


def rng(seed=0):
    return np.random.default_rng(seed)


def input_tensor(x):
    """x as a leaf tensor that requires a gradient, sharing x's memory (numerical_grad perturbs x in place)."""
    return gpuconv.Tensor(x, requires_grad=True)


def check_module_gradients(module, x, seed=1):
    """d sum(module(x) * dy) / d(x and every parameter), analytic (autograd) against central differences."""
    module.to(np.float64)
    x = x.astype(np.float64)
    xt = input_tensor(x)
    module.zero_grad()
    y = module(xt)
    assert isinstance(y, gpuconv.Tensor) and y.requires_grad
    dy = rng(seed).standard_normal(y.shape)
    y.backward(dy)
    dx = xt.grad
    assert dx.shape == x.shape and dx.dtype == np.float64
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}

    def f():
        with gpuconv.no_grad():  # plain arrays in, nothing recorded: the values alone
            out = module(x)
        assert not out.requires_grad
        return (out.numpy() * dy).sum()

    np.testing.assert_allclose(dx, numerical_grad(f, x), rtol=RTOL, atol=ATOL, err_msg="input gradient")
    for name, p in module.named_parameters():
        np.testing.assert_allclose(analytic[name], numerical_grad(f, p.data), rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {name}")
    return y.numpy(), dx


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
@pytest.mark.parametrize("x_shape", [(4, 5), (2, 3, 5), (5,)], ids=["2d", "3d", "1d"])
def test_linear_gradients(bias, x_shape):
    check_module_gradients(nn.Linear(5, 3, bias=bias), rng().standard_normal(x_shape))


def test_linear_on_an_nd_input_is_the_linear_of_each_row():
    """Linear acts on the last dimension: a (2, 3, 4, 5) input gives what its 24 rows give one by one."""
    layer = nn.Linear(5, 3).to(np.float64)
    x = rng().standard_normal((2, 3, 4, 5))
    y = layer(x)
    assert y.shape == (2, 3, 4, 3)
    rows = np.stack([layer(row[None]).numpy()[0] for row in x.reshape(-1, 5)])
    np.testing.assert_allclose(y.numpy().reshape(-1, 3), rows, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(y, x @ layer.weight.data.T + layer.bias.data, rtol=1e-13, atol=1e-15)
    # And the gradients are the sums over the rows of the 2-D layer's.
    dy = rng(1).standard_normal(y.shape)
    xt = input_tensor(x.copy())
    layer.zero_grad()
    layer(xt).backward(dy)
    nd_grads = [xt.grad, layer.weight.grad.copy(), layer.bias.grad.copy()]
    flat = input_tensor(x.reshape(-1, 5).copy())
    layer.zero_grad()
    layer(flat).backward(dy.reshape(-1, 3))
    np.testing.assert_allclose(nd_grads[0], flat.grad.reshape(x.shape), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(nd_grads[1], layer.weight.grad, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(nd_grads[2], layer.bias.grad, rtol=1e-13, atol=1e-15)


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
    xt = input_tensor(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf, np.nan]))
    y = relu(xt)
    assert np.array_equal(y.numpy(), [0, 0, 0, 2, np.inf, np.nan], equal_nan=True)
    assert not np.signbit(y.numpy()[:3]).any(), "ReLU of a negative number is +0, as in PyTorch"
    y.backward(np.array([np.inf, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert np.array_equal(xt.grad, [0, 0, 0, 1, 1, 0]), "no gradient flows where the input was not > 0"


def test_flatten_gradients():
    x = rng().standard_normal((2, 3, 2, 2))
    y, dx = check_module_gradients(nn.Flatten(), x)
    assert y.shape == (2, 12) and dx.shape == x.shape
    assert nn.Flatten(start_dim=2)(x).shape == (2, 3, 4)


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
    xt = input_tensor(x)
    loss = loss_fn(model(xt), target)
    assert loss.shape == () and loss.requires_grad
    loss.backward()
    dx = xt.grad
    analytic = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert len(analytic) == 8

    def f():
        with gpuconv.no_grad():
            return loss_fn(model(x), target)

    np.testing.assert_allclose(dx, numerical_grad(f, x), rtol=1e-5, atol=1e-8)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(analytic[name], numerical_grad(f, p.data), rtol=1e-5, atol=1e-8, err_msg=name)


def test_gradients_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2).to(np.float64)
    x, dy = rng().standard_normal((4, 3)), rng(1).standard_normal((4, 2))
    layer(x).backward(dy)
    once = layer.weight.grad.copy()
    layer(x).backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None
    # retain_graph keeps the graph for a second backward, which accumulates too.
    y = layer(x)
    y.backward(dy, retain_graph=True)
    y.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-15)


# Layers keep no state between calls (the old "backward called before forward" has no analogue); each row:
# a layer and an input shape it takes.
STATELESS_LAYERS = [
    pytest.param(lambda: nn.Conv2d(1, 2, 2), (2, 1, 3, 3), id="Conv2d"),
    pytest.param(lambda: nn.Linear(3, 2), (2, 3), id="Linear"),
    pytest.param(lambda: nn.MaxPool2d(2), (2, 1, 4, 4), id="MaxPool2d"),
    pytest.param(lambda: nn.AvgPool2d(2), (2, 1, 4, 4), id="AvgPool2d"),
    pytest.param(lambda: nn.ReLU(), (2, 1, 2, 2), id="ReLU"),
    pytest.param(lambda: nn.Flatten(), (2, 1, 2, 2), id="Flatten"),
    pytest.param(lambda: nn.BatchNorm2d(1), (2, 1, 2, 2), id="BatchNorm2d"),
]


@pytest.mark.parametrize("make,shape", STATELESS_LAYERS)
def test_a_second_backward_through_a_freed_graph_is_an_error(make, shape):
    layer = make().to(np.float64)
    y = layer(input_tensor(rng().standard_normal(shape)))
    dy = rng(1).standard_normal(y.shape)
    y.backward(dy)
    with pytest.raises(RuntimeError, match="backward through a graph a second time"):
        y.backward(dy)


@pytest.mark.parametrize("make,shape", STATELESS_LAYERS)
def test_a_layer_called_twice_backpropagates_each_call_through_its_own_input(make, shape):
    """The old layers kept their last input for backward; a call now records its own graph."""
    layer = make().to(np.float64)
    x1, x2 = rng(1).standard_normal(shape), rng(2).standard_normal(shape)
    xt = input_tensor(x1.copy())
    y = layer(xt)
    dy = rng(3).standard_normal(y.shape)
    other = input_tensor(x2.copy())
    layer(other)  # a second call, on another input, between the first call and its backward
    layer.zero_grad()
    y.backward(dy)
    first = [xt.grad] + [p.grad.copy() for p in layer.parameters()]
    assert other.grad is None  # the second call's graph was not used
    fresh = input_tensor(x1.copy())
    layer.zero_grad()
    layer(fresh).backward(dy)
    expected = [fresh.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(first, expected):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert np.any(first[0] != 0)


def test_a_layer_used_twice_in_one_model_gets_the_sum_of_its_gradients():
    """Reuse (a layer at two places of a model): its parameters receive both uses' gradients."""
    shared = nn.Linear(4, 4).to(np.float64)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    assert len(model.parameters()) == 2  # listed once
    check_module_gradients(model, rng().standard_normal((3, 4)))


# --------------------------------------------------------------- dropout ---

def test_dropout_mask_scaling_and_backward():
    p = 0.3
    layer = nn.Dropout(p).to(np.float64)
    x = rng().uniform(1, 2, (50, 40))
    xt = input_tensor(x)
    nn.manual_seed(7)
    out = layer(xt)
    y = out.numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    assert abs((~kept).mean() - p) < 0.03, f"dropped fraction {(~kept).mean():.3f}, expected about {p}"
    dy = rng(1).standard_normal(x.shape)
    out.backward(dy)  # the same mask and scale as the forward pass
    dx = xt.grad
    np.testing.assert_array_equal(dx == 0, ~kept)
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - p), rtol=1e-15)
    # The seed fixes the mask; a second draw differs.
    nn.manual_seed(7)
    np.testing.assert_array_equal(layer(x), y)
    assert not np.array_equal(layer(x).numpy() != 0, kept)


def test_dropout_eval_and_p0_are_identity():
    x = rng().standard_normal((4, 5)).astype(np.float32)
    layer = nn.Dropout(0.5).eval()
    assert layer(x).data is x  # a tensor of the same array, no copy
    xt = input_tensor(x)
    assert layer(xt) is xt
    dy = np.ones_like(x)
    layer(xt).backward(dy)
    np.testing.assert_array_equal(xt.grad, dy)
    assert xt.grad is not dy  # the caller's array never becomes a .grad
    assert nn.Dropout(0.0)(x).data is x
    y = nn.Dropout(0.5)(x)
    assert y.dtype == np.float32
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"dropout probability p must be in \[0, 1\], got {p}"):
            nn.Dropout(p)


def test_dropout_p1_drops_everything():
    """p = 1 is allowed now, as in PyTorch: every element and every gradient is zero, none NaN."""
    x = rng().standard_normal((4, 5)).astype(np.float32)
    xt = input_tensor(x)
    y = nn.Dropout(1.0)(xt)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.zeros_like(x))
    y.backward(np.ones_like(x))
    np.testing.assert_array_equal(xt.grad, np.zeros_like(x))
    assert nn.Dropout(1.0).eval()(x).data is x


# ------------------------------------------------------------------ loss ---

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient(reduction):
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    logits = rng().standard_normal((5, 4)) * 3
    target = np.array([0, 3, 1, 1, 2])
    lt = input_tensor(logits)
    loss = loss_fn(lt, target)
    assert loss.shape == ()
    loss.backward()
    analytic = lt.grad
    np.testing.assert_allclose(analytic, numerical_grad(lambda: loss_fn(logits, target), logits), rtol=RTOL,
                               atol=ATOL)
    # The gradient of each row is softmax - onehot (divided by the batch for "mean"): rows sum to 0.
    np.testing.assert_allclose(analytic.sum(axis=1), 0, atol=1e-15)
    lt.grad = None
    loss_fn(lt, target).backward(2.0)  # an upstream gradient scales it
    np.testing.assert_allclose(lt.grad, 2 * analytic, rtol=1e-15)


def test_cross_entropy_gradient_none_reduction_and_spatial_logits():
    """reduction="none" gives one loss per sample; (N, C, d1, d2) logits one per sample and position."""
    logits = rng().standard_normal((2, 4, 3, 2)) * 3
    target = rng(1).integers(0, 4, size=(2, 3, 2))
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    lt = input_tensor(logits)
    losses = loss_fn(lt, target)
    assert losses.shape == (2, 3, 2)
    dy = rng(2).standard_normal(losses.shape)
    losses.backward(dy)
    np.testing.assert_allclose(lt.grad, numerical_grad(lambda: (loss_fn(logits, target).numpy() * dy).sum(),
                                                       logits), rtol=RTOL, atol=ATOL)
    # The same as the 2-D loss of the logits with the class axis moved last and the positions flattened.
    flat = np.moveaxis(logits, 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(losses.numpy().ravel(), loss_fn(flat, target.ravel()), rtol=1e-14)


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
        ht = input_tensor(huge)
        loss = loss_fn(ht, target)
        loss.backward()
        grad = ht.grad
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
        st = input_tensor(small.astype(dtype))
        expected = loss_fn(st, target)
        expected.backward()
        tol = 1e-12 if dtype == np.float64 else 1e-3  # float32 rounds small + 1e4 to ~1e-3
        assert loss.dtype == dtype and grad.dtype == dtype
        assert float(loss) == pytest.approx(float(expected), rel=tol, abs=tol)
        np.testing.assert_allclose(grad, st.grad, atol=tol)


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
    # PyTorch's order: module by module, its parameters, then its buffers.
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                           "1.num_batches_tracked", "6.weight", "6.bias"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    counter = state["1.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64 and counter == 0
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
        theirs[1].num_batches_tracked.fill_(5)
    their_state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    assert [k for k, _ in theirs.named_parameters()] == [k for k, _ in small_model().named_parameters()]
    ours = small_model().to(np.float64)
    assert list(ours.state_dict()) == list(their_state)  # the same names in the same order
    for name, value in ours.state_dict().items():
        assert value.dtype == their_state[name].dtype and value.shape == their_state[name].shape, name
    ours.load_state_dict(their_state)
    assert ours[1].num_batches_tracked == 5 and ours[1].num_batches_tracked.dtype == np.int64
    ours.eval(), theirs.eval()
    x = rng().standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    # PyTorch tensors load as they are, too.
    again = small_model().to(np.float64)
    again.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(again.eval()(x), ours(x))


def test_train_eval_switching():
    model = small_model()
    modules = [model] + list(model)
    assert all(m.training for m in modules)
    assert model.eval() is model
    assert not any(m.training for m in modules)
    x = rng().standard_normal((2, 3, 4, 4)).astype(np.float32)
    running = model[1].running_mean.copy()
    first = model(x).numpy()
    np.testing.assert_array_equal(model(x), first)  # eval: no dropout, running statistics
    np.testing.assert_array_equal(model[1].running_mean, running)  # and they are not updated
    assert model[1].num_batches_tracked == 0
    model.train()
    assert all(m.training for m in modules)
    model(x)
    assert not np.array_equal(model[1].running_mean, running)
    assert model[1].num_batches_tracked == 1 and model[1].num_batches_tracked.shape == ()
    model.train(False)
    assert not any(m.training for m in modules)


def test_to_float64_casts_parameters_buffers_and_gradients():
    model = small_model()
    model(rng().standard_normal((2, 3, 4, 4)).astype(np.float32)).backward(np.ones((2, 5), np.float32))
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    assert model.to(np.float64) is model
    for name, value in model.state_dict().items():
        # The counter is an integer buffer: a cast leaves it int64, as PyTorch's .double() does.
        expected = np.int64 if name.endswith("num_batches_tracked") else np.float64
        assert value.dtype == expected, name
    assert all(p.grad.dtype == np.float64 for p in model.parameters())
    assert all(p.dtype == np.float64 for p in model.parameters())
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
    ours_x = input_tensor(x)
    y = ours(ours_x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng(1).standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    y.backward(dy)
    np.testing.assert_allclose(ours_x.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
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
    ours_x = input_tensor(x)
    y = ours(ours_x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    dy = rng(1).standard_normal((5, 4))
    yt.backward(torch.from_numpy(dy))
    y.backward(dy)
    np.testing.assert_allclose(ours_x.grad, xt.grad.numpy(), rtol=1e-12)
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
        ours_x = input_tensor(x)
        y = ours(ours_x)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        dy = rng(20 + step).standard_normal(y.shape)
        ours.zero_grad()
        theirs.zero_grad()
        yt.backward(torch.from_numpy(dy))
        y.backward(dy)
        np.testing.assert_allclose(ours_x.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
        assert ours.num_batches_tracked == theirs.num_batches_tracked.item() == step + 1
    ours.eval(), theirs.eval()
    x = rng(30).standard_normal((2, 3, 4, 4))
    xt = torch_tensor(torch, x, grad=True)
    yt = theirs(xt)
    ours_x = input_tensor(x)
    y = ours(ours_x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng(31).standard_normal(x.shape)
    yt.backward(torch.from_numpy(dy))
    y.backward(dy)
    np.testing.assert_allclose(ours_x.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert ours.num_batches_tracked == 3  # eval mode does not count


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(torch, reduction):
    logits = rng().standard_normal((6, 5)) * 4
    target = np.array([0, 4, 2, 2, 1, 3])
    ours = nn.CrossEntropyLoss(reduction=reduction)
    lt = torch_tensor(torch, logits, grad=True)
    loss_t = torch.nn.CrossEntropyLoss(reduction=reduction)(lt, torch.from_numpy(target))
    loss_t.backward()
    ours_logits = input_tensor(logits)
    loss = ours(ours_logits, target)
    assert float(loss) == pytest.approx(loss_t.item(), rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(ours_logits.grad, lt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2], ids=["hard", "smoothed"])
def test_cross_entropy_options_match_torch(torch, reduction, label_smoothing):
    """Spatial logits (N, C, d1, d2), ignore_index, label smoothing and every reduction, against PyTorch."""
    logits = rng().standard_normal((3, 5, 4, 2)) * 3
    target = rng(1).integers(0, 5, size=(3, 4, 2))
    target[0, 0, 0] = target[1, 2, 1] = target[2, 3, 0] = -1
    kwargs = dict(ignore_index=-1, reduction=reduction, label_smoothing=label_smoothing)
    lt = torch_tensor(torch, logits, grad=True)
    loss_t = torch.nn.CrossEntropyLoss(**kwargs)(lt, torch.from_numpy(target))
    ours_logits = input_tensor(logits)
    loss = nn.CrossEntropyLoss(**kwargs)(ours_logits, target)
    assert loss.shape == tuple(loss_t.shape)
    np.testing.assert_allclose(loss, loss_t.detach().numpy(), rtol=1e-12, atol=1e-15)
    dy = rng(2).standard_normal(loss.shape)
    loss_t.backward(torch.from_numpy(dy))
    loss.backward(dy)
    np.testing.assert_allclose(ours_logits.grad, lt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_dropout_statistics_match_torch_semantics(torch):
    # Not the same random stream, but the same rule: inverted dropout, identity in eval.
    x = np.ones((200, 200))
    ours = nn.Dropout(0.4)(x).numpy()
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
