"""Reliability on the CPU: every public function and layer against bad arguments, empty batches, views, NaN/Inf.

Error cases are tables: each row names the call, what is wrong, the exception type, and a pattern that the
message must match -- the argument's name together with the expected and the actual value.
"""
import re

import numpy as np
import pytest

import direct
import gpuconv
from gpuconv import functional as F
from gpuconv import nn

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
W = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
B = rng.standard_normal(6).astype(np.float32)
DY = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)  # conv2d(X, W) output shape
PDY = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)  # 2x2 pooling of X

# Every public function, called with keyword arguments; a case replaces some of them.
FUNCTIONS = {
    "conv2d": (F.conv2d, dict(x=X, weight=W, bias=B)),
    "conv2d_grad_input": (F.conv2d_grad_input, dict(grad_output=DY, weight=W, input_shape=X.shape)),
    "conv2d_grad_weight": (F.conv2d_grad_weight, dict(x=X, grad_output=DY, weight_shape=W.shape)),
    "conv2d_grad_bias": (F.conv2d_grad_bias, dict(grad_output=DY)),
    "max_pool2d": (F.max_pool2d, dict(x=X, kernel_size=2)),
    "max_pool2d_grad": (F.max_pool2d_grad, dict(grad_output=PDY, x=X, kernel_size=2)),
    "avg_pool2d": (F.avg_pool2d, dict(x=X, kernel_size=2)),
    "avg_pool2d_grad": (F.avg_pool2d_grad, dict(grad_output=PDY, input_shape=X.shape, kernel_size=2)),
}
ARRAY_ARGS = {name: [k for k, v in kwargs.items() if isinstance(v, np.ndarray)]
              for name, (_, kwargs) in FUNCTIONS.items()}
CONV_FUNCTIONS = ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"]
POOL_FUNCTIONS = ["max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"]


def call(function, **overrides):
    fn, kwargs = FUNCTIONS[function]
    return fn(**dict(kwargs, **overrides))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_unmodified_calls_are_valid(function):
    # So that each error below comes from the one thing a case changes.
    out = call(function)
    assert out.dtype == np.float32


def case(function, overrides, error, match, id):
    return pytest.param(function, overrides, error, match, id=f"{function}-{id}")


def shape_re(shape):
    return re.escape(str(tuple(shape)))


CONV_LAYOUT = {"x": ("input", "N, C, H, W"), "input_shape": ("input", "N, C, H, W"),
               "weight": ("weight", "out_channels, in_channels/groups, kH, kW"),
               "weight_shape": ("weight", "out_channels, in_channels/groups, kH, kW")}


def wrong_ndim_cases():
    cases = []
    for function, args in ARRAY_ARGS.items():
        kwargs = FUNCTIONS[function][1]
        shape_args = [k for k in kwargs if k.endswith("_shape")]
        for arg in args + shape_args:
            value = kwargs[arg]
            if arg not in args:
                bads = (value[1:], value + (1,))
            else:
                bads = (value[0] if value.ndim > 1 else np.asarray(value[0]), value[None])  # 1-D bias: a 0-D array
            for bad in bads:
                shape = bad.shape if arg in args else bad
                ndim = len(shape)
                if arg == "bias":
                    match = rf"bias must have shape \(6,\), got {shape_re(shape)}"
                elif arg == "grad_output" and function == "conv2d_grad_bias":
                    match = rf"grad_output must be 4-D \(N, K, P, Q\), got {ndim}-D shape {shape_re(shape)}"
                elif arg == "grad_output":
                    what = "convolution" if function.startswith("conv") else "pooling"
                    match = (rf"grad_output must have shape {shape_re(value.shape)} for this {what}, "
                             rf"got {shape_re(shape)}")
                else:
                    name, layout = CONV_LAYOUT[arg]
                    match = rf"{name} must be 4-D \({re.escape(layout)}\), got shape {shape_re(shape)} \({ndim}-D\)"
                cases.append(case(function, {arg: bad}, ValueError, match, f"{arg}-{ndim}d"))
    return cases


def wrong_dtype_cases():
    cases = []
    for function, args in ARRAY_ARGS.items():
        for arg in args:
            value = FUNCTIONS[function][1][arg]
            for dtype in (np.int32, np.complex64, np.bool_):
                if function == "max_pool2d" and dtype is np.int32:
                    continue  # max pooling's forward takes integers (tests/test_pool.py)
                kinds = ("a floating or integer dtype" if function == "max_pool2d" else
                         r"a floating dtype \(float16, bfloat16, float32 or float64\)")
                if function.startswith("avg") and dtype is np.int32:
                    kinds = r"the integer dtype int32: only max pooling's forward pass takes integers"
                    match = rf"{arg} has {kinds}"
                else:
                    match = rf"{arg} must have {kinds}.*got {np.dtype(dtype).name}"
                cases.append(case(function, {arg: value.astype(dtype)}, TypeError, match,
                                  f"{arg}-{np.dtype(dtype).name}"))
    return cases


