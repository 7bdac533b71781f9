"""Shared fixtures of the GPU tests (tests/gpu): data, tolerances, comparisons.

Every test module here sets
    pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]
so that on a machine without a usable GPU the whole directory skips with that reason.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv._backend import as_numpy, cupy_module
from gpuconv._shapes import BFLOAT16

DTYPES = (np.float16, BFLOAT16, np.float32, np.float64)

#: Largest accepted  max|actual - expected| / max(1, max|expected|)  per dtype. Test data are
#: multiples of 1/8 in [-1, 1], so float32/float64 products and sums are exact (TF32's too); what is left is
#: float16's and bfloat16's rounding of results (and, on the im2col path, of the intermediate GEMM outputs):
#: 2^-11 and 2^-8 relative per rounding.
TOLERANCES = {np.dtype(np.float16): 1e-2, BFLOAT16: 2e-2, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@pytest.fixture(scope="session")
def cp():
    return cupy_module()


@pytest.fixture(scope="session")
def make_data():
    """make_data(shape, dtype, seed) -> a NumPy array of multiples of 1/8 in [-1, 1].

    Exactly representable in every dtype and far from denormals (CuPy may compile
    with flush-to-zero), with many ties for max pooling's first-maximum rule.
    """
    def make(shape, dtype, seed=0):
        rng = np.random.default_rng(seed)
        return (rng.integers(-8, 9, size=shape) / 8).astype(dtype)
    return make


@pytest.fixture(scope="session")
def assert_matches():
    """assert_matches(actual (GPU), expected (NumPy), dtype, what): shape, dtype and values within TOLERANCES."""
    def check(actual, expected, dtype, what=""):
        dtype = np.dtype(dtype)
        assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
        actual = as_numpy(actual).astype(np.float64)
        expected = np.asarray(expected).astype(np.float64)
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")
        finite = ~np.isnan(expected)
        if finite.any():
            error = np.abs(actual[finite] - expected[finite]).max() / max(1.0, np.abs(expected[finite]).max())
            assert error <= TOLERANCES[dtype], f"{what}: relative error {error:.3g} > {TOLERANCES[dtype]:g}"
    return check


@pytest.fixture(scope="session")
def assert_same_bits():
    """assert_same_bits(a, b, what): two GPU results are bitwise identical."""
    def check(a, b, what=""):
        a, b = as_numpy(a), as_numpy(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), f"{what}: two runs gave different bits"
    return check
