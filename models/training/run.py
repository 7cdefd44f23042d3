"""A registered model from the CIFAR-10 splits to a checkpoint and model card:
:func:`train_and_save` (what ``harness train`` calls).

Example::

    python -m harness train --model resnet8 --data-dir DATA --out runs/resnet8   # 24 epochs

    meta = train_and_save(model_name="resnet8", out="runs/resnet8", data_dir="DATA",
                          recipe=recipe_for("resnet8", epochs=2), log=print)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.data import ImageSet, load_cifar10_arrays
from models.architectures import LipschitzResNet, lipschitz_upper_bound
from models.training.cards import write_trained
from models.training.classifier import evaluate_accuracy, train
from models.training.coded import train_coded
from models.training.recipe import TrainRecipe
from models.zoo import MODELS


def load_splits(data_dir=None) -> tuple[ImageSet, ImageSet, tuple[torch.Tensor, ...]]:
    """(train_set, test_set, (xtr, ytr, xte, yte)): the CIFAR-10 splits as datasets (source,
    fingerprint) and as uint8/int64 CPU tensors."""
    train_set = load_cifar10_arrays("train", data_dir=data_dir)
    test_set = load_cifar10_arrays("test", data_dir=data_dir)
    tensors = (torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels),
               torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels))
    return train_set, test_set, tensors


def train_and_save(
    *, model_name: str, out: str, data_dir=None, recipe: TrainRecipe = TrainRecipe(),
    device: str = "cpu", log: Callable[[str], None] = lambda msg: None,
    on_step: Callable[[int, int], None] | None = None, eval_every: int | None = None,
) -> dict:
    """Train a registered model on the CIFAR-10 train split, evaluate it on the test split and
    write ``out.safetensors``, ``out.json`` and the model card ``out.md``. Returns the metadata.

    The default ``recipe`` is the bundled models' (pass :func:`recipe_for`'s to include the
    registry entry's own settings). Models with a sparse-coding front end (registry meta
    ``front_end``) are trained by :func:`models.training.coded.train_coded` (frozen front end,
    backbone on precomputed codes). ``eval_every``: epochs between test-split checks (default
    5; 4 for front-end models).
    """
    name = MODELS.resolve(model_name)
    train_set, test_set, (xtr, ytr, xte, yte) = load_splits(data_dir)
    torch.manual_seed(recipe.seed)  # the initialisation is part of the recipe
    model = MODELS.get(name)()
    if MODELS.meta(name).get("front_end"):
        model, summary, acc = train_coded(model, xtr, ytr, xte, yte, recipe=recipe,
                                          device=device, log=log, on_step=on_step,
                                          eval_every=eval_every or 4)
    else:
        ema, summary = train(
            model, xtr, ytr, recipe=recipe, device=device, log=log, on_step=on_step,
            eval_images=xte, eval_labels=yte, eval_every=eval_every or 5,
        )
        acc = evaluate_accuracy(ema, xte, yte, device=device)
        model = ema.to("cpu").to(memory_format=torch.contiguous_format)
        if isinstance(model, LipschitzResNet):
            summary["lipschitz_upper_bound"] = lipschitz_upper_bound(model)
    return write_trained(model, out, name=name, summary=summary, accuracy=acc,
                         train_set=train_set, test_set=test_set, log=log)
