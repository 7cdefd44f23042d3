"""Front ends that transform the image before the backbone: LCA sparse coding and WARP-LCA.

* :class:`LCA` -- convolutional LCA (soft/hard threshold, energy trace, dictionary learning);
* :class:`WarpLCA` -- LCA started from a learned predictor's guess of the converged state;
* :class:`FrontEndClassifier` -- front end + backbone, the zoo's ``lca-resnet8`` and
  ``warp-lca-resnet8``.
"""

from models.front_ends.classifier import FrontEndClassifier
from models.front_ends.lca import (
    LCA,
    LCAOutput,
    learn_dictionary,
    normalize_atoms,
    standardize,
    threshold,
)
from models.front_ends.warp_lca import WarpLCA, cold_states, train_predictor

__all__ = ["LCA", "LCAOutput", "FrontEndClassifier", "WarpLCA", "cold_states",
           "learn_dictionary", "normalize_atoms", "standardize", "threshold", "train_predictor"]
