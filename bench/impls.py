"""The implementations a benchmark times, each behind one interface: ``prepare(case) -> Prepared``.

GPU: gpuconv's own kernels (``gpuconv:auto``, what users get: autotuned unless
GPUCONV_AUTOTUNE=0; the families ``gpuconv:im2col`` and ``gpuconv:implicit_gemm``;
and one ``gpuconv:<variant>`` per implicit-GEMM variant of the kernel registry,
for its own pass only), cuDNN
through PyTorch on the very same CuPy buffers (``cudnn`` with TF32 off,
``cudnn-tf32`` with it on, float32 only: the baseline of gpuconv's TF32
variants), and the cuBLAS GEMM of the pass's GEMM-equivalent size
(``cublas-gemm``, a ceiling). CPU: gpuconv's NumPy paths (``numpy``: the
default fast path; ``numpy-reference``: the textbook im2col path) and
PyTorch's CPU convolution (``torch-cpu``). Every dtype of ``DTYPES``
(float32, float16, bfloat16) runs on both sides: tensors cross to PyTorch by
gpuconv.torch's exchange (bfloat16 as its bits), without a copy.

Every implementation's first result is checked against a float64 ground truth
(gpuconv's NumPy reference on the same inputs, exact in every dtype), so a
fast but wrong kernel is visible as a large ``max_rel_err``.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import gpuconv
from gpuconv import reference
from gpuconv._shapes import BFLOAT16
from gpuconv.cuda import registry

from .flops import gemm_shape


#: The dtypes a benchmark runs, by the name its records carry, and their NumPy (and CuPy) dtype.
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BFLOAT16}


@dataclass
class Case:
    """One layer x pass x dtype on one device, with its inputs already there."""
    suite: str
    layer: object              # gpuconv.suites.Layer
    geometry: object           # gpuconv.ConvGeometry at the run's batch size
    pass_name: str
    dtype: str
    device: str                # "cuda" or "cpu"
    xp: object                 # numpy or cupy
    inputs: dict               # x, w, dy on the device, in dtype
    seed: int = 0


@dataclass
class Prepared:
    run: Callable[[], object]                       # the timed call; returns the result
    reference: Callable[[], np.ndarray] | None = None  # float64 expected result, when not the conv's own
    settings: dict = field(default_factory=dict)    # what was set up for it (precision, algorithm, ...)


@dataclass(frozen=True)
class Impl:
    name: str
    device: str
    prepare: Callable[[Case], Prepared]
    requires: Callable[[], str | None]   # None when usable here, else why not
    dtypes: tuple = tuple(DTYPES)
    role: str = "gpuconv"                # "gpuconv" (ours), "baseline" (cuDNN / torch-cpu) or "ceiling"
    precision: str = "native"            # "tf32" when float32 math runs in TF32
    passes: tuple = registry.CONV_PASSES  # the passes it computes


# ------------------------------------------------------------------ checks ---

#: max_rel_err above this marks a result wrong (normwise over the max: max|out - ref| / max|ref|). bfloat16
#: rounds each output by up to 2**-8 of it (8 significant bits); 2e-2 leaves room for rounded partial sums.
TOLERANCE = {"float32": 1e-4, "tf32": 5e-3, "float16": 1e-2, "bfloat16": 2e-2}


def tolerance(impl: Impl, dtype: str) -> float:
    if dtype == "float32" and impl.precision == "tf32":
        return TOLERANCE["tf32"]
    return TOLERANCE[dtype]


def to_host(out) -> np.ndarray:
    """NumPy copy of a NumPy / CuPy / PyTorch result."""
    if isinstance(out, np.ndarray):
        return out
    if hasattr(out, "detach"):  # torch.Tensor; NumPy has no torch.bfloat16, float32 holds it exactly
        out = out.detach().cpu()
        return (out.float() if str(out.dtype) == "torch.bfloat16" else out).numpy()
    if hasattr(out, "get"):     # cupy.ndarray
        return out.get()
    return np.asarray(out)


def max_rel_err(out, expected: np.ndarray) -> float:
    """max|out - expected| / max|expected| in float64; inf for a NaN/inf anywhere in out."""
    out = to_host(out).astype(np.float64)
    if out.shape != expected.shape:
        raise ValueError(f"result has shape {out.shape}, expected {expected.shape}")
    if not np.isfinite(out).all():
        return float("inf")
    scale = float(np.abs(expected).max())
    err = float(np.abs(out - expected).max())
    return err / scale if scale > 0 else err


def exact_in_every_dtype(values, xp=np):
    """``values`` (finite) rounded to float16, then to bfloat16's 8 significant bits (to nearest even, on the
    float32 bits: no bfloat16 support needed in xp), as float32: exact in float16 (whose subnormal spacing
    2**-24 the second rounding keeps), bfloat16 and float32 alike."""
    bits = values.astype(xp.float16).astype(xp.float32).view(xp.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(xp.uint32).view(xp.float32)


def make_host_inputs(g, seed: int) -> dict:
    """x, w and dy for a geometry: uniform in [-1, 1), ``exact_in_every_dtype``, held in float64.

    The same values feed every dtype, so one float64 reference per pass serves them all.
    """
    rng = np.random.default_rng(seed)

    def draw(shape):
        return exact_in_every_dtype(rng.random(shape, dtype=np.float32) * 2 - 1).astype(np.float64)

    return {"x": draw(g.input_shape), "w": draw(g.weight_shape), "dy": draw(g.output_shape)}


#: Bytes of one reference im2col matrix (float64) per batch chunk: bounds the check's memory on big layers.
REFERENCE_CHUNK_BYTES = 256 << 20


def conv_reference(host_inputs: dict, g, pass_name: str) -> np.ndarray:
    """The float64 ground truth of one pass, by gpuconv's textbook NumPy path, over the whole batch.

    The batch goes through in chunks (images are independent in fprop and dgrad, and
    wgrad sums over them), so a large layer at batch 32 does not need a 10 GB im2col.
    """
    x, w, dy = host_inputs["x"], host_inputs["w"], host_inputs["dy"]
    col_bytes_per_image = 8 * g.P * g.Q * (g.C // g.groups) * g.R * g.S
    chunk = max(1, min(g.N, REFERENCE_CHUNK_BYTES // max(1, col_bytes_per_image)))
    parts = []
    for n0 in range(0, g.N, chunk):
        part = dataclasses.replace(g, N=min(chunk, g.N - n0))
        images = slice(n0, n0 + part.N)
        if pass_name == "fprop":
            parts.append(reference.conv2d_forward(x[images], w, part))
        elif pass_name == "dgrad":
            parts.append(reference.conv2d_grad_input(dy[images], w, part))
        else:
            parts.append(reference.conv2d_grad_weight(x[images], dy[images], part))
    if pass_name == "wgrad":
        return np.sum(parts, axis=0)
    return np.concatenate(parts, axis=0)


# ----------------------------------------------------------- availability ---

def _cuda_reason():
    return gpuconv.cuda_unavailable_reason()


@functools.lru_cache(maxsize=None)
def _torch_reason(need_cuda: bool):
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch is not importable ({exc})"
    if not need_cuda:
        return None
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} has no usable CUDA"
    if not torch.backends.cudnn.is_available():
        return f"PyTorch {torch.__version__} has no cuDNN"
    return _cuda_reason()


def _always():
    return None


# ------------------------------------------------------------ gpuconv ---

def _gpuconv_call(case: Case, algo: str):
    """The public functional API, as a user calls it (validation and dispatch included)."""
    g, inp = case.geometry, case.inputs
    kw = dict(stride=g.stride, padding=g.pad, dilation=g.dilation, groups=g.groups, algo=algo)
    if case.pass_name == "fprop":
        x, w = inp["x"], inp["w"]
        return lambda: gpuconv.conv2d(x, w, **kw)
    if case.pass_name == "dgrad":
        dy, w = inp["dy"], inp["w"]
        return lambda: gpuconv.conv2d_grad_input(dy, w, g.input_shape, **kw)
    x, dy = inp["x"], inp["dy"]
    return lambda: gpuconv.conv2d_grad_weight(x, dy, g.weight_shape, **kw)


def _gpuconv(algo: str):
    def prepare(case: Case) -> Prepared:
        return Prepared(_gpuconv_call(case, algo), settings={"algo": algo})
    return prepare


# ------------------------------------------------------------- PyTorch ---

def _torch_call(case: Case):
    """conv2d / conv2d_input / conv2d_weight (both wrap aten.convolution_backward with one output), on tensors
    viewing the case's NumPy or CuPy arrays (gpuconv.torch's exchange, which knows bfloat16)."""
    import torch
    import torch.nn.functional as F
    from gpuconv.torch import _as_tensor

    g = case.geometry
    top, bottom, left, right = g.pad
    if top != bottom or left != right:
        raise ValueError(f"PyTorch's convolution takes symmetric padding only; this layer pads "
                         f"(top, bottom, left, right) = {g.pad}")
    args = (g.stride, (top, left), g.dilation, g.groups)
    t = {k: _as_tensor(v) for k, v in case.inputs.items()}
    if case.pass_name == "fprop":
        return lambda: F.conv2d(t["x"], t["w"], None, *args)
    if case.pass_name == "dgrad":
        return lambda: torch.nn.grad.conv2d_input(g.input_shape, t["w"], t["dy"], *args)
    return lambda: torch.nn.grad.conv2d_weight(t["x"], g.weight_shape, t["dy"], *args)


def set_cudnn_tf32(torch, enabled: bool) -> str:
    """Allow or forbid TF32 in cuDNN convolutions; returns the setting's name as PyTorch knows it."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # PyTorch >= 2.9; never mix with the legacy flag
        conv.fp32_precision = "tf32" if enabled else "ieee"
        return f"cudnn.conv.fp32_precision={conv.fp32_precision}"
    torch.backends.cudnn.allow_tf32 = enabled
    return f"cudnn.allow_tf32={enabled}"


