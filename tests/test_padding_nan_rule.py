"""NaN and inf next to zero padding: one rule, followed by every convolution path.

The rule is PyTorch's native CPU convolution's (``slow_conv2d``; its oneDNN path, torch.backends.mkldnn, leaves
the padding taps out of fprop and is turned off for the comparison) and gpuconv.reference's, the ground truth:

* fprop: y[p, q] sums over *every* tap (c, r, s) of x_padded * w, padding taps included, so a NaN or inf weight
  makes NaN every output of its filter whose window puts that tap on padding (inf * 0 = NaN).
* wgrad: dw[k, c, r, s] sums dy[n, k, p, q] * x_padded over every output pixel, padding included, so a NaN or
  inf in dy reaches every tap of its filter, even taps that read only padding for that pixel.
* dgrad: dx[h, w] sums only the (output pixel, tap) pairs that read (h, w), as col2im (the transposed
  convolution) does; it has no padding of its own: a tap that reaches no output pixel from (h, w), or only a
  zero-inserted position between strided ones, contributes nothing, not 0 * w.

Checked here: the rule itself against PyTorch (when it imports); every CPU path (gpuconv.functional with
algo="fast", each internal strategy of gpuconv.cpu_fast, and algo="reference"); every CUDA kernel variant of
the registry on the CPU emulator (tests/cuda_emulation), both thread orders. NaN and +-inf masks must be
exactly the reference's, finite values within tolerance. Every padded case is checked to discriminate: the
wrong rule (padding taps skipped in fprop/wgrad; zeros multiplied in dgrad) would give a different mask.
"""
from __future__ import annotations

import numpy as np
import pytest

from cuda_emulation import emulator as emu
from cuda_emulation.backend import SCHEDULES, EmulatorBackend, scheduled
from gpuconv import cpu_fast, reference
from gpuconv import functional as F
from gpuconv._shapes import ConvGeometry
from gpuconv.cuda import conv, plan, registry

#: pass -> the gpuconv.functional call and the reference computing the same, from (x, w, dy, g).
PASSES = {
    "fprop": (lambda x, w, dy, g, algo: F.conv2d(x, w, None, g.stride, g.pad, g.dilation, g.groups, algo=algo),
              lambda x, w, dy, g: reference.conv2d_forward(x, w, g)),
    "dgrad": (lambda x, w, dy, g, algo: F.conv2d_grad_input(dy, w, g.input_shape, g.stride, g.pad, g.dilation,
                                                            g.groups, algo=algo),
              lambda x, w, dy, g: reference.conv2d_grad_input(dy, w, g)),
    "wgrad": (lambda x, w, dy, g, algo: F.conv2d_grad_weight(x, dy, g.weight_shape, g.stride, g.pad, g.dilation,
                                                             g.groups, algo=algo),
              lambda x, w, dy, g: reference.conv2d_grad_weight(x, dy, g)),
}
#: poison -> (the operand poisoned, its first and last element's new values). The first and last taps and
#: output pixels are the ones that meet the top-left and bottom-right padding.
POISONS = {
    "w-nan": ("w", np.nan, np.nan),
    "w-inf": ("w", np.inf, -np.inf),
    "dy-nan": ("dy", np.nan, np.nan),
    "dy-inf": ("dy", np.inf, -np.inf),
}
#: The poisons that reach each pass's result (fprop does not read dy, wgrad not w).
PASS_POISONS = {"fprop": ("w-nan", "w-inf"), "dgrad": tuple(POISONS), "wgrad": ("dy-nan", "dy-inf")}
TOLERANCE = {np.float16: 1e-3, np.float32: 2e-5, np.float64: 1e-12}


