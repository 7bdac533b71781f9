"""The CPU emulation of CUDA kernels (tests/cuda_emulation) on small kernels of its own.

Correct kernels must give the known answer; each deliberately broken kernel in selftest_kernels.cu must be
reported (divergent barriers, out-of-bounds reads and writes, wild pointers, unwritten outputs,
uninitialised shared memory, a missing barrier under the reverse schedule, a fiber stack overflow), and the
emulator must work normally for the next launch. If these fail, do not trust tests/test_kernels_emulated.py.
"""
import ctypes
import gc
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from cuda_emulation import emulator as emu

pytestmark = pytest.mark.skipif(not emu.compiler_available(),
                                reason="g++ not found: the CUDA emulation compiles kernels with g++")

SELFTEST = Path(__file__).with_name("selftest_kernels.cu")


@pytest.fixture(autouse=True)
def default_placement():
    """Every test starts with the default placement "end", whatever GPUCONV_EMU_BUFFER_PLACEMENT says."""
    previous = emu.set_buffer_placement("end")
    yield
    emu.set_buffer_placement(previous)


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
    # Placement "end" (the default): the element after the last one is on a guard page, so the write faults.
    out = emu.empty(100, np.float32, label="out")
    with pytest.raises(emu.OutOfBoundsAccess, match=(
            r"^out-of-bounds write of buffer out float32\[100\] at byte offset 400 \(element 100, 0 bytes past "
            r"its end\) by thread \(100,0,0\) of block \(0,0,0\) in kernel selftest_write_past_end, "
            r"at selftest_kernels.cu:\d+ .*; the buffer is argument 0 `float\* __restrict__ out`$")) as caught:
        forward.launch("selftest_write_past_end", 1, 128, out, np.int32(100))
    error = caught.value
    assert (error.buffer, error.offset, error.is_write, error.thread, error.block) == (
        "out float32[100]", 400, True, (100, 0, 0), (0, 0, 0))
    assert_recovers(forward)
    forward.launch("selftest_write_past_end", 1, 128, out, np.int32(99))  # in bounds: fine
    assert (out == 1).all()


def test_write_past_the_end_into_the_slack_is_caught_after_the_launch(forward):
    # Placement "start": the bytes after the end are NaN slack, checked (and repaired) after the launch.
    out = emu.empty(100, np.float32, label="out", placement="start")
    with pytest.raises(emu.OutOfBoundsWrite, match=r"buffer out \(400 bytes\): written up to 4 bytes after its end"):
        forward.launch("selftest_write_past_end", 1, 128, out, np.int32(100))
    forward.launch("selftest_write_past_end", 1, 128, out, np.int32(99))  # guards were repaired


def test_write_before_the_start_is_caught(forward):
    out = emu.empty(100, np.float32, label="out")  # "end": the slack before the start catches it
    with pytest.raises(emu.OutOfBoundsWrite, match=r"written up to 4 bytes before its start"):
        forward.launch("selftest_write_before_start", 1, 128, out, np.int32(100))
    out = emu.empty(100, np.float32, label="out", placement="start")  # "start": a guard page does, at once
    with pytest.raises(emu.OutOfBoundsAccess, match=r"^out-of-bounds write of buffer out float32\[100\] at byte "
                                                    r"offset -4 \(element -1, 4 bytes before its start\) by "
                                                    r"thread \(0,0,0\) of block \(0,0,0\)"):
        forward.launch("selftest_write_before_start", 1, 128, out, np.int32(100))
    assert_recovers(forward)


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


# ------------------------------------------------------------ out-of-bounds reads (guard pages) ---

def assert_recovers(module):
    """A correct launch right after a failed one: every block, barrier and shared array works."""
    n, threads = 1000, 256
    x = emu.to_guarded(np.random.default_rng(1).standard_normal(n).astype(np.float32))
    out = emu.empty(4, np.float32)
    module.launch("selftest_block_sum_f32", 4, threads, x, out, np.int32(n))
    expected = [x[i * threads:(i + 1) * threads].astype(np.float64).sum() for i in range(4)]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert module.barriers_passed == 4 * 9


