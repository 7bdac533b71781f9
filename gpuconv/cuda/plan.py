"""Plan, then run: what to launch for one convolution or pooling pass, as a pure function.

``plan_conv(pass_name, geometry, dtype, algo, free_bytes)`` returns a ``ConvPlan``: the variant, every
kernel launch (grid, block, dynamic shared memory), the im2col batch chunks, the workspace bytes, why it
was chosen, and the memory fallback when one was taken. ``gpuconv.cuda.conv.run_conv`` executes a plan
on arrays with a backend (CuPy on a GPU, or the CPU emulator in the tests). Nothing here touches CuPy
or a GPU, so every choice is testable anywhere.

The convolution passes are fprop (y from x and w), dgrad (dx from dy and w) and wgrad (dw from x and dy).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._backend import GPUOutOfMemoryError
from .._shapes import HALF_DTYPES, ConvGeometry, PoolGeometry, accumulation_dtype, ceil_div
from . import _launch, registry
from .registry import CONV_PASSES, DIRECT, IM2COL, IMPLICIT_GEMM, TENSOR_CORE, Variant

#: Upper bound on the im2col column matrix; the batch is chunked to stay below it.
IM2COL_WORKSPACE_BYTES = 1 << 30

#: The wgrad kernels split the reduction over output pixels until about this
#: many blocks run. A constant rather than the GPU's size, so that the split --
#: and with it every bit of the result -- is the same on every GPU.
WGRAD_TARGET_BLOCKS = 1024
#: ... but give every block at least this many output pixels to sum.
WGRAD_MIN_PIXELS_PER_SPLIT = 512

#: Blocks of a grid-stride launch stop growing here; each thread then loops.
MAX_ELEMENTWISE_BLOCKS = 1 << 16

#: The functional API's name of each pass, for messages.
PASS_NAMES = {"fprop": "forward", "dgrad": "grad_input", "wgrad": "grad_weight"}



@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch: the registry variant for ``dtype`` over ``grid`` x ``block``."""
    variant: Variant
    dtype: np.dtype
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    dynamic_shared_bytes: int = 0
    scalars: tuple[int, ...] = ()  # int arguments after the shape (the stride phase of a dgrad launch)

    @property
    def kernel_name(self) -> str:
        return self.variant.kernel_name(self.dtype)


@dataclass(frozen=True)
class ConvPlan:
    """Everything ``run_conv`` needs to execute one convolution pass, and why it was chosen."""
    pass_name: str                 # fprop, dgrad or wgrad
    geometry: ConvGeometry
    dtype: np.dtype
    requested: str                 # the algo= asked for
    algorithm: str                 # the family that runs: "im2col" or "implicit_gemm"
    variant: str                   # the candidate that runs: "im2col" or a GEMM variant's registry name
    launches: tuple[KernelLaunch, ...]
    reason: str
    batch_chunks: tuple[tuple[int, int], ...] = ()  # im2col: [start, stop) image ranges
    pointwise: bool = False        # im2col family on a 1x1/stride-1/unpadded convolution: no column matrix
    workspace_bytes: int = 0       # beyond the output: im2col columns per chunk, wgrad's split partials, or the
    #                                tensor-core fprop's packed input and weight
    wgrad_splits: int = 1          # wgrad: the split reduction
    wgrad_pixels_per_split: int = 0  # its unit of work: output pixels (implicit GEMM), images (depthwise stencil)
    fallback: str | None = None    # set when memory forced another choice than the rule's or the tuner's

    def describe(self) -> str:
        launches = "; ".join(f"{k.kernel_name} grid {k.grid} block {k.block[0]}" for k in self.launches)
        text = f"{self.pass_name} {self.variant} ({self.reason})"
        if self.fallback:
            text += f" [fallback: {self.fallback}]"
        return f"{text}: {launches}" if launches else text


@dataclass(frozen=True)
class PoolPlan:
    launch: KernelLaunch
    geometry: PoolGeometry


# ---------------------------------------------------------------------------------------- grids ---

def elementwise_grid(total: int) -> tuple[int, int, int]:
    """A 1-D grid for a grid-stride loop over ``total`` elements (at least one block)."""
    return (max(1, min(ceil_div(total, registry.ELEMENTWISE_THREADS), MAX_ELEMENTWISE_BLOCKS)), 1, 1)