def operands(g: ConvGeometry, dtype, seed=0):
    """x, w, dy with values exactly representable in float16."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(np.float16).astype(dtype)
                 for shape in (g.input_shape, g.weight_shape, g.output_shape))


def poisoned(poison, x, w, dy):
    name, first, last = POISONS[poison]
    arrays = {"x": x.copy(), "w": w.copy(), "dy": dy.copy()}
    target = arrays[name].reshape(-1)
    target[0], target[-1] = first, last
    return arrays["x"], arrays["w"], arrays["dy"]


def assert_same_nonfinite(got, expected, tol, what):
    """NaN, +inf and -inf exactly where ``expected`` has them; the finite values allclose."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        wrong = test(got) != test(expected)
        if wrong.any():
            first = tuple(int(i) for i in np.argwhere(wrong)[0])
            raise AssertionError(
                f"{what}: {name} at {int(test(got).sum())} outputs, the reference at {int(test(expected).sum())}; "
                f"{int(wrong.sum())} differ, first at {first}: got {got[first]!r}, expected {expected[first]!r}")
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(got[finite], expected[finite], rtol=tol, atol=tol * scale, err_msg=what)


def assert_discriminates(pass_name, poison, g: ConvGeometry):
    """The case tells the rule from its opposite: some result of a poisoned filter or output channel is
    non-finite under the rule but not under the opposite one (or the reverse, for dgrad)."""
    ones_x, ones_dy = np.ones(g.input_shape), np.ones(g.output_shape)
    name = POISONS[poison][0]
    marks = poisoned(poison, np.zeros(g.input_shape), np.zeros(g.weight_shape), np.zeros(g.output_shape))
    mark_w, mark_dy = ((~np.isfinite(m)).astype(np.float64) for m in marks[1:])
    if pass_name == "fprop":    # the rule: every output of a poisoned filter; the opposite: where it reads input
        reads_input = reference.conv2d_forward(ones_x, mark_w, g)
        touched = mark_w.reshape(g.K, -1).any(axis=1)
        found = (reads_input[:, touched] == 0).any()
    elif pass_name == "wgrad":  # the rule: every tap of a poisoned dy channel; the opposite: taps reading input
        reads_input = reference.conv2d_grad_weight(ones_x, mark_dy, g)
        touched = mark_dy.sum(axis=(0, 2, 3)) > 0
        found = (reads_input[touched] == 0).any()
    elif name == "w":           # the rule: the pixels a poisoned tap reaches; the opposite: its whole channel
        reached = reference.conv2d_grad_input(ones_dy, mark_w, g)
        every_tap = np.broadcast_to(mark_w.any(axis=(2, 3), keepdims=True), g.weight_shape).astype(np.float64)
        channels = reference.conv2d_grad_input(ones_dy, every_tap, g).sum(axis=(0, 2, 3)) > 0
        found = (reached[:, channels] == 0).any()
    else:
        return  # a poisoned dy reaches dx through real taps only, whatever the rule
    assert found, f"{pass_name} {poison} on {g}: the case does not tell the padding rule from its opposite"


def geometry(case) -> ConvGeometry:
    return ConvGeometry.create(case[1], case[2], **case[3])


# ---------------------------------------------------------------------------------- the rule itself ---

def test_the_documented_example():
    """ones(1, 1, 4, 4), a 3x3 filter of ones with NaN at w[0, 0, 0, 0], padding 1 (checked with PyTorch)."""
    g = ConvGeometry.create((1, 1, 4, 4), (1, 1, 3, 3), padding=1)
    x, w, dy = np.ones(g.input_shape), np.ones(g.weight_shape), np.ones(g.output_shape)
    w[0, 0, 0, 0] = np.nan
    assert np.isnan(reference.conv2d_forward(x, w, g)).all()  # the NaN tap reads padding at row 0 / column 0
    dx = reference.conv2d_grad_input(dy, w, g)
    expected = np.zeros((4, 4), dtype=bool)
    expected[:3, :3] = True  # tap (0, 0) of output (p, q) reads input (p - 1, q - 1): never row or column 3
    np.testing.assert_array_equal(np.isnan(dx[0, 0]), expected)
    dy[0, 0, 0, 0] = np.nan
    assert np.isnan(reference.conv2d_grad_weight(x, dy, g)).all()  # taps (0, *), (*, 0) read only padding there


