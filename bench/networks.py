"""Whole networks in torch.nn, for ``python -m bench net`` and the tests of ``gpuconv.torch``.

ResNet-18 and ResNet-50 are torchvision's architectures (v1.5: a bottleneck's stride on its 3x3), with
torchvision's module names (so its state_dicts load) and initialisation; ``build`` takes torchvision's own
where it imports and the definitions here otherwise (the CPU build of PyTorch on the CI machines cannot load
torchvision's compiled operators). MobileNet is v1 (Howard et al. 2017: a 3x3/2 stem, then 13 depthwise 3x3
+ pointwise 1x1 pairs), the architecture of the ``mobilenet`` layer suite; torchvision has no v1, so it is
always this one.
"""
from __future__ import annotations

import torch
from torch import nn

MODEL_NAMES = ("resnet18", "resnet50", "mobilenet")


# ------------------------------------------------------------------------ ResNet ---

def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, width, stride), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3(width, width), nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(c_in, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride), nn.BatchNorm2d(width)  # v1.5: stride here
        self.conv3, self.bn3 = _conv1x1(width, width * 4), nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, block, blocks_per_stage, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or c_in != width * block.expansion:
                downsample = nn.Sequential(_conv1x1(c_in, width * block.expansion, stride),
                                           nn.BatchNorm2d(width * block.expansion))
            layers = [block(c_in, width, stride, downsample)]
            c_in = width * block.expansion
            layers += [block(c_in, width) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _init_like_torchvision(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --------------------------------------------------------------------- MobileNet ---

def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


#: (output channels, stride) of each depthwise-separable pair; the depthwise conv carries the stride.
MOBILENET_V1_PAIRS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2),
                      (1024, 1))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, c_in = [_conv_bn_relu(3, 32, 3, 2)], 32
        for c_out, stride in MOBILENET_V1_PAIRS:
            layers.append(nn.Sequential(_conv_bn_relu(c_in, c_in, 3, stride, groups=c_in),  # depthwise
                                        _conv_bn_relu(c_in, c_out, 1, 1)))                  # pointwise
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _init_like_torchvision(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet(num_classes: int = 1000) -> MobileNetV1:
    return MobileNetV1(num_classes)


# ------------------------------------------------------------------------- build ---

def _torchvision():
    """torchvision.models, or None where it does not import (any error: a CPU build of PyTorch may fail to
    load its compiled operators with a RuntimeError)."""
    try:
        import torchvision.models
    except Exception:
        return None
    return torchvision.models


def build(name: str, num_classes: int = 1000, prefer_torchvision: bool = True) -> tuple:
    """(model, source): torchvision's model where it imports and has it, else this module's."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    models = _torchvision() if prefer_torchvision and name != "mobilenet" else None
    if models is not None:
        import torchvision
        return getattr(models, name)(weights=None, num_classes=num_classes), f"torchvision {torchvision.__version__}"
    return globals()[name](num_classes), "torch.nn (bench/networks.py)"


__all__ = ["MODEL_NAMES", "build", "resnet18", "resnet50", "mobilenet", "ResNet", "MobileNetV1",
           "BasicBlock", "Bottleneck", "MOBILENET_V1_PAIRS"]
