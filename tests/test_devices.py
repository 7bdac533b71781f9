"""Arrays decide the device: mixes of NumPy and CuPy arrays, or of arrays on two GPUs, are refused clearly.

The rule lives in gpuconv._backend.array_module; it is exercised here with
stand-in "GPU arrays" (so it runs without a GPU) and, where the hardware is
present, with real CuPy arrays.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import gpuconv
from gpuconv import _backend
from gpuconv._backend import cuda_available, cupy_module


class _FakeGpuArray:
    """Only what array_module looks at: the type check and ``.device.id``."""

    def __init__(self, device_id):
        self.device = types.SimpleNamespace(id=device_id)


@pytest.fixture
def fake_cupy(monkeypatch):
    module = types.SimpleNamespace(ndarray=_FakeGpuArray)
    monkeypatch.setattr(_backend, "cupy_module", lambda: module)
    return module


def test_numpy_and_gpu_arrays_mixed_name_each_argument_and_its_device(fake_cupy):
    with pytest.raises(TypeError, match=r"arrays are on different devices: x on CPU \(numpy\), "
                                        r"weight on GPU 0 \(cupy\); move them to one device first"):
        _backend.array_module(x=np.zeros(3), weight=_FakeGpuArray(0))


def test_arrays_on_two_gpus_are_refused(fake_cupy):
    with pytest.raises(TypeError, match=r"x on GPU 0 \(cupy\), weight on GPU 1 \(cupy\)"):
        _backend.array_module(x=_FakeGpuArray(0), weight=_FakeGpuArray(1))
    assert _backend.array_module(x=_FakeGpuArray(1), weight=_FakeGpuArray(1)) is fake_cupy


def test_none_is_skipped_and_non_arrays_are_named():
    assert _backend.array_module(x=np.zeros(1), bias=None) is np
    with pytest.raises(TypeError, match=r"weight must be a numpy.ndarray or cupy.ndarray, got tuple"):
        _backend.array_module(x=np.zeros(1), weight=(1.0,))


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="no CUDA device")
def test_real_arrays_on_two_gpus_are_refused():
    cupy = cupy_module()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices; this machine has one")
    x = cupy.zeros((1, 2, 5, 5), dtype=cupy.float32)
    with cupy.cuda.Device(1):
        w = cupy.zeros((3, 2, 3, 3), dtype=cupy.float32)
    with pytest.raises(TypeError, match=r"x on GPU 0 \(cupy\), weight on GPU 1 \(cupy\)"):
        gpuconv.conv2d(x, w)