TORCH_CASES = [
    ("pad1", (2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),
    ("asymmetric-stride2", (1, 3, 7, 6), (4, 3, 3, 2), dict(stride=2, padding=(0, 2, 1, 0))),
    ("dilation2", (2, 2, 7, 8), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    ("asymmetric-stride-dilation-groups", (1, 4, 8, 7), (4, 2, 3, 3),
     dict(stride=(2, 1), dilation=(1, 2), padding=(2, 1, 0, 2), groups=2)),
]


def torch_passes(torch, x, w, dy, g: ConvGeometry):
    """y, dx, dw by PyTorch's native CPU convolution (float64; asymmetric padding by F.pad, which autograd
    differentiates as the crop it is)."""
    tf = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    pt, pb, pl, pr = g.pad
    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN skips the padding taps in fprop
        if (pt, pl) == (pb, pr):
            y = tf.conv2d(tx, tw, None, g.stride, (pt, pl), g.dilation, g.groups)
        else:
            y = tf.conv2d(tf.pad(tx, (pl, pr, pt, pb)), tw, None, g.stride, 0, g.dilation, g.groups)
        y.backward(torch.tensor(dy))
    return {"fprop": y.detach().numpy(), "dgrad": tx.grad.numpy(), "wgrad": tw.grad.numpy()}


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags on a CPU build
def test_the_reference_follows_pytorch(case, poison):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the rule is checked against its CPU "
                                                "convolution")
    g = geometry(case)
    x, w, dy = poisoned(poison, *operands(g, np.float64))
    expected = torch_passes(torch, x, w, dy, g)
    for pass_name in PASS_POISONS:
        if poison in PASS_POISONS[pass_name]:
            assert_discriminates(pass_name, poison, g)
        with np.errstate(invalid="ignore"):
            got = PASSES[pass_name][1](x, w, dy, g)
        assert_same_nonfinite(got, expected[pass_name], 1e-10, f"reference {pass_name} {poison} vs PyTorch")


# ------------------------------------------------------------------------------------ the CPU paths ---

def cpu_fast_path(pass_name, g: ConvGeometry) -> str:
    """The strategy gpuconv.cpu_fast takes for a pass (mirrors its dispatch)."""
    depthwise = g.C == g.groups > 1
    if pass_name == "fprop":
        if depthwise:
            return "depthwise"
        if cpu_fast._pointwise(g):
            return "pointwise"
        if cpu_fast._per_sample_gemm(g):
            return "gemm-per-sample"
        return "gemm-pixel-major" if cpu_fast._prefer_pixel_major(g) else "gemm-channel-major"
    if pass_name == "dgrad":
        if depthwise:
            return "depthwise"
        if cpu_fast._prefer_col2im(g):
            return "col2im-per-sample" if cpu_fast._per_sample_gemm(g) else "col2im"
        return "phases" if g.stride == (1, 1) else "strided-phases"
    if cpu_fast._pointwise(g) and cpu_fast._per_sample_gemm(g):
        return "pointwise"
    if cpu_fast._prefer_pixel_major(g):
        return "gemm-pixel-major"
    return "gemm-transposed" if g.N * g.P * g.Q >= 2048 else "gemm"


#: (id, input shape, weight shape, conv kwargs, workspace limit or None): between them every strategy of
#: cpu_fast (CPU_PATHS says which case takes which).
CPU_CASES = [
    ("3x3-pad1", (2, 3, 5, 6), (5, 3, 3, 3), dict(padding=1), None),
    ("3x3-pad1-row-chunks", (2, 3, 5, 6), (5, 3, 3, 3), dict(padding=1), 1200),
    ("stride2-asymmetric", (1, 3, 7, 6), (4, 3, 3, 2), dict(stride=2, padding=(0, 2, 1, 0)), None),
    ("dilation-stride-asymmetric", (1, 2, 9, 8), (2, 2, 3, 3), dict(stride=(2, 1), dilation=2,
                                                                    padding=(2, 1, 2, 0)), None),
    ("pixel-major", (2, 16, 4, 4), (4, 16, 3, 3), dict(padding=(1, 0, 2, 1)), None),
    ("big-plane", (1, 2, 16, 16), (5, 2, 3, 3), dict(padding=1), None),
    ("long-reduction", (2, 2, 33, 33), (3, 2, 3, 3), dict(padding=(0, 1, 1, 0)), None),
    ("depthwise", (2, 3, 6, 5), (6, 1, 3, 3), dict(groups=3, padding=(2, 0, 1, 1), stride=(1, 2)), None),
    ("groups2-col2im", (2, 4, 5, 6), (10, 2, 3, 3), dict(groups=2, padding=1), None),
    ("1x1-stride2-padded", (1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2, padding=1), None),
    ("pointwise", (1, 4, 16, 16), (3, 4, 1, 1), {}, None),
]
CPU_PATHS = {case[0]: {p: cpu_fast_path(p, geometry(case)) for p in PASSES} for case in CPU_CASES}
EVERY_CPU_PATH = {
    "fprop": {"depthwise", "pointwise", "gemm-per-sample", "gemm-pixel-major", "gemm-channel-major"},
    "dgrad": {"depthwise", "col2im", "col2im-per-sample", "phases", "strided-phases"},
    "wgrad": {"pointwise", "gemm-pixel-major", "gemm-transposed", "gemm"},
}


def test_the_cpu_cases_take_every_cpu_fast_path():
    for pass_name, paths in EVERY_CPU_PATH.items():
        assert {CPU_PATHS[case][pass_name] for case in CPU_PATHS} == paths, pass_name


@pytest.fixture
def workspace_limit():
    """Set cpu_fast's workspace limit for one test (None: leave it), restored afterwards."""
    before = cpu_fast.get_workspace_limit()

    def set_limit(limit):
        if limit is not None:
            cpu_fast.set_workspace_limit(limit)
            cpu_fast.reset_peak_workspace_bytes()

    yield set_limit
    cpu_fast.set_workspace_limit(before)


@pytest.mark.parametrize("algo", ["fast", "reference"])
@pytest.mark.parametrize("pass_name", list(PASSES))
@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_cpu_paths_follow_the_rule(case, pass_name, algo, workspace_limit):
    g = geometry(case)
    workspace_limit(case[4])
    clean = operands(g, np.float32)
    for poison in PASS_POISONS[pass_name]:
        x, w, dy = poisoned(poison, *clean)
        if any(g.pad):
            assert_discriminates(pass_name, poison, g)
        with np.errstate(invalid="ignore", over="ignore"):
            expected = PASSES[pass_name][1](x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64), g)
            got = PASSES[pass_name][0](x, w, dy, g, algo)
        if case[4] is not None:
            assert cpu_fast.peak_workspace_bytes() <= case[4]
        where = f"{algo} {pass_name} ({CPU_PATHS[case[0]][pass_name]}) {poison} on {case[0]}"
        assert_same_nonfinite(got, expected, TOLERANCE[np.float32], where)


