"""Training: the recipe of the bundled models, one fit loop, and what trains through it.

* :mod:`~models.training.recipe` -- :class:`TrainRecipe` (defaults = the bundled models'
  recipe) and :func:`recipe_for` (defaults + the registry entry's settings + given values);
* :mod:`~models.training.loop` -- :func:`fit`, the one optimisation loop (seeded batches,
  learning-rate schedule, update, hooks) that every trainer below uses;
* :mod:`~models.training.classifier` -- :func:`train` (SGD recipe with augmentation, EMA,
  SUGAR and deep-spline options), :func:`augment`, :func:`evaluate_accuracy`;
* :mod:`~models.training.dictionary` -- LCA dictionary learning and the dictionary checkpoint;
* :mod:`~models.training.predictor` -- WARP-LCA's predictor (two regression stages);
* :mod:`~models.training.coded` -- classifiers on sparse codes (predictor, codes of the train
  split, backbone on the codes);
* :mod:`~models.training.cards` -- the checkpoint + model card a run writes;
* :mod:`~models.training.run` -- :func:`train_and_save`, a registered model from the CIFAR-10
  splits to a checkpoint (``harness train``).

Example::

    from models.training import recipe_for, train_and_save
    meta = train_and_save(model_name="resnet8", out="runs/resnet8", data_dir="DATA",
                          recipe=recipe_for("resnet8", epochs=2), log=print)

    python -m models.training dictionary --data-dir DATA --out models/weights/lca-dictionary
"""

from models.training.classifier import augment, evaluate_accuracy, train
from models.training.dictionary import learn_and_save_dictionary, learn_dictionary
from models.training.loop import fit
from models.training.predictor import train_predictor
from models.training.recipe import TrainRecipe, recipe_for
from models.training.run import train_and_save

__all__ = ["TrainRecipe", "augment", "evaluate_accuracy", "fit", "learn_and_save_dictionary",
           "learn_dictionary", "recipe_for", "train", "train_and_save", "train_predictor"]