def _torch_on_cupy_stream(torch, cp):
    """PyTorch on CuPy's device; refused unless on CuPy's current stream, where the timer records its events."""
    torch.cuda.set_device(cp.cuda.Device().id)
    torch_stream, cupy_stream = torch.cuda.current_stream().cuda_stream, cp.cuda.get_current_stream().ptr
    if torch_stream != cupy_stream:
        raise RuntimeError(f"PyTorch's current stream ({torch_stream:#x}) is not CuPy's ({cupy_stream:#x}); "
                           f"the events would not bracket PyTorch's work")


def _cudnn(tf32: bool):
    def prepare(case: Case) -> Prepared:
        import torch

        _torch_on_cupy_stream(torch, case.xp)
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True  # autotune each shape on its first call (in first_call_ms)
        precision = set_cudnn_tf32(torch, tf32)
        return Prepared(_torch_call(case),  # zero-copy views of the CuPy arrays
                        settings={"cudnn_benchmark": True, "precision": precision})
    return prepare


def _torch_cpu(case: Case) -> Prepared:
    import torch

    return Prepared(_torch_call(case), settings={"threads": torch.get_num_threads()})


# -------------------------------------------------------------- cuBLAS ---

def _cublas_gemm(case: Case) -> Prepared:
    """cuBLAS's product of the pass's GEMM-equivalent M x K times K x N, once per group: cupy.matmul, or for
    bfloat16 torch.matmul on the same buffers (CuPy's bfloat16 matmul is no plain cuBLAS bfloat16 GEMM)."""
    cp = case.xp
    gemm = gemm_shape(case.geometry, case.pass_name)
    rng = cp.random.default_rng(case.seed)
    dtype = DTYPES[case.dtype]

    def draw(shape):  # exact in every dtype, like the convolution inputs
        return exact_in_every_dtype(rng.random(shape, dtype=cp.float32) * 2 - 1, cp).astype(dtype)

    a, b = draw((gemm.batch, gemm.M, gemm.K)), draw((gemm.batch, gemm.K, gemm.N))
    if gemm.batch == 1:
        a, b = a[0], b[0]
    out = cp.empty(a.shape[:-1] + (gemm.N,), dtype=dtype)

    def expected():
        return cp.matmul(a.astype(cp.float64), b.astype(cp.float64)).get()

    settings = {"gemm": gemm.as_dict()}
    if dtype != BFLOAT16:
        return Prepared(lambda: cp.matmul(a, b, out=out), reference=expected, settings=settings)
    reason = _torch_reason(True)
    if reason:
        raise RuntimeError(f"cublas-gemm runs bfloat16 through torch.matmul: {reason}")
    import torch
    from gpuconv.torch import _as_tensor

    _torch_on_cupy_stream(torch, cp)
    ta, tb, tout = _as_tensor(a), _as_tensor(b), _as_tensor(out)
    return Prepared(lambda: torch.matmul(ta, tb, out=tout), reference=expected,
                    settings={**settings, "via": "torch.matmul"})


