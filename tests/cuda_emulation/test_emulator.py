"""The CPU emulation of CUDA kernels (tests/cuda_emulation) on small kernels of its own.

Correct kernels must give the known answer; each deliberately broken kernel in selftest_kernels.cu must be
reported (divergent barriers, out-of-bounds writes, unwritten outputs, uninitialised shared memory, a
missing barrier under the reverse schedule). If these fail, do not trust tests/test_kernels_emulated.py.
"""
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import emulator as emu

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles kernels with g++")

SELFTEST = Path(__file__).with_name("selftest_kernels.cu")


@pytest.fixture(scope="module")
def module():
    return emu.load_module(SELFTEST, type_map={"selftest_half": np.float16})


@pytest.fixture
def forward(module):
    module.configure(schedule="forward", poison_shared=True)
    yield module
    module.configure(schedule="forward", poison_shared=True)


def test_finds_extern_c_kernels_after_macro_expansion(module):
    names = set(module.kernels)
    assert {"selftest_scale_f16", "selftest_scale_f32", "selftest_scale_f64", "selftest_fill",
            "selftest_block_sum_f32"} <= names
    # A template kernel has no name to launch by; a C++-linkage one is not what the loader exports.
    assert "selftest_template_kernel" not in names and "selftest_cxx_linkage_kernel" not in names
    assert module.cxx_linkage_kernels == ["selftest_cxx_linkage_kernel"]
    with pytest.raises(KeyError, match='extern "C"'):
        module["selftest_cxx_linkage_kernel"]
    sig = module.kernels["selftest_scalars"]
    assert [(p.name, p.is_pointer, str(p.dtype), p.writable) for p in sig.parameters] == [
        ("out", True, "float64", True), ("i", False, "int32", False), ("ll", False, "int64", False),
        ("f", False, "float32", False), ("d", False, "float64", False), ("h", True, "float16", False)]


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_shared_memory_block_reduction(forward, schedule):
    forward.configure(schedule=schedule)
    n, threads = 1000, 256  # the last block is partial
    blocks = -(-n // threads)
    x = emu.to_guarded(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    out = emu.empty(blocks, np.float32)
    forward.launch("selftest_block_sum_f32", blocks, threads, x, out, np.int32(n))
    expected = [x[i * threads:(i + 1) * threads].astype(np.float64).sum() for i in range(blocks)]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert forward.barriers_passed == blocks * 9  # one before the loop, one per halving (8)


def test_thread_and_block_coordinates(forward):
    grid, block = (2, 3, 2), (4, 2, 3)
    blocks, threads = np.prod(grid), np.prod(block)
    out = emu.empty((blocks, threads, 6), np.int32)
    forward.launch("selftest_coordinates", grid, block, out)
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(d) for d in grid[::-1] + block[::-1]), indexing="ij")
    expected = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(blocks, threads, 6)
    np.testing.assert_array_equal(out, expected)


