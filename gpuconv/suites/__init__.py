"""Layer suites: the convolutions of real networks, read from ``gpuconv/suites/<name>.json``.

The benchmark (``python -m bench``) times them and ``gpuconv tune`` autotunes them; they ship with the
package so that both work from an installed gpuconv.

A suite file holds ``{"name", "description", "layers": [...]}``; each layer gives
name, C, K, H, W, R, S, stride, padding, dilation, groups and count (how many times
that exact convolution occurs in the network). The batch size is not part of a
suite: it is a parameter of the run, so one suite serves every card.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._shapes import ConvGeometry

SUITES_DIR = Path(__file__).parent

REQUIRED_FIELDS = ("name", "C", "K", "H", "W", "R", "S")
#: Optional fields and their defaults.
OPTIONAL_FIELDS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "count": 1, "note": ""}


def _as_param(value):
    """JSON lists -> tuples, so layers are hashable and ConvGeometry accepts them."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Layer:
    """One convolution of a network, without its batch size."""
    name: str
    C: int
    K: int
    H: int
    W: int
    R: int
    S: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    count: int = 1
    note: str = ""

    def geometry(self, batch: int) -> ConvGeometry:
        return ConvGeometry.create((batch, self.C, self.H, self.W), (self.K, self.C // self.groups, self.R, self.S),
                                   self.stride, self.padding, self.dilation, self.groups)

    @property
    def conv_key(self):
        """Everything that makes the convolution what it is (the name and count do not)."""
        g = self.geometry(1)
        return (g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, g.dilation, g.groups)

    def describe(self) -> str:
        """'64x56x56 -> 64, 3x3/1 pad 1' (plus dilation / groups when they are not 1)."""
        g = self.geometry(1)
        stride = g.stride[0] if g.stride[0] == g.stride[1] else f"{g.stride[0]}x{g.stride[1]}"
        pad = g.pad[0] if len(set(g.pad)) == 1 else "(" + ",".join(map(str, g.pad)) + ")"
        text = f"{g.C}x{g.H}x{g.W} -> {g.K}x{g.P}x{g.Q}, {g.R}x{g.S}/{stride} pad {pad}"
        if g.dilation != (1, 1):
            text += f" dil {g.dilation[0]}" if g.dilation[0] == g.dilation[1] else f" dil {g.dilation}"
        if g.groups > 1:
            text += " depthwise" if g.is_depthwise else f" groups {g.groups}"
        return text


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    layers: tuple

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"suite {self.name!r} has no layer {name!r}; it has {[l.name for l in self.layers]}")

    @property
    def total_count(self) -> int:
        return sum(layer.count for layer in self.layers)


def suite_names() -> list:
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))


def parse_layer(entry: dict, where: str) -> Layer:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a layer must be a JSON object, got {entry!r}")
    missing = [k for k in REQUIRED_FIELDS if k not in entry]
    unknown = sorted(set(entry) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or unknown:
        raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    values = {**OPTIONAL_FIELDS, **entry}
    for key in ("C", "K", "H", "W", "R", "S", "groups", "count"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
            raise ValueError(f"{where}: {key} must be a positive int, got {values[key]!r}")
    layer = Layer(**{k: _as_param(v) for k, v in values.items()})
    try:
        layer.geometry(1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a valid convolution: {exc}") from exc
    return layer


def parse_suite(data: dict, source: str) -> Suite:
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list) or not data["layers"]:
        raise ValueError(f"{source}: a suite is an object with a non-empty 'layers' list")
    name = data.get("name", Path(source).stem)
    layers = tuple(parse_layer(entry, f"{source}: layer {i}") for i, entry in enumerate(data["layers"]))
    names, keys = {}, {}
    for layer in layers:
        if layer.name in names:
            raise ValueError(f"{source}: two layers are named {layer.name!r}")
        names[layer.name] = layer
        # Suites list each distinct convolution once, with its count: a duplicate would be timed twice.
        if layer.conv_key in keys:
            raise ValueError(f"{source}: layers {keys[layer.conv_key].name!r} and {layer.name!r} are the same "
                             f"convolution; keep one and add up their counts")
        keys[layer.conv_key] = layer
    return Suite(name, data.get("description", ""), layers)


def load_suite(name_or_path) -> Suite:
    """A suite by name (``resnet50``) or by path to a JSON file of the same format."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = SUITES_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise ValueError(f"unknown suite {name_or_path!r}; available: {', '.join(suite_names())}")
    with open(path) as f:
        return parse_suite(json.load(f), str(path))
