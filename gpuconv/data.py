"""Training data: scikit-learn's bundled 8x8 digits by default, or a user's .npz file."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nn.module import load_arrays

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Dataset:
    x_train: np.ndarray  # (N, C, H, W) float32
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_shape(self):
        return self.x_train.shape[1:]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 1797 8x8 digits bundled with scikit-learn (no download), split stratified into train and test."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError("the default training data needs scikit-learn: pip install 'gpuconv[train]'") from exc
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # pixel values 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(x_train, y_train, x_test, y_test, "sklearn digits 8x8")


def load_npz(path) -> Dataset:
    """Arrays x_train, y_train, x_test, y_test; images (N, H, W) or (N, C, H, W), integer labels.

    Integer images (e.g. uint8 MNIST) are scaled to [0, 1].
    """
    arrays = load_arrays(path, what="training data file")
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected {list(NPZ_KEYS)}, found {list(arrays)}")
    arrays = {k: arrays[k] for k in NPZ_KEYS}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"{path}: x_{split} must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
            raise ValueError(f"{path}: y_{split} must be integer labels of shape ({x.shape[0]},), "
                             f"got shape {y.shape} dtype {y.dtype}")
        if x.dtype.kind in "iu":
            x = x.astype(np.float32) / max(float(np.iinfo(x.dtype).max), 1.0)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.astype(np.float32), y.astype(np.int64)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(f"{path}: train images {arrays['x_train'].shape[1:]} and test images "
                         f"{arrays['x_test'].shape[1:]} differ in shape")
    return Dataset(**arrays, name=str(path))
