"""Fast CPU convolution in NumPy: im2col + one BLAS GEMM per chunk, with a bounded workspace.

Same contract as ``gpuconv.reference`` (the ground truth this module is tested
against): ``conv2d_forward(x, w, g)``, ``conv2d_grad_input(dy, w, g)``,
``conv2d_grad_weight(x, dy, g)`` with ``g`` a validated ``ConvGeometry``;
float16 is computed (and returned) in float32, float32/float64 keep their dtype.

Where the time goes and what this module does about it:

* The GEMM. One matmul per chunk, batched over groups (groups = 1 is a batch
  of one), so BLAS sees big matrices. For output planes of at least
  ``PER_SAMPLE_MIN_PIXELS`` pixels it runs one GEMM per sample that writes its
  NCHW output plane in place; smaller planes are batched into one GEMM plus a
  cheap (n, k) transpose. The BLAS kernels decide most of the speed: an
  ``OPENBLAS_CORETYPE=Haswell`` in the environment, for one, makes NumPy's
  OpenBLAS run AVX2 code on an AVX-512 CPU at about half the GEMM rate
  (threadpoolctl's ``threadpool_info()`` shows the kernels in use).
* The column copy. It is one strided NumPy copy per kernel column (often one
  for all taps) from a padded copy of the input, in whichever of two layouts
  gives long contiguous runs: channel-major ``col[c, r, s, n, p, q]`` (runs of
  an output row; with a horizontal stride the padded input is stored split
  into its stride phases so rows stay unit-stride) or pixel-major
  ``col[n, p, q, r, s, c]`` from an NHWC copy (runs of S*C channels), which wins
  when images are small and channels many. Copies over 1 MiB are split across
  threads (NumPy releases the GIL while copying).
* No copy at all for 1x1 stride-1 unpadded convolutions: the input is the
  column matrix (and for the weight gradient, dy and x are read in place).
* The input gradient is a set of stride-1 convolutions of dy, one per stride
  phase of the input (the sub-pixel decomposition): each tap belongs to exactly
  one phase, so it costs the forward's GEMM work, reuses the forward path and
  needs no scatter-add. When K is well above C, col2im (a GEMM into C*R*S
  columns, then tap-by-tap accumulation, split by channel across threads)
  moves less data and is used instead.
* Depthwise convolutions (one input channel per group) skip the GEMM: forward
  and input gradient are sums of shifted slices times per-channel weights.
* The workspace comes from a per-thread cache, so a call does not page-fault a
  fresh buffer of tens of MiB each time.

The workspace (column buffer plus GEMM scratch) never exceeds
``get_workspace_limit()`` bytes (default 256 MiB, env var
``GPUCONV_CPU_WORKSPACE_MB`` at import, or ``set_workspace_limit``): bigger
problems run in batch chunks, or in chunks of output rows when even one sample
does not fit, with the same result.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import threading

import numpy as np

from . import reference
from ._shapes import ConvGeometry, PoolGeometry, accumulation_dtype, ceil_div

# ------------------------------------------------------------- workspace ---

_DEFAULT_WORKSPACE_MB = 256
_ALIGN = 64  # bytes: every carved buffer starts on a cache line


def _limit_from_env() -> int:
    raw = os.environ.get("GPUCONV_CPU_WORKSPACE_MB", "").strip()
    if not raw:
        return _DEFAULT_WORKSPACE_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"GPUCONV_CPU_WORKSPACE_MB must be a number of MiB, got {raw!r}") from None
    if not mb > 0:
        raise ValueError(f"GPUCONV_CPU_WORKSPACE_MB must be > 0, got {raw!r}")
    return int(mb * (1 << 20))


_workspace_limit = _limit_from_env()
_peak_workspace = 0
_cache = threading.local()


def set_workspace_limit(nbytes: int) -> None:
    """Bound the workspace of every later call to ``nbytes`` bytes."""
    global _workspace_limit
    nbytes = int(nbytes)
    if nbytes < 1:
        raise ValueError(f"workspace limit must be >= 1 byte, got {nbytes}")
    _workspace_limit = nbytes
    release_workspace()


def get_workspace_limit() -> int:
    """The current workspace bound in bytes."""
    return _workspace_limit


def peak_workspace_bytes() -> int:
    """The largest workspace (column buffer plus GEMM scratch) one chunk used since the last reset."""
    return _peak_workspace


def reset_peak_workspace_bytes() -> None:
    global _peak_workspace
    _peak_workspace = 0


def release_workspace() -> None:
    """Free this thread's cached workspace (kept between calls to spare the page faults)."""
    _cache.buffer = None