def mixed_dtype_cases():
    cases = []
    for function, args in ARRAY_ARGS.items():
        if len(args) < 2:
            continue
        first, second = args[:2]
        value = FUNCTIONS[function][1][second]
        for dtype in (np.float64, np.float16):
            match = rf"dtype mismatch: {first} is float32 but {second} is {np.dtype(dtype).name}"
            cases.append(case(function, {second: value.astype(dtype)}, TypeError, match,
                              f"{second}-{np.dtype(dtype).name}"))
    return cases


def not_an_array_cases():
    cases = []
    for function, args in ARRAY_ARGS.items():
        for arg in args:
            value = FUNCTIONS[function][1][arg]
            for bad, kind in ((value.tolist(), "list"), (tuple(value.tolist()), "tuple"), (1.5, "float")):
                match = rf"{arg} must be a numpy.ndarray or cupy.ndarray, got {kind}"
                cases.append(case(function, {arg: bad}, TypeError, match, f"{arg}-{kind}"))
    return cases


GEOMETRY_CASES = []
for function in CONV_FUNCTIONS:
    GEOMETRY_CASES += [
        case(function, dict(stride=0), ValueError, r"stride must be >= 1, got 0", "stride-0"),
        case(function, dict(stride=(1, -2)), ValueError, r"stride must be >= 1, got \(1, -2\)", "stride-negative"),
        case(function, dict(dilation=0), ValueError, r"dilation must be >= 1, got 0", "dilation-0"),
        case(function, dict(dilation=(-1, 1)), ValueError, r"dilation must be >= 1, got \(-1, 1\)",
             "dilation-negative"),
        case(function, dict(padding=-1), ValueError, r"padding must be >= 0, got -1", "padding-negative"),
        case(function, dict(padding=(0, 0, 2, -1)), ValueError, r"padding must be >= 0, got \(0, 0, 2, -1\)",
             "padding-negative-4-sided"),
        case(function, dict(groups=0), ValueError, r"groups must be >= 1, got 0", "groups-0"),
        case(function, dict(groups=3), ValueError, r"groups=3 does not divide the input channels C=4", "groups-C"),
        case(function, dict(stride=1.0), TypeError, r"stride must be an int or a pair of ints, got 1.0",
             "stride-float"),
    ]
