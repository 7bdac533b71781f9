"""Layers, losses and the Module machinery (``gpuconv.nn``), with PyTorch's names and arguments."""
from . import functional
from .init import manual_seed
from .layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveMaxPool1d, AdaptiveMaxPool2d, AvgPool1d, AvgPool2d,
                     BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, ConvTranspose2d, Dropout, Flatten, Identity, LeakyReLU,
                     Linear, LogSoftmax, MaxPool1d, MaxPool2d, MaxUnpool1d, MaxUnpool2d, ReLU, Sigmoid, Softmax, Tanh)
from .loss import CrossEntropyLoss, MSELoss, NLLLoss
from .module import (IncompatibleKeys, Module, ModuleList, Parameter, Sequential, load_arrays, read_metadata,
                     save_arrays)

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "IncompatibleKeys", "Conv1d", "Conv2d",
           "ConvTranspose2d", "Linear", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "MaxUnpool1d", "MaxUnpool2d", "Flatten", "Dropout", "BatchNorm1d",
           "BatchNorm2d", "CrossEntropyLoss", "NLLLoss", "MSELoss", "functional", "manual_seed", "save_arrays",
           "load_arrays", "read_metadata"]
