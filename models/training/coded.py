"""Classifiers on sparse codes (``lca-resnet8``, ``warp-lca-resnet8``): :func:`train_coded`.

Three seeded steps, each timed and recorded in the checkpoint's metadata: WARP-LCA's
predictor is fitted first (:func:`models.training.predictor.train_predictor`, with
:data:`PREDICTOR_SETTINGS`); the front end (the bundled dictionary, fixed) codes the train split
once (:func:`encode_images`); the ResNet-8 backbone is trained on the codes with the shared
recipe (:func:`models.training.classifier.train`).

Because the codes are computed once per run (the front end is frozen while the backbone
learns), augmentation happens in code space: a random shift of the code grid by up to
``crop_pad // stride`` cells, which is exactly a shift of the image by a multiple of the
stride away from the borders. Horizontal flips are not used: a flip does not commute with a
stride-2 code grid centred on even pixels.

Example (``harness train --model warp-lca-resnet8`` ends up here)::

    torch.manual_seed(recipe.seed)
    model, summary, accuracy = train_coded(create_model("warp-lca-resnet8"), xtr, ytr, xte,
                                           yte, recipe=recipe_for("warp-lca-resnet8"))
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from models.front_ends import FrontEndClassifier, WarpLCA
from models.training.classifier import evaluate_accuracy, train
from models.training.predictor import PREDICTOR_SETTINGS, train_predictor
from models.training.recipe import TrainRecipe


@torch.no_grad()
def encode_images(front_end: nn.Module, images: torch.Tensor, *, batch_size: int = 128,
                  device: str = "cpu", dtype=torch.float16) -> torch.Tensor:
    """Codes of uint8 images, stored as ``dtype`` on the CPU (float16: 1.6 GB for the train split)."""
    front_end = front_end.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(front_end(x).to(dtype).cpu())
    return torch.cat(out)


@torch.no_grad()
def _accuracy_on_codes(backbone: nn.Module, codes: torch.Tensor, labels: torch.Tensor, *,
                       device: str, batch_size: int = 1000) -> float:
    backbone.eval()
    correct = 0
    for c, y in zip(codes.split(batch_size), labels.split(batch_size)):
        correct += (backbone(c.to(device).float()).argmax(1).cpu() == y).sum().item()
    return correct / len(labels)


def train_coded(
    model: FrontEndClassifier, train_images: torch.Tensor, train_labels: torch.Tensor,
    test_images: torch.Tensor, test_labels: torch.Tensor, *, recipe: TrainRecipe,
    device: str = "cpu", log: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[int, int], None] | None = None, eval_every: int = 4,
) -> tuple[FrontEndClassifier, dict, float]:
    """Train a front-end classifier built by the zoo (seed the global generator first: the
    initialisation is part of the recipe). Returns (the model in eval mode on the CPU, the
    summary for its checkpoint, its accuracy on the test images).

    ``train_time_s`` counts everything that produces the weights: predictor (teacher states
    included), coding the train split and the backbone's optimisation. Coding the test split
    for monitoring and the final full-model evaluation count as ``eval_time_s``.
    """
    front_end = model.front_end
    extra: dict = {}
    start = time.perf_counter()
    if isinstance(front_end, WarpLCA):
        settings = dict(PREDICTOR_SETTINGS)
        n = settings.pop("teacher_n")
        extra["predictor"] = train_predictor(front_end, train_images[:n], seed=recipe.seed,
                                             device=device, log=log, **settings)
    t_codes = time.perf_counter()
    codes_tr = encode_images(front_end, train_images, device=device)
    extra["coding_time_s"] = round(time.perf_counter() - t_codes, 1)
    log(f"coded the train split in {extra['coding_time_s']} s "
        f"(l0 {(codes_tr[:1000] != 0).float().mean().item():.4f})")
    prep_time = time.perf_counter() - start
    t_eval = time.perf_counter()
    codes_te = encode_images(front_end, test_images, device=device)
    test_coding_time = time.perf_counter() - t_eval
    stride = front_end.lca.stride if isinstance(front_end, WarpLCA) else front_end.stride
    ema, summary = train(
        model.backbone, codes_tr, train_labels, recipe=recipe, device=device, log=log,
        on_step=on_step, eval_every=eval_every, crop_pad=recipe.crop_pad // stride,
        evaluate=lambda m: _accuracy_on_codes(m, codes_te, test_labels, device=device),
    )
    del codes_tr
    model.backbone = ema.to(memory_format=torch.contiguous_format)
    t_eval = time.perf_counter()
    accuracy = evaluate_accuracy(model.to(device), test_images, test_labels, device=device)
    final_eval = time.perf_counter() - t_eval
    summary["train_time_s"] = round(summary["train_time_s"] + prep_time, 1)
    summary["eval_time_s"] = round(summary["eval_time_s"] + test_coding_time + final_eval, 1)
    return model.to("cpu").eval(), {**extra, **summary}, accuracy
