"""CIFAR-size VGG: encoder = conv features + global average pool + flatten (512-d), head = classifier MLP.

At 32 px the five max-pools leave 1x1x512, so the pool is the identity there; it lets the same network take
64 px images (NTLBench's CIFAR-10/STL-10 protocol) without a larger head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier, encoder_with_norm, register_arch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _features(cfg: list[int | str], batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        assert isinstance(v, int)
        layers.append(nn.Conv2d(cin, v, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v
    return layers


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, hidden: int, dropout: float,
         mean: Sequence[float], std: Sequence[float]) -> Classifier:
    feats = _features(CFGS[cfg], batch_norm)
    encoder = encoder_with_norm(mean, std, *feats, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))  # any size -> 512
    head_layers: list[nn.Module] = [nn.Linear(512, hidden), nn.ReLU(inplace=True)]
    if dropout > 0:
        head_layers.append(nn.Dropout(dropout))
    head_layers.append(nn.Linear(hidden, num_classes))
    model = Classifier(encoder, nn.Sequential(*head_layers), num_classes=num_classes)
    _init(model)
    return model


def _make(name: str, batch_norm: bool):
    cfg = name

    def builder(num_classes: int = 10, hidden: int = 512, dropout: float = 0.5,
                mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> Classifier:
        return _vgg(cfg, batch_norm, num_classes, hidden, dropout, mean, std)

    builder.__name__ = name + ("_bn" if batch_norm else "")
    bn = " with BatchNorm" if batch_norm else ""
    builder.__doc__ = (f"CIFAR-style {name.upper()}{bn}: 5 max-pools take 32 px to 1x1x512 (a global average "
                       "pool takes larger inputs there too); head = Linear(512, hidden) -> ReLU -> Dropout -> Linear.")
    return builder


for _name in CFGS:
    register_arch(_name)(_make(_name, False))
    register_arch(_name + "_bn")(_make(_name, True))
