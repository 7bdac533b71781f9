"""The float32 precision policy (gpuconv.set_float32_matmul_precision, per-call precision=)."""
import numpy as np
import pytest

import gpuconv
from cuda_emulation import emulator as emu
from cuda_emulation.backend import EmulatorBackend, route_functional
from gpuconv import precision, reference
from gpuconv._shapes import ConvGeometry


@pytest.fixture(autouse=True)
def restore_policy():
    before = gpuconv.get_float32_matmul_precision()
    yield
    gpuconv.set_float32_matmul_precision(before)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_default_is_exact_float32_and_the_policy_is_checked():
    assert gpuconv.get_float32_matmul_precision() == "highest" and not precision.allows_tf32()
    gpuconv.set_float32_matmul_precision("high")
    assert precision.allows_tf32() and not precision.allows_tf32("highest") and precision.allows_tf32("medium")
    with pytest.raises(ValueError, match=r"precision must be one of \('highest', 'high', 'medium'\), got 'low'"):
        gpuconv.set_float32_matmul_precision("low")
    with pytest.raises(ValueError, match="precision must be one of"):
        gpuconv.conv2d(rand(1, 1, 4, 4), rand(1, 1, 3, 3), precision="tf32")


def test_the_cpu_computes_exact_float32_whatever_the_policy():
    x, w = rand(2, 3, 6, 6), rand(4, 3, 3, 3, seed=1)
    exact = gpuconv.conv2d(x, w, padding=1)
    gpuconv.set_float32_matmul_precision("medium")
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, padding=1), exact)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, padding=1, precision="high"), exact)


@pytest.mark.skipif(not emu.compiler_available(), reason="g++ not found: the CUDA emulation needs it")
@pytest.mark.parametrize("policy,call", [("highest", None), ("high", None), ("highest", "high"), ("high", "highest")])
def test_tf32_runs_on_the_gpu_path_only_when_allowed(monkeypatch, policy, call):
    """On the (emulated) CUDA path, float32 goes to the TF32 tensor-core variant only when the policy or the
    call allows it; its result is then the float32 one to TF32's precision (inputs keep 10 mantissa bits)."""
    backend = EmulatorBackend()
    route_functional(monkeypatch, backend)
    gpuconv.set_float32_matmul_precision(policy)
    x, w = rand(1, 8, 6, 6), rand(8, 8, 3, 3, seed=1)
    y = gpuconv.conv2d(x, w, padding=1, precision=call)
    allowed = (call or policy) != "highest"
    ran_tf32 = [launch.variant.name for launch in backend.launches if launch.variant.tf32]
    assert bool(ran_tf32) == allowed, [launch.variant.name for launch in backend.launches]
    g = ConvGeometry.create(x.shape, w.shape, padding=1)
    exact = reference.conv2d_forward(x.astype(np.float64), w.astype(np.float64), g)
    # TF32 keeps 10 of float32's 23 mantissa bits: each product is off by up to 2 * 2**-11 relative.
    tol = 2 * 2.0 ** -11 * np.sqrt(g.C * g.R * g.S) if allowed else 1e-5
    np.testing.assert_allclose(y, exact, rtol=0, atol=tol * np.abs(exact).max())
    if allowed:
        assert np.abs(y - exact).max() > 1e-6 * np.abs(exact).max()  # really rounded: not the exact path
