"""Building blocks shared by the architectures: in-model normalisation and model metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, so the model takes inputs in [0, 1] and attacks'
    eps stays in pixel space. Mean and std are buffers: they move with ``.to(device)`` and are
    saved in checkpoints, so a checkpoint cannot silently be paired with other statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("mean and std must have equal length and std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What every model carries as ``model.meta``: identity, data contract and threat notes."""

    name: str
    arch: str
    activation: str = "relu"
    dataset: str = "cifar10"
    num_classes: int = 10
    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    factory: str = ""
    factory_kwargs: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    weights: str | None = None
    # Non-empty for models with a front end before the backbone (LCA, WARP-LCA): its kind,
    # settings, and ``iterative: True`` where attacks must differentiate through an unrolled
    # loop or use BPDA.
    front_end: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "activation": self.activation,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "factory": self.factory,
            "factory_kwargs": dict(self.factory_kwargs),
            "notes": list(self.notes),
            "weights": self.weights,
            "front_end": dict(self.front_end),
        }
