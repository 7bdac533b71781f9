"""gpuconv inside PyTorch: our convolutions and pooling as ``torch.autograd.Function``s, drop-in modules and
``convert(model)``, so that gpuconv's kernels run in real PyTorch models, optimizers and distributed training.

``conv2d``, ``conv_transpose2d``, ``max_pool2d`` and ``avg_pool2d`` take ``torch.nn.functional``'s arguments
(plus ``algo=``, as ``gpuconv.conv2d``) and run forward and backward on gpuconv's array API
(``gpuconv.functional``): CPU tensors as NumPy views (the CPU path), CUDA tensors as CuPy views through
DLPack (our CUDA kernels), with no copy of a contiguous tensor. On a GPU each operation runs on PyTorch's
current stream of the tensor's device (CuPy's current stream is set to it for the call), so our kernels are
ordered with PyTorch's work and the DLPack exchange needs no synchronisation; their memory comes from
CuPy's pool. The autograd engine runs each backward on its forward's stream, so the same holds there.

Rules, the same for every function:

* dtypes: ``DTYPE_SUPPORT`` is the one table (float16, bfloat16, float32, float64). bfloat16 crosses as its
  bits (an int16 view: NumPy has no bfloat16, nor have older CuPys' DLPack), still without a copy; gpuconv
  accumulates it, like float16, in float32. Under ``torch.autocast`` convolutions compute in the autocast
  dtype (CPU's default bfloat16, CUDA's float16) and return it, as PyTorch's do; pooling keeps its input's
  dtype. A dtype the table lacks is computed in float32 under autocast, and refused outside it.
* layout: non-contiguous inputs, channels_last ones included, are copied to contiguous NCHW first (one copy
  of the tensor, per call); results are contiguous NCHW, whatever the input's memory format.
* gradients: only those asked for are computed (``ctx.needs_input_grad``); ``torch.no_grad()`` records
  nothing; double backward is refused (the backward is not itself differentiable).
* CPU threads: start Python with ``OMP_WAIT_POLICY=PASSIVE`` in the environment (PyTorch reads it when it
  loads). Otherwise PyTorch's OpenMP threads spin after each of its operations and take the cores from
  NumPy's BLAS threads, which run our CPU convolutions next: a MobileNet training step on 2 cores took 403 ms
  instead of 57 (``python -m bench net`` sets it for its CPU runs).
* padding of ``conv2d`` also takes what ``gpuconv.conv2d`` takes: a 4-tuple (top, bottom, left, right) and
  ``"full"``; ``"same"`` is PyTorch's rule at stride 1 (and TensorFlow's at larger strides, which PyTorch
  refuses).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError("gpuconv.torch needs PyTorch, which is not installed here: "
                      "pip install 'gpuconv[torch]'") from exc

from torch.autograd.function import once_differentiable

from . import functional as arrays
from ._backend import require_cuda
from ._shapes import BFLOAT16, PoolGeometry, conv_transpose_geometry

#: Every dtype gpuconv.torch knows, and whether gpuconv computes in it: None where it does, else why not.
#: The one dtype rule of the bridge; torch.autocast falls back to float32 where this table says no.
DTYPE_SUPPORT = {
    torch.float16: None,
    torch.bfloat16: None,
    torch.float32: None,
    torch.float64: None,
}


def supports_dtype(dtype) -> bool:
    """Whether gpuconv computes in this torch dtype."""
    return dtype in DTYPE_SUPPORT and DTYPE_SUPPORT[dtype] is None


def _dtype_problem(dtype) -> str | None:
    if dtype not in DTYPE_SUPPORT:
        return "gpuconv computes in " + ", ".join(str(d) for d in DTYPE_SUPPORT if supports_dtype(d))
    return DTYPE_SUPPORT[dtype]


# ------------------------------------------------------------- tensors <-> arrays ---

def _check_tensors(op: str, **tensors) -> None:
    """The named tensors (None skipped) are tensors on one CPU or CUDA device; the error names the tensor."""
    named = {name: t for name, t in tensors.items() if t is not None}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{op}: {name} is on {t.device}; gpuconv runs on the CPU and on CUDA devices")
    (first, t0), *rest = named.items()
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{op}: {first} is on {t0.device} but {name} on {t.device}; move them to one device")


def _check_dtypes(op: str, **tensors) -> None:
    """The named tensors (None skipped) share one dtype that gpuconv computes in (``DTYPE_SUPPORT``)."""
    named = {name: t for name, t in tensors.items() if t is not None}
    for name, t in named.items():
        problem = _dtype_problem(t.dtype)
        if problem:
            raise TypeError(f"{op}: {name} is {t.dtype}: {problem}")
    (first, t0), *rest = named.items()
    for name, t in rest:
        if t.dtype != t0.dtype:
            raise TypeError(f"{op}: {first} is {t0.dtype} but {name} is {t.dtype}; cast them to one dtype")


def _checked(op: str, op_casts: bool, **tensors) -> tuple:
    """The tensors, checked (``_check_tensors``), cast as torch.autocast has the operation see them
    (``_autocast``), then checked for their dtypes (``_check_dtypes``)."""
    _check_tensors(op, **tensors)
    cast = dict(zip(tensors, _autocast(op_casts, *tensors.values())))
    _check_dtypes(op, **cast)
    return tuple(cast.values())


def _stream_of(cupy, stream):
    """A CuPy stream object for a PyTorch CUDA stream (the same CUDA stream, not a new one)."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)  # CuPy >= 14: the CUDA stream protocol
    if from_external is not None:
        try:
            return from_external(stream)
        except (TypeError, AttributeError):  # a PyTorch without __cuda_stream__
            pass
    with warnings.catch_warnings():  # deprecated since CuPy 14, the only way before
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)