GEOMETRY_CASES += [
    case("conv2d", dict(weight=W[:, :3]), ValueError,
         r"channel mismatch: input has C=4 channels, so weight.shape\[1\] must be C/groups=4, got 3",
         "channel-mismatch"),
    case("conv2d", dict(weight=W[:, :1], groups=2, bias=None), ValueError,
         r"channel mismatch: input has C=4 channels, so weight.shape\[1\] must be C/groups=2, got 1",
         "channel-mismatch-groups"),
    case("conv2d", dict(weight=W[:5, :2], groups=2, bias=None), ValueError,
         r"groups=2 does not divide the output channels K=5", "groups-K"),
    case("conv2d", dict(bias=B[:5]), ValueError, r"bias must have shape \(6,\), got \(5,\)", "bias-length"),
    case("conv2d_grad_input", dict(input_shape=(2, 3, 6, 6)), ValueError,
         r"channel mismatch: input has C=3 channels, so weight.shape\[1\] must be C/groups=3, got 4",
         "channel-mismatch"),
    case("conv2d_grad_weight", dict(weight_shape=(6, 2, 3, 3)), ValueError,
         r"channel mismatch: input has C=4 channels, so weight.shape\[1\] must be C/groups=4, got 2",
         "channel-mismatch"),
    case("conv2d_grad_input", dict(input_shape=(2, 4, 6.0, 6)), TypeError,
         r"input shape must hold ints, got \(2, 4, 6.0, 6\)", "input-shape-float"),
    case("conv2d_grad_weight", dict(weight_shape=(6, 4, 3, "3")), TypeError,
         r"weight shape must hold ints, got \(6, 4, 3, '3'\)", "weight-shape-str"),
    case("conv2d", dict(weight=np.zeros((6, 4, 7, 3), np.float32)), ValueError,
         r"kernel larger than the padded input: input 6x6 padded by \(0, 0, 0, 0\) is 6x6, but the dilated "
         r"kernel spans 7x3", "kernel-larger"),
    case("conv2d", dict(dilation=(3, 1), padding=(0, 0, 1, 1)), ValueError,
         r"kernel larger than the padded input: input 6x6 padded by \(0, 0, 1, 1\) is 6x8, but the dilated "
         r"kernel spans 7x3", "dilated-kernel-larger"),
    case("conv2d_grad_input", dict(input_shape=(2, 4, 2, 6)), ValueError,
         r"kernel larger than the padded input: input 2x6 .* is 2x6, but the dilated kernel spans 3x3",
         "kernel-larger"),
    case("conv2d_grad_weight", dict(weight_shape=(6, 4, 3, 9)), ValueError,
         r"kernel larger than the padded input: input 6x6 .* is 6x6, but the dilated kernel spans 3x9",
         "kernel-larger"),
]
for function in POOL_FUNCTIONS:
    GEOMETRY_CASES += [
        case(function, dict(stride=0), ValueError, r"stride must be >= 1, got 0", "stride-0"),
        case(function, dict(stride=(-1, 1)), ValueError, r"stride must be >= 1, got \(-1, 1\)", "stride-negative"),
        case(function, dict(padding=-1), ValueError, r"padding must be >= 0, got -1", "padding-negative"),
        case(function, dict(kernel_size=(7, 2)), ValueError,
             r"pooling window \(7, 2\) larger than the padded input 6x6", "window-larger"),
        case(function, dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got 0", "kernel-0"),
    ]


def check_raises(function, overrides, error, match):
    with pytest.raises(error) as info:
        call(function, **overrides)
    assert info.type is error  # not a subclass standing in for it
    assert re.search(match, str(info.value)), f"message {str(info.value)!r} does not match {match!r}"


@pytest.mark.parametrize("function,overrides,error,match", wrong_ndim_cases())
def test_wrong_ndim(function, overrides, error, match):
    check_raises(function, overrides, error, match)


@pytest.mark.parametrize("function,overrides,error,match", wrong_dtype_cases())
def test_wrong_dtype(function, overrides, error, match):
    check_raises(function, overrides, error, match)


@pytest.mark.parametrize("function,overrides,error,match", mixed_dtype_cases())
def test_mixed_float_dtypes(function, overrides, error, match):
    check_raises(function, overrides, error, match)


@pytest.mark.parametrize("function,overrides,error,match", not_an_array_cases())
def test_not_an_array(function, overrides, error, match):
    check_raises(function, overrides, error, match)


@pytest.mark.parametrize("function,overrides,error,match", GEOMETRY_CASES)
def test_bad_geometry(function, overrides, error, match):
    check_raises(function, overrides, error, match)


# ------------------------------------------------------------------ layers ---

def conv_layer(*args, **kwargs):
    return lambda: nn.Conv2d(*args, **kwargs)


LAYER_CASES = [
    # Conv2d: the constructor checks its arguments; forward checks the input against the weights.
    ("Conv2d-stride-0", conv_layer(4, 6, 3, stride=0), ValueError, r"stride must be >= 1, got 0"),
    ("Conv2d-dilation-negative", conv_layer(4, 6, 3, dilation=(1, -1)), ValueError,
     r"dilation must be >= 1, got \(1, -1\)"),
    ("Conv2d-padding-negative", conv_layer(4, 6, 3, padding=-2), ValueError, r"padding must be >= 0, got -2"),
    ("Conv2d-padding-3-tuple", conv_layer(4, 6, 3, padding=(1, 1, 1)), ValueError,
     r"padding as a tuple must have 2 \(pad_h, pad_w\) or 4 \(top, bottom, left, right\) entries, got 3"),
    ("Conv2d-padding-string", conv_layer(4, 6, 3, padding="half"), ValueError, r"unknown padding string 'half'"),
    ("Conv2d-kernel-0", conv_layer(4, 6, 0), ValueError, r"kernel_size must be >= 1, got 0"),
    ("Conv2d-groups-0", conv_layer(4, 6, 3, groups=0), ValueError, r"groups must be >= 1, got 0"),
    ("Conv2d-groups-float", conv_layer(4, 6, 3, groups=2.0), TypeError, r"groups must be an int, got 2.0"),
    ("Conv2d-groups-in", conv_layer(4, 6, 3, groups=3), ValueError,
     r"groups=3 must divide in_channels=4 and out_channels=6"),
    ("Conv2d-x-3d", lambda: nn.Conv2d(4, 6, 3).forward(X[0]), ValueError,
     r"input must be 4-D \(N, C, H, W\), got shape \(4, 6, 6\) \(3-D\)"),
    ("Conv2d-channels", lambda: nn.Conv2d(3, 6, 3).forward(X), ValueError,
     r"channel mismatch: input has C=4 channels, so weight.shape\[1\] must be C/groups=4, got 3"),
    ("Conv2d-x-float64", lambda: nn.Conv2d(4, 6, 3).forward(X.astype(np.float64)), TypeError,
     r"dtype mismatch: x is float64 but weight is float32"),
    ("Conv2d-x-int", lambda: nn.Conv2d(4, 6, 3).forward(X.astype(np.int64)), TypeError,
     r"x must have a floating dtype \(float16, bfloat16, float32 or float64\), got int64"),
    ("Conv2d-x-complex", lambda: nn.Conv2d(4, 6, 3).forward(X.astype(np.complex128)), TypeError,
     r"x must have a floating dtype .*got complex128"),
    ("Conv2d-x-bool", lambda: nn.Conv2d(4, 6, 3).forward(X > 0), TypeError, r"x must have a floating dtype .*got bool"),
    ("Conv2d-x-list", lambda: nn.Conv2d(4, 6, 3).forward(X.tolist()), TypeError,
     r"x must be a numpy.ndarray or cupy.ndarray, got list"),
    ("Conv2d-kernel-larger", lambda: nn.Conv2d(4, 6, 7).forward(X), ValueError,
     r"kernel larger than the padded input: input 6x6 .* is 6x6, but the dilated kernel spans 7x7"),
    # backward's gradient must have the output's shape (the layer's output here)
    ("Conv2d-backward-shape", lambda: nn.Conv2d(4, 6, 3)(X).backward(DY[:, :, :3]), ValueError,
     r"grad has shape \(2, 6, 3, 4\), the tensor \(2, 6, 4, 4\)"),
    ("Conv2d-backward-no-grad", lambda: nn.Conv2d(4, 6, 3).requires_grad_(False)(X).backward(DY), RuntimeError,
     r"backward\(\) on a tensor that does not require a gradient"),
    ("Conv2d-backward-twice", lambda: (lambda y: (y.backward(DY), y.backward(DY)))(nn.Conv2d(4, 6, 3)(X)),
     RuntimeError, r"backward through a graph a second time"),
    # Linear: any input of at least one dimension whose last one is in_features (N-D inputs are valid)
    ("Linear-x-0d", lambda: nn.Linear(6, 3).forward(np.array(1.0, np.float32)), ValueError,
     r"linear expects 6 input features \(the last dimension\), got shape \(\)"),
    ("Linear-features", lambda: nn.Linear(5, 3).forward(X[0, 0]), ValueError,
     r"linear expects 5 input features \(the last dimension\), got shape \(6, 6\)"),
    ("Linear-features-3d", lambda: nn.Linear(5, 3).forward(X[0]), ValueError,
     r"linear expects 5 input features \(the last dimension\), got shape \(4, 6, 6\)"),
    ("Linear-x-float64", lambda: nn.Linear(6, 3).forward(X[0, 0].astype(np.float64)), TypeError,
     r"dtype mismatch: x is float64 but weight is float32"),
    ("Linear-x-int", lambda: nn.Linear(6, 3).forward(X[0, 0].astype(np.int32)), TypeError,
     r"x must have a floating dtype .*got int32"),
    ("Linear-x-list", lambda: nn.Linear(6, 3).forward(X[0, 0].tolist()), TypeError,
     r"x must be a numpy.ndarray or cupy.ndarray, got list"),
    # BatchNorm2d
    ("BatchNorm2d-x-3d", lambda: nn.BatchNorm2d(4).forward(X[0]), ValueError,
     r"BatchNorm2d expects a 4-D input \(N, C, H, W\), got shape \(4, 6, 6\)"),
    ("BatchNorm2d-channels", lambda: nn.BatchNorm2d(3).forward(X), ValueError,
     r"BatchNorm2d expects 3 channels, got 4"),
    ("BatchNorm2d-x-float64", lambda: nn.BatchNorm2d(4).forward(X.astype(np.float64)), TypeError,
     r"BatchNorm2d: input dtype float64 differs from the layer's float32"),
    ("BatchNorm2d-x-complex", lambda: nn.BatchNorm2d(4).forward(X.astype(np.complex64)), TypeError,
     r"BatchNorm2d: input dtype complex64 differs from the layer's float32"),
    ("BatchNorm2d-no-stats-x-complex",
     lambda: nn.BatchNorm2d(4, track_running_stats=False).forward(X.astype(np.complex64)), TypeError,
     r"x must have a floating dtype .*got complex64"),
    ("BatchNorm2d-one-value", lambda: nn.BatchNorm2d(4).forward(X[:1, :, :1, :1]), ValueError,
     r"batch_norm in training needs more than one value per channel, got input shape \(1, 4, 1, 1\)"),
    # Pools: the arguments are checked at the first forward
    ("MaxPool2d-x-3d", lambda: nn.MaxPool2d(2).forward(X[0]), ValueError,
     r"input must be 4-D \(N, C, H, W\), got shape \(4, 6, 6\) \(3-D\)"),
    ("MaxPool2d-window", lambda: nn.MaxPool2d(7).forward(X), ValueError,
     r"pooling window \(7, 7\) larger than the padded input 6x6"),
    ("MaxPool2d-padding", lambda: nn.MaxPool2d(3, padding=(2, 1, 1)).forward(X), ValueError,
     r"padding as a tuple must have 2 \(pad_h, pad_w\) or 4 \(top, bottom, left, right\) entries, got 3"),
    ("MaxPool2d-stride-0", lambda: nn.MaxPool2d(2, stride=0).forward(X), ValueError, r"stride must be >= 1, got 0"),
    ("MaxPool2d-x-bool", lambda: nn.MaxPool2d(2).forward(X > 0), TypeError,
     r"x must have a floating or integer dtype .*got bool"),
    ("AvgPool2d-x-5d", lambda: nn.AvgPool2d(2).forward(X[None]), ValueError,
     r"input must be 4-D \(N, C, H, W\), got shape \(1, 2, 4, 6, 6\) \(5-D\)"),
    ("AvgPool2d-padding-negative", lambda: nn.AvgPool2d(2, padding=-1).forward(X), ValueError,
     r"padding must be >= 0, got -1"),
    ("AvgPool2d-x-int", lambda: nn.AvgPool2d(2).forward(X.astype(np.uint8)), TypeError,
     r"x has the integer dtype uint8: only max pooling's forward pass takes integers"),
    # CrossEntropyLoss
    ("CrossEntropyLoss-reduction", lambda: nn.CrossEntropyLoss(reduction="max"), ValueError,
     r"reduction must be one of \('mean', 'sum', 'none'\), got 'max'"),
    ("CrossEntropyLoss-reduction-positional", lambda: nn.CrossEntropyLoss("sum"), TypeError,
     r"takes 1 positional argument but 2 were given"),
    ("CrossEntropyLoss-label-smoothing", lambda: nn.CrossEntropyLoss(label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\], got 1.5"),
    # (N, C, d1, ...) logits are valid (see test_cross_entropy_on_spatial_logits); a 1-D input is not
    ("CrossEntropyLoss-logits-1d", lambda: nn.CrossEntropyLoss()(X[0, 0, 0], np.zeros((), np.int64)), ValueError,
     r"input must be \(N, C\) or \(N, C, d1, ...\), got shape \(6,\)"),
    ("CrossEntropyLoss-target-for-3d-logits", lambda: nn.CrossEntropyLoss()(X[0], np.zeros(4, np.int64)),
     ValueError, r"target must be integer class indices of shape \(4, 6\), got shape \(4,\) dtype int64"),
    ("CrossEntropyLoss-logits-int", lambda: nn.CrossEntropyLoss()(np.zeros((2, 3), np.int64), np.zeros(2, np.int64)),
     TypeError, r"input must have a floating dtype .*got int64"),
    ("CrossEntropyLoss-target-float", lambda: nn.CrossEntropyLoss()(X[0, 0], np.zeros(6)), ValueError,
     r"target must be integer class indices of shape \(6,\), got shape \(6,\) dtype float64"),
    ("CrossEntropyLoss-target-shape", lambda: nn.CrossEntropyLoss()(X[0, 0], np.zeros((6, 1), np.int64)),
     ValueError, r"target must be integer class indices of shape \(6,\), got shape \(6, 1\) dtype int64"),
    ("CrossEntropyLoss-target-too-big", lambda: nn.CrossEntropyLoss()(X[0, 0], np.array([0, 1, 2, 3, 4, 6])),
     ValueError, r"target holds class indices outside \[0, 6\) \(ignore_index=-100\): min 0, max 6"),
    ("CrossEntropyLoss-target-negative", lambda: nn.CrossEntropyLoss()(X[0, 0], np.array([0, -1, 2, 3, 4, 5])),
     ValueError, r"target holds class indices outside \[0, 6\) \(ignore_index=-100\): min -1, max 5"),
    ("CrossEntropyLoss-target-list", lambda: nn.CrossEntropyLoss()(X[0, 0], [0] * 6), TypeError,
     r"target must be a numpy.ndarray or cupy.ndarray, got list"),
]


@pytest.mark.parametrize("make,error,match", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_layers_reject(make, error, match):
    with pytest.raises(error) as info:
        make()
    assert info.type is error
    assert re.search(match, str(info.value)), f"message {str(info.value)!r} does not match {match!r}"


def test_cross_entropy_on_spatial_logits():
    """Once refused, (N, C, d1) logits are now PyTorch's K-dimensional case: one sample per position."""
    logits, target = X[0], np.arange(24).reshape(4, 6) % 4  # (N=4, C=6, d1=6) and (4, 6)
    as_rows = np.moveaxis(logits, 1, -1).reshape(-1, 6)
    loss = nn.CrossEntropyLoss()(logits, target)
    assert loss.shape == () and loss.dtype == np.float32
    np.testing.assert_allclose(loss, nn.CrossEntropyLoss()(as_rows, target.ravel()), rtol=1e-6)
    # The ignored value is not a class index, so it is not refused as one.
    ignored = np.where(target == 0, -100, target)
    kept = ignored.ravel() != -100
    np.testing.assert_allclose(nn.CrossEntropyLoss()(logits, ignored),
                               nn.CrossEntropyLoss()(as_rows[kept], ignored.ravel()[kept]), rtol=1e-6)


# --------------------------------------------------------- empty batch ---

EMPTY_CONV = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding="same", stride=(2, 1), dilation=(1, 2)),
    dict(padding="full", groups=2),
    dict(padding=(1, 0, 2, 3), dilation=2, groups=4),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("geometry", EMPTY_CONV, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()) or "plain")
def test_empty_batch_conv(geometry, dtype):
    groups = geometry.get("groups", 1)
    w = np.ones((8, 4 // groups, 3, 2), dtype)
    one = F.conv2d(np.ones((1, 4, 7, 6), dtype), w, **geometry)  # the shape the output has for N = 1
    x = np.zeros((0, 4, 7, 6), dtype)
    y = F.conv2d(x, w, np.ones(8, dtype), **geometry)
    assert y.shape == (0,) + one.shape[1:] and y.dtype == dtype
    dx = F.conv2d_grad_input(y, w, x.shape, **geometry)
    assert dx.shape == x.shape and dx.dtype == dtype
    dw = F.conv2d_grad_weight(x, y, w.shape, **geometry)
    assert dw.shape == w.shape and dw.dtype == dtype and not dw.any()
    db = F.conv2d_grad_bias(y)
    assert db.shape == (8,) and db.dtype == dtype and not db.any()


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                    dict(kernel_size=(3, 1), stride=(1, 2))], ids=["2x2", "3x3-ceil", "3x1"])
def test_empty_batch_pools(kwargs):
    x = np.zeros((0, 3, 7, 5), np.float32)
    one = F.max_pool2d(np.ones((1, 3, 7, 5), np.float32), **kwargs)
    for pool, grad in ((F.max_pool2d, lambda dy: F.max_pool2d_grad(dy, x, **kwargs)),
                       (F.avg_pool2d, lambda dy: F.avg_pool2d_grad(dy, x.shape, **kwargs))):
        y = pool(x, **kwargs)
        assert y.shape == (0,) + one.shape[1:] and y.dtype == np.float32
        dx = grad(y)
        assert dx.shape == x.shape and dx.dtype == np.float32


def test_empty_batch_layers():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(3),
                          nn.Flatten(), nn.Linear(6, 2))
    x = np.zeros((0, 4, 6, 6), np.float32)
    xt = gpuconv.Tensor(x, requires_grad=True)
    y = model(xt)
    assert y.shape == (0, 2) and y.dtype == np.float32
    y.backward(y.numpy())
    dx = xt.grad
    assert dx.shape == x.shape and dx.dtype == np.float32
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape and not p.grad.any(), name
    bn = nn.BatchNorm2d(4).eval()
    assert bn.forward(x).shape == x.shape
    with pytest.raises(ValueError, match=r"needs more than one value per channel, got input shape \(0, 4, 6, 6\)"):
        nn.BatchNorm2d(4).forward(x)


