"""Using trained weights: ``gpuconv eval`` (accuracy, per class, confusion matrix) and ``gpuconv predict``.

A weights file written by ``gpuconv train`` records the architecture, the input shape, the classes and the
normalisation (``gpuconv.train.weights_metadata``); everything here starts from it.
"""
from __future__ import annotations

import numpy as np

from . import models, nn
from ._backend import to_device
from ._shapes import is_floating
from .autograd import no_grad
from .nn import functional as F
from .train import normalize


def load_trained(path, device: str = "cpu"):
    """(model in eval mode on ``device``, metadata) from a weights file written by ``gpuconv train``."""
    metadata = nn.read_metadata(path)
    if metadata is None or "model" not in metadata:
        raise ValueError(f"{path}: the weights file records no architecture (it was not written by gpuconv train "
                         f"--save); load it into the model it came from with Module.load")
    model = models.from_description(metadata["model"])
    model.load(path)
    return model.to(device).eval(), metadata


def as_model_input(images: np.ndarray, metadata: dict, what: str) -> np.ndarray:
    """Images in the layout and scale of the training data -> the normalised (N, C, H, W) float32 input.

    Integer images are scaled by their dtype's maximum (as ``--data`` files are); floats are taken as they are.
    (H, W) is one image, (N, H, W) a batch of one-channel images.
    """
    c, h, w = metadata["input_shape"]
    x = np.asarray(images)
    if x.dtype.kind not in "iuf" and not is_floating(x.dtype):
        raise ValueError(f"{what}: images must be numbers, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None] if c == 1 and x.shape[1:] == (h, w) else x[None]
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        hint = " (channels-last? transpose to N, C, H, W)" if x.ndim == 4 and x.shape[-1] == c else ""
        raise ValueError(f"{what}: the model takes images of {c}x{h}x{w} (C x H x W), got shape {images.shape}{hint}")
    x = x.astype(np.float32) / float(np.iinfo(x.dtype).max) if x.dtype.kind in "iu" else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).sum())} pixels are not finite")
    norm = metadata["normalization"]
    return normalize(x, norm["mean"], norm["std"])


def probabilities(model, x: np.ndarray, device: str, batch_size: int = 512) -> np.ndarray:
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            out.append(F.softmax(model(to_device(x[i:i + batch_size], device)), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """counts[true class, predicted class]."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def format_evaluation(y_true, y_pred, class_names) -> str:
    k = len(class_names)
    matrix = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), k)
    total = int(matrix.sum())
    lines = [f"accuracy {np.trace(matrix) / max(total, 1):.2%} on {total} images", "", "per class:"]
    width = max(len(str(name)) for name in class_names)
    for i, name in enumerate(class_names):
        n = int(matrix[i].sum())
        acc = f"{matrix[i, i] / n:.2%}" if n else "-"
        lines.append(f"  {str(name):>{width}}  {acc:>7}  of {n}")
    cell = max(len(str(int(matrix.max()))) if total else 1, max(len(str(j)) for j in range(k)))
    lines += ["", "confusion matrix (rows: true class, columns: predicted; classes by index):",
              " " * (width + 2) + "".join(f" {j:>{cell}}" for j in range(k))]
    for i, name in enumerate(class_names):
        lines.append(f"  {str(name):>{width}}" + "".join(f" {int(v):>{cell}}" for v in matrix[i]))
    return "\n".join(lines)
