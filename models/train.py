"""The seeded CIFAR-10 training recipe that produced the bundled weights.

Recipe (defaults of :class:`TrainRecipe`): SGD with Nesterov momentum 0.9, batch 256, a
one-cycle learning-rate schedule (linear warm-up to ``lr`` over ``warmup`` of the run, then
linear decay to 0), weight decay on conv/linear weights only, label smoothing, per-example
random crop (reflect-padded by 4) and horizontal flip drawn from a seeded generator,
channels_last, bf16 autocast (1.4x faster than fp32 on the 2-core AVX-512-BF16 dev machine;
master weights stay fp32), and an exponential moving average (EMA) of the weights and BN
statistics that is what gets evaluated and saved. Everything random derives from ``seed``, so a rerun on the
same machine and torch build gives the same weights.

Usage::

    python -m harness train --model resnet8 --epochs 30 --data-dir DATA --out models/weights/resnet8

The library function :func:`train` returns the trained EMA model and a summary dict; it logs
through a caller-supplied ``log`` callable and never prints.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of the recipe (all stored in the checkpoint metadata)."""

    epochs: int = 55
    batch_size: int = 256
    lr: float = 0.6
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup: float = 0.15          # fraction of all steps spent warming up
    ema_decay: float = 0.995      # per step
    crop_pad: int = 4
    flip: bool = True             # random horizontal flips (off for stride-2 sparse codes)
    seed: int = 0
    bf16: bool = True             # bf16 autocast for forward/backward; weights, EMA, loss in fp32
    # Front-end options (defaults: off; a registry entry's ``recipe`` meta sets its own).
    sugar: str | None = None      # train every nn.ReLU with this SUGAR surrogate's gradient
    tv2: float = 0.0              # weight of the deep splines' TV(2) regulariser
    logit_scale: float = 1.0      # the loss sees logits * scale (temperature of 1-Lip models)
    lipschitz_projection: bool = False  # re-project spline slopes after every optimiser step
    spline_lr_scale: float = 1.0  # spline coefficients learn at lr * this (no weight decay)


def recipe_for(model_name: str, **given) -> TrainRecipe:
    """The recipe for a registered model: defaults, then the entry's ``recipe`` settings,
    then ``given`` (None values ignored)."""
    from models.zoo import MODELS

    settings = dict(MODELS.meta(model_name).get("recipe") or {})
    settings.update({k: v for k, v in given.items() if v is not None})
    return TrainRecipe(**settings)


def _swap_relu_for_sugar(model: nn.Module, surrogate: str) -> int:
    """Replace every ``nn.ReLU`` child by ``Sugar(surrogate)`` in place (same forward, so the
    trained weights load into the ReLU model unchanged); returns how many were replaced."""
    from models.activations.sugar import Sugar

    count = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, Sugar(surrogate))
                count += 1
    return count


@torch.no_grad()
def _project_splines(model: nn.Module) -> None:
    from models.activations.deepspline import DeepSpline, project_slopes

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
    from models.activations.deepspline import DeepSpline

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
    from harness.predict import predict

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
    from models.activations.deepspline import model_tv2

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

    def lr_at(step: int) -> float:
        if step < warm:
            return recipe.lr * (step + 1) / warm
        return recipe.lr * max(0.0, (total - step) / (total - warm))

    history = []
    step = 0
    start = time.perf_counter()
    eval_time = 0.0
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for b in range(steps_per_epoch):
            idx = perm[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x = train_images[idx].to(device, non_blocking=True).float()
            if train_images.dtype == torch.uint8:
                x = x.div_(255)
            x = augment(x, pad=recipe.crop_pad if crop_pad is None else crop_pad, generator=gen,
                        flip=recipe.flip)
            x = x.contiguous(memory_format=torch.channels_last)
            y = train_labels[idx].to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(step) * group["lr_scale"]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                enabled=recipe.bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float() * recipe.logit_scale, y,
                                   label_smoothing=recipe.label_smoothing)
            if recipe.tv2:
                loss = loss + recipe.tv2 * model_tv2(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if recipe.lipschitz_projection:
                _project_splines(model)
            # Warm the EMA up: a short run would otherwise be dominated by the random init.
            _ema_update(ema, model, min(recipe.ema_decay, (1 + step) / (10 + step)))
            loss_sum += loss.detach()
            step += 1
            if on_step is not None:
                on_step(step, total)
        record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / steps_per_epoch,
                  "elapsed_s": round(time.perf_counter() - start, 1)}
        if (eval_images is not None or evaluate is not None) and (
                (epoch + 1) % eval_every == 0 or epoch + 1 == recipe.epochs):
            t_eval = time.perf_counter()
            record["eval_acc_ema"] = (evaluate(ema) if evaluate is not None else
                                      evaluate_accuracy(ema, eval_images, eval_labels, device=device))
            eval_time += time.perf_counter() - t_eval
        history.append(record)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
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