def test_read_past_the_end_whose_value_is_discarded(forward):
    x = emu.to_guarded(np.arange(100, dtype=np.float32), label="x")
    out = emu.empty(100, np.float32)
    with pytest.raises(emu.OutOfBoundsAccess, match=(
            r"^out-of-bounds read of buffer x float32\[100\] at byte offset 400 \(element 100, 0 bytes past its "
            r"end\) by thread \(36,0,0\) of block \(1,0,0\) in kernel selftest_read_past_end_discarded, "
            r"at selftest_kernels.cu:\d+ \(in selftest_read_past_end_discarded\); "
            r"the buffer is argument 0 `const float\* __restrict__ x`$")) as caught:
        forward.launch("selftest_read_past_end_discarded", 2, 64, x, out, np.int32(100))
    assert (caught.value.is_write, caught.value.offset, caught.value.thread) == (False, 400, (36, 0, 0))
    assert_recovers(forward)
    # The kernel is right when the grid covers the buffer exactly ...
    x128, out128 = emu.to_guarded(np.arange(128, dtype=np.float32)), emu.empty(128, np.float32)
    forward.launch("selftest_read_past_end_discarded", 2, 64, x128, out128, np.int32(128))
    np.testing.assert_array_equal(out128, 2 * x128)
    # ... and the NaN slack of placement "start" does not see the read at all: it only catches underruns.
    x_start = emu.to_guarded(np.arange(100, dtype=np.float32), placement="start")
    forward.launch("selftest_read_past_end_discarded", 2, 64, x_start, out, np.int32(100))
    np.testing.assert_array_equal(out, 2 * x_start)


def test_read_past_the_end_used_only_in_a_comparison(forward):
    x = emu.to_guarded(np.sin(np.arange(100)).astype(np.float32), label="x")
    out = emu.empty(100, np.float32)
    forward.configure(schedule="reverse")  # the fault stops the launch at the first bad read in any order
    with pytest.raises(emu.OutOfBoundsAccess, match=r"^out-of-bounds read of buffer x float32\[100\] at byte "
                                                    r"offset 400 \(element 100, 0 bytes past its end\) by thread "
                                                    r"\(99,0,0\) of block \(0,0,0\) in kernel "
                                                    r"selftest_read_past_end_in_comparison"):
        forward.launch("selftest_read_past_end_in_comparison", 1, 128, x, out, np.int32(100))
    assert_recovers(forward)


def test_read_before_the_start_is_caught_with_placement_start(forward):
    values = np.cos(np.arange(100)).astype(np.float32)
    out = emu.empty(100, np.float32)
    with emu.buffer_placement("start"):
        x = emu.to_guarded(values, label="x")
    with pytest.raises(emu.OutOfBoundsAccess, match=r"^out-of-bounds read of buffer x float32\[100\] at byte "
                                                    r"offset -4 \(element -1, 4 bytes before its start\) by "
                                                    r"thread \(0,0,0\) of block \(0,0,0\) in kernel "
                                                    r"selftest_read_before_start, at selftest_kernels.cu:\d+"):
        forward.launch("selftest_read_before_start", 1, 128, x, out, np.int32(100))
    assert_recovers(forward)
    # With placement "end", x[-1] is in the NaN slack: the kernel runs, and x[-1] < x[0] is false.
    x_end = emu.to_guarded(values)
    forward.launch("selftest_read_before_start", 1, 128, x_end, out, np.int32(100))
    np.testing.assert_array_equal(out, np.concatenate([[0], values[:-1] < values[1:]]).astype(np.float32))


