"""The training recipe of the bundled classifiers: :class:`TrainRecipe` and :func:`recipe_for`.

Example::

    recipe = recipe_for("resnet8-deepspline", epochs=2)   # defaults + the entry's + given
    recipe.tv2, recipe.epochs                              # (0.0001, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from models.zoo import MODELS


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of the recipe (all stored in the checkpoint metadata). The defaults are
    the recipe every bundled classifier was trained with; a registry entry's ``recipe`` meta
    overrides the front-end settings it needs (:func:`recipe_for`)."""

    epochs: int = 24              # the most that keeps the slowest bundled model within 15 min
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


DEFAULTS = {f.name: f.default for f in fields(TrainRecipe)}


def recipe_for(model_name: str, **given) -> TrainRecipe:
    """The recipe for a registered model: defaults, then the entry's ``recipe`` settings,
    then ``given`` (None values ignored)."""
    settings = dict(MODELS.meta(model_name).get("recipe") or {})
    settings.update({k: v for k, v in given.items() if v is not None})
    return TrainRecipe(**settings)
