"""The tensor-core kernels (kernels/conv2d_tensor_core.cu: mma.sync, ldmatrix, cp.async) on the CPU emulator,
and how the planner chooses them -- no GPU needed.

Every tensor-core variant -- fprop, dgrad (per stride phase, the fprop of dy with the phase's taps of w
transposed and flipped), and wgrad -- and dtype (float16 and bfloat16 with float32
accumulation, float32 as TF32) runs the pack kernels and the main kernel exactly as planned (``plan.plan_conv`` + ``conv.run_conv``), in both emulator
schedules (threads and blocks forward with buffers against a guard page after their end, reverse with one
before their start), on edge shapes: stride, asymmetric padding, dilation, groups (depthwise too), channels
that are not a multiple of 8 nor of the 32-deep slice, a reduction that crosses taps inside a slice, batch 1,
and M = N*P*Q and N = K/groups that are not multiples of the 128 x 128 tile (two blocks each way where it
matters). The emulated warp is exact about ldmatrix and mma fragment layouts, so a wrong lane mapping, a
missing cp.async wait or __syncthreads(), an unwritten output (NaN) or an access out of bounds fails here.

The shapes are tiny: the warp-level emulator runs every lane of every ldmatrix and mma as a rendezvous.
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_emulation import emulator as emu
from cuda_emulation.backend import SCHEDULES, EmulatorBackend, emulated_module, scheduled
from gpuconv import reference
from gpuconv._backend import GPUOutOfMemoryError
from gpuconv._shapes import BFLOAT16, ConvGeometry
from gpuconv.cuda import conv, plan, registry

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles the kernels with g++")

HALF = "fprop_tensorop_128x128x32_64x64_3stage"
TF32 = "fprop_tensorop_128x128x16_64x64_3stage_tf32"
DGRAD_HALF = "dgrad_tensorop_128x128x32_64x64_3stage"
DGRAD_TF32 = "dgrad_tensorop_128x128x16_64x64_3stage_tf32"
WGRAD_HALF = "wgrad_tensorop_128x128x32_64x64_3stage"
WGRAD_TF32 = "wgrad_tensorop_128x128x16_64x64_3stage_tf32"
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
#: (variant, dtype): every tensor-core fprop instantiation; PASS_RUNS: (pass, variant, dtype), dgrad's too.
RUNS = [(HALF, F16), (HALF, BFLOAT16), (TF32, F32)]
RUN_IDS = ["float16", "bfloat16", "tf32"]
VARIANT_OF = {("fprop", HALF): HALF, ("fprop", TF32): TF32, ("dgrad", HALF): DGRAD_HALF, ("dgrad", TF32): DGRAD_TF32,
              ("wgrad", HALF): WGRAD_HALF, ("wgrad", TF32): WGRAD_TF32}
PASS_RUNS = [(p, VARIANT_OF[(p, v)], d) for p in ("fprop", "dgrad", "wgrad") for v, d in RUNS if (p, v) in VARIANT_OF]
PASS_RUN_IDS = [f"{p}-{i}" for p in ("fprop", "dgrad", "wgrad") for (v, _), i in zip(RUNS, RUN_IDS)
                if (p, v) in VARIANT_OF]
#: pass -> (operands from x, w, dy; the float64 reference)
PASSES = {"fprop": (lambda x, w, dy: (x, w), reference.conv2d_forward),
          "dgrad": (lambda x, w, dy: (dy, w), reference.conv2d_grad_input),
          "wgrad": (lambda x, w, dy: (x, dy), reference.conv2d_grad_weight)}


# ------------------------------------------------------------------------------------ the emulator ---

@pytest.fixture(params=list(SCHEDULES))
def backend(request):
    """The emulator backend, in each thread order (cuda_emulation.backend.scheduled)."""
    with scheduled(request.param) as emulated:
        yield emulated


# ------------------------------------------------------------------------------ cases, tolerances ---

# (id, input shape, weight shape, conv kwargs)
CASES = [
    # 180 pixels and 130 filters: two 128 x 128 blocks each way, the second ones partly empty; 9 channels
    # (padded to 16 halves / 12 floats), so slices mix taps.
    ("two-blocks-each-way", (2, 9, 10, 9), (130, 9, 3, 3), dict(padding=1)),
    ("stride2-asymmetric-pad", (1, 3, 7, 6), (4, 3, 3, 2), dict(stride=2, padding=(0, 2, 1, 0))),
    ("stride-nonsquare-dilation", (2, 2, 7, 8), (3, 2, 3, 2), dict(stride=(2, 3), dilation=(2, 1),
                                                                  padding=(2, 1, 0, 2))),
    # 10 channels per group (padded to 16 / 12) at the group's offset in the packed pixel.
    ("groups2", (2, 20, 5, 5), (12, 10, 3, 3), dict(groups=2, padding=1)),
    ("groups3-1x3", (1, 9, 6, 7), (6, 3, 1, 3), dict(groups=3, padding=(0, 0, 1, 1))),
    ("depthwise", (2, 5, 6, 5), (5, 1, 3, 3), dict(groups=5, padding=1, stride=(1, 2))),
    # 40 channels: a slice of 32 halves (16 floats) crosses from one tap into the next; 12 (23) slices.
    ("batch1-long-reduction", (1, 40, 6, 5), (17, 40, 3, 3), dict(padding=1)),
    # 64 channels: exactly two half slices per tap.
    ("channels-64", (1, 64, 4, 4), (24, 64, 3, 3), dict(padding=1)),
    ("pointwise-1x1", (3, 16, 4, 5), (8, 16, 1, 1), {}),
    # Padding wider than the filter: output rows and columns wholly in the padding (zeros); for dgrad, as an
    # fprop, negative padding (-2, -1, -1, 2).
    ("padding-beyond-the-filter", (1, 6, 5, 6), (10, 6, 1, 3), dict(padding=(2, 1, 3, 0))),
    ("kernel-equals-input", (2, 3, 4, 5), (2, 3, 4, 5), {}),
    # M = 3*7*5 = 105 pixels, K = 3: far from any tile edge.
    ("batch3-odd-sizes", (3, 2, 7, 5), (3, 2, 1, 1), {}),
    # 1200 pixels: wgrad splits its reduction in two at pixel 608 (a multiple of both slices), inside image 2.
    ("wgrad-splits-mid-image", (3, 8, 20, 20), (12, 8, 3, 3), dict(padding=1)),
]
CASE_IDS = [c[0] for c in CASES]
BY_ID = {c[0]: c for c in CASES}


def geometry(case) -> ConvGeometry:
    return ConvGeometry.create(case[1], case[2], **case[3])


def operands(g: ConvGeometry, dtype, seed=0, pass_name="fprop"):
    """Guarded operands of a pass: (x, w), (dy, w) or (x, dy). float16 / bfloat16: normal values rounded to the dtype
    (what it stores). float32: full 24-bit significands, so that TF32's rounding of the inputs is exercised."""
    rng = np.random.default_rng(seed)
    x, w, dy = (rng.standard_normal(shape) for shape in (g.input_shape, g.weight_shape, g.output_shape))
    a, b = PASSES[pass_name][0](x, w, dy)
    return emu.to_guarded(a.astype(dtype)), emu.to_guarded(b.astype(dtype))


