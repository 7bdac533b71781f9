"""Output-shape and padding rules of gpuconv._shapes, with hand-computed expectations."""
import itertools

import numpy as np
import pytest

import direct
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpuconv import reference
from gpuconv._shapes import ConvGeometry, PoolGeometry, resolve_padding


def conv_geometry(hw, kernel, **kwargs):
    return ConvGeometry.create((1, 1) + hw, (1, 1) + kernel, **kwargs)


# ------------------------------------------------------------------ "same" ---

# (id, input hw, kernel, stride, dilation, expected pad (top, bottom, left, right), expected output hw)
SAME_CASES = [
    ("k3-s1", (5, 5), (3, 3), 1, 1, (1, 1, 1, 1), (5, 5)),
    ("k1-s1", (5, 4), (1, 1), 1, 1, (0, 0, 0, 0), (5, 4)),
    ("k4-s1-even-odd-pixel-bottom-right", (5, 5), (4, 4), 1, 1, (1, 2, 1, 2), (5, 5)),
    ("k2-s1-even", (6, 3), (2, 2), 1, 1, (0, 1, 0, 1), (6, 3)),
    ("k5x2-nonsquare", (4, 7), (5, 2), 1, 1, (2, 2, 0, 1), (4, 7)),
    # stride 2: output ceil(H / 2); total pad (out - 1) * 2 + k - H
    ("k3-s2-odd-input", (5, 5), (3, 3), 2, 1, (1, 1, 1, 1), (3, 3)),
    ("k3-s2-even-input", (6, 6), (3, 3), 2, 1, (0, 1, 0, 1), (3, 3)),
    ("k4-s2-even-input", (6, 6), (4, 4), 2, 1, (1, 1, 1, 1), (3, 3)),
    ("k4-s2-odd-input", (7, 7), (4, 4), 2, 1, (1, 2, 1, 2), (4, 4)),
    ("k2-s2-even-input-no-pad", (8, 8), (2, 2), 2, 1, (0, 0, 0, 0), (4, 4)),
    ("k3-s2-mixed", (7, 8), (3, 3), 2, 1, (1, 1, 0, 1), (4, 4)),
    ("s3-exceeds-kernel-no-negative-pad", (7, 8), (1, 1), 3, 1, (0, 0, 0, 0), (3, 3)),
    ("s4-exceeds-kernel", (7, 7), (2, 2), 4, 1, (0, 0, 0, 0), (2, 2)),
    # dilation: effective kernel d * (k - 1) + 1
    ("k3-d2", (5, 5), (3, 3), 1, 2, (2, 2, 2, 2), (5, 5)),
    ("k2-d3-even", (6, 6), (2, 2), 1, 3, (1, 2, 1, 2), (6, 6)),
    ("k3-d2-s2", (8, 7), (3, 3), 2, 2, (1, 2, 2, 2), (4, 4)),
    ("k4x3-d2x1-nonsquare", (6, 5), (4, 3), 1, (2, 1), (3, 3, 1, 1), (6, 5)),
]


@pytest.mark.parametrize("hw,kernel,stride,dilation,pad,out", [c[1:] for c in SAME_CASES],
                         ids=[c[0] for c in SAME_CASES])