@contextlib.contextmanager
def _running_on(device: torch.device):
    """Run gpuconv for tensors on ``device``: on a GPU with that device and PyTorch's current stream of it as
    CuPy's current device and stream (kernel launches, cuBLAS and DLPack exchanges all use them)."""
    if device.type == "cpu":
        yield
        return
    cupy = require_cuda()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), _stream_of(cupy, torch.cuda.current_stream(index)):
        yield


def _as_array(t):
    """A gpuconv array on t's memory: a NumPy view of a CPU tensor, a CuPy view (DLPack) of a CUDA one. A
    non-contiguous tensor (channels_last too) is copied to a contiguous NCHW one first. Call it inside
    ``_running_on`` (the DLPack exchange is ordered on the current stream)."""
    if t is None:
        return None
    t = t.detach().contiguous()
    bits = t.dtype == torch.bfloat16  # .numpy() refuses bfloat16 (older CuPys' DLPack too): its bits cross as int16
    if bits:
        t = t.view(torch.int16)
    a = t.numpy() if t.device.type == "cpu" else require_cuda().from_dlpack(t)
    return a.view(BFLOAT16) if bits else a


def _as_tensor(a):
    """A tensor on a gpuconv result's memory (no copy; inside ``_running_on`` for CuPy arrays)."""
    if a is None:
        return None
    bits = a.dtype == BFLOAT16  # back as int16 bits too (see _as_array)
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a)  # from_numpy takes no negative strides
        if not a.flags.writeable:  # and warns on read-only ones
            a = a.copy()
        t = torch.from_numpy(a.view(np.int16) if bits else a)
    else:
        t = torch.from_dlpack(a.view(np.int16) if bits else a)
    return t.view(torch.bfloat16) if bits else t


def _autocast_dtype(device: torch.device, op_casts: bool, dtype):
    """The dtype an operation computes in under torch.autocast on ``device`` (None: autocast is off, or leaves
    it). Convolutions (``op_casts``) go to the autocast dtype where gpuconv has it, else float32; pooling keeps
    its input's dtype unless gpuconv lacks it (then float32). float64 is never cast, as in PyTorch."""
    if not torch.is_autocast_enabled(device.type) or dtype == torch.float64:
        return None
    wanted = torch.get_autocast_dtype(device.type) if op_casts else dtype
    return wanted if supports_dtype(wanted) else torch.float32


