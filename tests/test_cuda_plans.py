"""The launch arithmetic of gpuconv.cuda.conv / pool -- pure Python, no GPU needed.

Tiles, grids, the wgrad reduction split and the im2col batch chunks must cover
every output exactly and respect CUDA's limits for any geometry.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuconv._backend import GPUOutOfMemoryError
from gpuconv._shapes import ConvGeometry, PoolGeometry
from gpuconv.cuda import _launch, conv, loader, pool


def test_python_tiles_match_the_kernel_names():
    for tile in (conv.TILE_64X64, conv.TILE_256X4, conv.TILE_16X16):
        assert tile.threads <= 256
        assert tile.name == f"tile{tile.block_m}x{tile.block_n}"
    fprop, dgrad, wgrad = (set(loader.KERNEL_BASE_NAMES[f]) for f in
                           ("conv2d_fprop.cu", "conv2d_dgrad.cu", "conv2d_wgrad.cu"))
    assert {f"gpuconv_conv2d_fprop_{t.name}" for t in (conv.TILE_64X64, conv.TILE_256X4)} == fprop
    assert {f"gpuconv_conv2d_dgrad_{t.name}" for t in (conv.TILE_64X64, conv.TILE_256X4)} == dgrad
    assert {f"gpuconv_conv2d_wgrad_{t.name}" for t in (conv.TILE_64X64, conv.TILE_16X16)} | {
        "gpuconv_conv2d_wgrad_reduce"} == wgrad


def test_kernel_names_per_dtype():
    assert loader.kernel_name("gpuconv_im2col_nchw", np.float16) == "gpuconv_im2col_nchw_f16"
    assert loader.kernel_name("gpuconv_im2col_nchw", "float64") == "gpuconv_im2col_nchw_f64"
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        loader.kernel_name("gpuconv_im2col_nchw", np.int32)


def test_auto_rule():
    dense = ConvGeometry.create((8, 16, 32, 32), (32, 16, 3, 3), padding=1)
    depthwise = ConvGeometry.create((8, 16, 32, 32), (16, 1, 3, 3), padding=1, groups=16)
    assert conv.choose_algo(dense) == "im2col"
    assert conv.choose_algo(depthwise) == "implicit_gemm"
    assert conv.fprop_tile(depthwise) is conv.TILE_256X4 and conv.fprop_tile(dense) is conv.TILE_64X64
    assert conv.wgrad_tile(depthwise) is conv.TILE_16X16 and conv.wgrad_tile(dense) is conv.TILE_64X64


def test_shape_arguments_are_exact_numpy_types():
    g = ConvGeometry.create((2, 4, 9, 8), (6, 2, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2),
                            groups=2)
    args = conv.conv_shape_args(g)
    assert all(type(a) is np.int32 for a in args)
    assert [int(a) for a in args] == [2, 4, 9, 8, 6, 3, 2, g.P, g.Q, 2, 1, 1, 2, 1, 2, 2]
    assert int(conv.conv_shape_args(g, batch=1)[0]) == 1
    p = PoolGeometry.create((2, 3, 7, 8), kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True)
    assert [int(a) for a in pool.pool_shape_args(p)] == [2, 3, 7, 8, p.P, p.Q, 3, 2, 2, 2, 1, 1]
    with pytest.raises(ValueError, match="32-bit"):
        _launch.int32(2**31)
    assert type(_launch.int64(5)) is np.int64


def test_elementwise_grid():
    assert _launch.elementwise_grid(0) == (1,)
    assert _launch.elementwise_grid(257) == (2,)
    assert _launch.elementwise_grid(10**12) == (_launch.MAX_ELEMENTWISE_BLOCKS,)


def test_huge_planes_are_refused():
    g = ConvGeometry.create((1, 1, 50000, 50000), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="H_times_W"):
        conv.check_geometry(g)


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, 64]))
    cg, kg = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    n, h, w = draw(st.integers(1, 64)), draw(st.integers(5, 80)), draw(st.integers(5, 80))
    stride = draw(st.integers(1, 3))
    return ConvGeometry.create((n, cg * groups, h, w), (kg * groups, cg, r, s), stride=stride, padding="same",
                               groups=groups)


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_grids_cover_every_output_once(g):
    G, Cg, Kg = g.groups, g.C // g.groups, g.K // g.groups
    t = conv.fprop_tile(g)
    gx, gy, gz = conv.fprop_grid(g, t)
    assert (gx - 1) * t.block_m < g.N * g.P * g.Q <= gx * t.block_m
    assert (gy - 1) * t.block_n < Kg <= gy * t.block_n and gz == G
    t = conv.dgrad_tile(g)
    gx, gy, gz = conv.dgrad_grid(g, t)
    assert (gx - 1) * t.block_m < g.N * g.H * g.W <= gx * t.block_m
    assert (gy - 1) * t.block_n < Cg <= gy * t.block_n and gz == G


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_wgrad_split_covers_the_reduction_without_empty_splits(g):
    tile = conv.wgrad_tile(g)
    splits, per_split = conv.wgrad_split(g, tile)
    pixels = g.N * g.P * g.Q
    assert per_split % tile.block_k == 0
    assert (splits - 1) * per_split < pixels <= splits * per_split
    gx, gy, gz = conv.wgrad_grid(g, tile, splits)
    assert gz == g.groups * splits <= _launch.GRID_YZ_MAX
    if splits > 1:
        assert per_split >= conv.WGRAD_MIN_PIXELS_PER_SPLIT - tile.block_k


def test_wgrad_split_is_independent_of_the_gpu_and_splits_long_reductions():
    g = ConvGeometry.create((64, 64, 56, 56), (64, 64, 3, 3), padding=1)
    splits, per_split = conv.wgrad_split(g, conv.wgrad_tile(g))
    assert splits > 1 and splits * per_split >= 64 * 56 * 56
    assert conv.wgrad_split(ConvGeometry.create((1, 3, 5, 5), (4, 3, 3, 3)), conv.TILE_16X16)[0] == 1


def test_im2col_chunks_respect_the_budget():
    g = ConvGeometry.create((100, 64, 32, 32), (64, 64, 3, 3), padding=1)
    per_image = (64 * 9 + 64) * 32 * 32 * 4  # the column matrix and the (K, P*Q) GEMM operand
    assert conv.im2col_bytes_per_image(g, 4) == per_image
    assert conv.im2col_batch_chunk(g, 4, budget=10 * per_image) == 10
    assert conv.im2col_batch_chunk(g, 4, budget=per_image - 1) == 1  # one image even over budget
    assert conv.im2col_batch_chunk(g, 4, budget=1 << 40) == 100
    chunks = list(conv._batch_chunks(g, 4))
    assert chunks[0][0] == 0 and chunks[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


class _FakeCuPy:
    """Just enough of CuPy for the memory plan: device memory and a default pool with a limit."""

    class _Pool:
        def __init__(self, used, cached, limit):
            self.used, self.cached, self.limit = used, cached, limit

        def free_bytes(self):
            return self.cached

        def used_bytes(self):
            return self.used

        def get_limit(self):
            return self.limit

    def __init__(self, device_free, used=0, cached=0, limit=0):
        self._pool = self._Pool(used, cached, limit)
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (device_free, 1 << 40)))

    def get_default_memory_pool(self):
        return self._pool


def test_available_memory_counts_the_pools_cached_blocks_and_respects_its_limit():
    assert conv.available_device_bytes(_FakeCuPy(device_free=1000, cached=200)) == 1200
    assert conv.available_device_bytes(_FakeCuPy(device_free=1000, cached=200, used=700, limit=1000)) == 300
    assert conv.available_device_bytes(_FakeCuPy(device_free=0, used=900, limit=800)) == 0


def test_im2col_budget_shrinks_to_free_memory_then_falls_back_or_fails_clearly():
    g = ConvGeometry.create((100, 64, 32, 32), (64, 64, 3, 3), padding=1)
    per_image = conv.im2col_bytes_per_image(g, 4)
    plenty = _FakeCuPy(device_free=1 << 40)
    assert conv._im2col_budget(plenty, g, 4, "im2col", "fprop") == conv.IM2COL_WORKSPACE_BYTES
    tight = _FakeCuPy(device_free=10 * per_image)  # half of it is the budget
    assert conv.im2col_batch_chunk(g, 4, conv._im2col_budget(tight, g, 4, "auto", "fprop")) == 5
    starved = _FakeCuPy(device_free=per_image)
    assert conv._im2col_budget(starved, g, 4, "auto", "fprop") is None  # auto: implicit GEMM instead
    with pytest.raises(GPUOutOfMemoryError, match=rf"fprop with algo='im2col'.* needs {2 * per_image:,} bytes "
                                                  rf"of GPU memory but only {per_image:,} bytes are free"):
        conv._im2col_budget(starved, g, 4, "im2col", "fprop")
