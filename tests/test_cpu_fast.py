"""The fast CPU path (gpuconv.cpu_fast) against the reference, strategy by strategy.

cpu_fast picks between several ways to do each pass (column layout, GEMM per
sample or batched, input gradient by stride phases or by col2im, threads or
not, chunked or not); each test case is run with every choice forced, so a bug
in a branch the heuristics rarely pick still shows.
"""
import importlib
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuconv import cpu_fast, reference
from gpuconv import functional as F
from gpuconv._shapes import ConvGeometry

PASSES = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight")

# (input shape, weight shape, stride, padding, dilation, groups)
EDGE_CASES = {
    "3x3 pad 1": ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, 1, 1),
    "odd non-square": ((2, 3, 9, 13), (5, 3, 3, 5), 1, (1, 2), 1, 1),
    "stride 2": ((2, 4, 9, 9), (6, 4, 3, 3), 2, 1, 1, 1),
    "stride (2, 3)": ((2, 3, 11, 13), (4, 3, 3, 3), (2, 3), 1, 1, 1),
    "stride > kernel": ((2, 3, 10, 10), (4, 3, 2, 2), 3, 0, 1, 1),
    "4-sided padding": ((2, 3, 8, 9), (4, 3, 3, 3), 1, (2, 0, 1, 3), 1, 1),
    "4-sided padding stride 2": ((2, 3, 8, 9), (4, 3, 3, 2), 2, (0, 2, 3, 1), 1, 1),
    "same stride 2 even kernel": ((2, 3, 9, 10), (4, 3, 4, 2), 2, "same", 1, 1),
    "same stride 2 kernel 2": ((1, 2, 7, 8), (3, 2, 2, 2), 2, "same", 1, 1),
    "full": ((2, 2, 5, 6), (3, 2, 3, 2), 1, "full", 1, 1),
    "dilation 2": ((2, 3, 11, 11), (4, 3, 3, 3), 1, 2, 2, 1),
    "dilation (2, 3) stride 2": ((2, 3, 13, 14), (4, 3, 3, 3), 2, 1, (2, 3), 1),
    "dilation 2 stride 2": ((1, 2, 12, 12), (3, 2, 3, 3), 2, 2, 2, 1),
    "dilation 3 stride 2": ((1, 2, 14, 14), (3, 2, 3, 3), 2, 1, 3, 1),
    "groups 2": ((2, 4, 8, 8), (6, 2, 3, 3), 1, 1, 1, 2),
    "groups 3 stride 2": ((2, 6, 9, 9), (9, 2, 3, 3), 2, 1, 1, 3),
    "depthwise": ((2, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4),
    "depthwise stride 2": ((2, 4, 9, 8), (4, 1, 3, 3), 2, (1, 0, 2, 1), 1, 4),
    "depthwise multiplier 2": ((2, 3, 7, 7), (6, 1, 3, 3), 1, 1, 1, 3),
    "depthwise multiplier 3 dilated": ((1, 2, 9, 9), (6, 1, 3, 3), 2, 2, 2, 2),
    "1x1": ((2, 6, 5, 5), (4, 6, 1, 1), 1, 0, 1, 1),
    "1x1 groups": ((2, 6, 5, 5), (6, 3, 1, 1), 1, 0, 1, 2),
    "1x1 stride 2": ((2, 6, 7, 6), (8, 6, 1, 1), 2, 0, 1, 1),
    "1x1 padded": ((2, 3, 5, 5), (4, 3, 1, 1), 1, 1, 1, 1),
    "padding wider than kernel": ((2, 3, 6, 6), (4, 3, 2, 2), 1, (3, 0, 0, 3), 1, 1),
    "kernel as large as padded input": ((2, 3, 5, 6), (4, 3, 7, 8), 1, 1, 1, 1),
    "kernel as large as input": ((1, 2, 5, 6), (3, 2, 5, 6), 1, 0, 1, 1),
    "batch 1": ((1, 3, 6, 7), (2, 3, 3, 3), 1, 1, 1, 1),
    "single channel in": ((3, 1, 8, 8), (16, 1, 3, 3), 1, 1, 1, 1),
    "single channel in stride 2": ((2, 1, 9, 9), (8, 1, 3, 3), 2, 1, 1, 1),
    "K much larger than C": ((2, 2, 8, 8), (12, 2, 3, 3), 2, 1, 1, 1),
    "1x1 output": ((2, 3, 3, 3), (4, 3, 3, 3), 1, 0, 1, 1),
    "one output row": ((2, 3, 3, 9), (4, 3, 3, 3), 1, 0, 1, 1),
    "large plane (per-sample GEMM)": ((2, 3, 18, 17), (4, 3, 3, 3), 1, 1, 1, 1),
}

