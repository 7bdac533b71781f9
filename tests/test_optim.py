"""Optimizers: several steps against torch.optim on the same parameters and gradients; argument checks."""
import numpy as np
import pytest

from gpuconv import nn, optim

SHAPES = [(3, 2, 3, 3), (3,), (4, 5)]


def make_params(dtype=np.float64):
    rng = np.random.default_rng(0)
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def gradient(step, i, w):
    """A gradient that depends on the current weights (so an error in one step shows in the next) and on the step."""
    noise = np.random.default_rng(100 * step + i).standard_normal(w.shape)
    return w ** 3 - 0.5 * w + noise


CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True)),
    ("sgd", dict(lr=0.1, weight_decay=0.05)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, weight_decay=0.05)),
    ("adam", dict(lr=0.003, betas=(0.5, 0.9), eps=1e-6)),
]
IDS = ["sgd", "sgd-momentum", "sgd-momentum-wd", "sgd-nesterov", "sgd-nesterov-wd", "sgd-wd",
       "adam", "adam-wd", "adam-betas-eps"]


@pytest.mark.parametrize("kind,kwargs", CASES, ids=IDS)
def test_matches_torch_optim(kind, kwargs):
    torch = pytest.importorskip("torch", reason="torch is optional: cross-checks against PyTorch need it")
    ours = make_params()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt = (optim.SGD if kind == "sgd" else optim.Adam)(ours, **kwargs)
    topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(theirs, **kwargs)
    for step in range(6):
        opt.zero_grad()
        topt.zero_grad()
        for i, (p, t) in enumerate(zip(ours, theirs)):
            if step == 2 and i == 1:
                continue  # a parameter without a gradient this step is left alone (its state too) by both
            g = gradient(step, i, p.data)
            p.grad = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        for i, (p, t) in enumerate(zip(ours, theirs)):
            assert p.data.dtype == np.float64
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"parameter {i} after step {step + 1}")


@pytest.mark.parametrize("kind,kwargs", [CASES[1], CASES[7]], ids=["sgd-momentum", "adam-wd"])
def test_float32_parameters_stay_float32(kind, kwargs):
    params = make_params(np.float32)
    opt = (optim.SGD if kind == "sgd" else optim.Adam)(params, **kwargs)
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p.data).astype(np.float32)
        opt.step()
    assert all(p.data.dtype == np.float32 for p in params)
    assert all(np.all(np.isfinite(p.data)) for p in params)


def test_adam_first_step_moves_each_weight_by_lr_times_sign():
    lr = 0.01
    params = make_params()
    before = [p.data.copy() for p in params]
    rng = np.random.default_rng(1)
    for p in params:
        magnitude = rng.uniform(0.5, 2.0, p.shape) * rng.choice([1e-2, 1.0, 1e3], size=p.shape)
        p.grad = magnitude * rng.choice([-1.0, 1.0], size=p.shape)
        p.grad.flat[0] = 0.0
    optim.Adam(params, lr=lr).step()
    for p, w0 in zip(params, before):
        # m / sqrt(v) after bias correction is g / |g|, whatever the gradient's magnitude (eps 1e-8 aside).
        np.testing.assert_allclose(w0 - p.data, lr * np.sign(p.grad), rtol=1e-5, atol=1e-15)
        assert p.data.flat[0] == w0.flat[0]


def test_sgd_plain_step():
    params = make_params()
    before = [p.data.copy() for p in params]
    for p in params:
        p.grad = np.full(p.shape, 2.0)
    optim.SGD(params, lr=0.25).step()
    for p, w0 in zip(params, before):
        np.testing.assert_allclose(p.data, w0 - 0.5, rtol=1e-15)


def test_zero_grad_and_parameters_without_gradient():
    params = make_params()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = np.ones(params[0].shape)
    before = params[1].data.copy()
    opt.step()
    np.testing.assert_array_equal(params[1].data, before)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_optimizer_trains_a_model_parameter_list():
    # The usual call: model.parameters(); the optimizer updates the model's own Parameter objects.
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(np.float64)
    loss_fn = nn.CrossEntropyLoss()
    x = np.random.default_rng(0).standard_normal((32, 4))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    opt = optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = loss_fn(model(x), y)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    assert all(opt.state[p]["step"] == 60 for p in model.parameters())  # the model's own Parameters, by key


@pytest.mark.parametrize("make", [lambda p: optim.SGD(p, lr=0),
                                  lambda p: optim.SGD(p, lr=0.0, momentum=0.9, weight_decay=0.1, nesterov=True),
                                  lambda p: optim.Adam(p, lr=0.0, weight_decay=0.1),
                                  lambda p: optim.AdamW(p, lr=0)],
                         ids=["sgd", "sgd-nesterov-wd", "adam-wd", "adamw"])
def test_a_zero_learning_rate_leaves_the_weights_unchanged(make):
    """lr = 0 is allowed, as in PyTorch (a warm-up may start there): steps run but move nothing."""
    params = make_params()
    before = [p.data.copy() for p in params]
    opt = make(params)
    assert all(group["lr"] == 0 for group in opt.param_groups)
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = gradient(step, i, p.data)
        opt.step()
    for p, w0 in zip(params, before):
        np.testing.assert_array_equal(p.data, w0)
        assert p.data.dtype == w0.dtype


@pytest.mark.parametrize("make,error,match", [
    (lambda p: optim.SGD(p, lr=-0.1), ValueError, r"learning rate must be >= 0, got -0.1"),
    (lambda p: optim.Adam(p, lr=float("nan")), ValueError, r"learning rate must be >= 0, got nan"),
    (lambda p: optim.Adam(p, lr=-1e-3), ValueError, r"learning rate must be >= 0, got -0.001"),
    (lambda p: optim.SGD([], lr=0.1), ValueError, r"optimizer got an empty parameter list"),
    (lambda p: optim.Adam(iter([])), ValueError, r"optimizer got an empty parameter list"),
    (lambda p: optim.SGD([q.data for q in p], lr=0.1), TypeError,
     r"optimizer takes gpuconv.nn.Parameter objects, got ndarray"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), ValueError, r"momentum must be >= 0, got -0.5"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), ValueError, r"weight_decay must be >= 0, got -1"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), ValueError, r"nesterov momentum needs momentum > 0"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), ValueError, r"betas must be in \[0, 1\), got \(1.0, 0.999\)"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), ValueError, r"betas must be in \[0, 1\)"),
], ids=["sgd-lr-negative", "adam-lr-nan", "adam-lr-negative", "sgd-empty", "adam-empty-iterator",
        "arrays-not-parameters", "momentum-negative", "weight-decay-negative", "nesterov-without-momentum",
        "beta1-one", "beta2-negative"])
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make(make_params())
