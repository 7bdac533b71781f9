"""2-D convolution on the GPU with gpuconv's own kernels: fprop, dgrad and wgrad.

Each call plans (``gpuconv.cuda.plan.plan_conv``: a pure function of the pass, geometry, dtype, the
requested ``algo`` and the free memory), then runs the plan (``run_conv``) on a backend: the GPU
through CuPy by default, the CPU emulator in the tests.

Three algorithm families:

* ``"im2col"`` -- kernels/im2col.cu copies the input taps into a column matrix
  ``col[(c, r, s), (n, p, q)]`` and cuBLAS (``matmul``, one GEMM batched over the groups) multiplies it
  with the weight; dgrad multiplies first and folds the columns back with col2im. The batch is processed
  in the plan's chunks. 1x1 stride-1 unpadded convolutions skip the column matrix: their input already
  is one.
* ``"implicit_gemm"`` -- kernels/conv2d_{fprop,dgrad,wgrad}.cu run the same GEMMs with the column
  matrix gathered tile by tile into shared memory, never stored; ``algo`` may name one of their
  registry variants.
* ``"direct"`` -- kernels/conv2d_depthwise.cu: depthwise convolutions as a stencil over shared-memory
  patches.
* ``"tensor_core"`` -- kernels/conv2d_tensor_core.cu (fprop; dgrad per stride phase as the fprop of dy
  with the phase's taps of w transposed and flipped; wgrad on pixel-major packed x and dy; sm_80+): the
  operands packed to NHWC / (K, R, S, C) with channels zero-padded per group, then an implicit GEMM on
  mma.sync: float16 and bfloat16 with float32 accumulation, float32 as TF32 (its inputs rounded to 10
  mantissa bits: only when asked for by name or family, never by ``auto``). ``auto`` prefers it for
  float16 and bfloat16 where it applies.

``algo="auto"`` asks the autotuner on a GPU (``gpuconv.cuda.autotune``) and applies the fixed rule
otherwise. float16 is a storage type: the kernels accumulate in float32, and cuBLAS multiplies float16
matrices with float32 accumulation (CuPy's default compute type). Every result has the input dtype.
All kernels are deterministic: running a plan twice gives the same bits.
"""
from __future__ import annotations

from .._backend import GPUOutOfMemoryError
from .._shapes import ConvGeometry, accumulation_dtype
from . import _launch, autotune
from .backend import resolve_backend
from .plan import (PASS_NAMES, ConvPlan, check_algo, check_geometry, elementwise_launch, im2col_launch, plan_conv,
                   result_bytes, result_shape)
from .registry import (IM2COL, PASS_OPERANDS, TENSOR_CORE, tensor_op_dgrad_phases, tensor_op_workspace_shapes,
                       wgrad_dy_as_input)


def conv_shape_args(g: ConvGeometry, batch: int | None = None) -> tuple:
    """The 16 ``int`` shape parameters every convolution kernel takes, for ``batch`` images."""
    (sh, sw), (dh, dw), (pt, _, pl, _) = g.stride, g.dilation, g.pad
    return _launch.int32(g.N if batch is None else batch, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q,
                         sh, sw, dh, dw, pt, pl, g.groups)


# ------------------------------------------------------------------------ entry points ---

def make_plan(pass_name: str, g: ConvGeometry, dtype, algo: str = "auto", backend=None, operands=None,
              allow_tf32: bool = False) -> ConvPlan:
    """The plan ``conv2d_forward`` & co. run for these arguments on ``backend`` (default: the GPU).

    ``auto`` is autotuned when the backend allows it: a shape the cache does not know is timed on
    ``operands`` (the pass's arrays). Without operands, or while the stream is being captured into a
    CUDA graph (timing synchronises), ``auto`` takes the cached choice if there is one, else the fixed rule.
    ``allow_tf32``: ``auto`` may also choose the TF32 tensor-core variants for float32 (its own cache entries).
    """
    backend = resolve_backend(backend)
    free, cc = backend.free_bytes(), backend.compute_capability()
    tuned = None
    if algo == "auto" and autotune.enabled() and backend.autotunable:
        if operands is None or backend.capturing():
            tuned = autotune.cached_choice(pass_name, g, dtype, backend, allow_tf32=allow_tf32)
        else:
            tuned = autotune.choose(pass_name, g, dtype, backend, operands, free, allow_tf32=allow_tf32)
    return plan_conv(pass_name, g, dtype, algo, free, tuned, cc, allow_tf32=allow_tf32)


