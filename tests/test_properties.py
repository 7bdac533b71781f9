"""Property tests: random convolution geometries through every pass and backend, adjoint identities, weight files.

Hypothesis draws shapes, strides, paddings (int, pair, 4-sided, "valid"/"same"/"full"), dilations and groups.
The CPU fast path is compared with ``gpuconv.reference`` and both with the loop definition in ``direct``; the
GPU kernels (when there is a GPU) with the reference.
"""
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import direct
import gpuconv
from gpuconv import cpu_fast, nn
from gpuconv import functional as F

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ints_or_pairs = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
paddings = st.one_of(
    st.integers(0, 2),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.sampled_from(["valid", "same", "full"]),
)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def conv_problems(draw):
    """(x_shape, w_shape, geometry kwargs); the input is never smaller than the dilated kernel."""
    kind = draw(st.sampled_from(["any", "any", "pointwise", "depthwise"]))  # the fast path's special cases
    groups = draw(st.integers(1, 3))
    cg = 1 if kind == "depthwise" else draw(st.integers(1, 3))
    kg = draw(st.integers(1, 3))
    if kind == "pointwise":
        r = s = 1
        stride, dilation, padding = 1, 1, draw(st.sampled_from([0, "valid", "same"]))
    else:
        r, s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride, dilation, padding = draw(ints_or_pairs), draw(st.one_of(st.integers(1, 2), st.tuples(
            st.integers(1, 2), st.integers(1, 2)))), draw(paddings)
    dh, dw = pair(dilation)
    h = draw(st.integers(dh * (r - 1) + 1, dh * (r - 1) + 6))
    w = draw(st.integers(dw * (s - 1) + 1, dw * (s - 1) + 6))
    n = draw(st.integers(1, 2))
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (n, cg * groups, h, w), (kg * groups, cg, r, s), geometry


def four_sided(x_shape, w_shape, geometry):
    """The padding as (top, bottom, left, right), resolved by direct's rules (independent of gpuconv)."""
    padding = geometry["padding"]
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        return direct.same_padding(x_shape[2:], w_shape[2:], geometry["stride"], geometry["dilation"])
    if padding == "full":
        (dh, dw), (r, s) = pair(geometry["dilation"]), w_shape[2:]
        return (dh * (r - 1),) * 2 + (dw * (s - 1),) * 2
    return direct.four_sided(padding)


