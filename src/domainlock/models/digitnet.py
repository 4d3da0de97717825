"""``digitnet``: a small, fast CNN for 32x32 digit images (the workhorse of CPU tests and experiments)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier, encoder_with_norm, register_arch

DIGIT_MEAN = (0.5, 0.5, 0.5)
DIGIT_STD = (0.5, 0.5, 0.5)


def _block(cin: int, cout: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return layers


@register_arch("digitnet")
def digitnet(num_classes: int = 10, width: int = 32, convs: int = 1, feat_dim: int = 256,
             dropout: float = 0.0, mean: Sequence[float] = DIGIT_MEAN,
             std: Sequence[float] = DIGIT_STD) -> Classifier:
    """Three conv blocks (``width``, 2x, 4x channels; ``convs`` 3x3 conv+BN+ReLU each, then 2x2 max-pool:
    32 -> 16 -> 8 -> 4 px), flatten, ``Linear -> BN -> ReLU`` to a ``feat_dim`` feature vector (the encoder
    output); the head is ``[Dropout] -> Linear(feat_dim, num_classes)``."""
    w = int(width)
    body: list[nn.Module] = []
    body += _block(3, w, convs)
    body += _block(w, 2 * w, convs)
    body += _block(2 * w, 4 * w, convs)
    body += [nn.Flatten(1), nn.Linear(4 * w * 4 * 4, feat_dim, bias=False), nn.BatchNorm1d(feat_dim),
             nn.ReLU(inplace=True)]
    head: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    head.append(nn.Linear(feat_dim, num_classes))
    return Classifier(encoder_with_norm(mean, std, *body), nn.Sequential(*head) if len(head) > 1 else head[0],
                      num_classes=num_classes)
