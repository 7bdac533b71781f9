"""2-D convolution on the GPU with gpuconv's own kernels: forward, grad_input, grad_weight.

Two algorithms, each for all three passes (``algo``):

* ``"im2col"`` -- kernels/im2col.cu copies the input taps into a column matrix
  ``col[(c, r, s), (n, p, q)]`` and cuBLAS (``cupy.matmul``, one GEMM batched
  over the groups) multiplies it with the weight; grad_input multiplies first
  and folds the columns back with col2im. The column matrix is R*S times the
  input, so the batch is processed in chunks that keep it under
  ``IM2COL_WORKSPACE_BYTES``. 1x1 stride-1 unpadded convolutions skip it: their
  input already is the column matrix.
* ``"implicit_gemm"`` -- kernels/conv2d_{fprop,dgrad,wgrad}.cu run the same
  GEMMs with the column matrix gathered tile by tile into shared memory, never
  stored.
* ``"auto"`` -- see ``choose_algo``.

float16 is a storage type: the kernels accumulate in float32, and cuBLAS
multiplies float16 matrices with float32 accumulation (CuPy's default compute
type). Every result has the input dtype. All kernels are deterministic: running
a pass twice gives the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._backend import GPUOutOfMemoryError
from .._shapes import ConvGeometry, accumulation_dtype, ceil_div
from . import _launch
from .loader import get_kernel, kernel_name

ALGOS = ("auto", "im2col", "implicit_gemm")

#: Upper bound on the im2col column matrix; the batch is chunked to stay below it.
IM2COL_WORKSPACE_BYTES = 1 << 30

#: The wgrad kernels split the reduction over output pixels until about this
#: many blocks run. A constant rather than the GPU's size, so that the split --
#: and with it every bit of the result -- is the same on every GPU.
WGRAD_TARGET_BLOCKS = 1024
#: ... but give every block at least this many output pixels to sum.
WGRAD_MIN_PIXELS_PER_SPLIT = 512


@dataclass(frozen=True)
class Tile:
    """A thread-block tile of the implicit-GEMM kernels; mirrors TileShape in kernels/implicit_gemm.cuh."""
    name: str
    block_m: int
    block_n: int
    block_k: int
    threads: int


TILE_64X64 = Tile("tile64x64", 64, 64, 16, 256)   # the general tile
TILE_256X4 = Tile("tile256x4", 256, 4, 16, 256)   # few output columns: depthwise fprop / dgrad
TILE_16X16 = Tile("tile16x16", 16, 16, 32, 256)   # small weight gradients: depthwise wgrad


def choose_algo(g: ConvGeometry) -> str:
    """The algorithm ``algo="auto"`` runs.

    Dense convolutions (groups == 1) go to im2col: their GEMMs are large and
    cuBLAS multiplies faster than our tiled kernels. Grouped and depthwise ones
    go to implicit_gemm: their per-group GEMMs are too small for cuBLAS to
    shine, and the column matrix would be mostly wasted memory traffic.
    """
    return "im2col" if g.groups == 1 else "implicit_gemm"


def _resolve_algo(algo: str, g: ConvGeometry) -> str:
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r} is not a GPU convolution algorithm; choose one of {ALGOS}")
    return choose_algo(g) if algo == "auto" else algo


# ------------------------------------------------------------------ plans ---
# Pure functions of the geometry (no CuPy), so that they can be tested anywhere.

def _groups(g: ConvGeometry) -> tuple[int, int, int]:
    """(groups, input channels per group, output channels per group)."""
    return g.groups, g.C // g.groups, g.K // g.groups


def check_geometry(g: ConvGeometry) -> None:
    """Refuse shapes the kernels' 32-bit indexing or CUDA's grid limits cannot handle."""
    G, Cg, Kg = _groups(g)
    _launch.check_extents("conv2d", H_times_W=g.H * g.W, P_times_Q=g.P * g.Q,
                          Cg_R_S=Cg * g.R * g.S, Kg_R_S=Kg * g.R * g.S)
    if G > _launch.GRID_YZ_MAX:
        raise ValueError(f"conv2d: groups={G} exceeds {_launch.GRID_YZ_MAX}, the most one launch can cover")


def conv_shape_args(g: ConvGeometry, batch: int | None = None) -> tuple:
    """The 16 ``int`` shape parameters every convolution kernel takes, for ``batch`` images."""
    (sh, sw), (dh, dw), (pt, _, pl, _) = g.stride, g.dilation, g.pad
    return _launch.int32(g.N if batch is None else batch, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q,
                         sh, sw, dh, dw, pt, pl, g.groups)


def fprop_tile(g: ConvGeometry) -> Tile:
    """The narrow tile when each group has at most 4 output channels (depthwise), else the general one."""
    return TILE_256X4 if g.K // g.groups <= 4 else TILE_64X64


def dgrad_tile(g: ConvGeometry) -> Tile:
    """The narrow tile when each group has at most 4 input channels (depthwise), else the general one."""
    return TILE_256X4 if g.C // g.groups <= 4 else TILE_64X64


def wgrad_tile(g: ConvGeometry) -> Tile:
    """The small tile when a group's weight gradient is at most 16 wide in one direction, else the general one."""
    _, Cg, Kg = _groups(g)
    return TILE_16X16 if min(Kg, Cg * g.R * g.S) <= 16 else TILE_64X64


