"""Front ends that transform the image before the backbone: LCA sparse coding and WARP-LCA.

* :class:`LCA` -- convolutional LCA (soft/hard threshold, energy trace, ZCA whitening);
* :class:`WarpLCA` -- LCA started from a learned predictor's guess of the converged state;
* :class:`FrontEndClassifier` -- front end + backbone, the zoo's ``lca-resnet8`` and
  ``warp-lca-resnet8``.

Their training (dictionary learning, the predictor) is in :mod:`models.training`.

Example::

    lca = LCA(features=16, kernel_size=7, stride=2, tau=10.0, iterations=50)
    codes = WarpLCA(lca, iterations=5)(images)      # images in [0, 1]
"""

from models.front_ends.classifier import FrontEndClassifier
from models.front_ends.lca import LCA, LCAOutput, normalize_atoms, standardize, threshold
from models.front_ends.warp_lca import WarpLCA, cold_states

__all__ = ["LCA", "LCAOutput", "FrontEndClassifier", "WarpLCA", "cold_states",
           "normalize_atoms", "standardize", "threshold"]
