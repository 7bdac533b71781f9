"""gpuconv's CUDA kernels (kernels/*.cu) run on the CPU and checked against gpuconv.reference -- no GPU needed.

tests/cuda_emulation compiles each kernel file with g++ and runs its blocks as fibers (see
cuda_emulation/emulator.py). The tests plan exactly as on a GPU (``gpuconv.cuda.plan``) and hand the run step
(``conv.run_conv``, ``pool.run_pool``) the emulator as its backend (cuda_emulation/backend.py): every buffer
NaN-filled against inaccessible guard pages, float16 and bfloat16 GEMMs accumulated in float32 as cuBLAS
does. So each test covers the kernel, its launch configuration and its argument list, and an unwritten output
element (NaN), an out-of-bounds read or write or a divergent __syncthreads() fails it. Only cuBLAS is not
tested.

Parametrised from the registry: every variant of every pass, float16, bfloat16, float32 and float64, both
thread (and block) orders -- the reverse order with buffers placed against a guard page before their start,
the forward order against one after their end -- and edge shapes: stride, asymmetric padding, dilation,
groups, depthwise, 1x1, batch 1, channel counts that are not a multiple of the tile, split wgrad reductions
with one group and with two.
Grid-stride kernels also run on grids far smaller than their work.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import emulator as emu
from cuda_emulation.backend import SCHEDULES, EmulatorBackend, emulated_module, scheduled
from gpuconv import reference
from gpuconv._shapes import BFLOAT16, ConvGeometry, PoolGeometry
from gpuconv.cuda import conv, plan, pool, registry
from pool_cases import POOL_CASES, POOL_IDS, pool_geometry

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles the kernels with g++")

DTYPES = [np.float16, BFLOAT16, np.float32, np.float64]
# Tolerance against the reference, relative to the largest expected value (float16 and bfloat16: about two
# units of their output rounding, 2**-11 and 2**-8, which the half-precision intermediates of the im2col path
# need).
TOLERANCE = {np.dtype(np.float16): 1e-3, BFLOAT16: 8e-3, np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
@pytest.fixture(params=list(SCHEDULES))
def backend(request):
    """The emulator backend, in each thread order (cuda_emulation.backend.scheduled)."""
    with scheduled(request.param) as emulated:
        yield emulated


def random_input(shape, dtype, seed):
    """Guarded input (a read past its end faults) with values exactly representable in float16."""
    values = np.random.default_rng(seed).standard_normal(shape)
    return emu.to_guarded(values.astype(np.float16).astype(dtype))


def assert_matches(got, expected, dtype, what):
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    expected = np.asarray(expected, dtype=np.float64)
    unwritten = np.isnan(got) & ~np.isnan(expected)
    assert not unwritten.any(), (
        f"{what}: {int(unwritten.sum())} of {got.size} outputs are NaN, first at "
        f"{tuple(int(i) for i in np.argwhere(unwritten)[0])}: never written, or computed from NaN poison "
        f"(shared memory no thread wrote)")
    tol = TOLERANCE[np.dtype(dtype)]
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=tol, atol=tol * scale, err_msg=what)


# ------------------------------------------------------------------------------------ convolution ---

# (id, input shape, weight shape, conv kwargs): tiny, but every edge of the index arithmetic.
CONV_CASES = [
    ("3x3-pad1", (2, 3, 5, 6), (5, 3, 3, 3), dict(padding=1)),
    ("stride2-asymmetric-pad", (1, 3, 7, 6), (4, 3, 3, 2), dict(stride=2, padding=(0, 2, 1, 0))),
    ("stride-nonsquare-dilation", (2, 2, 7, 8), (3, 2, 3, 2), dict(stride=(2, 3), dilation=(2, 1),
                                                                  padding=(2, 1, 0, 2))),
    ("groups2", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("depthwise", (2, 5, 6, 5), (5, 1, 3, 3), dict(groups=5, padding=1, stride=(1, 2))),
    ("depthwise-multiplier2", (1, 3, 5, 5), (6, 1, 3, 3), dict(groups=3, padding=(1, 0, 2, 1))),
    # Depthwise planes spanning several 8x32 stencil tiles, the last ones partial, at stride 1 and 2.
    ("depthwise-tiles", (1, 2, 19, 70), (4, 1, 3, 3), dict(groups=2, padding=1)),
    ("depthwise-tiles-stride2", (2, 2, 21, 67), (2, 1, 5, 3), dict(groups=2, padding=(2, 1), stride=2)),
    ("pointwise-1x1", (2, 5, 4, 3), (3, 5, 1, 1), {}),
    ("1x1-stride2-padded", (1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2, padding=1)),
    ("kernel-equals-input", (2, 3, 4, 5), (2, 3, 4, 5), {}),
    # 67 output channels: two 64-wide tiles (and 17 of the 4-wide one); the last ones partly empty.
    ("channels-past-one-tile", (1, 3, 4, 5), (67, 3, 1, 2), dict(padding=(0, 0, 1, 0))),
    # Cg*R*S = 180 taps: several 16-deep slices, the last one partial; 70 input channels for dgrad's N.
    ("long-reduction", (1, 20, 4, 4), (3, 20, 3, 3), dict(padding=1)),
    ("many-input-channels", (1, 70, 3, 3), (2, 70, 1, 1), {}),
    # 1152 output pixels: the wgrad reduction is split in two (plan.wgrad_split), for one group and for two.
    ("wgrad-split", (2, 1, 24, 24), (2, 1, 3, 3), dict(padding=1)),
    ("groups2-wgrad-split", (2, 4, 24, 24), (6, 2, 3, 3), dict(groups=2, padding=1)),
    # 3 groups, 2 splits whose boundary (pixel 608) lies inside the second of three images: a swapped
    # (group, split) decomposition of blockIdx.z, or a split assumed to start an image, shows here.
    ("groups3-wgrad-split-mid-image", (3, 6, 20, 20), (6, 2, 3, 3), dict(groups=3, padding=1)),
    # 1080 weights and 1944 input pixels: more work than three blocks of 256 threads, for the grid-stride loops.
    ("wide-weights", (2, 12, 9, 9), (10, 12, 3, 3), dict(padding=1)),
    # 180 pixels and 130 output channels: two 128x128 blocks each way, both partly filled; 9 input channels
    # (dgrad: 130), so a tap takes a full and a partial 8-deep slice (dgrad: 17 of them).
    ("tiles-in-both-directions", (2, 9, 10, 9), (130, 9, 3, 3), dict(padding=1)),
    # The same at stride 2: dgrad's four stride phases each span two 128-pixel blocks.
    ("strided-tiles", (2, 9, 21, 19), (130, 9, 3, 3), dict(stride=2, padding=1)),
    # batch of 3 with M = N*P*Q = 3*7*5 = 105: not a multiple of any tile.
    ("batch3-odd-sizes", (3, 2, 7, 5), (3, 2, 1, 1), {}),
]
CONV_IDS = [case[0] for case in CONV_CASES]
CASES = dict((case[0], case) for case in CONV_CASES)


def conv_case(case, dtype, seed=0):
    _, input_shape, weight_shape, kwargs = case
    g = ConvGeometry.create(input_shape, weight_shape, **kwargs)
    x = random_input(g.input_shape, dtype, seed)
    w = random_input(g.weight_shape, dtype, seed + 1)
    dy = random_input(g.output_shape, dtype, seed + 2)
    return g, x, w, dy


#: pass -> (the operands run_conv takes, the reference computing the same)
PASSES = {
    "fprop": (lambda x, w, dy: (x, w), lambda g, x, w, dy: reference.conv2d_forward(x, w, g)),
    "dgrad": (lambda x, w, dy: (dy, w), lambda g, x, w, dy: reference.conv2d_grad_input(dy, w, g)),
    "wgrad": (lambda x, w, dy: (x, dy), lambda g, x, w, dy: reference.conv2d_grad_weight(x, dy, g)),
}
#: The SIMT variants, in every dtype at this file's tolerances; the tensor-core ones (float16, bfloat16, TF32:
#: their own tolerances) are tests/test_tensor_core_kernels.py's.
GEMM_VARIANTS = [v for p in registry.CONV_PASSES for v in registry.conv_variants(p)
                 if v.emulatable and v.family != registry.TENSOR_CORE]


def run_pass(pass_name, algo, case, dtype, backend, **plan_options):
    """Plan and run one pass on the emulator; the kernels must not have written their operands."""
    g, x, w, dy = conv_case(case, dtype)
    operands, expected = PASSES[pass_name]
    inputs = operands(x, w, dy)
    before = [a.copy() for a in inputs]
    the_plan = plan.plan_conv(pass_name, g, dtype, algo, **plan_options)
    got = conv.run_conv(the_plan, backend, *inputs)
    for name, a, b in zip(registry.PASS_OPERANDS[pass_name], inputs, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{the_plan.describe()} wrote its operand {name}")
    return the_plan, got, expected(g, x, w, dy)


def test_split_wgrad_cases_really_split():
    for name, groups in (("wgrad-split", 1), ("groups2-wgrad-split", 2), ("groups3-wgrad-split-mid-image", 3)):
        g = ConvGeometry.create(*CASES[name][1:3], **CASES[name][3])
        assert g.groups == groups
        assert all(plan.wgrad_split(g, v)[0] > 1 for v in registry.conv_variants("wgrad") if v.tile is not None)
    g = ConvGeometry.create(*CASES["groups3-wgrad-split-mid-image"][1:3], padding=1, groups=3)
    for v in (v for v in registry.conv_variants("wgrad") if v.tile is not None):  # split-K GEMMs
        splits, per_split = plan.wgrad_split(g, v)
        assert splits != g.groups and per_split % (g.P * g.Q) != 0, (v.name, splits, per_split)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", GEMM_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_implicit_gemm_variant(backend, case, variant, dtype):
    g = ConvGeometry.create(*case[1:3], **case[3])
    if not variant.can_run(g, dtype):  # a variant that does not apply to the case: refused, not run
        with pytest.raises(ValueError, match="does not apply"):
            plan.plan_conv(variant.op, g, dtype, variant.name)
        return
    the_plan, got, expected = run_pass(variant.op, variant.name, case, dtype, backend)
    assert [launch.variant.name for launch in backend.launches][:1] == [variant.name]
    assert_matches(got, expected, dtype, the_plan.describe())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_im2col_family_all_passes(backend, case, dtype):
    """algo="im2col": the im2col kernel (fprop, wgrad) and col2im (dgrad), NumPy standing in for cuBLAS."""
    for pass_name in registry.CONV_PASSES:
        the_plan, got, expected = run_pass(pass_name, "im2col", case, dtype, backend)
        assert_matches(got, expected, dtype, the_plan.describe())


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("case", ["3x3-pad1", "stride-nonsquare-dilation", "groups2"])
def test_im2col_family_in_batch_chunks(backend, case, dtype):
    """Free memory for one image's workspace: the im2col path runs image by image (kernels on batch slices)."""
    g = ConvGeometry.create(*CASES[case][1:3], **CASES[case][3])
    assert g.N >= 2 and not g.is_pointwise
    itemsize = np.dtype(dtype).itemsize
    for pass_name in registry.CONV_PASSES:
        free = plan.result_bytes(pass_name, g, dtype) + 2 * plan.im2col_bytes_per_image(g, itemsize)
        the_plan, got, expected = run_pass(pass_name, "im2col", CASES[case], dtype, backend, free_bytes=free)
        assert len(the_plan.batch_chunks) == g.N, the_plan
        assert_matches(got, expected, dtype, the_plan.describe())