_FRONT_END = {"sugar": None, "tv2": 0.0, "logit_scale": 1.0, "lipschitz_projection": False,
              "spline_lr_scale": 1.0, "label_smoothing": 0.1, "weight_decay": 5e-4}


def _front_end(rec: dict) -> str:
    """The non-default front-end recipe settings, e.g. 'tv2 0.0001, logit_scale 10.0'."""
    return ", ".join(f"{k} {rec[k]}" for k, default in _FRONT_END.items()
                     if rec.get(k, default) != default)


def _coded_lines(meta: dict) -> list[str]:
    """Model-card lines of a sparse-coding front end (models.front_ends.training)."""
    fe = meta.get("model", {}).get("front_end") or {}
    if not fe:
        return []
    lines = [
        f"- Front end: {fe['kind']} -- convolutional LCA, {fe['features']} atoms of "
        f"{fe['kernel_size']}x{fe['kernel_size']} at stride {fe['stride']} (dictionary "
        f"`{fe['dictionary']}`, learned unsupervised and fixed), {fe['threshold']} threshold "
        f"λ = {fe['lambda']}, τ = {fe['tau']}, per-sample standardised"
        f"{' and ZCA-whitened' if fe.get('whitening') else ''} input; **evaluation runs "
        f"{fe['iterations']} LCA iterations** per image"
        + (" from the predictor's warm start." if fe["kind"] == "warp-lca" else
           " from zero (cold start)."),
        f"- The backbone was trained on codes of the train split computed once "
        f"({meta['coding_time_s']} s, included in the training time); augmentation is a shift "
        f"of the code grid by up to {meta['recipe']['crop_pad']} px (no flips).",
    ]
    pred = meta.get("predictor")
    if pred:
        stage1 = [h for h in pred["history"] if "unrolled" not in h]
        stage2 = [h for h in pred["history"] if "unrolled" in h]
        lines.append(
            f"- Predictor: regressed onto cold LCA's states u* after {pred['teacher_iterations']} "
            f"iterations for {pred['n']:,} training images (teacher {pred['teacher_time_s']} s, "
            f"fit {pred['train_time_s']} s): {pred['epochs']} epochs Adam lr {pred['lr']} on "
            f"u(0), mean squared error {stage1[-1]['mse']} against "
            f"{pred['mse_of_untrained_guess_b']} for the untrained guess u(0) = b"
            + (f"; then {len(stage2)} epochs through the unrolled iterations on the first "
               f"{pred['unroll_n']:,} images (Adam lr {pred['unroll_lr']}), mean squared error "
               f"of u({stage2[-1]['unrolled']}) {stage2[-1]['mse']}." if stage2 else "."))
    return lines


def _model_card(meta: dict) -> str:
    rec = meta["recipe"]
    hist = meta["history"]
    lines = [
        f"# {meta['factory']} -- bundled checkpoint",
        "",
        f"- Architecture: {meta['model']['arch']}, activation {meta['model']['activation']}, "
        f"{meta['num_params']:,} parameters, "
        + ("per-sample standardisation"
           + (" and ZCA whitening" if meta["model"]["front_end"].get("whitening") else "")
           + " in the front end"
           if meta.get("model", {}).get("front_end") else
           f"normalisation inside the model (mean {meta['model']['mean']}, std "
           f"{meta['model']['std']})") + ", inputs in [0, 1].",
        f"- Clean accuracy on the full CIFAR-10 test split ({meta['test']['n']:,} images): "
        f"**{100 * meta['test']['accuracy']:.2f} %** (EMA weights, no test-time augmentation).",
        f"- Training: {rec['epochs']} epochs, batch {rec['batch_size']}, SGD Nesterov "
        f"(momentum {rec['momentum']}), one-cycle lr peak {rec['lr']} (warm-up "
        f"{rec['warmup']:.0%}), weight decay {rec['weight_decay']} on conv/linear weights, label "
        f"smoothing {rec['label_smoothing']}, random crop (reflect pad {rec['crop_pad']})"
        f"{' + flip' if rec.get('flip', True) else ''}, "
        f"EMA decay {rec['ema_decay']}, {'bf16 autocast' if rec.get('bf16') else 'fp32'}, "
        f"seed {rec['seed']}.",
        *([f"- Front-end settings: {_front_end(rec)}."] if _front_end(rec) else []),
        *_coded_lines(meta),
        *([f"- Certified l2 Lipschitz bound from pixels in [0, 1] to logits (product of the "
           f"layers' rigorous circular-embedding norm bounds and the splines' max slopes): "
           f"{meta['lipschitz_upper_bound']:.6f}."]
          if "lipschitz_upper_bound" in meta else []),
        f"- Measured training time: {meta['train_time_s'] / 60:.1f} min (plus "
        f"{meta['eval_time_s']:.0f} s of test-split monitoring) on "
        f"{meta['hardware']['threads']} CPU threads ({meta['hardware']['cpu']}), torch "
        f"{meta['hardware']['torch']}, device {meta['hardware']['device']}.",
        f"- Training data: {meta['data']['train_n']:,} images from `{meta['data']['source']}`, "
        f"sha256 `{meta['data']['train_fingerprint']}`; test fingerprint "
        f"`{meta['data']['test_fingerprint']}`.",
        *([f"- Data note: {meta['data']['note']}"] if meta["data"].get("note") else []),
        f"- Weights: `{meta['weights_file']}`, sha256 `{meta['sha256']}`.",
        "",
        "Per-epoch log (EMA accuracy on the test split):",
        "",
        "| epoch | train loss | test acc | elapsed (s) |",
        "|---:|---:|---:|---:|",
    ]
    for h in hist:
        acc = f"{100 * h['eval_acc_ema']:.2f} %" if "eval_acc_ema" in h else "-"
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {acc} | {h['elapsed_s']} |")
    flags = (f"--epochs {rec['epochs']} --batch-size {rec['batch_size']} --lr {rec['lr']} "
             f"--seed {rec['seed']}" + ("" if rec.get("bf16", False) else " --fp32"))
    if rec.get("sugar"):
        flags += f" --sugar {rec['sugar']}"   # the other front-end settings come with the model
    lines += ["", f"Reproduce: `python -m harness train --model {meta['factory']} {flags} "
              "--data-dir DATA --out STEM` (seeded; tests/test_train.py checks that a short run "
              "of the recipe repeats bit-exactly on one machine).", ""]
    return "\n".join(lines)


