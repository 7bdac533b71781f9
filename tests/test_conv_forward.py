"""conv2d forward (NumPy path) against the direct 7-loop definition in tests/direct.py, and against PyTorch."""
import functools
import zlib

import numpy as np
import pytest

import direct
from gpuconv import functional as F

# (id, input shape, weight shape, conv kwargs). Small: the direct loops are pure Python.
CASES = [
    ("basic-3x3", (2, 3, 6, 6), (4, 3, 3, 3), {}),
    ("pad-int", (2, 3, 5, 5), (4, 3, 3, 3), dict(padding=1)),
    ("pad-pair", (1, 2, 5, 6), (3, 2, 3, 3), dict(padding=(2, 1))),
    ("pad-4tuple-asym", (2, 2, 5, 6), (3, 2, 3, 2), dict(padding=(0, 2, 3, 1))),
    ("pad-valid", (1, 2, 7, 5), (3, 2, 3, 2), dict(padding="valid")),
    ("pad-same-odd", (2, 2, 5, 6), (3, 2, 3, 3), dict(padding="same")),
    ("pad-same-even-kernel", (1, 2, 5, 6), (3, 2, 4, 2), dict(padding="same")),
    ("pad-same-stride2", (1, 2, 7, 6), (3, 2, 3, 3), dict(padding="same", stride=2)),
    ("pad-same-stride2-even-kernel", (1, 2, 6, 7), (2, 2, 4, 2), dict(padding="same", stride=2)),
    ("pad-same-dilation2", (1, 2, 6, 5), (2, 2, 3, 2), dict(padding="same", dilation=2)),
    ("pad-full", (1, 2, 4, 5), (3, 2, 3, 2), dict(padding="full")),
    ("pad-full-dilation", (1, 2, 4, 4), (2, 2, 2, 3), dict(padding="full", dilation=(2, 1))),
    ("stride2", (2, 3, 7, 7), (2, 3, 3, 3), dict(stride=2)),
    ("stride-nonsquare", (1, 2, 7, 8), (3, 2, 3, 2), dict(stride=(2, 3), padding=1)),
    ("stride-exceeds-kernel", (1, 2, 9, 9), (2, 2, 2, 2), dict(stride=3)),
    ("dilation2", (1, 2, 7, 7), (3, 2, 3, 3), dict(dilation=2)),
    ("dilation-nonsquare-padded", (2, 2, 7, 8), (2, 2, 3, 2), dict(dilation=(2, 3), padding=(1, 2))),
    ("groups2", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1)),
    ("groups3-stride", (1, 6, 6, 5), (3, 2, 2, 3), dict(groups=3, stride=2)),
    ("depthwise", (2, 4, 5, 6), (4, 1, 3, 3), dict(groups=4, padding=1)),
    ("depthwise-multiplier2", (1, 3, 5, 5), (6, 1, 3, 3), dict(groups=3, padding=(1, 0, 2, 1))),
    ("pointwise-1x1", (2, 5, 4, 3), (3, 5, 1, 1), {}),
    ("pointwise-1x1-stride2-padded", (1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2, padding=1)),
    ("kernel-equals-input", (2, 3, 4, 5), (2, 3, 4, 5), {}),
    ("kernel-equals-padded-input", (1, 2, 3, 3), (2, 2, 5, 4), dict(padding=(1, 1, 0, 1))),
    ("batch1-single-channel", (1, 1, 5, 4), (1, 1, 2, 3), {}),
    ("nonsquare-everything", (2, 3, 5, 8), (4, 3, 2, 4), dict(stride=(1, 2), padding=(1, 0, 0, 2),
                                                               dilation=(2, 1))),
    ("bias", (2, 3, 5, 5), (4, 3, 3, 3), dict(padding=1, bias=True)),
    ("bias-groups-asym", (1, 4, 6, 5), (6, 2, 3, 2), dict(groups=2, padding=(2, 0, 1, 1), stride=(2, 1),
                                                           bias=True)),
]
CASE_IDS = [c[0] for c in CASES]
CASES_BY_ID = {c[0]: c for c in CASES}


def resolved_padding(padding, x_shape, w_shape, stride, dilation):
    """The 4-sided padding the string modes stand for, written from their definitions."""
    if padding == "valid":
        return 0
    if padding == "full":
        dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
        ph, pw = dh * (w_shape[2] - 1), dw * (w_shape[3] - 1)
        return (ph, ph, pw, pw)
    if padding == "same":
        return direct.same_padding(x_shape[2:], w_shape[2:], stride, dilation)
    return padding


@functools.lru_cache(maxsize=None)
def case_data(case_id):
    """(x, w, bias or None, conv kwargs without bias, expected float64 output) for one case."""
    _, x_shape, w_shape, kwargs = CASES_BY_ID[case_id]
    kwargs = dict(kwargs)
    use_bias = kwargs.pop("bias", False)
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))  # deterministic per case
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0]) if use_bias else None
    stride, dilation = kwargs.get("stride", 1), kwargs.get("dilation", 1)
    pads = resolved_padding(kwargs.get("padding", 0), x_shape, w_shape, stride, dilation)
    expected = direct.conv2d(x, w, bias, stride=stride, padding=pads, dilation=dilation,
                             groups=kwargs.get("groups", 1))
    return x, w, bias, kwargs, expected


