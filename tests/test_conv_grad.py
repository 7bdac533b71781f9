"""conv2d gradients (NumPy path): central differences in float64, and PyTorch where it is installed.

The loss is L = sum(conv2d(x, w, b) * dy) for a random dy, so dL/dy = dy and the
analytic gradients are conv2d_grad_input(dy, ...), conv2d_grad_weight(x, dy, ...)
and conv2d_grad_bias(dy).
"""
import zlib

import numpy as np
import pytest

import direct
from gpuconv import functional as F

# (id, input shape, weight shape, conv kwargs)
CASES = [
    ("basic-3x3", (2, 2, 5, 5), (3, 2, 3, 3), {}),
    ("padded", (1, 2, 4, 5), (2, 2, 3, 3), dict(padding=1)),
    ("stride2", (2, 2, 7, 6), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ("stride-skips-pixels", (1, 2, 7, 7), (2, 2, 2, 2), dict(stride=3)),
    ("dilation2", (1, 2, 7, 6), (2, 2, 3, 2), dict(dilation=2, padding=(1, 2))),
    ("groups2", (2, 4, 5, 4), (4, 2, 3, 3), dict(groups=2, padding=1)),
    ("depthwise-multiplier2", (1, 3, 5, 5), (6, 1, 3, 3), dict(groups=3, stride=2)),
    ("asymmetric-padding", (1, 2, 5, 4), (3, 2, 3, 2), dict(padding=(0, 2, 3, 1))),
    ("same-stride2-even-kernel", (1, 2, 7, 6), (2, 2, 4, 4), dict(padding="same", stride=2)),
    ("full", (1, 1, 4, 3), (2, 1, 3, 2), dict(padding="full")),
    ("pointwise-1x1", (2, 3, 3, 4), (2, 3, 1, 1), {}),
    ("nonsquare-everything", (2, 2, 6, 7), (2, 2, 2, 3), dict(stride=(2, 1), dilation=(1, 2),
                                                              padding=(1, 0, 2, 1))),
]
CASE_IDS = [c[0] for c in CASES]


def make_case(case):
    case_id, x_shape, w_shape, kwargs = case
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    y_shape = F.conv2d(x, w, **kwargs).shape
    dy = rng.standard_normal(y_shape)
    return x, w, b, dy, kwargs


def loss(x, w, b, dy, kwargs):
    return float(np.sum(F.conv2d(x, w, b, algo="reference", **kwargs) * dy))


@pytest.mark.parametrize("algo", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv2d_grad_input_matches_finite_differences(case, algo):
    x, w, b, dy, kwargs = make_case(case)
    dx = F.conv2d_grad_input(dy, w, x.shape, algo=algo, **kwargs)
    expected = direct.numerical_grad(lambda: loss(x, w, b, dy, kwargs), x)
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algo", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv2d_grad_weight_matches_finite_differences(case, algo):
    x, w, b, dy, kwargs = make_case(case)
    dw = F.conv2d_grad_weight(x, dy, w.shape, algo=algo, **kwargs)
    expected = direct.numerical_grad(lambda: loss(x, w, b, dy, kwargs), w)
    assert dw.shape == w.shape and dw.dtype == np.float64
    np.testing.assert_allclose(dw, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES[:3] + CASES[-1:], ids=CASE_IDS[:3] + CASE_IDS[-1:])
def test_conv2d_grad_bias_matches_finite_differences(case):
    x, w, b, dy, kwargs = make_case(case)
    db = F.conv2d_grad_bias(dy)
    expected = direct.numerical_grad(lambda: loss(x, w, b, dy, kwargs), b)
    assert db.shape == b.shape and db.dtype == np.float64
    np.testing.assert_allclose(db, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algo", ["reference", "auto"])
def test_conv2d_grads_float32_agree_with_float64(algo):
    x, w, b, dy, kwargs = make_case(CASES[-1])
    f32 = [a.astype(np.float32) for a in (x, w, dy)]
    dx = F.conv2d_grad_input(f32[2], f32[1], x.shape, algo=algo, **kwargs)
    dw = F.conv2d_grad_weight(f32[0], f32[2], w.shape, algo=algo, **kwargs)
    db = F.conv2d_grad_bias(f32[2])
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    np.testing.assert_allclose(dx, F.conv2d_grad_input(dy, w, x.shape, **kwargs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, F.conv2d_grad_weight(x, dy, w.shape, **kwargs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_conv2d_grad_input_is_adjoint_of_forward():
    # <conv(x), dy> == <x, conv_grad_input(dy)> for every x, dy: an exact identity, independent of
    # finite-difference noise, on a shape where stride leaves input pixels that no window reads.
    x, w, b, dy, kwargs = make_case(CASES[3])
    lhs = np.sum(F.conv2d(x, w, **kwargs) * dy)
    rhs = np.sum(x * F.conv2d_grad_input(dy, w, x.shape, **kwargs))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    # stride 3 with a 2x2 kernel on 7x7 reads rows/cols 0,1,3,4 only: the rest get zero gradient.
    dx = F.conv2d_grad_input(dy, w, x.shape, **kwargs)
    assert np.all(dx[:, :, [2, 5, 6], :] == 0) and np.all(dx[:, :, :, [2, 5, 6]] == 0)


# ------------------------------------------------------------------ PyTorch ---

@pytest.mark.parametrize("algo", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv2d_grads_match_torch(case, algo):
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    x, w, b, dy, kwargs = make_case(case)
    stride, dilation, groups = kwargs.get("stride", 1), kwargs.get("dilation", 1), kwargs.get("groups", 1)
    padding = kwargs.get("padding", 0)
    if padding == "same":
        padding = direct.same_padding(x.shape[2:], w.shape[2:], stride, dilation)
    elif padding == "full":
        padding = (w.shape[2] - 1, w.shape[3] - 1)  # these cases use dilation 1
    top, bottom, left, right = direct.four_sided(padding)
    xt, wt, dyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
    if (top, left) == (bottom, right):
        # Symmetric padding: torch.nn.grad, which is what conv2d_grad_input/_weight mirror.
        expected_dx = torch.nn.grad.conv2d_input(x.shape, wt, dyt, stride, (top, left), dilation, groups)
        expected_dw = torch.nn.grad.conv2d_weight(xt, w.shape, dyt, stride, (top, left), dilation, groups)
    else:
        # Asymmetric padding: autograd through an explicit zero pad.
        xt.requires_grad_(True)
        wt.requires_grad_(True)
        padded = torch.nn.functional.pad(xt, (left, right, top, bottom))
        torch.nn.functional.conv2d(padded, wt, None, stride, 0, dilation, groups).backward(dyt)
        expected_dx, expected_dw = xt.grad, wt.grad
    dx = F.conv2d_grad_input(dy, w, x.shape, algo=algo, **kwargs)
    dw = F.conv2d_grad_weight(x, dy, w.shape, algo=algo, **kwargs)
    np.testing.assert_allclose(dx, expected_dx.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, expected_dw.detach().numpy(), rtol=1e-10, atol=1e-10)
