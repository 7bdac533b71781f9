"""The standard small CNNs of ``gpuconv train --model NAME``, defined once in the table ``MODELS``.

Each model is built by ``build(name, in_channels, height, width, num_classes, **options)``, which checks the
name, the input size and the options first and raises a one-line ``ValueError`` for a wrong one. Layers are
``gpuconv.nn``'s, with PyTorch's default initialisation drawn from ``nn.manual_seed``'s generator, and their
state_dict names are those of the same architecture written with ``torch.nn`` (the tests load PyTorch's
weights into ours and compare outputs and gradients).

``describe(...)`` gives the JSON-serialisable record of a model (its name, the input it was built for, the
classes and every option, defaults included) that a weights file can keep; ``from_description(record)``
rebuilds that model.
"""
from __future__ import annotations

import inspect
import json
import numbers
from typing import Callable, NamedTuple

from . import nn
from ._shapes import conv_output_size, pool_output_size
from .nn import functional as F


# --------------------------------------------------------------- small_cnn ---

def small_cnn(in_channels: int, height: int, width: int, num_classes: int) -> nn.Sequential:
    """conv3x3-relu-maxpool2 twice (16 then 32 channels), then one linear layer."""
    h, w = height, width
    for _ in range(2):  # 'same' 3x3 convs keep the size; each 2x2 pool halves it
        h = pool_output_size(conv_output_size(h, 3, 1, 2, 1), 2, 2, 0, False)
        w = pool_output_size(conv_output_size(w, 3, 1, 2, 1), 2, 2, 0, False)
    if h < 1 or w < 1:
        raise ValueError(f"images of {height}x{width} are too small for two 2x2 poolings")
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * h * w, num_classes),
    )


# ------------------------------------------------------------------ LeNet-5 ---

