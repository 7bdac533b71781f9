"""Our CUDA pooling kernels against the NumPy ground truth (gpuconv.reference), on a GPU.

Max pooling: values, NaN propagation, and the gradient to each window's first
maximum (test data have many ties). Average pooling: both count_include_pad
rules with ceil_mode. Backward passes: bitwise determinism.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpuconv import reference
from gpuconv._backend import cuda_available
from gpuconv._shapes import BFLOAT16, PoolGeometry
from gpuconv.cuda import pool

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]

DTYPES = (np.float16, BFLOAT16, np.float32, np.float64)

POOL_CASES = [  # input shape, PoolGeometry.create keywords
    pytest.param((2, 3, 7, 8), dict(kernel_size=3, stride=2, padding=1), id="3x3-stride2-pad1"),
    pytest.param((2, 3, 7, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), id="ceil-mode"),
    pytest.param((1, 2, 6, 5), dict(kernel_size=(2, 3), stride=(1, 2)), id="rectangular-overlapping"),
    pytest.param((1, 4, 5, 5), dict(kernel_size=2, ceil_mode=True), id="ceil-mode-odd-size"),
    pytest.param((2, 2, 9, 10), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True), id="pad-half-kernel"),
    pytest.param((1, 3, 6, 7), dict(kernel_size=(6, 7)), id="global"),
    pytest.param((3, 5, 13, 11), dict(kernel_size=5, stride=1, padding=2), id="stride1-large-overlap"),
]


def check_pools(cp, make_data, assert_matches, g: PoolGeometry, dtype, seed=0):
    x = make_data(g.input_shape, dtype, seed)
    dy = make_data(g.output_shape, dtype, seed + 1)
    x_gpu, dy_gpu = cp.asarray(x), cp.asarray(dy)
    where = f"{g} {np.dtype(dtype)}"
    assert_matches(pool.max_pool2d_forward(x_gpu, g), reference.max_pool2d_forward(x, g), dtype, f"max {where}")
    assert_matches(pool.max_pool2d_grad(dy_gpu, x_gpu, g), reference.max_pool2d_grad(dy, x, g), dtype,
                   f"max grad {where}")
    for include_pad in (True, False):
        assert_matches(pool.avg_pool2d_forward(x_gpu, g, include_pad), reference.avg_pool2d_forward(x, g, include_pad),
                       dtype, f"avg count_include_pad={include_pad} {where}")
        assert_matches(pool.avg_pool2d_grad(dy_gpu, g, include_pad), reference.avg_pool2d_grad(dy, g, include_pad),
                       dtype, f"avg grad count_include_pad={include_pad} {where}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, options", POOL_CASES)
def test_pools_match_reference(cp, make_data, assert_matches, x_shape, options, dtype):
    check_pools(cp, make_data, assert_matches, PoolGeometry.create(x_shape, **options), dtype)


@st.composite
def pool_geometries(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    try:
        return PoolGeometry.create(shape, (kh, kw), stride, padding, draw(st.booleans()))
    except ValueError:  # window larger than the padded input
        assume(False)


@settings(max_examples=40, deadline=None)
@given(g=pool_geometries(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
def test_generated_pools_match_reference(cp, make_data, assert_matches, g, dtype, seed):
    check_pools(cp, make_data, assert_matches, g, dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_max_pool_propagates_nan(cp, make_data, assert_matches, dtype):
    g = PoolGeometry.create((1, 2, 6, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True)
    x = make_data(g.input_shape, dtype)
    x[0, 0, 2, 3] = x[0, 1, 0, 0] = x[0, 1, 0, 1] = np.nan  # two NaNs in one window: the first one wins
    dy = make_data(g.output_shape, dtype, seed=1)
    y = pool.max_pool2d_forward(cp.asarray(x), g)
    assert np.isnan(cp.asnumpy(y)).sum() > 2
    assert_matches(y, reference.max_pool2d_forward(x, g), dtype, "max with NaN")
    assert_matches(pool.max_pool2d_grad(cp.asarray(dy), cp.asarray(x), g), reference.max_pool2d_grad(dy, x, g),
                   dtype, "max grad with NaN")


def test_pool_gradients_are_bitwise_deterministic(cp, assert_same_bits):
    g = PoolGeometry.create((4, 8, 33, 31), kernel_size=5, stride=2, padding=2, ceil_mode=True)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.uniform(-1, 1, g.input_shape).astype(np.float32))
    dy = cp.asarray(rng.uniform(-1, 1, g.output_shape).astype(np.float32))
    assert_same_bits(pool.max_pool2d_grad(dy, x, g), pool.max_pool2d_grad(dy, x, g), "max grad")
    assert_same_bits(pool.avg_pool2d_grad(dy, g, False), pool.avg_pool2d_grad(dy, g, False), "avg grad")
