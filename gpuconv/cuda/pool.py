"""2-D max and average pooling on the GPU (kernels/pooling.cu), PyTorch semantics plus ONNX's padding.

Every geometry ``PoolGeometry`` describes runs here: dilation, 4-sided and "same" padding, padding larger than
half the kernel (windows of padding only), ceil_mode and adaptive bins. Max pooling propagates NaN, sends each
output's gradient to its window's first maximum and can return the per-plane index of that maximum; it also
runs on integer dtypes (forward). Average pooling follows avg_pool2d's count_include_pad, ceil_mode and
divisor_override rules (``PoolGeometry.divisors``). The backward kernels are gathers, so every result is
bitwise reproducible. Results have the input dtype (indices: int64).
Each call plans its one launch (``plan.plan_pool``) and runs it on a backend (CuPy by default).
"""
from __future__ import annotations

import numpy as np

from .._shapes import PoolGeometry
from . import _launch
from .backend import resolve_backend
from .plan import PoolPlan, plan_pool

#: op -> (what its operands are shaped as, what it writes): "in" the input's shape, "out" the output's.
_OPERANDS = {"maxpool2d_forward": (("in",), ("out",)), "maxpool2d_forward_indices": (("in",), ("out", "out")),
             "maxpool2d_backward": (("out", "in"), ("in",)), "avgpool2d_forward": (("in",), ("out",)),
             "avgpool2d_backward": (("out",), ("in",))}


def pool_shape_args(g: PoolGeometry) -> tuple:
    """The 17 ``int`` shape parameters every pooling kernel takes."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr) = g.kernel, g.stride, g.dilation, g.pad
    return _launch.int32(g.N, g.C, g.H, g.W, g.P, g.Q, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, int(g.is_adaptive))


def run_pool(plan: PoolPlan, backend, *operands, count_include_pad: bool | None = None,
             divisor_override: int | None = None):
    """Execute a pooling plan: forward (x), max backward (dy, x), avg backward (dy); average pooling needs
    ``count_include_pad`` (and takes ``divisor_override``), max pooling takes neither. Returns the result, or
    (y, indices) for ``maxpool2d_forward_indices``."""
    g, op = plan.geometry, plan.launch.variant.op
    shape_of = {"in": g.input_shape, "out": g.output_shape}
    ins, outs = _OPERANDS[op]
    expected = tuple(shape_of[k] for k in ins)
    shapes = tuple(tuple(a.shape) for a in operands)
    if shapes != expected or any(a.dtype != plan.launch.dtype or not a.flags.c_contiguous for a in operands):
        raise ValueError(f"run_pool({op}): operands of shapes {shapes} ({', '.join(str(a.dtype) for a in operands)}); "
                         f"the plan needs C-contiguous {plan.launch.dtype} arrays of shapes {expected}")
    is_max = op.startswith("max")
    if (count_include_pad is None) != is_max or (divisor_override is not None and is_max):
        raise ValueError(f"run_pool({op}): count_include_pad is " +
                         ("needed for average pooling" if count_include_pad is None else "for average pooling only") +
                         ", and so is divisor_override")
    xp = backend.xp
    results = [xp.empty(shape_of[outs[0]], dtype=plan.launch.dtype)]
    if len(outs) == 2:
        results.append(xp.empty(shape_of[outs[1]], dtype=np.int64))
    extra = () if is_max else _launch.int32(bool(count_include_pad), divisor_override or 0)
    backend.launch(plan.launch, (*operands, *results, *pool_shape_args(g), *extra))
    return tuple(results) if len(results) == 2 else results[0]


def _pool(op: str, g: PoolGeometry, backend, count_include_pad=None, divisor_override=None, **arrays):
    backend = resolve_backend(backend)
    operands = _launch.kernel_operands(backend.xp, **arrays)
    plan = plan_pool(op, g, operands[0].dtype)
    return run_pool(plan, backend, *operands, count_include_pad=count_include_pad, divisor_override=divisor_override)


def max_pool2d_forward(x, g: PoolGeometry, return_indices: bool = False, backend=None):
    """y, or (y, indices) with ``return_indices``: the per-plane flat index h * W + w of each maximum, -1 for a
    window of padding only."""
    return _pool("maxpool2d_forward_indices" if return_indices else "maxpool2d_forward", g, backend, x=x)


def max_pool2d_grad(dy, x, g: PoolGeometry, backend=None):
    return _pool("maxpool2d_backward", g, backend, dy=dy, x=x)


def avg_pool2d_forward(x, g: PoolGeometry, count_include_pad: bool = True, divisor_override: int | None = None,
                       backend=None):
    return _pool("avgpool2d_forward", g, backend, count_include_pad, divisor_override, x=x)


def avg_pool2d_grad(dy, g: PoolGeometry, count_include_pad: bool = True, divisor_override: int | None = None,
                    backend=None):
    return _pool("avgpool2d_backward", g, backend, count_include_pad, divisor_override, dy=dy)


__all__ = ["max_pool2d_forward", "max_pool2d_grad", "avg_pool2d_forward", "avg_pool2d_grad", "pool_shape_args",
           "run_pool"]