def check_geometry(g: ConvGeometry) -> None:
    """Refuse shapes the kernels' 32-bit indexing or CUDA's grid limits cannot handle."""
    G, Cg, Kg = g.groups, g.channels_per_group, g.filters_per_group
    _launch.check_extents("conv2d", H_times_W=g.H * g.W, P_times_Q=g.P * g.Q,
                          Cg_R_S=Cg * g.R * g.S, Kg_R_S=Kg * g.R * g.S)
    if G > _launch.GRID_YZ_MAX:
        raise ValueError(f"conv2d: groups={G} exceeds {_launch.GRID_YZ_MAX}, the most one launch can cover")


def gemm_grid(pass_name: str, g: ConvGeometry, variant: Variant, splits: int = 1) -> tuple[int, int, int]:
    """The implicit-GEMM grid: (GEMM rows / BLOCK_M, GEMM columns / BLOCK_N, groups [* splits]). The warp
    tiles' dgrad launches once per stride phase instead, over that phase's pixels (``_plan_gemm``)."""
    G, Cg, Kg = g.groups, g.channels_per_group, g.filters_per_group
    t = variant.tile
    if pass_name == "fprop":    # rows: output pixels, columns: output channels of a group
        return ceil_div(g.N * g.P * g.Q, t.block_m), ceil_div(Kg, t.block_n), G
    if pass_name == "dgrad":    # rows: input pixels, columns: input channels of a group
        return ceil_div(g.N * g.H * g.W, t.block_m), ceil_div(Cg, t.block_n), G
    # wgrad: rows: output channels of a group, columns: (c, r, s), one z-slice per group and split
    return ceil_div(Kg, t.block_m), ceil_div(Cg * g.R * g.S, t.block_n), G * splits


def dgrad_phases(g: ConvGeometry) -> tuple[tuple[int, int, int, int], ...]:
    """The stride phases of dgrad's warp-tile kernels: (phase_h, phase_w, rows, columns) for every phase
    holding input pixels (ConvGeometry.dgrad_phases: h = phase_h + t*stride_h, t < rows; the same for w). One
    at stride 1."""
    return tuple((p.phase_h, p.phase_w, len(range(g.H)[p.rows]), len(range(g.W)[p.cols])) for p in g.dgrad_phases())


