"""gpuconv's CUDA path: our own kernels (kernels/*.cu) compiled by NVRTC through CuPy.

Modules: ``loader`` (find, assemble and compile the kernel files), ``conv``
(convolution forward / grad_input / grad_weight, im2col and implicit-GEMM),
``pool`` (max and average pooling), ``info`` (what ``gpuconv info`` reports).
Importing this package needs neither CuPy nor a GPU; calling into ``conv`` or
``pool`` does.
"""
