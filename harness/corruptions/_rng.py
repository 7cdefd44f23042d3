"""Per-example random streams for generated corruptions.

Every example gets its own ``torch.Generator`` on the CPU, seeded from a hash of (run seed,
corruption, severity, example index). Draws therefore do not depend on which other examples
share a batch or shard, nor on the device the corruption then runs on: a shard of any size
reproduces exactly, and CPU reruns are bit-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def example_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 63-bit seed for one example's stream."""
    key = f"cifar10c/{int(seed)}/{corruption}/{int(severity)}/{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class ExampleRNG:
    """Independent streams for a batch of examples; each draw returns a stacked CPU tensor
    (N, *shape) in float64 (or int64 for integers), advancing every example's stream.

    Uniform and normal variates are drawn in float32 (torch's vectorised CPU path, ~4x faster
    than float64) and widened: a 2^-24 resolution is far finer than any corruption needs.
    """

    def __init__(self, seed: int, corruption: str, severity: int, indices: Sequence[int]) -> None:
        self.generators = []
        for i in indices:
            g = torch.Generator()
            g.manual_seed(example_seed(seed, corruption, severity, int(i)))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """U[low, high) per element."""
        u = torch.stack([torch.rand(shape, generator=g) for g in self.generators])
        return low + (high - low) * u.double()

    def normal(self, *shape: int, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
        """N(loc, scale²) per element."""
        z = torch.stack([torch.randn(shape, generator=g) for g in self.generators])
        return loc + scale * z.double()

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in [low, high) per element."""
        return torch.stack([torch.randint(low, high, shape, generator=g) for g in self.generators])

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson(rates[n]) for each example's rate tensor (CPU, float64)."""
        rates = rates.to("cpu", torch.float64)
        return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, self.generators)])