def wgrad_split(g: ConvGeometry, variant: Variant, dtype=np.float32) -> tuple[int, int]:
    """(splits, pixels per split) of the wgrad reduction over the N*P*Q output pixels: a multiple of the
    tile's BLOCK_K (strided and tensor-core tiles) or of Q (SIMT warp tiles, which walk whole output rows).
    Enough splits for about WGRAD_TARGET_BLOCKS blocks, none under WGRAD_MIN_PIXELS_PER_SPLIT pixels."""
    G, Cg, Kg = g.groups, g.channels_per_group, g.filters_per_group
    tile = variant.tile
    pixels = g.N * g.P * g.Q
    columns = g.R * g.S * (registry.tensor_op_padded_channels(g, dtype) if variant.family == TENSOR_CORE else Cg)
    tiles = ceil_div(Kg, tile.block_m) * ceil_div(columns, tile.block_n) * G
    splits = min(ceil_div(WGRAD_TARGET_BLOCKS, tiles),
                 max(1, pixels // WGRAD_MIN_PIXELS_PER_SPLIT),
                 _launch.GRID_YZ_MAX // G)
    splits = max(1, splits)
    if variant.family != TENSOR_CORE and tile.warp_m is not None:  # whole output rows: a split is rows of Q pixels
        rows = g.N * g.P
        rows_per_split = ceil_div(rows, min(splits, rows))
        return ceil_div(rows, rows_per_split), rows_per_split * g.Q
    per_split = ceil_div(ceil_div(pixels, splits), tile.block_k) * tile.block_k
    return ceil_div(pixels, per_split), per_split  # no split is left empty


# ---------------------------------------------------------------------------------- im2col sizes ---

def im2col_bytes_per_image(g: ConvGeometry, itemsize: int) -> int:
    """Workspace one image needs on the im2col path: its column matrix plus the (K, P*Q) GEMM operand or result."""
    return (g.C * g.R * g.S + g.K) * g.P * g.Q * itemsize


def im2col_batch_chunk(g: ConvGeometry, itemsize: int, budget: int | None = None) -> int:
    """How many images' workspaces fit ``budget`` bytes (default IM2COL_WORKSPACE_BYTES), at least one."""
    budget = IM2COL_WORKSPACE_BYTES if budget is None else budget
    return max(1, min(g.N, budget // im2col_bytes_per_image(g, itemsize)))


def batch_chunks(g: ConvGeometry, chunk: int) -> tuple[tuple[int, int], ...]:
    return tuple((start, min(start + chunk, g.N)) for start in range(0, g.N, chunk))


def im2col_budget(g: ConvGeometry, itemsize: int, free_bytes: int | None) -> int | None:
    """Bytes the im2col workspace may take, or None when not even one image's fits.

    IM2COL_WORKSPACE_BYTES or half the free memory, whichever is less: half, because cuBLAS and the
    contiguous copies CuPy makes of transposed GEMM operands take memory beyond the column matrix.
    """
    if free_bytes is None:
        return IM2COL_WORKSPACE_BYTES
    usable = max(0, int(free_bytes)) // 2
    return min(IM2COL_WORKSPACE_BYTES, usable) if im2col_bytes_per_image(g, itemsize) <= usable else None


# ------------------------------------------------------------------------------------- choosing ---

def fixed_rule(pass_name: str, g: ConvGeometry, dtype, compute_capability: int | None = None,
               allow_tf32: bool = False) -> str:
    """What ``auto`` runs without the autotuner: for float16 and bfloat16, a tensor-core variant where one
    applies and prefers the geometry (compute capability 8.0 or newer, or unknown); otherwise im2col + cuBLAS
    for dense convolutions (no GPU timing has yet shown our SIMT kernels faster there), the rule's variant for
    grouped ones: the depthwise stencil for depthwise layers, else an implicit-GEMM tile (per-group GEMMs are
    too small for cuBLAS, and the column matrix would be mostly wasted memory traffic). float32 goes to TF32
    only with ``allow_tf32`` (the caller's precision policy permits it; it rounds the inputs), by the same
    clause as float16."""
    dtype = np.dtype(dtype)
    if dtype in HALF_DTYPES or (allow_tf32 and dtype == np.float32):
        tensor_core = next((v for v in registry.conv_variants(pass_name) if v.family == TENSOR_CORE
                            and _auto_eligible(v, allow_tf32) and v.can_run(g, dtype, compute_capability)
                            and v.preferred(g)), None)
        if tensor_core is not None:
            return tensor_core.name
    if g.groups == 1 and dtype in registry.get("im2col_nchw").dtypes:
        return IM2COL
    return rule_variant(pass_name, g, dtype, compute_capability).name


def _auto_eligible(v: Variant, allow_tf32: bool = False) -> bool:
    """Whether "auto" (the fixed rule, the autotuner) may pick a variant: deterministic, and exact in the
    input dtype's precision -- TF32 variants run only when named (by variant or by family), or when the
    caller allows TF32."""
    return v.deterministic and (allow_tf32 or not v.tf32)


def rule_variant(pass_name: str, g: ConvGeometry, dtype, compute_capability: int | None = None,
                 family: str | None = None) -> Variant:
    """The first applicable variant of the pass (of ``family``, or any) that prefers this geometry, in
    registry order; else the last applicable one. TF32 variants only when their family is asked for."""
    usable = [v for v in registry.conv_variants(pass_name) if v.deterministic and family in (None, v.family)
              and (not v.tf32 or family == v.family) and v.can_run(g, dtype, compute_capability)]
    if not usable:
        on = "" if compute_capability is None else f" on compute capability {_cc_text(compute_capability)}"
        kind = "" if family is None else f"{family} "
        raise ValueError(f"no {kind}{pass_name} kernel exists for {np.dtype(dtype)} and this geometry{on}")
    return next((v for v in usable if v.preferred(g)), usable[-1])


def _cc_text(compute_capability: int) -> str:
    return f"{compute_capability // 10}.{compute_capability % 10}"


def candidates(pass_name: str, g: ConvGeometry, dtype, compute_capability: int | None = None,
               allow_tf32: bool = False) -> tuple[str, ...]:
    """Everything ``auto`` may choose among for this pass: im2col + cuBLAS (for the dtypes it has) and every
    applicable deterministic variant (on a device of ``compute_capability``, e.g. 90; None: any). A
    non-deterministic variant runs only when named, a TF32 one only when named or with ``allow_tf32``."""
    im2col = (IM2COL,) if np.dtype(dtype) in registry.get("im2col_nchw").dtypes else ()
    return (*im2col, *(v.name for v in registry.conv_variants(pass_name)
                       if _auto_eligible(v, allow_tf32) and v.can_run(g, dtype, compute_capability)))


def check_algo(pass_name: str, algo) -> None:
    """Refuse an ``algo=`` that names nothing this pass can run, listing what it can."""
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a string, got {algo!r}")
    choices = registry.algo_choices(pass_name)
    if algo in choices:
        return
    other = registry.BY_NAME.get(algo)
    if other is not None and other.op in CONV_PASSES:
        raise ValueError(f"algo={algo!r} is a {other.op} kernel variant; the {pass_name} pass "
                         f"({PASS_NAMES[pass_name]}) on CuPy (GPU) arrays takes one of {choices}")
    raise ValueError(f"algo={algo!r} is not available for CuPy (GPU) arrays ({pass_name}); choose one of {choices}")


def result_shape(pass_name: str, g: ConvGeometry) -> tuple[int, ...]:
    """The shape of a pass's result: y (fprop), dx (dgrad) or dw (wgrad)."""
    return {"fprop": g.output_shape, "dgrad": g.input_shape, "wgrad": g.weight_shape}[pass_name]


def result_bytes(pass_name: str, g: ConvGeometry, dtype) -> int:
    """Bytes of a pass's result."""
    return int(np.prod(result_shape(pass_name, g))) * np.dtype(dtype).itemsize


def _memory_error(what: str, needed: int, free_bytes: int | None) -> GPUOutOfMemoryError:
    return GPUOutOfMemoryError(f"{what} needs {needed:,} bytes of GPU memory but only {int(free_bytes or 0):,} "
                               f"bytes are free")


# ------------------------------------------------------------------------------------- planning ---

def _implicit_gemm_fallback(pass_name, g, dtype, algo, compute_capability, reason, why: str) -> ConvPlan:
    """The rule's implicit-GEMM plan, for when the chosen plan's memory does not fit (``why``)."""
    variant = rule_variant(pass_name, g, dtype, compute_capability, family=IMPLICIT_GEMM)
    return replace(_plan_gemm(pass_name, g, dtype, algo, variant, reason), fallback=f"{why}: implicit GEMM instead")


def plan_conv(pass_name: str, g: ConvGeometry, dtype, algo: str = "auto", free_bytes: int | None = None,
              tuned: str | None = None, compute_capability: int | None = None, allow_tf32: bool = False) -> ConvPlan:
    """The plan for one convolution pass. Pure: no CuPy, no GPU.

    ``algo``: "auto", a family ("im2col", "implicit_gemm", "direct", "tensor_core") or a registry name of one
    of this pass's variants ("tensor_core" on float32 is TF32: only ever when asked for). ``free_bytes``: GPU
    memory a new allocation can get (None: unlimited). ``tuned``: for ``auto``, the autotuner's pick (a
    candidate name); None applies the fixed rule. ``compute_capability``: the device's, as 90 for 9.0 (None:
    any), which variants need at least. ``allow_tf32``: ``auto`` may run float32 on TF32 tensor cores (the
    caller's precision policy, gpuconv.precision); without it only an explicit ``algo=`` does.
    Raises GPUOutOfMemoryError when an explicit im2col request cannot fit even one image, or when the
    tensor-core fprop's packed operands do not fit and nothing else may run instead (it was asked for, or the
    dtype has no other kernel).
    """
    check_algo(pass_name, algo)
    check_geometry(g)
    dtype = np.dtype(dtype)
    registry.dtype_suffix(dtype)  # refuses dtypes without kernels
    if algo == "auto":
        if tuned is not None:
            if tuned not in candidates(pass_name, g, dtype, compute_capability, allow_tf32):
                raise ValueError(f"the autotuner's choice {tuned!r} cannot run {pass_name} for this geometry")
            choice, reason = tuned, "autotuned: fastest candidate measured on this GPU"
        else:
            choice = fixed_rule(pass_name, g, dtype, compute_capability, allow_tf32)
            if choice == IM2COL:
                reason = "fixed rule: dense convolution, im2col + cuBLAS"
            elif registry.get(choice).family == TENSOR_CORE:
                reason = f"fixed rule: {dtype} on tensor cores (float32 accumulation)"
            else:
                reason = f"fixed rule: grouped convolution, {registry.get(choice).family}"
    elif algo == IM2COL:
        if dtype not in registry.get("im2col_nchw").dtypes:
            raise ValueError(f"algo='im2col' has no {dtype} kernels (they exist for "
                             f"{', '.join(map(str, registry.get('im2col_nchw').dtypes))}); {dtype} runs on "
                             f"the tensor cores: algo='auto' or '{TENSOR_CORE}'")
        choice, reason = IM2COL, "requested"
    elif algo in (IMPLICIT_GEMM, DIRECT, TENSOR_CORE):
        choice = rule_variant(pass_name, g, dtype, compute_capability, family=algo).name
        reason = "requested family; the rule's variant"
    else:
        variant = registry.get(algo)
        if compute_capability is not None and compute_capability < variant.min_compute_capability:
            raise ValueError(f"kernel variant {algo} needs compute capability "
                             f"{_cc_text(variant.min_compute_capability)}; this GPU has {_cc_text(compute_capability)}")
        if not variant.can_run(g, dtype):
            raise ValueError(f"kernel variant {algo} does not apply to this {pass_name} ({np.dtype(dtype)}, "
                             f"{g})")
        choice, reason = algo, "requested variant"

    if choice == IM2COL:
        # The result is allocated before the workspace: what is left after it may hold the column matrix.
        free_after_result = None if free_bytes is None else max(0, int(free_bytes) - result_bytes(pass_name, g,
                                                                                                     dtype))
        plan = _plan_im2col(pass_name, g, dtype, algo, reason, free_after_result)
        if plan is not None:
            return plan
        needed = 2 * im2col_bytes_per_image(g, dtype.itemsize)
        if algo == IM2COL:
            raise _memory_error(f"conv2d {pass_name} ({PASS_NAMES[pass_name]}) with algo='im2col' (the workspace "
                                f"of one image, twice for headroom)", needed, free_after_result)
        return _implicit_gemm_fallback(pass_name, g, dtype, algo, compute_capability, reason,
                                       f"im2col needs {needed:,} bytes for one image's workspace (twice for "
                                       f"headroom), {free_after_result:,} free after the result")
    variant = registry.get(choice)
    if variant.family == TENSOR_CORE and free_bytes is not None:
        needed = tensor_op_workspace_bytes(pass_name, g, dtype, variant) + result_bytes(pass_name, g, dtype)
        if needed > int(free_bytes):
            if algo != "auto" or not any(v.can_run(g, dtype, compute_capability)
                                         for v in registry.conv_variants(pass_name) if v.family != TENSOR_CORE):
                raise _memory_error(f"conv2d {pass_name} ({PASS_NAMES[pass_name]}) on {variant.name} (the result "
                                    f"and the packed input and weight)", needed, free_bytes)
            return _implicit_gemm_fallback(pass_name, g, dtype, algo, compute_capability, reason,
                                           f"{variant.name} needs {needed:,} bytes for the result and its packed "
                                           f"operands, {int(free_bytes):,} free")
    return _plan_gemm(pass_name, g, dtype, algo, variant, reason)


def tensor_op_workspace_bytes(pass_name: str, g: ConvGeometry, dtype, variant: Variant | None = None) -> int:
    """A tensor-core pass's workspace: fprop's input packed NHWC and weight packed (K, R, S, C), channels
    padded per group; wgrad's packed x and dy (both NHWC) and the float32 partial sums of its ``variant``'s
    splits; dgrad's packed dy, the largest of its phases' packed weights and, with several phases, the largest
    phase's output (copied into dx's pixels) and taps of w (copied out for the pack)."""
    itemsize = np.dtype(dtype).itemsize
    if pass_name == "fprop":
        return sum(int(np.prod(shape)) for shape in registry.tensor_op_workspace_shapes(g, dtype)) * itemsize
    if pass_name == "wgrad":
        if variant is None:
            raise ValueError("the tensor-core wgrad workspace depends on its variant's splits: pass variant=")
        packed = sum(int(np.prod(shape)) for shape in registry.tensor_op_workspace_shapes(g, dtype, "wgrad"))
        return packed * itemsize + wgrad_split(g, variant, dtype)[0] * int(np.prod(g.weight_shape)) * 4
    phases = registry.tensor_op_dgrad_phases(g)
    if not phases:
        return 0
    packed_dy = int(np.prod(registry.tensor_op_workspace_shapes(phases[0].conv, dtype)[0]))
    packed_weight = max(int(np.prod(registry.tensor_op_workspace_shapes(p.conv, dtype)[1])) for p in phases)
    output = 0 if _dgrad_phase_is_whole(g, phases) else max(int(np.prod(p.conv.output_shape)) for p in phases)
    taps = 0 if _dgrad_phase_is_whole(g, phases) else g.K * g.channels_per_group * max(p.conv.R * p.conv.S
                                                                                        for p in phases)
    return (packed_dy + packed_weight + output + taps) * itemsize


def _dgrad_phase_is_whole(g: ConvGeometry, phases) -> bool:
    """Whether dgrad's one phase covers all of dx (always at stride 1): its output is dx itself."""
    return len(phases) == 1 and phases[0].conv.output_shape == g.input_shape


def _launch_of(variant: Variant, dtype, grid) -> KernelLaunch:
    grid = tuple(grid) + (1,) * (3 - len(grid))
    _launch.check_grid(grid, variant.name)
    return KernelLaunch(variant, np.dtype(dtype), grid, (variant.threads, 1, 1), variant.dynamic_shared_bytes)


def depthwise_traffic(pass_name: str, g: ConvGeometry) -> tuple[float, float]:
    """Global elements the depthwise stencil reads and writes per output element (fprop: y, dgrad: dx), for
    the tiles it launches, edges included: each block reads its input patch (and its taps) once per input
    channel it sums. The gather kernels read R*S inputs (and R*S weights) per output instead."""
    tp, tq = registry.DEPTHWISE_TILE_P, registry.DEPTHWISE_TILE_Q
    if pass_name == "fprop":  # an output tile reads its pixels times the stride plus the filter's span
        def extents(size, tile, stride, taps, dilation, pad, in_size):
            return [(min(tile, size - first) - 1) * stride + (taps - 1) * dilation + 1
                    for first in range(0, size, tile)]
        P, Q, channels_summed = g.P, g.Q, 1
    else:  # a dx tile reads the dy pixels it receives from (kernels/conv2d_depthwise.cu, depthwise_dgrad)
        def extents(size, tile, stride, taps, dilation, pad, in_size):
            spans = []
            for first in range(0, size, tile):
                last = min(first + tile, size) - 1
                low = max(-((-(first + pad - (taps - 1) * dilation)) // stride), 0)
                high = min((last + pad) // stride, in_size - 1)
                spans.append(max(high - low + 1, 0))
            return spans
        P, Q, channels_summed = g.H, g.W, g.K // g.C
    rows = extents(P, tp, g.stride[0], g.R, g.dilation[0], g.pad[0], g.P)
    columns = extents(Q, tq, g.stride[1], g.S, g.dilation[1], g.pad[2], g.Q)
    reads = channels_summed * (sum(rows) * sum(columns) + len(rows) * len(columns) * g.R * g.S)
    return reads / (P * Q), 1.0


def im2col_launch(g: ConvGeometry, dtype, images: int) -> KernelLaunch:
    """The im2col kernel copies a segment of Q columns per warp: 32 threads for each of C*R*S*images*P."""
    return elementwise_launch("im2col_nchw", dtype, 32 * g.C * g.R * g.S * images * g.P)


def elementwise_launch(name: str, dtype, total: int) -> KernelLaunch:
    """A grid-stride variant's launch over ``total`` elements."""
    return _launch_of(registry.get(name), dtype, elementwise_grid(total))


def _plan_gemm(pass_name, g, dtype, algo, variant: Variant, reason: str) -> ConvPlan:
    common = dict(pass_name=pass_name, geometry=g, dtype=dtype, requested=algo, algorithm=variant.family,
                  variant=variant.name, reason=reason)
    if variant.family == DIRECT and pass_name == "wgrad":  # a block per (channel, split of the images)
        per_split = ceil_div(g.N, max(1, min(g.N, ceil_div(WGRAD_TARGET_BLOCKS, g.K), _launch.GRID_YZ_MAX)))
        splits = ceil_div(g.N, per_split)
        weights = int(np.prod(g.weight_shape))
        return ConvPlan(launches=(_launch_of(variant, dtype, (g.K, 1, splits)),
                                  elementwise_launch("wgrad_splitk_reduce", dtype, weights)),
                        wgrad_splits=splits, wgrad_pixels_per_split=per_split,
                        workspace_bytes=splits * weights * accumulation_dtype(dtype).itemsize, **common)
    if variant.family == TENSOR_CORE and pass_name == "wgrad":  # x and dy packed NHWC, the split GEMM, the sum
        packed_input, packed_dy = registry.tensor_op_workspace_shapes(g, dtype, "wgrad")
        t = variant.tile
        splits, per_split = wgrad_split(g, variant, dtype)
        grid = (ceil_div(g.filters_per_group, t.block_m),
                ceil_div(g.R * g.S * registry.tensor_op_padded_channels(g, dtype), t.block_n), g.groups * splits)
        weights = int(np.prod(g.weight_shape))
        launches = (elementwise_launch(registry.TENSOR_OP_PACK_INPUT, dtype, int(np.prod(packed_input))),
                    elementwise_launch(registry.TENSOR_OP_WEIGHT_PACKS[pass_name], dtype, int(np.prod(packed_dy))),
                    _launch_of(variant, dtype, grid), elementwise_launch("wgrad_splitk_reduce", dtype, weights))
        return ConvPlan(launches=launches, wgrad_splits=splits, wgrad_pixels_per_split=per_split,
                        workspace_bytes=tensor_op_workspace_bytes(pass_name, g, dtype, variant), **common)
    if variant.family == TENSOR_CORE:  # pack the operands, then the GEMM on the packed copies
        # dgrad: dy packed once, then per stride phase its taps of w packed flipped and the fprop of dy
        convs = [g] if pass_name == "fprop" else [p.conv for p in registry.tensor_op_dgrad_phases(g)]
        launches = []
        for conv in convs:
            packed_input, packed_weight = registry.tensor_op_workspace_shapes(conv, dtype)
            if not launches:
                launches.append(elementwise_launch(registry.TENSOR_OP_PACK_INPUT, dtype, int(np.prod(packed_input))))
            launches += [elementwise_launch(registry.TENSOR_OP_WEIGHT_PACKS[pass_name], dtype,
                                            int(np.prod(packed_weight))),
                         _launch_of(variant, dtype, gemm_grid("fprop", conv, variant))]
        return ConvPlan(launches=tuple(launches), workspace_bytes=tensor_op_workspace_bytes(pass_name, g, dtype),
                        **common)
    if variant.family == DIRECT:  # the depthwise stencil: a block per output tile of one plane
        P, Q, channels = (g.P, g.Q, g.K) if pass_name == "fprop" else (g.H, g.W, g.C)
        tiles = ceil_div(P, registry.DEPTHWISE_TILE_P) * ceil_div(Q, registry.DEPTHWISE_TILE_Q)
        return ConvPlan(launches=(_launch_of(variant, dtype, (tiles, channels, g.N)),), **common)
    if pass_name == "dgrad" and variant.tile.warp_m is not None:  # one launch per stride phase
        t = variant.tile
        return ConvPlan(launches=tuple(
            replace(_launch_of(variant, dtype, (ceil_div(g.N * rows * columns, t.block_m),
                                                ceil_div(g.channels_per_group, t.block_n), g.groups)),
                    scalars=(a, b))
            for a, b, rows, columns in dgrad_phases(g)), **common)
    if pass_name != "wgrad":
        return ConvPlan(launches=(_launch_of(variant, dtype, gemm_grid(pass_name, g, variant)),), **common)
    splits, per_split = wgrad_split(g, variant)
    weights = int(np.prod(g.weight_shape))
    launches = (_launch_of(variant, dtype, gemm_grid("wgrad", g, variant, splits)),
                elementwise_launch("wgrad_splitk_reduce", dtype, weights))
    return ConvPlan(launches=launches, wgrad_splits=splits, wgrad_pixels_per_split=per_split,
                    workspace_bytes=splits * weights * accumulation_dtype(dtype).itemsize, **common)


def _plan_im2col(pass_name, g, dtype, algo, reason, free_after_result) -> ConvPlan | None:
    common = dict(pass_name=pass_name, geometry=g, dtype=dtype, requested=algo, algorithm=IM2COL,
                  variant=IM2COL, reason=reason)
    if g.is_pointwise and pass_name != "wgrad":  # x[n] already is the column matrix of image n
        return ConvPlan(launches=(), pointwise=True, batch_chunks=((0, g.N),), **common)
    budget = im2col_budget(g, dtype.itemsize, free_after_result)
    if budget is None:
        return None
    chunk = im2col_batch_chunk(g, dtype.itemsize, budget)
    launches = [im2col_launch(g, dtype, chunk)]
    if pass_name == "dgrad":  # the column gradient is folded back; im2col is not needed
        launches = [elementwise_launch("col2im_nchw", dtype, chunk * g.C * g.H * g.W)]
    return ConvPlan(launches=tuple(launches), batch_chunks=batch_chunks(g, chunk),
                    workspace_bytes=chunk * im2col_bytes_per_image(g, dtype.itemsize), **common)


def plan_pool(op: str, g: PoolGeometry, dtype) -> PoolPlan:
    """The one grid-stride launch of a pooling pass, over its output (forward) or its input (backward)."""
    if op not in registry.pool_ops():
        raise ValueError(f"unknown pooling op {op!r}; expected one of {registry.pool_ops()}")
    dtypes = registry.get(op).dtypes
    if np.dtype(dtype) not in dtypes:
        raise TypeError(f"{op}: no kernel for dtype {np.dtype(dtype)}; it exists for {', '.join(map(str, dtypes))}")
    (kh, kw), (dh, dw), (pt, pb, pl, pr) = g.kernel, g.dilation, g.pad
    # pooling.cu's window arithmetic: positions up to the padded extent plus a window, divisors up to kh * kw.
    _launch.check_extents("pool2d", H_times_W=g.H * g.W, P_times_Q=g.P * g.Q, kernel_area=kh * kw,
                          padded_H=g.H + pt + pb + kh * dh + g.stride[0],
                          padded_W=g.W + pl + pr + kw * dw + g.stride[1])
    shape = g.input_shape if op.endswith("backward") else g.output_shape
    return PoolPlan(elementwise_launch(op, dtype, int(np.prod(shape))), g)


def with_grid(plan, index: int, grid) -> "ConvPlan | PoolPlan":
    """The plan with launch ``index`` over another grid: only grid-stride kernels allow it (the tests
    shrink grids this way so that every grid-stride loop runs more than once)."""
    if isinstance(plan, PoolPlan):
        launch = plan.launch
    else:
        launch = plan.launches[index]
    if not launch.variant.grid_stride:
        raise ValueError(f"{launch.variant.name} covers exactly its planned grid; it is not a grid-stride kernel")
    launch = replace(launch, grid=tuple(grid) + (1,) * (3 - len(grid)))
    if isinstance(plan, PoolPlan):
        return replace(plan, launch=launch)
    launches = list(plan.launches)
    launches[index] = launch
    return replace(plan, launches=tuple(launches))


__all__ = ["PASS_NAMES", "IM2COL_WORKSPACE_BYTES", "WGRAD_TARGET_BLOCKS", "WGRAD_MIN_PIXELS_PER_SPLIT", "IM2COL",
           "KernelLaunch", "ConvPlan", "PoolPlan", "elementwise_grid", "check_geometry", "gemm_grid",
           "wgrad_split", "im2col_bytes_per_image", "im2col_batch_chunk", "batch_chunks", "im2col_budget",
           "result_shape", "result_bytes", "fixed_rule", "rule_variant", "candidates", "check_algo", "plan_conv",
           "plan_pool", "with_grid", "elementwise_launch", "im2col_launch", "dgrad_phases",
           "depthwise_traffic", "tensor_op_workspace_bytes"]