# ------------------------------------------------ non-contiguous views ---

def make_view(kind, shape, seed=0):
    """A random array of ``shape`` that is a non-contiguous (or otherwise unusual) view."""
    r = np.random.default_rng(seed)

    def rand(s):
        return r.standard_normal(s).astype(np.float32)

    if kind == "step-last":
        return rand(shape[:-1] + (2 * shape[-1],))[..., ::2]
    if kind == "step-rows":
        return rand(shape[:-2] + (2 * shape[-2] - 1, shape[-1]))[..., ::2, :]
    if kind == "reversed":
        return rand(shape)[..., ::-1]
    if kind == "reversed-rows-batch":
        return rand(shape)[::-1, ..., ::-1, :]
    if kind == "transposed":
        return rand(shape[:-2] + shape[-2:][::-1]).swapaxes(-1, -2)
    if kind == "first-axes-swapped":  # e.g. a (C, K, R, S) weight seen as (K, C, R, S)
        return rand((shape[1], shape[0]) + shape[2:]).swapaxes(0, 1)
    if kind == "fortran":
        return np.asfortranarray(rand(shape))
    if kind == "broadcast":  # zero strides, read-only
        return np.broadcast_to(rand((1,) + shape[1:]), shape)
    raise ValueError(kind)


VIEW_KINDS = ["step-last", "step-rows", "reversed", "reversed-rows-batch", "transposed", "first-axes-swapped",
              "fortran", "broadcast"]