@pytest.mark.parametrize("placement, offset, where", [
    ("end", 100 + 2048, "8192 bytes past its end"),           # several KiB past the end
    ("end", 100 + 200_000, "800000 bytes past its end"),      # far past it, still within the guard
    ("end", -5000, "20000 bytes before its start"),           # an underrun beyond the slack faults too
    ("start", -3000, "12000 bytes before its start"),
    ("start", 100 + 2048, "8192 bytes past its end"),         # past the slack: the guard after
])
def test_reads_far_outside_a_buffer(forward, placement, offset, where):
    x = emu.to_guarded(np.ones(100, np.float32), label="x", placement=placement)
    out = emu.empty(32, np.float32)
    with pytest.raises(emu.OutOfBoundsAccess, match=rf"^out-of-bounds read of buffer x float32\[100\] at byte "
                                                    rf"offset {4 * offset} \(element {offset}, {where}\) by "
                                                    rf"thread \(0,0,0\) of block \(0,0,0\)"):
        forward.launch("selftest_read_at", 1, 32, x, out, np.int64(offset))
    assert_recovers(forward)
    forward.launch("selftest_read_at", 1, 32, x, out, np.int64(99))  # the last element: fine
    assert (out == 1).all()


def test_any_read_of_a_zero_size_buffer_faults(forward):
    for placement in emu.PLACEMENTS:
        x = emu.empty((0, 4), np.float32, label="nothing", placement=placement)
        out = emu.empty(32, np.float32)
        with pytest.raises(emu.OutOfBoundsAccess, match=r"of buffer nothing float32\[0, 4\] at byte offset 0 "
                                                        r"\(element 0, 0 bytes past its end\)"):
            forward.launch("selftest_read_at", 1, 32, x, out, np.int64(0))
    assert_recovers(forward)


@pytest.mark.parametrize("address, write, what", [
    (0, 0, r"read of address 0x0, in no buffer from emu.empty/to_guarded: a wild pointer \(a null pointer\)"),
    (0x40, 1, r"write of address 0x40, in no buffer .*\(a null pointer plus an offset\)"),
    (-(2 ** 63), 1, r"read or write of a non-canonical address \(a wild pointer; .*general protection fault\)"),
])
def test_wild_pointers_are_reported(forward, address, write, what):
    out = emu.empty(32, np.float32)
    with pytest.raises(emu.OutOfBoundsAccess, match=rf"^out-of-bounds {what} by thread \(1,0,0\) of block "
                                                    rf"\(0,0,0\) in kernel selftest_wild_pointer") as caught:
        forward.launch("selftest_wild_pointer", 1, 32, out, np.int64(address), np.int32(write))
    assert caught.value.buffer is None
    assert_recovers(forward)


def test_a_fault_next_to_an_unguarded_argument_names_it(forward):
    # A plain array (not registered by emu.empty) that happens to end at an inaccessible page.
    _, _, pages = emu._map_guarded(emu.PAGE_BYTES)
    plain = np.frombuffer(pages, np.float32)
    plain[...] = 1
    out = emu.empty(32, np.float32)
    with pytest.raises(emu.OutOfBoundsAccess, match=r"read of address 0x[0-9a-f]+, in no buffer from "
                                                    r"emu.empty/to_guarded: a wild pointer \(it is 4 bytes past "
                                                    r"the end of argument 0 `const float\* __restrict__ x`, an "
                                                    r"unguarded array not from emu.empty\)"):
        forward.launch("selftest_read_at", 1, 32, plain, out, np.int64(plain.size + 1))


def test_access_to_a_freed_buffer_is_a_wild_pointer(forward):
    out = emu.empty(32, np.float32)
    x = emu.empty(16, np.float32)
    address = x.ctypes.data
    del x
    gc.collect()
    with pytest.raises(emu.OutOfBoundsAccess, match=rf"read of address {address:#x}, in no buffer"):
        forward.launch("selftest_wild_pointer", 1, 32, out, np.int64(address), np.int32(0))


def test_fiber_stack_overflow_is_reported(module):
    out = emu.empty(64, np.float32)
    try:
        with pytest.raises(emu.KernelLaunchError, match=r"stack overflow in thread \(\d+,0,0\) of block \(0,0,0\): "
                                                        r"its 64 KiB fiber stack is exhausted"):
            module.launch("selftest_large_local_array", 1, 64, out)
        assert_recovers(module)
        module.configure(stack_kib=512)
        module.launch("selftest_large_local_array", 1, 64, out)
        assert (out == 1024).all()
    finally:
        module.configure(stack_kib=64)
    assert_recovers(module)


