"""The classifier recipe: :func:`train` fits a model with a :class:`TrainRecipe` through the
one fit loop (:func:`models.training.loop.fit`).

Recipe (defaults of :class:`TrainRecipe`, the bundled models' recipe): SGD with Nesterov
momentum 0.9, batch 256, 24 epochs, a one-cycle learning-rate schedule (linear warm-up to
``lr`` over ``warmup`` of the run, then linear decay to 0), weight decay on conv/linear weights
only, label smoothing, per-example random crop (reflect-padded by 4) and horizontal flip drawn
from a seeded generator, channels_last, bf16 autocast (1.4x faster than fp32 on the 2-core
AVX-512-BF16 dev machine; master weights stay fp32), and an exponential moving average (EMA)
of the weights and BN statistics that is what gets evaluated and saved. Everything random
derives from ``seed``, so a rerun on the same machine and torch build gives the same weights.

Example::

    torch.manual_seed(0)                       # the initialisation is part of the recipe
    ema, summary = train(create_model("resnet8"), images_u8, labels,
                         recipe=TrainRecipe(epochs=3), log=print)
    evaluate_accuracy(ema, test_u8, test_labels)

It logs through the caller's ``log`` callable and never prints.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from harness.predict import predict
from models.activations.deepspline import DeepSpline, model_tv2, project_slopes
from models.activations.sugar import Sugar
from models.training.loop import fit
from models.training.recipe import TrainRecipe


def _swap_relu_for_sugar(model: nn.Module, surrogate: str) -> int:
    """Replace every ``nn.ReLU`` child by ``Sugar(surrogate)`` in place (same forward, so the
    trained weights load into the ReLU model unchanged); returns how many were replaced."""
    count = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, Sugar(surrogate))
                count += 1
    return count


@torch.no_grad()
def _project_splines(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, DeepSpline) and m.lipschitz_bound is not None:
            m.coefficients.copy_(project_slopes(m.coefficients, m.grid, m.lipschitz_bound))


def augment(x: torch.Tensor, *, pad: int, generator: torch.Generator,
            flip: bool = True) -> torch.Tensor:
    """Per-example random crop (reflect padding) and horizontal flip, batched, no Python loop.

    Args:
        x: float images (N, C, H, W).
        pad: maximal shift in pixels.
        generator: the source of randomness (CPU generator).
        flip: flip half of the examples (the flip draws are made either way, so switching
            flips off leaves the crops unchanged).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = (torch.rand(n, generator=generator) < 0.5) & flip
    rows = (dy[:, None] + torch.arange(h)).to(x.device)                      # (N, H)
    cols = dx[:, None] + torch.arange(w)                                      # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)        # flip = reversed cols
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def _param_groups(model: nn.Module, weight_decay: float, spline_lr_scale: float) -> list[dict]:
    decay, no_decay, spline = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, DeepSpline):
                spline.append(p)
            elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                decay.append(p)
            else:
                no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if spline:
        groups.append({"params": spline, "weight_decay": 0.0, "lr_scale": spline_lr_scale})
    return groups


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1.0 - decay)
        else:
            e.copy_(m)


