"""The planner (gpuconv.cuda.plan) and the registry it plans from -- pure Python, no GPU needed.

Plans must cover every output exactly, respect CUDA's limits for any geometry, choose what the fixed rule
says, and show the memory fallback in the plan rather than take it silently.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuconv._backend import GPUOutOfMemoryError
from gpuconv._shapes import BFLOAT16, ConvGeometry, PoolGeometry
from gpuconv.cuda import _launch, backend, conv, plan, pool, registry

DENSE = ConvGeometry.create((8, 16, 32, 32), (32, 16, 3, 3), padding=1)
DEPTHWISE = ConvGeometry.create((8, 16, 32, 32), (16, 1, 3, 3), padding=1, groups=16)


# ---------------------------------------------------------------------------------------- registry ---

def test_names_are_derived_from_the_parameters():
    for v in registry.VARIANTS:
        dtype = v.dtypes[-1]
        assert v.kernel_name(dtype) == f"gpuconv_{v.name}_{registry.dtype_suffix(dtype)}"
        if isinstance(v.tile, registry.TensorOpTile):  # CUTLASS's tensor-op names: fprop_tensorop_<tile>[_tf32]
            t = v.tile
            assert v.name == f"{v.op}_tensorop_{t.block_m}x{t.block_n}x{t.block_k}_{t.warp_m}x{t.warp_n}_" \
                             f"{t.stages}stage" + ("_tf32" if v.tf32 else "")
            assert v.threads == t.threads <= 256 and v.family == "tensor_core"
            assert f"{v.threads}, gpuconv::TensorOpTile<{t.block_m}, {t.block_n}, {t.block_k}, {t.warp_m}, " \
                   f"{t.warp_n}, {t.stages}, {'true' if v.op == 'dgrad' else 'false'}>" in v.export_line(dtype)
        elif v.tile is not None:
            t = v.tile
            warp = "" if t.warp_m is None else f"_warp{t.warp_m}x{t.warp_n}"
            assert v.name.startswith(f"{v.op}_simt_{t.block_m}x{t.block_n}x{t.block_k}{warp}_{t.stages}stage")
            assert v.threads == t.threads <= 256 and v.family == "implicit_gemm"
            template = (f"TileShape<{t.block_m}, {t.block_n}, {t.block_k}, {t.thread_m}, {t.thread_n}>"
                        if t.warp_m is None else
                        f"{v.threads}, gpuconv::WarpTile<{t.block_m}, {t.block_n}, {t.block_k}, {t.warp_m}, "
                        f"{t.warp_n}>")
            assert template in v.export_line(dtype)
    assert registry.get("fprop_simt_64x64x16_1stage").export_line(np.float16) == (
        "GPUCONV_FPROP_KERNEL(gpuconv_fprop_simt_64x64x16_1stage_f16, gpuconv_half, float, "
        "gpuconv::TileShape<64, 64, 16, 4, 4>)")


def test_tiles_refuse_what_their_kernels_do_not_do():
    with pytest.raises(ValueError, match="1-stage main loop"):
        registry.GemmTile(64, 64, 16, 4, 4, stages=2)
    with pytest.raises(ValueError, match="2-stage main loop"):
        registry.GemmTile(128, 128, 8, 8, 8, stages=1, warp_m=32, warp_n=64)
    with pytest.raises(ValueError, match="8x8 outputs per thread"):
        registry.GemmTile(128, 128, 8, 4, 4, stages=2, warp_m=32, warp_n=64)
    assert registry.WARP_TILE_128.threads == 256


@pytest.mark.parametrize("shape, stride", [((2, 16, 9, 70), 1), ((3, 8, 17, 33), 2)])
def test_depthwise_layers_go_to_the_stencil_with_a_block_per_output_tile(shape, stride):
    n, c, h, w = shape
    g = ConvGeometry.create(shape, (2 * c, 1, 3, 3), padding=1, stride=stride, groups=c)  # multiplier 2
    fprop = plan.plan_conv("fprop", g, np.float32)
    assert fprop.variant == "fprop_depthwise_8x32" and fprop.algorithm == "direct"
    assert fprop.launches[0].grid == (-(-g.P // 8) * -(-g.Q // 32), 2 * c, n)
    dgrad = plan.plan_conv("dgrad", g, np.float32)
    assert dgrad.variant == "dgrad_depthwise_8x32" and dgrad.launches[0].grid == (-(-h // 8) * -(-w // 32), c, n)
    assert plan.plan_conv("fprop", g, np.float32, "direct").variant == "fprop_depthwise_8x32"
    assert plan.plan_conv("fprop", g, np.float32, "implicit_gemm").variant == "fprop_simt_256x4x16_1stage"
    wgrad = plan.plan_conv("wgrad", g, np.float32)
    assert wgrad.variant == "wgrad_depthwise_8x32" and wgrad.launches[0].grid == (2 * c, 1, wgrad.wgrad_splits)
    splits, images = wgrad.wgrad_splits, wgrad.wgrad_pixels_per_split  # images per split, for the stencil
    assert splits * images >= n > (splits - 1) * images


@pytest.mark.parametrize("stride, H, W", [((1, 1), 9, 7), ((2, 2), 9, 7), ((2, 3), 8, 10), ((3, 1), 2, 5)])
def test_the_warp_dgrad_runs_one_launch_per_stride_phase(stride, H, W):
    """Each phase (phase_h, phase_w) covers the input pixels h = phase_h + t*stride_h (and the same for w):
    together every pixel of dx exactly once; at stride 1 one launch."""
    g = ConvGeometry.create((2, 64, H, W), (64, 64, 3, 3), padding=1, stride=stride)
    p = plan.plan_conv("dgrad", g, np.float32, "dgrad_simt_128x128x8_warp32x64_2stage")
    covered = np.zeros((H, W), dtype=int)
    for launch, (a, b, rows, columns) in zip(p.launches, plan.dgrad_phases(g), strict=True):
        assert launch.scalars == (a, b)
        assert launch.grid == (-(-2 * rows * columns // 128), 1, 1)
        covered[a::stride[0], b::stride[1]] += 1
        assert covered[a::stride[0], b::stride[1]].shape == (rows, columns)
    assert (covered == 1).all() and len(p.launches) == min(stride[0], H) * min(stride[1], W)


def test_a_variant_exists_only_for_its_dtypes():
    only_half = registry.Variant("fprop_test", "fprop", "conv2d_fprop.cu", "GPUCONV_FPROP_KERNEL", 128,
                                 dtypes=(np.dtype(np.float16),))
    assert only_half.kernel_name(np.float16) == "gpuconv_fprop_test_f16"
    with pytest.raises(TypeError, match="exists for float16, not float32"):
        only_half.kernel_name(np.float32)
    assert not only_half.can_run(DENSE, np.float32)
    with pytest.raises(TypeError, match="no CUDA kernels for dtype .*uint32"):
        registry.dtype_suffix(np.uint32)
    assert registry.dtype_suffix(np.int32) == "i32"  # max pooling's integer kernels


def test_only_max_pooling_forward_has_integer_kernels():
    with_ints = {v.name for v in registry.VARIANTS if set(registry.INT_DTYPES) & set(v.dtypes)}
    assert with_ints == {"maxpool2d_forward", "maxpool2d_forward_indices"}
    g = PoolGeometry.create((1, 1, 4, 4), 2)
    assert plan.plan_pool("maxpool2d_forward", g, np.int8).launch.kernel_name == "gpuconv_maxpool2d_forward_i8"
    with pytest.raises(TypeError, match="avgpool2d_forward: no kernel for dtype int8"):
        plan.plan_pool("avgpool2d_forward", g, np.int8)


def test_every_kernel_file_and_instantiation_comes_from_the_registry():
    assert set(registry.sources()) == {"conv2d_fprop.cu", "conv2d_dgrad.cu", "conv2d_wgrad.cu",
                                       "conv2d_depthwise.cu", "im2col.cu", "pooling.cu", "conv2d_tensor_core.cu"}
    names = [v.kernel_name(d) for v, d in registry.instantiations()]
    assert len(names) == len(set(names)) == sum(len(v.dtypes) for v in registry.VARIANTS)
    # Every SIMT kernel has the four floating dtypes; the tensor-core file only its own.
    tensor_core_file = {v for v in registry.VARIANTS if v.source == "conv2d_tensor_core.cu"}
    assert all(set(registry.SIMT_DTYPES) <= set(v.dtypes) for v in registry.VARIANTS if v not in tensor_core_file)
    assert registry.SIMT_DTYPES == (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
    assert all(set(v.dtypes) <= set(registry.TENSOR_OP_DTYPES) for v in tensor_core_file)
    assert {v.name for v in registry.VARIANTS if registry.BFLOAT16 not in v.dtypes} == {
        v.name for v in tensor_core_file if v.tf32}
    with pytest.raises(ValueError, match="no kernel variant named 'nope'"):
        registry.get("nope")


def test_algo_choices_per_pass():
    choices = registry.algo_choices("fprop")
    assert choices[:5] == ("auto", "im2col", "implicit_gemm", "direct", "tensor_core")
    assert "fprop_simt_64x64x16_1stage" in choices and "fprop_tensorop_128x128x32_64x64_3stage" in choices
    assert all(registry.get(name).op == "fprop" for name in choices[5:])
    plan.check_algo("wgrad", "wgrad_simt_16x16x32_1stage_splitk")
    with pytest.raises(ValueError, match=r"is a fprop kernel variant; the dgrad pass \(grad_input\) on CuPy "
                                         r"\(GPU\) arrays takes one of"):
        plan.check_algo("dgrad", "fprop_simt_64x64x16_1stage")
    with pytest.raises(ValueError, match="not available for CuPy \\(GPU\\) arrays \\(fprop\\)"):
        plan.check_algo("fprop", "winograd")
    with pytest.raises(TypeError):
        plan.check_algo("fprop", 3)


# --------------------------------------------------------------------------------------- choosing ---

def test_fixed_rule():
    assert plan.plan_conv("fprop", DENSE, np.float32).variant == "im2col"
    assert plan.plan_conv("fprop", DEPTHWISE, np.float32).variant == "fprop_depthwise_8x32"
    assert plan.plan_conv("dgrad", DEPTHWISE, np.float32).variant == "dgrad_depthwise_8x32"
    assert plan.plan_conv("wgrad", DEPTHWISE, np.float32).variant == "wgrad_depthwise_8x32"
    # 32 output channels: the 128x64 warp tile; 16: the 64x64 one; 8: the one-stage general tile.
    assert plan.plan_conv("fprop", DENSE, np.float32, "implicit_gemm").variant == \
        "fprop_simt_128x64x8_warp64x32_2stage"
    assert plan.plan_conv("wgrad", DENSE, np.float32, "implicit_gemm").variant == \
        "wgrad_simt_128x64x8_warp64x32_2stage_splitk"
    narrow = ConvGeometry.create((8, 16, 32, 32), (16, 16, 3, 3), padding=1)
    assert plan.plan_conv("fprop", narrow, np.float32, "implicit_gemm").variant == "fprop_simt_64x64x8_warp32x64_2stage"
    small = ConvGeometry.create((8, 16, 32, 32), (8, 16, 3, 3), padding=1)
    assert plan.plan_conv("fprop", small, np.float32, "implicit_gemm").variant == "fprop_simt_64x64x16_1stage"
    for p in plan.plan_conv("fprop", DENSE, np.float32), plan.plan_conv("fprop", DEPTHWISE, np.float32):
        assert p.reason.startswith("fixed rule") and p.fallback is None and p.requested == "auto"


def test_a_requested_variant_and_the_tuners_pick_are_planned_as_given():
    p = plan.plan_conv("fprop", DENSE, np.float16, "fprop_simt_256x4x16_1stage")
    assert p.variant == "fprop_simt_256x4x16_1stage" and p.algorithm == "implicit_gemm"
    assert [k.kernel_name for k in p.launches] == ["gpuconv_fprop_simt_256x4x16_1stage_f16"]
    tuned = plan.plan_conv("dgrad", DENSE, np.float32, "auto", tuned="dgrad_simt_256x4x16_1stage")
    assert tuned.variant == "dgrad_simt_256x4x16_1stage" and tuned.reason.startswith("autotuned")
    with pytest.raises(ValueError, match="cannot run"):
        plan.plan_conv("dgrad", DENSE, np.float32, "auto", tuned="fprop_simt_64x64x16_1stage")


def test_candidates_are_im2col_and_every_applicable_variant():
    assert plan.candidates("wgrad", DENSE, np.float32) == ("im2col", *(v.name for v in registry.conv_variants("wgrad")
                                                                      if v.can_run(DENSE, np.float32) and not v.tf32))
    assert plan.candidates("wgrad", DENSE, np.float32, allow_tf32=True)[-1] == "wgrad_tensorop_128x128x16_64x64_3stage_tf32"
    assert "wgrad_depthwise_8x32" not in plan.candidates("wgrad", DENSE, np.float32)  # not depthwise
    assert "wgrad_depthwise_8x32" in plan.candidates("wgrad", DEPTHWISE, np.float32)
    assert "wgrad_simt_16x16x32_1stage_splitk" in plan.candidates("wgrad", DENSE, np.float32)


def test_variants_needing_a_newer_gpu_are_not_candidates(monkeypatch):
    newer = registry.Variant("fprop_test_sm80", "fprop", "conv2d_fprop.cu", "GPUCONV_FPROP_KERNEL", 256,
                             tile=registry.GENERAL_TILE, family="implicit_gemm", min_compute_capability=80)
    monkeypatch.setattr(registry, "VARIANTS", registry.VARIANTS + (newer,))
    monkeypatch.setitem(registry.BY_NAME, newer.name, newer)
    assert newer.name in plan.candidates("fprop", DENSE, np.float32, compute_capability=90)
    assert newer.name not in plan.candidates("fprop", DENSE, np.float32, compute_capability=75)
    assert newer.name in plan.candidates("fprop", DENSE, np.float32)  # unknown device: no filter
    with pytest.raises(ValueError, match="needs compute capability 8.0"):
        plan.plan_conv("fprop", DENSE, np.float32, newer.name, compute_capability=75)


def test_plans_list_their_launches():
    p = plan.plan_conv("wgrad", DENSE, np.float32, "wgrad_simt_64x64x16_1stage_splitk")
    assert [k.variant.name for k in p.launches] == ["wgrad_simt_64x64x16_1stage_splitk", "wgrad_splitk_reduce"]
    weights = int(np.prod(DENSE.weight_shape))
    assert p.workspace_bytes == p.wgrad_splits * weights * 4
    assert p.launches[1].grid == plan.elementwise_grid(weights)
    assert all(k.block == (256, 1, 1) and k.dynamic_shared_bytes == 0 for k in p.launches)
    assert plan.plan_conv("fprop", DENSE, np.float32, "fprop_simt_128x64x8_warp64x32_2stage").launches[0].block == \
        (128, 1, 1)
    im2col = plan.plan_conv("dgrad", DENSE, np.float32, "im2col")
    assert [k.variant.name for k in im2col.launches] == ["col2im_nchw"] and im2col.batch_chunks == ((0, 8),)
    pointwise = ConvGeometry.create((2, 8, 5, 5), (4, 8, 1, 1))
    assert plan.plan_conv("fprop", pointwise, np.float32).pointwise
    assert "fprop im2col" in im2col.describe().replace("dgrad", "fprop")


def test_shape_arguments_are_exact_numpy_types():
    g = ConvGeometry.create((2, 4, 9, 8), (6, 2, 3, 2), stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2),
                            groups=2)
    args = conv.conv_shape_args(g)
    assert all(type(a) is np.int32 for a in args)
    assert [int(a) for a in args] == [2, 4, 9, 8, 6, 3, 2, g.P, g.Q, 2, 1, 1, 2, 1, 2, 2]
    assert int(conv.conv_shape_args(g, batch=1)[0]) == 1
    p = PoolGeometry.create((2, 3, 7, 8), kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True)
    assert [int(a) for a in pool.pool_shape_args(p)] == [2, 3, 7, 8, p.P, p.Q, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 0]
    p = PoolGeometry.create((2, 3, 7, 8), 3, 1, (0, 2, 1, 0), dilation=(1, 2))
    assert [int(a) for a in pool.pool_shape_args(p)] == [2, 3, 7, 8, p.P, p.Q, 3, 3, 1, 1, 1, 2, 0, 2, 1, 0, 0]
    p = PoolGeometry.adaptive((2, 3, 7, 8), (3, 5))
    assert [int(a) for a in pool.pool_shape_args(p)][-1] == 1
    with pytest.raises(ValueError, match="32-bit"):
        _launch.int32(2**31)
    assert type(_launch.int64(5)) is np.int64


def test_elementwise_grid():
    assert plan.elementwise_grid(0) == (1, 1, 1)
    assert plan.elementwise_grid(257) == (2, 1, 1)
    assert plan.elementwise_grid(10**12) == (plan.MAX_ELEMENTWISE_BLOCKS, 1, 1)


def test_only_grid_stride_launches_may_be_shrunk():
    p = plan.plan_conv("wgrad", DENSE, np.float32, "implicit_gemm")
    assert plan.with_grid(p, 1, (1,)).launches[1].grid == (1, 1, 1)
    with pytest.raises(ValueError, match="not a grid-stride kernel"):
        plan.with_grid(p, 0, (1,))
    pool_plan = plan.plan_pool("maxpool2d_forward", PoolGeometry.create((2, 3, 8, 8), 2), np.float32)
    assert plan.with_grid(pool_plan, 0, (2,)).launch.grid == (2, 1, 1)


def test_huge_planes_are_refused():
    g = ConvGeometry.create((1, 1, 50000, 50000), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="H_times_W"):
        plan.plan_conv("fprop", g, np.float32)


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
    for pass_name, rows, columns in (("fprop", g.N * g.P * g.Q, Kg), ("dgrad", g.N * g.H * g.W, Cg)):
        for v in registry.conv_variants(pass_name):
            if v.family != "implicit_gemm":
                continue
            t = v.tile
            gx, gy, gz = plan.gemm_grid(pass_name, g, v)
            assert (gx - 1) * t.block_m < rows <= gx * t.block_m
            assert (gy - 1) * t.block_n < columns <= gy * t.block_n and gz == G
        launches = plan.plan_conv(pass_name, g, np.float32, "implicit_gemm").launches
        if pass_name == "dgrad" and launches[0].variant.tile.warp_m is not None:  # by stride phases
            assert sum(rows * columns for *_, rows, columns in plan.dgrad_phases(g)) == g.H * g.W
        else:
            assert launches[0].grid == plan.gemm_grid(pass_name, g, launches[0].variant)


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_wgrad_split_covers_the_reduction_without_empty_splits(g):
    for v in (v for v in registry.conv_variants("wgrad") if v.tile is not None):  # split-K GEMMs
        splits, per_split = plan.wgrad_split(g, v, v.dtypes[0])
        pixels = g.N * g.P * g.Q
        rows = v.family != registry.TENSOR_CORE and v.tile.warp_m is not None
        unit = g.Q if rows else v.tile.block_k  # whole output rows (SIMT warp tiles), or whole slices
        assert per_split % unit == 0
        assert (splits - 1) * per_split < pixels <= splits * per_split
        gx, gy, gz = plan.gemm_grid("wgrad", g, v, splits)
        assert gz == g.groups * splits <= _launch.GRID_YZ_MAX
        if splits > 1:
            assert per_split >= plan.WGRAD_MIN_PIXELS_PER_SPLIT - unit


def test_wgrad_split_is_independent_of_the_gpu_and_splits_long_reductions():
    g = ConvGeometry.create((64, 64, 56, 56), (64, 64, 3, 3), padding=1)
    p = plan.plan_conv("wgrad", g, np.float32, "implicit_gemm")
    assert p.wgrad_splits > 1 and p.wgrad_splits * p.wgrad_pixels_per_split >= 64 * 56 * 56
    small = ConvGeometry.create((1, 3, 5, 5), (4, 3, 3, 3))
    assert plan.wgrad_split(small, registry.get("wgrad_simt_16x16x32_1stage_splitk"))[0] == 1


# ----------------------------------------------------------------------------------------- memory ---

G_BIG = ConvGeometry.create((100, 64, 32, 32), (64, 64, 3, 3), padding=1)
PER_IMAGE = (64 * 9 + 64) * 32 * 32 * 4  # the column matrix and the (K, P*Q) GEMM operand
OUTPUT = 100 * 64 * 32 * 32 * 4


def test_im2col_chunks_respect_the_budget():
    assert plan.im2col_bytes_per_image(G_BIG, 4) == PER_IMAGE
    assert plan.im2col_batch_chunk(G_BIG, 4, budget=10 * PER_IMAGE) == 10
    assert plan.im2col_batch_chunk(G_BIG, 4, budget=PER_IMAGE - 1) == 1  # one image even over budget
    assert plan.im2col_batch_chunk(G_BIG, 4, budget=1 << 40) == 100
    chunks = plan.plan_conv("fprop", G_BIG, np.float32, "im2col").batch_chunks
    assert chunks[0][0] == 0 and chunks[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_im2col_chunks_shrink_to_free_memory_after_the_result():
    p = plan.plan_conv("fprop", G_BIG, np.float32, "auto", free_bytes=OUTPUT + 10 * PER_IMAGE)
    assert p.variant == "im2col" and p.batch_chunks[0] == (0, 5)  # half the rest is the budget
    assert p.workspace_bytes == 5 * PER_IMAGE


def test_memory_fallback_is_a_visible_field_of_the_plan():
    starved = OUTPUT + PER_IMAGE
    p = plan.plan_conv("fprop", G_BIG, np.float32, "auto", free_bytes=starved)
    assert p.algorithm == "implicit_gemm" and p.variant == plan.rule_variant("fprop", G_BIG, np.float32).name
    assert p.variant == "fprop_simt_128x128x8_warp32x64_2stage"  # 64 output channels: the large tile
    assert p.fallback == (f"im2col needs {2 * PER_IMAGE:,} bytes for one image's workspace (twice for "
                          f"headroom), {PER_IMAGE:,} free after the result: implicit GEMM instead")
    assert "fallback" in p.describe()
    with pytest.raises(GPUOutOfMemoryError, match=rf"fprop \(forward\) with algo='im2col'.* "
                                                  rf"needs {2 * PER_IMAGE:,} bytes "
                                                  rf"of GPU memory but only {PER_IMAGE:,} bytes are free"):
        plan.plan_conv("fprop", G_BIG, np.float32, "im2col", free_bytes=starved)


class _FakeCuPy:
    """Just enough of CuPy for the free-memory reading: device memory and a default pool with a limit."""

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
    assert backend.available_device_bytes(_FakeCuPy(device_free=1000, cached=200)) == 1200
    assert backend.available_device_bytes(_FakeCuPy(device_free=1000, cached=200, used=700, limit=1000)) == 300
    assert backend.available_device_bytes(_FakeCuPy(device_free=0, used=900, limit=800)) == 0


class _FakeDeviceCuPy:
    """The part of CuPy that CupyBackend reads: the device, its properties, the stream."""

    def __init__(self, cc: str, name=b"NVIDIA H100 80GB HBM3"):
        device = types.SimpleNamespace(id=0, compute_capability=cc)
        self.cuda = types.SimpleNamespace(
            Device=lambda *_: device,
            runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": name}),
            memory=types.SimpleNamespace(OutOfMemoryError=MemoryError),
            get_current_stream=lambda: types.SimpleNamespace(is_capturing=lambda: False))


@pytest.mark.parametrize("cc, number, text", [("75", 75, "7.5"), ("90", 90, "9.0"), ("100", 100, "10.0")])
def test_cupy_backend_reads_the_device(monkeypatch, cc, number, text):
    monkeypatch.setattr(backend, "require_cuda", lambda: _FakeDeviceCuPy(cc))
    b = backend.CupyBackend()
    assert b.compute_capability() == number
    assert b.device_identity() == ("NVIDIA H100 80GB HBM3", text)
    assert b.capturing() is False


def test_cupy_backend_launches_as_a_raw_kernel_is_called(monkeypatch):
    calls = []

    class Kernel:
        max_dynamic_shared_size_bytes = 0

        def __call__(self, grid, block, args, shared_mem=0):
            calls.append((grid, block, args, shared_mem, self.max_dynamic_shared_size_bytes))

    kernel = Kernel()
    monkeypatch.setattr(backend, "require_cuda", lambda: _FakeDeviceCuPy("90"))
    monkeypatch.setattr(backend.loader, "get_kernel", lambda variant, dtype: kernel)
    b = backend.CupyBackend()
    launch = plan.plan_conv("fprop", DENSE, np.float32, "fprop_simt_64x64x16_1stage").launches[0]
    b.launch(launch, [1, 2])
    big = plan.KernelLaunch(launch.variant, launch.dtype, launch.grid, launch.block, 100 * 1024)
    b.launch(big, [3])
    assert calls == [(launch.grid, (256, 1, 1), (1, 2), 0, 0),
                     (launch.grid, (256, 1, 1), (3,), 100 * 1024, 100 * 1024)]  # opted in above 48 KiB


def test_the_depthwise_stencil_reads_few_bytes_per_output():
    """MobileNet's depthwise layers at batch 32: the stencil reads each input about once (1.4-1.8 elements
    per output at stride 1, 4.4-4.8 at stride 2 where each output has 4 inputs of its own), where a gather
    reads all R*S = 9 taps (and 9 weights) per output."""
    from gpuconv.suites import load_suite

    layers = [layer for layer in load_suite("mobilenet").layers if layer.groups > 1]
    assert layers
    for layer in layers:
        g = layer.geometry(32)
        assert plan.plan_conv("fprop", g, np.float32).variant == "fprop_depthwise_8x32"
        reads, writes = plan.depthwise_traffic("fprop", g)
        bound = 1.9 if g.stride == (1, 1) else 4.8
        assert writes == 1 and reads <= bound < g.R * g.S, (layer.name, reads)
        assert plan.plan_conv("dgrad", g, np.float32).variant == "dgrad_depthwise_8x32"
        # dgrad reads dy: at stride 2 a quarter as many pixels as it writes (plus halos and taps).
        assert plan.depthwise_traffic("dgrad", g)[0] <= (1.9 if g.stride == (1, 1) else 0.8), layer.name


def test_pooling_refuses_extents_past_32_bits():
    """pooling.cu computes window positions and divisors in int: a padded extent or a kernel area past 2**31
    is refused before anything runs (the reviewer's count_include_pad divisor of 46341**2 taps)."""
    g = PoolGeometry.create((1, 1, 1, 1), 46341, 1, (0, 46340, 0, 46340))
    with pytest.raises(ValueError, match="kernel_area = 2147488281 exceeds 2"):
        plan.plan_pool("avgpool2d_forward", g, np.float32)
