"""The emulator's warps and kernels/warp_primitives.cuh, each primitive against a NumPy model of its definition.

The models below are written from the CUDA Programming Guide (shuffles, votes) and the PTX ISA's own tables
("Warp-level matrix load instruction: ldmatrix", "Matrix Fragments for mma.m16n8k16 with floating point
type", "Matrix Fragments for mma.m16n8k8", cvt, cp.async), not from the C++ they test. The kernels are in
tests/cuda_emulation/warp_selftest_kernels.cu. Also: the warp-synchronous bugs the emulator must report
(a missing __syncwarp, a shuffle only part of its mask reaches, a lane of the mask that exited, ...), and
that the header compiles for sm_80 and sm_90 with nvcc and NVRTC into HMMA / LDSM / LDGSTS instructions.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import emulator as emu
from gpuconv._shapes import BFLOAT16

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles kernels with g++")

KERNELS = Path(__file__).with_name("cuda_emulation") / "warp_selftest_kernels.cu"
POISON32 = 0xFFFFFFFF  # what the emulator returns for a shuffle from a lane outside the mask (undefined)
FULL = 0xFFFFFFFF


@pytest.fixture(autouse=True)
def default_placement():
    previous = emu.set_buffer_placement("end")
    yield
    emu.set_buffer_placement(previous)


@pytest.fixture(scope="module")
def module():
    return emu.load_module(KERNELS)


@pytest.fixture
def warp(module):
    module.configure(schedule="forward", poison_shared=True)
    yield module
    module.configure(schedule="forward", poison_shared=True)


def lanes_of(mask: int) -> list[int]:
    return [lane for lane in range(32) if (mask >> lane) & 1]


def existing_lanes(block_threads: int, warp_index: int) -> int:
    count = max(0, min(32, block_threads - 32 * warp_index))
    return (1 << count) - 1


def test_module_compiles_without_warnings(module):
    assert module.compiler_warnings == ""


# -------------------------------------------------------------------------------------------- shuffles ---

def shuffle_source(mode: str, lane: int, arg: int, width: int) -> int:
    """The lane whose value `lane` receives (CUDA Programming Guide, "Warp Shuffle Functions")."""
    first = lane // width * width  # the first lane of the caller's width-lane segment
    if mode == "idx":  # srcLane taken modulo width, within the segment
        return first + arg % width
    if mode == "up":  # lane - delta, unless that leaves the segment: then the caller's own value
        return lane - arg if lane - first >= arg else lane
    if mode == "down":
        return lane + arg if lane - first + arg < width else lane
    source = lane ^ arg  # xor: a later segment gives the caller's own value, an earlier one is allowed
    return lane if source >= first + width else source


SHUFFLE_MODES = ["idx", "up", "down", "xor"]
SHUFFLE_TYPES = {"i32": np.int32, "u32": np.uint32, "f32": np.float32, "f64": np.float64}


def random_values(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(dtype)


@pytest.mark.parametrize("suffix", list(SHUFFLE_TYPES))
@pytest.mark.parametrize("mode", SHUFFLE_MODES)
def test_shuffles_with_random_masks_and_widths(warp, suffix, mode):
    dtype = SHUFFLE_TYPES[suffix]
    rng = np.random.default_rng([SHUFFLE_MODES.index(mode), list(SHUFFLE_TYPES).index(suffix)])
    cases, threads = 48, 48  # warp 1 of each block has 16 lanes: its missing lanes leave every mask
    if suffix == "f32":
        warp.configure(schedule="reverse")
    values = random_values(rng, (cases, threads), dtype)
    low, high = (-64, 65) if mode == "idx" else (0, 32)
    args = rng.integers(low, high, size=(cases, threads)).astype(np.int32)
    widths = rng.choice([1, 2, 4, 8, 16, 32], size=cases)
    masks = np.where(rng.random((cases, 2, 32)) < 0.75, 1, 0)
    masks[::5] = 1  # some full masks
    mask_words = (masks << np.arange(32)).sum(axis=-1).astype(np.uint64).astype(np.uint32)
    config = np.concatenate([widths[:, None].astype(np.uint32), mask_words], axis=1)
    out = emu.empty((cases, threads), dtype)
    warp.launch(f"warp_shuffle_{suffix}", cases, threads, emu.to_guarded(values), emu.to_guarded(args),
                emu.to_guarded(config), out, np.int32(SHUFFLE_MODES.index(mode)))
    got = out.view(np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint64)
    bits = values.view(got.dtype)
    poison = np.array(-1, dtype=np.int64).astype(got.dtype)  # all ones
    for case in range(cases):
        for w in range(2):
            mask = int(mask_words[case, w]) & existing_lanes(threads, w)
            for lane in range(32):
                t = 32 * w + lane
                if t >= threads:
                    continue
                if not (mask >> lane) & 1:
                    assert got[case, t] == poison, "a lane outside the mask wrote its output"  # never written
                    continue
                source = shuffle_source(mode, lane, int(args[case, t]), int(widths[case]))
                expected = bits[case, 32 * w + source] if (mask >> source) & 1 else poison
                assert got[case, t] == expected, (
                    f"case {case} warp {w} lane {lane}: {mode} arg {args[case, t]} width {widths[case]} "
                    f"mask {mask:#010x}: got {got[case, t]:#x}, expected lane {source} ({expected:#x})")


@pytest.mark.parametrize("width", [2, 8, 32])
def test_shuffle_wrappers_and_warp_sum(warp, width):
    x = np.random.default_rng(width).integers(-8, 8, size=64).astype(np.float32)
    out = emu.empty((64, 5), np.float32)
    warp.launch("warp_wrappers", 1, 64, emu.to_guarded(x), out, np.int32(width))
    for t in range(64):
        lane, base = t % 32, t - t % 32
        segment = base + lane // width * width
        assert out[t, 0] == x[segment:segment + width].sum()
        for column, mode, arg in ((1, "idx", 1), (2, "up", 1), (3, "down", 1), (4, "xor", 1)):
            assert out[t, column] == x[base + shuffle_source(mode, lane, arg, width)], (t, mode)


# ----------------------------------------------------------------------------------------------- votes ---

def test_votes_with_random_masks(warp):
    rng = np.random.default_rng(7)
    cases, threads = 40, 48
    predicates = (rng.random((cases, threads)) < rng.random((cases, 1))).astype(np.int32)
    predicates[0] = 1
    predicates[1] = 0
    masks = np.where(rng.random((cases, 2, 32)) < 0.8, 1, 0)
    masks[:4] = 1
    mask_words = (masks << np.arange(32)).sum(axis=-1).astype(np.uint64).astype(np.uint32)
    out = emu.empty((cases, threads, 6), np.uint32)
    warp.launch("warp_votes", cases, threads, emu.to_guarded(predicates * rng.integers(1, 5, predicates.shape)
                                                            .astype(np.int32)), emu.to_guarded(mask_words), out)
    for case in range(cases):
        for w in range(2):
            mask = int(mask_words[case, w]) & existing_lanes(threads, w)
            ballot = sum(1 << lane for lane in lanes_of(mask) if predicates[case, 32 * w + lane])
            expected = [int(ballot == mask), int(ballot != 0), ballot] * 2
            for lane in lanes_of(mask):
                assert list(out[case, 32 * w + lane]) == expected, (case, w, lane, hex(mask))


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_activemask_is_the_lanes_at_the_same_call(warp, schedule):
    warp.configure(schedule=schedule)
    out = emu.empty((48, 3), np.uint32)
    warp.launch("warp_activemask", 1, 48, out, np.int32(20))
    existing = np.array([FULL] * 32 + [0xFFFF] * 16, np.uint32)  # warp 1 has 16 lanes
    parity = np.array([0xAAAAAAAA if t % 2 else 0x55555555 for t in range(48)], np.uint32)
    np.testing.assert_array_equal(out[:, 0], existing)  # converged
    np.testing.assert_array_equal(out[:, 1], existing & parity)  # each branch of an if / else
    lanes = np.array([t % 32 < 20 for t in range(48)])
    np.testing.assert_array_equal(out[lanes, 2], existing[lanes] & 0xFFFFF)  # those that returned are not active
    assert (out[~lanes, 2] == POISON32).all()


# ------------------------------------------------------------------------------------------- syncwarp ---

@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_syncwarp_orders_shared_memory_within_a_warp(warp, schedule):
    warp.configure(schedule=schedule)
    x = np.arange(64, dtype=np.float32)
    out = emu.empty(64, np.float32)
    warp.launch("warp_exchange_synced", 1, 64, emu.to_guarded(x), out)
    np.testing.assert_array_equal(out, [32 * (t // 32) + (t + 1) % 32 for t in range(64)])
    assert warp.warp_collectives == 2


def test_a_missing_syncwarp_reads_poison(warp):
    # Without __syncwarp(), a lane reads its neighbour's slot whether or not the neighbour wrote it yet.
    x = emu.to_guarded(np.arange(64, dtype=np.float32))
    out = emu.empty(64, np.float32)
    warp.launch("warp_exchange_unsynced", 1, 64, x, out)  # forward: lanes 0-30 run before their neighbour
    assert np.isnan(out[:31]).all() and np.isnan(out[32:63]).all()
    warp.configure(schedule="reverse")  # reverse: lane 31 reads lane 0's slot before lane 0 runs
    warp.launch("warp_exchange_unsynced", 1, 64, x, out)
    assert np.isnan(out[[31, 63]]).all() and not np.isnan(out[:31]).any()


# --------------------------------------------------------------------------- warp-synchronous bugs ---

def assert_recovers(module):
    """A correct warp-level launch right after a failed one."""
    x = np.arange(64, dtype=np.float32)
    out = emu.empty(64, np.float32)
    module.launch("warp_exchange_synced", 1, 64, emu.to_guarded(x), out)
    np.testing.assert_array_equal(out[:32], np.roll(x[:32], -1))


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_a_shuffle_at_two_call_sites_is_divergent(warp, schedule):
    warp.configure(schedule=schedule)
    with pytest.raises(emu.KernelLaunchError, match=r"divergent warp primitive .*warp 0: lane \d+ .*reached "
                                                    r"__shfl_xor_sync at warp_selftest_kernels.cu:(\d+) .*but lane "
                                                    r"\d+ .*waits at __shfl_xor_sync at warp_selftest_kernels.cu:"
                                                    r"(?!\1)\d+"):
        warp.launch("warp_divergent_shuffle", 1, 32, emu.empty(32, np.float32))
    assert_recovers(warp)


def test_a_lane_of_the_mask_that_exited_is_a_deadlock(warp):
    out = emu.empty(32, np.float32)
    # forward: lanes 0-19 wait, then 20-31 exit: the scheduler finds nothing left to run
    with pytest.raises(emu.KernelLaunchError, match=r"deadlock at a warp primitive in block \(0,0,0\), warp 0: "
                                                    r"lanes 0-19 wait at __shfl_down_sync at warp_selftest_kernels"
                                                    r".cu:\d+ with mask 0xffffffff, which the other lanes of the "
                                                    r"mask never reach: lanes 20-31 of the mask have exited"):
        warp.launch("warp_shuffle_after_exit", 1, 32, out, np.int32(20))
    assert_recovers(warp)
    warp.configure(schedule="reverse")  # reverse: lanes 31-20 exit first; lane 19 finds them gone at once
    with pytest.raises(emu.KernelLaunchError, match=r"deadlock at a warp primitive .*lane 19 .*reached "
                                                    r"__shfl_down_sync .*but lane 20 .*has exited"):
        warp.launch("warp_shuffle_after_exit", 1, 32, out, np.int32(20))
    assert_recovers(warp)
    warp.launch("warp_shuffle_after_exit", 1, 32, out, np.int32(32))  # all reach it: fine
    np.testing.assert_array_equal(out, [t + 1 if t < 31 else 31 for t in range(32)])


def test_a_partial_warp_may_use_a_full_mask(warp):
    out = emu.empty(20, np.float32)
    warp.launch("warp_shuffle_after_exit", 1, 20, out, np.int32(20))  # lanes 20-31 do not exist
    np.testing.assert_array_equal(out[:19], np.arange(1, 20))
    assert np.isnan(out[19])  # from lane 20, which is in no mask: undefined on the GPU, NaN here


def test_a_shuffle_against_syncthreads_is_a_deadlock(warp):
    with pytest.raises(emu.KernelLaunchError, match=r"deadlock at a warp primitive .*reached __shfl_sync .*but "
                                                    r"lane 5 \(thread \(5,0,0\)\) waits at __syncthreads\(\) at "
                                                    r"warp_selftest_kernels.cu:\d+"):
        warp.launch("warp_shuffle_against_syncthreads", 1, 32, emu.empty(32, np.float32))
    assert_recovers(warp)


def test_mismatched_masks_are_divergent(warp):
    with pytest.raises(emu.KernelLaunchError, match=r"divergent warp primitive .*lane 3 .*with mask 0x0000000f, "
                                                    r"but lane 0 .*with mask 0xffffffff"):
        warp.launch("warp_mismatched_masks", 1, 32, emu.empty(32, np.float32))


def test_a_mask_without_the_calling_lane_is_an_error(warp):
    with pytest.raises(emu.KernelLaunchError, match=r"__shfl_sync at warp_selftest_kernels.cu:\d+ in thread "
                                                    r"\(0,0,0\).*the mask 0x00000002 does not name the calling "
                                                    r"lane 0"):
        warp.launch("warp_mask_without_self", 1, 32, emu.empty(32, np.float32))


def test_a_width_that_is_not_a_power_of_two_is_an_error(warp):
    with pytest.raises(emu.KernelLaunchError, match=r"width 12 is not a power of two"):
        warp.launch("warp_bad_width", 1, 32, emu.empty(32, np.float32))


def test_mma_needs_whole_warps(warp):
    with pytest.raises(emu.KernelLaunchError, match=r"mma.m16n8k16.f32.f16 at .*: it needs all 32 lanes of a "
                                                    r"warp, but warp 1 has 16 threads"):
        warp.launch("warp_mma_partial_warp", 1, 48, emu.empty(48, np.float32))
    assert_recovers(warp)


def test_kernels_without_warp_primitives_count_none(warp):
    warp.launch("warp_exchange_unsynced", 1, 64, emu.to_guarded(np.zeros(64, np.float32)),
                emu.empty(64, np.float32))
    assert warp.warp_collectives == 0


# -------------------------------------------------------------------------------------------- ldmatrix ---

def ldmatrix_model(tile: np.ndarray, perm: np.ndarray, count: int, trans: bool) -> np.ndarray:
    """Registers (32, count) per the PTX ISA: lanes 8i..8i+7 address rows 0-7 of matrix i; lane t receives
    row t/4, elements 2(t%4) and 2(t%4)+1 (low half first) of each matrix -- of its transpose with .trans."""
    regs = np.zeros((32, count), np.uint32)
    for i in range(count):
        matrix = tile[perm[8 * i:8 * i + 8]]  # 8 x 8, row r from the address lane 8i + r gave
        if trans:
            matrix = matrix.T
        for t in range(32):
            lo, hi = matrix[t // 4, 2 * (t % 4)], matrix[t // 4, 2 * (t % 4) + 1]
            regs[t, i] = int(lo) | int(hi) << 16
    return regs


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_ldmatrix_with_permuted_row_addresses(warp, count, trans):
    rng = np.random.default_rng(10 * count + trans)
    tile = rng.integers(0, 2**16, size=(32, 8), dtype=np.uint64).astype(np.uint16)
    perm = rng.permutation(32).astype(np.int32)
    out = emu.empty((32, 4), np.uint32)
    warp.launch("warp_ldmatrix", 1, 32, emu.to_guarded(tile), emu.to_guarded(perm), out, np.int32(count),
                np.int32(trans), np.int32(0))
    np.testing.assert_array_equal(out[:, :count], ldmatrix_model(tile, perm, count, trans))
    assert (out[:, count:] == POISON32).all()  # nothing more was written


@pytest.mark.parametrize("fault, message", [(1, r"lane 2's row address 0x[0-9a-f]+ is not 16-byte aligned"),
                                            (2, r"lane 1's row address 0x[0-9a-f]+ is not 16 bytes of one "
                                                r"__shared__ variable")])
def test_ldmatrix_rejects_bad_row_addresses(warp, fault, message):
    tile = emu.to_guarded(np.zeros((32, 8), np.uint16))
    perm = emu.to_guarded(np.arange(32, dtype=np.int32))
    with pytest.raises(emu.KernelLaunchError, match=r"ldmatrix.x4 at warp_selftest_kernels.cu:\d+ .*" + message):
        warp.launch("warp_ldmatrix", 1, 32, tile, perm, emu.empty((32, 4), np.uint32), np.int32(4), np.int32(0),
                    np.int32(fault))
    assert_recovers(warp)


# ------------------------------------------------------------------------------------------------- mma ---
# The fragment layouts of the PTX ISA, element by element: (lane, index) -> (row, column), index i of the
# fragment's elements a0, a1, ... (two 16-bit elements per b32 register for f16 / bf16, low half first).

def fragment_positions(shape: str, operand: str):
    positions = []
    for lane in range(32):
        g, t = lane >> 2, lane % 4  # groupID, threadID_in_group
        if shape == "m16n8k16" and operand == "A":  # a0..a7
            for i in range(8):
                row = g if i in (0, 1, 4, 5) else g + 8
                col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
                positions.append((lane, i, row, col))
        elif shape == "m16n8k16" and operand == "B":  # b0..b3
            for i in range(4):
                positions.append((lane, i, t * 2 + (i & 1) + (8 if i >= 2 else 0), g))
        elif shape == "m16n8k8" and operand == "A":  # tf32 a0..a3
            for i in range(4):
                positions.append((lane, i, g if i in (0, 2) else g + 8, t if i < 2 else t + 4))
        elif shape == "m16n8k8" and operand == "B":  # tf32 b0, b1
            for i in range(2):
                positions.append((lane, i, t if i == 0 else t + 4, g))
        elif shape == "m16n8k4" and operand == "A":  # tf32 a0, a1
            for i in range(2):
                positions.append((lane, i, g + 8 * i, t))
        elif shape == "m16n8k4" and operand == "B":  # tf32 b0
            positions.append((lane, 0, t, g))
        else:  # C / D, both shapes: c0..c3
            for i in range(4):
                positions.append((lane, i, g if i < 2 else g + 8, t * 2 + (i & 1)))
    return positions


def to_fragments(matrix_bits: np.ndarray, shape: str, operand: str, per_register: int) -> np.ndarray:
    """Registers (32, n) of `matrix_bits` (16- or 32-bit patterns), packed low element first."""
    positions = fragment_positions(shape, operand)
    count = max(i for _, i, _, _ in positions) + 1
    regs = np.zeros((32, count // per_register), np.uint64)
    for lane, i, row, col in positions:
        regs[lane, i // per_register] |= int(matrix_bits[row, col]) << (16 * (i % per_register))
    return regs.astype(np.uint32)


def from_accumulators(d: np.ndarray) -> np.ndarray:
    out = np.full((16, 8), np.nan, np.float32)
    for lane, i, row, col in fragment_positions("", "C"):
        out[row, col] = d[lane, i]
    return out


def accumulator_fragments(c: np.ndarray) -> np.ndarray:
    regs = np.zeros((32, 4), np.float32)
    for lane, i, row, col in fragment_positions("", "C"):
        regs[lane, i] = c[row, col]
    return regs


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (finite inputs), via float64 arithmetic."""
    return np.array([bf16_model(int(b)) for b in np.asarray(x, np.float32).view(np.uint32).ravel()],
                    np.uint16).reshape(np.shape(x))


def bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def run_mma(module, a_regs, b_regs, c_regs, kind, in_place=False):
    blocks = a_regs.shape[0]
    d = emu.empty((blocks, 32, 4), np.float32)
    module.launch("warp_mma", blocks, 32, emu.to_guarded(a_regs), emu.to_guarded(b_regs), emu.to_guarded(c_regs),
                  d, np.int32(kind), np.int32(in_place))
    return d


def mma_problem(kind: str, seed: int, integers: bool):
    """Random A, B (as their input bit patterns and values), C; K = 16 (f16, bf16), 8 (tf32) or 4 (tf32k4)."""
    rng = np.random.default_rng(seed)
    k = {"tf32": 8, "tf32k4": 4}.get(kind, 16)
    draw = (lambda shape: rng.integers(-4, 5, size=shape).astype(np.float32)) if integers else \
        (lambda shape: rng.standard_normal(shape).astype(np.float32))
    a, b, c = draw((16, k)), draw((k, 8)), draw((16, 8))
    if kind == "f16":
        a_bits, b_bits = a.astype(np.float16).view(np.uint16), b.astype(np.float16).view(np.uint16)
        a_val, b_val = a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)
    elif kind == "bf16":
        a_bits, b_bits = bf16_bits(a), bf16_bits(b)
        a_val, b_val = bf16_values(a_bits).astype(np.float64), bf16_values(b_bits).astype(np.float64)
    else:  # raw float32 bits: the tf32 mma ignores their low 13 bits
        a_bits, b_bits = a.view(np.uint32), b.view(np.uint32)
        a_val = (a_bits & 0xFFFFE000).view(np.float32).astype(np.float64)
        b_val = (b_bits & 0xFFFFE000).view(np.float32).astype(np.float64)
    return a_bits, b_bits, c, a_val @ b_val + c, np.abs(a_val) @ np.abs(b_val) + np.abs(c)