def _run_pass(pass_name: str, g: ConvGeometry, algo: str, backend, allow_tf32: bool = False, **arrays):
    check_algo(pass_name, algo)  # bad arguments are refused before anything is timed or allocated
    check_geometry(g)
    backend = resolve_backend(backend)
    operands = _launch.kernel_operands(backend.xp, **arrays)
    plan = make_plan(pass_name, g, operands[0].dtype, algo, backend, operands, allow_tf32=allow_tf32)
    return run_conv(plan, backend, *operands)


def conv2d_forward(x, w, g: ConvGeometry, algo: str = "auto", backend=None, allow_tf32: bool = False):
    """y (N, K, P, Q) = conv2d(x (N, C, H, W), w (K, C/groups, R, S)), in x's dtype. ``allow_tf32``: ``auto``
    may run float32 on the TF32 tensor cores (its inputs rounded to 10 mantissa bits)."""
    return _run_pass("fprop", g, algo, backend, allow_tf32, x=x, w=w)


def conv2d_grad_input(dy, w, g: ConvGeometry, algo: str = "auto", backend=None, allow_tf32: bool = False):
    """dx (N, C, H, W), the gradient of conv2d with respect to its input, in dy's dtype (``allow_tf32``: as
    for conv2d_forward)."""
    return _run_pass("dgrad", g, algo, backend, allow_tf32, dy=dy, w=w)


def conv2d_grad_weight(x, dy, g: ConvGeometry, algo: str = "auto", backend=None, allow_tf32: bool = False):
    """dw (K, C/groups, R, S), the gradient of conv2d with respect to its weight, in x's dtype (``allow_tf32``:
    as for conv2d_forward)."""
    return _run_pass("wgrad", g, algo, backend, allow_tf32, x=x, dy=dy)


# --------------------------------------------------------------------------------- run ---

def run_conv(plan: ConvPlan, backend, a, b):
    """Execute a plan. Operands, C-contiguous and of the plan's dtype: fprop (x, w), dgrad (dy, w),
    wgrad (x, dy). Returns the result; CuPy's out-of-memory error is restated as GPUOutOfMemoryError."""
    runners = {IM2COL: _IM2COL_RUNNERS, TENSOR_CORE: _TENSOR_OP_RUNNERS}.get(plan.algorithm, _KERNEL_RUNNERS)
    run = runners[plan.pass_name]
    _check_operands(plan, a, b)
    try:
        return run(plan, backend, a, b)
    except backend.out_of_memory_errors as exc:
        needed = plan.workspace_bytes + result_bytes(plan.pass_name, plan.geometry, plan.dtype)
        raise GPUOutOfMemoryError(f"conv2d {plan.pass_name} ({PASS_NAMES[plan.pass_name]}, {plan.variant}) needs "
                                  f"{needed:,} bytes of GPU memory but only {backend.free_bytes():,} bytes are "
                                  f"free ({exc})") from None


def _check_operands(plan: ConvPlan, a, b) -> None:
    """The kernels trust their arguments (CuPy checks none): the operands must be the plan's."""
    g = plan.geometry
    shapes = {"x": g.input_shape, "w": g.weight_shape, "dy": g.output_shape}
    for name, array in zip(PASS_OPERANDS[plan.pass_name], (a, b)):
        problem = None
        if tuple(array.shape) != shapes[name]:
            problem = f"has shape {tuple(array.shape)}, the plan's geometry needs {shapes[name]}"
        elif array.dtype != plan.dtype:
            problem = f"is {array.dtype}, the plan is for {plan.dtype}"
        elif not array.flags.c_contiguous:
            problem = "is not C-contiguous"
        if problem:
            raise ValueError(f"run_conv({plan.pass_name}): operand {name} {problem} (operands: "
                             f"{', '.join(PASS_OPERANDS[plan.pass_name])})")


