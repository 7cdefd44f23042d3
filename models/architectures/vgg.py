"""VGG for CIFAR (BatchNorm after each conv, one linear classifier), activation as a parameter.

Example::

    net = CifarVGG(config=VGG16, act="relu")
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.activations import make_activation
from models.architectures._common import CIFAR10_MEAN, CIFAR10_STD, Normalize

# Channels per conv, "M" = 2x2 max-pool (Simonyan & Zisserman 2015, configuration D).
VGG16: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class CifarVGG(nn.Module):
    """A CIFAR VGG taking (N, 3, 32, 32) inputs in [0, 1]."""

    def __init__(
        self,
        *,
        config: Sequence[int | str] = VGG16,
        act: str = "relu",
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        in_ch = 3
        for c in config:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [
                nn.Conv2d(in_ch, int(c), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(c)),
                make_activation(act, num_channels=int(c)),
            ]
            in_ch = int(c)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.fc(torch.flatten(self.pool(x), 1))
