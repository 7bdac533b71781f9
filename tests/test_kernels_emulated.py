"""gpuconv's CUDA kernels (kernels/*.cu) run on the CPU and checked against gpuconv.reference -- no GPU needed.

tests/cuda_emulation compiles each kernel file with g++ and runs its blocks as fibers (see
cuda_emulation/emulator.py). The GPU modules themselves do the launching: gpuconv.cuda.conv and .pool run
unchanged, with ``gpuconv.cuda._launch.require_cuda`` answering a NumPy stand-in for CuPy (every buffer
NaN-filled between guard zones, float16 GEMMs accumulated in float32 as cuBLAS does) and ``get_kernel`` the
emulated kernel.
So each test covers the kernel, its launch configuration and its argument list, and an unwritten output
element (NaN), a write out of bounds or a divergent __syncthreads() fails it. Only cuBLAS is not tested.

Every kernel variant (tile), float16/32/64, edge shapes: stride, asymmetric padding, dilation, groups,
depthwise, 1x1, batch 1, channel counts that are not a multiple of the tile, a split wgrad reduction.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import emulator as emu
from gpuconv import reference
from gpuconv._shapes import ConvGeometry, PoolGeometry
from gpuconv.cuda import _launch, conv, loader, pool

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles the kernels with g++")

DTYPES = [np.float16, np.float32, np.float64]
# Tolerance against the reference, relative to the largest expected value (float16: about two units of
# its output rounding, 2**-11, which the float16 intermediates of the im2col path need).
TOLERANCE = {np.float16: 1e-3, np.float32: 2e-5, np.float64: 1e-12}


_modules: dict[str, emu.KernelModule] = {}


def emulated_module(file: str) -> emu.KernelModule:
    if file not in _modules:
        # Block size at most 256: the limit the kernels are written for (implicit_gemm.cuh asserts it too).
        _modules[file] = emu.load_gpuconv_kernels(file, max_threads_per_block=256)
    return _modules[file]


def emulated_get_kernel(file: str, name: str) -> emu.EmulatedKernel:
    if name not in loader.KERNELS.get(file, ()):
        raise ValueError(f"kernels/{file} exports no kernel named {name!r}")
    return emulated_module(file)[name]


class NumpyAsCupy:
    """What gpuconv.cuda.conv and .pool use of CuPy, on NumPy, for the emulated kernels.

    ``empty`` gives guarded NaN-filled buffers; ``matmul`` multiplies float16 with float32 accumulation
    (CuPy's default cuBLAS compute type); anything else is NumPy's.
    """

    @staticmethod
    def empty(shape, dtype=np.float64):
        return emu.empty(shape, dtype)

    @staticmethod
    def matmul(a, b):
        if a.dtype == np.float16:
            return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
        return np.matmul(a, b)

    # gpuconv.cuda.conv sizes the im2col workspace from free GPU memory: report plenty, no pool limit.
    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (1 << 40, 1 << 40)),
                                 memory=types.SimpleNamespace(OutOfMemoryError=MemoryError))

    @staticmethod
    def get_default_memory_pool():
        return types.SimpleNamespace(free_bytes=lambda: 0, used_bytes=lambda: 0, get_limit=lambda: 0)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def emulated_gpu(monkeypatch):
    """gpuconv.cuda.conv / .pool launch the emulated kernels; every module back on the forward schedule."""
    monkeypatch.setattr(_launch, "require_cuda", NumpyAsCupy)  # where conv and pool get "cupy" from
    for module in (conv, pool):
        monkeypatch.setattr(module, "get_kernel", emulated_get_kernel)
    yield
    for module in _modules.values():
        module.configure(schedule="forward")


def random_input(shape, dtype, seed):
    """Guarded input (a read past its end reads NaN) with values exactly representable in float16."""
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
        f"(a read past an input's end, or of shared memory no thread wrote)")
    tol = TOLERANCE[dtype]
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
    ("pointwise-1x1", (2, 5, 4, 3), (3, 5, 1, 1), {}),
    ("1x1-stride2-padded", (1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2, padding=1)),
    ("kernel-equals-input", (2, 3, 4, 5), (2, 3, 4, 5), {}),
    # 67 output channels: two 64-wide tiles (and 17 of the 4-wide one); the last ones partly empty.
    ("channels-past-one-tile", (1, 3, 4, 5), (67, 3, 1, 2), dict(padding=(0, 0, 1, 0))),
    # Cg*R*S = 180 taps: several 16-deep slices, the last one partial; 70 input channels for dgrad's N.
    ("long-reduction", (1, 20, 4, 4), (3, 20, 3, 3), dict(padding=1)),
    ("many-input-channels", (1, 70, 3, 3), (2, 70, 1, 1), {}),
    # 1152 output pixels: the wgrad reduction is split in two (conv.wgrad_split).
    ("wgrad-split", (2, 1, 24, 24), (2, 1, 3, 3), dict(padding=1)),
    # batch of 3 with M = N*P*Q = 3*7*5 = 105: not a multiple of any tile.
    ("batch3-odd-sizes", (3, 2, 7, 5), (3, 2, 1, 1), {}),
]
CONV_IDS = [case[0] for case in CONV_CASES]

FPROP_TILES = [conv.TILE_64X64, conv.TILE_256X4]
DGRAD_TILES = [conv.TILE_64X64, conv.TILE_256X4]
WGRAD_TILES = [conv.TILE_64X64, conv.TILE_16X16]


def conv_case(case, dtype, seed=0):
    _, input_shape, weight_shape, kwargs = case
    g = ConvGeometry.create(input_shape, weight_shape, **kwargs)
    x = random_input(g.input_shape, dtype, seed)
    w = random_input(g.weight_shape, dtype, seed + 1)
    dy = random_input(g.output_shape, dtype, seed + 2)
    return g, x, w, dy


def force_tile(monkeypatch, chooser: str, tile):
    monkeypatch.setattr(conv, chooser, lambda g: tile)


def test_wgrad_split_case_really_splits():
    g = ConvGeometry.create(*CONV_CASES[CONV_IDS.index("wgrad-split")][1:3], padding=1)
    assert all(conv.wgrad_split(g, tile)[0] > 1 for tile in WGRAD_TILES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", FPROP_TILES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_fprop_implicit_gemm(emulated_gpu, monkeypatch, case, tile, dtype):
    g, x, w, _ = conv_case(case, dtype)
    force_tile(monkeypatch, "fprop_tile", tile)
    y = conv.conv2d_forward(x, w, g, algo="implicit_gemm")
    assert_matches(y, reference.conv2d_forward(x, w, g), dtype, f"fprop {tile.name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", DGRAD_TILES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_dgrad_implicit_gemm(emulated_gpu, monkeypatch, case, tile, dtype):
    g, _, w, dy = conv_case(case, dtype)
    force_tile(monkeypatch, "dgrad_tile", tile)
    dx = conv.conv2d_grad_input(dy, w, g, algo="implicit_gemm")
    assert_matches(dx, reference.conv2d_grad_input(dy, w, g), dtype, f"dgrad {tile.name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", WGRAD_TILES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_wgrad_implicit_gemm(emulated_gpu, monkeypatch, case, tile, dtype):
    g, x, _, dy = conv_case(case, dtype)
    force_tile(monkeypatch, "wgrad_tile", tile)
    dw = conv.conv2d_grad_weight(x, dy, g, algo="implicit_gemm")
    assert_matches(dw, reference.conv2d_grad_weight(x, dy, g), dtype, f"wgrad {tile.name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_im2col_algorithm_all_passes(emulated_gpu, case, dtype):
    """algo="im2col": the im2col kernel (forward, wgrad) and col2im (dgrad), NumPy standing in for cuBLAS."""
    g, x, w, dy = conv_case(case, dtype)
    assert_matches(conv.conv2d_forward(x, w, g, algo="im2col"), reference.conv2d_forward(x, w, g),
                   dtype, "fprop im2col")
    assert_matches(conv.conv2d_grad_input(dy, w, g, algo="im2col"), reference.conv2d_grad_input(dy, w, g),
                   dtype, "dgrad im2col+col2im")
    assert_matches(conv.conv2d_grad_weight(x, dy, g, algo="im2col"), reference.conv2d_grad_weight(x, dy, g),
                   dtype, "wgrad im2col")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[0] in ("3x3-pad1", "stride-nonsquare-dilation",
                                                                     "groups2")], ids=lambda c: c[0])
def test_im2col_algorithm_in_batch_chunks(emulated_gpu, monkeypatch, case, dtype):
    """A workspace budget of one image: the im2col path runs image by image (kernels on batch slices)."""
    g, x, w, dy = conv_case(case, dtype)
    assert g.N >= 2 and not g.is_pointwise
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE_BYTES", conv.im2col_bytes_per_image(g, np.dtype(dtype).itemsize))
    assert conv.im2col_batch_chunk(g, np.dtype(dtype).itemsize) == 1
    assert_matches(conv.conv2d_forward(x, w, g, algo="im2col"), reference.conv2d_forward(x, w, g),
                   dtype, "fprop im2col, one image per chunk")
    assert_matches(conv.conv2d_grad_input(dy, w, g, algo="im2col"), reference.conv2d_grad_input(dy, w, g),
                   dtype, "dgrad im2col+col2im, one image per chunk")
    assert_matches(conv.conv2d_grad_weight(x, dy, g, algo="im2col"), reference.conv2d_grad_weight(x, dy, g),
                   dtype, "wgrad im2col, one image per chunk")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[0] in ("stride-nonsquare-dilation", "groups2",
                                                                     "channels-past-one-tile")],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("grid", [None, (1,), (3,)], ids=["planned-grid", "one-block", "three-blocks"])
def test_im2col_and_col2im_kernels(case, dtype, grid):
    """The column matrix is exactly reference.im2col's transpose, and col2im its exact adjoint, whatever
    the grid (the kernels loop grid-stride)."""
    g, x, _, _ = conv_case(case, dtype)
    module = emulated_module("im2col.cu")
    suffix = loader.DTYPE_SUFFIXES[np.dtype(dtype)]
    columns = g.N * g.P * g.Q
    col = emu.empty((g.C * g.R * g.S, columns), dtype)
    module.launch(f"gpuconv_im2col_nchw_{suffix}", grid or _launch.elementwise_grid(col.size),
                  _launch.ELEMENTWISE_THREADS, x, col, *conv.conv_shape_args(g))
    np.testing.assert_array_equal(col, reference.im2col(x, g).T)  # a copy: bit-exact

    dcol = random_input(col.shape, dtype, seed=5)
    dx = emu.empty(g.input_shape, dtype)
    module.launch(f"gpuconv_col2im_nchw_{suffix}", grid or _launch.elementwise_grid(dx.size),
                  _launch.ELEMENTWISE_THREADS, dcol, dx, *conv.conv_shape_args(g))
    expected = reference.col2im(np.ascontiguousarray(dcol.T).astype(np.float64), g, g.C)
    assert_matches(dx, expected, dtype, "col2im")


# ---------------------------------------------------------------------------------------- pooling ---

# (id, input shape, kernel_size, stride, padding, ceil_mode)
POOL_CASES = [
    ("3x3-s2-p1", (2, 3, 7, 6), 3, 2, 1, False),
    ("3x3-s2-p1-ceil", (2, 3, 7, 6), 3, 2, 1, True),
    ("2x2-default-stride", (1, 2, 5, 5), 2, None, 0, False),
    ("2x2-default-stride-ceil", (1, 2, 5, 5), 2, None, 0, True),
    ("nonsquare-ceil", (1, 1, 6, 7), (3, 2), (2, 1), (1, 0), True),
    ("overlapping-pad-half-kernel", (2, 2, 4, 4), 4, 1, 2, False),
    ("global", (1, 3, 3, 5), (3, 5), None, 0, False),
    ("batch1-1x1", (1, 4, 3, 3), 1, 2, 0, True),
]
POOL_IDS = [case[0] for case in POOL_CASES]


def pool_case(case, dtype, seed=0, ties=False):
    _, shape, kernel, stride, padding, ceil_mode = case
    g = PoolGeometry.create(shape, kernel, stride, padding, ceil_mode)
    if ties:  # few distinct values: windows with several maxima (the gradient goes to the first)
        x = emu.to_guarded(np.random.default_rng(seed).integers(-2, 3, g.input_shape).astype(dtype))
    else:
        x = random_input(g.input_shape, dtype, seed)
    dy = random_input(g.output_shape, dtype, seed + 1)
    return g, x, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool(emulated_gpu, case, ties, dtype):
    g, x, dy = pool_case(case, dtype, ties=ties)
    y = pool.max_pool2d_forward(x, g)
    np.testing.assert_array_equal(y, reference.max_pool2d_forward(x, g))  # a selection: exact
    assert_matches(pool.max_pool2d_grad(dy, x, g), reference.max_pool2d_grad(dy, x, g), dtype, "max_pool2d_grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_propagates_nan(emulated_gpu, dtype):
    g, x, dy = pool_case(POOL_CASES[0], dtype)
    x[0, 1, 2, 3] = np.nan
    y = pool.max_pool2d_forward(x, g)
    expected = reference.max_pool2d_forward(x, g)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(y, expected)
    assert_matches(pool.max_pool2d_grad(dy, x, g), reference.max_pool2d_grad(dy, x, g), dtype,
                   "max_pool2d_grad with NaN")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include-pad", "exclude-pad"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_avg_pool(emulated_gpu, case, count_include_pad, dtype):
    g, x, dy = pool_case(case, dtype)
    assert_matches(pool.avg_pool2d_forward(x, g, count_include_pad),
                   reference.avg_pool2d_forward(x, g, count_include_pad), dtype, "avg_pool2d")
    assert_matches(pool.avg_pool2d_grad(dy, g, count_include_pad),
                   reference.avg_pool2d_grad(dy, g, count_include_pad), dtype, "avg_pool2d_grad")


# ---------------------------------------------------------------------------- races and ordering ---

def _run_every_pass(g, x, w, dy, monkeypatch):
    results = {}
    for tile in FPROP_TILES:
        force_tile(monkeypatch, "fprop_tile", tile)
        results[f"fprop {tile.name}"] = conv.conv2d_forward(x, w, g, algo="implicit_gemm")
    for tile in DGRAD_TILES:
        force_tile(monkeypatch, "dgrad_tile", tile)
        results[f"dgrad {tile.name}"] = conv.conv2d_grad_input(dy, w, g, algo="implicit_gemm")
    for tile in WGRAD_TILES:
        force_tile(monkeypatch, "wgrad_tile", tile)
        results[f"wgrad {tile.name}"] = conv.conv2d_grad_weight(x, dy, g, algo="implicit_gemm")
    results["fprop im2col"] = conv.conv2d_forward(x, w, g, algo="im2col")
    results["dgrad col2im"] = conv.conv2d_grad_input(dy, w, g, algo="im2col")
    pg = PoolGeometry.create(x.shape, 3, 2, 1, True)
    results["max_pool2d"] = pool.max_pool2d_forward(x, pg)
    results["max_pool2d_grad"] = pool.max_pool2d_grad(pool.max_pool2d_forward(x, pg), x, pg)
    results["avg_pool2d_grad"] = pool.avg_pool2d_grad(pool.avg_pool2d_forward(x, pg, False), pg, False)
    return results


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[0] in ("groups2", "channels-past-one-tile",
                                                                     "wgrad-split")], ids=lambda c: c[0])
def test_thread_and_block_order_does_not_change_a_bit(emulated_gpu, monkeypatch, case):
    """Threads and blocks run in reverse order give the same bits: no missing __syncthreads() (a thread
    reading shared memory another has not written yet reads NaN poison) and no block depending on another."""
    g, x, w, dy = conv_case(case, np.float32)
    forward = _run_every_pass(g, x, w, dy, monkeypatch)
    for file in loader.KERNELS:
        emulated_module(file).configure(schedule="reverse")
    backward = _run_every_pass(g, x, w, dy, monkeypatch)
    for name, result in forward.items():
        np.testing.assert_array_equal(backward[name], result, err_msg=f"{name}: reverse schedule differs")


def test_every_exported_kernel_is_found_by_the_emulator():
    """The emulator sees exactly the kernels the loader launches, with the argument types conv.py passes."""
    for file, names in loader.KERNELS.items():
        assert set(emulated_module(file).kernels) == set(names), file


def test_kernels_compile_without_gxx_warnings():
    """g++ -Wall on the kernels (sign-compare, maybe-uninitialized, ...): the NVRTC build does not warn."""
    for file in loader.KERNELS:
        assert emulated_module(file).compiler_warnings == "", file


# ----------------------------------------------------------------------------------------- float16 ---

def test_float16_conversions_of_common_cuh():
    """common.cuh's portable float16 conversions -- what every emulated float16 kernel runs -- are exact:
    half -> float for all 65536 bit patterns, float -> half rounding to nearest even (ties, subnormals,
    overflow to infinity) like NumPy."""
    module = emu.load_module(Path(__file__).parent / "cuda_emulation" / "float16_probe.cu")
    every_half = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    as_float = emu.empty(every_half.shape, np.float32)
    module.launch("probe_half_to_float", _launch.elementwise_grid(every_half.size), 256,
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
    module.launch("probe_float_to_half", _launch.elementwise_grid(floats.size), 256,
                  emu.to_guarded(floats), as_half, np.int64(floats.size))
    mismatch = as_half.view(np.uint16) != expected.view(np.uint16)
    assert not mismatch.any(), (f"float_to_half differs from NumPy for {int(mismatch.sum())} values, e.g. "
                                f"{floats[mismatch][:4]!r} -> {as_half[mismatch][:4]!r}, expected "
                                f"{expected[mismatch][:4]!r}")
    nan_half = emu.empty(1, np.float16)
    module.launch("probe_float_to_half", 1, 32, emu.to_guarded(np.float32([np.nan])), nan_half, np.int64(1))
    assert np.isnan(nan_half[0])