# ---------------------------------------------------------------------------------- the CUDA kernels ---

#: (id, input shape, weight shape, conv kwargs): padded, each one accepted by every GEMM variant; the
#: depthwise ones by the direct kernels too.
KERNEL_CASES = [
    ("3x3-pad1", (2, 3, 5, 6), (5, 3, 3, 3), dict(padding=1)),
    ("stride2-asymmetric", (1, 3, 7, 6), (4, 3, 3, 2), dict(stride=2, padding=(0, 2, 1, 0))),
    ("dilation-stride-asymmetric", (1, 2, 9, 8), (3, 2, 3, 3), dict(stride=(2, 1), dilation=(1, 2),
                                                                    padding=(2, 1, 0, 2))),
    ("1x1-stride2-padded", (1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2, padding=1)),
    ("depthwise", (2, 3, 6, 5), (3, 1, 3, 3), dict(groups=3, padding=(2, 0, 1, 1), stride=(1, 2))),
    ("depthwise-multiplier2-dilated", (1, 2, 7, 7), (4, 1, 3, 3), dict(groups=2, dilation=2, padding=2,
                                                                       stride=2)),
]
KERNEL_CASE = {case[0]: case for case in KERNEL_CASES}
FLOAT16_CASE = "stride2-asymmetric"


