"""The registry: the one definition of every kernel variant gpuconv launches.

A variant is a kernel template of one ``kernels/*.cu`` file instantiated with fixed parameters (a GEMM
tile, say). Everything else is derived from its entry here: its name (CUTLASS-style, from its
parameters: ``fprop_simt_64x64x16_1stage``), the ``extern "C"`` instantiations the loader generates for
each dtype it exists for, its launch block and shared memory, which geometries it applies to and which the
fixed rule prefers, the planner's candidates, the tests' parametrisation, the benchmark's per-variant
entries, ``gpuconv info`` and the kernel report.

Adding a tile is one ``_gemm(...)`` line below (and, for a new kind of kernel, its template and export
macro in the ``.cu`` file).

Pure Python (NumPy only): importing this module needs neither CuPy nor a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .._shapes import BFLOAT16, INTEGER_DTYPES, ConvGeometry, DgradPhase, accumulation_dtype

#: Storage dtypes the kernels can be instantiated for -> (name suffix, C storage type).
DTYPE_INFO = {
    np.dtype(np.float16): ("f16", "gpuconv_half"),
    BFLOAT16: ("bf16", "gpuconv_bf16"),
    np.dtype(np.float32): ("f32", "float"),
    np.dtype(np.float64): ("f64", "double"),
    **{d: (f"{d.kind}{8 * d.itemsize}", c_type)
       for d, c_type in zip(INTEGER_DTYPES, ("unsigned char", "signed char", "short", "int", "long long"))},
}
#: The floating dtypes of the SIMT kernels: every kernel but the tensor-core ones has them.
SIMT_DTYPES = (np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64))
#: The tensor-core kernels' storage dtypes: float16 and bfloat16 (float32 accumulation) and float32 as TF32.
HALF_TENSOR_OP_DTYPES = (np.dtype(np.float16), BFLOAT16)
TF32_TENSOR_OP_DTYPES = (np.dtype(np.float32),)
TENSOR_OP_DTYPES = HALF_TENSOR_OP_DTYPES + TF32_TENSOR_OP_DTYPES
#: Integer dtypes, which only max pooling's forward kernels compare.
INT_DTYPES = tuple(d for d in DTYPE_INFO if d.kind in "iu")

#: The convolution passes: forward, gradient of the input, gradient of the weight.
CONV_PASSES = ("fprop", "dgrad", "wgrad")
#: What each pass computes from: y from (x, w), dx from (dy, w), dw from (x, dy).
PASS_OPERANDS = {"fprop": ("x", "w"), "dgrad": ("dy", "w"), "wgrad": ("x", "dy")}
#: Algorithm families ``algo=`` accepts besides registry names; "auto" picks among all of them.
IM2COL, IMPLICIT_GEMM, DIRECT, TENSOR_CORE = "im2col", "implicit_gemm", "direct", "tensor_core"
FAMILIES = (IM2COL, IMPLICIT_GEMM, DIRECT, TENSOR_CORE)

#: Threads per block of the grid-stride kernels (im2col, col2im, pooling, the wgrad reduction).
ELEMENTWISE_THREADS = 256


def dtype_suffix(dtype) -> str:
    try:
        return DTYPE_INFO[np.dtype(dtype)][0]
    except (KeyError, TypeError):
        raise TypeError(f"no CUDA kernels for dtype {dtype}; use float16, bfloat16, float32 or float64") from None


def c_types(dtype) -> tuple[str, str]:
    """(storage C type, accumulator C type) of a dtype."""
    return DTYPE_INFO[np.dtype(dtype)][1], DTYPE_INFO[accumulation_dtype(dtype)][1]


@dataclass(frozen=True)
class GemmTile:
    """A thread-block tile of the implicit-GEMM kernels: kernels/implicit_gemm.cuh's TileShape.

    A block computes block_m x block_n outputs, block_k of the reduction at a time; each thread owns
    thread_m x thread_n of them.
    """
    block_m: int
    block_n: int
    block_k: int
    thread_m: int
    thread_n: int
    stages: int = 1  # shared-memory buffers in flight (1: load, barrier, multiply, barrier)
    #: Warp tile of the warp-tiled kernels (kernels/warp_gemm.cuh: 8x8 per thread, double-buffered);
    #: None for the strided-thread tiles of kernels/implicit_gemm.cuh.
    warp_m: int | None = None
    warp_n: int | None = None

    def __post_init__(self):
        # Each kernel family has one pipeline depth: a name and shared-memory size must not claim another.
        expected = 1 if self.warp_m is None else 2
        if self.stages != expected:
            raise ValueError(f"the {'strided' if self.warp_m is None else 'warp'}-tile kernels have a "
                             f"{expected}-stage main loop, got stages={self.stages}")
        if self.block_m % self.thread_m or self.block_n % self.thread_n:
            raise ValueError(f"thread tile {self.thread_m}x{self.thread_n} does not divide "
                             f"{self.block_m}x{self.block_n}")
        if self.warp_m is not None and (self.thread_m, self.thread_n) != (8, 8):
            raise ValueError("warp tiles hold 8x8 outputs per thread")

    @property
    def threads(self) -> int:
        if self.warp_m is not None:
            return (self.block_m // self.warp_m) * (self.block_n // self.warp_n) * 32
        return (self.block_m // self.thread_m) * (self.block_n // self.thread_n)

    @property
    def label(self) -> str:
        warp = "" if self.warp_m is None else f"_warp{self.warp_m}x{self.warp_n}"
        return f"{self.block_m}x{self.block_n}x{self.block_k}{warp}_{self.stages}stage"

    @property
    def cpp(self) -> str:
        if self.warp_m is not None:
            return (f"gpuconv::WarpTile<{self.block_m}, {self.block_n}, {self.block_k}, {self.warp_m}, "
                    f"{self.warp_n}>")
        return (f"gpuconv::TileShape<{self.block_m}, {self.block_n}, {self.block_k}, "
                f"{self.thread_m}, {self.thread_n}>")

    def shared_bytes(self, acc_itemsize: int) -> int:
        """SharedTiles: BLOCK_K rows of A (BLOCK_M + 1 wide) and of B (BLOCK_N + 1 wide); WarpSharedTiles:
        two buffers of BLOCK_K rows of A (BLOCK_M wide) and B (BLOCK_N wide)."""
        if self.warp_m is not None:
            return self.stages * self.block_k * (self.block_m + self.block_n) * acc_itemsize
        return self.stages * self.block_k * (self.block_m + 1 + self.block_n + 1) * acc_itemsize


@dataclass(frozen=True)
class TensorOpTile:
    """A thread-block tile of the tensor-core kernels: kernels/conv2d_tensor_core.cu's TensorOpTile.

    A block computes block_m x block_n outputs with warps of warp_m x warp_n, block_k reduction elements per
    stage of a ``stages``-deep cp.async pipeline; shared memory holds every stage of both operand slices,
    in the storage type.
    """
    block_m: int
    block_n: int
    block_k: int
    warp_m: int
    warp_n: int
    stages: int
    #: dgrad: outputs stored as NaN are summed again over the taps inside the input (the padding NaN rule).
    nan_resum: bool = False

    def __post_init__(self):
        if self.block_m % self.warp_m or self.block_n % self.warp_n or self.warp_m % 16 or self.warp_n % 16:
            raise ValueError(f"warp tile {self.warp_m}x{self.warp_n} must divide {self.block_m}x{self.block_n} "
                             f"in units of 16x16")
        if self.stages < 2:
            raise ValueError(f"a cp.async pipeline has at least 2 stages, got {self.stages}")

    @property
    def threads(self) -> int:
        return (self.block_m // self.warp_m) * (self.block_n // self.warp_n) * 32

    @property
    def label(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}_{self.warp_m}x{self.warp_n}_{self.stages}stage"

    @property
    def cpp(self) -> str:
        return (f"gpuconv::TensorOpTile<{self.block_m}, {self.block_n}, {self.block_k}, {self.warp_m}, "
                f"{self.warp_n}, {self.stages}, {str(self.nan_resum).lower()}>")

    def shared_bytes(self, itemsize: int) -> int:
        """TensorOpShared: ``stages`` slices of A (block_m rows) and B (block_n rows) of block_k elements."""
        return self.stages * (self.block_m + self.block_n) * self.block_k * itemsize


def _always(*_args) -> bool:
    return True


@dataclass(frozen=True)
class Variant:
    """One kernel variant. ``kernel_name(dtype)`` is the symbol of its instantiation for ``dtype``."""
    name: str
    op: str                    # fprop, dgrad, wgrad, wgrad_reduce, im2col, col2im, maxpool2d_forward, ...
    source: str                # the kernels/ file holding its template and export macro
    export_macro: str          # that file's macro: MACRO(NAME, T, ACC[, template arguments])
    threads: int               # per block (1-D blocks)
    dtypes: tuple = SIMT_DTYPES
    tile: GemmTile | TensorOpTile | None = None
    family: str | None = None  # the algorithm family a convolution variant belongs to
    min_compute_capability: int = 75
    emulatable: bool = True    # the CPU emulator (tests/cuda_emulation) can run it
    deterministic: bool = True
    grid_stride: bool = False  # correct with any grid (a grid-stride loop); else the plan's grid exactly
    dynamic_shared_bytes: int = 0
    shared_elements: int = 0   # static shared memory of a tile-less kernel, in accumulator elements
    #: (geometry, dtype) -> whether the variant computes that convolution correctly.
    applies: Callable[[ConvGeometry, np.dtype], bool] = field(default=_always, compare=False)
    #: geometry -> whether the fixed rule picks it (the first applicable variant of a pass that it prefers).
    preferred: Callable[[ConvGeometry], bool] = field(default=_always, compare=False)
    description: str = ""
    #: float32 inputs rounded to TF32 (10 mantissa bits): never chosen for float32 unless asked for by name, by
    #: its family, or by ``allow_tf32`` (the caller's precision policy) -- not by "auto" alone, the autotuner
    #: or another family's rule.
    tf32: bool = False

    def kernel_name(self, dtype) -> str:
        if np.dtype(dtype) not in self.dtypes:
            raise TypeError(f"kernel variant {self.name} exists for "
                            f"{', '.join(str(d) for d in self.dtypes)}, not {np.dtype(dtype)}")
        return f"gpuconv_{self.name}_{dtype_suffix(dtype)}"

    def export_line(self, dtype) -> str:
        """The instantiation the loader appends to the source: ``MACRO(NAME, T, ACC[, THREADS], TILE)``
        (THREADS, for ``__launch_bounds__``, with warp tiles)."""
        args = [self.kernel_name(dtype), *c_types(dtype)]
        if self.tile is not None:
            args += ([str(self.threads)] if self.tile.warp_m is not None else []) + [self.tile.cpp]
        return f"{self.export_macro}({', '.join(args)})"

    def static_shared_bytes(self, dtype) -> int:
        if isinstance(self.tile, TensorOpTile):  # staged in the storage type
            return self.tile.shared_bytes(np.dtype(dtype).itemsize)
        acc_itemsize = accumulation_dtype(dtype).itemsize
        return self.tile.shared_bytes(acc_itemsize) if self.tile else self.shared_elements * acc_itemsize

    def can_run(self, g: ConvGeometry, dtype, compute_capability: int | None = None) -> bool:
        """Whether it computes this convolution for ``dtype`` (on a device of ``compute_capability``, as
        75 for 7.5; None: any)."""
        if compute_capability is not None and compute_capability < self.min_compute_capability:
            return False
        return np.dtype(dtype) in self.dtypes and self.applies(g, np.dtype(dtype))


# ------------------------------------------------------------------------------------ the variants ---

def _int32_offsets(g: ConvGeometry, channels: int, plane: int) -> bool:
    """The tap-major warp-tile kernels address with 32-bit offsets within one input image of ``channels``
    planes of ``plane`` elements and within one group's weights; their running offsets reach two slices of
    BLOCK_K channels past the last (computed, not loaded)."""
    ahead = 2 * WARP_TILE_128.block_k
    weights_per_group = g.filters_per_group * g.channels_per_group * g.R * g.S
    channel_stride = max(g.R * g.S, g.channels_per_group * g.R * g.S)
    return (channels + ahead) * plane < 2**31 and weights_per_group + ahead * channel_stride < 2**31


_GEMM_SOURCES = {"fprop": "conv2d_fprop.cu", "dgrad": "conv2d_dgrad.cu", "wgrad": "conv2d_wgrad.cu"}


def _gemm(op: str, tile: GemmTile, preferred=_always, description: str = "", applies=_always,
          dtypes=SIMT_DTYPES) -> Variant:
    macro = f"GPUCONV_{op.upper()}_{'WARP_' if tile.warp_m is not None else ''}KERNEL"
    name = f"{op}_simt_{tile.label}" + ("_splitk" if op == "wgrad" else "")
    return Variant(name, op, _GEMM_SOURCES[op], macro, tile.threads, tile=tile, family=IMPLICIT_GEMM,
                   preferred=preferred, description=description, applies=applies, dtypes=dtypes)


#: The depthwise stencil's output tile and shared-memory capacity (kernels/conv2d_depthwise.cu, DepthwiseTile).
DEPTHWISE_TILE_P, DEPTHWISE_TILE_Q, DEPTHWISE_PATCH, DEPTHWISE_TAPS = 8, 32, 4096, 64


def _depthwise_fits(g: ConvGeometry, stride, transposed: bool = False) -> bool:
    """Depthwise (one input channel per group), its patch and taps within the kernel's shared memory, its
    channels and images within one grid's y and z. The patch of an output tile (fprop, wgrad) spans its
    pixels times the stride plus the filter; that of a dx tile (dgrad, ``transposed``) the dy pixels they
    receive from: (tile + filter span) / stride, plus one at each end."""
    def span(tile, stride, taps, dilation):
        if transposed:
            return (tile - 1 + (taps - 1) * dilation) // stride + 2
        return (tile - 1) * stride + (taps - 1) * dilation + 1

    patch = (span(DEPTHWISE_TILE_P, stride[0], g.R, g.dilation[0]) *
             span(DEPTHWISE_TILE_Q, stride[1], g.S, g.dilation[1]))
    return (g.channels_per_group == 1 and g.groups == g.C and patch <= DEPTHWISE_PATCH and
            g.R * g.S <= DEPTHWISE_TAPS and max(g.K, g.C, g.N) <= 65535)


def _depthwise(op: str, applies, description: str) -> Variant:
    threads = DEPTHWISE_TILE_P * DEPTHWISE_TILE_Q
    # fprop/dgrad stage the patch and the taps; wgrad the patch, dy's tile and a partial sum per thread.
    shared = DEPTHWISE_PATCH + (2 * threads if op == "wgrad" else DEPTHWISE_TAPS)
    return Variant(f"{op}_depthwise_{DEPTHWISE_TILE_P}x{DEPTHWISE_TILE_Q}", op, "conv2d_depthwise.cu",
                   f"GPUCONV_DEPTHWISE_{op.upper()}_KERNEL", threads, family=DIRECT, shared_elements=shared,
                   applies=applies, preferred=lambda g: True, description=description)


def _elementwise(name: str, source: str, macro: str, description: str, dtypes=SIMT_DTYPES) -> Variant:
    return Variant(name, name, source, macro, ELEMENTWISE_THREADS, dtypes=dtypes, grid_stride=True,
                   description=description)


#: The tensor-core kernels (kernels/conv2d_tensor_core.cu), sm_80+: 128x128 blocks of 4 warps of 64x64 and a
#: 3-stage cp.async pipeline of 64-byte rows: 32 halves or 16 floats deep. 3 * (128 + 128) * 64 B = 48 KiB, the
#: static shared-memory limit (the CPU emulator has no dynamic shared memory).
TENSOR_OP_TILE_HALF = TensorOpTile(128, 128, 32, 64, 64, stages=3)
TENSOR_OP_TILE_TF32 = TensorOpTile(128, 128, 16, 64, 64, stages=3)
TENSOR_OP_SOURCE = "conv2d_tensor_core.cu"
#: The pre-passes of the tensor-core kernels: x (dgrad: dy) to NHWC, w to (K, R, S, C), channels padded per
#: group; for dgrad w transposed per group and flipped to (C, R, S, K).
TENSOR_OP_PACK_INPUT, TENSOR_OP_PACK_WEIGHT = "tensorop_pack_input_nhwc", "tensorop_pack_weight_krsc"
TENSOR_OP_PACK_WEIGHT_FLIPPED = "tensorop_pack_weight_flipped_crsk"
#: The second pack of each pass the tensor-core kernels run: the weight's (fprop, dgrad), or wgrad's dy packed
#: NHWC (N, P, Q, groups * Kgp) by the input pack over dy's shape (wgrad_dy_as_input).
TENSOR_OP_WEIGHT_PACKS = {"fprop": TENSOR_OP_PACK_WEIGHT, "dgrad": TENSOR_OP_PACK_WEIGHT_FLIPPED,
                          "wgrad": TENSOR_OP_PACK_INPUT}


def tensor_op_dgrad_phases(g: ConvGeometry) -> tuple[DgradPhase, ...]:
    """dgrad's stride phases that taps reach (ConvGeometry.dgrad_phases), each the tensor-core fprop of dy
    with those taps of w transposed per group and flipped: one at stride 1, whose output is all of dx."""
    return tuple(p for p in g.dgrad_phases() if p.conv is not None)


def wgrad_dy_as_input(g: ConvGeometry) -> ConvGeometry:
    """dy (N, K, P, Q) as the input of a shape for the input pack (which reads N, C, H, W and groups alone):
    its packed copy is (N, P, Q, groups * Kgp), each group's filters zero-padded to 16 bytes."""
    return ConvGeometry(g.N, g.K, g.P, g.Q, g.K, 1, 1, g.P, g.Q, (1, 1), (1, 1), (0, 0, 0, 0), g.groups)


