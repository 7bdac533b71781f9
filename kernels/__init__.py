"""CUDA C sources of gpuconv's kernels, shipped as package data (``gpuconv.kernels``)."""
