"""Layers, losses and the Module machinery (``gpuconv.nn``), with PyTorch's argument names."""
from .init import manual_seed
from .layers import AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from .loss import CrossEntropyLoss
from .module import Module, Parameter, Sequential, load_arrays, save_arrays

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "Linear", "ReLU", "MaxPool2d", "AvgPool2d", "Flatten",
           "Dropout", "BatchNorm2d", "CrossEntropyLoss", "manual_seed", "save_arrays", "load_arrays"]