def _workspace(dtype, *shapes):
    """Arrays of the given shapes carved from this thread's cached buffer (contents undefined)."""
    global _peak_workspace
    itemsize = np.dtype(dtype).itemsize
    sizes = [math.prod(s) * itemsize for s in shapes]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += ceil_div(size, _ALIGN) * _ALIGN
    _peak_workspace = max(_peak_workspace, sum(sizes))
    buffer = getattr(_cache, "buffer", None)
    if buffer is None or buffer.size < total + _ALIGN:
        buffer = np.empty(total + _ALIGN, dtype=np.uint8)
        _cache.buffer = buffer
    start = -buffer.ctypes.data % _ALIGN
    return [buffer[start + o:start + o + n].view(dtype).reshape(s) for o, n, s in zip(offsets, sizes, shapes)]


def _chunks(g: ConvGeometry, bytes_per_pixel: int):
    """Split the output into (n0, n1, p0, p1) blocks whose workspace fits the limit.

    ``bytes_per_pixel`` is the workspace one output pixel (n, p, q) needs. Whole
    samples when they fit (balanced batch chunks), else rows of one sample.
    """
    limit = _workspace_limit
    per_row = g.Q * bytes_per_pixel
    per_sample = g.P * per_row
    if per_sample * g.N <= limit:
        return [(0, g.N, 0, g.P)] if g.N else []
    if per_sample <= limit:
        count = ceil_div(g.N, limit // per_sample)
        bounds = [g.N * i // count for i in range(count + 1)]
        return [(a, b, 0, g.P) for a, b in zip(bounds[:-1], bounds[1:])]
    rows = limit // per_row
    if rows == 0:
        raise MemoryError(
            f"one output row of this convolution needs {per_row} bytes of CPU workspace, more than the "
            f"limit of {limit} bytes; raise it with gpuconv.cpu_fast.set_workspace_limit() or "
            f"GPUCONV_CPU_WORKSPACE_MB")
    count = ceil_div(g.P, rows)
    bounds = [g.P * i // count for i in range(count + 1)]
    return [(n, n + 1, a, b) for n in range(g.N) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------- threads ---

def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Threads for the copies around the GEMM (BLAS threads itself). Memory-bound
#: work stops scaling after a few cores.
COPY_THREADS = max(1, min(_cpu_count(), 8))
#: Below this many bytes a copy runs on the calling thread: handing it to a
#: pool costs more than it saves.
PARALLEL_MIN_BYTES = 1 << 20
_pool = None
_pool_lock = threading.Lock()


def _split(task, extent: int, nbytes: int) -> None:
    """Run ``task(lo, hi)`` over [0, extent), split across threads when the work is big enough."""
    global _pool
    parts = min(COPY_THREADS, extent) if nbytes >= PARALLEL_MIN_BYTES else 1
    if parts <= 1:
        task(0, extent)
        return
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(COPY_THREADS - 1, thread_name_prefix="gpuconv-cpu")
    bounds = [extent * i // parts for i in range(parts + 1)]
    futures = [_pool.submit(task, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    task(bounds[0], bounds[1])  # the calling thread takes the first part
    for future in futures:
        future.result()


def _copy(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``np.copyto(dst, src)`` (same shapes), split across threads along the first long enough axis."""
    axis = next((i for i, n in enumerate(dst.shape) if n >= COPY_THREADS), 0)
    lead = (slice(None),) * axis

    def copy_part(lo, hi):
        np.copyto(dst[lead + (slice(lo, hi),)], src[lead + (slice(lo, hi),)])

    _split(copy_part, dst.shape[axis], dst.nbytes)
    return dst


# -------------------------------------------------------------- layouts ---

def _strided(base: np.ndarray, offset: int, shape, strides) -> np.ndarray:
    """A view of contiguous ``base`` with element offset/strides (bounds-checked, unlike as_strided)."""
    item = base.itemsize
    return np.ndarray(shape, base.dtype, buffer=base, offset=offset * item,
                      strides=tuple(s * item for s in strides))


class _ChannelMajorInput:
    """The padded input as channel-major taps read it: shape (N, C, Hp, phases, Wq).

    With a horizontal stride sw > 1 (and more than one kernel column) the padded
    rows are stored split into sw phases, padded column j*sw + b at [..., b, j],
    so every tap reads unit-stride runs; otherwise phases = 1 and this is just
    the zero-padded input. ``load`` builds it from x; ``store`` is its adjoint,
    turning an accumulated gradient back into (N, C, H, W).
    """

    def __init__(self, g: ConvGeometry):
        self.g = g
        pt, pb, pl, pr = g.pad
        self.Hp, Wp = g.H + pt + pb, g.W + pl + pr
        sw = g.stride[1]
        self.phases = sw if (sw > 1 and g.S > 1) else 1
        self.Wq = ceil_div(Wp, self.phases)
        self.shape = (g.N, g.C, self.Hp, self.phases, self.Wq)

    def _rows(self):
        """(first padded row, input row slice) of the input rows inside the padded frame.

        A negative pad crops (the input-gradient phases use that); a positive one pads.
        """
        g = self.g
        pt, pb = g.pad[:2]
        return max(pt, 0), slice(max(-pt, 0), g.H - max(-pb, 0))

    def _phase_columns(self):
        """(phase b, first phase column j0, input column slice) of every phase that holds input."""
        g, ph = self.g, self.phases
        pl, pr = g.pad[2:]
        lo, hi = max(-pl, 0), g.W - max(-pr, 0)
        for b in range(ph):
            c0 = lo + (b - lo - pl) % ph  # the first input column in phase b
            if c0 < hi:
                yield b, (c0 + pl) // ph, slice(c0, hi, ph)

    def load(self, x: np.ndarray, dtype) -> np.ndarray:
        g = self.g
        if self.phases == 1 and not any(g.pad) and x.dtype == dtype:
            return x.reshape(self.shape)  # already laid out: no copy
        out = np.zeros(self.shape, dtype=dtype)
        top, rows = self._rows()
        for b, j0, cols in self._phase_columns():
            part = x[:, :, rows, cols]
            _copy(out[:, :, top:top + part.shape[2], b, j0:j0 + part.shape[3]], part)
        return out

    def zeros(self, dtype) -> np.ndarray:
        return np.zeros(self.shape, dtype=dtype)

    def store(self, acc: np.ndarray) -> np.ndarray:
        """The adjoint of ``load`` for non-negative padding: the input-sized part of ``acc``."""
        g = self.g
        if self.phases == 1 and not any(g.pad):
            return acc.reshape(g.input_shape)
        out = np.empty(g.input_shape, dtype=acc.dtype)
        top, rows = self._rows()
        for b, j0, cols in self._phase_columns():
            part = out[:, :, rows, cols]
            _copy(part, acc[:, :, top:top + part.shape[2], b, j0:j0 + part.shape[3]])
        return out

    def tap_views(self, arr: np.ndarray, chunk, every_tap: bool = False):
        """Yield (s, view) with view[c, r, n, p, q] = arr at tap (r, s) of output pixel (n0+n, p0+p, q).

        When the kernel columns sit at a fixed step (no phase split) and
        ``every_tap`` is false, one view with an S axis is yielded instead,
        with ``s = slice(None)``: view[c, r, s, n, p, q].
        """
        g = self.g
        n0, n1, p0, p1 = chunk
        (sh, sw), (dh, dw) = g.stride, g.dilation
        sH = self.phases * self.Wq
        sC = self.Hp * sH
        base = n0 * g.C * sC + p0 * sh * sH
        outer, outer_strides = (g.C, g.R), (sC, dh * sH)
        inner = (n1 - n0, p1 - p0, g.Q)
        if self.phases == 1:
            inner_strides = (g.C * sC, sh * sH, sw)
            if not every_tap:
                yield slice(None), _strided(arr, base, outer + (g.S,) + inner, outer_strides + (dw,) + inner_strides)
                return
            for s in range(g.S):
                yield s, _strided(arr, base + s * dw, outer + inner, outer_strides + inner_strides)
            return
        inner_strides = (g.C * sC, sh * sH, 1)
        for s in range(g.S):
            j0, b = divmod(s * dw, self.phases)
            yield s, _strided(arr, base + b * self.Wq + j0, outer + inner, outer_strides + inner_strides)


class _Im2col:
    """One geometry's column matrix: its layout, how to fill it and the matching weight order.

    ``fill`` returns the chunk's columns as a (groups, Cg*R*S, n, p*q) view whatever the
    layout, so the GEMM code does not care which one was picked.
    """

    def __init__(self, g: ConvGeometry):
        self.g = g
        self.pixel_major = _prefer_pixel_major(g)
        if not self.pixel_major:
            self.layout = _ChannelMajorInput(g)

    def col_shape(self, chunk):
        g = self.g
        n0, n1, p0, p1 = chunk
        if self.pixel_major:
            return (n1 - n0, p1 - p0, g.Q, g.groups, g.R, g.S, g.C // g.groups)
        return (g.C, g.R, g.S, n1 - n0, p1 - p0, g.Q)

    def source(self, x: np.ndarray, dtype) -> np.ndarray:
        if not self.pixel_major:
            return self.layout.load(x, dtype)
        g = self.g
        pt, pb, pl, pr = g.pad
        nhwc = np.zeros((g.N, g.H + pt + pb, g.W + pl + pr, g.C), dtype=dtype)
        part = x[:, :, max(-pt, 0):g.H - max(-pb, 0), max(-pl, 0):g.W - max(-pr, 0)]  # negative pad crops
        _, _, h, w = part.shape
        _copy(nhwc[:, max(pt, 0):max(pt, 0) + h, max(pl, 0):max(pl, 0) + w, :], part.transpose(0, 2, 3, 1))
        return nhwc

    def fill(self, src: np.ndarray, chunk, col: np.ndarray) -> np.ndarray:
        g = self.g
        n0, n1, p0, p1 = chunk
        nb, rows = n1 - n0, (p1 - p0) * g.Q
        if not self.pixel_major:
            for s, view in self.layout.tap_views(src, chunk):
                _copy(col[:, :, s], view)
            return col.reshape(g.groups, -1, nb, rows)
        (sh, sw), (dh, dw) = g.stride, g.dilation
        _, Hp, Wp, C = src.shape
        Cg = C // g.groups
        taps = _strided(src, (n0 * Hp + p0 * sh) * Wp * C, col.shape,
                        (Hp * Wp * C, sh * Wp * C, sw * C, Cg, dh * Wp * C, dw * C, 1))
        _copy(col, taps)
        return col.reshape(nb, rows, g.groups, -1).transpose(2, 3, 0, 1)

    def weight_matrix(self, w5: np.ndarray) -> np.ndarray:
        """Grouped weight (groups, Kg, Cg, R, S), any strides -> (groups, Kg, Cg*R*S) in the column order.

        At most one copy, so a flipped or transposed view costs no more than a plain weight.
        """
        G, Kg = w5.shape[:2]
        if self.pixel_major:
            w5 = w5.transpose(0, 1, 3, 4, 2)
        if not w5.flags.c_contiguous:
            # A permuting copy runs at about 1 ns per value in NumPy; on a big weight that
            # is worth splitting across threads.
            w5 = _copy(np.empty(w5.shape, dtype=w5.dtype), w5)
        return w5.reshape(G, Kg, -1)

    def weight_from_matrix(self, w_mat: np.ndarray) -> np.ndarray:
        """(groups, Kg, Cg*R*S) in the column order, any strides -> a new (K, Cg, R, S) weight."""
        g = self.g
        Kg, Cg = g.K // g.groups, g.C // g.groups
        if self.pixel_major:
            w5 = w_mat.reshape(g.groups, Kg, g.R, g.S, Cg).transpose(0, 1, 4, 2, 3)
        else:
            w5 = w_mat.reshape(g.groups, Kg, Cg, g.R, g.S)
        return np.ascontiguousarray(w5).reshape(g.weight_shape)


def _prefer_pixel_major(g: ConvGeometry) -> bool:
    """Pick the column layout whose tap copies move the longer contiguous runs.

    1x1 kernels stay channel-major: their columns are a (subsampled) copy of the
    input, cheaper than the NHWC transpose the pixel-major layout starts with.
    """
    if g.R == g.S == 1:
        return False
    channel_major_run = g.Q  # unit stride even for sw > 1, thanks to the phase split
    cg = g.C // g.groups
    pixel_major_run = g.S * cg if (g.groups == 1 and g.dilation[1] == 1) else cg
    # The pixel-major layout also pays an NHWC transpose of the input and a permuted
    # weight, and its GEMM reads the columns transposed: it needs clearly longer runs.
    return pixel_major_run >= 4 * channel_major_run


def _output_rows(y: np.ndarray, g: ConvGeometry, chunk) -> np.ndarray:
    """The chunk's part of an (N, K, P, Q) array as (n, groups, Kg, rows*Q) -- a view."""
    n0, n1, p0, p1 = chunk
    return y.reshape(g.N, g.groups, g.K // g.groups, g.P * g.Q)[n0:n1, :, :, p0 * g.Q:p1 * g.Q]


def _pointwise(g: ConvGeometry) -> bool:
    """1x1, stride 1, no padding on any side: the input already is the column matrix."""
    return g.R == g.S == 1 and g.stride == (1, 1) and not any(g.pad)


def _grouped(weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """(K, Cg, R, S) -> (groups, Kg, Cg, R, S), a view."""
    return weight.reshape(g.groups, g.K // g.groups, g.C // g.groups, g.R, g.S)


#: Output planes (P*Q) of at least this many pixels get one GEMM per sample that
#: writes its NCHW plane in place; smaller planes are batched into one GEMM plus
#: an (n, k) transpose, because many small GEMMs cost more than the transpose.
PER_SAMPLE_MIN_PIXELS = 256


def _per_sample_gemm(g: ConvGeometry) -> bool:
    return g.P * g.Q >= PER_SAMPLE_MIN_PIXELS


# -------------------------------------------------------------- forward ---

def conv2d_forward(x: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """y[n, k, p, q] = sum_{c, r, s} x[n, c, p*sh + r*dh - pt, q*sw + s*dw - pl] * w[k, c, r, s]."""
    acc = accumulation_dtype(x.dtype)
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight, dtype=acc)
    if g.C == g.groups > 1:
        return _depthwise_forward(x, weight, g, acc)
    return _gemm_forward(x, _grouped(weight, g), g, acc)


def _gemm_forward(x: np.ndarray, w5: np.ndarray, g: ConvGeometry, acc) -> np.ndarray:
    """The forward by im2col + GEMM; ``w5`` is the (groups, Kg, Cg, R, S) weight, possibly a strided view.

    ``g`` may have negative padding (a crop): the input-gradient phases need it.
    """
    y = np.empty(g.output_shape, dtype=acc)
    if _pointwise(g):
        x = x.astype(acc, copy=False)
        w_mat = w5.reshape(w5.shape[:3])  # a view, even of a transposed weight: matmul takes it as is
        np.matmul(w_mat, x.reshape(g.N, g.groups, -1, g.H * g.W), out=_output_rows(y, g, (0, g.N, 0, g.P)))
        return y
    im = _Im2col(g)
    src = im.source(x, acc)
    w_mat = im.weight_matrix(w5)
    Kg = g.K // g.groups
    per_sample = _per_sample_gemm(g)
    bytes_per_pixel = (g.C * g.R * g.S + (0 if per_sample else g.K)) * acc.itemsize
    for chunk in _chunks(g, bytes_per_pixel):
        n0, n1, p0, p1 = chunk
        nb, rows = n1 - n0, (p1 - p0) * g.Q
        out = _output_rows(y, g, chunk)
        if per_sample:
            (col,) = _workspace(acc, im.col_shape(chunk))
            np.matmul(w_mat, im.fill(src, chunk, col).transpose(2, 0, 1, 3), out=out)
        elif not im.pixel_major:
            col, y_rows = _workspace(acc, im.col_shape(chunk), (g.groups, Kg, nb, rows))
            cols = im.fill(src, chunk, col).reshape(g.groups, -1, nb * rows)
            np.matmul(w_mat, cols, out=y_rows.reshape(g.groups, Kg, nb * rows))
            _copy(out, y_rows.transpose(2, 0, 1, 3))
        else:
            # Pixel-major columns are row-major (n*p*q, R*S*Cg): the GEMM runs faster producing
            # NHWC rows, y^T = col @ W^T, and the transpose into NCHW is needed anyway.
            col, y_pixels = _workspace(acc, im.col_shape(chunk), (nb * rows, g.groups, Kg))
            cols = im.fill(src, chunk, col).reshape(g.groups, -1, nb * rows)
            np.matmul(cols.transpose(0, 2, 1), w_mat.transpose(0, 2, 1), out=y_pixels.transpose(1, 0, 2))
            _copy(out, y_pixels.reshape(nb, rows, g.groups, Kg).transpose(0, 2, 3, 1))
    return y


def _depthwise_forward(x, weight, g, acc):
    """groups == C: output channel k = c*m + j reads input channel c only -- shifted slices, no GEMM.

    Each tap is a multiply-add over the whole output, so the work is memory-bound:
    it runs channel block by channel block (a block's input and output stay in
    cache across the R*S taps), the blocks split across threads.
    """
    layout = _ChannelMajorInput(g)
    src = layout.load(x, acc)
    m = g.K // g.C
    y = np.empty((g.N, g.C, m, g.P, g.Q), dtype=acc)
    w = weight.reshape(g.C, m, g.R, g.S)
    taps = [(r, s, view[:, r]) for s, view in layout.tap_views(src, (0, g.N, 0, g.P), every_tap=True)
            for r in range(g.R)]  # view[c, n, p, q]
    block = _channel_block(y[:, 0].nbytes)

    def channels(c0, c1):
        term = np.empty((g.N, min(block, c1 - c0), m, g.P, g.Q), dtype=acc)
        for b0 in range(c0, c1, block):
            b1 = min(b0 + block, c1)
            out, tmp = y[:, b0:b1], term[:, :b1 - b0]
            for i, (r, s, view) in enumerate(taps):
                tap = view[b0:b1].transpose(1, 0, 2, 3)[:, :, None]  # (N, cb, 1, P, Q)
                scale = w[b0:b1, :, r, s, None, None]                  # (cb, m, 1, 1)
                np.multiply(tap, scale, out=out if i == 0 else tmp)
                if i:
                    out += tmp

    _split(channels, g.C, y.nbytes)
    return y.reshape(g.output_shape)


#: Bytes of output per channel block in the depthwise loops: a block's input,
#: output and scratch should stay in cache over all taps (1 MiB measured best
#: on a 1 MiB-L2 core; smaller blocks lose more to per-call NumPy overhead).
DEPTHWISE_BLOCK_BYTES = 1 << 20


def _channel_block(bytes_per_channel: int) -> int:
    return max(1, DEPTHWISE_BLOCK_BYTES // max(bytes_per_channel, 1))


# -------------------------------------------------------- input gradient ---

def conv2d_grad_input(grad_output: np.ndarray, weight: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dx, as convolutions of dy (one per stride phase) or, when K >> C, by col2im."""
    acc = accumulation_dtype(grad_output.dtype)
    dy = np.ascontiguousarray(grad_output, dtype=acc)
    weight = np.ascontiguousarray(weight, dtype=acc)
    if g.C == g.groups > 1:
        return _depthwise_grad_input(dy, weight, g, acc)
    # dx sums only the taps that reach each pixel (the reference's col2im). The phase convolutions pad dy
    # with zeros where a tap reaches no output pixel, exact only while 0 * w = 0: a NaN or inf weight
    # (one pass over the weight to find out; NaN and inf make the sum non-finite) takes col2im instead.
    if _prefer_col2im(g) or not _all_finite(weight):
        return _col2im_grad_input(dy, weight, g, acc)
    return _phase_grad_input(dy, weight, g, acc)


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a`` (a huge finite sum overflowing says False too: a cheap, safe answer)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum()))


def _prefer_col2im(g: ConvGeometry) -> bool:
    """The phase convolutions copy about K*R*S values per input pixel, col2im adds C*R*S per
    output pixel at about twice the cost per value: col2im wins when K is well above C."""
    return g.K > 2 * g.C


def _phase_grad_input(dy, weight, g, acc):
    """dx phase by stride phase (ConvGeometry.dgrad_phases), each a stride-1 forward convolution of dy (one
    phase when stride is 1). Every tap is used by exactly one phase, so the GEMM work equals the forward's,
    and no col2im scatter-add is needed.
    """
    w5 = _grouped(weight, g)
    dx = None
    for phase in g.dgrad_phases():
        if phase.conv is None:
            continue  # no tap reaches this phase: its gradient stays zero
        # the phase's taps reversed, each group's weight transposed: (G, Cg, Kg, R', S')
        sub = w5[:, :, :, phase.r_taps, phase.s_taps][..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
        part = _gemm_forward(dy, sub, phase.conv, acc)
        if (phase.conv.P, phase.conv.Q) == (g.H, g.W):
            return part  # the only phase holding input (always so for stride 1)
        if dx is None:
            dx = np.zeros(g.input_shape, dtype=acc)
        _copy(dx[:, :, phase.rows, phase.cols], part)
    return np.zeros(g.input_shape, dtype=acc) if dx is None else dx


def _col2im_grad_input(dy, weight, g, acc):
    """dcol = W^T @ dy per chunk, summed back onto the input tap by tap."""
    layout = _ChannelMajorInput(g)
    dsrc = layout.zeros(acc)
    Kg = g.K // g.groups
    w_t = weight.reshape(g.groups, Kg, -1).transpose(0, 2, 1)  # (groups, Cg*R*S, Kg)
    per_sample = _per_sample_gemm(g)
    bytes_per_pixel = (g.C * g.R * g.S + (0 if per_sample else g.K)) * acc.itemsize
    for chunk in _chunks(g, bytes_per_pixel):
        n0, n1, p0, p1 = chunk
        nb, rows = n1 - n0, (p1 - p0) * g.Q
        col_shape = (g.C, g.R, g.S, nb, p1 - p0, g.Q)
        if per_sample:
            (dcol,) = _workspace(acc, col_shape)
            dcols = dcol.reshape(g.groups, -1, nb, rows).transpose(2, 0, 1, 3)
            np.matmul(w_t, _output_rows(dy, g, chunk), out=dcols)
        else:
            dcol, dy_rows = _workspace(acc, col_shape, (g.groups, Kg, nb, rows))
            _copy(dy_rows, _output_rows(dy, g, chunk).transpose(1, 2, 0, 3))
            np.matmul(w_t, dy_rows.reshape(g.groups, Kg, nb * rows), out=dcol.reshape(g.groups, -1, nb * rows))
        _col2im(layout, dsrc, dcol, chunk)
    return layout.store(dsrc)


def _col2im(layout: _ChannelMajorInput, dsrc: np.ndarray, dcol: np.ndarray, chunk) -> None:
    """dsrc[tap (r, s) of each output pixel] += dcol[c, r, s, n, p, q]; threads own disjoint channels."""
    R = layout.g.R
    views = list(layout.tap_views(dsrc, chunk, every_tap=True))

    def add_channels(c0, c1):
        for s, view in views:
            for r in range(R):  # taps overlap in the input, so each is its own accumulate
                target = view[c0:c1, r]
                np.add(target, dcol[c0:c1, r, s], out=target)

    _split(add_channels, layout.g.C, dcol.nbytes)


def _depthwise_grad_input(dy, weight, g, acc):
    """The adjoint of the depthwise forward, in the same channel blocks (each thread owns its channels)."""
    layout = _ChannelMajorInput(g)
    dsrc = layout.zeros(acc)
    m = g.K // g.C
    dy = dy.reshape(g.N, g.C, m, g.P, g.Q)
    w = weight.reshape(g.C, m, g.R, g.S)
    taps = [(r, s, view[:, r]) for s, view in layout.tap_views(dsrc, (0, g.N, 0, g.P), every_tap=True)
            for r in range(g.R)]
    block = _channel_block(dy[:, 0].nbytes)

    def channels(c0, c1):
        term = np.empty((g.N, min(block, c1 - c0), g.P, g.Q), dtype=acc)
        for b0 in range(c0, c1, block):
            b1 = min(b0 + block, c1)
            tmp = term[:, :b1 - b0]
            for r, s, view in taps:
                np.multiply(dy[:, b0:b1, 0], w[b0:b1, 0, r, s, None, None], out=tmp)
                for j in range(1, m):  # channel multiplier: the m outputs that read channel c all add in
                    tmp += dy[:, b0:b1, j] * w[b0:b1, j, r, s, None, None]
                target = view[b0:b1].transpose(1, 0, 2, 3)
                np.add(target, tmp, out=target)

    _split(channels, g.C, dy.nbytes)
    return layout.store(dsrc)


# ------------------------------------------------------- weight gradient ---

def conv2d_grad_weight(x: np.ndarray, grad_output: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dW[group] = sum over chunks of dy (Kg, n*p*q) @ col^T (n*p*q, Cg*R*S)."""
    acc = accumulation_dtype(x.dtype)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(grad_output, dtype=acc)
    Kg, Cg = g.K // g.groups, g.C // g.groups
    if _pointwise(g) and _per_sample_gemm(g) and g.K * Cg * acc.itemsize <= _workspace_limit:
        return _pointwise_grad_weight(x.astype(acc, copy=False), dy, g, acc)
    im = _Im2col(g)
    src = im.source(x, acc)
    # With a long reduction (many output pixels) BLAS runs this GEMM faster with the column
    # matrix as its row-major left operand, so channel-major columns then give dW^T = col @ dy^T
    # (transposed back at the end, a copy worth it only when the weight is small beside the work).
    transposed = not im.pixel_major and g.N * g.P * g.Q >= 2048
    shape = (g.groups, Cg * g.R * g.S, Kg) if transposed else (g.groups, Kg, Cg * g.R * g.S)
    dw = np.zeros(shape, dtype=acc)
    for i, chunk in enumerate(_chunks(g, (g.C * g.R * g.S + g.K) * acc.itemsize)):
        n0, n1, p0, p1 = chunk
        nb, rows = n1 - n0, (p1 - p0) * g.Q
        col, dy_rows = _workspace(acc, im.col_shape(chunk), (g.groups, Kg, nb, rows))
        cols = im.fill(src, chunk, col).reshape(g.groups, -1, nb * rows)
        # dy as (groups, Kg, n*p*q): a transposed copy, so the sum over n and (p, q) is one GEMM.
        _copy(dy_rows, _output_rows(dy, g, chunk).transpose(1, 2, 0, 3))
        dy_mat = dy_rows.reshape(g.groups, Kg, nb * rows)
        a, b = (cols, dy_mat.transpose(0, 2, 1)) if transposed else (dy_mat, cols.transpose(0, 2, 1))
        if i == 0:
            np.matmul(a, b, out=dw)
        else:
            dw += np.matmul(a, b)
    return im.weight_from_matrix(dw.transpose(0, 2, 1) if transposed else dw)


def _pointwise_grad_weight(x, dy, g, acc):
    """1x1 stride 1 on big planes: dW = sum_n dy[n] @ x[n]^T straight from the NCHW arrays, no copies.

    The per-sample products (n, groups, Kg, Cg) live in the workspace and are summed over n.
    """
    Kg, Cg = g.K // g.groups, g.C // g.groups
    xs = x.reshape(g.N, g.groups, Cg, g.H * g.W)
    dys = dy.reshape(g.N, g.groups, Kg, g.P * g.Q)
    per_sample = g.K * Cg * acc.itemsize
    step = max(1, min(g.N, _workspace_limit // per_sample))
    dw = np.zeros((g.groups, Kg, Cg), dtype=acc)
    for n0 in range(0, g.N, step):
        n1 = min(n0 + step, g.N)
        (products,) = _workspace(acc, (n1 - n0, g.groups, Kg, Cg))
        np.matmul(dys[n0:n1], xs[n0:n1].transpose(0, 1, 3, 2), out=products)
        dw += products.sum(axis=0)
    return dw.reshape(g.weight_shape)


# ---------------------------------------------------------------- pooling ---
# The reference gathers every window through index tables; here a tap of a regular geometry is one strided
# slice of the padded input (the backward pass adds it back the same way), several times faster. Adaptive
# geometries, whose bins are not strided, run the reference. The rules (first_max, divisors) are the
# reference's own.

def _padded_extent(g: PoolGeometry):
    """(rows, cols) of the padded input every tap of every window lies in."""
    (kh, kw), (sh, sw), (dh, dw), (pt, _, pl, _) = g.kernel, g.stride, g.dilation, g.pad
    return (max((g.P - 1) * sh + (kh - 1) * dh + 1, pt + g.H), max((g.Q - 1) * sw + (kw - 1) * dw + 1, pl + g.W))


def _tap_slices(g: PoolGeometry):
    (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
    for i in range(kh):
        for j in range(kw):
            yield (slice(None), slice(None), slice(i * dh, i * dh + (g.P - 1) * sh + 1, sh),
                   slice(j * dw, j * dw + (g.Q - 1) * sw + 1, sw))


def _windows(x: np.ndarray, g: PoolGeometry, fill) -> np.ndarray:
    rows, cols = _padded_extent(g)
    pt, pl = g.pad[0], g.pad[2]
    img = np.full(x.shape[:2] + (rows, cols), fill, dtype=x.dtype)
    img[:, :, pt:pt + g.H, pl:pl + g.W] = x
    win = np.empty(x.shape[:2] + (g.P, g.Q, g.kernel[0] * g.kernel[1]), dtype=x.dtype)
    for tap, where in enumerate(_tap_slices(g)):
        win[..., tap] = img[where]
    return win


def _scatter(grad_win: np.ndarray, g: PoolGeometry) -> np.ndarray:
    rows, cols = _padded_extent(g)
    pt, pl = g.pad[0], g.pad[2]
    img = np.zeros((g.N, g.C, rows, cols), dtype=grad_win.dtype)
    for tap, where in enumerate(_tap_slices(g)):
        img[where] += grad_win[..., tap]
    return img[:, :, pt:pt + g.H, pl:pl + g.W]


def max_pool2d_forward(x: np.ndarray, g: PoolGeometry, return_indices: bool = False):
    if g.is_adaptive or return_indices:
        return reference.max_pool2d_forward(x, g, return_indices)
    # The chosen maximum's value is the window's maximum: np.max propagates NaN, padding holds the lowest value.
    return _windows(x, g, reference.lowest(x.dtype)).max(axis=-1)


def max_pool2d_grad(grad_output: np.ndarray, x: np.ndarray, g: PoolGeometry) -> np.ndarray:
    if g.is_adaptive:
        return reference.max_pool2d_grad(grad_output, x, g)
    return _scatter(reference.max_window_grads(_windows(x, g, reference.lowest(x.dtype)), grad_output, g), g)


def avg_pool2d_forward(x: np.ndarray, g: PoolGeometry, count_include_pad: bool = True,
                       divisor_override: int | None = None) -> np.ndarray:
    if g.is_adaptive:
        return reference.avg_pool2d_forward(x, g, count_include_pad, divisor_override)
    sums = _windows(x.astype(accumulation_dtype(x.dtype), copy=False), g, 0).sum(axis=-1)
    return reference.averages(sums, g, count_include_pad, divisor_override)


def avg_pool2d_grad(grad_output: np.ndarray, g: PoolGeometry, count_include_pad: bool = True,
                    divisor_override: int | None = None) -> np.ndarray:
    if g.is_adaptive:
        return reference.avg_pool2d_grad(grad_output, g, count_include_pad, divisor_override)
    # Padding taps land outside the kept part.
    return _scatter(reference.average_grad_windows(grad_output, g, count_include_pad, divisor_override), g)


__all__ = ["conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d_forward", "max_pool2d_grad",
           "avg_pool2d_forward", "avg_pool2d_grad", "set_workspace_limit",
           "get_workspace_limit", "peak_workspace_bytes", "reset_peak_workspace_bytes", "release_workspace",
           "PER_SAMPLE_MIN_PIXELS", "COPY_THREADS", "PARALLEL_MIN_BYTES", "DEPTHWISE_BLOCK_BYTES"]
