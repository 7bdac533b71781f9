"""Losses, as modules with PyTorch's names and arguments: each returns a 0-d tensor (or per-sample losses)."""
from __future__ import annotations

from . import functional as F
from .module import Module


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits (N, C, ...) at integer class indices (N, ...), computed stably.

    ``reduction``: "mean" (over the samples not ignored), "sum" or "none"; ``ignore_index``: a target value
    that contributes nothing; ``label_smoothing``: eps mixes the one-hot target with the uniform distribution.
    """

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        F._check_reduction(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"


class NLLLoss(Module):
    """Negative log-likelihood of log-probabilities (the output of LogSoftmax) at integer targets."""

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        F._check_reduction(reduction)
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, input, target):
        return F.nll_loss(input, target, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(Module):
    """Mean (or "sum", or "none": elementwise) squared error between input and a target of the same shape."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        F._check_reduction(reduction)
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)