# ------------------------------------------------------------ registry ---

IMPLS = {impl.name: impl for impl in (
    Impl("gpuconv:auto", "cuda", _gpuconv("auto"), _cuda_reason),
    Impl("gpuconv:im2col", "cuda", _gpuconv("im2col"), _cuda_reason),
    Impl("gpuconv:implicit_gemm", "cuda", _gpuconv("implicit_gemm"), _cuda_reason),
    *(Impl(f"gpuconv:{v.name}", "cuda", _gpuconv(v.name), _cuda_reason, passes=(v.op,),
           dtypes=tuple(str(d) for d in v.dtypes if str(d) in DTYPES), precision="tf32" if v.tf32 else "native")
      for p in registry.CONV_PASSES for v in registry.conv_variants(p)),
    Impl("cudnn", "cuda", _cudnn(tf32=False), functools.partial(_torch_reason, True), role="baseline"),
    Impl("cudnn-tf32", "cuda", _cudnn(tf32=True), functools.partial(_torch_reason, True), dtypes=("float32",),
         role="baseline", precision="tf32"),
    Impl("cublas-gemm", "cuda", _cublas_gemm, _cuda_reason, role="ceiling"),
    Impl("numpy", "cpu", _gpuconv("auto"), _always),
    Impl("numpy-reference", "cpu", _gpuconv("reference"), _always),
    Impl("torch-cpu", "cpu", _torch_cpu, functools.partial(_torch_reason, False), role="baseline"),
)}