def _kernels_into_result(plan, backend, a, w):
    """fprop and dgrad on our kernels: every launch (one, or one per stride phase, each writing its own
    pixels) takes (operand, w, result, shape, its scalars)."""
    g = plan.geometry
    out = backend.xp.empty(result_shape(plan.pass_name, g), dtype=plan.dtype)
    for launch in plan.launches:
        backend.launch(launch, (a, w, out, *conv_shape_args(g), *_launch.int32(*launch.scalars)))
    return out


def _tensor_op_fprop(plan, backend, x, w):
    """fprop on the tensor cores: x packed NHWC and w (K, R, S, C), channels padded per group, then the GEMM
    on the copies."""
    g, xp = plan.geometry, backend.xp
    pack_input, pack_weight, gemm = plan.launches
    input_shape, weight_shape = tensor_op_workspace_shapes(g, plan.dtype)
    shape = conv_shape_args(g)
    x_packed = xp.empty(input_shape, dtype=plan.dtype)
    backend.launch(pack_input, (x, x_packed, *shape))
    w_packed = xp.empty(weight_shape, dtype=plan.dtype)
    backend.launch(pack_weight, (w, w_packed, *shape))
    y = xp.empty(g.output_shape, dtype=plan.dtype)
    backend.launch(gemm, (x_packed, w_packed, y, *shape))
    return y


def _tensor_op_dgrad(plan, backend, dy, w):
    """dgrad on the tensor cores: dy packed NHWC once, then per stride phase (tensor_op_dgrad_phases) the taps
    reaching it packed transposed and flipped and that phase's fprop of dy, written into its pixels of dx (at
    stride 1 the one phase's output is dx). Pixels no tap reaches stay zero."""
    g, xp = plan.geometry, backend.xp
    phases = tensor_op_dgrad_phases(g)
    whole = len(phases) == 1 and phases[0].conv.output_shape == g.input_shape
    every_pixel_reached = len(phases) == len(g.dgrad_phases())
    dx = None if whole else (xp.empty if every_pixel_reached else xp.zeros)(g.input_shape, dtype=plan.dtype)
    if not phases:
        return dx
    dy_packed = xp.empty(tensor_op_workspace_shapes(phases[0].conv, plan.dtype)[0], dtype=plan.dtype)
    backend.launch(plan.launches[0], (dy, dy_packed, *conv_shape_args(phases[0].conv)))
    for phase, pack_weight, gemm in zip(phases, plan.launches[1::2], plan.launches[2::2], strict=True):
        conv, shape = phase.conv, conv_shape_args(phase.conv)
        taps = w
        if (conv.R, conv.S) != (g.R, g.S):  # this phase's taps, contiguous for the pack
            taps = xp.empty((g.K, g.channels_per_group, conv.R, conv.S), dtype=plan.dtype)
            taps[...] = w[:, :, phase.r_taps, phase.s_taps]
        w_packed = xp.empty(tensor_op_workspace_shapes(conv, plan.dtype)[1], dtype=plan.dtype)
        backend.launch(pack_weight, (taps, w_packed, *shape))
        out = xp.empty(conv.output_shape, dtype=plan.dtype)
        backend.launch(gemm, (dy_packed, w_packed, out, *shape))
        if whole:
            return out
        dx[:, :, phase.rows, phase.cols] = out
    return dx


