"""What the harness evaluates: the model zoo, activations, checkpoints and the training recipe.

Example::

    import models
    net = models.create_model("resnet8", pretrained=True)   # bundled weights, eval mode
    models.list_models("resnet8*")
"""

from models.zoo import MODELS, create_model, list_models

__all__ = ["MODELS", "create_model", "list_models"]
