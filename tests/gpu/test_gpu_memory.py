"""GPU memory pressure, indexing past 2**31 elements, and the on-disk kernel cache under concurrency.

Memory pressure is made by capping CuPy's default memory pool
(``set_limit``); every test restores the cap it found.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuconv
from gpuconv import reference
from gpuconv._backend import cuda_available
from gpuconv._shapes import ConvGeometry
from gpuconv.cuda import conv, plan, registry

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]

GEOMETRY = ConvGeometry.create((12, 16, 24, 24), (24, 16, 3, 3), padding=1)


@pytest.fixture
def capped_pool(cp):
    """cap(extra_bytes): limit the pool to what it uses now plus extra_bytes (restored afterwards)."""
    pool = cp.get_default_memory_pool()
    old_limit = pool.get_limit()

    def cap(extra_bytes):
        pool.free_all_blocks()
        pool.set_limit(size=pool.used_bytes() + int(extra_bytes))

    yield cap
    pool.set_limit(size=old_limit)


def _inputs(cp, make_data, g, dtype=np.float32):
    x, w, dy = (make_data(s, dtype, seed) for seed, s in enumerate((g.input_shape, g.weight_shape, g.output_shape)))
    return (x, w, dy), (cp.asarray(x), cp.asarray(w), cp.asarray(dy))


def _count_im2col_calls(monkeypatch):
    calls = []
    original = conv.im2col_columns

    def counting(backend, launch, x, g):
        calls.append(x.shape[0])
        return original(backend, launch, x, g)
    monkeypatch.setattr(conv, "im2col_columns", counting)
    return calls


def test_im2col_splits_the_batch_to_fit_free_memory(cp, make_data, assert_matches, capped_pool, monkeypatch):
    g = GEOMETRY
    (x, w, dy), (xg, wg, dyg) = _inputs(cp, make_data, g)
    per_image = plan.im2col_bytes_per_image(g, 4)
    output = int(np.prod(g.output_shape)) * 4
    calls = _count_im2col_calls(monkeypatch)
    capped_pool(output + 8 * per_image)  # half of it is the budget: 4 images a chunk, not 12
    y = conv.conv2d_forward(xg, wg, g, algo="im2col")
    assert len(calls) > 1 and max(calls) < g.N, f"expected several batch chunks, got {calls}"
    assert_matches(y, reference.conv2d_forward(x, w, g), np.float32, "chunked forward")
    assert_matches(conv.conv2d_grad_input(dyg, wg, g, algo="im2col"), reference.conv2d_grad_input(dy, w, g),
                   np.float32, "chunked grad_input")
    assert_matches(conv.conv2d_grad_weight(xg, dyg, g, algo="im2col"), reference.conv2d_grad_weight(x, dy, g),
                   np.float32, "chunked grad_weight")


def test_auto_falls_back_to_implicit_gemm_when_no_workspace_fits(cp, make_data, assert_matches, capped_pool,
                                                                monkeypatch):
    g = GEOMETRY
    assert plan.plan_conv("fprop", g, np.float32).variant == "im2col"  # what the rule runs with memory to spare
    (x, w, _), (xg, wg, _) = _inputs(cp, make_data, g)
    calls = _count_im2col_calls(monkeypatch)
    capped_pool(int(np.prod(g.output_shape)) * 4 + plan.im2col_bytes_per_image(g, 4))  # < 2 images' workspace
    y = gpuconv.conv2d(xg, wg, padding=1)
    assert calls == [], "auto should not have built a column matrix"
    assert_matches(y, reference.conv2d_forward(x, w, g), np.float32, "fallback forward")


def test_explicit_im2col_says_how_many_bytes_it_needed_and_had(cp, make_data, capped_pool):
    g = GEOMETRY
    _, (xg, wg, _) = _inputs(cp, make_data, g)
    capped_pool(int(np.prod(g.output_shape)) * 4 + plan.im2col_bytes_per_image(g, 4))
    with pytest.raises(gpuconv.GPUOutOfMemoryError, match=r"needs [\d,]+ bytes of GPU memory but only [\d,]+ "
                                                          r"bytes are free"):
        gpuconv.conv2d(xg, wg, padding=1, algo="im2col")


@pytest.mark.parametrize("algo", ["auto", "implicit_gemm"])
def test_when_nothing_fits_the_error_gives_bytes_needed_and_free(cp, make_data, capped_pool, algo):
    g = GEOMETRY
    _, (xg, wg, dyg) = _inputs(cp, make_data, g)
    capped_pool(1024)
    with pytest.raises(gpuconv.GPUOutOfMemoryError, match=r"needs [\d,]+ bytes .* only [\d,]+ bytes are free"):
        gpuconv.conv2d(xg, wg, padding=1, algo=algo)
    with pytest.raises(gpuconv.GPUOutOfMemoryError, match=r"grad_input.*needs [\d,]+ bytes"):
        gpuconv.conv2d_grad_input(dyg, wg, g.input_shape, padding=1, algo=algo)


@pytest.mark.parametrize("algo", ["im2col", "implicit_gemm"])
def test_indexing_past_2_31_elements(cp, algo):
    """An input of more than 2**31 elements (float16, ~4.8 GB): the last images, which lie past element
    2**31, must convolve exactly as the same images alone do on the CPU."""
    n_images, shape = 4100, (64, 96, 96)
    if np.prod((n_images,) + shape) <= 2**31:
        pytest.fail("test shape too small")
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    rng = np.random.default_rng(0)
    tail = 3  # images at the very end of the batch, whose offsets exceed 2**31 elements
    x_tail = (rng.integers(-8, 9, size=(tail,) + shape) / 8).astype(np.float16)
    w = (rng.integers(-8, 9, size=(8, 64, 3, 3)) / 8).astype(np.float16)
    x = cp.zeros((n_images,) + shape, dtype=cp.float16)
    x[-tail:] = cp.asarray(x_tail)
    g_tail = ConvGeometry.create(x_tail.shape, w.shape, padding=1)
    dy_tail = (rng.integers(-8, 9, size=g_tail.output_shape) / 8).astype(np.float16)

    y = gpuconv.conv2d(x, cp.asarray(w), padding=1, algo=algo)
    np.testing.assert_allclose(y[-tail:].get().astype(np.float32),
                               reference.conv2d_forward(x_tail, w, g_tail), rtol=1e-2, atol=0.25)
    assert not cp.any(y[:tail]), "images of zeros must give zeros"
    del y

    dy = cp.zeros((n_images, 8, 96, 96), dtype=cp.float16)
    dy[-tail:] = cp.asarray(dy_tail)
    dx = gpuconv.conv2d_grad_input(dy, cp.asarray(w), x.shape, padding=1, algo=algo)
    np.testing.assert_allclose(dx[-tail:].get().astype(np.float32),
                               reference.conv2d_grad_input(dy_tail, w, g_tail), rtol=1e-2, atol=0.25)
    del dx
    dw = gpuconv.conv2d_grad_weight(x, dy, w.shape, padding=1, algo=algo)  # only the tail contributes
    np.testing.assert_allclose(dw.get().astype(np.float32), reference.conv2d_grad_weight(x_tail, dy_tail, g_tail),
                               rtol=1e-2, atol=0.5)


_COMPILE_AND_CHECK = textwrap.dedent("""
    import numpy as np, cupy as cp, gpuconv
    from gpuconv import reference
    from gpuconv._shapes import ConvGeometry
    from gpuconv.cuda import loader, registry
    for variant, dtype in registry.instantiations():
        loader.get_kernel(variant, dtype)
    g = ConvGeometry.create((2, 3, 9, 9), (4, 3, 3, 3), padding=1)
    x = (np.arange(np.prod(g.input_shape)) % 7 / 8).reshape(g.input_shape).astype(np.float32)
    w = (np.arange(np.prod(g.weight_shape)) % 5 / 8).reshape(g.weight_shape).astype(np.float32)
    y = gpuconv.conv2d(cp.asarray(x), cp.asarray(w), padding=1, algo="implicit_gemm").get()
    assert np.allclose(y, reference.conv2d_forward(x, w, g)), "wrong result from a cached kernel"
    print("ok")
""")


def test_kernel_cache_survives_concurrent_compiles_and_is_reused(tmp_path):
    """Several processes compiling into one empty cache at once all get working kernels, and a later
    process compiles nothing (CuPy writes cache files atomically and checks their hash on load)."""
    env = dict(os.environ, CUPY_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", _COMPILE_AND_CHECK], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "ok", err
    cached = {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)}
    expected = len(registry.instantiations())
    assert len(cached) >= expected, f"expected a cached module per variant and dtype, found {sorted(cached)}"
    again = subprocess.run([sys.executable, "-c", _COMPILE_AND_CHECK], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)} == cached, \
        "a second process recompiled kernels instead of loading them from the cache"
