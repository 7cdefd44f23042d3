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

Training (:func:`train_predictor`), two stages, both regressions onto the converged states u*
of cold-start LCA (the teacher, computed once without gradients):

1. u(0) onto u* (mean squared error over all units), so that every unit, active or not, gets a
   signal. We chose regression over minimising the energy of unrolled iterations because the
   energy's gradient reaches only the units that end up active (the threshold's derivative is
   zero elsewhere): an energy-trained predictor cannot learn to switch a unit on, and in our
   pilots it collapsed to all-zero codes.
2. u(K) onto u*, differentiating through the K unrolled LCA iterations that follow the
   predicted start (K = the iterations the model runs). LCA removes most of a start's error by
   itself within a few iterations; what survives K iterations is the error along the slow
   directions of the dynamics (nearly cancelling combinations of active atoms, on which only
   the λ-penalty acts). Stage 1 weighs all errors alike and leaves those as large as a cold
   start's; stage 2 spends the predictor on exactly them. Measured (pilot, 500 sample images,
   τ = 7): within 5 % of LCA-1000's energy after 24 iterations with stage 1 only (cold LCA:
   24), after 15 with stage 2. The price: P's guess itself can have a high energy (it is
   tuned as a start, not as a code), so ``iterations=0`` is not a useful setting.

Example::

    lca = LCA(features=64, kernel_size=7, stride=2, lambda_=0.25, tau=7.5, **load_dictionary()[0])
    warp = WarpLCA(lca, iterations=20)
    codes = warp(images)                              # images in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.lca.prepare(x)).codes

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


def train_predictor(
    warp: WarpLCA,
    images: torch.Tensor,
    *,
    teacher_iterations: int,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 2e-3,
    unroll_epochs: int = 0,
    unroll_iterations: int | None = None,
    unroll_n: int | None = None,
    unroll_lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Fit ``warp.predictor`` to cold LCA's states after ``teacher_iterations`` (see the module
    docstring for why): stage 1 regresses u(0) for ``epochs`` (Adam, one-cycle schedule);
    stage 2 regresses u(K), K = ``unroll_iterations`` (default ``warp.iterations``), through
    the unrolled iterations for ``unroll_epochs`` over the first ``unroll_n`` images (Adam,
    constant ``unroll_lr``; memory O(K x batch x code)).

    Args:
        images: uint8 (N, 3, H, W) training images (no augmentation: the targets are fixed).

    Returns:
        ``{"teacher_time_s", "train_time_s", "history": [{"epoch", "mse"}...], ...}``.
    """
    import time

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lca = warp.lca.to(device)
    t0 = time.perf_counter()
    targets = cold_states(lca, images, iterations=teacher_iterations, device=device)
    teacher_time = time.perf_counter() - t0
    signals = torch.cat([lca.prepare(images[i:i + 1024].float().div(255)).cpu()
                         for i in range(0, len(images), 1024)])
    warp.predictor.to(device).train()
    opt = torch.optim.Adam(warp.predictor.parameters(), lr=lr)
    steps_per_epoch = len(images) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.1)
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            s, target = signals[idx].to(device), targets[idx].to(device)
            loss = F.mse_loss(warp.predict_states(s), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append({"epoch": epoch + 1, "mse": round(total / steps_per_epoch, 6)})
        log(f"predictor epoch {epoch + 1}/{epochs} mse {total / steps_per_epoch:.5f}")
    k = warp.iterations if unroll_iterations is None else int(unroll_iterations)
    n_unroll = len(images) if unroll_n is None else min(int(unroll_n), len(images))
    opt = torch.optim.Adam(warp.predictor.parameters(), lr=unroll_lr)
    steps_per_epoch = n_unroll // batch_size
    for epoch in range(unroll_epochs):
        perm = torch.randperm(n_unroll, generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            s, target = signals[idx].to(device), targets[idx].to(device)
            states = lca.encode(s, warp.predict_states(s), iterations=k).states
            loss = F.mse_loss(states, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        history.append({"epoch": epochs + epoch + 1, "unrolled": k,
                        "mse": round(total / steps_per_epoch, 6)})
        log(f"predictor unrolled epoch {epoch + 1}/{unroll_epochs} mse(u{k}) "
            f"{total / steps_per_epoch:.5f}")
    warp.predictor.eval()
    with torch.no_grad():
        baseline = F.mse_loss(lca.drive(signals[:1024].to(device)), targets[:1024].to(device)).item()
    return {"teacher_iterations": teacher_iterations, "n": len(images), "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed,
            "loss": "mse(u0, u*)" + (f", then mse(u{k}, u*) unrolled" if unroll_epochs else ""),
            "unroll_epochs": unroll_epochs, "unroll_iterations": k if unroll_epochs else None,
            "unroll_n": n_unroll if unroll_epochs else None, "unroll_lr": unroll_lr,
            "teacher_time_s": round(teacher_time, 1),
            "train_time_s": round(time.perf_counter() - t0, 1),
            "mse_of_untrained_guess_b": round(baseline, 6), "history": history}