def _autocast(op_casts: bool, *tensors):
    """The tensors as torch.autocast has an operation see them (``_autocast_dtype``); the casts are
    differentiable, so gradients reach the original tensors in their own dtype."""
    x = tensors[0]
    if not x.is_floating_point():
        return tensors
    dtype = _autocast_dtype(x.device, op_casts, x.dtype)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def _batched(op: str, input, run):
    """``run(input)`` on a 4-D input; a 3-D (unbatched, C x H x W) one runs as a batch of one, as in PyTorch."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:
        return run(input.unsqueeze(0)).squeeze(0)
    if isinstance(input, torch.Tensor) and input.dim() != 4:
        raise ValueError(f"{op}: expected a 3-D (unbatched) or 4-D (batched) input, got shape {tuple(input.shape)}")
    return run(input)


# ------------------------------------------------------------------- convolution ---

class _Conv2d(torch.autograd.Function):
    """y = conv2d(x, w) + b; backward: dgrad (x), wgrad (w), the sum over N, P, Q (b), each only when asked."""

    @staticmethod
    def forward(ctx, x, weight, bias, args):
        with _running_on(x.device):
            y = _as_tensor(arrays.conv2d(_as_array(x), _as_array(weight), _as_array(bias), **args))
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)  # dgrad needs w, wgrad x
        ctx.args, ctx.input_shape, ctx.weight_shape = args, tuple(x.shape), tuple(weight.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with _running_on(grad.device):
            dy = _as_array(grad)
            dx = arrays.conv2d_grad_input(dy, _as_array(weight), ctx.input_shape, **ctx.args) if need_x else None
            dw = arrays.conv2d_grad_weight(_as_array(x), dy, ctx.weight_shape, **ctx.args) if need_w else None
            db = arrays.conv2d_grad_bias(dy) if need_b else None
            return _as_tensor(dx), _as_tensor(dw), _as_tensor(db), None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto"):
    """``torch.nn.functional.conv2d`` on gpuconv: forward fprop, backward dgrad and wgrad.

    input (N, C, H, W) or (C, H, W), weight (K, C/groups, kH, kW), bias (K,) or None. ``algo`` as in
    ``gpuconv.conv2d`` (CPU: "auto", "reference"; GPU: "auto", a family or a kernel variant).
    """
    input, weight, bias = _checked("conv2d", True, input=input, weight=weight, bias=bias)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, algo=algo)
    return _batched("conv2d", input, lambda x: _Conv2d.apply(x, weight, bias, args))


class _ConvTranspose2d(torch.autograd.Function):
    """y = dgrad(x, w) + b, the input gradient of the convolution ``g`` (``conv_transpose_geometry``) whose
    output x is; backward: that convolution (x), its wgrad with the roles of x and y swapped (w), the sum (b)."""

    @staticmethod
    def forward(ctx, x, weight, bias, g, algo):
        with _running_on(x.device):
            y = _as_tensor(arrays.conv_transpose2d_forward(_as_array(x), _as_array(weight), _as_array(bias), g,
                                                           algo))
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.g, ctx.algo, ctx.input_hw, ctx.weight_shape = g, algo, tuple(x.shape[2:]), tuple(weight.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with _running_on(grad.device):
            dy = _as_array(grad)
            dx = arrays.conv_transpose2d_grad_input(dy, _as_array(weight), ctx.g, ctx.input_hw, ctx.algo) \
                if need_x else None
            dw = arrays.conv_transpose2d_grad_weight(dy, _as_array(x), ctx.g, ctx.weight_shape, ctx.algo) \
                if need_w else None
            db = arrays.conv2d_grad_bias(dy) if need_b else None
            return _as_tensor(dx), _as_tensor(dw), _as_tensor(db), None, None


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     algo="auto"):
    """``torch.nn.functional.conv_transpose2d`` on gpuconv: forward dgrad, backward fprop and wgrad.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out/groups, kH, kW), bias (C_out,) or None.
    """
    input, weight, bias = _checked("conv_transpose2d", True, input=input, weight=weight, bias=bias)

    def run(x):
        g = conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
        return _ConvTranspose2d.apply(x, weight, bias, g, algo)  # its forward checks the bias
    return _batched("conv_transpose2d", input, run)


# ----------------------------------------------------------------------- pooling ---

class _MaxPool2d(torch.autograd.Function):
    """y (and the int64 indices, not differentiable) of max pooling over ``g``; backward: to each first maximum."""

    @staticmethod
    def forward(ctx, x, g, return_indices):
        with _running_on(x.device):
            result = arrays.pool_max(_as_array(x), g, return_indices)
            y, indices = result if return_indices else (result, None)
            y = _as_tensor(y)
        ctx.save_for_backward(x)  # the gradient goes to each window's first maximum: x says where
        ctx.g = g
        if not return_indices:
            return y
        indices = _as_tensor(indices)
        ctx.mark_non_differentiable(indices)
        return y, indices

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, *_):
        (x,) = ctx.saved_tensors
        with _running_on(grad.device):
            return _as_tensor(arrays.pool_max_grad(_as_array(grad), _as_array(x), ctx.g)), None, None


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, count_include_pad, divisor_override):
        with _running_on(x.device):
            y = _as_tensor(arrays.pool_avg(_as_array(x), g, count_include_pad, divisor_override))
        ctx.g, ctx.args = g, (count_include_pad, divisor_override)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        with _running_on(grad.device):
            return _as_tensor(arrays.pool_avg_grad(_as_array(grad), ctx.g, *ctx.args)), None, None, None


def _pool_stride(stride):
    """None (the kernel size) for PyTorch's spellings of the default stride: None or an empty list."""
    return None if stride is None or (isinstance(stride, (tuple, list)) and not stride) else stride


def _refuse(op: str, reasons: list) -> None:
    if reasons:
        raise ValueError(f"{op}: {'; '.join(reasons)}; use PyTorch's own for this call")


