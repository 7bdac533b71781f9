"""``gpuconv.save`` / ``gpuconv.load``: nested state (model, optimizer and scheduler state dicts) in one file.

The file is an .npz archive, written atomically: every array is one entry, and the structure around them
(dicts, lists, tuples, numbers, strings) is JSON in the entry ``__structure__``. Nothing is pickled, so
loading a file can never run code, and arrays come back bit for bit (as NumPy arrays; ``load_state_dict``
puts them on the device of the model or optimizer they are loaded into).
"""
from __future__ import annotations

import json
import numbers

import numpy as np

from ._backend import as_numpy, is_cupy_array
from .autograd import Tensor
from .nn.module import load_arrays, save_arrays

STRUCTURE = "__structure__"


def _encode(value, arrays: dict, where: str):
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, (np.ndarray, np.generic)) or is_cupy_array(value):
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(as_numpy(value))
        return {"$array": name}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, bool) or not isinstance(key, (str, numbers.Integral)):
                raise TypeError(f"{where}: dict keys must be strings or ints to be saved, got {key!r}")
        return {"$dict": [[k if isinstance(k, str) else int(k), _encode(v, arrays, f"{where}[{k!r}]")]
                          for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"$tuple": items} if isinstance(value, tuple) else items
    raise TypeError(f"{where}: cannot save a {type(value).__name__} (arrays, numbers, strings, None, and "
                    f"dicts, lists and tuples of them can be saved)")


def _decode(value, arrays: dict):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if "$array" in value:
            return arrays[value["$array"]]
        if "$tuple" in value:
            return tuple(_decode(v, arrays) for v in value["$tuple"])
        return {k: _decode(v, arrays) for k, v in value["$dict"]}
    return value


def save(obj, path) -> None:
    """Write ``obj`` (nested dicts, lists and tuples of arrays, tensors, numbers and strings) to ``path``."""
    arrays = {}
    structure = _encode(obj, arrays, "obj")
    arrays[STRUCTURE] = np.frombuffer(json.dumps(structure).encode(), dtype=np.uint8)
    save_arrays(path, arrays)


def load(path):
    """Read what ``save`` wrote; a damaged or foreign file is a ValueError naming it."""
    arrays = load_arrays(path, what="gpuconv checkpoint")
    if STRUCTURE not in arrays:
        raise ValueError(f"{path}: not a gpuconv checkpoint (no {STRUCTURE} entry; a weights file written by "
                         f"Module.save loads with Module.load)")
    try:
        structure = json.loads(arrays.pop(STRUCTURE).tobytes().decode())
        return _decode(structure, arrays)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a damaged gpuconv checkpoint ({type(exc).__name__}: {exc})") from exc


__all__ = ["save", "load"]