def load_splits(data_dir=None):
    """(train_set, test_set, (xtr, ytr, xte, yte)): the CIFAR-10 splits as datasets (source,
    fingerprint) and as uint8/int64 CPU tensors."""
    from harness.data import load_cifar10_arrays

    train_set = load_cifar10_arrays("train", data_dir=data_dir)
    test_set = load_cifar10_arrays("test", data_dir=data_dir)
    tensors = (torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels),
               torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels))
    return train_set, test_set, tensors


def write_trained(model: nn.Module, out: str, *, name: str, summary: dict, accuracy: float,
                  train_set, test_set, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Save a trained model as ``out.safetensors``/``out.json`` with its training summary, test
    accuracy and data fingerprints, write the model card ``out.md``; returns the metadata."""
    from pathlib import Path

    from models.checkpoints import checkpoint_file, save_checkpoint

    extra = {
        **summary,
        "test": {"n": len(test_set.labels), "accuracy": accuracy},
        "data": {
            "source": Path(train_set.source).name,
            "train_n": len(train_set.labels),
            "train_fingerprint": train_set.fingerprint,
            "test_fingerprint": test_set.fingerprint,
        },
    }
    meta = save_checkpoint(model, out, factory=name, extra=extra)
    checkpoint_file(out, ".md").write_text(_model_card(meta))
    log(f"test accuracy {accuracy:.4f}; wrote {out}.safetensors/.json/.md")
    return meta


def train_and_save(
    *, model_name: str, out: str, data_dir=None, recipe: TrainRecipe = TrainRecipe(),
    device: str = "cpu", log: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[int, int], None] | None = None, eval_every: int | None = None,
) -> dict:
    """Train a registered model on the CIFAR-10 train split, evaluate it on the test split and
    write ``out.safetensors``, ``out.json`` and the model card ``out.md``. Returns the metadata.

    Models with a sparse-coding front end (registry meta ``front_end``) are trained by
    :func:`models.front_ends.training.train_and_save_coded` (frozen front end, backbone on
    precomputed codes). ``eval_every``: epochs between test-split checks (default 5; 4 for
    front-end models).
    """
    from models.zoo import MODELS

    name = MODELS.resolve(model_name)
    if MODELS.meta(name).get("front_end"):
        from models.front_ends.training import train_and_save_coded

        return train_and_save_coded(model_name=name, out=out, data_dir=data_dir, recipe=recipe,
                                    device=device, log=log, on_step=on_step,
                                    eval_every=eval_every or 4)
    train_set, test_set, (xtr, ytr, xte, yte) = load_splits(data_dir)
    torch.manual_seed(recipe.seed)  # the initialisation is part of the recipe
    model = MODELS.get(name)()
    ema, summary = train(
        model, xtr, ytr, recipe=recipe, device=device, log=log, on_step=on_step,
        eval_images=xte, eval_labels=yte, eval_every=eval_every or 5,
    )
    acc = evaluate_accuracy(ema, xte, yte, device=device)
    ema = ema.to("cpu").to(memory_format=torch.contiguous_format)
    from models.architectures import LipschitzResNet, lipschitz_upper_bound

    if isinstance(ema, LipschitzResNet):
        summary["lipschitz_upper_bound"] = lipschitz_upper_bound(ema)
    return write_trained(ema, out, name=name, summary=summary, accuracy=acc,
                         train_set=train_set, test_set=test_set, log=log)
