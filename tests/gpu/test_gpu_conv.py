"""Our CUDA convolution kernels against the NumPy ground truth (gpuconv.reference), on a GPU.

Every pass (forward, grad_input, grad_weight), both algorithms and every dtype,
on edge-case geometries and on hypothesis-generated ones; the im2col/col2im
kernels on their own; batch chunking; bitwise determinism of the backward passes.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import reference
from gpuconv._backend import cuda_available
from gpuconv._shapes import BFLOAT16, ConvGeometry
from gpuconv.cuda import conv, plan, registry

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]

DTYPES = (np.float16, BFLOAT16, np.float32, np.float64)
ALGOS = ("im2col", "implicit_gemm")
GEMM_VARIANTS = [v for p in registry.CONV_PASSES for v in registry.conv_variants(p)]

EDGE_CASES = [  # input shape, weight shape, ConvGeometry.create keywords
    pytest.param((2, 3, 7, 6), (5, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2)),
                 id="stride-4sided-pad-dilation-odd"),
    pytest.param((2, 3, 8, 7), (4, 3, 4, 2), dict(stride=2, padding="same"), id="same-stride2-even-kernel"),
    pytest.param((1, 4, 11, 9), (6, 4, 3, 3), dict(dilation=(2, 3), padding="full"), id="dilation-full"),
    pytest.param((2, 6, 9, 9), (4, 3, 3, 3), dict(groups=2, padding=1), id="groups"),
    pytest.param((2, 5, 8, 8), (5, 1, 3, 3), dict(groups=5, padding=1), id="depthwise"),
    pytest.param((2, 5, 8, 9), (10, 1, 5, 5), dict(groups=5, padding=2, stride=2), id="depthwise-x2-stride2"),
    pytest.param((3, 8, 5, 6), (7, 8, 1, 1), {}, id="pointwise"),
    pytest.param((2, 6, 6, 6), (4, 3, 1, 1), dict(groups=2), id="pointwise-groups"),
    pytest.param((2, 8, 7, 7), (6, 8, 1, 1), dict(stride=2), id="1x1-stride2"),
    pytest.param((1, 2, 3, 3), (3, 2, 5, 5), dict(padding=1), id="kernel-as-large-as-padded-input"),
    pytest.param((1, 67, 9, 10), (65, 67, 3, 3), dict(padding=1), id="channels-not-multiple-of-tile"),
    pytest.param((4, 16, 17, 15), (33, 16, 3, 3), dict(padding=(0, 1, 2, 0)), id="several-tiles"),
    pytest.param((16, 8, 32, 32), (16, 8, 3, 3), dict(padding=1), id="split-wgrad-reduction"),
]


def check_all_passes(cp, make_data, assert_matches, g: ConvGeometry, dtype, algo: str, seed: int = 0):
    x = make_data(g.input_shape, dtype, seed)
    w = make_data(g.weight_shape, dtype, seed + 1)
    dy = make_data(g.output_shape, dtype, seed + 2)
    x_gpu, w_gpu, dy_gpu = cp.asarray(x), cp.asarray(w), cp.asarray(dy)
    where = f"{g} {np.dtype(dtype)} {algo}"
    assert_matches(conv.conv2d_forward(x_gpu, w_gpu, g, algo=algo), reference.conv2d_forward(x, w, g), dtype,
                   f"forward {where}")
    assert_matches(conv.conv2d_grad_input(dy_gpu, w_gpu, g, algo=algo), reference.conv2d_grad_input(dy, w, g),
                   dtype, f"grad_input {where}")
    assert_matches(conv.conv2d_grad_weight(x_gpu, dy_gpu, g, algo=algo), reference.conv2d_grad_weight(x, dy, g),
                   dtype, f"grad_weight {where}")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, w_shape, options", EDGE_CASES)
def test_edge_cases_match_reference(cp, make_data, assert_matches, x_shape, w_shape, options, dtype, algo):
    g = ConvGeometry.create(x_shape, w_shape, **options)
    check_all_passes(cp, make_data, assert_matches, g, dtype, algo)


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.sampled_from(["valid", "same", "full"]), st.integers(0, 3),
                             st.tuples(*[st.integers(0, 3)] * 4)))
    try:
        return ConvGeometry.create((n, cg * groups, h, w), (kg * groups, cg, r, s), stride, padding, dilation, groups)
    except ValueError:  # kernel larger than the padded input
        assume(False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=geometries(), dtype=st.sampled_from(DTYPES), algo=st.sampled_from(ALGOS), seed=st.integers(0, 99))
def test_generated_shapes_match_reference(cp, make_data, assert_matches, g, dtype, algo, seed):
    check_all_passes(cp, make_data, assert_matches, g, dtype, algo, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x_shape, w_shape, options", EDGE_CASES[:6])
def test_im2col_and_col2im_kernels_match_reference(cp, make_data, assert_matches, x_shape, w_shape, options, dtype):
    g = ConvGeometry.create(x_shape, w_shape, **options)
    x = make_data(g.input_shape, dtype)
    col = conv.im2col(cp.asarray(x), g)  # (C*R*S, N*P*Q): the transpose of the reference's layout
    np.testing.assert_array_equal(cp.asnumpy(col).T, reference.im2col(x, g))  # a copy: exact
    col_ref = make_data((g.N * g.P * g.Q, g.C * g.R * g.S), dtype, seed=5)
    folded = conv.col2im(cp.asarray(np.ascontiguousarray(col_ref.T)), g)
    assert_matches(folded, reference.col2im(col_ref.astype(np.float64), g, g.C), dtype, f"col2im {g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant", GEMM_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("x_shape, w_shape, options", EDGE_CASES)
def test_every_registered_variant_matches_reference(cp, make_data, assert_matches, x_shape, w_shape, options,
                                                    variant, dtype):
    g = ConvGeometry.create(x_shape, w_shape, **options)
    if not variant.can_run(g, dtype):  # refused by the planner, not run
        with pytest.raises(ValueError, match="does not apply"):
            plan.plan_conv(variant.op, g, dtype, variant.name)
        return
    x, w, dy = (cp.asarray(make_data(s, dtype, i)) for i, s in enumerate((g.input_shape, g.weight_shape,
                                                                          g.output_shape)))
    run = {"fprop": lambda: (conv.conv2d_forward(x, w, g, algo=variant.name),
                             reference.conv2d_forward(x.get(), w.get(), g)),
           "dgrad": lambda: (conv.conv2d_grad_input(dy, w, g, algo=variant.name),
                             reference.conv2d_grad_input(dy.get(), w.get(), g)),
           "wgrad": lambda: (conv.conv2d_grad_weight(x, dy, g, algo=variant.name),
                             reference.conv2d_grad_weight(x.get(), dy.get(), g))}[variant.op]
    got, expected = run()
    assert_matches(got, expected, dtype, f"{variant.name} {g}")


@pytest.mark.parametrize("dtype", (np.float16, np.float32), ids=lambda d: np.dtype(d).name)
def test_im2col_batch_chunks_give_the_same_result(cp, make_data, assert_matches, monkeypatch, dtype):
    g = ConvGeometry.create((5, 4, 9, 8), (6, 4, 3, 3), stride=(1, 2), padding=(1, 2, 0, 1))
    per_image = plan.im2col_bytes_per_image(g, np.dtype(dtype).itemsize)
    monkeypatch.setattr(plan, "IM2COL_WORKSPACE_BYTES", 2 * per_image)  # chunks of 2, 2 and 1 images
    assert len(plan.plan_conv("fprop", g, dtype, "im2col").batch_chunks) == 3
    check_all_passes(cp, make_data, assert_matches, g, dtype, "im2col")


@pytest.mark.parametrize("algo", ALGOS)
def test_backward_passes_are_bitwise_deterministic(cp, make_data, assert_same_bits, algo):
    g = ConvGeometry.create((8, 12, 20, 20), (16, 12, 3, 3), stride=2, padding=1)
    rng = np.random.default_rng(0)  # non-exact data, so that summation order would show
    x, w, dy = (cp.asarray(rng.uniform(-1, 1, shape).astype(np.float32))
                for shape in (g.input_shape, g.weight_shape, g.output_shape))
    assert_same_bits(conv.conv2d_grad_input(dy, w, g, algo=algo), conv.conv2d_grad_input(dy, w, g, algo=algo),
                     f"grad_input {algo}")
    assert_same_bits(conv.conv2d_grad_weight(x, dy, g, algo=algo), conv.conv2d_grad_weight(x, dy, g, algo=algo),
                     f"grad_weight {algo}")
    col = cp.asarray(rng.uniform(-1, 1, (g.C * g.R * g.S, g.N * g.P * g.Q)).astype(np.float32))
    assert_same_bits(conv.col2im(col, g), conv.col2im(col, g), "col2im")


def test_functional_api_dispatches_to_the_gpu(cp, make_data, assert_matches):
    x, w, b = make_data((2, 4, 9, 9), np.float32), make_data((6, 2, 3, 3), np.float32), make_data((6,), np.float32)
    options = dict(stride=2, padding="same", groups=2)
    g = ConvGeometry.create(x.shape, w.shape, **options)
    for algo in ("auto", *ALGOS):
        y = gpuconv.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), **options, algo=algo)
        assert isinstance(y, cp.ndarray)
        assert_matches(y, reference.conv2d_forward(x, w, g) + b.reshape(1, -1, 1, 1), np.float32, f"conv2d {algo}")


def test_unknown_algo_and_mixed_dtypes_are_refused(cp):
    g = ConvGeometry.create((1, 2, 5, 5), (3, 2, 3, 3))
    x, w = cp.zeros(g.input_shape, cp.float32), cp.zeros(g.weight_shape, cp.float32)
    with pytest.raises(ValueError, match="implicit_gemm"):
        conv.conv2d_forward(x, w, g, algo="winograd")
    with pytest.raises(ValueError, match="is a dgrad kernel variant"):
        conv.conv2d_forward(x, w, g, algo="dgrad_simt_64x64x16_1stage")
    with pytest.raises(TypeError, match="one dtype"):
        conv.conv2d_forward(x, w.astype(cp.float64), g)