def test_scalar_arguments_reach_the_kernel(forward):
    out = emu.empty(5, np.float64)
    half = np.array([-2.5], dtype=np.float16)
    forward.launch("selftest_scalars", 1, 32, out, np.int32(-7), np.int64(2**40 + 3), np.float32(1.25),
                   np.float64(1e300), half)
    np.testing.assert_array_equal(out, [-7, 2**40 + 3, 1.25, 1e300, -2.5])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_typed_kernels_from_a_macro(forward, dtype):
    n = 300
    x = emu.to_guarded(np.linspace(-3, 3, n).astype(dtype))
    out = emu.empty(n, dtype)
    name = {np.float16: "selftest_scale_f16", np.float32: "selftest_scale_f32", np.float64: "selftest_scale_f64"}
    forward[name[dtype]](((n + 127) // 128,), (128,), (x, out, np.int32(n)))  # the cupy.RawKernel call form
    np.testing.assert_array_equal(out, (2 * x.astype(np.float32)).astype(dtype))


def test_extern_c_block_form(forward):
    out = emu.empty(10, np.float32)
    forward.launch("selftest_fill", 1, 64, out, np.float32(3.5), np.int32(10))
    np.testing.assert_array_equal(out, 3.5)


# ------------------------------------------------------------------------------ broken kernels ---

def test_threads_exiting_before_a_barrier_are_a_deadlock(forward):
    x = emu.to_guarded(np.arange(64, dtype=np.float32))
    out = emu.empty(64, np.float32)
    forward.launch("selftest_early_return_before_barrier", 1, 64, x, out, np.int32(64))  # all reach it: fine
    np.testing.assert_array_equal(out, x[::-1])
    with pytest.raises(emu.KernelLaunchError, match=r"deadlock in block \(0,0,0\): 24 of 64 threads exited "
                                                    r"while 40 wait at __syncthreads\(\).*selftest_kernels.cu:\d+"):
        forward.launch("selftest_early_return_before_barrier", 1, 64, x, out, np.int32(40))


def test_threads_at_different_barriers_are_reported(forward):
    out = emu.empty(64, np.float32)
    with pytest.raises(emu.KernelLaunchError, match=r"divergent barrier in block \(0,0,0\): thread \(0,0,0\) "
                                                    r"waits at selftest_kernels.cu:(\d+) but thread \(1,0,0\)"):
        forward.launch("selftest_barriers_at_different_calls", 1, 64, out)


def test_missing_barrier_is_caught_by_the_reverse_schedule(forward):
    # Each thread reads its left neighbour's shared slot without a barrier in between. Run in order,
    # the neighbour has always written already, so the forward schedule hides the race ...
    x = emu.to_guarded(np.arange(128, dtype=np.float32))
    out = emu.empty(128, np.float32)
    forward.launch("selftest_missing_barrier", 2, 64, x, out)
    expected = np.concatenate([[0], np.arange(63), [64], np.arange(64, 127)]).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    # ... run in reverse, each thread reads a slot not yet written this block: poisoned NaN.
    forward.configure(schedule="reverse")
    forward.launch("selftest_missing_barrier", 2, 64, x, out)
    assert np.isnan(out[1:64]).all() and np.isnan(out[65:]).all()


@pytest.mark.parametrize("kernel", ["selftest_uninitialised_shared", "selftest_uninitialised_shared_in_template"])
def test_reading_unwritten_shared_memory_gives_nan(forward, kernel):
    out = emu.empty(64, np.float32)
    for _ in range(2):  # the poison is renewed for each launch (and block), not only the first
        forward.launch(kernel, 1, 64, out)
        assert np.isnan(out[63]) and (out[:63] == 2).all()


def test_shared_variables_are_listed(module):
    sizes = {v.name: v.size for v in module.shared_variables}
    assert sizes["selftest_block_sum_f32::partial"] == 256 * 4
    assert sizes["read_unwritten_shared<float>(float*)::tile"] == 65 * 4
    assert module.static_shared_bytes()["selftest_uninitialised_shared"] == 65 * 4


def test_write_past_the_end_is_caught(forward):
    out = emu.empty(100, np.float32, label="out")
    with pytest.raises(emu.OutOfBoundsWrite, match=r"buffer out \(400 bytes\): written up to 4 bytes after its end"):
        forward.launch("selftest_write_past_end", 1, 128, out, np.int32(100))
    forward.launch("selftest_write_past_end", 1, 128, out, np.int32(99))  # guards were repaired


def test_write_before_the_start_is_caught(forward):
    out = emu.empty(100, np.float32, label="out")
    with pytest.raises(emu.OutOfBoundsWrite, match=r"written up to 4 bytes before its start"):
        forward.launch("selftest_write_before_start", 1, 128, out, np.int32(100))


def test_unwritten_outputs_stay_nan(forward):
    out = emu.empty(300, np.float32)
    forward.launch("selftest_forgets_tail", 3, 64, out, np.int32(300))
    assert (out[:128] == 0).all() and np.isnan(out[128:]).all()


def test_trap_fails_the_launch(forward):
    out = emu.empty(32, np.int32)
    with pytest.raises(emu.KernelLaunchError, match=r"__trap\(\) in thread \(3,0,0\) of block \(0,0,0\)"):
        forward.launch("selftest_trap", 1, 32, out)


# ------------------------------------------------------------------------ argument checking ---

@pytest.mark.parametrize("args, message", [
    ((np.zeros(4, np.float64), np.float32(1), np.int32(4)), "expected dtype float32, got float64"),
    ((np.zeros(4, np.float32), np.float32(1), 4), "expected a numpy int32 scalar, got int 4"),
    ((np.zeros(4, np.float32), np.float32(1), np.int64(4)), "expected a numpy int32 scalar, got int64"),
    ((np.zeros(4, np.float32), 1.0, np.int32(4)), "expected a numpy float32 scalar, got float"),
    ((np.zeros(4, np.float32), np.float32(1)), "takes 3 arguments, got 2"),
    ((np.zeros((4, 4), np.float32)[:, 0], np.float32(1), np.int32(4)), "not C-contiguous"),
    (([0.0] * 4, np.float32(1), np.int32(4)), "expected a numpy array of float32, got list"),
])
def test_arguments_are_checked_against_the_c_parameters(forward, args, message):
    with pytest.raises(emu.KernelLaunchError, match=message):
        forward.launch("selftest_fill", 1, 32, *args)


def test_read_only_array_for_a_written_parameter_is_refused(forward):
    out = np.zeros(4, np.float32)
    out.flags.writeable = False
    with pytest.raises(emu.KernelLaunchError, match="read-only"):
        forward.launch("selftest_fill", 1, 32, out, np.float32(1), np.int32(4))


@pytest.mark.parametrize("grid, block, message", [
    (0, 32, "invalid grid"), (1, (32, 0), "invalid block"), (1, 2048, "2048 threads"),
    (1, (1, 1, 128), "exceeds CUDA limits"),
])
def test_launch_configuration_is_checked(forward, grid, block, message):
    out = emu.empty(4, np.float32)
    with pytest.raises(emu.KernelLaunchError, match=message):
        forward.launch("selftest_fill", grid, block, out, np.float32(1), np.int32(4))


def test_compiled_library_is_cached(module):
    again = emu.load_module(SELFTEST, type_map={"selftest_half": np.float16})
    assert again.library._name == module.library._name