KINDS = {"f16": 0, "bf16": 1, "tf32": 2, "tf32k4": 3}
SHAPES = {"f16": "m16n8k16", "bf16": "m16n8k16", "tf32": "m16n8k8", "tf32k4": "m16n8k4"}


def fragments_of(kind, a_bits, b_bits, c):
    """(A, B, C) registers per lane, A and B zero-padded to the self-test kernel's 4 and 2 registers."""
    per = 1 if kind.startswith("tf32") else 2
    a, b = to_fragments(a_bits, SHAPES[kind], "A", per), to_fragments(b_bits, SHAPES[kind], "B", per)
    pad = lambda regs, n: np.pad(regs, ((0, 0), (0, n - regs.shape[1])))  # noqa: E731
    return pad(a, 4), pad(b, 2), accumulator_fragments(c)


@pytest.mark.parametrize("kind", list(KINDS))
def test_mma_computes_a_times_b_plus_c_with_the_isa_fragments(warp, kind):
    problems = [mma_problem(kind, seed, integers=seed % 2 == 0) for seed in range(4)]
    frags = [fragments_of(kind, p[0], p[1], p[2]) for p in problems]
    d = run_mma(warp, *(np.stack([f[j] for f in frags]) for j in range(3)), KINDS[kind])
    for seed, (problem, block) in enumerate(zip(problems, d)):
        got, expected, scale = from_accumulators(block), problem[3], problem[4]
        if seed % 2 == 0:  # small integers: every product and partial sum is exact
            np.testing.assert_array_equal(got, expected)
        else:
            assert (np.abs(got - expected) <= 1e-6 * scale + 1e-30).all(), np.abs(got - expected).max()
    in_place = run_mma(warp, *(f[None] for f in frags[1]), KINDS[kind], in_place=True)  # d is c's registers
    np.testing.assert_array_equal(in_place, d[1:2])


