"""The one fit loop: the classifier recipe, WARP-LCA's predictor (both stages) and LCA
dictionary learning all train through :func:`fit`.

Each step draws a batch of example indices from a seeded generator (a fresh permutation per
epoch, or ``replacement`` draws), sets the learning rate, computes the caller's loss for that
batch, then ``zero_grad`` / ``backward`` / ``step``; hooks run after every step and every
epoch. The caller's loss function owns everything model-specific (augmentation, autocast,
regularisers); the loop owns the order in which randomness is drawn and updates are made, so
a seeded run is repeatable.

Example::

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    fit(lambda idx: F.cross_entropy(net(x[idx]), y[idx]), opt, n=len(x), batch_size=128,
        epochs=2, generator=gen, end_epoch=lambda epoch, losses: print(epoch, len(losses)))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Updater(Protocol):
    """What :func:`fit` steps: a ``torch.optim.Optimizer`` or anything with these two methods
    (dictionary learning's normalised atom update)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> object: ...


def fit(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: Updater,
    *,
    n: int,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    steps_per_epoch: int | None = None,
    replacement: bool = False,
    lr: Callable[[int], float] | None = None,
    scheduler=None,
    after_step: Callable[[int], None] | None = None,
    end_epoch: Callable[[int, list[torch.Tensor]], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> int:
    """Run ``epochs`` x ``steps_per_epoch`` optimisation steps; returns the number of steps.

    Args:
        loss_fn: the scalar loss of the batch given by an int64 index tensor into the
            ``n`` examples (it may draw more randomness from ``generator``, after the loop's
            own draws for the batch).
        optimizer: stepped after ``loss.backward()`` (see :class:`Updater`).
        n: number of examples the batches index.
        batch_size: examples per step.
        epochs: passes.
        generator: the source of the batch draws.
        steps_per_epoch: default ``n // batch_size`` (the ragged last batch is dropped:
            fixed shapes).
        replacement: draw each batch uniformly with replacement instead of walking a fresh
            permutation per epoch.
        lr: learning rate of global step t (0-based), set before that step on every param
            group, times the group's ``lr_scale`` (default 1).
        scheduler: stepped after every optimiser step (e.g. ``OneCycleLR``).
        after_step: called with the 0-based global step after its update (projections,
            weight averages, logging).
        end_epoch: called with the 0-based epoch and that epoch's detached step losses (in
            step order; how to reduce them is the caller's).
        on_step: called with (steps done, total steps) after every step (progress bars).
    """
    per_epoch = n // batch_size if steps_per_epoch is None else int(steps_per_epoch)
    total = per_epoch * epochs
    step = 0
    for epoch in range(epochs):
        perm = None if replacement else torch.randperm(n, generator=generator)
        losses: list[torch.Tensor] = []
        for b in range(per_epoch):
            if perm is None:
                idx = torch.randint(0, n, (batch_size,), generator=generator)
            else:
                idx = perm[b * batch_size:(b + 1) * batch_size]
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr(step) * group.get("lr_scale", 1.0)
            loss = loss_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(step)
            losses.append(loss.detach())
            step += 1
            if on_step is not None:
                on_step(step, total)
        if end_epoch is not None:
            end_epoch(epoch, losses)
    return total
