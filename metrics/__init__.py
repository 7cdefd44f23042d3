"""Measurements of a model that are not accuracies: Lipschitz bounds and estimates
(:mod:`metrics.lipschitz`, :mod:`metrics.clever`, with the operator norms of
:mod:`metrics.operator_norms`) and activation sparsity (:mod:`metrics.sparsity`).

They take any ``nn.Module`` on [0, 1] inputs and never import ``models``: model-specific
modules take part through duck-typed protocols documented in each module. ``models`` may import
``metrics`` (the 1-Lipschitz layers normalise by :mod:`metrics.operator_norms`).
"""
