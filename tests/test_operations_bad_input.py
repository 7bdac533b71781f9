"""Issue 17's new arguments: a bad value is a TypeError or ValueError whose message names the argument.

Each case runs through the array API (``gpuconv.functional``), the tensor API (``gpuconv.nn.functional``)
where the operation has one, and the layers (construction and the first call together, as either may check).
The regexes are loose on purpose: they ask for the argument's name, not for a wording.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import functional as gf
from gpuconv import nn
from gpuconv.nn import functional as gnf

ERRORS = (TypeError, ValueError)


def rand(*shape):
    return np.random.default_rng(0).standard_normal(shape)


X1, W1 = rand(1, 2, 6), rand(3, 2, 3)          # conv1d / 1-D pooling input, conv1d weight
X2, W2 = rand(1, 2, 5, 5), rand(3, 2, 3, 3)    # conv2d / 2-D pooling input, conv2d weight
WT = rand(2, 3, 3, 3)                          # conv_transpose2d weight (C_in, C_out/groups, kH, kW)
IDX2 = np.array([[[[0, 5], [10, 15]]] * 2])    # max_unpool2d indices for a (1, 2, 2, 2) input, 4x4 output
IDX1 = np.array([[[0, 3, 5]] * 2])             # max_unpool1d indices for a (1, 2, 3) input, 6 output

# (id, call, regex): ``call(module)`` with module gpuconv.functional or gpuconv.nn.functional.
BOTH_APIS = [
    # conv1d
    ("conv1d-padding_mode-bogus", lambda m: m.conv1d(X1, W1, padding=1, padding_mode="bogus"), "padding_mode"),
    ("conv1d-padding_mode-not-str", lambda m: m.conv1d(X1, W1, padding=1, padding_mode=3), "padding_mode"),
    ("conv1d-reflect-padding-ge-size", lambda m: m.conv1d(X1, W1, padding=6, padding_mode="reflect"),
     "(?i)pad|reflect"),
    ("conv1d-circular-padding-gt-size", lambda m: m.conv1d(X1, W1, padding=7, padding_mode="circular"),
     "(?i)pad|circular"),
    ("conv1d-4d-input", lambda m: m.conv1d(X2, W1), r"(?i)3-D|input|\bx\b"),
    ("conv1d-4d-weight", lambda m: m.conv1d(X1, W2), "(?i)weight|3-D"),
    ("conv1d-dilation-0", lambda m: m.conv1d(X1, W1, dilation=0), "dilation"),
    ("conv1d-stride-0", lambda m: m.conv1d(X1, W1, stride=0), "stride"),
    ("conv1d-negative-padding", lambda m: m.conv1d(X1, W1, padding=-1), "padding"),
    ("conv1d-negative-left-right", lambda m: m.conv1d(X1, W1, padding=(-1, 2)), "padding"),
    ("conv1d-padding-3-tuple", lambda m: m.conv1d(X1, W1, padding=(1, 1, 1)), "padding"),
    ("conv1d-padding-bogus-string", lambda m: m.conv1d(X1, W1, padding="middle"), "padding"),
    ("conv1d-padding-float", lambda m: m.conv1d(X1, W1, padding=1.5), "padding"),
    ("conv1d-groups-0", lambda m: m.conv1d(X1, W1, groups=0), "groups"),
    ("conv1d-groups-not-dividing", lambda m: m.conv1d(X1, rand(3, 1, 3), groups=2), "groups"),
    ("conv1d-channel-mismatch", lambda m: m.conv1d(X1, rand(3, 3, 3)), "(?i)channel|weight"),
    ("conv1d-bias-shape", lambda m: m.conv1d(X1, W1, rand(4)), "bias"),
    ("conv1d-kernel-larger-than-input", lambda m: m.conv1d(X1, rand(3, 2, 8)), "(?i)kernel|input|padd"),
    ("conv1d-integer-input", lambda m: m.conv1d(X1.astype(np.int32), W1), "(?i)dtype|float"),
    # conv2d: padding_mode and "same_lower"
    ("conv2d-padding_mode-bogus", lambda m: m.conv2d(X2, W2, padding=1, padding_mode="bogus"), "padding_mode"),
    ("conv2d-reflect-padding-ge-size", lambda m: m.conv2d(X2, W2, padding=5, padding_mode="reflect"),
     "(?i)pad|reflect"),
    ("conv2d-reflect-4-tuple-ge-size", lambda m: m.conv2d(X2, W2, padding=(0, 0, 5, 0), padding_mode="reflect"),
     "(?i)pad|reflect"),
    ("conv2d-circular-padding-gt-size", lambda m: m.conv2d(X2, W2, padding=(6, 1), padding_mode="circular"),
     "(?i)pad|circular"),
    ("conv2d-padding-bogus-string", lambda m: m.conv2d(X2, W2, padding="same_middle"), "padding"),
    ("conv2d-negative-4-tuple", lambda m: m.conv2d(X2, W2, padding=(1, -1, 0, 0)), "padding"),
    # conv_transpose2d
    ("conv_transpose2d-output_padding-too-large", lambda m: m.conv_transpose2d(X2, WT, stride=2, output_padding=2),
     "output_padding"),
    ("conv_transpose2d-negative-output_padding", lambda m: m.conv_transpose2d(X2, WT, output_padding=-1),
     "output_padding"),
    ("conv_transpose2d-negative-padding", lambda m: m.conv_transpose2d(X2, WT, padding=-1), "padding"),
    ("conv_transpose2d-stride-0", lambda m: m.conv_transpose2d(X2, WT, stride=0), "stride"),
    ("conv_transpose2d-dilation-0", lambda m: m.conv_transpose2d(X2, WT, dilation=0), "dilation"),
    ("conv_transpose2d-groups-not-dividing", lambda m: m.conv_transpose2d(X2, WT, groups=3), "groups"),
    ("conv_transpose2d-channel-mismatch", lambda m: m.conv_transpose2d(X2, rand(3, 3, 3, 3)),
     "(?i)channel|weight"),
    ("conv_transpose2d-3d-input", lambda m: m.conv_transpose2d(X1, WT), r"(?i)4-D|input|\bx\b"),
    ("conv_transpose2d-bias-shape", lambda m: m.conv_transpose2d(X2, WT, rand(2)), "bias"),
    ("conv_transpose2d-bias-one-element", lambda m: m.conv_transpose2d(X2, WT, rand(1)), "bias"),
    ("conv_transpose2d-output-empty", lambda m: m.conv_transpose2d(rand(1, 2, 1, 1), WT, padding=2),
     "(?i)padding|output"),
    # pad
    ("pad-odd-length", lambda m: m.pad(X2, (1, 2, 3)), "pad"),
    ("pad-too-long-for-3d", lambda m: m.pad(X1, (1, 1, 1, 1), mode="reflect"), "pad"),
    ("pad-not-ints", lambda m: m.pad(X1, (1.5, 1)), "pad"),
    ("pad-not-a-sequence", lambda m: m.pad(X1, "ab"), "pad"),
    ("pad-mode-bogus", lambda m: m.pad(X1, (1, 1), mode="bogus"), "mode"),
    ("pad-mode-zeros", lambda m: m.pad(X1, (1, 1), mode="zeros"), "mode"),
    ("pad-reflect-ge-size", lambda m: m.pad(X1, (6, 0), mode="reflect"), "(?i)pad|reflect"),
    ("pad-reflect-4d-ge-height", lambda m: m.pad(X2, (0, 0, 0, 5), mode="reflect"), "(?i)pad|reflect"),
    ("pad-circular-gt-size", lambda m: m.pad(X1, (0, 7), mode="circular"), "(?i)pad|circular"),
    ("pad-replicate-negative", lambda m: m.pad(X1, (-1, 1), mode="replicate"), "pad"),
    ("pad-2d-input", lambda m: m.pad(rand(3, 4), (1, 1)), r"(?i)3-D|4-D|input|\bx\b"),
    ("pad-5d-input", lambda m: m.pad(rand(1, 1, 2, 2, 2), (1, 1), mode="reflect"), r"(?i)3-D|4-D|input|\bx\b"),
    # max_pool2d
    ("max_pool2d-dilation-0", lambda m: m.max_pool2d(X2, 2, dilation=0), "dilation"),
    ("max_pool2d-dilation-negative-pair", lambda m: m.max_pool2d(X2, 2, dilation=(1, -1)), "dilation"),
    ("max_pool2d-dilation-float", lambda m: m.max_pool2d(X2, 2, dilation=1.5), "dilation"),
    ("max_pool2d-kernel_size-0", lambda m: m.max_pool2d(X2, 0), "kernel_size"),
    ("max_pool2d-kernel_size-triple", lambda m: m.max_pool2d(X2, (2, 2, 2)), "kernel_size"),
    ("max_pool2d-stride-0", lambda m: m.max_pool2d(X2, 2, stride=0), "stride"),
    ("max_pool2d-negative-padding", lambda m: m.max_pool2d(X2, 3, padding=-1), "padding"),
    ("max_pool2d-negative-4-tuple", lambda m: m.max_pool2d(X2, 3, padding=(0, 0, -1, 0)), "padding"),
    ("max_pool2d-padding-3-tuple", lambda m: m.max_pool2d(X2, 3, padding=(1, 1, 1)), "padding"),
    ("max_pool2d-padding-bogus-string", lambda m: m.max_pool2d(X2, 3, padding="bogus"), "padding"),
    ("max_pool2d-window-larger-than-input", lambda m: m.max_pool2d(X2, 3, dilation=3), "(?i)kernel|window|input"),
    ("max_pool2d-3d-input", lambda m: m.max_pool2d(X1, 2), r"(?i)4-D|input|\bx\b"),
    ("max_pool2d-bool-input", lambda m: m.max_pool2d(X2 > 0, 2), "(?i)dtype|bool"),
    # avg_pool2d
    ("avg_pool2d-return_indices", lambda m: m.avg_pool2d(X2, 2, return_indices=True), "return_indices"),
    ("avg_pool2d-integer-input", lambda m: m.avg_pool2d(X2.astype(np.int32), 2), "(?i)dtype|float"),
    ("avg_pool2d-uint8-input", lambda m: m.avg_pool2d(X2.astype(np.uint8), 2), "(?i)dtype|float"),
    ("avg_pool2d-divisor_override-0", lambda m: m.avg_pool2d(X2, 2, divisor_override=0), "divisor_override"),
    ("avg_pool2d-divisor_override-negative", lambda m: m.avg_pool2d(X2, 2, divisor_override=-2),
     "divisor_override"),
    ("avg_pool2d-divisor_override-float", lambda m: m.avg_pool2d(X2, 2, divisor_override=1.5), "divisor_override"),
    ("avg_pool2d-kernel_size-0", lambda m: m.avg_pool2d(X2, 0), "kernel_size"),
    ("avg_pool2d-dilation-0", lambda m: m.avg_pool2d(X2, 2, dilation=0), "dilation"),
    ("avg_pool2d-negative-padding", lambda m: m.avg_pool2d(X2, 3, padding=-1), "padding"),
    # 1-D pooling
    ("max_pool1d-kernel_size-0", lambda m: m.max_pool1d(X1, 0), "kernel_size"),
    ("max_pool1d-kernel_size-pair", lambda m: m.max_pool1d(X1, (2, 2)), "kernel_size"),
    ("max_pool1d-dilation-0", lambda m: m.max_pool1d(X1, 2, dilation=0), "dilation"),
    ("max_pool1d-stride-0", lambda m: m.max_pool1d(X1, 2, stride=0), "stride"),
    ("max_pool1d-negative-padding", lambda m: m.max_pool1d(X1, 3, padding=-1), "padding"),
    ("max_pool1d-4d-input", lambda m: m.max_pool1d(X2, 2), r"(?i)3-D|input|\bx\b"),
    ("avg_pool1d-kernel_size-0", lambda m: m.avg_pool1d(X1, 0), "kernel_size"),
    ("avg_pool1d-negative-padding", lambda m: m.avg_pool1d(X1, 3, padding=-1), "padding"),
    ("avg_pool1d-return_indices", lambda m: m.avg_pool1d(X1, 2, return_indices=True), "return_indices"),
    ("avg_pool1d-integer-input", lambda m: m.avg_pool1d(X1.astype(np.int16), 2), "(?i)dtype|float"),
    ("avg_pool1d-4d-input", lambda m: m.avg_pool1d(X2, 2), r"(?i)3-D|input|\bx\b"),
    # max_unpool
    ("max_unpool2d-index-out-of-range", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2 + 1, 2), "(?i)indices|index"),
    ("max_unpool2d-index-below-minus-one", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2 - 2, 2),
     "(?i)indices|index"),
    ("max_unpool2d-index-beyond-output_size", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2 * 2, 2,
                                                                       output_size=(5, 5)), "(?i)indices|index"),
    ("max_unpool2d-indices-shape", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2[:, :1], 2), "indices"),
    ("max_unpool2d-float-indices", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2.astype(np.float64), 2),
     "indices"),
    ("max_unpool2d-output_size-wrong-length", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2, 2,
                                                                       output_size=(4, 4, 4)), "output_size"),
    ("max_unpool2d-output_size-too-large", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2, 2, output_size=(9, 9)),
     "output_size"),
    ("max_unpool2d-output_size-too-small", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2, 2, output_size=(1, 1)),
     "output_size"),
    ("max_unpool2d-output_size-0", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2, 2, output_size=(0, 4)),
     "output_size"),
    ("max_unpool2d-kernel_size-0", lambda m: m.max_unpool2d(rand(1, 2, 2, 2), IDX2, 0), "kernel_size"),
    ("max_unpool2d-3d-input", lambda m: m.max_unpool2d(rand(1, 2, 2), IDX2[0], 2), r"(?i)4-D|input|\bx\b"),
    ("max_unpool1d-index-out-of-range", lambda m: m.max_unpool1d(rand(1, 2, 3), IDX1 + 1, 2), "(?i)indices|index"),
    ("max_unpool1d-output_size-wrong-length", lambda m: m.max_unpool1d(rand(1, 2, 3), IDX1, 2,
                                                                       output_size=(6, 6)), "output_size"),
    ("max_unpool1d-output_size-inconsistent", lambda m: m.max_unpool1d(rand(1, 2, 3), IDX1, 2, output_size=(20,)),
     "output_size"),
    # adaptive and global pooling
    ("adaptive_avg_pool2d-output_size-0", lambda m: m.adaptive_avg_pool2d(X2, 0), "output_size"),
    ("adaptive_avg_pool2d-output_size-0-in-pair", lambda m: m.adaptive_avg_pool2d(X2, (2, 0)), "output_size"),
    ("adaptive_avg_pool2d-output_size-negative", lambda m: m.adaptive_avg_pool2d(X2, (-1, 2)), "output_size"),
    ("adaptive_avg_pool2d-output_size-length-3", lambda m: m.adaptive_avg_pool2d(X2, (1, 2, 3)), "output_size"),
    ("adaptive_avg_pool2d-output_size-float", lambda m: m.adaptive_avg_pool2d(X2, 1.5), "output_size"),
    ("adaptive_max_pool2d-output_size-0", lambda m: m.adaptive_max_pool2d(X2, (0, 2)), "output_size"),
    ("adaptive_max_pool2d-output_size-length-1", lambda m: m.adaptive_max_pool2d(X2, (2,)), "output_size"),
    ("adaptive_max_pool2d-3d-input", lambda m: m.adaptive_max_pool2d(X1, 2), r"(?i)4-D|input|\bx\b"),
    ("adaptive_avg_pool1d-output_size-0", lambda m: m.adaptive_avg_pool1d(X1, 0), "output_size"),
    ("adaptive_avg_pool1d-output_size-pair", lambda m: m.adaptive_avg_pool1d(X1, (2, 2)), "output_size"),
    ("adaptive_max_pool1d-output_size-0", lambda m: m.adaptive_max_pool1d(X1, 0), "output_size"),
    ("adaptive_max_pool1d-4d-input", lambda m: m.adaptive_max_pool1d(X2, 2), r"(?i)3-D|input|\bx\b"),
    ("adaptive_avg_pool2d-integer-input", lambda m: m.adaptive_avg_pool2d(X2.astype(np.int64), 2),
     "(?i)dtype|float"),
    ("global_avg_pool2d-3d-input", lambda m: m.global_avg_pool2d(X1), r"(?i)4-D|input|\bx\b"),
    ("global_max_pool2d-3d-input", lambda m: m.global_max_pool2d(X1), r"(?i)4-D|input|\bx\b"),
    ("global_avg_pool2d-integer-input", lambda m: m.global_avg_pool2d(X2.astype(np.int32)), "(?i)dtype|float"),
]


@pytest.mark.parametrize("api", [gf, gnf], ids=["arrays", "tensors"])
@pytest.mark.parametrize("call,match", [c[1:] for c in BOTH_APIS], ids=[c[0] for c in BOTH_APIS])
def test_bad_argument_names_itself(api, call, match):
    with pytest.raises(ERRORS, match=match):
        call(api)


# ----------------------------------------------------- array-only passes ---

ARRAY_ONLY = [
    ("max_pool2d_grad-integer", lambda: gf.max_pool2d_grad(np.ones((1, 2, 2, 2), np.int32), X2.astype(np.int32), 2),
     "(?i)dtype|float"),
    ("max_pool2d_grad-integer-x", lambda: gf.max_pool2d_grad(np.ones((1, 2, 2, 2)), X2.astype(np.int64), 2),
     "(?i)dtype|float"),
    ("max_pool2d_grad-dilation-0", lambda: gf.max_pool2d_grad(np.ones((1, 2, 2, 2)), X2, 2, dilation=0),
     "dilation"),
    ("avg_pool2d_grad-divisor_override-0", lambda: gf.avg_pool2d_grad(np.ones((1, 2, 2, 2)), X2.shape, 2,
                                                                     divisor_override=0), "divisor_override"),
    ("avg_pool2d_grad-integer", lambda: gf.avg_pool2d_grad(np.ones((1, 2, 2, 2), np.int32), X2.shape, 2),
     "(?i)dtype|float"),
]


@pytest.mark.parametrize("call,match", [c[1:] for c in ARRAY_ONLY], ids=[c[0] for c in ARRAY_ONLY])
def test_bad_argument_of_a_backward_pass_names_itself(call, match):
    with pytest.raises(ERRORS, match=match):
        call()


def test_integer_max_pool2d_has_no_gradient():
    """Integer pooling is forward only: an integer tensor cannot ask for a gradient, and the array backward
    refuses integers (above)."""
    with pytest.raises(TypeError, match="(?i)float|dtype"):
        gnf.max_pool2d(gpuconv.tensor(X2.astype(np.int32), requires_grad=True), 2)


def test_unsupported_integer_dtypes_are_refused_by_max_pool2d():
    with pytest.raises(ERRORS, match="(?i)dtype|bool"):
        gf.max_pool2d(np.ones((1, 1, 2, 2), bool), 2)
    with pytest.raises(ERRORS, match="(?i)dtype|complex"):
        gf.max_pool2d(np.ones((1, 1, 2, 2), np.complex128), 2)


# ------------------------------------------------------------------ layers ---

LAYERS = [
    ("Conv1d-padding_mode-bogus", lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="bogus"), X1, "padding_mode"),
    ("Conv1d-reflect-too-wide", lambda: nn.Conv1d(2, 3, 3, padding=6, padding_mode="reflect"), X1,
     "(?i)pad|reflect"),
    ("Conv1d-dilation-0", lambda: nn.Conv1d(2, 3, 3, dilation=0), X1, "dilation"),
    ("Conv1d-kernel_size-0", lambda: nn.Conv1d(2, 3, 0), X1, "kernel_size"),
    ("Conv1d-negative-padding", lambda: nn.Conv1d(2, 3, 3, padding=-1), X1, "padding"),
    ("Conv1d-groups-not-dividing", lambda: nn.Conv1d(2, 3, 3, groups=2), X1, "groups"),
    ("Conv1d-4d-input", lambda: nn.Conv1d(2, 3, 3), X2, r"(?i)3-D|2-D|input"),
    ("Conv2d-padding_mode-bogus", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="bogus"), X2, "padding_mode"),
    ("Conv2d-padding_mode-none", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode=None), X2, "padding_mode"),
    ("Conv2d-reflect-too-wide", lambda: nn.Conv2d(2, 3, 3, padding=5, padding_mode="reflect"), X2,
     "(?i)pad|reflect"),
    ("MaxPool1d-kernel_size-0", lambda: nn.MaxPool1d(0), X1, "kernel_size"),
    ("MaxPool1d-dilation-0", lambda: nn.MaxPool1d(2, dilation=0), X1, "dilation"),
    ("AvgPool1d-kernel_size-0", lambda: nn.AvgPool1d(0), X1, "kernel_size"),
    ("AvgPool1d-negative-padding", lambda: nn.AvgPool1d(3, padding=-1), X1, "padding"),
    ("MaxPool2d-dilation-0", lambda: nn.MaxPool2d(2, dilation=0), X2, "dilation"),
    ("MaxPool2d-kernel_size-0", lambda: nn.MaxPool2d(0), X2, "kernel_size"),
    ("MaxPool2d-padding-bogus", lambda: nn.MaxPool2d(3, padding="bogus"), X2, "padding"),
    ("AvgPool2d-divisor_override-0", lambda: nn.AvgPool2d(2, divisor_override=0), X2, "divisor_override"),
    ("AvgPool2d-divisor_override-float", lambda: nn.AvgPool2d(2, divisor_override=2.5), X2, "divisor_override"),
    ("AdaptiveAvgPool2d-0", lambda: nn.AdaptiveAvgPool2d(0), X2, "output_size"),
    ("AdaptiveMaxPool2d-length-3", lambda: nn.AdaptiveMaxPool2d((1, 2, 3)), X2, "output_size"),
    ("AdaptiveAvgPool1d-0", lambda: nn.AdaptiveAvgPool1d(0), X1, "output_size"),
    ("AdaptiveMaxPool1d-pair", lambda: nn.AdaptiveMaxPool1d((2, 2)), X1, "output_size"),
    ("MaxUnpool2d-kernel_size-0", lambda: nn.MaxUnpool2d(0), rand(1, 2, 2, 2), "kernel_size"),
]


@pytest.mark.parametrize("make,x,match", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_bad_layer_argument_names_itself(make, x, match):
    x = x.astype(np.float32)  # the layers' dtype: a float64 input would fail on the dtype first
    with pytest.raises(ERRORS, match=match):
        layer = make()
        if isinstance(layer, nn.MaxUnpool2d):
            layer(x, IDX2)
        else:
            layer(x)


def test_max_unpool2d_layer_output_size_inconsistent_with_the_shapes():
    layer = nn.MaxUnpool2d(2)
    with pytest.raises(ERRORS, match="output_size"):
        layer(rand(1, 2, 2, 2).astype(np.float32), IDX2, output_size=(9, 4))
    with pytest.raises(ERRORS, match="output_size"):
        layer(rand(1, 2, 2, 2).astype(np.float32), IDX2, output_size=(4,))


def test_max_pool2d_return_indices_is_not_a_gradient():
    """The indices a pooling returns are integers: no gradient flows into them, and backward still works."""
    x = gpuconv.tensor(X2, requires_grad=True)
    y, idx = gnf.max_pool2d(x, 2, return_indices=True)
    assert np.asarray(getattr(idx, "data", idx)).dtype == np.int64
    assert not getattr(idx, "requires_grad", False)
    y.backward(np.ones(y.shape))
    assert x.grad.shape == X2.shape


@pytest.mark.parametrize("api", [gf, gnf], ids=["arrays", "tensors"])
def test_max_unpool_index_outside_the_plane_is_a_value_error(api):
    """The spec: index -1 is skipped, any other index outside the output plane is a ValueError."""
    for bad in (16, -2, 1 << 40):
        idx = IDX2.copy()
        idx[0, 1, 1, 0] = bad
        with pytest.raises(ValueError, match="(?i)indices|index"):
            api.max_unpool2d(rand(1, 2, 2, 2), idx, 2)
    idx = IDX1.copy()
    idx[0, 0, 2] = 6
    with pytest.raises(ValueError, match="(?i)indices|index"):
        api.max_unpool1d(rand(1, 2, 3), idx, 2)
    idx[0, 0, 2] = -1  # skipped, not an error
    api.max_unpool1d(rand(1, 2, 3), idx, 2)
