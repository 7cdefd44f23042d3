"""LCA dictionary learning: :func:`learn_dictionary` (the algorithm, through the one fit loop)
and :func:`learn_and_save_dictionary` (the bundled dictionary's recipe on the CIFAR-10 train
split, written as a ``lca-dictionary`` checkpoint the zoo's front ends are built from).

The checkpoint's JSON records the settings (:data:`DICTIONARY_SETTINGS`,
:data:`WHITENING_SETTINGS`), the training run, the measured squared operator norm ||Φ||²
(``operator_norm_sq``) and the τ the models run with (``evaluation.tau``,
:func:`evaluation_tau`); the numbers of the bundled dictionary are in
``models/weights/lca-dictionary.json`` and nowhere else. Whitening keeps the learned atoms
incoherent, hence ||Φ||² and τ small (see :func:`models.front_ends.lca.whitening_filter`).

Example (the command line does the same, ``python -m models.training dictionary``)::

    meta = learn_and_save_dictionary(out="runs/lca-dictionary", data_dir="DATA", log=print)
    meta["operator_norm_sq"], meta["evaluation"]["tau"]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.data import load_cifar10_arrays
from models.checkpoints import save_checkpoint
from models.front_ends.lca import LCA, normalize_atoms, whitening_filter
from models.training.loop import fit
from models.zoo import DICTIONARY_KIND, DICTIONARY_STEM

# The dictionary of record: 64 atoms of 7x7 at stride 2 (code 64x16x16, 5.3x overcomplete),
# lcapt's λ = 0.25, soft threshold, on per-sample standardised images whitened by a 9x9 ZCA
# filter estimated from the first 10,000 train images.
DICTIONARY_SETTINGS = {"features": 64, "kernel_size": 7, "stride": 2, "lambda_": 0.25,
                       "threshold": "soft", "nonneg": True, "standardize_input": True}
WHITENING_SETTINGS = {"size": 9, "eps": 0.05, "n_images": 10_000}
_TAU_RULE = ("smallest multiple of 0.5 above operator_norm_sq / 2: ISTA converges for "
             "1/tau < 2/operator_norm_sq")


def evaluation_tau(operator_norm_sq: float) -> float:
    """The τ the zoo's models run a dictionary with: the smallest multiple of 0.5 above
    ||Φ||²/2, inside ISTA's convergence range 1/τ < 2/||Φ||² for every input (τ >= ||Φ||²,
    which makes the energy monotone, would need about twice the iterations)."""
    return (math.floor(operator_norm_sq) + 1) / 2


class _AtomUpdate:
    """lcapt's dictionary step as the fit loop's optimiser: Φ <- normalize(Φ - lr · ∇Φ / n),
    n = 1 + how often each atom was active in the batch (``times_active``), which keeps rarely
    used atoms from being frozen out. :meth:`loss` takes the batch's signal and codes (found
    with Φ fixed), keeps them, and returns the reconstruction error as a function of a fresh
    copy of Φ."""

    def __init__(self, lca: LCA, lr: float) -> None:
        self.lca, self.lr = lca, lr
        self.signal: torch.Tensor | None = None
        self.codes: torch.Tensor | None = None
        self.atoms: torch.Tensor | None = None

    def loss(self, s: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        self.signal, self.codes = s, codes
        self.atoms = self.lca.dictionary.clone().requires_grad_(True)
        recon = self.lca.reconstruct(codes, s.shape[-2:], dictionary=self.atoms)
        return 0.5 * (s - recon).square().sum()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: :meth:`loss` makes a fresh leaf per batch."""

    @torch.no_grad()
    def step(self) -> None:
        active = (self.codes != 0).sum(dim=(0, 2, 3)).float() + 1.0
        self.lca.dictionary.copy_(normalize_atoms(
            self.atoms - self.lr * self.atoms.grad / active.view(-1, 1, 1, 1)))


