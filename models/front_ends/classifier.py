"""A classifier = a sparse-coding front end (LCA or WARP-LCA) followed by a CNN backbone."""

from __future__ import annotations

import torch
from torch import nn


class FrontEndClassifier(nn.Module):
    """``backbone(front_end(x))`` for images ``x`` in [0, 1].

    The front end standardises each image itself (zero mean, unit variance), so the backbone
    has no input normalisation; ``features``/``forward`` mirror :class:`CifarResNet`.
    """

    def __init__(self, front_end: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.front_end = front_end
        self.backbone = backbone

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.front_end(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(self.front_end(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.front_end(x))
