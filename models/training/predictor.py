"""Training of WARP-LCA's predictor (:class:`models.front_ends.WarpLCA`): :func:`train_predictor`.

Two stages through the one fit loop, both regressions onto the converged states u* of
cold-start LCA (the teacher, :func:`models.front_ends.cold_states`, computed once without
gradients):

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

    warp = WarpLCA(dictionary_lca(), iterations=20)       # models.zoo.dictionary_lca
    info = train_predictor(warp, train_u8[:10_000], teacher_iterations=200, unroll_epochs=3,
                           unroll_n=5120, log=print)
    info["history"][-1]["mse"], info["mse_of_untrained_guess_b"]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.front_ends import WarpLCA, cold_states
from models.training.loop import fit

# The bundled warp-lca-resnet8's predictor: regressed onto cold LCA's states after
# `teacher_iterations` (twice the cold model's evaluation count: closer to convergence) of the
# first `teacher_n` training images; then through the model's unrolled iterations on the first
# `unroll_n` of them.
PREDICTOR_SETTINGS = {"teacher_n": 10_000, "teacher_iterations": 200, "epochs": 12,
                      "batch_size": 128, "lr": 2e-3, "unroll_epochs": 3, "unroll_n": 5120,
                      "unroll_lr": 1e-3}


def _mean_loss(losses: list[torch.Tensor]) -> float:
    total = 0.0
    for loss in losses:            # summed in step order as Python floats
        total += loss.item()
    return total / len(losses)


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
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lca = warp.lca.to(device)
    t0 = time.perf_counter()
    targets = cold_states(lca, images, iterations=teacher_iterations, device=device)
    teacher_time = time.perf_counter() - t0
    signals = torch.cat([lca.prepare(images[i:i + 1024].float().div(255)).cpu()
                         for i in range(0, len(images), 1024)])
    warp.predictor.to(device).train()
    k = warp.iterations if unroll_iterations is None else int(unroll_iterations)
    n_unroll = len(images) if unroll_n is None else min(int(unroll_n), len(images))
    history: list[dict] = []

    def regression(iterations: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The batch loss: u(0) (``None``) or u(iterations) against u*."""
        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            s, target = signals[idx].to(device), targets[idx].to(device)
            states = warp.predict_states(s)
            if iterations is not None:
                states = lca.encode(s, states, iterations=iterations).states
            return F.mse_loss(states, target)
        return loss_fn

    def record(unrolled: bool, first_epoch: int, stage_epochs: int):
        """The end-of-epoch hook of a stage: the mean batch loss into ``history`` and the log."""
        def end_epoch(epoch: int, losses: list[torch.Tensor]) -> None:
            mse = _mean_loss(losses)
            history.append({"epoch": first_epoch + epoch + 1, **({"unrolled": k} if unrolled
                                                                   else {}), "mse": round(mse, 6)})
            log(f"predictor {'unrolled ' if unrolled else ''}epoch {epoch + 1}/{stage_epochs} "
                f"mse{f'(u{k})' if unrolled else ''} {mse:.5f}")
        return end_epoch

    t0 = time.perf_counter()
    opt = torch.optim.Adam(warp.predictor.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * (len(images) // batch_size)), pct_start=0.1)
    fit(regression(None), opt, n=len(images), batch_size=batch_size, epochs=epochs,
        generator=gen, scheduler=sched, end_epoch=record(False, 0, epochs))
    opt = torch.optim.Adam(warp.predictor.parameters(), lr=unroll_lr)
    fit(regression(k), opt, n=n_unroll, batch_size=batch_size, epochs=unroll_epochs,
        generator=gen, end_epoch=record(True, epochs, unroll_epochs))
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