def learn_dictionary(
    lca: LCA,
    images: torch.Tensor,
    *,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 0.01,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Learn ``lca.dictionary`` in place, unsupervised, by alternating LCA inference and a
    gradient step on the reconstruction error (Olshausen & Field 1997; lcapt's rule):

        a = LCA(s; Φ)      Φ <- normalize(Φ + lr · (Φ-gradient of -1/2||s - Φa||²) / n_active)

    where the step of each atom is divided by how often it was active in the batch (lcapt's
    ``times_active`` scaling, which keeps rarely used atoms from being frozen out).

    Args:
        lca: the layer whose dictionary is learned (its λ, τ and threshold are used).
        images: uint8 (N, 3, H, W) or float images in [0, 1].
        steps: dictionary updates; each draws ``batch_size`` images (seeded, with replacement
            across steps) and flips half of them.
        iterations: LCA iterations per step (default ``lca.iterations``).

    Returns:
        ``{"steps", "energy", "l0", "recon_error"}`` -- per-step means (lists), for the log.
    """
    gen = torch.Generator().manual_seed(seed)
    lca.to(device)
    update = _AtomUpdate(lca, lr)
    history: dict = {"energy": [], "l0": [], "recon_error": []}

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
        s = lca.prepare(x)
        with torch.no_grad():
            codes = lca.encode(s, iterations=iterations).codes
        return update.loss(s, codes)

    def after_step(step: int) -> None:
        s = update.signal
        with torch.no_grad():
            terms = lca.energy_terms(s, update.codes)
        for key in ("energy", "l0", "recon_error"):
            history[key].append(terms[key].mean().item())
        # a zero code has energy 1/2||s||²; above it the iteration has diverged (τ too small
        # for the dictionary's coherence, which grows as it learns)
        if not history["energy"][-1] <= 0.5 * s.square().flatten(1).sum(1).mean().item():
            raise RuntimeError(f"LCA diverged at dictionary step {step + 1} (energy "
                               f"{history['energy'][-1]:.1f}); increase tau")
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} energy {history['energy'][-1]:.2f} "
                f"recon {history['recon_error'][-1]:.2f} l0 {history['l0'][-1]:.4f}")

    fit(loss_fn, update, n=len(images), batch_size=batch_size, epochs=1, steps_per_epoch=steps,
        replacement=True, generator=gen, after_step=after_step)
    history["steps"] = steps
    return history


def learn_and_save_dictionary(
    *, out: str | os.PathLike = DICTIONARY_STEM, data_dir=None, steps: int = 300,
    batch_size: int = 128, lr: float = 0.01, iterations: int = 60, tau: float = 10.0,
    seed: int = 0, device: str = "cpu", log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Learn the LCA dictionary on the train split (whitening filter first, then
    :func:`learn_dictionary` at ``tau``) and write the ``lca-dictionary`` checkpoint
    ``out.safetensors``/``out.json``; returns its metadata."""
    train = load_cifar10_arrays("train", data_dir=data_dir)
    torch.manual_seed(seed)
    start = time.perf_counter()
    white = {k: v for k, v in WHITENING_SETTINGS.items() if k != "n_images"}
    filt = whitening_filter(torch.from_numpy(train.images[:WHITENING_SETTINGS["n_images"]]),
                            seed=seed, **white)
    lca = LCA(**DICTIONARY_SETTINGS, tau=tau, iterations=iterations, whitening=filt)
    history = learn_dictionary(lca, torch.from_numpy(train.images), steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, device=device, log=log)
    seconds = time.perf_counter() - start
    norm_sq = round(lca.operator_norm(), 4)
    meta = save_checkpoint(
        {"dictionary": lca.dictionary, "whitening": filt}, out, kind=DICTIONARY_KIND,
        extra={
            "settings": {**DICTIONARY_SETTINGS, "whitening": WHITENING_SETTINGS},
            "training": {"tau": tau, "steps": steps, "batch_size": batch_size, "lr": lr,
                         "lca_iterations": iterations, "seed": seed, "flip": True,
                         "time_s": round(seconds, 1), "device": device,
                         "threads": torch.get_num_threads(), "torch": torch.__version__},
            "final": {k: round(sum(v[-20:]) / len(v[-20:]), 4) for k, v in history.items()
                      if isinstance(v, list)},
            "first": {k: round(v[0], 4) for k, v in history.items() if isinstance(v, list)},
            "operator_norm_sq": norm_sq,
            "evaluation": {"tau": evaluation_tau(norm_sq), "rule": _TAU_RULE},
            "data": {"source": Path(train.source).name, "train_fingerprint": train.fingerprint},
        })
    log(f"dictionary learned in {seconds:.0f} s; wrote {out}.safetensors/.json")
    return meta
