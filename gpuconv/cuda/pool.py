"""2-D max and average pooling on the GPU (kernels/pooling.cu), PyTorch semantics.

Max pooling propagates NaN and sends each output's gradient to the first
maximum of its window; average pooling follows avg_pool2d's ceil_mode and
count_include_pad divisor rules (``PoolGeometry.window``). The backward kernels
are gathers, so every result is bitwise reproducible. Results have the input dtype.
Each call plans its one launch (``plan.plan_pool``) and runs it on a backend (CuPy by default).
"""
from __future__ import annotations

from .._shapes import PoolGeometry
from . import _launch
from .backend import resolve_backend
from .plan import PoolPlan, plan_pool


def pool_shape_args(g: PoolGeometry) -> tuple:
    """The 12 ``int`` shape parameters every pooling kernel takes."""
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.pad
    return _launch.int32(g.N, g.C, g.H, g.W, g.P, g.Q, kh, kw, sh, sw, ph, pw)


def run_pool(plan: PoolPlan, backend, *operands, count_include_pad: bool | None = None):
    """Execute a pooling plan: forward (x), max backward (dy, x), avg backward (dy); average pooling
    needs ``count_include_pad``, max pooling takes none."""
    g, op = plan.geometry, plan.launch.variant.op
    expected = {"maxpool2d_forward": (g.input_shape,), "maxpool2d_backward": (g.output_shape, g.input_shape),
                "avgpool2d_forward": (g.input_shape,), "avgpool2d_backward": (g.output_shape,)}[op]
    shapes = tuple(tuple(a.shape) for a in operands)
    if shapes != expected or any(a.dtype != plan.launch.dtype or not a.flags.c_contiguous for a in operands):
        raise ValueError(f"run_pool({op}): operands of shapes {shapes} ({', '.join(str(a.dtype) for a in operands)}); "
                         f"the plan needs C-contiguous {plan.launch.dtype} arrays of shapes {expected}")
    if (count_include_pad is None) != op.startswith("max"):
        raise ValueError(f"run_pool({op}): count_include_pad is " +
                         ("needed for average pooling" if count_include_pad is None else "for average pooling only"))
    out = backend.xp.empty(g.output_shape if op.endswith("forward") else g.input_shape, dtype=plan.launch.dtype)
    extra = () if count_include_pad is None else _launch.int32(bool(count_include_pad))
    backend.launch(plan.launch, (*operands, out, *pool_shape_args(g), *extra))
    return out


def _pool(op: str, g: PoolGeometry, backend, count_include_pad=None, **arrays):
    backend = resolve_backend(backend)
    operands = _launch.kernel_operands(backend.xp, **arrays)
    plan = plan_pool(op, g, operands[0].dtype)
    return run_pool(plan, backend, *operands, count_include_pad=count_include_pad)


def max_pool2d_forward(x, g: PoolGeometry, backend=None):
    return _pool("maxpool2d_forward", g, backend, x=x)


def max_pool2d_grad(dy, x, g: PoolGeometry, backend=None):
    return _pool("maxpool2d_backward", g, backend, dy=dy, x=x)


def avg_pool2d_forward(x, g: PoolGeometry, count_include_pad: bool = True, backend=None):
    return _pool("avgpool2d_forward", g, backend, count_include_pad=count_include_pad, x=x)


def avg_pool2d_grad(dy, g: PoolGeometry, count_include_pad: bool = True, backend=None):
    return _pool("avgpool2d_backward", g, backend, count_include_pad=count_include_pad, dy=dy)


__all__ = ["max_pool2d_forward", "max_pool2d_grad", "avg_pool2d_forward", "avg_pool2d_grad", "pool_shape_args",
           "run_pool"]