def _tensor_op_wgrad(plan, backend, x, dy):
    """wgrad on the tensor cores: x and dy packed NHWC (each group's channels and filters padded to 16 bytes),
    then the GEMM of the packed copies, split over the pixels into float32 partial sums, then their sum in
    split order, rounded to the dtype once."""
    g, xp = plan.geometry, backend.xp
    pack_input, pack_dy, gemm, reduce = plan.launches
    input_shape, dy_shape = tensor_op_workspace_shapes(g, plan.dtype, "wgrad")
    x_packed = xp.empty(input_shape, dtype=plan.dtype)
    backend.launch(pack_input, (x, x_packed, *conv_shape_args(g)))
    dy_packed = xp.empty(dy_shape, dtype=plan.dtype)
    backend.launch(pack_dy, (dy, dy_packed, *conv_shape_args(wgrad_dy_as_input(g))))
    partial = xp.empty((plan.wgrad_splits,) + g.weight_shape, dtype=accumulation_dtype(plan.dtype))
    backend.launch(gemm, (x_packed, dy_packed, partial, *conv_shape_args(g),
                          *_launch.int32(plan.wgrad_splits, plan.wgrad_pixels_per_split)))
    dw = xp.empty(g.weight_shape, dtype=plan.dtype)
    backend.launch(reduce, (partial, dw, _launch.int64(dw.size), *_launch.int32(plan.wgrad_splits)))
    return dw


def _wgrad_splits(plan, backend, x, dy):
    """wgrad on our kernels: partial sums per split, then the fixed-order reduction."""
    g = plan.geometry
    xp = backend.xp
    gemm, reduce = plan.launches
    partial = xp.empty((plan.wgrad_splits,) + g.weight_shape, dtype=accumulation_dtype(plan.dtype))
    backend.launch(gemm, (x, dy, partial, *conv_shape_args(g), *_launch.int32(plan.wgrad_splits),
                          _launch.int64(plan.wgrad_pixels_per_split)))
    dw = xp.empty(g.weight_shape, dtype=plan.dtype)
    backend.launch(reduce, (partial, dw, _launch.int64(dw.size), *_launch.int32(plan.wgrad_splits)))
    return dw


def im2col_columns(backend, launch, x, g: ConvGeometry):
    """The column matrix of the images in x (n, C, H, W), as (groups, Cg*R*S, n*P*Q)."""
    G, Cg, _ = g.groups, g.channels_per_group, g.filters_per_group
    n = x.shape[0]
    col = backend.xp.empty((G, Cg * g.R * g.S, n * g.P * g.Q), dtype=x.dtype)
    backend.launch(launch, (x, col, *conv_shape_args(g, n)))
    return col


def _output_grad_by_group(xp, dy, g: ConvGeometry):
    """dy (n, K, P, Q) as (groups, Kg, n*P*Q), contiguous: the layout the GEMMs with col need."""
    G, _, Kg = g.groups, g.channels_per_group, g.filters_per_group
    n = dy.shape[0]
    return xp.ascontiguousarray(dy.reshape(n, g.K, g.P * g.Q).transpose(1, 0, 2)).reshape(G, Kg, n * g.P * g.Q)


def _fprop_im2col(plan, backend, x, w):
    g, xp = plan.geometry, backend.xp
    G, Cg, Kg = g.groups, g.channels_per_group, g.filters_per_group
    if plan.pointwise:
        y = backend.matmul(w.reshape(G, Kg, Cg), x.reshape(g.N, G, Cg, g.H * g.W))  # (N, G, Kg, H*W)
        return y.reshape(g.output_shape)
    y = xp.empty(g.output_shape, dtype=plan.dtype)
    w_by_group = w.reshape(G, Kg, Cg * g.R * g.S)
    for start, stop in plan.batch_chunks:
        n = stop - start
        col = im2col_columns(backend, plan.launches[0], x[start:stop], g)
        y_by_group = backend.matmul(w_by_group, col)  # (G, Kg, n*P*Q) = (K, n, P, Q)
        y[start:stop] = y_by_group.reshape(g.K, n, g.P, g.Q).transpose(1, 0, 2, 3)
    return y