TOLERANCES = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("algo", ["reference", "auto"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_conv2d_matches_direct_definition(case_id, algo, dtype):
    x, w, bias, kwargs, expected = case_data(case_id)
    b = None if bias is None else bias.astype(dtype)
    y = F.conv2d(x.astype(dtype), w.astype(dtype), b, algo=algo, **kwargs)
    assert y.dtype == dtype
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("algo", ["reference", "auto"])
def test_conv2d_same_padding_keeps_ceil_size(algo):
    # "same" means output = ceil(input / stride), whatever the kernel, stride and dilation.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 7, 6))
    for kernel in [(1, 1), (2, 2), (3, 4), (5, 2)]:
        for stride in [1, 2, 3]:
            for dilation in [1, 2]:
                w = rng.standard_normal((1, 1) + kernel)
                y = F.conv2d(x, w, stride=stride, padding="same", dilation=dilation, algo=algo)
                assert y.shape[2:] == (-(-7 // stride), -(-6 // stride)), (kernel, stride, dilation)


@pytest.mark.parametrize("algo", ["reference", "auto"])
def test_conv2d_non_contiguous_inputs(algo):
    # Views with odd strides (transposed, stepped) must give the same result as contiguous copies.
    x, w, bias, kwargs, expected = case_data("bias-groups-asym")
    x_view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    w_big = np.zeros(w.shape[:3] + (2 * w.shape[3],))
    w_big[..., ::2] = w
    b_big = np.zeros(2 * bias.size)
    b_big[::2] = bias
    assert not x_view.flags.c_contiguous and not w_big[..., ::2].flags.c_contiguous
    y = F.conv2d(x_view, w_big[..., ::2], b_big[::2], algo=algo, **kwargs)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algo", ["reference", "auto"])
def test_conv2d_float16_computes_and_returns_float16(algo):
    x, w, bias, kwargs, expected = case_data("bias")
    y = F.conv2d(x.astype(np.float16), w.astype(np.float16), bias.astype(np.float16), algo=algo, **kwargs)
    assert y.dtype == np.float16
    # 27 products of float16-rounded inputs, accumulated in float32, then rounded to float16.
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=2e-2, atol=5e-2)


def test_conv2d_is_cross_correlation_not_convolution():
    # A hand-computed case: the kernel is not flipped (PyTorch / cuDNN convention).
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = F.conv2d(x, w)
    # y[0,0] = 0*1 + 1*2 + 3*3 + 4*4 = 27, and so on.
    np.testing.assert_array_equal(y[0, 0], [[27.0, 37.0], [57.0, 67.0]])


# ------------------------------------------------------------------ PyTorch ---

def _torch_conv2d(torch, x, w, bias, stride=1, padding=0, dilation=1, groups=1):
    """PyTorch's conv2d, with asymmetric padding done by an explicit zero pad."""
    tF = torch.nn.functional
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    bt = None if bias is None else torch.from_numpy(bias)
    if isinstance(padding, str):
        return tF.conv2d(xt, wt, bt, stride, padding, dilation, groups).numpy()
    top, bottom, left, right = direct.four_sided(padding)
    xt = tF.pad(xt, (left, right, top, bottom))
    return tF.conv2d(xt, wt, bt, stride, 0, dilation, groups).numpy()


@pytest.mark.parametrize("algo", ["reference", "auto"])
def test_conv2d_matches_torch(algo):
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    for case_id in CASE_IDS:
        x, w, bias, kwargs, _ = case_data(case_id)
        stride, dilation = kwargs.get("stride", 1), kwargs.get("dilation", 1)
        pads = resolved_padding(kwargs.get("padding", 0), x.shape, w.shape, stride, dilation)
        expected = _torch_conv2d(torch, x, w, bias, stride, pads, dilation, kwargs.get("groups", 1))
        y = F.conv2d(x, w, bias, algo=algo, **kwargs)
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10, err_msg=case_id)


@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 2), 1), ((2, 5), (2, 1)), ((4, 4), 2)],
                         ids=["3x3", "4x2-even", "2x5-dilated", "4x4-dilation2"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's perf note
def test_conv2d_same_matches_torch_same(kernel, dilation):
    # PyTorch's padding="same" (stride 1) also puts the odd pixel at the bottom/right.
    torch = pytest.importorskip("torch", reason="torch is optional: the PyTorch cross-check needs it installed")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 7))
    w = rng.standard_normal((3, 2) + kernel)
    expected = _torch_conv2d(torch, x, w, None, padding="same", dilation=dilation)
    y = F.conv2d(x, w, padding="same", dilation=dilation)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