# Every internal choice, forced: (pixel-major columns?, per-sample GEMM?, col2im input gradient?)
STRATEGIES = {
    "auto": None,
    "channel-major batched phases": (False, False, False),
    "channel-major per-sample col2im": (False, True, True),
    "pixel-major per-sample phases": (True, True, False),
    "pixel-major batched col2im": (True, False, True),
}


@pytest.fixture(autouse=True)
def default_knobs():
    """Every test starts from (and restores) the default workspace limit and heuristics."""
    limit = cpu_fast.get_workspace_limit()
    cpu_fast.reset_peak_workspace_bytes()
    yield
    cpu_fast.set_workspace_limit(limit)


def force(monkeypatch, strategy):
    if strategy is None:
        return
    pixel_major, per_sample, col2im = strategy
    monkeypatch.setattr(cpu_fast, "_prefer_pixel_major", lambda g: pixel_major)
    monkeypatch.setattr(cpu_fast, "PER_SAMPLE_MIN_PIXELS", 0 if per_sample else 10 ** 9)
    monkeypatch.setattr(cpu_fast, "_prefer_col2im", lambda g: col2im)


def make_problem(case, dtype, seed=0):
    x_shape, w_shape, stride, padding, dilation, groups = case
    g = ConvGeometry.create(x_shape, w_shape, stride, padding, dilation, groups)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g.input_shape).astype(dtype)
    w = rng.standard_normal(g.weight_shape).astype(dtype)
    dy = rng.standard_normal(g.output_shape).astype(dtype)
    return g, x, w, dy


def pass_args(name, g, x, w, dy):
    return {"conv2d_forward": (x, w, g), "conv2d_grad_input": (dy, w, g), "conv2d_grad_weight": (x, dy, g)}[name]


def assert_matches_reference(name, args, dtype):
    """The fast result equals the float64 reference to float64 / float32 rounding."""
    actual = getattr(cpu_fast, name)(*args)
    expected_dtype = np.float32 if dtype == np.float16 else dtype
    assert actual.dtype == expected_dtype
    expected = getattr(reference, name)(*[a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args])
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1.0)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("strategy", STRATEGIES.values(), ids=STRATEGIES.keys())
@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_edge_cases_match_reference(monkeypatch, case, dtype, strategy):
    force(monkeypatch, strategy)
    g, x, w, dy = make_problem(case, dtype)
    for name in PASSES:
        assert_matches_reference(name, pass_args(name, g, x, w, dy), dtype)


@pytest.mark.parametrize("case", ["3x3 pad 1", "stride 2", "depthwise", "1x1", "groups 2"])
def test_float16_is_computed_and_returned_in_float32(case):
    g, x, w, dy = make_problem(EDGE_CASES[case], np.float16)
    for name in PASSES:
        assert_matches_reference(name, pass_args(name, g, x, w, dy), np.float16)


def test_threaded_copies_match_serial(monkeypatch):
    """Force every copy and col2im through the thread pool, splitting even tiny arrays."""
    monkeypatch.setattr(cpu_fast, "COPY_THREADS", 3)
    monkeypatch.setattr(cpu_fast, "PARALLEL_MIN_BYTES", 0)
    for case in ["stride 2", "4-sided padding stride 2", "K much larger than C", "groups 3 stride 2", "1x1"]:
        for strategy in STRATEGIES.values():
            force(monkeypatch, strategy)
            g, x, w, dy = make_problem(EDGE_CASES[case], np.float64)
            for name in PASSES:
                assert_matches_reference(name, pass_args(name, g, x, w, dy), np.float64)


def test_non_contiguous_inputs():
    g, x, w, dy = make_problem(EDGE_CASES["stride 2"], np.float64)
    x_view = np.asfortranarray(x)
    w_view = np.asfortranarray(w)
    dy_view = np.asfortranarray(dy)
    for name in PASSES:
        assert_matches_reference(name, pass_args(name, g, x_view, w_view, dy_view), np.float64)


