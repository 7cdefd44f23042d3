"""WARP-LCA: LCA started from a learned prediction of its converged state.

A small CNN predictor ``P`` maps the drive ``b = Φᵀ * s`` (the input correlated with the
atoms, one conv of the frozen dictionary) to an initial membrane potential

    u(0) = b + P(b)

and LCA runs only ``iterations`` steps from there (cold LCA starts from u(0) = 0; the zoo
runs it for 100 iterations and WARP-LCA for 20, see benchmarks/bench_lca.py). ``P`` is three
3x3 convs (features -> hidden -> hidden -> features, ReLU between), receptive field ±3 code
cells, which is exactly the reach of the lateral inhibition G = ΦᵀΦ - I for 7x7 atoms at
stride 2; its last conv starts at zero, so an untrained predictor is the one-step guess
u(0) = b.

Training: :func:`models.training.train_predictor` regresses the predicted start onto the
converged states of cold-start LCA (:func:`cold_states`), first u(0), then u(K) through the K
unrolled iterations the model runs (its module docstring says why).

Example::

    warp = WarpLCA(models.zoo.dictionary_lca(), iterations=20)   # the bundled dictionary
    codes = warp(images)                              # images in [0, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from metrics.lipschitz import NoBound, upper_bound
from models.front_ends.lca import LCA, LCAOutput


class WarpLCA(nn.Module):
    """LCA with a learned warm start.

    Args:
        lca: the LCA layer (dictionary, λ, τ, threshold); its ``iterations`` are the cold
            setting and are not used here.
        iterations: LCA iterations after the predicted start (overridable per call).
        hidden: channels of the predictor's hidden layers.
    """

    def __init__(self, lca: LCA, *, iterations: int = 10, hidden: int = 32) -> None:
        super().__init__()
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        self.lca = lca
        self.iterations = int(iterations)
        f = lca.features
        self.predictor = nn.Sequential(
            nn.Conv2d(f, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, f, 3, padding=1),
        )
        nn.init.zeros_(self.predictor[-1].weight)
        nn.init.zeros_(self.predictor[-1].bias)

    def predict_states(self, s: torch.Tensor) -> torch.Tensor:
        """u(0) = b + P(b) for the prepared signal ``s``."""
        b = self.lca.drive(s)
        return b + self.predictor(b)

    def encode(self, s: torch.Tensor, *, iterations: int | None = None,
               threshold: str | None = None, trace: bool = False) -> LCAOutput:
        """LCA from the predicted state; ``iterations=0`` gives T_λ(P's guess)."""
        return self.lca.encode(s, self.predict_states(s),
                               iterations=self.iterations if iterations is None else iterations,
                               threshold=threshold, trace=trace)

    # Backward passes an attack can choose (attacks.gradients, see LCA.codes): through the
    # predictor and the unrolled iterations, or BPDA from the converged state.
    gradient_modes = ("unrolled", "bpda")
    gradient_mode = "unrolled"

    derivative_mode = "unrolled"
    sparsity_site = "codes"

    def certified_lipschitz(self, x: torch.Tensor) -> float:
        """Certified l2 Lipschitz bound of images -> codes (``metrics.lipschitz`` protocol):
        u(0) = b + P(b), b = Φᵀ s, is bounded by (1 + L(P)) ||Φ|| L_s (P's bound composed by
        :func:`metrics.lipschitz.upper_bound`), then :meth:`LCA.iteration_bound`."""
        lca = self.lca
        signal = lca.signal_bound(x)
        with torch.no_grad():
            b = lca.drive(lca.prepare(x[:1]))
        pred = upper_bound(self.predictor, b)
        if pred.value is None:
            raise NoBound(f"WARP-LCA predictor: {pred.reason}")
        size = tuple(x.shape[-2:])
        phi = lca.dictionary_norm(size)
        return lca.iteration_bound(size, signal=signal, start=(1 + pred.value) * phi * signal,
                                   iterations=self.iterations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lca.codes(self.lca.prepare(x), self.predict_states,
                              iterations=self.iterations, mode=self.gradient_mode)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


@torch.no_grad()
def cold_states(lca: LCA, images: torch.Tensor, *, iterations: int, batch_size: int = 256,
                device: str = "cpu") -> torch.Tensor:
    """Converged cold-start LCA states u* of uint8 or [0, 1] images, float32 on CPU."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        out.append(lca.encode(lca.prepare(x), iterations=iterations).states.cpu())
    return torch.cat(out)