def kernel_runs(cases, dtype=None):
    """(pass, algo, case id, dtype) for the im2col family and every registry variant that accepts the case, in
    ``dtype`` or else float32, or float16 for the variants without float32."""
    runs = []
    for pass_name in registry.CONV_PASSES:
        for case in cases:
            g = geometry(case)
            for algo in ["im2col", *(v.name for v in registry.conv_variants(pass_name) if v.emulatable)]:
                dtypes = registry.SIMT_DTYPES if algo == "im2col" else registry.get(algo).dtypes
                chosen = dtype or next((d for d in (np.float32, np.float16) if np.dtype(d) in dtypes), None)
                if chosen is not None and (algo == "im2col" or registry.get(algo).can_run(g, chosen)):
                    runs.append((pass_name, algo, case[0], np.dtype(chosen).name))
    return runs


KERNEL_RUNS = kernel_runs(KERNEL_CASES)
FLOAT16_RUNS = kernel_runs([KERNEL_CASE[FLOAT16_CASE]], np.float16)
needs_gxx = pytest.mark.skipif(not emu.compiler_available(),
                               reason="g++ not found: the CUDA emulation compiles the kernels with g++")
@pytest.fixture(params=list(SCHEDULES))
def backend(request):
    """The emulator backend, in each thread order (cuda_emulation.backend.scheduled)."""
    with scheduled(request.param) as emulated:
        yield emulated


def test_every_kernel_variant_is_checked():
    for pass_name in registry.CONV_PASSES:
        variants = [v for v in registry.conv_variants(pass_name)
                    if v.emulatable and {np.dtype(np.float32), np.dtype(np.float16)} & set(v.dtypes)]
        run = {algo for p, algo, _, _ in KERNEL_RUNS if p == pass_name}
        assert run == {"im2col", *(v.name for v in variants)}, pass_name
        in_float16 = {algo for p, algo, _, _ in FLOAT16_RUNS if p == pass_name}
        # (Variants that do not apply to the float16 case run in float16 on the other cases, KERNEL_RUNS.)
        float16_case = geometry(KERNEL_CASE[FLOAT16_CASE])
        assert in_float16 >= {"im2col", *(v.name for v in variants if v.family != registry.DIRECT and
                                          np.dtype(np.float16) in v.dtypes and v.can_run(float16_case, np.float16))
                              }, pass_name
        assert ("dgrad", "dgrad_tensorop_128x128x32_64x64_3stage", "3x3-pad1", "float16") in KERNEL_RUNS
        assert ("wgrad", "wgrad_tensorop_128x128x32_64x64_3stage", "3x3-pad1", "float16") in KERNEL_RUNS


def run_kernels(pass_name, algo, case, dtype, backend):
    g = geometry(case)
    clean = operands(g, dtype)
    for poison in PASS_POISONS[pass_name]:
        x, w, dy = poisoned(poison, *clean)
        assert_discriminates(pass_name, poison, g)
        inputs = {"fprop": (x, w), "dgrad": (dy, w), "wgrad": (x, dy)}[pass_name]
        the_plan = plan.plan_conv(pass_name, g, dtype, algo)
        with np.errstate(invalid="ignore", over="ignore"):
            got = conv.run_conv(the_plan, backend, *(emu.to_guarded(a) for a in inputs))
            expected = PASSES[pass_name][1](x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64), g)
        assert got.dtype == dtype
        assert_same_nonfinite(got, expected, TOLERANCE[dtype], f"{the_plan.describe()}, {poison} on {case[0]}")


def run_id(run):
    return "-".join(run[:3] if run[3] == "float32" else run)


@needs_gxx
@pytest.mark.parametrize("pass_name, algo, case, dtype", KERNEL_RUNS, ids=[run_id(run) for run in KERNEL_RUNS])
def test_kernels_follow_the_rule(backend, pass_name, algo, case, dtype):
    run_kernels(pass_name, algo, KERNEL_CASE[case], np.dtype(dtype).type, backend)


@needs_gxx
@pytest.mark.parametrize("pass_name, algo, case, dtype", FLOAT16_RUNS, ids=[run_id(run) for run in FLOAT16_RUNS])
def test_float16_kernels_follow_the_rule(pass_name, algo, case, dtype):
    run_kernels(pass_name, algo, KERNEL_CASE[case], np.float16, EmulatorBackend())