def random_arrays(x_shape, w_shape, geometry, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    y_shape = F.conv2d(x, w, **geometry, algo="reference").shape
    dy = rng.standard_normal(y_shape)
    return x, w, dy


def assert_close(actual, expected, rtol, what):
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@SETTINGS
@given(problem=conv_problems(), seed=st.integers(0, 2 ** 16), workspace=st.sampled_from([None, 4096, 1024]))
def test_fast_cpu_path_matches_reference_and_direct(problem, seed, workspace):
    """With the default workspace and with a tiny one (so the chunked code paths run too)."""
    x_shape, w_shape, geometry = problem
    x, w, dy = random_arrays(x_shape, w_shape, geometry, seed)
    saved = cpu_fast.get_workspace_limit()
    try:
        if workspace:
            cpu_fast.set_workspace_limit(workspace)
        try:
            fast = (F.conv2d(x, w, **geometry),
                    F.conv2d_grad_input(dy, w, x.shape, **geometry),
                    F.conv2d_grad_weight(x, dy, w.shape, **geometry))
        except MemoryError:  # one output row does not fit the tiny workspace: a documented refusal
            assume(False)
    finally:
        cpu_fast.set_workspace_limit(saved)
    reference = (F.conv2d(x, w, **geometry, algo="reference"),
                 F.conv2d_grad_input(dy, w, x.shape, **geometry, algo="reference"),
                 F.conv2d_grad_weight(x, dy, w.shape, **geometry, algo="reference"))
    for name, a, b in zip(("forward", "grad_input", "grad_weight"), fast, reference):
        assert a.shape == b.shape and a.dtype == np.float64, name
        assert_close(a, b, 1e-12, f"fast {name} vs reference")
    # The reference against the loop definition, with the padding resolved independently of gpuconv.
    expected = direct.conv2d(x, w, stride=geometry["stride"], padding=four_sided(x_shape, w_shape, geometry),
                             dilation=geometry["dilation"], groups=geometry["groups"])
    assert_close(reference[0], expected, 1e-12, "reference forward vs direct loops")


@SETTINGS
@given(problem=conv_problems(), seed=st.integers(0, 2 ** 16), algo=st.sampled_from(["auto", "reference"]))
def test_adjoint_identities(problem, seed, algo):
    """grad_input and grad_weight are the adjoints of the forward map, which is linear in x and in w."""
    x_shape, w_shape, geometry = problem
    x, w, dy = random_arrays(x_shape, w_shape, geometry, seed)
    y = F.conv2d(x, w, **geometry, algo=algo)
    dx = F.conv2d_grad_input(dy, w, x.shape, **geometry, algo=algo)
    dw = F.conv2d_grad_weight(x, dy, w.shape, **geometry, algo=algo)
    forward = np.vdot(y, dy)
    scale = np.abs(y).ravel() @ np.abs(dy).ravel() + 1.0
    assert abs(forward - np.vdot(x, dx)) <= 1e-11 * scale
    assert abs(forward - np.vdot(w, dw)) <= 1e-11 * scale
    # And the bias gradient is the adjoint of adding a bias.
    b = np.random.default_rng(seed + 1).standard_normal(w_shape[0])
    with_bias = F.conv2d(x, w, b, **geometry, algo=algo)
    assert abs(np.vdot(with_bias - y, dy) - np.vdot(b, F.conv2d_grad_bias(dy))) <= 1e-11 * (np.abs(dy).sum() + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not gpuconv.cuda_available(), reason="no CUDA device")
@SETTINGS
@given(problem=conv_problems(), seed=st.integers(0, 2 ** 16), algo=st.sampled_from(["auto", "im2col",
                                                                                      "implicit_gemm"]))
def test_gpu_matches_reference(problem, seed, algo):
    import cupy

    x_shape, w_shape, geometry = problem
    x, w, dy = random_arrays(x_shape, w_shape, geometry, seed)
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    gx, gw, gdy = (cupy.asarray(a) for a in (x32, w32, dy32))
    results = {
        "forward": (F.conv2d(gx, gw, **geometry, algo=algo), F.conv2d(x, w, **geometry, algo="reference")),
        "grad_input": (F.conv2d_grad_input(gdy, gw, x.shape, **geometry, algo=algo),
                       F.conv2d_grad_input(dy, w, x.shape, **geometry, algo="reference")),
        "grad_weight": (F.conv2d_grad_weight(gx, gdy, w.shape, **geometry, algo=algo),
                        F.conv2d_grad_weight(x, dy, w.shape, **geometry, algo="reference")),
    }
    for name, (gpu, reference) in results.items():
        assert isinstance(gpu, cupy.ndarray) and gpu.dtype == np.float32, name
        assert_close(cupy.asnumpy(gpu), reference, 1e-4, f"GPU {algo} {name} vs float64 reference")


# ------------------------------------------------------- weight files ---

@st.composite
def small_models(draw):
    """A random small Sequential (convs, BN, activations, pools, then a linear head) and an input shape."""
    channels, size = draw(st.integers(1, 3)), draw(st.integers(4, 8))
    spec = [("input", channels, size)]
    for _ in range(draw(st.integers(1, 3))):
        block = draw(st.sampled_from(["conv", "conv-groups", "bn", "relu", "maxpool", "avgpool", "dropout"]))
        if block.startswith("conv"):
            groups = channels if block == "conv-groups" else 1
            out = groups * draw(st.integers(1, 3))
            spec.append(("conv", channels, out, draw(st.integers(1, 3)), draw(st.booleans()), groups))
            channels = out
        elif block == "bn":
            spec.append(("bn", channels))
        elif block.endswith("pool") and size >= 2:
            spec.append((block,))
            size //= 2
        elif block in ("relu", "dropout"):
            spec.append((block,))
    spec.append(("linear", channels * size * size, draw(st.integers(1, 4)), draw(st.booleans())))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return spec, dtype


def build(spec, dtype, seed):
    nn.manual_seed(seed)
    layers = []
    for item in spec[1:]:
        kind = item[0]
        if kind == "conv":
            _, c_in, c_out, k, bias, groups = item
            layers.append(nn.Conv2d(c_in, c_out, k, padding="same", bias=bias, groups=groups))
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(item[1]))
        elif kind == "relu":
            layers.append(nn.ReLU())
        elif kind == "dropout":
            layers.append(nn.Dropout(0.3))
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(2))
        elif kind == "avgpool":
            layers.append(nn.AvgPool2d(2))
        elif kind == "linear":
            layers += [nn.Flatten(), nn.Linear(item[1], item[2], bias=item[3])]
    return nn.Sequential(*layers).to(dtype)


@settings(max_examples=30, deadline=None)
@given(model_spec=small_models(), seed=st.integers(0, 1000))
def test_weight_file_round_trip(model_spec, seed):
    spec, dtype = model_spec
    _, channels, size = spec[0]
    model = build(spec, dtype, seed)
    x = np.random.default_rng(seed).standard_normal((3, channels, size, size)).astype(dtype)
    model(x)  # training mode: BN running statistics (and their counter) move
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.npz")
        model.save(path)
        assert os.listdir(tmp) == ["model.npz"]
        loaded = build(spec, dtype, seed + 1)
        loaded.load(path)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(state) == list(loaded_state)
    for name in state:
        # Every parameter and statistic has the model's dtype; the batch counter is int64, as in PyTorch.
        expected = np.int64 if name.endswith("num_batches_tracked") else dtype
        assert state[name].dtype == loaded_state[name].dtype == expected, name
        assert state[name].tobytes() == loaded_state[name].tobytes(), name
        if name.endswith("num_batches_tracked"):
            assert state[name] == 1, name
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded(x), model(x))