VIEW_FUNCTIONS = {  # the valid calls, with geometry that exercises padding, stride and groups
    "conv2d": (F.conv2d, dict(x=X, weight=W[:, :2], bias=B), dict(stride=(2, 1), padding=(1, 0, 2, 1), groups=2)),
    "conv2d_grad_input": (F.conv2d_grad_input, dict(grad_output=np.zeros((2, 6, 3, 7), np.float32),
                                                    weight=W[:, :2], input_shape=X.shape),
                          dict(stride=(2, 1), padding=(1, 0, 2, 1), groups=2)),
    "conv2d_grad_weight": (F.conv2d_grad_weight, dict(x=X, grad_output=np.zeros((2, 6, 3, 7), np.float32),
                                                      weight_shape=(6, 2, 3, 3)),
                           dict(stride=(2, 1), padding=(1, 0, 2, 1), groups=2)),
    "conv2d_grad_bias": (F.conv2d_grad_bias, dict(grad_output=DY), {}),
    "max_pool2d": (F.max_pool2d, dict(x=X, kernel_size=3), dict(stride=2, padding=1, ceil_mode=True)),
    "max_pool2d_grad": (F.max_pool2d_grad, dict(grad_output=np.zeros((2, 4, 3, 3), np.float32), x=X, kernel_size=3),
                        dict(stride=2, padding=1)),
    "avg_pool2d": (F.avg_pool2d, dict(x=X, kernel_size=3), dict(stride=2, padding=1, count_include_pad=False)),
    "avg_pool2d_grad": (F.avg_pool2d_grad, dict(grad_output=np.zeros((2, 4, 3, 3), np.float32),
                                                input_shape=X.shape, kernel_size=3), dict(stride=2, padding=1)),
}
VIEW_CASES = [pytest.param(function, arg, kind, id=f"{function}-{arg}-{kind}")
              for function, (_, kwargs, _) in VIEW_FUNCTIONS.items()
              for arg, value in kwargs.items() if isinstance(value, np.ndarray) and value.ndim == 4
              for kind in VIEW_KINDS]