MISMAPPINGS = {
    "a1 and a2 registers swapped": lambda a, b, c: (a[:, [0, 2, 1, 3]], b, c),
    "b0 and b1 registers swapped": lambda a, b, c: (a, b[:, [1, 0]], c),
    "c1 and c2 swapped": lambda a, b, c: (a, b, c[:, [0, 2, 1, 3]]),
    "lanes as tig * 8 + groupID": lambda a, b, c: (a[[(l % 8) * 4 + l // 8 for l in range(32)]], b, c),
    "16-bit halves swapped": lambda a, b, c: ((a >> 16) | (a << 16), b, c),
}


@pytest.mark.parametrize("kind, mistake", [(kind, mistake) for kind in ("f16", "tf32", "tf32k4")
                                            for mistake in MISMAPPINGS
                                            if kind == "f16" or "halves" not in mistake])  # tf32: 1 per register
def test_a_mismapped_fragment_is_caught(warp, kind, mistake):
    a_bits, b_bits, c, expected, scale = mma_problem(kind, 11, integers=False)
    good = fragments_of(kind, a_bits, b_bits, c)
    bad = MISMAPPINGS[mistake](*good)
    d = run_mma(warp, *(np.stack([g, w]) for g, w in zip(good, bad)), KINDS[kind])
    assert (np.abs(from_accumulators(d[0]) - expected) <= 1e-6 * scale).all()
    wrong = np.abs(from_accumulators(d[1]) - expected) > 1e-3 * scale
    assert wrong.any(), f"the emulated mma accepted fragments with {mistake}"


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_ldmatrix_then_mma_computes_a_warp_gemm(warp, kind):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((16, 16)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)
    if kind == "f16":
        a_bits, b_bits = a.astype(np.float16), b.astype(np.float16)
        a_val, b_val = a_bits.astype(np.float64), b_bits.astype(np.float64)
    else:
        a_bits, b_bits = bf16_bits(a), bf16_bits(b)
        a_val, b_val = bf16_values(a_bits).astype(np.float64), bf16_values(b_bits).astype(np.float64)
    d = emu.empty((16, 8), np.float32)
    if kind == "bf16":  # the kernel takes bfloat16 arrays (ml_dtypes), these bits
        a_bits, b_bits = a_bits.view(BFLOAT16), b_bits.view(BFLOAT16)
    args = (emu.to_guarded(a_bits), emu.to_guarded(b_bits), d)
    warp.launch(f"warp_gemm_{kind}", 1, 32, *args, np.int32(0))
    scale = np.abs(a_val) @ np.abs(b_val)
    assert (np.abs(d - a_val @ b_val) <= 1e-6 * scale).all()
    assert warp.warp_collectives == 4  # __syncwarp, two ldmatrix, one mma
    warp.launch(f"warp_gemm_{kind}", 1, 32, *args, np.int32(1))  # a[1] and a[2] swapped: wrong result
    assert (np.abs(d - a_val @ b_val) > 1e-3 * scale).any()


def test_tf32_mma_truncates_raw_float32_inputs_and_to_tf32_rounds_them(warp):
    # 0x3F801FFF = 1 + 8191 * 2^-23: truncated to 1.0, rounded (to nearest) to 1 + 2^-10.
    a = np.full((16, 8), np.uint32(0x3F801FFF)).view(np.float32)
    b = np.ones((8, 8), np.float32)
    d = emu.empty((16, 8), np.float32)
    warp.launch("warp_gemm_tf32", 1, 32, emu.to_guarded(a), emu.to_guarded(b), d, np.int32(0))
    assert (d == 8.0).all()
    warp.launch("warp_gemm_tf32", 1, 32, emu.to_guarded(a), emu.to_guarded(b), d, np.int32(1))
    assert (d == 8 * (1 + 2.0**-10)).all()


# ----------------------------------------------------------------------------------------- conversions ---

def round_to_mantissa_bits(bits: int, mantissa_bits: int, ties: str) -> int:
    """A finite float32 (its bits) rounded to `mantissa_bits` stored mantissa bits, in float64 arithmetic:
    the spacing of the result's binade is 2^(e - mantissa_bits) for |x| in [2^e, 2^(e+1)), e >= -126."""
    x = float(np.uint32(bits).view(np.float32))
    if x == 0.0:
        return bits
    magnitude = abs(x)
    _, exponent = np.frexp(magnitude)  # magnitude = m * 2^exponent, m in [0.5, 1)
    spacing = 2.0 ** (max(int(exponent) - 1, -126) - mantissa_bits)
    units = magnitude / spacing  # exact: a float32 has at most 24 significant bits
    rounded = np.floor(units + 0.5) if ties == "away" else np.rint(units)  # rint: ties to even
    result = rounded * spacing
    if result >= 2.0**128:
        result = np.inf
    return int(np.float32(np.copysign(result, x)).view(np.uint32))


def tf32_model(bits: int) -> int:
    """cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits. Inf / NaN: low 13 bits
    cleared, not rounded (what ptxas emits for sm_80 and sm_90; see test_sass_of_to_tf32_matches_the_model)."""
    if bits & 0x7F800000 == 0x7F800000:
        return bits & 0xFFFFE000
    return round_to_mantissa_bits(bits, 10, "away")


def bf16_model(bits: int) -> int:
    """float32 -> bfloat16 (its bits), round to nearest even; NaN -> None (any NaN will do)."""
    if bits & 0x7FFFFFFF > 0x7F800000:
        return None
    return round_to_mantissa_bits(bits, 7, "even") >> 16


CRAFTED_TF32 = [
    0x00000000, 0x80000000, 0x3F800000, 0x3F800FFF, 0x3F801000, 0xBF801000, 0x3F801001, 0x3F802000,
    0x3F803000, 0xBF803000, 0x3F803FFF, 0x3FFFF000, 0xBFFFF000, 0x3FFFEFFF, 0x7F7FE000, 0x7F7FEFFF,
    0x7F7FF000, 0x7F7FFFFF, 0xFF7FF000, 0x00000FFF, 0x00001000, 0x80001000, 0x00003000, 0x007FF000,
    0x007FFFFF, 0x00800000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC01234, 0x7F801000, 0x7F800001,
]


def test_to_tf32_rounds_to_nearest_ties_away_from_zero(warp):
    rng = np.random.default_rng(5)
    bits = np.concatenate([np.array(CRAFTED_TF32, np.uint32),
                           rng.integers(0, 2**32, size=4000, dtype=np.uint64).astype(np.uint32)])
    out = emu.empty(bits.size, np.uint32)
    warp.launch("warp_to_tf32", 4, 256, emu.to_guarded(bits), out, np.int32(bits.size))
    expected = np.array([tf32_model(int(b)) for b in bits], np.uint32)
    mismatch = np.flatnonzero(out != expected)
    assert mismatch.size == 0, [(hex(bits[i]), hex(out[i]), hex(expected[i])) for i in mismatch[:8]]
    got = dict(zip(CRAFTED_TF32, out[:len(CRAFTED_TF32)]))
    assert got[0x3F801000] == 0x3F802000 and got[0xBF801000] == 0xBF802000  # a tie goes away from zero
    assert got[0x3F800FFF] == 0x3F800000 and got[0x7F7FF000] == 0x7F800000  # below a tie; overflow to inf
    assert np.isnan(np.uint32(got[0x7FC00000]).view(np.float32))


CRAFTED_BF16 = [
    0x00000000, 0x80000000, 0x3F800000, 0x3F807FFF, 0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000,
    0x3F808001, 0x3FFF8000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000, 0x00008000, 0x00018000,
    0x00007FFF, 0x007F8000, 0x7F800000, 0xFF800000,
]
NANS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F807FFF, 0xFF800001, 0x7FFFFFFF, 0x7FA00000]


def test_float_to_bf16_rounds_to_nearest_even_and_keeps_nan(warp):
    rng = np.random.default_rng(6)
    bits = np.concatenate([np.array(CRAFTED_BF16 + NANS, np.uint32),
                           rng.integers(0, 2**32, size=4000, dtype=np.uint64).astype(np.uint32)])
    result = emu.empty(bits.size, BFLOAT16)
    warp.launch("warp_float_to_bf16", 4, 256, emu.to_guarded(bits), result, np.int32(bits.size))
    out = result.view(np.uint16)
    for b, got in zip(bits, out):
        expected = bf16_model(int(b))
        if expected is None:
            assert got & 0x7F80 == 0x7F80 and got & 0x7F != 0, f"NaN {b:#010x} -> {got:#06x}, not a NaN"
        else:
            assert got == expected, f"{b:#010x} -> {got:#06x}, expected {expected:#06x}"
    got = dict(zip(CRAFTED_BF16, out))
    assert got[0x3F808000] == 0x3F80 and got[0x3F818000] == 0x3F82  # ties to even, both ways
    assert got[0x7F7F8000] == 0x7F80  # the tie above the largest bfloat16 rounds to infinity


def test_bf16_to_float_is_exact_for_every_pattern(warp):
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = emu.empty(bits.size, np.uint32)
    warp.launch("warp_bf16_to_float", 64, 256, emu.to_guarded(bits.view(BFLOAT16)), out, np.int32(bits.size))
    np.testing.assert_array_equal(out, bits.astype(np.uint32) << 16)


# -------------------------------------------------------------------------------------------- cp.async ---

@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_cp_async_lands_only_after_its_wait(warp, schedule):
    warp.configure(schedule=schedule)
    x = np.arange(256, dtype=np.float32)
    before, after = emu.empty(256, np.float32), emu.empty(256, np.float32)
    warp.launch("warp_cp_async_visibility", 1, 64, emu.to_guarded(x), before, after)
    assert np.isnan(before).all(), "shared memory held the data before cp.async.wait_group"
    np.testing.assert_array_equal(after, np.roll(x.reshape(64, 4), -1, axis=0).ravel())


def test_cp_async_groups_4_8_and_zero_filled_16_bytes(warp):
    x = np.arange(1, 8 * 64 + 1, dtype=np.float32)
    out = emu.empty((64, 4, 8), np.float32)
    warp.launch("warp_cp_async_groups", 1, 64, emu.to_guarded(x), out)
    src = x.reshape(64, 8)
    nan = np.full(64, np.nan, np.float32)
    tile4, tile8, tile16, last = src[:, 0], src[:, 2:4], np.concatenate([src[:, 4:7], np.zeros((64, 1))], 1), src[:, 1]
    np.testing.assert_array_equal(out[:, 0, 0], tile4)  # wait_group 2: group 0 only
    assert np.isnan(out[:, 0, 1:]).all()
    np.testing.assert_array_equal(out[:, 1, :3], np.column_stack([tile4, tile8]))  # wait_group 1: groups 0, 1
    assert np.isnan(out[:, 1, 3:]).all()
    np.testing.assert_array_equal(out[:, 2, :7], np.column_stack([tile4, tile8, tile16]))  # wait_group 0
    np.testing.assert_array_equal(out[:, 2, 7], nan)  # the uncommitted copy is still pending
    np.testing.assert_array_equal(out[:, 3], np.column_stack([tile4, tile8, tile16, last]))  # wait_all


@pytest.mark.parametrize("which, problem", [(1, "the destination is not aligned to the size"),
                                            (2, "the destination is not in shared memory"),
                                            (3, "the source is in shared memory")])
def test_cp_async_rejects_bad_addresses(warp, which, problem):
    with pytest.raises(emu.KernelLaunchError, match=r"cp.async of 16 bytes .* at warp_selftest_kernels.cu:\d+ in "
                                                    r"thread \(0,0,0\) of block \(0,0,0\): " + problem):
        warp.launch("warp_cp_async_bad", 1, 32, emu.to_guarded(np.zeros(128, np.float32)),
                    emu.empty(128, np.float32), np.int32(which))
    assert_recovers(warp)


# ------------------------------------------------------------------------------ GPU code: nvcc, NVRTC ---

def cuda_tool(name: str) -> str | None:
    try:
        from gpuconv.cuda.loader import find_cuda_tool
    except ImportError:  # pragma: no cover
        return shutil.which(name)
    return find_cuda_tool(name)


SASS_NEEDED = {  # instruction -> the primitive that must compile to it
    "HMMA.16816.F32": "mma_m16n8k16_f16", "HMMA.16816.F32.BF16": "mma_m16n8k16_bf16",
    "HMMA.1688.F32.TF32": "mma_m16n8k8_tf32", "HMMA.1684.F32.TF32": "mma_m16n8k4_tf32", "LDSM.16.M88.4": "ldmatrix_x4", "LDSM.16.MT88.2": "ldmatrix_x2_trans",
    "LDSM.16.M88": "ldmatrix_x1", "LDGSTS.E.BYPASS.128": "cp_async_16",
    "LDGSTS.E.BYPASS.128.ZFILL": "cp_async_16_zfill",
    "LDGSTS.E": "cp_async_4", "LDGSTS.E.64": "cp_async_8", "LDGDEPBAR": "cp_async_commit_group",
    "DEPBAR.LE": "cp_async_wait_group", "SHFL.IDX": "__shfl_sync", "SHFL.BFLY": "__shfl_xor_sync",
    "VOTE.ALL": "__all_sync",
}


@pytest.fixture(scope="module")
def sass(tmp_path_factory):
    """SASS of the self-test kernels compiled by nvcc, per architecture."""
    nvcc, cuobjdump = shutil.which("nvcc"), cuda_tool("cuobjdump")
    if nvcc is None:
        pytest.skip("nvcc not found: cannot check that warp_primitives.cuh compiles for sm_80 / sm_90")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or the nvidia-cuda-cuobjdump wheel): cannot read SASS")
    listings = {}
    for arch in ("sm_80", "sm_90"):
        cubin = tmp_path_factory.mktemp(arch) / "warp.cubin"
        result = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-o", str(cubin), str(KERNELS)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"nvcc -arch={arch} failed:\n{result.stderr[-4000:]}"
        assert "warning" not in result.stderr.lower(), result.stderr
        listings[arch] = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                                        check=True).stdout
    return listings


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_the_primitives_to_tensor_core_instructions(sass, arch):
    opcodes = set(re.findall(r"\b([A-Z][A-Z0-9]*(?:\.[A-Z0-9]+)*)\b(?= )", sass[arch]))
    missing = {op: what for op, what in SASS_NEEDED.items() if op not in opcodes}
    assert not missing, f"{arch}: no {sorted(missing)} in the SASS (from {sorted(set(missing.values()))})"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_sass_of_to_tf32_matches_the_model(sass, arch):
    # cvt.rna.tf32.f32 becomes: if |x| < inf (not NaN): x += 0x1000; x &= 0xffffe000 -- tf32_model above.
    function = sass[arch].split("Function : warp_to_tf32")[1].split("Function : ")[0]
    assert re.search(r"FSETP\.GEU\.AND P(\d), PT, \|R\d+\|, \+INF", function), function
    assert "0x1000" in function and re.search(r"LOP3\.LUT R\d+, R\d+, 0xffffe000", function), function


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_the_primitives(arch):
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) is not installed")
    source = emu.read_kernel_source(KERNELS)  # includes inlined, as gpuconv's loader does for NVRTC
    err, program = nvrtc.nvrtcCreateProgram(source.encode(), b"warp_selftest_kernels.cu", 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    try:
        options = [b"-std=c++17", f"-arch={arch}".encode(), b"-ftz=true"]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