def test_integer_division_by_zero_fails_the_launch(forward):
    out = emu.empty(32, np.int32)
    with pytest.raises(emu.KernelLaunchError, match=r"arithmetic fault \(SIGFPE: integer division by zero\) in "
                                                    r"thread \(0,0,0\) of block \(0,0,0\) in kernel "
                                                    r"selftest_divide_by, at selftest_kernels.cu:\d+"):
        forward.launch("selftest_divide_by", 1, 32, out, np.int32(0))
    forward.launch("selftest_divide_by", 1, 32, out, np.int32(2))
    np.testing.assert_array_equal(out, np.arange(32) // 2)


def _signal_state() -> tuple:
    """The process's SIGSEGV, SIGBUS and SIGFPE handlers and this thread's signal stack, as libc sees them."""
    libc = ctypes.CDLL(None)
    handlers = []
    for number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE):
        action = (ctypes.c_char * 512)()  # larger than any struct sigaction; the handler comes first
        assert libc.sigaction(number, None, action) == 0
        handlers.append(ctypes.c_void_p.from_buffer(action).value)
    stack = (ctypes.c_char * 64)()  # stack_t: ss_sp first
    assert libc.sigaltstack(None, stack) == 0
    return tuple(handlers), ctypes.c_void_p.from_buffer(stack).value


def test_launches_restore_the_previous_signal_handlers(forward):
    before = _signal_state()
    out = emu.empty(10, np.float32)
    forward.launch("selftest_fill", 1, 64, out, np.float32(1), np.int32(10))
    assert _signal_state() == before
    with pytest.raises(emu.OutOfBoundsAccess):
        forward.launch("selftest_fill", 1, 64, out, np.float32(1), np.int32(11))
    assert _signal_state() == before
    with pytest.raises(emu.KernelLaunchError, match="SIGFPE"):
        forward.launch("selftest_divide_by", 1, 32, emu.empty(32, np.int32), np.int32(0))
    assert _signal_state() == before


def test_faults_are_caught_in_a_launch_from_another_thread(forward):
    import threading

    x = emu.to_guarded(np.arange(100, dtype=np.float32), label="x")
    out = emu.empty(100, np.float32)
    caught = []

    def run():
        try:
            forward.launch("selftest_read_past_end_discarded", 1, 128, x, out, np.int32(100))
        except BaseException as error:  # noqa: B036 -- the main thread checks what it was
            caught.append(error)
        try:
            assert_recovers(forward)
            caught.append("recovered")
        except BaseException as error:  # noqa: B036
            caught.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(caught) == 2 and isinstance(caught[0], emu.OutOfBoundsAccess), caught
    assert (caught[0].offset, caught[0].thread, caught[1]) == (400, (100, 0, 0), "recovered")


def test_a_fault_in_one_module_leaves_others_working(forward):
    other = emu.load_source('extern "C" __global__ void add_one(float* x, int n) {\n'
                            '    int i = blockIdx.x * blockDim.x + threadIdx.x;\n'
                            '    if (i <= n) x[i] += 1.0f;\n}\n', "add_one")
    x = emu.to_guarded(np.zeros(50, np.float32))
    with pytest.raises(emu.OutOfBoundsAccess, match=r"read of buffer float32\[50\] at byte offset 200 .* add_one"):
        other.launch("add_one", 1, 64, x, np.int32(50))
    other.launch("add_one", 1, 64, x, np.int32(49))
    assert_recovers(forward)


# ----------------------------------------------------------------------------- buffer placement ---