def test_read_only_and_broadcast_inputs():
    g, x, w, dy = make_problem(EDGE_CASES["4-sided padding stride 2"], np.float64)
    for a in (x, w, dy):
        a.flags.writeable = False
    for name in PASSES:
        assert_matches_reference(name, pass_args(name, g, x, w, dy), np.float64)
    x_broadcast = np.broadcast_to(x[:1], x.shape)
    assert_matches_reference("conv2d_forward", (x_broadcast, w, g), np.float64)


def test_depthwise_channel_blocks_and_threads(monkeypatch):
    """One channel per block and every block handed to the pool: same result."""
    monkeypatch.setattr(cpu_fast, "DEPTHWISE_BLOCK_BYTES", 1)
    monkeypatch.setattr(cpu_fast, "COPY_THREADS", 3)
    monkeypatch.setattr(cpu_fast, "PARALLEL_MIN_BYTES", 0)
    for case in ["depthwise", "depthwise stride 2", "depthwise multiplier 3 dilated"]:
        g, x, w, dy = make_problem(EDGE_CASES[case], np.float64)
        for name in PASSES:
            assert_matches_reference(name, pass_args(name, g, x, w, dy), np.float64)


def test_results_do_not_alias_the_cached_workspace():
    """The workspace is reused between calls; no result may be a view of it."""
    g, x, w, dy = make_problem(EDGE_CASES["stride 2"], np.float64)
    first = [getattr(cpu_fast, name)(*pass_args(name, g, x, w, dy)) for name in PASSES]
    kept = [a.copy() for a in first]
    g2, x2, w2, dy2 = make_problem(EDGE_CASES["stride 2"], np.float64, seed=1)
    for name in PASSES:
        getattr(cpu_fast, name)(*pass_args(name, g2, x2, w2, dy2))
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


def test_concurrent_calls_from_threads():
    """Each thread has its own cached workspace: concurrent calls must not corrupt each other."""
    problems = [make_problem(EDGE_CASES["large plane (per-sample GEMM)"], np.float64, seed=s) for s in range(4)]
    expected = [reference.conv2d_forward(x, w, g) for g, x, w, dy in problems]
    results = [None] * len(problems)

    def work(i):
        g, x, w, dy = problems[i]
        for _ in range(5):
            results[i] = cpu_fast.conv2d_forward(x, w, g)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_empty_batch():
    g = ConvGeometry.create((0, 3, 5, 5), (4, 3, 3, 3), 1, 1)
    x = np.zeros(g.input_shape)
    w = np.ones(g.weight_shape)
    dy = np.zeros(g.output_shape)
    assert cpu_fast.conv2d_forward(x, w, g).shape == g.output_shape
    assert cpu_fast.conv2d_grad_input(dy, w, g).shape == g.input_shape
    np.testing.assert_array_equal(cpu_fast.conv2d_grad_weight(x, dy, g), np.zeros(g.weight_shape))


# ------------------------------------------------------------- hypothesis ---

@st.composite
def geometries(draw):
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 3))
    kg = draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    min_h = max(1, dilation[0] * (R - 1) + 1 - pad[0] - pad[1])
    min_w = max(1, dilation[1] * (S - 1) + 1 - pad[2] - pad[3])
    H = draw(st.integers(min_h, min_h + 8))
    W = draw(st.integers(min_w, min_w + 8))
    N = draw(st.integers(1, 3))
    return ConvGeometry.create((N, cg * groups, H, W), (kg * groups, cg, R, S), stride, pad, dilation, groups)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=geometries(), strategy=st.sampled_from(list(STRATEGIES.values())), seed=st.integers(0, 2 ** 16))
def test_random_geometries_match_reference(g, strategy, seed):
    with pytest.MonkeyPatch.context() as monkeypatch:
        force(monkeypatch, strategy)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(g.input_shape)
        w = rng.standard_normal(g.weight_shape)
        dy = rng.standard_normal(g.output_shape)
        for name in PASSES:
            assert_matches_reference(name, pass_args(name, g, x, w, dy), np.float64)


# --------------------------------------------------------------- workspace ---

CHUNK_CASES = ["3x3 pad 1", "stride 2", "4-sided padding stride 2", "groups 3 stride 2", "K much larger than C",
               "large plane (per-sample GEMM)", "1x1", "1x1 stride 2", "dilation (2, 3) stride 2"]