def to_tf32(a: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 of finite float32 values: round the magnitude to 10 mantissa bits, ties away from zero."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def error_bound(g: ConvGeometry, dtype, a64, w64, expected, pass_name="fprop") -> np.ndarray:
    """An elementwise bound on |kernel - float64 reference|, with M = sum |a| |w| over the output's taps (a = x
    for fprop, dy for dgrad; for wgrad sum |x| |dy| over the output pixels, w standing for dy) and k the
    reduction length, Cg*R*S (fprop), Kg*R*S (dgrad; the zero padding of the channels adds exact zeros) or
    N*P*Q (wgrad; padding taps and pixels past the last add exact zeros):

    * float16 / bfloat16: products of two inputs are exact in float32 (11- and 8-bit significands); the float32
      sums round k times in another order than the reference: k * 2^-23 * M (2^-23 rather than 2^-24: the
      tensor core's adder may truncate); then the result is rounded to the storage type: 2^-11 (float16)
      or 2^-8 (bfloat16) of |y|, plus float16's subnormal spacing 2^-24;
    * TF32: each input is rounded to 10 mantissa bits (2^-11 relative), so each product is off by up to
      2^-10 + 2^-22 relative: (2^-10 + 2^-22) * M, plus the same float32 sums and the float32 result's
      rounding 2^-24 |y|."""
    k = {"fprop": g.channels_per_group * g.R * g.S, "dgrad": g.filters_per_group * g.R * g.S,
         "wgrad": g.N * g.P * g.Q}[pass_name]
    magnitude = PASSES[pass_name][1](np.abs(a64), np.abs(w64), g)
    accumulation = k * 2.0**-23 * magnitude
    if dtype == F32:
        return (2.0**-10 + 2.0**-22) * magnitude + accumulation + 2.0**-24 * np.abs(expected)
    rounding = 2.0**-11 if dtype == F16 else 2.0**-8
    return rounding * np.abs(expected) + (1 + rounding) * accumulation + 2.0**-24


def assert_close(got, expected, bound, dtype, what):
    assert got.dtype == dtype and got.shape == expected.shape, (what, got.dtype, got.shape)
    got = got.astype(np.float64)
    unwritten = np.isnan(got)
    assert not unwritten.any(), (f"{what}: {int(unwritten.sum())} of {got.size} outputs are NaN, first at "
                                 f"{tuple(int(i) for i in np.argwhere(unwritten)[0])}: never written, or "
                                 f"computed from NaN poison (shared memory no copy filled)")
    error = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert (error <= bound).all(), (f"{what}: |error| {error[worst]:.3g} > bound {bound[worst]:.3g} at "
                                    f"{tuple(int(i) for i in worst)} (expected {expected[worst]:.6g})")


def run(backend, variant, dtype, g, a, w, algo=None, pass_name="fprop", **plan_options):
    the_plan = plan.plan_conv(pass_name, g, dtype, algo or variant, **plan_options)
    before = (a.copy(), w.copy())
    y = conv.run_conv(the_plan, backend, a, w)
    np.testing.assert_array_equal(a, before[0], err_msg="the kernels wrote their input")
    np.testing.assert_array_equal(w, before[1], err_msg="the kernels wrote w")
    return the_plan, y


# --------------------------------------------------------------------------------------- kernels ---

@pytest.mark.parametrize("pass_name, variant, dtype", PASS_RUNS, ids=PASS_RUN_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tensor_core_pass_matches_the_reference(backend, case, pass_name, variant, dtype):
    g = geometry(case)
    assert registry.get(variant).can_run(g, dtype)
    a, w = operands(g, dtype, pass_name=pass_name)
    the_plan, y = run(backend, variant, dtype, g, a, w, pass_name=pass_name)
    gemms = len(registry.tensor_op_dgrad_phases(g)) if pass_name == "dgrad" else 1  # dgrad: one per stride phase
    assert [launch.variant.name for launch in backend.launches] == [
        registry.TENSOR_OP_PACK_INPUT, *[registry.TENSOR_OP_WEIGHT_PACKS[pass_name], variant] * gemms,
        *(["wgrad_splitk_reduce"] if pass_name == "wgrad" else [])]
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    expected = PASSES[pass_name][1](a64, w64, g)
    assert_close(y, expected, error_bound(g, dtype, a64, w64, expected, pass_name), dtype, the_plan.describe())


def test_dgrad_cases_cover_every_kind_of_phase():
    """dgrad's padding as an fprop, (R-1)*dilation - pad at stride 1, is negative (padding beyond the filter's
    span), zero and positive among the cases; the strided ones have phases of several taps, of one tap, and
    pixels no tap reaches (zeros: stride 3 over 2 taps)."""
    pads = {p for c in CASES for phase in registry.tensor_op_dgrad_phases(geometry(c)) for p in phase.conv.pad}
    assert min(pads) < 0 and 0 in pads and max(pads) > 0
    g = geometry(BY_ID["groups3-1x3"])
    (phase,) = registry.tensor_op_dgrad_phases(g)
    assert phase.conv.output_shape == g.input_shape
    strided = [geometry(c) for c in CASES if geometry(c).stride != (1, 1)]
    taps = {(p.conv.R, p.conv.S) for g in strided for p in registry.tensor_op_dgrad_phases(g)}
    assert (1, 1) in taps and any(r * s > 1 for r, s in taps)
    assert any(p.conv is None for g in strided for p in g.dgrad_phases())


@pytest.mark.parametrize("pass_name, variant, dtype", PASS_RUNS, ids=PASS_RUN_IDS)
def test_nan_reaches_exactly_the_outputs_whose_window_holds_it(pass_name, variant, dtype):
    """A NaN input poisons the outputs of its windows and no other: no copy past the reduction's end (the tap
    after the last, in a partial slice) or into the padding reads real data that the zero-filled operand then
    multiplies (NaN * 0 is NaN)."""
    g = geometry(BY_ID["two-blocks-each-way"])  # 9 taps x 16 (12) channels: the last slice is partial
    a, w = operands(g, dtype, seed=4, pass_name=pass_name)
    if pass_name == "wgrad":  # (x, dy): a corner input pixel (reached by 4 taps) and a filter's dy
        a[0, 3, 0, 0] = np.nan
        w[1, 129, 0, 0] = np.nan
    else:
        a[0, 3, 0, 0] = a[1, 8, 9, 8] = a[1, 0, 4, 4] = np.nan
        w[129, 8, 2, 2] = np.nan
    _, y = run(EmulatorBackend(), variant, dtype, g, a, w, pass_name=pass_name)
    expected = PASSES[pass_name][1](a.astype(np.float64), w.astype(np.float64), g)
    np.testing.assert_array_equal(np.isnan(y.astype(np.float64)), np.isnan(expected))
    assert 0 < np.isnan(expected).mean() < 0.2


def test_tf32_inputs_are_rounded_to_nearest_once():
    """The pack rounds float32 to TF32 (cvt.rna): the result is then the exact convolution of the rounded
    inputs up to the float32 sums alone -- much tighter than the TF32 bound, and not what truncating the 13
    low bits (what the mma does to raw float32) would give."""
    g = geometry(BY_ID["batch1-long-reduction"])
    x, w = operands(g, F32, seed=3)
    _, y = run(EmulatorBackend(), TF32, F32, g, x, w)
    xr, wr = to_tf32(x).astype(np.float64), to_tf32(w).astype(np.float64)
    assert (xr != x).mean() > 0.99, "the inputs should need rounding"
    expected = reference.conv2d_forward(xr, wr, g)
    magnitude = reference.conv2d_forward(np.abs(xr), np.abs(wr), g)
    bound = g.channels_per_group * g.R * g.S * 2.0**-23 * magnitude + 2.0**-24 * np.abs(expected)
    assert_close(y, expected, bound, F32, "TF32 against the convolution of the TF32-rounded inputs")
    truncated = [(a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32).astype(np.float64) for a in (x, w)]
    assert np.abs(y - reference.conv2d_forward(*truncated, g)).max() > 10 * np.abs(y - expected).max()


@pytest.mark.parametrize("dtype", [F16, BFLOAT16, F32], ids=RUN_IDS)
def test_packed_operands(dtype):
    """The pack kernels alone: x as (N, H, W, groups * Cgp) and w as (K, R, S, Cgp), each group's channels
    zero-padded to a multiple of 16 bytes (8 halves, 4 floats), float32 rounded to TF32 to nearest with ties
    away from zero -- bit for bit."""
    g = geometry(BY_ID["groups2"])
    x, w = operands(g, dtype, seed=1)
    if dtype == F32:  # ties and near-ties of the TF32 rounding, both signs: x[0, 0, 0, :5]
        x.flat[:5] = np.array([0x3F801000, 0xBF801000, 0x3F800FFF, 0x3F803000, 0x3F802FFF], np.uint32).view(F32)
    the_plan = plan.plan_conv("fprop", g, dtype, "tensor_core")
    input_shape, weight_shape = registry.tensor_op_workspace_shapes(g, dtype)
    cgp = registry.tensor_op_padded_channels(g, dtype)
    assert cgp == (16 if dtype.itemsize == 2 else 12) and input_shape == (2, 5, 5, 2 * cgp)
    packed_x, packed_w = emu.empty(input_shape, dtype), emu.empty(weight_shape, dtype)
    backend = EmulatorBackend()
    backend.launch(the_plan.launches[0], (x, packed_x, *conv.conv_shape_args(g)))
    backend.launch(the_plan.launches[1], (w, packed_w, *conv.conv_shape_args(g)))
    rounded = to_tf32 if dtype == F32 else (lambda a: a)
    expected_x = np.zeros(input_shape, dtype)
    for group in range(g.groups):
        cs = slice(group * g.channels_per_group, (group + 1) * g.channels_per_group)
        expected_x[..., group * cgp:group * cgp + g.channels_per_group] = x[:, cs].transpose(0, 2, 3, 1)
    expected_w = np.zeros(weight_shape, dtype)
    expected_w[..., :g.channels_per_group] = w.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(packed_x.view(np.uint8), rounded(expected_x).view(np.uint8))
    np.testing.assert_array_equal(packed_w.view(np.uint8), rounded(expected_w).view(np.uint8))
    # dgrad's weight, over the shape of its fprop: (C, R, S, Kgp), each group's w transposed and flipped.
    (phase,) = registry.tensor_op_dgrad_phases(g)
    as_fprop = phase.conv
    flipped_shape = registry.tensor_op_workspace_shapes(as_fprop, dtype)[1]
    kgp = registry.tensor_op_padded_channels(as_fprop, dtype)
    assert flipped_shape == (g.C, g.R, g.S, kgp) and kgp == 8  # 6 filters per group
    packed_flipped = emu.empty(flipped_shape, dtype)
    dgrad_plan = plan.plan_conv("dgrad", g, dtype, "tensor_core")
    assert dgrad_plan.launches[1].variant.name == registry.TENSOR_OP_PACK_WEIGHT_FLIPPED
    backend.launch(dgrad_plan.launches[1], (w, packed_flipped, *conv.conv_shape_args(as_fprop)))
    expected_flipped = np.zeros(flipped_shape, dtype)
    kg, cg = g.filters_per_group, g.channels_per_group
    for group in range(g.groups):
        block = w[group * kg:(group + 1) * kg, :, ::-1, ::-1].transpose(1, 2, 3, 0)  # (Cg, R, S, Kg)
        expected_flipped[group * cg:(group + 1) * cg, ..., :kg] = block
    np.testing.assert_array_equal(packed_flipped.view(np.uint8), rounded(expected_flipped).view(np.uint8))
    if dtype == F32:  # ties 1 + 2^-11 and 1 + 3 * 2^-11 round away from zero, just below them down
        assert [float(v) for v in packed_x[0, 0, :5, 0]] == [1 + 2**-10, -(1 + 2**-10), 1.0, 1 + 2**-9, 1 + 2**-10]


@pytest.mark.parametrize("index", [0, 1], ids=["pack-input", "pack-weight"])
@pytest.mark.parametrize("grid", [(1,), (3,)], ids=["one-block", "three-blocks"])
def test_pack_kernels_cover_work_larger_than_their_grid(index, grid):
    g = geometry(BY_ID["channels-64"])
    for variant, dtype in RUNS:
        x, w = operands(g, dtype)
        the_plan = plan.plan_conv("fprop", g, dtype, variant)
        assert the_plan.launches[index].grid[0] > grid[0]
        y = conv.run_conv(plan.with_grid(the_plan, index, grid), EmulatorBackend(), x, w)
        expected = conv.run_conv(the_plan, EmulatorBackend(), x, w)
        np.testing.assert_array_equal(y.view(np.uint8), expected.view(np.uint8), err_msg=f"{variant} {dtype}")
    with pytest.raises(ValueError, match="not a grid-stride kernel"):
        plan.with_grid(the_plan, 2, (1,))


@pytest.mark.parametrize("pass_name, variant, dtype", PASS_RUNS, ids=PASS_RUN_IDS)
def test_schedules_give_the_same_bits_and_every_mma_runs(pass_name, variant, dtype):
    """Forward and reverse thread and block orders agree bit for bit (no missing cp.async wait or barrier:
    a copy that has not landed reads the NaN poison), and the main kernel ran exactly its ldmatrix and mma
    collectives: per block and slice, 2 steps x 4 warps x (8 ldmatrix.x4 + 32 mma) -- TF32 wgrad's fragments
    are plain 128-bit shared loads, no collective, for 4 steps of 32 mma.m16n8k4."""
    g = geometry(BY_ID["two-blocks-each-way"])
    a, w = operands(g, dtype, seed=2, pass_name=pass_name)
    results = []
    for schedule in SCHEDULES:
        with scheduled(schedule) as emulated:
            _, y = run(emulated, variant, dtype, g, a, w, pass_name=pass_name)
        results.append(y)
        tile = registry.get(variant).tile
        gg = registry.tensor_op_dgrad_phases(g)[0].conv if pass_name == "dgrad" else g  # stride 1: one phase
        pixels, columns = gg.N * gg.P * gg.Q, gg.R * gg.S * registry.tensor_op_padded_channels(gg, dtype)
        if pass_name == "wgrad":  # blocks of filters x columns (r, s, c), slices of 32 pixels
            blocks = -(-gg.filters_per_group // tile.block_m) * -(-columns // tile.block_n) * gg.groups
            slices = -(-pixels // tile.block_k)
        else:
            blocks = -(-pixels // tile.block_m) * -(-gg.filters_per_group // tile.block_n) * gg.groups
            slices = -(-columns // tile.block_k)
        steps, per_step = (4, 32) if variant == WGRAD_TF32 else (2, 8 + 32)  # TF32 wgrad: m16n8k4, 4 per slice
        assert emulated_module(registry.TENSOR_OP_SOURCE).warp_collectives == blocks * slices * steps * 4 * per_step
    np.testing.assert_array_equal(results[0].view(np.uint8), results[1].view(np.uint8))


def test_bfloat16_through_the_public_entry_point():
    """conv2d_forward with bfloat16 arrays: auto plans the tensor-core variant where it prefers the geometry
    (8 or more channels and filters per group), else the SIMT rule's kernel."""
    g = geometry(BY_ID["channels-64"])
    x, w = operands(g, BFLOAT16)
    backend = EmulatorBackend()
    y = conv.conv2d_forward(x, w, g, backend=backend)
    assert backend.launches[-1].variant.name == HALF and y.dtype == BFLOAT16
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    expected = reference.conv2d_forward(x64, w64, g)
    assert_close(y, expected, error_bound(g, BFLOAT16, x64, w64, expected), BFLOAT16, "bfloat16 auto")
    g = geometry(BY_ID["groups2"])  # 6 filters per group: the SIMT implicit GEMM, in bfloat16 too
    x, w = operands(g, BFLOAT16)
    y = conv.conv2d_forward(x, w, g, backend=backend)
    assert backend.launches[-1].variant.family == "implicit_gemm" and y.dtype == BFLOAT16
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    expected = reference.conv2d_forward(x64, w64, g)
    assert_close(y, expected, error_bound(g, BFLOAT16, x64, w64, expected), BFLOAT16, "bfloat16 SIMT")


# --------------------------------------------------------------------------------------- planning ---

DENSE = ConvGeometry.create((8, 64, 16, 16), (64, 64, 3, 3), padding=1)
GROUPED = ConvGeometry.create((8, 64, 16, 16), (64, 16, 3, 3), padding=1, groups=4)
DEPTHWISE = ConvGeometry.create((8, 16, 16, 16), (16, 1, 3, 3), padding=1, groups=16)
FIRST_LAYER = ConvGeometry.create((8, 3, 32, 32), (64, 3, 7, 7), padding=3, stride=2)


def test_registry_entries():
    for pass_name in ("fprop", "dgrad", "wgrad"):
        half, tf32 = registry.get(VARIANT_OF[(pass_name, HALF)]), registry.get(VARIANT_OF[(pass_name, TF32)])
        assert half.dtypes == (F16, BFLOAT16) and tf32.dtypes == (F32,) and (half.tf32, tf32.tf32) == (False, True)
        assert half.op == tf32.op == pass_name
    assert [v.name for v in registry.VARIANTS if v.family == "tensor_core"] == [
        HALF, TF32, DGRAD_HALF, DGRAD_TF32, WGRAD_HALF, WGRAD_TF32]
    wgrad = registry.get(WGRAD_HALF)
    assert wgrad.op == "wgrad" and wgrad.dtypes == (F16, BFLOAT16) and not wgrad.tf32
    assert wgrad.export_macro == "GPUCONV_WGRAD_TENSOR_OP_KERNEL" and not wgrad.tile.nan_resum
    for v in (v for v in registry.VARIANTS if v.family == "tensor_core"):
        macro = "GPUCONV_WGRAD_TENSOR_OP_KERNEL" if v.op == "wgrad" else "GPUCONV_FPROP_TENSOR_OP_KERNEL"
        assert v.source == "conv2d_tensor_core.cu" and v.export_macro == macro
        assert v.min_compute_capability == 80 and v.emulatable and v.deterministic and not v.grid_stride
        assert v.threads == 128 and v.tile.stages == 3 and (v.tile.warp_m, v.tile.warp_n) == (64, 64)
        assert all(v.static_shared_bytes(d) == 48 * 1024 for d in v.dtypes) and v.dynamic_shared_bytes == 0
    assert registry.get(HALF).export_line(BFLOAT16) == (
        "GPUCONV_FPROP_TENSOR_OP_KERNEL(gpuconv_fprop_tensorop_128x128x32_64x64_3stage_bf16, gpuconv_bf16, float, "
        "128, gpuconv::TensorOpTile<128, 128, 32, 64, 64, 3, false>)")
    assert registry.get(DGRAD_HALF).tile.cpp == "gpuconv::TensorOpTile<128, 128, 32, 64, 64, 3, true>"
    for name in (registry.TENSOR_OP_PACK_INPUT, registry.TENSOR_OP_PACK_WEIGHT, registry.TENSOR_OP_PACK_WEIGHT_FLIPPED):
        pack = registry.get(name)
        assert pack.dtypes == registry.TENSOR_OP_DTYPES and pack.grid_stride and pack.min_compute_capability == 80
    assert registry.dtype_suffix(BFLOAT16) == "bf16" and registry.c_types(BFLOAT16) == ("gpuconv_bf16", "float")
    with pytest.raises(ValueError, match="must divide"):
        registry.TensorOpTile(128, 128, 32, 48, 64, 3)
    with pytest.raises(ValueError, match="at least 2 stages"):
        registry.TensorOpTile(128, 128, 32, 64, 64, 1)


@pytest.mark.parametrize("cc", [None, 80, 90])
@pytest.mark.parametrize("g", [DENSE, GROUPED, DEPTHWISE, FIRST_LAYER], ids=["dense", "grouped", "depthwise", "c3"])
def test_auto_never_picks_tf32_for_float32(g, cc):
    assert TF32 not in plan.candidates("fprop", g, F32, cc)
    assert plan.fixed_rule("fprop", g, F32, cc) != TF32 and not plan.rule_variant("fprop", g, F32, cc).tf32
    chosen = plan.plan_conv("fprop", g, F32, compute_capability=cc)
    assert chosen.variant != TF32 and chosen.algorithm != "tensor_core"
    for family in ("implicit_gemm", "direct"):
        usable = [v for v in registry.conv_variants("fprop") if v.family == family and v.can_run(g, F32, cc)]
        if usable:
            assert plan.plan_conv("fprop", g, F32, family, compute_capability=cc).variant != TF32
    with pytest.raises(ValueError, match="autotuner's choice"):
        plan.plan_conv("fprop", g, F32, tuned=TF32, compute_capability=cc)


def test_tf32_only_when_named():
    by_name = plan.plan_conv("fprop", DENSE, F32, TF32)
    by_family = plan.plan_conv("fprop", DENSE, F32, "tensor_core", compute_capability=90)
    assert by_name.variant == by_family.variant == TF32 and by_family.algorithm == "tensor_core"
    with pytest.raises(ValueError, match="needs compute capability 8.0"):
        plan.plan_conv("fprop", DENSE, F32, TF32, compute_capability=75)
    assert plan.plan_conv("dgrad", DENSE, F32, "tensor_core").variant == DGRAD_TF32
    assert plan.plan_conv("dgrad", DENSE, F32, compute_capability=90).variant == "im2col"
    assert DGRAD_TF32 not in plan.candidates("dgrad", DENSE, F32, 90)
    with pytest.raises(ValueError, match="no tensor_core fprop kernel exists for float64"):
        plan.plan_conv("fprop", DENSE, F64, "tensor_core")
    assert plan.plan_conv("dgrad", FIRST_LAYER, F16, "tensor_core").variant == DGRAD_HALF  # strided: by phase
    assert plan.plan_conv("wgrad", DENSE, F32, "tensor_core").variant == WGRAD_TF32
    assert plan.plan_conv("wgrad", DENSE, F16, "tensor_core").variant == WGRAD_HALF


def test_allow_tf32_lets_auto_choose_tf32():
    """The caller's precision policy (gpuconv.precision: "high" / "medium") passes allow_tf32: auto then treats
    float32 as the fixed rule treats float16 (tensor cores where they apply and prefer the geometry), and the
    autotuner may time the TF32 variants; without it, never."""
    for pass_name, variant in (("fprop", TF32), ("dgrad", DGRAD_TF32), ("wgrad", WGRAD_TF32)):
        assert plan.plan_conv(pass_name, DENSE, F32, compute_capability=90, allow_tf32=True).variant == variant
        assert variant in plan.candidates(pass_name, DENSE, F32, 90, allow_tf32=True)
        assert plan.plan_conv(pass_name, DENSE, F32, compute_capability=90).variant == "im2col"
        assert plan.plan_conv(pass_name, DENSE, F32, compute_capability=75, allow_tf32=True).variant == "im2col"
    assert plan.plan_conv("fprop", DEPTHWISE, F32, allow_tf32=True).variant == "fprop_depthwise_8x32"
    assert plan.plan_conv("fprop", DENSE, F16, allow_tf32=True).variant == HALF
    g = geometry(BY_ID["channels-64"])
    x, w = operands(g, F32)
    backend = EmulatorBackend()
    y = conv.conv2d_forward(x, w, g, backend=backend, allow_tf32=True)
    assert backend.launches[-1].variant.name == TF32
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    expected = reference.conv2d_forward(x64, w64, g)
    assert_close(y, expected, error_bound(g, F32, x64, w64, expected), F32, "allow_tf32")
    conv.conv2d_forward(x, w, g, backend=backend)
    assert backend.launches[-1].variant.name != TF32


@pytest.mark.parametrize("dtype", [F16, BFLOAT16], ids=["float16", "bfloat16"])
def test_the_fixed_rule_takes_tensor_cores_for_half_types(dtype):
    for cc in (None, 80, 86, 90):
        for g in (DENSE, GROUPED):
            chosen = plan.plan_conv("fprop", g, dtype, compute_capability=cc)
            assert chosen.variant == HALF and chosen.algorithm == "tensor_core", (g, cc)
            assert chosen.reason == f"fixed rule: {dtype} on tensor cores (float32 accumulation)"
    # Fewer than 8 channels per group: not preferred -- the SIMT rule, as for float32.
    for g, simt in ((DEPTHWISE, "fprop_depthwise_8x32"), (FIRST_LAYER, "im2col")):
        assert plan.plan_conv("fprop", g, dtype).variant == simt
    # dgrad (strided too: by phase) and wgrad.
    for g in (DENSE, GROUPED, ConvGeometry.create((8, 64, 16, 16), (128, 64, 3, 3), padding=1, stride=2)):
        assert plan.plan_conv("dgrad", g, dtype, compute_capability=90).variant == DGRAD_HALF
        assert plan.plan_conv("wgrad", g, dtype, compute_capability=90).variant == WGRAD_HALF
    # Before sm_80: the SIMT rule.
    assert plan.plan_conv("fprop", DENSE, dtype, compute_capability=75).variant == "im2col"
    assert plan.plan_conv("dgrad", FIRST_LAYER, dtype, compute_capability=90).variant == "im2col"
    assert plan.plan_conv("wgrad", DENSE, dtype, compute_capability=75).variant == "im2col"
    assert plan.plan_conv("wgrad", DEPTHWISE, dtype, compute_capability=90).variant != WGRAD_HALF
    assert HALF in plan.candidates("fprop", DENSE, dtype, 80) and "im2col" in plan.candidates("fprop", DENSE, dtype)
    assert HALF not in plan.candidates("fprop", DENSE, dtype, 75)


@pytest.mark.parametrize("variant, dtype", RUNS, ids=RUN_IDS)
def test_plan_launches_and_workspace(variant, dtype):
    g = ConvGeometry.create((3, 20, 9, 11), (150, 10, 3, 2), padding=(1, 0, 2, 1), stride=2, groups=2)
    p = plan.plan_conv("fprop", g, dtype, variant)
    cgp = 16 if dtype.itemsize == 2 else 12
    packed_input, packed_weight = 3 * 9 * 11 * 2 * cgp, 150 * 3 * 2 * cgp
    assert p.workspace_bytes == (packed_input + packed_weight) * dtype.itemsize
    pack_x, pack_w, gemm = p.launches
    assert (pack_x.variant.name, pack_w.variant.name, gemm.variant.name) == (
        registry.TENSOR_OP_PACK_INPUT, registry.TENSOR_OP_PACK_WEIGHT, variant)
    assert pack_x.grid == plan.elementwise_grid(packed_input) and pack_w.grid == plan.elementwise_grid(packed_weight)
    assert gemm.grid == (-(-3 * g.P * g.Q // 128), 1, 2) and gemm.block == (128, 1, 1)
    assert all(launch.dynamic_shared_bytes == 0 and launch.dtype == dtype for launch in p.launches)


def test_dgrad_plan_runs_the_fprop_of_dy():
    g = ConvGeometry.create((3, 20, 9, 11), (150, 10, 3, 2), padding=(2, 0, 1, 1), dilation=(1, 2), groups=2)
    (phase,) = registry.tensor_op_dgrad_phases(g)
    as_fprop = phase.conv
    assert as_fprop.input_shape == g.output_shape and as_fprop.output_shape == g.input_shape
    assert as_fprop.weight_shape == (20, 75, 3, 2) and as_fprop.pad == (0, 2, 1, 1)
    p = plan.plan_conv("dgrad", g, F16, DGRAD_HALF)
    kgp = 80  # 75 filters per group, padded to 8
    assert p.workspace_bytes == (3 * g.P * g.Q * 2 * kgp + 20 * 3 * 2 * kgp) * 2
    assert p.launches[2].grid == (-(-3 * 9 * 11 // 128), 1, 2)


def test_strided_dgrad_plan_runs_one_fprop_per_phase():
    """7x7 at stride 2 (pad 3): four phases of 4x4, 4x3, 3x4 and 3x3 taps, each a stride-1 fprop of dy onto
    a quarter of dx; dy is packed once, each phase's taps separately; the workspace holds the packed dy, the
    largest packed weight, the largest phase output and the largest phase's taps of w."""
    g = FIRST_LAYER
    phases = registry.tensor_op_dgrad_phases(g)
    assert sorted((p.conv.R, p.conv.S) for p in phases) == [(3, 3), (3, 4), (4, 3), (4, 4)]
    assert all(p.conv.stride == (1, 1) and p.conv.output_shape == (8, 3, 16, 16) for p in phases)
    assert sum(p.conv.R * p.conv.S for p in phases) == g.R * g.S  # every tap in one phase
    p = plan.plan_conv("dgrad", g, F16, DGRAD_HALF)
    assert [launch.variant.name for launch in p.launches] == [
        registry.TENSOR_OP_PACK_INPUT, *[registry.TENSOR_OP_PACK_WEIGHT_FLIPPED, DGRAD_HALF] * 4]
    packed_dy, packed_w, out, taps = 8 * 16 * 16 * 64, 3 * 4 * 4 * 64, 8 * 3 * 16 * 16, 64 * 3 * 4 * 4
    assert p.workspace_bytes == (packed_dy + packed_w + out + taps) * 2
    assert p.launches[2].grid == (-(-8 * 16 * 16 // 128), 1, 1)


def test_wgrad_plan_packs_x_and_dy():
    """wgrad: x and dy packed NHWC (dy by the input pack over dy's shape), then a grid of filters x columns
    (r, s, c) per group and split, float32 partial sums, and their sum."""
    g = ConvGeometry.create((3, 20, 9, 11), (150, 10, 3, 2), padding=(1, 0, 2, 1), stride=2, groups=2)
    for dtype in (F16, BFLOAT16):
        p = plan.plan_conv("wgrad", g, dtype, WGRAD_HALF)
        packed_input, packed_dy = 3 * 9 * 11 * 2 * 16, 3 * g.P * g.Q * 2 * 80  # 75 filters per group -> 80
        assert registry.tensor_op_workspace_shapes(g, dtype, "wgrad")[1] == (3, g.P, g.Q, 160)
        assert p.wgrad_splits == 1  # 90 pixels: no split
        assert p.workspace_bytes == (packed_input + packed_dy) * 2 + 150 * 10 * 3 * 2 * 4
        assert [launch.variant.name for launch in p.launches] == [
            registry.TENSOR_OP_PACK_INPUT, registry.TENSOR_OP_PACK_INPUT, WGRAD_HALF, "wgrad_splitk_reduce"]
        assert p.launches[1].grid == plan.elementwise_grid(packed_dy)
        assert p.launches[2].grid == (1, 1, 2) and p.launches[2].block == (128, 1, 1)  # 75 filters, 96 columns
    # ResNet-50's 3x3 of stage 1 at batch 32: 64 filters x 576 columns is 5 tiles; split to about
    # WGRAD_TARGET_BLOCKS blocks, each a multiple of the 32-pixel slice, none under 512 pixels.
    g = ConvGeometry.create((32, 64, 56, 56), (64, 64, 3, 3), padding=1)
    for variant, dtype in ((WGRAD_HALF, F16), (WGRAD_TF32, F32)):
        p = plan.plan_conv("wgrad", g, dtype, variant)
        tile = registry.get(variant).tile
        pixels = 32 * 56 * 56
        assert p.wgrad_splits == min(-(-plan.WGRAD_TARGET_BLOCKS // 5), pixels // plan.WGRAD_MIN_PIXELS_PER_SPLIT)
        assert p.wgrad_pixels_per_split % tile.block_k == 0 and p.wgrad_pixels_per_split >= 512
        assert (p.wgrad_splits - 1) * p.wgrad_pixels_per_split < pixels <= p.wgrad_splits * p.wgrad_pixels_per_split
        assert p.launches[2].grid == (1, 5, p.wgrad_splits)
        assert p.workspace_bytes == plan.tensor_op_workspace_bytes("wgrad", g, dtype, registry.get(variant))
    # The dy pack alone, bit for bit: (N, P, Q, groups * Kgp), each group's filters zero-padded.
    g = geometry(BY_ID["groups2"])
    x, dy = operands(g, F16, seed=1, pass_name="wgrad")
    p = plan.plan_conv("wgrad", g, F16, WGRAD_HALF)
    shape = registry.tensor_op_workspace_shapes(g, F16, "wgrad")[1]
    assert shape == (2, 5, 5, 16)
    packed = emu.empty(shape, F16)
    EmulatorBackend().launch(p.launches[1], (dy, packed, *conv.conv_shape_args(registry.wgrad_dy_as_input(g))))
    expected = np.zeros(shape, F16)
    for group in range(2):
        expected[..., 8 * group:8 * group + 6] = dy[:, 6 * group:6 * group + 6].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(packed.view(np.uint8), expected.view(np.uint8))


def test_workspace_that_does_not_fit():
    needed = plan.tensor_op_workspace_bytes("fprop", DENSE, F16) + plan.result_bytes("fprop", DENSE, F16)
    with pytest.raises(GPUOutOfMemoryError, match=f"needs {needed:,} bytes"):
        plan.plan_conv("fprop", DENSE, F16, HALF, free_bytes=needed - 1)
    fallback = plan.plan_conv("fprop", DENSE, F16, free_bytes=needed - 1)
    assert fallback.algorithm == "implicit_gemm" and "implicit GEMM instead" in fallback.fallback
    assert plan.plan_conv("fprop", DENSE, F16, free_bytes=needed).variant == HALF
    with pytest.raises(GPUOutOfMemoryError):  # float32 on TF32 by name: nothing else may run instead
        plan.plan_conv("fprop", DENSE, F32, TF32, free_bytes=needed - 1)


def test_applies_refuses_what_32_bit_offsets_cannot_address():
    huge = ConvGeometry.create((2048, 256, 64, 64), (64, 256, 3, 3), padding=1)  # 2^31 packed input elements
    assert not registry.get(HALF).can_run(huge, F16)
    assert plan.plan_conv("fprop", huge, F16).variant == "im2col"
    assert registry.get(HALF).can_run(ConvGeometry.create((1024, 256, 64, 64), (64, 256, 3, 3), padding=1), F16)