def evaluate_accuracy(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, *,
                      batch_size: int = 1000, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on uint8 images (N,3,32,32), with the clean suite's
    prediction loop, so training monitors exactly what ``harness run --suite clean`` measures."""
    model.eval()
    pred, _ = predict(model, images_u8, labels, device=device, dtype=torch.float32,
                      batch_size=batch_size)
    return (pred == labels).sum().item() / len(labels)


def train(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    recipe: TrainRecipe = TrainRecipe(),
    device: str = "cpu",
    eval_images: torch.Tensor | None = None,
    eval_labels: torch.Tensor | None = None,
    log: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[int, int], None] | None = None,
    eval_every: int = 1,
    evaluate: Callable[[nn.Module], float] | None = None,
    crop_pad: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``model`` with ``recipe`` and return (EMA model in eval mode, summary).

    Args:
        model: a freshly built model taking inputs in [0, 1].
        train_images, train_labels: uint8 (N,3,32,32) images (or float inputs such as
            precomputed sparse codes, used as they are) and int64 (N,) CPU tensors.
        recipe: hyper-parameters.
        device: where to train.
        eval_images, eval_labels: optional held-out set evaluated every ``eval_every`` epochs
            and after the last one (monitoring only; its time is reported apart).
        log: receives one line per epoch.
        on_step: called with (step, total_steps) after every optimiser step (progress bars).
        evaluate: monitoring accuracy of the EMA model, instead of ``eval_images``.
        crop_pad: shift range in input cells, instead of ``recipe.crop_pad`` (code grids).
    """
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    ema = copy.deepcopy(model).eval()   # before any SUGAR swap: the EMA stays a ReLU model
    if recipe.sugar is not None and _swap_relu_for_sugar(model, recipe.sugar) == 0:
        raise ValueError("recipe.sugar is set but the model has no nn.ReLU to train with it")
    if recipe.lipschitz_projection:
        _project_splines(model)
    opt = torch.optim.SGD(
        _param_groups(model, recipe.weight_decay, recipe.spline_lr_scale), lr=recipe.lr,
        momentum=recipe.momentum, nesterov=True,
    )
    n = len(train_labels)
    steps_per_epoch = n // recipe.batch_size   # drop the ragged last batch: fixed shapes
    total = steps_per_epoch * recipe.epochs
    warm = max(1, int(recipe.warmup * total))
    pad = recipe.crop_pad if crop_pad is None else crop_pad

    def lr_at(step: int) -> float:
        if step < warm:
            return recipe.lr * (step + 1) / warm
        return recipe.lr * max(0.0, (total - step) / (total - warm))

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = train_images[idx].to(device, non_blocking=True).float()
        if train_images.dtype == torch.uint8:
            x = x.div_(255)
        x = augment(x, pad=pad, generator=gen, flip=recipe.flip)
        x = x.contiguous(memory_format=torch.channels_last)
        y = train_labels[idx].to(device, non_blocking=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                            enabled=recipe.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float() * recipe.logit_scale, y,
                               label_smoothing=recipe.label_smoothing)
        if recipe.tv2:
            loss = loss + recipe.tv2 * model_tv2(model)
        return loss

    def after_step(step: int) -> None:
        if recipe.lipschitz_projection:
            _project_splines(model)
        # Warm the EMA up: a short run would otherwise be dominated by the random init.
        _ema_update(ema, model, min(recipe.ema_decay, (1 + step) / (10 + step)))

    history: list[dict] = []
    start = time.perf_counter()
    eval_time = 0.0

    def end_epoch(epoch: int, losses: list[torch.Tensor]) -> None:
        nonlocal eval_time
        loss_sum = torch.zeros((), device=device)
        for loss in losses:            # in step order, as a running sum on the device
            loss_sum += loss
        record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / steps_per_epoch,
                  "elapsed_s": round(time.perf_counter() - start, 1)}
        if (eval_images is not None or evaluate is not None) and (
                (epoch + 1) % eval_every == 0 or epoch + 1 == recipe.epochs):
            t_eval = time.perf_counter()
            record["eval_acc_ema"] = (evaluate(ema) if evaluate is not None else
                                      evaluate_accuracy(ema, eval_images, eval_labels, device=device))
            eval_time += time.perf_counter() - t_eval
        history.append(record)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in record.items()))

    fit(loss_fn, opt, n=n, batch_size=recipe.batch_size, epochs=recipe.epochs, generator=gen,
        lr=lr_at, after_step=after_step, end_epoch=end_epoch, on_step=on_step)
    train_time = time.perf_counter() - start - eval_time
    summary = {
        "recipe": asdict(recipe),
        "history": history,
        "train_time_s": round(train_time, 1),      # optimisation only
        "eval_time_s": round(eval_time, 1),        # per-epoch monitoring on the test split
        "steps": total,
        "hardware": {
            "device": device,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    assert math.isfinite(history[-1]["train_loss"]), "training diverged"
    return ema.eval(), summary
