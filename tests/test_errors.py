"""Bad arguments raise a clear ValueError / TypeError naming the problem; N == 0 is not an error."""
import numpy as np
import pytest

from gpuconv import functional as F
from gpuconv._backend import cuda_available


def arrays(x_shape=(2, 4, 6, 6), w_shape=(6, 4, 3, 3), dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)


X, W = arrays()
DY = np.zeros((2, 6, 4, 4), dtype=np.float32)  # conv2d(X, W) output shape


# ------------------------------------------------------------ convolution ---

# (id, conv2d kwargs overriding x/weight/..., exception type, message pattern)
CONV_ERRORS = [
    ("input-3d", dict(x=X[0]), ValueError, r"input must be 4-D \(N, C, H, W\), got shape \(4, 6, 6\)"),
    ("input-5d", dict(x=X[None]), ValueError, r"input must be 4-D"),
    ("weight-3d", dict(weight=W[0]), ValueError, r"weight must be 4-D"),
    ("channel-mismatch", dict(weight=arrays(w_shape=(6, 3, 3, 3))[1]), ValueError,
     r"channel mismatch: input has C=4 channels"),
    ("groups-not-dividing-C", dict(weight=arrays(w_shape=(6, 1, 3, 3))[1], groups=3), ValueError,
     r"groups=3 does not divide the input channels C=4"),
    ("groups-not-dividing-K", dict(weight=arrays(w_shape=(5, 2, 3, 3))[1], groups=2), ValueError,
     r"groups=2 does not divide the output channels K=5"),
    ("groups-zero", dict(groups=0), ValueError, r"groups must be >= 1"),
    ("groups-float", dict(groups=2.0), TypeError, r"groups must be an int"),
    ("kernel-larger-than-input", dict(weight=arrays(w_shape=(6, 4, 7, 3))[1]), ValueError,
     r"kernel larger than the padded input"),
    ("dilated-kernel-larger-than-padded-input", dict(dilation=3, padding=(1, 0)), ValueError,
     r"kernel larger than the padded input: input 6x6 padded by \(1, 1, 0, 0\) is 8x6"),
    ("stride-zero", dict(stride=0), ValueError, r"stride must be >= 1"),
    ("stride-negative-in-pair", dict(stride=(1, -2)), ValueError, r"stride must be >= 1"),
    ("stride-float", dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints"),
    ("stride-bool", dict(stride=True), TypeError, r"stride must be an int or a pair of ints"),
    ("stride-triple", dict(stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair of ints"),
    ("dilation-zero", dict(dilation=0), ValueError, r"dilation must be >= 1"),
    ("dilation-negative", dict(dilation=(-1, 1)), ValueError, r"dilation must be >= 1"),
    ("padding-negative-int", dict(padding=-1), ValueError, r"padding must be >= 0"),
    ("padding-negative-pair", dict(padding=(0, -1)), ValueError, r"padding must be >= 0"),
    ("padding-negative-4tuple", dict(padding=(0, 0, -1, 1)), ValueError, r"padding must be >= 0"),
    ("padding-unknown-string", dict(padding="half"), ValueError, r"unknown padding string 'half'"),
    ("padding-tuple-length-3", dict(padding=(1, 1, 1)), ValueError,
     r"padding as a tuple must have 2 \(pad_h, pad_w\) or 4 \(top, bottom, left, right\) entries, got 3"),
    ("padding-tuple-length-1", dict(padding=(1,)), ValueError, r"must have 2 .* or 4 .* entries, got 1"),
    ("padding-float", dict(padding=1.0), TypeError, r"padding must be an int, a pair, a 4-tuple or a string"),
    ("dtype-mismatch", dict(weight=W.astype(np.float64)), TypeError,
     r"dtype mismatch: x is float32 but weight is float64"),
    ("bias-dtype-mismatch", dict(bias=np.zeros(6)), TypeError, r"dtype mismatch: x is float32 but bias is float64"),
    ("input-int", dict(x=X.astype(np.int32), weight=W.astype(np.int32)), TypeError,
     r"x must have a floating dtype .*got int32"),
    ("input-bool", dict(x=X > 0), TypeError, r"x must have a floating dtype .*got bool"),
    ("input-complex", dict(x=X.astype(np.complex64)), TypeError, r"x must have a floating dtype .*got complex64"),
    ("weight-int", dict(weight=W.astype(np.int64)), TypeError, r"weight must have a floating dtype .*got int64"),
    ("bias-shape", dict(bias=np.zeros(5, dtype=np.float32)), ValueError, r"bias must have shape \(6,\), got \(5,\)"),
    ("bias-2d", dict(bias=np.zeros((6, 1), dtype=np.float32)), ValueError, r"bias must have shape \(6,\)"),
    ("unknown-algo", dict(algo="winograd"), ValueError, r"algo='winograd' is not available for NumPy"),
    ("gpu-only-algo-on-numpy", dict(algo="implicit_gemm"), ValueError, r"algo='implicit_gemm' is not available"),
    ("algo-not-string", dict(algo=None), TypeError, r"algo must be a string"),
    ("list-input", dict(x=X.tolist()), TypeError, r"x must be a numpy.ndarray or cupy.ndarray, got list"),
    ("list-weight", dict(weight=W.tolist()), TypeError, r"weight must be a numpy.ndarray or cupy.ndarray, got list"),
    ("list-bias", dict(bias=[0.0] * 6), TypeError, r"bias must be a numpy.ndarray or cupy.ndarray, got list"),
    ("empty-channels", dict(x=np.zeros((2, 0, 6, 6), np.float32), weight=np.zeros((6, 0, 3, 3), np.float32)),
     ValueError, r"empty channel or spatial dimension"),
    ("empty-spatial", dict(x=np.zeros((2, 4, 0, 6), np.float32)), ValueError, r"empty channel or spatial dimension"),
]


@pytest.mark.parametrize("overrides,error,match", [c[1:] for c in CONV_ERRORS], ids=[c[0] for c in CONV_ERRORS])
def test_conv2d_rejects(overrides, error, match):
    kwargs = dict(x=X, weight=W)
    kwargs.update(overrides)
    with pytest.raises(error, match=match):
        F.conv2d(**kwargs)


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.conv2d_grad_input(DY[:, :, :3], W, X.shape), ValueError,
     r"grad_output must have shape \(2, 6, 4, 4\) for this convolution, got \(2, 6, 3, 4\)"),
    (lambda: F.conv2d_grad_input(DY, W, X.shape, padding=1), ValueError,
     r"grad_output must have shape \(2, 6, 6, 6\)"),
    (lambda: F.conv2d_grad_weight(X, DY[:1], W.shape), ValueError, r"grad_output must have shape \(2, 6, 4, 4\)"),
    (lambda: F.conv2d_grad_input(DY, W, X.shape[1:]), ValueError, r"input must be 4-D"),
    (lambda: F.conv2d_grad_weight(X, DY, W.shape[1:]), ValueError, r"weight must be 4-D"),
    (lambda: F.conv2d_grad_input(DY.astype(np.float64), W, X.shape), TypeError,
     r"dtype mismatch: grad_output is float64 but weight is float32"),
    (lambda: F.conv2d_grad_weight(X, DY.astype(np.float16), W.shape), TypeError, r"dtype mismatch"),
    (lambda: F.conv2d_grad_input(DY, W, X.shape, algo="fastest"), ValueError, r"algo='fastest' is not available"),
    (lambda: F.conv2d_grad_weight(X, DY, W.shape, algo="fastest"), ValueError, r"algo='fastest' is not available"),
    (lambda: F.conv2d_grad_weight(X.tolist(), DY, W.shape), TypeError, r"x must be a numpy.ndarray"),
    (lambda: F.conv2d_grad_bias(DY[0]), ValueError, r"grad_output must be 4-D \(N, K, P, Q\), got 3-D"),
    (lambda: F.conv2d_grad_bias(DY.astype(np.int32)), TypeError, r"grad_output must have a floating dtype"),
    (lambda: F.conv2d_grad_bias(DY.tolist()), TypeError, r"grad_output must be a numpy.ndarray"),
], ids=["grad-input-bad-grad-output-shape", "grad-input-grad-output-for-other-padding",
        "grad-weight-bad-grad-output-batch", "grad-input-input-shape-3d", "grad-weight-weight-shape-3d",
        "grad-input-dtype-mismatch", "grad-weight-dtype-mismatch", "grad-input-unknown-algo",
        "grad-weight-unknown-algo", "grad-weight-list-input", "grad-bias-3d", "grad-bias-int", "grad-bias-list"])