def tensor_op_padded_channels(g: ConvGeometry, dtype) -> int:
    """Channels per group in the packed operands: Cg rounded up to 16 bytes of elements (8 halves, 4 floats)."""
    per_chunk = 16 // np.dtype(dtype).itemsize
    return -(-g.channels_per_group // per_chunk) * per_chunk


def tensor_op_workspace_shapes(g: ConvGeometry, dtype, pass_name: str = "fprop"
                               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The packed input (N, H, W, groups * Cgp) and weight (K, R, S, Cgp) the tensor-core fprop reads (dgrad:
    of a phase's conv); for ``pass_name`` "wgrad", the packed input and dy (N, P, Q, groups * Kgp)."""
    cgp = tensor_op_padded_channels(g, dtype)
    if pass_name == "wgrad":
        dy = wgrad_dy_as_input(g)
        return (g.N, g.H, g.W, g.groups * cgp), (g.N, g.P, g.Q, g.groups * tensor_op_padded_channels(dy, dtype))
    return (g.N, g.H, g.W, g.groups * cgp), (g.K, g.R, g.S, cgp)


def _tensor_op_fits(g: ConvGeometry, dtype) -> bool:
    """The kernel addresses the packed input and weight with 32-bit element offsets (a padding tap's reach past
    either end and the filter rows past the last of a 128-wide block included) and indexes output pixels
    (N*P*Q) with ints; its grid has ceil(Kg / 128) columns (y <= 65535)."""
    cgp = tensor_op_padded_channels(g, dtype)
    limit = 2**31 - 1
    packed_input = g.N * g.H * g.W * g.groups * cgp
    # How far a window's taps reach before the first or past the last pixel of xp (padding taps' addresses).
    pad = max(abs(p) for p in g.pad)
    span_h, span_w = (g.R - 1) * g.dilation[0] + pad, (g.S - 1) * g.dilation[1] + pad
    reach = ((span_h + 1) * g.W + span_w + 1) * g.groups * cgp
    packed_weight = (g.K + 128) * g.R * g.S * cgp + 32
    return (g.N * g.P * g.Q <= limit and packed_input + reach <= limit and packed_weight <= limit
            and -(-g.filters_per_group // 128) <= 65535)


def _tensor_op_preferred(g: ConvGeometry) -> bool:
    """The fixed rule's tensor-core geometries (float16, bfloat16; float32 with allow_tf32): at least 8 input
    channels and 8 filters per group -- a depthwise or nearly depthwise layer would multiply mostly padding
    (the stencil does better)."""
    return g.channels_per_group >= 8 and g.filters_per_group >= 8


def _dgrad_tensor_op_fits(g: ConvGeometry, dtype) -> bool:
    return all(_tensor_op_fits(p.conv, dtype) for p in tensor_op_dgrad_phases(g))


def _wgrad_tensor_op_fits(g: ConvGeometry, dtype) -> bool:
    """wgrad's kernel addresses the packed input (a padding tap's reach included) and the packed dy (the pixel
    rows of a last partial slice included) with 32-bit offsets and indexes pixels with ints; its grid has
    ceil(R*S*Cgp / 128) columns (y <= 65535)."""
    cgp = tensor_op_padded_channels(g, dtype)
    kgp = tensor_op_padded_channels(wgrad_dy_as_input(g), dtype)
    limit = 2**31 - 1
    pad = max(abs(p) for p in g.pad)
    span_h, span_w = (g.R - 1) * g.dilation[0] + pad, (g.S - 1) * g.dilation[1] + pad
    reach = ((span_h + 1) * g.W + span_w + 1) * g.groups * cgp
    pixels = g.N * g.P * g.Q
    return (pixels + 32 <= limit and g.N * g.H * g.W * g.groups * cgp + reach <= limit
            and (pixels + 32) * g.groups * kgp <= limit and -(-g.R * g.S * cgp // 128) <= 65535)


def _wgrad_tensor_op(tile: TensorOpTile, dtypes, tf32: bool, description: str) -> Variant:
    """wgrad: the GEMM of dy^T (filters x pixels) and x's column matrix (pixels x taps and channels), both
    packed pixel-major; fragments by ldmatrix.trans (halves) or 128-bit shared loads (TF32)."""
    return Variant(f"wgrad_tensorop_{tile.label}" + ("_tf32" if tf32 else ""), "wgrad", TENSOR_OP_SOURCE,
                   "GPUCONV_WGRAD_TENSOR_OP_KERNEL", tile.threads, dtypes=dtypes, tile=tile, family=TENSOR_CORE,
                   min_compute_capability=80, applies=_wgrad_tensor_op_fits, preferred=_tensor_op_preferred,
                   description=description, tf32=tf32)


def _tensor_op(op: str, tile: TensorOpTile, dtypes, tf32: bool, description: str) -> Variant:
    """fprop, or dgrad (the same kernel on each stride phase's conv, tensor_op_dgrad_phases, re-summing NaN
    outputs over the taps that reach them: the padding NaN rule). The fixed rule's preference is symmetric in
    channels and filters, so dgrad's phases share the convolution's."""
    applies = _tensor_op_fits if op == "fprop" else _dgrad_tensor_op_fits
    tile = tile if op == "fprop" else replace(tile, nan_resum=True)
    return Variant(f"{op}_tensorop_{tile.label}" + ("_tf32" if tf32 else ""), op, TENSOR_OP_SOURCE,
                   "GPUCONV_FPROP_TENSOR_OP_KERNEL", tile.threads, dtypes=dtypes, tile=tile, family=TENSOR_CORE,
                   min_compute_capability=80, applies=applies, preferred=_tensor_op_preferred,
                   description=description, tf32=tf32)


def _tensor_op_pack(name: str, macro: str, description: str) -> Variant:
    return Variant(name, name, TENSOR_OP_SOURCE, macro, ELEMENTWISE_THREADS, dtypes=TENSOR_OP_DTYPES,
                   grid_stride=True, min_compute_capability=80, description=description)


WARP_TILE_128 = GemmTile(128, 128, 8, 8, 8, stages=2, warp_m=32, warp_n=64)  # 8 warps of 32x64
WARP_TILE_128X64 = GemmTile(128, 64, 8, 8, 8, stages=2, warp_m=64, warp_n=32)  # 4 warps of 64x32
WARP_TILE_64 = GemmTile(64, 64, 8, 8, 8, stages=2, warp_m=32, warp_n=64)  # 2 warps of 32x64
GENERAL_TILE = GemmTile(64, 64, 16, 4, 4)
NARROW_TILE = GemmTile(256, 4, 16, 4, 1)     # at most 4 GEMM columns per group (depthwise)
SMALL_TILE = GemmTile(16, 16, 32, 1, 1)      # small weight gradients

#: The warp tiles, largest first, and the fewest GEMM columns (channels) per group for which the fixed rule
#: prefers each. The smaller tiles spend more of their main loop gathering (78% FFMA against 83% on sm_90),
#: so the large one is preferred down to 64 columns, half of them then empty, until GPU timings (the
#: autotuner) say otherwise.
WARP_TILES = ((WARP_TILE_128, 64), (WARP_TILE_128X64, 32), (WARP_TILE_64, 16))

#: Every variant, in the order the fixed rule tries them within a pass (most specialised first).
VARIANTS: tuple[Variant, ...] = (
    _depthwise("fprop", lambda g, dtype: _depthwise_fits(g, g.stride),
               "depthwise: a direct stencil from a shared-memory patch (few bytes moved per output)"),
    _gemm("fprop", NARROW_TILE, lambda g: g.filters_per_group <= 4,
          "few output channels per group (depthwise): 256 pixels x 4 channels"),
    *(_gemm("fprop", tile, lambda g, least=least: g.filters_per_group >= least,
            "warp-tiled 8x8 per thread, 128-bit shared loads, double-buffered, no division in the main loop",
            applies=lambda g, dtype: _int32_offsets(g, g.C, g.H * g.W)) for tile, least in WARP_TILES),
    _gemm("fprop", GENERAL_TILE, description="the general tile"),
    # Last of the fprop variants: "auto" reaches them through the fixed rule's float16/bfloat16 clause
    # (plan.fixed_rule), never through a SIMT family's; TF32 only when named.
    _tensor_op("fprop", TENSOR_OP_TILE_HALF, HALF_TENSOR_OP_DTYPES, False,
               "tensor cores (mma.sync m16n8k16, float32 accumulation) on NHWC-packed operands, 3-stage cp.async"),
    _tensor_op("fprop", TENSOR_OP_TILE_TF32, TF32_TENSOR_OP_DTYPES, True,
               "TF32 tensor cores (mma.sync m16n8k8; inputs rounded to 10 mantissa bits), only when named"),
    _depthwise("dgrad", lambda g, dtype: _depthwise_fits(g, g.stride, transposed=True),
               "depthwise: per dx tile, the dy patch it receives from and only the taps that reach each pixel"),
    _gemm("dgrad", NARROW_TILE, lambda g: g.channels_per_group <= 4,
          "few input channels per group (depthwise): 256 pixels x 4 channels"),
    *(_gemm("dgrad", tile, lambda g, least=least: g.channels_per_group >= least,
            "per stride phase, a tap-major GEMM of dy with only the taps that reach it, warp-tiled",
            applies=lambda g, dtype: _int32_offsets(g, g.K, g.P * g.Q)) for tile, least in WARP_TILES),
    _gemm("dgrad", GENERAL_TILE, description="the general tile"),
    _tensor_op("dgrad", TENSOR_OP_TILE_HALF, HALF_TENSOR_OP_DTYPES, False,
               "per stride phase, the tensor-core fprop of dy with the taps reaching it, w transposed and flipped"),
    _tensor_op("dgrad", TENSOR_OP_TILE_TF32, TF32_TENSOR_OP_DTYPES, True,
               "per stride phase, the TF32 tensor-core fprop of dy with w transposed and flipped, only when named"),
    _depthwise("wgrad", lambda g, dtype: _depthwise_fits(g, g.stride),
               "depthwise: per output tile, every tap's products from a shared-memory patch, split over images"),
    _gemm("wgrad", SMALL_TILE, lambda g: min(g.filters_per_group, g.channels_per_group * g.R * g.S) <= 16,
          "weight gradients at most 16 wide in one direction (depthwise)"),
    *(_gemm("wgrad", tile, lambda g, least=least: min(g.filters_per_group, g.channels_per_group * g.R * g.S) >= least,
            "warp-tiled, the reduction walking output rows (no division in the main loop)")
      for tile, least in WARP_TILES),
    _gemm("wgrad", GENERAL_TILE, description="the general tile"),
    _wgrad_tensor_op(TENSOR_OP_TILE_HALF, HALF_TENSOR_OP_DTYPES, False,
                     "tensor cores (mma.sync m16n8k16, ldmatrix.trans, float32 accumulation) on pixel-major packed "
                     "x and dy, 3-stage cp.async, split-K over the pixels"),
    _wgrad_tensor_op(TENSOR_OP_TILE_TF32, TF32_TENSOR_OP_DTYPES, True,
                     "TF32 tensor cores (mma.sync m16n8k8, 128-bit shared loads of a permuted tile), only when named"),
    _elementwise("wgrad_splitk_reduce", "conv2d_wgrad.cu", "GPUCONV_WGRAD_REDUCE_KERNEL",
                 "sums the split-K partial weight gradients in split order"),
    _tensor_op_pack(TENSOR_OP_PACK_INPUT, "GPUCONV_TENSOR_OP_PACK_INPUT_KERNEL",
                    "x to NHWC, channels zero-padded per group to 16 bytes (float32: rounded to TF32)"),
    _tensor_op_pack(TENSOR_OP_PACK_WEIGHT, "GPUCONV_TENSOR_OP_PACK_WEIGHT_KERNEL",
                    "w to (K, R, S, C), channels zero-padded to 16 bytes (float32: rounded to TF32)"),
    _tensor_op_pack(TENSOR_OP_PACK_WEIGHT_FLIPPED, "GPUCONV_TENSOR_OP_PACK_WEIGHT_FLIPPED_KERNEL",
                    "dgrad: w transposed per group and flipped to (C, R, S, K), K zero-padded (float32: TF32)"),
    _elementwise("im2col_nchw", "im2col.cu", "GPUCONV_IM2COL_KERNEL", "column matrix (C*R*S, N*P*Q)"),
    _elementwise("col2im_nchw", "im2col.cu", "GPUCONV_COL2IM_KERNEL", "adjoint of im2col, as a gather"),
    _elementwise("maxpool2d_forward", "pooling.cu", "GPUCONV_MAXPOOL_FORWARD_KERNEL", "max pooling",
                 SIMT_DTYPES + INT_DTYPES),
    _elementwise("maxpool2d_forward_indices", "pooling.cu", "GPUCONV_MAXPOOL_FORWARD_INDICES_KERNEL",
                 "max pooling and the per-plane index of each maximum", SIMT_DTYPES + INT_DTYPES),
    _elementwise("maxpool2d_backward", "pooling.cu", "GPUCONV_MAXPOOL_BACKWARD_KERNEL",
                 "max pooling gradient, to the first maximum"),
    _elementwise("avgpool2d_forward", "pooling.cu", "GPUCONV_AVGPOOL_FORWARD_KERNEL", "average pooling"),
    _elementwise("avgpool2d_backward", "pooling.cu", "GPUCONV_AVGPOOL_BACKWARD_KERNEL",
                 "average pooling gradient"),
)

BY_NAME: dict[str, Variant] = {v.name: v for v in VARIANTS}
if len(BY_NAME) != len(VARIANTS):
    raise AssertionError("two kernel variants share a name")


def get(name: str) -> Variant:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"no kernel variant named {name!r}; registered: {sorted(BY_NAME)}") from None


def variants(op: str | None = None, source: str | None = None) -> tuple[Variant, ...]:
    return tuple(v for v in VARIANTS if (op is None or v.op == op) and (source is None or v.source == source))


def conv_variants(pass_name: str) -> tuple[Variant, ...]:
    """The GEMM variants of one convolution pass (what ``algo=<name>`` may name), in fixed-rule order."""
    if pass_name not in CONV_PASSES:
        raise ValueError(f"unknown convolution pass {pass_name!r}; expected one of {CONV_PASSES}")
    return variants(op=pass_name)


def algo_choices(pass_name: str) -> tuple[str, ...]:
    """Every ``algo=`` value a GPU convolution pass accepts."""
    return ("auto", *FAMILIES, *(v.name for v in conv_variants(pass_name)))


def pool_ops() -> tuple[str, ...]:
    """The pooling kernels (each is its own op)."""
    return tuple(v.op for v in VARIANTS if v.source == "pooling.cu")


def sources() -> tuple[str, ...]:
    """The kernel files, in registry order."""
    return tuple(dict.fromkeys(v.source for v in VARIANTS))


def instantiations(source: str | None = None) -> tuple[tuple[Variant, np.dtype], ...]:
    """Every (variant, dtype) the package can launch, optionally those of one kernel file."""
    return tuple((v, d) for v in VARIANTS if source in (None, v.source) for d in v.dtypes)


__all__ = ["DTYPE_INFO", "SIMT_DTYPES", "INT_DTYPES", "CONV_PASSES", "PASS_OPERANDS", "IM2COL", "IMPLICIT_GEMM",
           "DIRECT", "TENSOR_CORE", "HALF_TENSOR_OP_DTYPES", "TF32_TENSOR_OP_DTYPES", "TENSOR_OP_DTYPES",
           "TENSOR_OP_SOURCE", "TENSOR_OP_PACK_INPUT", "TENSOR_OP_PACK_WEIGHT", "TENSOR_OP_PACK_WEIGHT_FLIPPED",
           "TENSOR_OP_WEIGHT_PACKS", "tensor_op_dgrad_phases", "wgrad_dy_as_input",
           "tensor_op_padded_channels",
           "tensor_op_workspace_shapes", "TENSOR_OP_TILE_HALF", "TENSOR_OP_TILE_TF32",
           "FAMILIES", "ELEMENTWISE_THREADS", "GemmTile", "TensorOpTile", "Variant", "VARIANTS", "BY_NAME", "get",
           "variants",
           "conv_variants", "algo_choices", "pool_ops", "sources", "instantiations", "dtype_suffix", "c_types"]