@pytest.mark.parametrize("case", ["3x3-pad1", "groups2"])
def test_auto_falls_back_to_implicit_gemm_when_no_workspace_fits(backend, case):
    g = ConvGeometry.create(*CASES[case][1:3], **CASES[case][3])
    for pass_name in registry.CONV_PASSES:
        free = plan.result_bytes(pass_name, g, np.float32) + plan.im2col_bytes_per_image(g, 4)
        the_plan, got, expected = run_pass(pass_name, "auto", CASES[case], np.float32, backend, free_bytes=free)
        assert the_plan.algorithm == "implicit_gemm"
        assert (the_plan.fallback is not None) == (g.groups == 1), the_plan  # grouped ones never asked for im2col
        assert_matches(got, expected, np.float32, the_plan.describe())


def test_public_entry_points_take_the_backend():
    """conv2d_forward & co. plan and run on the backend they are given (auto: the fixed rule, no tuning)."""
    backend = EmulatorBackend()
    g, x, w, dy = conv_case(CASES["depthwise"], np.float32)
    y = conv.conv2d_forward(x, w, g, backend=backend)
    dx = conv.conv2d_grad_input(dy, w, g, algo="dgrad_simt_64x64x16_1stage", backend=backend)
    dw = conv.conv2d_grad_weight(x, dy, g, algo="implicit_gemm", backend=backend)
    assert [launch.variant.name for launch in backend.launches] == [
        "fprop_depthwise_8x32", "dgrad_simt_64x64x16_1stage", "wgrad_simt_16x16x32_1stage_splitk",
        "wgrad_splitk_reduce"]
    assert_matches(y, reference.conv2d_forward(x, w, g), np.float32, "fprop")
    assert_matches(dx, reference.conv2d_grad_input(dy, w, g), np.float32, "dgrad")
    assert_matches(dw, reference.conv2d_grad_weight(x, dy, g), np.float32, "wgrad")