@pytest.mark.parametrize("placement", emu.PLACEMENTS)
def test_both_placements_give_correct_results(forward, placement):
    with emu.buffer_placement(placement):
        test_shared_memory_block_reduction(forward, "forward")
        for dtype in (np.float16, np.float32, np.float64):
            test_typed_kernels_from_a_macro(forward, dtype)
        test_thread_and_block_coordinates(forward)
        assert_recovers(forward)


@pytest.mark.parametrize("placement", emu.PLACEMENTS)
@pytest.mark.parametrize("shape, dtype", [((2, 3, 8, 8), np.float32), (7, np.float16), ((1024,), np.float64),
                                          ((3, 0, 2), np.float32), ((0,), np.int32), ((), np.float64)])
def test_buffers_are_ordinary_arrays(placement, shape, dtype):
    x = emu.empty(shape, dtype, placement=placement)
    expected_shape = (shape,) if isinstance(shape, int) else shape
    assert x.shape == expected_shape and x.dtype == dtype
    assert x.flags.c_contiguous and x.flags.writeable
    assert np.isnan(x).all() if x.dtype.kind == "f" else (x == -1).all()
    values = np.arange(x.size).reshape(x.shape).astype(dtype)
    x[...] = values
    np.testing.assert_array_equal(x, values)
    if x.size:
        view = x.reshape(-1)[1:]
        view[...] = 5
        assert (x.reshape(-1)[1:] == 5).all()
    page = emu.PAGE_BYTES
    if placement == "end":
        assert (x.ctypes.data + x.nbytes) % page == 0
    else:
        assert x.ctypes.data % page == 0
    copy = emu.to_guarded(values, placement=placement)
    np.testing.assert_array_equal(copy, values)


def test_set_buffer_placement():
    assert emu.get_buffer_placement() == "end"
    assert emu.set_buffer_placement("start") == "end"
    try:
        assert emu.empty(10, np.float32).ctypes.data % emu.PAGE_BYTES == 0
    finally:
        assert emu.set_buffer_placement("end") == "start"
    assert (emu.empty(10, np.float32).ctypes.data + 40) % emu.PAGE_BYTES == 0
    with pytest.raises(ValueError, match="placement"):
        emu.set_buffer_placement("middle")
    with pytest.raises(ValueError, match="placement"):
        emu.empty(4, np.float32, placement="middle")


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, stop = (int(a, 16) for a in line.split()[0].split("-"))
            if start <= address < stop:
                return True
    return False


def test_buffer_memory_is_released_when_garbage_collected():
    x = emu.empty((64, 64), np.float32)
    view = x[3:5]
    address = x.ctypes.data
    assert _mapped(address) and emu.find_buffer(address) is not None
    del x
    gc.collect()
    assert _mapped(address) and emu.find_buffer(address) is not None  # the view keeps it alive
    del view
    gc.collect()
    assert not _mapped(address) and emu.find_buffer(address) is None


def test_many_small_buffers_are_cheap():
    import time
    start = time.perf_counter()
    buffers = [emu.empty((4, 4), np.float32) for _ in range(2000)]
    elapsed = time.perf_counter() - start
    assert len({b.ctypes.data for b in buffers}) == 2000
    del buffers
    gc.collect()
    assert elapsed < 5.0, f"2000 buffers took {elapsed:.2f} s"


# ------------------------------------------------------------------------------ compiler warnings ---

def test_header_and_selftests_compile_without_warnings(module):
    assert module.compiler_warnings == ""


def test_implicit_narrowing_is_a_warning():
    module = emu.load_source('extern "C" __global__ void narrowing(int* out, long long n, double scale) {\n'
                             '    int count = n;\n'
                             '    float factor = scale;\n'
                             '    out[threadIdx.x] = count * (int)factor;\n}\n', "narrowing")
    warnings = module.compiler_warnings
    # (g++ quotes the types with the locale's quotation marks.)
    assert re.search(r"conversion from .long long int. to .int. may change value \[-Wconversion\]", warnings)
    assert re.search(r"conversion from .double. to .float. may change value \[-Wfloat-conversion\]", warnings)
    assert "narrowing" in module.kernels  # a warning, not an error
