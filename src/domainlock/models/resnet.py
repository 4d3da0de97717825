"""CIFAR-style ResNet-18: 3x3 stem, no max-pool; encoder ends at global average pool + flatten (512-d),
head = ``fc``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Classifier, encoder_with_norm, register_arch
from .vgg import CIFAR_MEAN, CIFAR_STD


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@register_arch("resnet18")
def resnet18(num_classes: int = 10, width: int = 64, mean: Sequence[float] = CIFAR_MEAN,
             std: Sequence[float] = CIFAR_STD) -> Classifier:
    """CIFAR ResNet-18 (``width`` 64 -> 11.2 M parameters): conv3x3 stem + BN + ReLU, four stages of two
    basic blocks (strides 1, 2, 2, 2), global average pool; head ``fc`` = Linear(8*width, num_classes)."""
    w = int(width)
    encoder = encoder_with_norm(
        mean, std,
        nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        _stage(w, w, 2, 1), _stage(w, 2 * w, 2, 2), _stage(2 * w, 4 * w, 2, 2), _stage(4 * w, 8 * w, 2, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    model = Classifier(encoder, nn.Linear(8 * w, num_classes), num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