# ---------------------------------------------------------------------------------------- pooling ---

def pool_case(case, dtype, seed=0, ties=False):
    g = pool_geometry(case)
    if np.dtype(dtype).kind in "iu":  # the whole range, both extremes included
        info = np.iinfo(dtype)
        x = np.random.default_rng(seed).integers(info.min, info.max, g.input_shape, dtype=dtype, endpoint=True)
        x.flat[:2] = info.min, info.max
        x = emu.to_guarded(x)
    elif ties:  # few distinct values: windows with several maxima (the gradient goes to the first)
        x = emu.to_guarded(np.random.default_rng(seed).integers(-2, 3, g.input_shape).astype(dtype))
    else:
        x = random_input(g.input_shape, dtype, seed)
    dy = random_input(g.output_shape, dtype, seed + 1)
    return g, x, dy


def assert_max_pool(backend, g, x, dy, dtype):
    """Values and indices exactly the reference's (a selection), and the gradient; both kernels."""
    y = pool.max_pool2d_forward(x, g, backend=backend)
    y_with, indices = pool.max_pool2d_forward(x, g, return_indices=True, backend=backend)
    expected, expected_indices = reference.max_pool2d_forward(x, g, return_indices=True)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y_with, expected)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)
    if np.dtype(dtype).kind == "f":
        assert_matches(pool.max_pool2d_grad(dy, x, g, backend=backend), reference.max_pool2d_grad(dy, x, g), dtype,
                       "max_pool2d_grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool(backend, case, ties, dtype):
    assert_max_pool(backend, *pool_case(case, dtype, ties=ties), dtype)


@pytest.mark.parametrize("dtype", registry.INT_DTYPES, ids=str)
@pytest.mark.parametrize("case", ["3x3-s2-p1-ceil", "dilation-ceil", "padding-only-windows", "adaptive-overlapping"])
def test_max_pool_integers(backend, case, dtype):
    """Integer max pooling: padding is the dtype's minimum, which a pixel holding that minimum still beats."""
    assert_max_pool(backend, *pool_case(POOL_CASES[POOL_IDS.index(case)], dtype), dtype)


def test_padding_only_windows_are_lowest_with_index_minus_one():
    g, x, dy = pool_case(POOL_CASES[POOL_IDS.index("padding-only-windows")], np.float32)
    y, indices = pool.max_pool2d_forward(x, g, return_indices=True, backend=EmulatorBackend())
    empty = indices == -1
    assert empty.any() and (~empty).any()
    assert np.all(y[empty] == -np.inf)
    avg = pool.avg_pool2d_forward(x, g, False, backend=EmulatorBackend())
    assert np.all(avg[empty] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_propagates_nan(backend, dtype):
    g, x, dy = pool_case(POOL_CASES[0], dtype)
    x[0, 1, 2, 3] = np.nan
    x[0, 1, 3, 3] = x[0, 1, 3, 4] = np.nan  # several NaNs in a window: the last one wins (PyTorch's loop)
    y = pool.max_pool2d_forward(x, g, backend=backend)
    expected = reference.max_pool2d_forward(x, g)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(y, expected)
    assert_max_pool(backend, g, x, dy, dtype)


@pytest.mark.parametrize("dtype", [np.float32])
@pytest.mark.parametrize("case", ["3x3-s2-p1-ceil", "dilation-ceil", "asymmetric-pad"])
def test_max_pool_of_minus_infinity_goes_to_the_first_real_pixel(backend, case, dtype):
    """Windows whose pixels are all -inf: the maximum, its index and its gradient are the first pixel's, never
    padding's (PyTorch's rule), on the kernels as in the reference."""
    g, x, dy = pool_case(POOL_CASES[POOL_IDS.index(case)], dtype)
    x[...] = -np.inf
    x[0, 0, 0, 0] = 1.0
    _, indices = reference.max_pool2d_forward(x, g, return_indices=True)
    assert (indices >= 0).all()
    assert_max_pool(backend, g, x, dy, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divisor_override", [None, 3], ids=["divisor", "override-3"])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_avg_pool(backend, case, count_include_pad, divisor_override, dtype):
    g, x, dy = pool_case(case, dtype)
    args = (count_include_pad, divisor_override)
    assert_matches(pool.avg_pool2d_forward(x, g, *args, backend=backend),
                   reference.avg_pool2d_forward(x, g, *args), dtype, "avg_pool2d")
    assert_matches(pool.avg_pool2d_grad(dy, g, *args, backend=backend),
                   reference.avg_pool2d_grad(dy, g, *args), dtype, "avg_pool2d_grad")


# ------------------------------------------------------------------------------ grid-stride loops ---

def _conv_with_small_grid(pass_name, algo, index, case):
    def run(backend, dtype, grid):
        g, x, w, dy = conv_case(CASES[case], dtype)
        operands, expected = PASSES[pass_name]
        the_plan = plan.plan_conv(pass_name, g, dtype, algo)
        small = plan.with_grid(the_plan, index, grid)
        return the_plan.launches[index], conv.run_conv(small, backend, *operands(x, w, dy)), expected(g, x, w, dy)
    return run


SMALL_GRID_POOL = ("1008-outputs", (4, 4, 18, 14), 3, 2, 1, False, 1)


def _pool_with_small_grid(op, run_pool_args):
    def run(backend, dtype, grid):
        g, x, dy = pool_case(SMALL_GRID_POOL, dtype)
        the_plan = plan.plan_pool(op, g, dtype)
        operands, count_include_pad, expected = run_pool_args(g, x, dy)
        got = pool.run_pool(plan.with_grid(the_plan, 0, grid), backend, *operands,
                            count_include_pad=count_include_pad)
        if isinstance(got, tuple):  # maxpool2d_forward_indices: the indices exactly, then the values
            np.testing.assert_array_equal(got[1], expected[1], err_msg=f"{op} indices on grid {grid}")
            got, expected = got[0], expected[0]
        return the_plan.launch, got, expected
    return run


#: Every grid-stride variant -> a run of it with a chosen grid (its work well over one block's 256 threads).
SMALL_GRID_RUNS = {
    "im2col_nchw": _conv_with_small_grid("fprop", "im2col", 0, "wide-weights"),
    "col2im_nchw": _conv_with_small_grid("dgrad", "im2col", 0, "wide-weights"),
    "wgrad_splitk_reduce": _conv_with_small_grid("wgrad", "wgrad_simt_64x64x16_1stage_splitk", 1, "wide-weights"),
    "maxpool2d_forward": _pool_with_small_grid("maxpool2d_forward", lambda g, x, dy: (
        (x,), None, reference.max_pool2d_forward(x, g))),
    "maxpool2d_forward_indices": _pool_with_small_grid("maxpool2d_forward_indices", lambda g, x, dy: (
        (x,), None, reference.max_pool2d_forward(x, g, True))),
    "maxpool2d_backward": _pool_with_small_grid("maxpool2d_backward", lambda g, x, dy: (
        (dy, x), None, reference.max_pool2d_grad(dy, x, g))),
    "avgpool2d_forward": _pool_with_small_grid("avgpool2d_forward", lambda g, x, dy: (
        (x,), False, reference.avg_pool2d_forward(x, g, False))),
    "avgpool2d_backward": _pool_with_small_grid("avgpool2d_backward", lambda g, x, dy: (
        (dy,), False, reference.avg_pool2d_grad(dy, g, False))),
}


def test_every_grid_stride_variant_is_run_on_a_small_grid():
    """(The tensor-core pack kernels, without float64, are run on small grids by test_tensor_core_kernels.py.)"""
    assert set(SMALL_GRID_RUNS) == {v.name for v in registry.VARIANTS
                                    if v.grid_stride and v.source != registry.TENSOR_OP_SOURCE}


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("grid", [(1,), (3,)], ids=["one-block", "three-blocks"])
@pytest.mark.parametrize("name", sorted(SMALL_GRID_RUNS))
def test_grid_stride_loops_cover_work_larger_than_the_grid(backend, name, grid, dtype):
    planned, got, expected = SMALL_GRID_RUNS[name](backend, dtype, grid)
    assert planned.variant.name == name
    # The planned grid has a thread per element: more blocks than the small grid means its loop runs again.
    assert planned.grid[0] > grid[0], f"{name}: too little work to loop over"
    assert_matches(got, expected, dtype, f"{name} on grid {grid}")


def test_im2col_and_col2im_kernels_are_exact_transposes_of_the_reference():
    """The column matrix is exactly reference.im2col's transpose (a copy: bit-exact), col2im its adjoint."""
    backend = EmulatorBackend()
    for case in ("stride-nonsquare-dilation", "groups2", "channels-past-one-tile"):
        g, x, _, _ = conv_case(CASES[case], np.float32)
        col = conv.im2col(x, g, backend=backend)
        np.testing.assert_array_equal(col, reference.im2col(x, g).T)
        dcol = random_input(col.shape, np.float32, seed=5)
        expected = reference.col2im(np.ascontiguousarray(dcol.T).astype(np.float64), g, g.C)
        assert_matches(conv.col2im(dcol, g, backend=backend), expected, np.float32, "col2im")


# ---------------------------------------------------------------------------- races and ordering ---

def _run_every_variant(case, schedule):
    with scheduled(schedule) as backend:
        results = {}
        for pass_name in registry.CONV_PASSES:
            g = ConvGeometry.create(*case[1:3], **case[3])
            for algo in ["im2col", *(v.name for v in registry.conv_variants(pass_name)
                                     if v.can_run(g, np.float32))]:
                _, results[f"{pass_name} {algo}"], _ = run_pass(pass_name, algo, case, np.float32, backend)
        g, x, _, _ = conv_case(case, np.float32)
        pg = PoolGeometry.create(x.shape, 3, 2, 1, True)
        results["max_pool2d"] = pool.max_pool2d_forward(x, pg, backend=backend)
        results["max_pool2d_grad"] = pool.max_pool2d_grad(results["max_pool2d"], x, pg, backend=backend)
        results["avg_pool2d_grad"] = pool.avg_pool2d_grad(pool.avg_pool2d_forward(x, pg, False, backend=backend),
                                                          pg, False, backend=backend)
        return results


@pytest.mark.parametrize("case", ["groups2", "channels-past-one-tile", "groups2-wgrad-split"])
def test_thread_and_block_order_does_not_change_a_bit(case):
    """Threads and blocks run in reverse order give the same bits: no missing __syncthreads() (a thread
    reading shared memory another has not written yet reads NaN poison) and no block depending on another."""
    forward = _run_every_variant(CASES[case], "forward")
    backward = _run_every_variant(CASES[case], "reverse")
    for name, result in forward.items():
        np.testing.assert_array_equal(backward[name], result, err_msg=f"{name}: reverse schedule differs")


# ------------------------------------------------------------------------------- the kernel files ---

@pytest.mark.parametrize("source", registry.sources())
def test_emulator_finds_exactly_the_registered_kernels(source):
    """The generated instantiations are what the emulator sees, with the argument types the run step passes."""
    expected = {v.kernel_name(d) for v, d in registry.instantiations(source)}
    assert set(emulated_module(source).kernels) == expected


@pytest.mark.parametrize("source", registry.sources())
def test_kernels_compile_without_gxx_warnings(source):
    """g++ -Wall -Wconversion on the kernels (sign-compare, maybe-uninitialized, 64-to-32-bit narrowing...)."""
    warnings = emulated_module(source).compiler_warnings
    assert warnings == "", f"g++ warns about {source}:\n{warnings}"


@pytest.mark.parametrize("source", registry.sources())
def test_registered_static_shared_memory_is_what_the_kernels_declare(source):
    """The registry's shared-memory size (which occupancy and the report use) against the emulated module's
    __shared__ variables (the same declarations NVRTC compiles)."""
    declared = emulated_module(source).static_shared_bytes()
    for variant, dtype in registry.instantiations(source):
        if variant.tile is None:
            continue
        # The template instantiated for (T, tile) declares the variant's __shared__ tiles.
        instantiated = f"<{registry.c_types(dtype)[0]}, {variant.tile.cpp}"
        # The tensor-core fprop and wgrad templates share (T, tile) instantiations: told apart by their names.
        wgrad_tensor_op = variant.export_macro == "GPUCONV_WGRAD_TENSOR_OP_KERNEL"
        owners = [size for owner, size in declared.items() if (instantiated in owner.replace("> >", ">>")
                  or instantiated in owner) and ("conv2d_wgrad_tensor_op<" in owner) == wgrad_tensor_op]
        assert owners == [variant.static_shared_bytes(dtype)], (variant.name, dtype, declared)


# ----------------------------------------------------------------------------------------- float16 ---

def test_float16_conversions_of_common_cuh():
    """common.cuh's portable float16 conversions -- what every emulated float16 kernel runs -- are exact:
    half -> float for all 65536 bit patterns, float -> half rounding to nearest even (ties, subnormals,
    overflow to infinity) like NumPy."""
    module = emu.load_module(Path(__file__).parent / "cuda_emulation" / "float16_probe.cu")
    every_half = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    as_float = emu.empty(every_half.shape, np.float32)
    module.launch("probe_half_to_float", plan.elementwise_grid(every_half.size), 256,
                  emu.to_guarded(every_half), as_float, np.int64(every_half.size))
    expected = every_half.astype(np.float32)
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(as_float.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    assert np.isnan(as_float[~finite]).all()

    halves = every_half[np.isfinite(every_half)].astype(np.float32)
    halves = np.sort(np.unique(halves))
    midpoints = (halves[:-1].astype(np.float64) + halves[1:]) / 2  # exact in float32: ties to even
    near = midpoints.astype(np.float32)
    floats = np.concatenate([
        halves, near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf)),
        np.float32([65504, 65519.996, 65520, 1e6, -1e30, np.inf, -np.inf, 2.0 ** -25, 2.0 ** -26, 1e-30, 0.0,
                    -0.0, 5.9604645e-08 * 1.5, 2.0 ** -14 * (1 - 2.0 ** -12)]),
        np.random.default_rng(0).standard_normal(4096).astype(np.float32) * np.float32(1000),
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = floats.astype(np.float16)
    as_half = emu.empty(floats.shape, np.float16)
    module.launch("probe_float_to_half", plan.elementwise_grid(floats.size), 256,
                  emu.to_guarded(floats), as_half, np.int64(floats.size))
    mismatch = as_half.view(np.uint16) != expected.view(np.uint16)
    assert not mismatch.any(), (f"float_to_half differs from NumPy for {int(mismatch.sum())} values, e.g. "
                                f"{floats[mismatch][:4]!r} -> {as_half[mismatch][:4]!r}, expected "
                                f"{expected[mismatch][:4]!r}")
    nan_half = emu.empty(1, np.float16)
    module.launch("probe_float_to_half", 1, 32, emu.to_guarded(np.float32([np.nan])), nan_half, np.int64(1))
    assert np.isnan(nan_half[0])