def _unbatched(result, squeeze: bool):
    if not squeeze:
        return result
    return tuple(r.squeeze(0) for r in result) if isinstance(result, tuple) else result.squeeze(0)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``torch.nn.functional.max_pool2d`` on gpuconv; the gradient goes to each window's first maximum.
    ``return_indices`` gives PyTorch's per-plane flat indices (for ``max_unpool2d``)."""
    (input,) = _checked("max_pool2d", False, input=input)
    squeeze = input.dim() == 3
    x = input.unsqueeze(0) if squeeze else input
    if x.dim() != 4:
        raise ValueError(f"max_pool2d: expected a 3-D (unbatched) or 4-D (batched) input, got shape "
                         f"{tuple(input.shape)}")
    g = PoolGeometry.create(tuple(x.shape), kernel_size, _pool_stride(stride), padding, bool(ceil_mode), dilation)
    return _unbatched(_MaxPool2d.apply(x, g, bool(return_indices)), squeeze)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """``torch.nn.functional.avg_pool2d`` on gpuconv, PyTorch's divisor rules (``divisor_override`` too)."""
    (input,) = _checked("avg_pool2d", False, input=input)

    def run(x):
        g = PoolGeometry.create(tuple(x.shape), kernel_size, _pool_stride(stride), padding, bool(ceil_mode))
        return _AvgPool2d.apply(x, g, bool(count_include_pad), divisor_override)
    return _batched("avg_pool2d", input, run)


# ----------------------------------------------------------------------- modules ---

def _no_refusals(module) -> list:
    return []


def _transposed_conv_refusals(module) -> list:
    if module.padding_mode != "zeros":
        return [f"padding_mode={module.padding_mode!r} is not supported (only 'zeros')"]
    return []


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on gpuconv's convolution: the same arguments, parameters and state_dict, plus
    ``algo=`` (kept in ``self.algo``, not in the state_dict). A ``padding_mode`` other than 'zeros' pads the
    input first, as PyTorch's Conv2d does (with PyTorch's pad)."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algo = algo

    def forward(self, input):
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups, algo=self.algo)
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                      algo=self.algo)

    def extra_repr(self):
        return f"{super().extra_repr()}, algo={self.algo!r}"


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on gpuconv (forward on our dgrad kernels), plus ``algo=``; forward takes
    ``output_size`` as PyTorch's does. padding_mode other than 'zeros' is refused (PyTorch refuses it too)."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        _refuse("gpuconv.torch.ConvTranspose2d", _transposed_conv_refusals(self))
        self.algo = algo

    def forward(self, input, output_size=None):
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation, algo=self.algo)

    def extra_repr(self):
        return f"{super().extra_repr()}, algo={self.algo!r}"


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on gpuconv (dilation, ceil_mode and return_indices included)."""

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                          self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on gpuconv (divisor_override included)."""

    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


#: PyTorch's module -> (ours, why ours cannot stand in for one instance: a list of reasons).
_SWAPS = {
    torch.nn.Conv2d: (Conv2d, _no_refusals),
    torch.nn.ConvTranspose2d: (ConvTranspose2d, _transposed_conv_refusals),
    torch.nn.MaxPool2d: (MaxPool2d, _no_refusals),
    torch.nn.AvgPool2d: (AvgPool2d, _no_refusals),
}
_OURS = {ours: theirs for theirs, (ours, _) in _SWAPS.items()}


def convert(model: torch.nn.Module, algo: str = "auto") -> torch.nn.Module:
    """Run every ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d`` of ``model`` (the
    model itself included) on gpuconv, in place, and return the model.

    Each module becomes ours by a change of class, nothing else: its Parameter objects (so an optimizer built
    before keeps working), buffers, hooks, device and training mode stay, and a module used at several places
    is converted once. ``algo`` goes to every converted convolution (modules converted before get it too).
    Subclasses of those modules are left alone (their forward may differ), and so are modules with arguments
    gpuconv lacks (a ConvTranspose2d padding_mode other than 'zeros', which PyTorch refuses as well): one warning
    lists them.
    """
    left = []
    for name, module in model.named_modules():
        kind = _OURS.get(type(module), type(module))
        if kind not in _SWAPS:
            if isinstance(module, tuple(_SWAPS)) and type(module) not in _OURS:
                left.append(f"{name or 'the model'} ({type(module).__name__}: a subclass, its forward may differ)")
            continue
        ours, refusals = _SWAPS[kind]
        reasons = refusals(module)
        if reasons:
            left.append(f"{name or 'the model'} ({type(module).__name__}: {'; '.join(reasons)})")
            continue
        module.__class__ = ours
        if ours in (Conv2d, ConvTranspose2d):
            module.algo = algo
    if left:
        warnings.warn("gpuconv.torch.convert left these modules on PyTorch: " + ", ".join(left), stacklevel=2)
    return model


__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "Conv2d", "ConvTranspose2d", "MaxPool2d",
           "AvgPool2d", "convert", "DTYPE_SUPPORT", "supports_dtype"]
