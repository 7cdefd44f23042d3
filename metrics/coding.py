"""Sparse-coding energy of a model's LCA-type front end: how close its codes come to the
minimum of the LCA energy, and after how many iterations, from the model's own start (WARP-LCA:
the learned warm start) and from the cold start (zeros).

The front end is found by duck typing, so ``metrics`` never imports ``models``: a submodule
with ``sparsity_site == "codes"`` and an ``encode(s, *, iterations, threshold, trace)`` method
whose result carries ``codes`` and a per-iteration ``trace`` (``energy``, ``l0``); the LCA core
(the module itself or its ``.lca``) also has ``prepare(images)`` (standardise, whiten) and
``energy(s, codes, kind)``. ``models.front_ends.LCA`` and ``WarpLCA`` are such modules.

The target is the energy of cold LCA after ``reference_iterations`` (the paper's "LCA-1000");
an example reaches it at the first iteration whose energy is within ``tolerance`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def find_coder(model: nn.Module) -> nn.Module | None:
    """The outermost sparse-coding module of ``model`` (None when it has none)."""
    for module in model.modules():
        if getattr(module, "sparsity_site", None) == "codes" and callable(
                getattr(module, "encode", None)):
            return module
    return None


def _core(coder: nn.Module) -> nn.Module:
    return getattr(coder, "lca", coder)


def model_iterations(model: nn.Module) -> int:
    """The iterations the model's front end runs in its forward."""
    coder = find_coder(model)
    if coder is None:
        raise ValueError("the model has no sparse-coding front end")
    return int(coder.iterations)


@dataclass
class EnergyTraces:
    """Per example: the reference energy, the energy per iteration from the model's own start
    and from zeros ((iterations + 1, N) arrays; row t after t iterations), the l0 fraction
    along the model's own trace, and the model's own iteration count."""

    reference: np.ndarray
    own: np.ndarray
    cold: np.ndarray
    own_l0: np.ndarray
    model_iterations: int
    warm: bool                      # the model's start is not zeros (WARP-LCA)


@torch.no_grad()
def energy_traces(model: nn.Module, x: torch.Tensor, *, reference_iterations: int,
                  max_iterations: int, threshold: str | None = None) -> EnergyTraces:
    """Energies of ``model``'s codes for images ``x`` (in [0, 1]); see the module docstring.

    Raises:
        ValueError: the model has no sparse-coding front end.
    """
    coder = find_coder(model)
    if coder is None:
        raise ValueError("the model has no sparse-coding front end (a module with "
                         "sparsity_site = 'codes' and an encode method)")
    core = _core(coder)
    kind = threshold or core.threshold
    s = core.prepare(x)
    ref_codes = core.encode(s, None, iterations=reference_iterations, threshold=kind).codes
    reference = core.energy(s, ref_codes, kind).float()
    warm = coder is not core
    own = coder.encode(s, iterations=max_iterations, threshold=kind, trace=True).trace
    cold = (core.encode(s, None, iterations=max_iterations, threshold=kind, trace=True).trace
            if warm else own)
    return EnergyTraces(reference=reference.cpu().double().numpy(),
                        own=own["energy"].cpu().double().numpy(),
                        cold=cold["energy"].cpu().double().numpy(),
                        own_l0=own["l0"].cpu().double().numpy(),
                        model_iterations=int(coder.iterations), warm=warm)


def iterations_to(trace: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per example (column) the first row of ``trace`` at or below ``target`` (NaN: never)."""
    hit = trace <= target[None, :]
    first = hit.argmax(axis=0).astype(np.float64)
    first[~hit.any(axis=0)] = np.nan
    return first