@pytest.mark.parametrize("strategy", STRATEGIES.values(), ids=STRATEGIES.keys())
@pytest.mark.parametrize("case", CHUNK_CASES)
@pytest.mark.parametrize("split", ["batch", "rows"])
def test_chunked_equals_unchunked_within_limit(monkeypatch, case, split, strategy):
    force(monkeypatch, strategy)
    case = EDGE_CASES[case]
    case = ((4,) + case[0][1:],) + case[1:]  # a batch worth splitting
    g, x, w, dy = make_problem(case, np.float64)
    whole = {name: getattr(cpu_fast, name)(*pass_args(name, g, x, w, dy)) for name in PASSES}
    unchunked_peak = cpu_fast.peak_workspace_bytes()
    # Room for a bit more than one sample ("batch") or for two output rows ("rows") of the largest pass.
    per_row = (g.C * g.R * g.S + g.K) * g.Q * 8
    limit = per_row * g.P + 1 if split == "batch" else 2 * per_row
    cpu_fast.set_workspace_limit(limit)
    assert cpu_fast.get_workspace_limit() == limit
    cpu_fast.reset_peak_workspace_bytes()
    for name in PASSES:
        chunked = getattr(cpu_fast, name)(*pass_args(name, g, x, w, dy))
        np.testing.assert_allclose(chunked, whole[name], rtol=1e-12, atol=1e-12)
    peak = cpu_fast.peak_workspace_bytes()
    assert 0 < peak <= limit
    if unchunked_peak > limit:
        assert peak < unchunked_peak


def test_row_chunks_are_used_when_one_sample_does_not_fit():
    g = ConvGeometry.create((1, 3, 40, 40), (4, 3, 3, 3), 1, 1)
    per_row = (g.C * g.R * g.S + g.K) * g.Q * 4
    cpu_fast.set_workspace_limit(3 * per_row)
    chunks = cpu_fast._chunks(g, (g.C * g.R * g.S + g.K) * 4)
    assert all(n1 - n0 == 1 for n0, n1, _, _ in chunks)
    assert len(chunks) == -(-g.P // 3)
    covered = sorted((p0, p1) for _, _, p0, p1 in chunks)
    assert covered[0][0] == 0 and covered[-1][1] == g.P
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


def test_limit_below_one_output_row_raises():
    g, x, w, dy = make_problem(EDGE_CASES["3x3 pad 1"], np.float32)
    cpu_fast.set_workspace_limit(64)
    with pytest.raises(MemoryError, match="set_workspace_limit"):
        cpu_fast.conv2d_forward(x, w, g)


def test_pointwise_forward_needs_no_workspace():
    g, x, w, dy = make_problem(EDGE_CASES["1x1"], np.float32)
    cpu_fast.set_workspace_limit(1)
    cpu_fast.conv2d_forward(x, w, g)
    cpu_fast.conv2d_grad_input(dy, w, g)
    assert cpu_fast.peak_workspace_bytes() == 0


@pytest.mark.parametrize("bad", [0, -5])
def test_set_workspace_limit_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="workspace limit"):
        cpu_fast.set_workspace_limit(bad)


def test_workspace_limit_from_environment(monkeypatch):
    try:
        monkeypatch.setenv("GPUCONV_CPU_WORKSPACE_MB", "3")
        assert importlib.reload(cpu_fast).get_workspace_limit() == 3 << 20
        monkeypatch.setenv("GPUCONV_CPU_WORKSPACE_MB", "0.5")
        assert importlib.reload(cpu_fast).get_workspace_limit() == 1 << 19
        monkeypatch.delenv("GPUCONV_CPU_WORKSPACE_MB")
        assert importlib.reload(cpu_fast).get_workspace_limit() == 256 << 20
        for bad in ["lots", "0", "-1"]:
            monkeypatch.setenv("GPUCONV_CPU_WORKSPACE_MB", bad)
            with pytest.raises(ValueError, match="GPUCONV_CPU_WORKSPACE_MB"):
                importlib.reload(cpu_fast)
    finally:
        monkeypatch.delenv("GPUCONV_CPU_WORKSPACE_MB", raising=False)
        importlib.reload(cpu_fast)


# ------------------------------------------------------------- functional ---

def test_functional_auto_uses_the_fast_path(monkeypatch):
    calls = []
    real = cpu_fast.conv2d_forward
    monkeypatch.setattr(cpu_fast, "conv2d_forward", lambda *a: calls.append(1) or real(*a))
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    fast = F.conv2d(x, w, b, stride=2, padding="same")
    ref = F.conv2d(x, w, b, stride=2, padding="same", algo="reference")
    assert calls == [1]
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