def test_same_padding(hw, kernel, stride, dilation, pad, out):
    g = conv_geometry(hw, kernel, stride=stride, padding="same", dilation=dilation)
    assert g.pad == pad
    assert (g.P, g.Q) == out
    s = (stride, stride) if isinstance(stride, int) else stride
    assert out == (-(-hw[0] // s[0]), -(-hw[1] // s[1]))  # the rule itself: ceil(H / stride)
    assert direct.same_padding(hw, kernel, stride, dilation) == pad  # the tests' own helper agrees


def test_same_padding_exhaustive_small():
    # Over a grid: output is ceil(H / stride), the pad is never negative, bottom >= top by at most one.
    for H, k, s, d in itertools.product(range(1, 10), range(1, 6), range(1, 4), range(1, 3)):
        top, bottom, _, _ = resolve_padding("same", (H, H), (k, k), (s, s), (d, d))
        g = conv_geometry((H, H), (k, k), stride=s, padding="same", dilation=d)
        assert g.P == -(-H // s), (H, k, s, d)
        assert 0 <= top <= bottom <= top + 1, (H, k, s, d)
        if s == 1:
            assert top + bottom == d * (k - 1), (H, k, s, d)


def test_padding_strings_are_case_insensitive():
    assert resolve_padding("SAME", (5, 5), (4, 4), (1, 1), (1, 1)) == (1, 2, 1, 2)
    assert resolve_padding("Valid", (5, 5), (4, 4), (1, 1), (1, 1)) == (0, 0, 0, 0)


# ------------------------------------------------------- "full", "valid", ints ---

@pytest.mark.parametrize("hw,kernel,stride,dilation,pad,out", [
    ((5, 5), (3, 3), 1, 1, (2, 2, 2, 2), (7, 7)),
    ((4, 6), (2, 3), 1, 1, (1, 1, 2, 2), (5, 8)),
    ((4, 4), (3, 2), 1, (2, 3), (4, 4, 3, 3), (8, 7)),
    ((5, 5), (3, 3), 2, 1, (2, 2, 2, 2), (4, 4)),
    ((3, 3), (1, 1), 1, 1, (0, 0, 0, 0), (3, 3)),
], ids=["k3", "nonsquare", "dilated", "stride2", "1x1"])
def test_full_padding(hw, kernel, stride, dilation, pad, out):
    g = conv_geometry(hw, kernel, stride=stride, padding="full", dilation=dilation)
    assert g.pad == pad
    assert (g.P, g.Q) == out


@pytest.mark.parametrize("hw,kernel,stride,dilation,out", [
    ((5, 5), (3, 3), 1, 1, (3, 3)),
    ((7, 6), (3, 2), 2, 1, (3, 3)),
    ((7, 7), (3, 3), 1, 2, (3, 3)),
    ((4, 5), (4, 5), 1, 1, (1, 1)),
    ((8, 9), (2, 3), (3, 2), (1, 2), (3, 3)),
], ids=["k3", "stride2", "dilation2", "kernel-equals-input", "nonsquare"])
def test_valid_padding(hw, kernel, stride, dilation, out):
    g = conv_geometry(hw, kernel, stride=stride, padding="valid", dilation=dilation)
    assert g.pad == (0, 0, 0, 0)
    assert (g.P, g.Q) == out


@pytest.mark.parametrize("padding,pad", [
    (0, (0, 0, 0, 0)), (2, (2, 2, 2, 2)), ((1, 3), (1, 1, 3, 3)), ([1, 3], (1, 1, 3, 3)),
    ((0, 2, 3, 1), (0, 2, 3, 1)), (np.int64(1), (1, 1, 1, 1)),
], ids=["zero", "int", "pair", "list-pair", "4-tuple", "numpy-int"])
def test_numeric_padding_forms(padding, pad):
    assert resolve_padding(padding, (5, 5), (3, 3), (1, 1), (1, 1)) == pad


def test_asymmetric_padding_output_size():
    # H: 5 + 0 + 2 = 7 padded, kernel 3, stride 2 -> 3; W: 6 + 3 + 1 = 10, kernel 2, stride 2 -> 5.
    g = ConvGeometry.create((2, 3, 5, 6), (4, 3, 3, 2), stride=2, padding=(0, 2, 3, 1))
    assert g.output_shape == (2, 4, 3, 5)
    assert g.pad == (0, 2, 3, 1)


def test_geometry_properties():
    g = ConvGeometry.create((2, 6, 5, 5), (6, 1, 3, 3), padding=1, groups=6)
    assert g.is_depthwise and not g.is_pointwise
    assert g.weight_shape == (6, 1, 3, 3) and g.input_shape == (2, 6, 5, 5)
    assert g.flops() == 2 * 2 * 6 * 5 * 5 * 1 * 3 * 3
    g = ConvGeometry.create((1, 4, 3, 3), (8, 4, 1, 1))
    assert g.is_pointwise and not g.is_depthwise
    assert not ConvGeometry.create((1, 4, 3, 3), (8, 4, 1, 1), stride=2).is_pointwise
    assert not ConvGeometry.create((1, 4, 3, 3), (8, 4, 1, 1), padding=(0, 0, 0, 1)).is_pointwise


def test_conv_output_size_matches_torch_grid():
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    x = torch.zeros(1, 1, 9, 9)
    for k, s, d, p in itertools.product(range(1, 5), range(1, 4), range(1, 3), range(0, 3)):
        w = torch.zeros(1, 1, k, k)
        if d * (k - 1) + 1 > 9 + 2 * p:
            with pytest.raises(ValueError, match="kernel larger than the padded input"):
                ConvGeometry.create((1, 1, 9, 9), (1, 1, k, k), s, p, d)
            continue
        expected = tuple(torch.nn.functional.conv2d(x, w, None, s, p, d).shape)
        assert ConvGeometry.create((1, 1, 9, 9), (1, 1, k, k), s, p, d).output_shape == expected


# ---------------------------------------------------------------- pooling ---

# (id, H, kernel, stride, pad, floor-mode output, ceil-mode output)
POOL_CASES = [
    ("exact-fit", 4, 2, 2, 0, 2, 2),
    ("remainder", 5, 2, 2, 0, 2, 3),
    ("k3-s2", 7, 3, 2, 0, 3, 3),
    ("k3-s2-remainder", 8, 3, 2, 0, 3, 4),
    ("k3-s2-pad1", 6, 3, 2, 1, 3, 4),
    # ceil would give 3 windows starting at -1, 2, 5; the last starts in the padding (5 >= H=5): dropped.
    ("drops-window-starting-in-padding", 5, 3, 3, 1, 2, 2),
    ("k2-s2-pad1-keeps-window-ending-in-padding", 6, 2, 2, 1, 4, 4),
    ("kernel-larger-than-input-ceil", 2, 3, 2, 0, None, 1),
    ("k1-s3", 7, 1, 3, 0, 3, 3),
    ("k4-s3-pad2", 9, 4, 3, 2, 4, 4),
    ("k4-s3-pad2-drop", 10, 4, 3, 2, 4, 4),  # ceil's 5th window would start at 12 - 2 = 10 = H
    ("k4-s3-pad2-remainder", 11, 4, 3, 2, 4, 5),
]


@pytest.mark.parametrize("H,k,s,p,floor_out,ceil_out", [c[1:] for c in POOL_CASES],
                         ids=[c[0] for c in POOL_CASES])
def test_pool_output_size(H, k, s, p, floor_out, ceil_out):
    g = PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode=True)
    assert (g.P, g.Q) == (ceil_out, ceil_out)
    assert direct.pool_output_size(H, k, s, p, True) == ceil_out
    if floor_out is None:
        with pytest.raises(ValueError, match="larger than the padded input"):
            PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode=False)
    else:
        g = PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode=False)
        assert (g.P, g.Q) == (floor_out, floor_out)
        assert direct.pool_output_size(H, k, s, p, False) == floor_out