@pytest.mark.parametrize("function,arg,kind", VIEW_CASES)
def test_views_compute_like_their_contiguous_copy(function, arg, kind):
    fn, kwargs, geometry = VIEW_FUNCTIONS[function]
    r = np.random.default_rng(1)
    kwargs = {name: (value if not isinstance(value, np.ndarray)  # random data everywhere, a view in one argument
                     else make_view(kind, value.shape) if name == arg
                     else r.standard_normal(value.shape).astype(np.float32))
              for name, value in kwargs.items()}
    view = kwargs[arg]
    assert not view.flags.c_contiguous
    before = view.copy()
    result = fn(**kwargs, **geometry)
    expected = fn(**dict(kwargs, **{arg: np.ascontiguousarray(view)}), **geometry)
    assert result.shape == expected.shape and result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(view, before)  # inputs are read, never written


def test_bias_view():
    view = np.random.default_rng(1).standard_normal(12).astype(np.float32)[::-2]
    np.testing.assert_array_equal(F.conv2d(X, W, view), F.conv2d(X, W, np.ascontiguousarray(view)))


def test_layers_accept_views():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6 * 3 * 3, 3))
    view = make_view("transposed", (2, 4, 6, 6))
    view_t = gpuconv.Tensor(view, requires_grad=True)  # no copy: the layers see the view itself
    assert not view_t.data.flags.c_contiguous
    y_view = model(view_t)
    y_view.backward(np.ones(y_view.shape, np.float32))
    dx_view = view_t.grad
    grads_view = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    xt = gpuconv.Tensor(np.ascontiguousarray(view), requires_grad=True)
    y = model(xt)
    y.backward(np.ones(y.shape, np.float32))
    dx = xt.grad
    np.testing.assert_array_equal(y_view, y)
    np.testing.assert_array_equal(dx_view, dx)
    for a, p in zip(grads_view, model.parameters()):
        np.testing.assert_array_equal(a, p.grad)


