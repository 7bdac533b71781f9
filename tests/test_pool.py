"""max/avg pooling (NumPy path) against the direct loops in tests/direct.py, finite differences and PyTorch."""
import zlib

import numpy as np
import pytest

import direct
from gpuconv import cpu_fast, reference
from gpuconv import functional as F
from gpuconv._shapes import PoolGeometry
from pool_cases import POOL_CASES, POOL_IDS, pool_geometry

# (id, input shape, pool kwargs); avg-only kwargs (count_include_pad) are added by the avg tests.
CASES = [
    ("2x2-default-stride", (2, 3, 6, 6), dict(kernel_size=2)),
    ("3x3-stride1-overlap", (1, 2, 5, 5), dict(kernel_size=3, stride=1)),
    ("3x3-stride2-pad1", (2, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1)),
    ("floor-drops-remainder", (1, 2, 7, 5), dict(kernel_size=2, stride=2)),
    ("ceil-mode", (1, 2, 7, 5), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ("ceil-mode-pad", (1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("ceil-mode-drops-window-in-padding", (1, 2, 5, 5), dict(kernel_size=3, stride=3, padding=1, ceil_mode=True)),
    ("ceil-mode-kernel-exceeds-input", (1, 1, 2, 3), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("nonsquare", (2, 2, 6, 9), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ("nonsquare-ceil", (1, 3, 8, 5), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True)),
    ("global", (2, 3, 4, 5), dict(kernel_size=(4, 5))),
    ("1x1-stride2", (1, 2, 5, 6), dict(kernel_size=1, stride=2)),
]
CASE_IDS = [c[0] for c in CASES]


def make_input(case_id, shape):
    """Distinct values, spaced >= 1e-3 apart: no ties, so max pooling is differentiable with eps=1e-6."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    size = int(np.prod(shape))
    values = rng.permutation(size) * 1e-2 - size * 5e-3 + rng.uniform(0, 1e-3, size)
    return values.reshape(shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_max_pool2d_matches_direct_definition(case, dtype):
    case_id, shape, kwargs = case
    x = make_input(case_id, shape)
    y = F.max_pool2d(x.astype(dtype), **kwargs)
    expected = direct.max_pool2d(x.astype(dtype), **kwargs)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y, expected.astype(dtype))  # max is exact


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_avg_pool2d_matches_direct_definition(case, dtype, count_include_pad):
    case_id, shape, kwargs = case
    x = make_input(case_id, shape)
    y = F.avg_pool2d(x.astype(dtype), count_include_pad=count_include_pad, **kwargs)
    expected = direct.avg_pool2d(x.astype(dtype), count_include_pad=count_include_pad, **kwargs)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_avg_pool2d_divisors_by_hand():
    # ones(3x3), kernel 2, stride 2, padding 1, ceil_mode: windows rows [-1,1), [1,3) (and cols alike).
    x = np.ones((1, 1, 3, 3))
    # count_include_pad: every window is 2x2 inside the 5x5 padded input, divisor 4.
    # The corner window holds 1 input pixel -> 1/4; edge windows 2 -> 2/4; the inner one 4 -> 1.
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, 2, 1, count_include_pad=True)[0, 0],
                                  [[0.25, 0.5], [0.5, 1.0]])
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, 2, 1, count_include_pad=False)[0, 0], np.ones((2, 2)))
    # ceil_mode overhang (past the padded input) is never counted, even with count_include_pad:
    # 4x4 input, kernel 3, stride 2, no padding, ceil -> windows rows [0,3), [2,5) clipped to [2,4).
    x = np.ones((1, 1, 4, 4))
    np.testing.assert_array_equal(F.avg_pool2d(x, 3, 2, 0, ceil_mode=True, count_include_pad=True)[0, 0],
                                  np.ones((2, 2)))


def test_max_pool2d_padding_is_minus_infinity():
    # All-negative input: a zero-padded max pool would return 0 at the borders.
    x = -1.0 - np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = F.max_pool2d(x, 3, stride=1, padding=1)
    assert np.all(y < 0)
    np.testing.assert_array_equal(y, direct.max_pool2d(x, 3, stride=1, padding=1))
    assert y[0, 0, 0, 0] == -1.0


def test_pools_accept_non_contiguous_views():
    x = make_input("view", (2, 3, 6, 10))
    view = x[:, ::-1, :, ::2]  # negative and stepped strides
    assert not view.flags.c_contiguous
    for kwargs in (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=(2, 3))):
        np.testing.assert_array_equal(F.max_pool2d(view, **kwargs), direct.max_pool2d(view, **kwargs))
        np.testing.assert_allclose(F.avg_pool2d(view, **kwargs), direct.avg_pool2d(view, **kwargs), rtol=1e-12)
        dy = np.ones(F.max_pool2d(view, **kwargs).shape)
        np.testing.assert_array_equal(F.max_pool2d_grad(dy[:, :, ::-1], view, **kwargs),
                                      direct.max_pool2d_grad(dy[:, :, ::-1], view, **kwargs))


# -------------------------------------------------------------- gradients ---

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_max_pool2d_grad_matches_finite_differences(case):
    case_id, shape, kwargs = case
    x = make_input(case_id, shape)
    dy = np.random.default_rng(1).standard_normal(F.max_pool2d(x, **kwargs).shape)
    dx = F.max_pool2d_grad(dy, x, **kwargs)
    expected = direct.numerical_grad(lambda: np.sum(F.max_pool2d(x, **kwargs) * dy), x)
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, direct.max_pool2d_grad(dy, x, **kwargs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_avg_pool2d_grad_matches_finite_differences(case, count_include_pad):
    case_id, shape, kwargs = case
    x = make_input(case_id, shape)
    y = F.avg_pool2d(x, count_include_pad=count_include_pad, **kwargs)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = F.avg_pool2d_grad(dy, x.shape, count_include_pad=count_include_pad, **kwargs)
    expected = direct.numerical_grad(
        lambda: np.sum(F.avg_pool2d(x, count_include_pad=count_include_pad, **kwargs) * dy), x)
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-7)


def test_pool_grads_float32_keep_dtype():
    x = make_input("f32", (1, 2, 5, 5)).astype(np.float32)
    dy = np.ones((1, 2, 3, 3), dtype=np.float32)
    dx_max = F.max_pool2d_grad(dy, x, 3, 2, 1)
    dx_avg = F.avg_pool2d_grad(dy, x.shape, 3, 2, 1)
    assert dx_max.dtype == dx_avg.dtype == np.float32
    np.testing.assert_allclose(dx_max, direct.max_pool2d_grad(dy, x, 3, 2, 1))
    # Every output sends out its full gradient: the totals match (9 outputs x 2 channels).
    assert dx_max.sum() == pytest.approx(18.0)


# ----------------------------------------------------------- ties and NaN ---

def test_max_pool2d_grad_ties_go_to_first_max():
    # All-equal input, overlapping 2x2 windows: each window's first (top-left) element takes its gradient.
    x = np.ones((1, 1, 3, 3))
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = F.max_pool2d_grad(dy, x, 2, stride=1)
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dx, direct.max_pool2d_grad(dy, x, 2, stride=1))


def test_max_pool2d_grad_tie_order_is_row_major():
    # The tie sits at (0, 1) and (1, 0): row-major order makes (0, 1) the first maximum.
    x = np.array([[[[0.0, 5.0], [5.0, 1.0]]]])
    dx = F.max_pool2d_grad(np.array([[[[7.0]]]]), x, 2)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 7.0], [0.0, 0.0]])


def test_max_pool2d_grad_ties_with_padding_and_ceil_mode():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(2, 2, 7, 6)).astype(np.float64)  # many ties
    kwargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    dy = rng.standard_normal(F.max_pool2d(x, **kwargs).shape)
    np.testing.assert_allclose(F.max_pool2d_grad(dy, x, **kwargs), direct.max_pool2d_grad(dy, x, **kwargs),
                               rtol=1e-12, atol=1e-12)


def test_max_pool2d_propagates_nan():
    x = np.arange(32, dtype=np.float64).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan   # window (0, 0) of channel 0, and not its maximum position
    x[0, 1, 3, 2] = np.nan   # window (1, 1) of channel 1
    y = F.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 1])
    assert np.isnan(y).sum() == 2
    np.testing.assert_array_equal(y, direct.max_pool2d(x, 2))  # assert_array_equal treats NaN == NaN
    # float32 too, and with overlapping windows: every window holding the NaN is NaN.
    y32 = F.max_pool2d(x.astype(np.float32), 3, stride=1, padding=1)
    assert y32.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(y32[0, 0]), [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0],
                                                         [0, 0, 0, 0]])


def test_max_pool2d_grad_with_nan_goes_to_the_last_nan():
    # PyTorch's rule: NaN counts as the maximum and the last NaN of a window takes the gradient.
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    dx = F.max_pool2d_grad(np.array([[[[3.0]]]]), x, 2)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 0.0], [3.0, 0.0]])
    np.testing.assert_array_equal(dx, direct.max_pool2d_grad(np.array([[[[3.0]]]]), x, 2))


def test_max_pool2d_handles_infinities():
    x = np.full((1, 1, 2, 4), -np.inf)
    x[0, 0, 1, 3] = np.inf
    np.testing.assert_array_equal(F.max_pool2d(x, 2)[0, 0], [[-np.inf, np.inf]])


# ------------------------------------------------------------------ PyTorch ---

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pools_match_torch(case):
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    tF = torch.nn.functional
    case_id, shape, kwargs = case
    x = make_input(case_id, shape)
    x[0, 0, 0, :2] = x[0, 0, 0, 2]  # a few ties: PyTorch also sends the gradient to the first max
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tF.max_pool2d(xt, **kwargs)
    dy = np.random.default_rng(4).standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(F.max_pool2d(x, **kwargs), yt.detach().numpy())
    np.testing.assert_allclose(F.max_pool2d_grad(dy, x, **kwargs), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    for count_include_pad in (True, False):
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = tF.avg_pool2d(xt, count_include_pad=count_include_pad, **kwargs)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(F.avg_pool2d(x, count_include_pad=count_include_pad, **kwargs),
                                   yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            F.avg_pool2d_grad(dy, x.shape, count_include_pad=count_include_pad, **kwargs),
            xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_max_pool2d_nan_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    x = make_input("nan", (1, 2, 5, 5))
    x[0, 0, 2, 2] = np.nan
    x[0, 1, 0, 4] = np.nan
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True).numpy()
    np.testing.assert_array_equal(F.max_pool2d(x, 3, 2, 1, ceil_mode=True), expected)


# ------------------------------------------- the fast CPU path against the reference, every geometry ---

@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int8, np.int64], ids=str)
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_fast_cpu_pooling_equals_the_reference(case, dtype):
    """cpu_fast's strided windows against reference.py's gathered ones (tests/pool_cases.py): max values and
    indices exactly, gradients and averages to rounding, with every divisor rule."""
    g = pool_geometry(case)
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))
    x = rng.integers(-3, 4, g.input_shape).astype(dtype)  # ties, and a window of equal values
    np.testing.assert_array_equal(cpu_fast.max_pool2d_forward(x, g), reference.max_pool2d_forward(x, g))
    for got, expected in zip(cpu_fast.max_pool2d_forward(x, g, True), reference.max_pool2d_forward(x, g, True)):
        np.testing.assert_array_equal(got, expected)
    if np.dtype(dtype).kind != "f":
        return
    dy = rng.standard_normal(g.output_shape).astype(dtype)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    # Overlapping windows sum their gradients in another order: equal to rounding.
    np.testing.assert_allclose(cpu_fast.max_pool2d_grad(dy, x, g), reference.max_pool2d_grad(dy, x, g),
                               rtol=tol, atol=tol)
    for args in ((True, None), (False, None), (False, 5)):
        np.testing.assert_allclose(cpu_fast.avg_pool2d_forward(x, g, *args), reference.avg_pool2d_forward(x, g, *args),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(cpu_fast.avg_pool2d_grad(dy, g, *args), reference.avg_pool2d_grad(dy, g, *args),
                                   rtol=tol, atol=tol)


def test_the_cpu_path_runs_the_fast_pooling():
    g = pool_geometry(POOL_CASES[0])
    assert F._pool_module(np) is cpu_fast and not g.is_adaptive


def test_divisible_adaptive_sizes_are_ordinary_pooling():
    assert PoolGeometry.adaptive((1, 1, 8, 6), (4, 3)) == PoolGeometry.create((1, 1, 8, 6), 2)
    assert PoolGeometry.adaptive((1, 1, 7, 6), (3, 3)).is_adaptive


def test_ceil_mode_never_gives_fewer_outputs_than_floor_mode():
    """With padding past half the kernel (ONNX), floor mode's own last windows may lie in the padding: only the
    window ceil_mode adds is dropped when it starts past the input (PyTorch's rule, where PyTorch applies)."""
    for kernel, stride, padding in ((1, 1, (0, 3, 0, 0)), (2, 2, (0, 4, 0, 0)), (3, 2, 1), (2, 3, (1, 2, 0, 0))):
        floor = PoolGeometry.create((1, 1, 4, 4), kernel, stride, padding, False)
        ceil = PoolGeometry.create((1, 1, 4, 4), kernel, stride, padding, True)
        assert ceil.P >= floor.P and ceil.P - floor.P <= 1, (kernel, stride, padding, floor.P, ceil.P)
    assert PoolGeometry.create((1, 1, 4, 4), 1, 1, (0, 3, 0, 0), True).P == 7