def fprop_grid(g: ConvGeometry, tile: Tile) -> tuple[int, int, int]:
    G, _, Kg = _groups(g)
    return ceil_div(g.N * g.P * g.Q, tile.block_m), ceil_div(Kg, tile.block_n), G


def dgrad_grid(g: ConvGeometry, tile: Tile) -> tuple[int, int, int]:
    G, Cg, _ = _groups(g)
    return ceil_div(g.N * g.H * g.W, tile.block_m), ceil_div(Cg, tile.block_n), G


def wgrad_split(g: ConvGeometry, tile: Tile) -> tuple[int, int]:
    """(splits, pixels per split) of the wgrad reduction over the N*P*Q output pixels."""
    G, Cg, Kg = _groups(g)
    pixels = g.N * g.P * g.Q
    tiles = ceil_div(Kg, tile.block_m) * ceil_div(Cg * g.R * g.S, tile.block_n) * G
    splits = min(ceil_div(WGRAD_TARGET_BLOCKS, tiles),
                 max(1, pixels // WGRAD_MIN_PIXELS_PER_SPLIT),
                 _launch.GRID_YZ_MAX // G)
    splits = max(1, splits)
    per_split = ceil_div(ceil_div(pixels, splits), tile.block_k) * tile.block_k
    return ceil_div(pixels, per_split), per_split  # no split is left empty


def wgrad_grid(g: ConvGeometry, tile: Tile, splits: int) -> tuple[int, int, int]:
    G, Cg, Kg = _groups(g)
    return ceil_div(Kg, tile.block_m), ceil_div(Cg * g.R * g.S, tile.block_n), G * splits


def im2col_bytes_per_image(g: ConvGeometry, itemsize: int) -> int:
    """Workspace one image needs on the im2col path: its column matrix plus the (K, P*Q) GEMM operand or result."""
    return (g.C * g.R * g.S + g.K) * g.P * g.Q * itemsize


def im2col_batch_chunk(g: ConvGeometry, itemsize: int, budget: int | None = None) -> int:
    """How many images' workspaces fit ``budget`` bytes (default IM2COL_WORKSPACE_BYTES), at least one."""
    budget = IM2COL_WORKSPACE_BYTES if budget is None else budget
    return max(1, min(g.N, budget // im2col_bytes_per_image(g, itemsize)))


def _batch_chunks(g: ConvGeometry, itemsize: int, budget: int | None = None):
    step = im2col_batch_chunk(g, itemsize, budget)
    for start in range(0, g.N, step):
        yield start, min(start + step, g.N)


# ----------------------------------------------------------- memory plans ---

def available_device_bytes(cupy) -> int:
    """What a new allocation can still get: free device memory plus the blocks CuPy's pool holds unused,
    within the pool's limit when one is set (``cupy.get_default_memory_pool().set_limit``)."""
    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    available = free + pool.free_bytes()
    limit = pool.get_limit()
    if limit:
        available = min(available, limit - pool.used_bytes())
    return max(0, int(available))


def _memory_error(cupy, what: str, needed: int, cause=None) -> GPUOutOfMemoryError:
    return GPUOutOfMemoryError(f"{what} needs {needed:,} bytes of GPU memory but only "
                               f"{available_device_bytes(cupy):,} bytes are free" +
                               (f" ({cause})" if cause else ""))


def _im2col_budget(cupy, g: ConvGeometry, itemsize: int, algo: str, what: str) -> int | None:
    """Bytes the im2col workspace may take (batch chunks are sized to it), or None to use implicit GEMM.

    The budget is IM2COL_WORKSPACE_BYTES or half the free memory, whichever is less: half, because cuBLAS
    and the contiguous copies CuPy makes of transposed GEMM operands take memory beyond the column matrix.
    When not even one image's workspace fits, ``algo="auto"`` falls back to implicit GEMM (it needs no
    workspace); an explicit ``algo="im2col"`` raises GPUOutOfMemoryError with the bytes needed and free.
    """
    per_image = im2col_bytes_per_image(g, itemsize)
    usable = available_device_bytes(cupy) // 2
    if per_image <= usable:
        return min(IM2COL_WORKSPACE_BYTES, usable)
    if algo == "auto":
        return None
    raise _memory_error(cupy, f"{what} with algo='im2col' (the workspace of one image, twice for headroom)",
                        2 * per_image)


def _out_of_memory_reported(cupy, what: str, result_shape, dtype, compute):
    """compute(), with CuPy's out-of-memory error restated as GPUOutOfMemoryError (bytes needed and free)."""
    try:
        return compute()
    except cupy.cuda.memory.OutOfMemoryError as exc:
        needed = int(np.prod(result_shape)) * np.dtype(dtype).itemsize
        raise _memory_error(cupy, what, needed, cause=str(exc)) from None


def _empty(cupy, shape, dtype, what: str):
    """cupy.empty, with CuPy's out-of-memory error restated as GPUOutOfMemoryError."""
    return _out_of_memory_reported(cupy, what, shape, dtype, lambda: cupy.empty(shape, dtype=dtype))


# ---------------------------------------------------------------- helpers ---

def _prepare(g: ConvGeometry, **arrays):
    """C-contiguous versions of the arrays, after checking they share one float dtype and fit the kernels."""
    check_geometry(g)
    return _launch.kernel_operands(**arrays)


def _launch_kernel(file: str, base: str, dtype, grid, threads: int, args) -> None:
    kernel = get_kernel(file, kernel_name(base, dtype))
    kernel(_launch.check_grid(tuple(grid), base), (threads,), args)


def _im2col(cupy, x, g: ConvGeometry):
    """The column matrix of the images in x (n, C, H, W), as (groups, Cg*R*S, n*P*Q)."""
    G, Cg, _ = _groups(g)
    n = x.shape[0]
    col = cupy.empty((G, Cg * g.R * g.S, n * g.P * g.Q), dtype=x.dtype)
    _launch_kernel("im2col.cu", "gpuconv_im2col_nchw", x.dtype, _launch.elementwise_grid(col.size),
                   _launch.ELEMENTWISE_THREADS, (x, col, *conv_shape_args(g, n)))
    return col


def _col2im(col, x, g: ConvGeometry) -> None:
    """Fold col ((C*R*S, n*P*Q) in any shape) into the images x (n, C, H, W), overwriting them."""
    n = x.shape[0]
    _launch_kernel("im2col.cu", "gpuconv_col2im_nchw", x.dtype, _launch.elementwise_grid(x.size),
                   _launch.ELEMENTWISE_THREADS, (col, x, *conv_shape_args(g, n)))


def im2col(x, g: ConvGeometry):
    """The column matrix (C*R*S, N*P*Q) of x (N, C, H, W): row (c, r, s), column (n, p, q).

    The transpose of ``gpuconv.reference.im2col``'s (N*P*Q, C*R*S) matrix.
    """
    cupy, (x,) = _prepare(g, x=x)
    return _im2col(cupy, x, g).reshape(g.C * g.R * g.S, g.N * g.P * g.Q)


def col2im(col, g: ConvGeometry):
    """The adjoint of ``im2col``: x (N, C, H, W) whose every pixel sums the entries of col copied from it."""
    cupy, (col,) = _prepare(g, col=col)
    expected = (g.C * g.R * g.S, g.N * g.P * g.Q)
    if tuple(col.shape) != expected:
        raise ValueError(f"col must have shape {expected} for this convolution, got {tuple(col.shape)}")
    x = cupy.empty(g.input_shape, dtype=col.dtype)
    _col2im(col, x, g)
    return x


def _output_grad_by_group(cupy, dy, g: ConvGeometry):
    """dy (n, K, P, Q) as (groups, Kg, n*P*Q), contiguous: the layout the GEMMs with col need."""
    G, _, Kg = _groups(g)
    n = dy.shape[0]
    return cupy.ascontiguousarray(dy.reshape(n, g.K, g.P * g.Q).transpose(1, 0, 2)).reshape(G, Kg, n * g.P * g.Q)


# ---------------------------------------------------------------- forward ---

def conv2d_forward(x, w, g: ConvGeometry, algo: str = "auto"):
    """y (N, K, P, Q) = conv2d(x (N, C, H, W), w (K, C/groups, R, S)), in x's dtype."""
    cupy, (x, w) = _prepare(g, x=x, w=w)
    use_im2col = _resolve_algo(algo, g) == "im2col"
    if use_im2col and g.is_pointwise:  # x[n] already is the column matrix of image n: no workspace
        return _out_of_memory_reported(cupy, "conv2d forward (its output)", g.output_shape, x.dtype,
                                       lambda: _forward_pointwise(cupy, x, w, g))
    y = _empty(cupy, g.output_shape, x.dtype, "conv2d forward (its output)")
    if use_im2col:
        budget = _im2col_budget(cupy, g, x.itemsize, algo, "conv2d forward")
        if budget is not None:
            return _forward_im2col(cupy, x, w, g, y, budget)
    tile = fprop_tile(g)
    _launch_kernel("conv2d_fprop.cu", f"gpuconv_conv2d_fprop_{tile.name}", x.dtype, fprop_grid(g, tile),
                   tile.threads, (x, w, y, *conv_shape_args(g)))
    return y


def _forward_pointwise(cupy, x, w, g: ConvGeometry):
    G, Cg, Kg = _groups(g)
    y = cupy.matmul(w.reshape(G, Kg, Cg), x.reshape(g.N, G, Cg, g.H * g.W))  # (N, G, Kg, H*W)
    return y.reshape(g.output_shape)


def _forward_im2col(cupy, x, w, g: ConvGeometry, y, budget: int):
    G, Cg, Kg = _groups(g)
    w_by_group = w.reshape(G, Kg, Cg * g.R * g.S)
    for start, stop in _batch_chunks(g, x.itemsize, budget):
        n = stop - start
        col = _im2col(cupy, x[start:stop], g)
        y_by_group = cupy.matmul(w_by_group, col)  # (G, Kg, n*P*Q) = (K, n, P, Q)
        y[start:stop] = y_by_group.reshape(g.K, n, g.P, g.Q).transpose(1, 0, 2, 3)
    return y


# ------------------------------------------------------------- grad input ---

def conv2d_grad_input(dy, w, g: ConvGeometry, algo: str = "auto"):
    """dx (N, C, H, W), the gradient of conv2d with respect to its input, in dy's dtype."""
    cupy, (dy, w) = _prepare(g, dy=dy, w=w)
    use_im2col = _resolve_algo(algo, g) == "im2col"
    if use_im2col and g.is_pointwise:
        return _out_of_memory_reported(cupy, "conv2d grad_input (its output)", g.input_shape, dy.dtype,
                                       lambda: _grad_input_pointwise(cupy, dy, w, g))
    dx = _empty(cupy, g.input_shape, dy.dtype, "conv2d grad_input (its output)")
    if use_im2col:
        budget = _im2col_budget(cupy, g, dy.itemsize, algo, "conv2d grad_input")
        if budget is not None:
            return _grad_input_im2col(cupy, dy, w, g, dx, budget)
    tile = dgrad_tile(g)
    _launch_kernel("conv2d_dgrad.cu", f"gpuconv_conv2d_dgrad_{tile.name}", dy.dtype, dgrad_grid(g, tile),
                   tile.threads, (dy, w, dx, *conv_shape_args(g)))
    return dx


def _grad_input_pointwise(cupy, dy, w, g: ConvGeometry):
    G, Cg, Kg = _groups(g)
    w_t = w.reshape(G, Kg, Cg).transpose(0, 2, 1)  # (G, Cg, Kg)
    dx = cupy.matmul(w_t, dy.reshape(g.N, G, Kg, g.P * g.Q))  # (N, G, Cg, H*W)
    return dx.reshape(g.input_shape)


def _grad_input_im2col(cupy, dy, w, g: ConvGeometry, dx, budget: int):
    G, Cg, Kg = _groups(g)
    w_t = w.reshape(G, Kg, Cg * g.R * g.S).transpose(0, 2, 1)  # (G, Cg*R*S, Kg)
    for start, stop in _batch_chunks(g, dy.itemsize, budget):
        dcol = cupy.matmul(w_t, _output_grad_by_group(cupy, dy[start:stop], g))  # (G, Cg*R*S, n*P*Q)
        _col2im(dcol, dx[start:stop], g)
    return dx


# ------------------------------------------------------------ grad weight ---

def conv2d_grad_weight(x, dy, g: ConvGeometry, algo: str = "auto"):
    """dw (K, C/groups, R, S), the gradient of conv2d with respect to its weight, in x's dtype."""
    cupy, (x, dy) = _prepare(g, x=x, dy=dy)
    if _resolve_algo(algo, g) == "im2col":
        budget = _im2col_budget(cupy, g, x.itemsize, algo, "conv2d grad_weight")
        if budget is not None:
            return _grad_weight_im2col(cupy, x, dy, g, budget)
    tile = wgrad_tile(g)
    splits, per_split = wgrad_split(g, tile)
    partial = _empty(cupy, (splits,) + g.weight_shape, accumulation_dtype(x.dtype),
                     "conv2d grad_weight (its split-reduction workspace)")
    _launch_kernel("conv2d_wgrad.cu", f"gpuconv_conv2d_wgrad_{tile.name}", x.dtype, wgrad_grid(g, tile, splits),
                   tile.threads, (x, dy, partial, *conv_shape_args(g), *_launch.int32(splits),
                                  _launch.int64(per_split)))
    dw = _empty(cupy, g.weight_shape, x.dtype, "conv2d grad_weight (its output)")
    _launch_kernel("conv2d_wgrad.cu", "gpuconv_conv2d_wgrad_reduce", x.dtype, _launch.elementwise_grid(dw.size),
                   _launch.ELEMENTWISE_THREADS, (partial, dw, _launch.int64(dw.size), *_launch.int32(splits)))
    return dw


def _grad_weight_im2col(cupy, x, dy, g: ConvGeometry, budget: int):
    dw = None
    for start, stop in _batch_chunks(g, x.itemsize, budget):
        col = _im2col(cupy, x[start:stop], g)                                     # (G, Cg*R*S, n*P*Q)
        part = cupy.matmul(_output_grad_by_group(cupy, dy[start:stop], g),
                           col.transpose(0, 2, 1))                                # (G, Kg, Cg*R*S)
        if dw is None:
            dw = part
        else:  # chunks are summed in batch order, float16 ones in float32
            dw = dw.astype(accumulation_dtype(x.dtype), copy=False) + part
    return dw.astype(x.dtype, copy=False).reshape(g.weight_shape)


__all__ = ["ALGOS", "IM2COL_WORKSPACE_BYTES", "Tile", "choose_algo", "conv2d_forward", "conv2d_grad_input",
           "conv2d_grad_weight", "im2col", "col2im", "conv_shape_args", "check_geometry", "fprop_tile",
           "dgrad_tile", "wgrad_tile", "fprop_grid", "dgrad_grid", "wgrad_grid", "wgrad_split",
           "im2col_batch_chunk", "im2col_bytes_per_image", "available_device_bytes"]