# ---------------------------------------------------------- NaN and Inf ---

# NaN and Inf arithmetic is the point here, not a warning to show.
ieee_warnings_expected = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

NAN_GEOMETRIES = [
    dict(),
    dict(stride=2),
    dict(stride=(2, 3), padding=(1, 0, 2, 1)),
    dict(dilation=2, padding="same"),
    dict(groups=2, padding=1),
]
GEOMETRY_IDS = ["plain", "stride-2", "stride-4-sided", "dilation-same", "groups"]
NAN_AT = [(0, 0, 0, 0), (1, 1, 3, 4), (1, 3, 6, 7), (0, 2, 5, 0)]  # corners, middle, a pixel stride may skip


def with_nans(shape, positions, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    for pos in positions:
        x[pos] = np.nan
    return x


@ieee_warnings_expected
@pytest.mark.parametrize("algo", ["auto", "reference"])
@pytest.mark.parametrize("geometry", NAN_GEOMETRIES, ids=GEOMETRY_IDS)
def test_nan_in_conv_input_reaches_exactly_its_receptive_field(geometry, algo):
    x = with_nans((2, 4, 7, 8), NAN_AT)
    groups = geometry.get("groups", 1)
    w = np.random.default_rng(1).standard_normal((6, 4 // groups, 3, 3))
    y = F.conv2d(x, w, **geometry, algo=algo)
    # Which outputs read a NaN: the same convolution of the NaN indicator with an all-ones kernel.
    reads_nan = F.conv2d(np.isnan(x).astype(float), np.ones_like(w), **geometry) > 0
    assert reads_nan.any() and not reads_nan.all()
    np.testing.assert_array_equal(np.isnan(y), reads_nan)
    # Every other output is the finite value it would have without the NaN pixels.
    clean = F.conv2d(np.nan_to_num(x, nan=0.0), w, **geometry)
    np.testing.assert_allclose(y[~reads_nan], clean[~reads_nan], rtol=1e-12)


@ieee_warnings_expected
@pytest.mark.parametrize("geometry", NAN_GEOMETRIES, ids=GEOMETRY_IDS)
def test_nan_in_conv_grads(geometry):
    x_shape = (2, 4, 7, 8)
    groups = geometry.get("groups", 1)
    w = np.random.default_rng(1).standard_normal((6, 4 // groups, 3, 3))
    y_shape = F.conv2d(np.zeros(x_shape), w, **geometry).shape
    # grad_input: a NaN in grad_output reaches the input pixels its output read.
    dy = with_nans(y_shape, [(0, 0, 0, 0), (1, 5, y_shape[2] - 1, y_shape[3] - 1)])
    dx = F.conv2d_grad_input(dy, w, x_shape, **geometry)
    expected = F.conv2d_grad_input(np.isnan(dy).astype(float), np.ones_like(w), x_shape, **geometry) > 0
    assert expected.any()
    np.testing.assert_array_equal(np.isnan(dx), expected)
    # grad_weight: a NaN input pixel reaches the taps that read it.
    x = with_nans(x_shape, NAN_AT)
    dw = F.conv2d_grad_weight(x, np.random.default_rng(2).standard_normal(y_shape), w.shape, **geometry)
    expected = F.conv2d_grad_weight(np.isnan(x).astype(float), np.ones(y_shape), w.shape, **geometry) > 0
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(np.isnan(dw), expected)
    # grad_bias: a NaN in grad_output makes its channel's bias gradient NaN.
    np.testing.assert_array_equal(np.isnan(F.conv2d_grad_bias(dy)), [True, False, False, False, False, True])


@ieee_warnings_expected
def test_nan_in_weight_reaches_its_output_channel():
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    w = np.random.default_rng(1).standard_normal((6, 2, 3, 3))
    w[4, 1, 2, 0] = np.nan
    y = F.conv2d(x, w, stride=2, groups=2)
    expected = np.zeros(y.shape, bool)
    expected[:, 4] = True
    np.testing.assert_array_equal(np.isnan(y), expected)


@ieee_warnings_expected
def test_infinities_in_conv_input_give_what_the_arithmetic_gives():
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6))
    x[0, 0, 1, 1] = np.inf
    x[0, 1, 4, 4] = np.inf
    x[0, 2, 2, 3] = -np.inf
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
    w[1, 0, 1, 1] = 0.0  # inf * 0 is NaN
    w[2] = np.abs(w[2])  # +inf and -inf meet in one sum: NaN
    y = F.conv2d(x, w, padding=1)
    expected = direct.conv2d(x, w, padding=1)  # Python float arithmetic, tap by tap
    assert np.isnan(expected).any() and np.isposinf(expected).any() and np.isneginf(expected).any()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-10, atol=1e-12)


POOL_CASES = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
              dict(kernel_size=(3, 2), stride=1, padding=(1, 0))]


@ieee_warnings_expected
@pytest.mark.parametrize("kwargs", POOL_CASES, ids=["2x2", "3x3-s2-p1-ceil", "3x2-s1"])
def test_nan_propagates_through_pools(kwargs):
    x = with_nans((2, 4, 7, 8), NAN_AT)
    x[0, 1, 2, 2] = np.inf
    x[1, 0, 0, 0] = -np.inf
    indicator = np.isnan(x).astype(float)
    for pool in (F.max_pool2d, F.avg_pool2d):
        y = pool(x, **kwargs)
        window_has_nan = F.max_pool2d(indicator, **kwargs) > 0
        np.testing.assert_array_equal(np.isnan(y), window_has_nan, err_msg=pool.__name__)
        if pool is F.max_pool2d:  # a max is exact; inf and -inf stay what they are
            np.testing.assert_array_equal(y, direct.max_pool2d(x, **kwargs))
        else:
            np.testing.assert_allclose(y, direct.avg_pool2d(x, **kwargs), rtol=1e-12, atol=1e-15)
    # The gradient of a window holding a NaN goes to the (first) NaN, as the NaN is its maximum.
    dy = np.random.default_rng(3).standard_normal(F.max_pool2d(x, **kwargs).shape)
    np.testing.assert_allclose(F.max_pool2d_grad(dy, x, **kwargs), direct.max_pool2d_grad(dy, x, **kwargs),
                               rtol=1e-12)
    # avg_pool2d_grad: a NaN gradient reaches every pixel of its window.
    dy_nan = with_nans(dy.shape, [(0, 0, 0, 0)])
    dx = F.avg_pool2d_grad(dy_nan, x.shape, **kwargs)
    expected = F.avg_pool2d_grad(np.isnan(dy_nan).astype(float), x.shape, **kwargs) > 0
    assert expected.any()
    np.testing.assert_array_equal(np.isnan(dx), expected)


@ieee_warnings_expected
def test_nan_and_inf_through_layers():
    relu = nn.ReLU()
    np.testing.assert_array_equal(relu(np.array([np.nan, -np.inf, np.inf], np.float32)), [np.nan, 0, np.inf])
    bn = nn.BatchNorm2d(2)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    y = bn(x).numpy()
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()  # the batch statistics of channel 0 are NaN
    loss = nn.CrossEntropyLoss()
    assert np.isnan(float(loss(np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]))))
