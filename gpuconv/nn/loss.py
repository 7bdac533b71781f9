"""Losses: softmax cross-entropy fused with the negative log-likelihood."""
from __future__ import annotations

from .._backend import array_module
from .._shapes import check_float_dtype
from .module import Module


class CrossEntropyLoss(Module):
    """mean (or sum) over the batch of -log softmax(logits)[target], computed stably via log-sum-exp.

    ``forward(logits, target)`` returns the loss as a 0-d array; ``backward()``
    returns d loss / d logits = (softmax - onehot) / batch (for "mean").
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._saved = None

    def forward(self, logits, target):
        xp = array_module(logits=logits, target=target)
        check_float_dtype(logits, "logits")
        if logits.ndim != 2:
            raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] or target.dtype.kind not in "iu":
            raise ValueError(f"target must be integer class indices of shape ({logits.shape[0]},), "
                             f"got shape {tuple(target.shape)} dtype {target.dtype}")
        classes = logits.shape[1]
        if target.size and (int(target.min()) < 0 or int(target.max()) >= classes):
            raise ValueError(f"target holds class indices outside [0, {classes}): min {int(target.min())}, "
                             f"max {int(target.max())}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_sum
        rows = xp.arange(logits.shape[0])
        losses = -log_probs[rows, target]
        self._saved = (log_probs, target)
        return losses.mean() if self.reduction == "mean" else losses.sum()

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def backward(self, grad=1.0):
        if self._saved is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        log_probs, target = self._saved
        xp = array_module(log_probs=log_probs)
        dlogits = xp.exp(log_probs)
        dlogits[xp.arange(target.shape[0]), target] -= 1
        if self.reduction == "mean":
            dlogits /= max(target.shape[0], 1)
        return dlogits * grad