def _dgrad_im2col(plan, backend, dy, w):
    g, xp = plan.geometry, backend.xp
    G, Cg, Kg = g.groups, g.channels_per_group, g.filters_per_group
    if plan.pointwise:
        w_t = w.reshape(G, Kg, Cg).transpose(0, 2, 1)  # (G, Cg, Kg)
        return backend.matmul(w_t, dy.reshape(g.N, G, Kg, g.P * g.Q)).reshape(g.input_shape)
    dx = xp.empty(g.input_shape, dtype=plan.dtype)
    w_t = w.reshape(G, Kg, Cg * g.R * g.S).transpose(0, 2, 1)  # (G, Cg*R*S, Kg)
    for start, stop in plan.batch_chunks:
        dcol = backend.matmul(w_t, _output_grad_by_group(xp, dy[start:stop], g))  # (G, Cg*R*S, n*P*Q)
        backend.launch(plan.launches[0], (dcol, dx[start:stop], *conv_shape_args(g, stop - start)))
    return dx


def _wgrad_im2col(plan, backend, x, dy):
    g, xp = plan.geometry, backend.xp
    dw = None
    for start, stop in plan.batch_chunks:
        col = im2col_columns(backend, plan.launches[0], x[start:stop], g)        # (G, Cg*R*S, n*P*Q)
        part = backend.matmul(_output_grad_by_group(xp, dy[start:stop], g),
                              col.transpose(0, 2, 1))                             # (G, Kg, Cg*R*S)
        if dw is None:
            dw = part
        else:  # chunks are summed in batch order, float16 ones in float32
            dw = dw.astype(accumulation_dtype(plan.dtype), copy=False) + part
    return dw.astype(plan.dtype, copy=False).reshape(g.weight_shape)


#: pass -> how to run it, on im2col + cuBLAS or on our kernels (implicit GEMM and direct take the same arguments).
_IM2COL_RUNNERS = {"fprop": _fprop_im2col, "dgrad": _dgrad_im2col, "wgrad": _wgrad_im2col}
_KERNEL_RUNNERS = {"fprop": _kernels_into_result, "dgrad": _kernels_into_result, "wgrad": _wgrad_splits}
_TENSOR_OP_RUNNERS = {"fprop": _tensor_op_fprop, "dgrad": _tensor_op_dgrad, "wgrad": _tensor_op_wgrad}


# ------------------------------------------------------------------ im2col as a function ---

def im2col(x, g: ConvGeometry, backend=None):
    """The column matrix (C*R*S, N*P*Q) of x (N, C, H, W): row (c, r, s), column (n, p, q).

    The transpose of ``gpuconv.reference.im2col``'s (N*P*Q, C*R*S) matrix.
    """
    backend = resolve_backend(backend)
    check_geometry(g)
    (x,) = _launch.kernel_operands(backend.xp, x=x)
    launch = im2col_launch(g, x.dtype, g.N)
    return im2col_columns(backend, launch, x, g).reshape(g.C * g.R * g.S, g.N * g.P * g.Q)


def col2im(col, g: ConvGeometry, backend=None):
    """The adjoint of ``im2col``: x (N, C, H, W) whose every pixel sums the entries of col copied from it."""
    backend = resolve_backend(backend)
    check_geometry(g)
    (col,) = _launch.kernel_operands(backend.xp, col=col)
    expected = (g.C * g.R * g.S, g.N * g.P * g.Q)
    if tuple(col.shape) != expected:
        raise ValueError(f"col must have shape {expected} for this convolution, got {tuple(col.shape)}")
    x = backend.xp.empty(g.input_shape, dtype=col.dtype)
    launch = elementwise_launch("col2im_nchw", col.dtype, x.size)
    backend.launch(launch, (col, x, *conv_shape_args(g)))
    return x


__all__ = ["conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight", "make_plan", "run_conv", "im2col",
           "col2im", "conv_shape_args", "im2col_columns"]
