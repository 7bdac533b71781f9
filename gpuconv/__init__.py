"""gpuconv: convolutions you can read, train with and benchmark, on any NVIDIA GPU or on the CPU.

NumPy arrays run on the CPU, CuPy arrays on the GPU through gpuconv's own CUDA
kernels; the textbook NumPy path in ``gpuconv.reference`` is the ground truth.
``gpuconv.Tensor`` adds autograd on top: ``loss.backward()``.
"""
__version__ = "0.1.0"

from ._backend import (  # noqa: E402
    CUDAUnavailableError,
    GPUOutOfMemoryError,
    cuda_available,
    cuda_unavailable_reason,
    to_device,
)
from ._shapes import ConvGeometry, PoolGeometry  # noqa: E402
from .autograd import Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: E402
from .functional import (  # noqa: E402
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    avg_pool1d,
    avg_pool2d,
    avg_pool2d_grad,
    conv1d,
    conv2d,
    conv2d_grad_bias,
    conv2d_grad_input,
    conv2d_grad_weight,
    conv_transpose2d,
    global_avg_pool2d,
    global_max_pool2d,
    max_pool1d,
    max_pool2d,
    max_pool2d_grad,
    max_unpool1d,
    max_unpool2d,
    pad,
)
from .ops import cat, stack  # noqa: E402
from .precision import get_float32_matmul_precision, set_float32_matmul_precision  # noqa: E402
from . import amp, nn, optim  # noqa: E402
from .checkpoint import load, save  # noqa: E402

__all__ = [
    "__version__", "conv1d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
    "conv_transpose2d", "pad", "max_pool1d", "max_pool2d", "max_pool2d_grad", "avg_pool1d", "avg_pool2d",
    "avg_pool2d_grad", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "global_avg_pool2d", "global_max_pool2d", "max_unpool1d", "max_unpool2d", "ConvGeometry", "PoolGeometry",
    "CUDAUnavailableError", "GPUOutOfMemoryError", "cuda_available", "cuda_unavailable_reason", "to_device",
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "cat", "stack", "save", "load",
    "nn", "optim", "amp", "set_float32_matmul_precision", "get_float32_matmul_precision",
]