DEFAULT_IMPLS = {
    "cuda": ("gpuconv:auto", "gpuconv:im2col", "gpuconv:implicit_gemm",
             *(f"gpuconv:{v.name}" for p in registry.CONV_PASSES for v in registry.conv_variants(p)),
             "cudnn", "cudnn-tf32", "cublas-gemm"),
    "cpu": ("numpy", "torch-cpu"),
}
#: What ratio_vs_cudnn divides by, per device; gpuconv's TF32 runs are held against cuDNN's (``baseline_of``).
BASELINE = {"cuda": "cudnn", "cpu": "torch-cpu"}
TF32_BASELINE = "cudnn-tf32"


def baseline_of(impl_name: str, device: str) -> str:
    """The baseline a record of this impl is compared with: cudnn-tf32 for gpuconv's TF32 variants (both
    round float32 to TF32), else the device's BASELINE."""
    impl = IMPLS.get(impl_name)
    if device == "cuda" and impl is not None and impl.role == "gpuconv" and impl.precision == "tf32":
        return TF32_BASELINE
    return BASELINE[device]


def resolve_impls(names, device: str) -> tuple:
    """(usable Impls in the order given, {name: why skipped}) for a device; unknown names raise."""
    names = list(names) if names else list(DEFAULT_IMPLS[device])
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise ValueError(f"unknown impl(s) {unknown}; known: {', '.join(IMPLS)}")
    usable, skipped = [], {}
    for name in names:
        impl = IMPLS[name]
        if impl.device != device:
            skipped[name] = f"runs on {impl.device}, this run is on {device}"
            continue
        reason = impl.requires()
        if reason:
            skipped[name] = reason
        else:
            usable.append(impl)
    return usable, skipped
