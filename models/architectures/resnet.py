"""CIFAR ResNets (He et al. 2016, the 3x3-stem CIFAR variant) with depth, width and activation
parameters, normalisation inside the model.

``CifarResNet(blocks=(1, 1, 1), widths=(16, 32, 64))`` is ResNet-8 (78k parameters),
``blocks=(3, 3, 3)`` ResNet-20, and ``blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)`` the
ResNet-18 used throughout the robustness literature. Shortcuts that change shape use a 1x1
convolution + BatchNorm (option B).

Example::

    net = CifarResNet(blocks=(1, 1, 1), widths=(16, 32, 64), act="gelu")
    logits = net(torch.rand(8, 3, 32, 32))  # inputs in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.activations import make_activation
from models.architectures._common import CIFAR10_MEAN, CIFAR10_STD, Normalize


def stage_plan(blocks: Sequence[int], widths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of every residual block: stage i > 0 starts by
    downsampling by 2; the stem has ``widths[0]`` channels."""
    if len(blocks) != len(widths) or not blocks:
        raise ValueError("blocks and widths must be non-empty and of equal length")
    plan, in_ch = [], widths[0]
    for i, (n, w) in enumerate(zip(blocks, widths)):
        for j in range(n):
            plan.append((in_ch, w, 2 if (i > 0 and j == 0) else 1))
            in_ch = w
    return plan


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN + shortcut, then act."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = make_activation(act, num_channels=out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = make_activation(act, num_channels=out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet taking (N, 3, 32, 32) inputs in [0, 1].

    Args:
        blocks: number of basic blocks per stage; stage i > 0 downsamples by 2.
        widths: channels per stage (the stem has ``widths[0]`` channels).
        act: activation name from ``models.activations.ACTIVATIONS``.
        num_classes: size of the output layer.
        mean, std: per-channel normalisation applied inside the model (None: none, for a
            backbone fed by a front end such as LCA codes).
        in_channels: input channels (3 for images; a sparse code's features otherwise).
    """

    def __init__(
        self,
        *,
        blocks: Sequence[int],
        widths: Sequence[int],
        act: str = "relu",
        num_classes: int = 10,
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        plan = stage_plan(blocks, widths)
        self.normalize = nn.Identity() if mean is None else Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            make_activation(act, num_channels=widths[0]),
        )
        self.layers = nn.Sequential(*(BasicBlock(i, o, stride=s, act=act) for i, o, s in plan))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which trains faster in the short CPU budget (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, C) for inputs in [0, 1]."""
        x = self.layers(self.stem(self.normalize(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