def test_conv2d_grads_reject(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="no CUDA device")
def test_numpy_cupy_mix_is_a_type_error():
    import cupy
    with pytest.raises(TypeError, match=r"arrays are on different devices: x on CPU \(numpy\), weight on GPU"):
        F.conv2d(X, cupy.asarray(W))


# ---------------------------------------------------------------- pooling ---

POOL_ERRORS = [
    ("padding-three-entries", dict(kernel_size=3, padding=(1, 2, 3)), ValueError,
     r"padding as a tuple must have 2 \(pad_h, pad_w\) or 4 \(top, bottom, left, right\) entries"),
    ("padding-unknown-string", dict(kernel_size=3, padding="same_left"), ValueError,
     r"unknown padding string 'same_left'"),
    ("dilation-zero", dict(kernel_size=2, dilation=0), ValueError, r"dilation must be >= 1"),
    ("dilated-window-larger-than-input", dict(kernel_size=3, dilation=3), ValueError,
     r"pooling window \(3, 3\) \(dilation \(3, 3\)\) larger than the padded input 6x6"),
    ("padding-negative", dict(kernel_size=3, padding=-1), ValueError, r"padding must be >= 0"),
    ("kernel-zero", dict(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    ("kernel-float", dict(kernel_size=2.0), TypeError, r"kernel_size must be an int or a pair of ints"),
    ("stride-zero", dict(kernel_size=2, stride=0), ValueError, r"stride must be >= 1"),
    ("window-larger-than-input", dict(kernel_size=(7, 2)), ValueError,
     r"pooling window \(7, 2\) larger than the padded input 6x6"),
    ("input-3d", dict(x=X[0], kernel_size=2), ValueError, r"input must be 4-D"),
    ("input-complex", dict(x=X.astype(np.complex64), kernel_size=2), TypeError, r"x must have a floating"),
    ("input-list", dict(x=X.tolist(), kernel_size=2), TypeError, r"x must be a numpy.ndarray"),
]


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("kwargs,error,match", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pool_rejects(pool, kwargs, error, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", X)
    with pytest.raises(error, match=match):
        (F.max_pool2d if pool == "max" else F.avg_pool2d)(x, **kwargs)


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.max_pool2d_grad(np.zeros((2, 4, 2, 3), np.float32), X, 3), ValueError,
     r"grad_output must have shape \(2, 4, 2, 2\) for this pooling, got \(2, 4, 2, 3\)"),
    (lambda: F.avg_pool2d_grad(np.zeros((2, 4, 3, 3), np.float32), X.shape, 3, 1), ValueError,
     r"grad_output must have shape \(2, 4, 4, 4\)"),
    (lambda: F.max_pool2d_grad(np.zeros((2, 4, 2, 2)), X, 3), TypeError,
     r"dtype mismatch: grad_output is float64 but x is float32"),
    (lambda: F.avg_pool2d_grad(np.zeros((2, 4, 2, 2), np.int32), X.shape, 3), TypeError,
     r"grad_output has the integer dtype int32: only max pooling's forward pass takes integers"),
    (lambda: F.max_pool2d_grad(np.zeros((2, 4, 2, 2), np.int32), X.astype(np.int32), 3), TypeError,
     r"grad_output must have a floating dtype"),
    (lambda: F.avg_pool2d(X.astype(np.int32), 3), TypeError,
     r"x has the integer dtype int32: only max pooling's forward pass takes integers"),
], ids=["max-grad-bad-grad-output-shape", "avg-grad-bad-grad-output-shape", "max-grad-dtype-mismatch",
        "avg-grad-int", "max-grad-int", "avg-int"])
def test_pool_grads_reject(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- N == 0 ---

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_empty_batch_conv2d(dtype):
    x = np.zeros((0, 4, 6, 5), dtype=dtype)
    w = np.ones((6, 2, 3, 2), dtype=dtype)
    y = F.conv2d(x, w, np.ones(6, dtype=dtype), stride=(2, 1), padding="same", groups=2)
    assert y.shape == (0, 6, 3, 5) and y.dtype == dtype
    dx = F.conv2d_grad_input(y, w, x.shape, stride=(2, 1), padding="same", groups=2)
    assert dx.shape == x.shape and dx.dtype == dtype
    dw = F.conv2d_grad_weight(x, y, w.shape, stride=(2, 1), padding="same", groups=2)
    assert dw.shape == w.shape and dw.dtype == dtype
    assert np.all(dw == 0)  # no samples, no gradient
    db = F.conv2d_grad_bias(y)
    assert db.shape == (6,) and db.dtype == dtype and np.all(db == 0)


def test_empty_batch_still_validates():
    # N == 0 short-cuts the computation, not the checks.
    x = np.zeros((0, 4, 6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="channel mismatch"):
        F.conv2d(x, np.zeros((6, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        F.conv2d(x, np.zeros((6, 4, 7, 7), np.float32))
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.conv2d(x, np.zeros((6, 4, 3, 3), np.float64))
    with pytest.raises(ValueError, match="padding as a tuple must have 2"):
        F.max_pool2d(x, 2, padding=(1, 2, 3))


@pytest.mark.parametrize("algo", ["winograd", None], ids=["unknown-algo", "algo-not-string"])
def test_empty_batch_still_validates_algo(algo):
    x = np.zeros((0, 4, 6, 6), dtype=np.float32)
    with pytest.raises((ValueError, TypeError), match="algo"):
        F.conv2d(x, W, algo=algo)


def test_empty_batch_pools():
    x = np.zeros((0, 3, 7, 5), dtype=np.float32)
    y = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    assert y.shape == (0, 3, 4, 3) and y.dtype == np.float32
    assert F.max_pool2d_grad(y, x, 3, 2, 1, ceil_mode=True).shape == x.shape
    y = F.avg_pool2d(x, 2, count_include_pad=False)
    assert y.shape == (0, 3, 3, 2) and y.dtype == np.float32
    dx = F.avg_pool2d_grad(y, x.shape, 2, count_include_pad=False)
    assert dx.shape == x.shape and dx.dtype == np.float32