def test_pool_last_window_never_starts_in_padding():
    # The rule behind the drop: with ceil_mode, every window starts inside the input or its left/top padding.
    for H, k, s in itertools.product(range(1, 12), range(1, 5), range(1, 5)):
        for p in range(0, k // 2 + 1):
            try:
                g = PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode=True)
            except ValueError:
                continue
            assert (g.P - 1) * s - p < H, (H, k, s, p)
            # ... and no window was missed: a next one would start in the padding or overhang the padded input.
            assert g.P * s - p >= H or g.P * s - p + k > H + p, (H, k, s, p)


def test_pool_stride_defaults_to_kernel_and_nonsquare():
    g = PoolGeometry.create((2, 3, 7, 10), (2, 3))
    assert g.stride == (2, 3) and g.output_shape == (2, 3, 3, 3)
    g = PoolGeometry.create((2, 3, 7, 10), (3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True)
    assert g.output_shape == (2, 3, 4, 9)


def test_pool_output_size_matches_torch_grid():
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    for H, k, s, ceil_mode in itertools.product(range(1, 9), range(1, 5), range(1, 4), (False, True)):
        for p in range(0, k // 2 + 1):
            try:
                expected = tuple(torch.nn.functional.max_pool2d(torch.zeros(1, 1, H, H), k, s, p,
                                                                ceil_mode=ceil_mode).shape)
            except RuntimeError:
                with pytest.raises(ValueError):
                    PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode)
                continue
            assert PoolGeometry.create((1, 1, H, H), k, s, p, ceil_mode).output_shape == expected, \
                (H, k, s, p, ceil_mode)


def _forward_with_crops(x, w, g):
    """The reference forward where negative padding crops the input first."""
    t, b, l, r = (max(-p, 0) for p in g.pad)
    x = x[:, :, t:x.shape[2] - b, l:x.shape[3] - r]
    cropped = ConvGeometry(g.N, g.C, x.shape[2], x.shape[3], g.K, g.R, g.S, g.P, g.Q, g.stride, g.dilation,
                           tuple(max(p, 0) for p in g.pad), g.groups)
    return reference.conv2d_forward(x, w, cropped)


@settings(max_examples=150, deadline=None)
@given(H=st.integers(1, 9), W=st.integers(1, 9), R=st.integers(1, 4), S=st.integers(1, 4),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4)), dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(*[st.integers(0, 4)] * 4), groups=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_dgrad_phases_reassemble_the_input_gradient(H, W, R, S, stride, dilation, pad, groups, seed):
    """ConvGeometry.dgrad_phases: the stride-1 forward convolutions of dy, one per phase with its reversed taps
    and each group's weight transposed, written into the phase's pixels, give the dgrad; no tap belongs to two
    phases; a phase without taps has a zero gradient. Against the reference's dgrad
    (col2im: no phases)."""
    try:
        g = ConvGeometry.create((2, 2 * groups, H, W), (3 * groups, 2, R, S), stride=stride, padding=pad,
                                dilation=dilation, groups=groups)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(seed)
    dy, w = rng.standard_normal(g.output_shape), rng.standard_normal(g.weight_shape)
    dx = np.full(g.input_shape, np.nan)
    taps = np.zeros((R, S), int)
    for phase in g.dgrad_phases():
        if phase.conv is None:
            dx[:, :, phase.rows, phase.cols] = 0.0
            continue
        taps[phase.r_taps, phase.s_taps] += 1
        sub = w[:, :, phase.r_taps, phase.s_taps][..., ::-1, ::-1]  # (K, Cg, R', S'), taps reversed
        kg = g.filters_per_group
        flipped = np.concatenate([sub[i * kg:(i + 1) * kg].transpose(1, 0, 2, 3) for i in range(groups)])
        conv = phase.conv
        assert conv.stride == (1, 1) and conv.input_shape == g.output_shape and conv.weight_shape == flipped.shape
        dx[:, :, phase.rows, phase.cols] = _forward_with_crops(dy, flipped, conv)
    # every tap in one phase -- where every phase holds input (else a tap may only ever meet padding)
    assert (taps <= 1).all() and ((taps == 1).all() or H < stride[0] or W < stride[1]), taps
    expected = reference.conv2d_grad_input(dy, w, g)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)