def lenet5(in_channels: int, height: int, width: int, num_classes: int, *, pool: str = "max",
           padding: int | None = None) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition"), as it is
    usually built today: conv5x5(6)-ReLU-pool2, conv5x5(16)-ReLU-pool2, flatten, linear 120-ReLU-84-ReLU-classes.

    Differences from the paper: ReLU rather than the scaled tanh; max pooling (``pool="avg"`` gives plain
    average pooling instead of the paper's subsampling with trainable coefficients); every C3 map sees all 6
    S2 maps (the paper connects each to a subset); a linear output layer rather than RBF units.

    ``padding`` of the first convolution: by default 2 when the input is smaller than 32x32 (MNIST's 28x28
    becomes the paper's 32x32, so both give 16x5x5 features before the linear layers), else 0.
    """
    if pool not in ("max", "avg"):
        raise ValueError(f"lenet5: pool must be 'max' or 'avg', got {pool!r}")
    if padding is None:
        padding = 2 if min(height, width) < 32 else 0
    if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or padding < 0:
        raise ValueError(f"lenet5: padding must be an int >= 0 (or None: 2 below 32x32, else 0), got {padding!r}")
    pooling = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    h, w = height, width
    for pad in (padding, 0):
        h = pool_output_size(conv_output_size(h, 5, 1, 2 * pad, 1), 2, 2, 0, False)
        w = pool_output_size(conv_output_size(w, 5, 1, 2 * pad, 1), 2, 2, 0, False)
    if h < 1 or w < 1:
        raise ValueError(f"lenet5: images of {height}x{width} with padding {padding} are too small for two 5x5 "
                         f"convolutions and 2x2 poolings")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), pooling(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), pooling(2),
        nn.Flatten(), nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


# ---------------------------------------------------------------- small VGG ---

class VGGSmall(nn.Module):
    """A small VGG (Simonyan & Zisserman 2015's design: stacks of 3x3 convolutions, each stage ending in a 2x2
    max pooling) for 32x32 images, with batch normalisation (Ioffe & Szegedy 2015):

    three stages of two conv3x3-BatchNorm2d-ReLU with 32, 64 and 128 channels, each followed by MaxPool2d(2)
    (32x32 -> 4x4), then AdaptiveAvgPool2d(1), flatten and one linear layer (instead of VGG's three large
    fully connected layers). The convolutions have no bias: the batch normalisation's shift replaces it.

    state_dict names: ``features.{i}`` (the 21 layers of the three stages, as a Sequential), ``classifier``.
    """

    widths = (32, 64, 128)

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        layers, channels = [], in_channels
        for width in self.widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg_small(in_channels: int, height: int, width: int, num_classes: int) -> VGGSmall:
    """The small VGG with batch normalisation (``VGGSmall``): 32-32-pool, 64-64-pool, 128-128-pool, global
    average pooling, linear."""
    return VGGSmall(in_channels, num_classes)


# ------------------------------------------------------------ CIFAR ResNets ---

class BasicBlock(nn.Module):
    """He et al. 2016's basic residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs.

    When the block changes the size or the channels (stride 2), the shortcut is a projection,
    ``downsample`` = 1x1 conv (stride 2, no bias) + BatchNorm2d: the paper's option B. Otherwise it is the
    identity and ``downsample`` is None.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """The ResNets He et al. 2016 ("Deep residual learning for image recognition", section 4.2) built for
    CIFAR-10: 6n + 2 weighted layers.

    conv3x3(16)-BN-ReLU, then three stages of n basic blocks with 16, 32 and 64 channels (32x32, 16x16 and
    8x8 maps for a 32x32 input); the first block of stages 2 and 3 has stride 2 and a projection shortcut
    (1x1 conv + BN: option B; the paper's CIFAR models use option A, zero-padded identity shortcuts, which
    have no parameters); global average pooling, one linear layer. Convolutions have no bias (batch
    normalisation follows each one). Initialisation is gpuconv's (PyTorch's layer defaults), not the paper's.

    state_dict names as torchvision's ResNet: ``conv1``, ``bn1``, ``layer1``..``layer3`` (blocks ``conv1``,
    ``bn1``, ``conv2``, ``bn2``, ``downsample.0``, ``downsample.1``), ``fc``.
    """

    widths = (16, 32, 64)

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, self.widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        planes = self.widths[0]
        for stage, width in enumerate(self.widths, start=1):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(planes, width, stride=2 if stage > 1 and i == 0 else 1))
                planes = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet8(in_channels: int, height: int, width: int, num_classes: int) -> CifarResNet:
    """ResNet-8 for CIFAR (He et al. 2016, n = 1: one basic block per stage), projection shortcuts (option B)."""
    return CifarResNet(in_channels, num_classes, blocks_per_stage=1)


def resnet20(in_channels: int, height: int, width: int, num_classes: int) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, n = 3: three basic blocks per stage), projection shortcuts (option B)."""
    return CifarResNet(in_channels, num_classes, blocks_per_stage=3)


# -------------------------------------------------------------------- table ---

class ModelSpec(NamedTuple):
    """One entry of ``MODELS``: the constructor ``(in_channels, height, width, num_classes, **options)``, a
    one-line description, the smallest input (height, width) it is built for, and what a smaller one lacks."""

    constructor: Callable[..., nn.Module]
    description: str
    min_size: tuple
    too_small_for: str


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(small_cnn, "conv3x3(16)-relu-maxpool2, conv3x3(32)-relu-maxpool2, linear (the default)",
                           (4, 4), "two 2x2 poolings"),
    "lenet5": ModelSpec(lenet5, "LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for 28x28 or 32x32 images",
                        (28, 28), "LeNet-5's 5x5 convolutions and 2x2 poolings, made for 28x28 or 32x32 images"),
    "vgg_small": ModelSpec(vgg_small, "a small VGG with BatchNorm: 32-32-pool, 64-64-pool, 128-128-pool, global "
                                      "average pooling, linear, for 32x32 images", (8, 8), "three 2x2 poolings"),
    "resnet8": ModelSpec(resnet8, "ResNet-8 for CIFAR (He et al. 2016), projection shortcuts, for 32x32 images",
                         (8, 8), "two stride-2 stages and a last stage of at least 2x2"),
    "resnet20": ModelSpec(resnet20, "ResNet-20 for CIFAR (He et al. 2016), projection shortcuts, for 32x32 images",
                          (8, 8), "two stride-2 stages and a last stage of at least 2x2"),
}

_INPUT_FIELDS = ("in_channels", "height", "width", "num_classes")


def _spec(name) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def option_defaults(name: str) -> dict:
    """The options of model ``name`` (its constructor's keyword-only arguments) with their defaults."""
    parameters = inspect.signature(_spec(name).constructor).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check(name, in_channels, height, width, num_classes, options) -> dict:
    """Everything ``build`` checks before building: returns the input fields as ints and every option."""
    spec = _spec(name)
    values = dict(zip(_INPUT_FIELDS, (in_channels, height, width, num_classes)))
    for field, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: {field} must be a positive int, got {value!r}")
        values[field] = int(value)
    (h, w), (min_h, min_w) = (values["height"], values["width"]), spec.min_size
    if h < min_h or w < min_w:
        raise ValueError(f"{name} needs images of at least {min_h}x{min_w}, got {h}x{w}: images of {h}x{w} are "
                         f"too small for {spec.too_small_for}")
    known = option_defaults(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"takes the options {', '.join(known)}" if known else "takes no options"
        raise ValueError(f"{name} {takes}; unknown: {', '.join(unknown)}")
    return {**values, "options": {**known, **options}}


def build(name: str, in_channels: int, height: int, width: int, num_classes: int, **options) -> nn.Module:
    """Model ``name`` of ``MODELS`` for images (in_channels, height, width) and ``num_classes`` classes.

    Raises a one-line ValueError for an unknown name (listing the known ones), an input smaller than the
    model's minimum, or an unknown option. Initial weights are drawn from ``nn.manual_seed``'s generator.
    """
    checked = _check(name, in_channels, height, width, num_classes, options)
    return MODELS[name].constructor(*(checked[f] for f in _INPUT_FIELDS), **checked["options"])


def describe(name: str, in_channels: int, height: int, width: int, num_classes: int, **options) -> dict:
    """The JSON-serialisable record of a model: ``{"name", "in_channels", "height", "width", "num_classes",
    "options"}``, with every option (defaults included, so a later change of a default rebuilds the same model).

    Checks what ``build`` checks (except what only the constructor can, as lenet5's option values).
    """
    record = {"name": name, **_check(name, in_channels, height, width, num_classes, options)}
    try:
        return json.loads(json.dumps(record))  # tuples become lists, as a file would give them back
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: options must be JSON values (numbers, strings, lists, None), got {options!r}") \
            from exc


def from_description(record) -> nn.Module:
    """Rebuild the model ``describe`` recorded; ``record`` is its dict or that dict as a JSON string."""
    if isinstance(record, (str, bytes)):
        try:
            record = json.loads(record)
        except ValueError as exc:
            raise ValueError(f"model description is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"a model description is a dict, got {type(record).__name__}")
    expected = {"name", "options", *_INPUT_FIELDS}
    if set(record) != expected:
        raise ValueError(f"model description has fields {sorted(record)}, expected {sorted(expected)}")
    if not isinstance(record["options"], dict):
        raise ValueError(f"model description: options must be a dict, got {record['options']!r}")
    return build(record["name"], *(record[f] for f in _INPUT_FIELDS), **record["options"])


__all__ = ["MODELS", "ModelSpec", "build", "describe", "from_description", "option_defaults", "small_cnn",
           "lenet5", "vgg_small", "resnet8", "resnet20", "VGGSmall", "CifarResNet", "BasicBlock"]
