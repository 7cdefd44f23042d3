"""Gradient-masking checks (Carlini et al. 2019, "On evaluating adversarial robustness"; Athalye
et al. 2018): sanity conditions that an honest white-box evaluation satisfies. A violation does
not prove masking, but a number reported next to one is not to be trusted.

Each check returns a :class:`Check`: its name, the measured value, the limit, and whether it
is violated (``flag``). :func:`run_checks` runs them all on one batch:

* ``monotone_eps``: robust accuracy does not increase with eps (each eps attacked
  independently, so nothing forces it); value: the largest increase.
* ``unbounded``: PGD with Linf eps 1 (the whole cube) and many steps leaves <= 1 % correct;
  value: its accuracy. A model that survives it is not looked at by the gradient.
* ``black_box``: the black-box Square attack, run on the examples white-box PGD left robust,
  fools at most a margin of all examples (a black box should not find what the gradient
  missed); value: that fraction.
* ``more_steps``: PGD with doubled steps and restarts, on the same robust examples, fools at
  most a margin of all examples; value: that fraction (the accuracy drop).
* ``gradient_paths``: where a model offers several gradient paths, the best path does not beat
  the model's own by more than a margin (its own backward hides the weakness); value: the
  largest gap.
* ``nonfinite``: the model's logits are finite on the clean images; value: the fraction that
  is not.
* ``random_forward``: two forward passes give the same logits, unless the attack averages
  gradients over several (``eot`` > 1); value: the largest difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import make_attack
from attacks.gradients import default_path, gradient_paths, use_gradient
from attacks.pgd import pgd

# Margins (fractions of the examples): small but above the noise of ~100 examples.
BLACK_BOX_MARGIN = 0.02
MORE_STEPS_MARGIN = 0.02
PATH_MARGIN = 0.02
UNBOUNDED_LIMIT = 0.01
MONOTONE_MARGIN = 0.0


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``value`` compared with ``limit``; ``flag`` when violated."""

    name: str
    value: float
    limit: float
    flag: bool
    detail: str = ""


def check_monotone(eps: Sequence[float], accuracy: Sequence[float],
                   margin: float = MONOTONE_MARGIN) -> Check:
    """Accuracy at each eps (sorted by eps) never above the accuracy at a smaller eps."""
    order = np.argsort(eps)
    acc = np.asarray(accuracy, dtype=float)[order]
    rise = float(np.max(acc[1:] - np.maximum.accumulate(acc)[:-1])) if len(acc) > 1 else 0.0
    rise = max(rise, 0.0)
    return Check("monotone_eps", rise, margin, rise > margin,
                 "robust accuracy rose with eps" if rise > margin else "")


def run_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               eps: Sequence[float], norm: str = "Linf", steps: int = 10, restarts: int = 1,
               loss: str = "ce", seed: int = 0, example_ids=None, square_queries: int = 500,
               unbounded_steps: int = 50, paths: Sequence[str] | None = None, eot: int = 1,
               black_box: Callable | None = None) -> tuple[list[Check], dict[str, np.ndarray]]:
    """All checks on images ``x`` in [0, 1] with labels ``y``.

    ``eps``: the Linf (or L2) radii of the run; monotonicity is checked over them, the black-box
    and more-steps checks use the largest eps whose PGD accuracy is above 0 (else the
    smallest). ``paths``: gradient paths to compare (default: all of the model's).

    Returns:
        (checks, per-example arrays): ``unbounded_correct`` (bool: correct after the
        unbounded attack) for storage.
    """
    checks: list[Check] = []
    with torch.no_grad():
        logits = torch.cat([model(xb).float() for xb in x.split(500)])
    bad = float((~torch.isfinite(logits).all(1)).float().mean())
    checks.append(Check("nonfinite", bad, 0.0, bad > 0,
                        "the model returned NaN/Inf logits" if bad > 0 else ""))
    with torch.no_grad():
        again = torch.cat([model(xb).float() for xb in x.split(500)])
    moved = float(torch.nan_to_num(again - logits).abs().max()) if len(x) else 0.0
    checks.append(Check("random_forward", moved, 1e-4 if eot == 1 else float("inf"),
                        eot == 1 and moved > 1e-4,
                        "two forward passes gave different logits: the model is random, attack "
                        "it with EOT (--eot)" if eot == 1 and moved > 1e-4 else ""))
    paths = list(paths or gradient_paths(model))
    own = default_path(model)
    settings = dict(norm=norm, steps=steps, restarts=restarts, loss=loss, seed=seed,
                    example_ids=example_ids, eot=eot)
    per_path = {}
    for path in paths:
        with use_gradient(model, path):
            per_path[path] = pgd(model, x, y, eps=list(eps), **settings)
    acc = {p: [r.robust_accuracy for r in rs] for p, rs in per_path.items()}
    worst = np.min(np.array([acc[p] for p in paths]), axis=0)
    checks.append(check_monotone(eps, worst))
    if len(paths) > 1:
        gaps = np.array(acc[own]) - worst
        gap = float(gaps.max())
        checks.append(Check("gradient_paths", gap, PATH_MARGIN, gap > PATH_MARGIN,
                            f"the model's own backward ({own}) overstates robust accuracy by "
                            f"{100 * gap:.1f} pp against {', '.join(p for p in paths if p != own)}"
                            if gap > PATH_MARGIN else ""))
    # The most informative eps for the comparisons: the largest with accuracy left.
    order = np.argsort(eps)
    pick = next((int(i) for i in order[::-1] if worst[i] > 0), int(order[0]))
    e = float(eps[pick])
    worst_path = min(paths, key=lambda p: acc[p][pick])
    # More effort and the black box need only try the examples every path left robust: what
    # they fool there is exactly what they add to the white-box attack (and it keeps a 100-image
    # check affordable on a cold-start LCA model, whose forward is 100 iterations).
    robust = torch.stack([~per_path[p][pick].fooled for p in paths]).all(0)
    idx = robust.nonzero()[:, 0]
    ids = (np.arange(len(x)) if example_ids is None else np.asarray(example_ids))[
        idx.cpu().numpy()]
    sub = {**settings, "example_ids": ids}
    n = len(x)
    if len(idx):
        with use_gradient(model, worst_path):
            more = pgd(model, x[idx], y[idx], eps=e, **{**sub, "steps": 2 * steps,
                                                        "restarts": 2 * restarts})
        drop = float(more.fooled.sum()) / n
        square = (black_box or _square)(model, x[idx], y[idx], norm=norm, eps=e,
                                        queries=square_queries, seed=seed, example_ids=ids)
        gain = float(square.fooled.sum()) / n
    else:
        drop = gain = 0.0
    checks.append(Check("more_steps", drop, MORE_STEPS_MARGIN, drop > MORE_STEPS_MARGIN,
                        f"doubling steps and restarts lowered accuracy at eps {e:.4g} by "
                        f"{100 * drop:.1f} pp: the attack had not converged"
                        if drop > MORE_STEPS_MARGIN else ""))
    checks.append(Check("black_box", gain, BLACK_BOX_MARGIN, gain > BLACK_BOX_MARGIN,
                        f"black-box Square fooled {100 * gain:.1f} % of the examples white-box "
                        f"PGD left robust at eps {e:.4g}" if gain > BLACK_BOX_MARGIN else ""))
    with use_gradient(model, worst_path):
        unb = pgd(model, x, y, eps=1.0, norm="Linf", steps=unbounded_steps, restarts=1,
                  loss=loss, seed=seed, example_ids=example_ids, eot=eot)
    left = unb.robust_accuracy
    checks.append(Check("unbounded", left, UNBOUNDED_LIMIT, left > UNBOUNDED_LIMIT,
                        f"{100 * left:.1f} % still correct under an unbounded attack (Linf eps 1, "
                        f"{unbounded_steps} steps)" if left > UNBOUNDED_LIMIT else ""))
    return checks, {"unbounded_correct": (~unb.fooled).cpu().numpy()}


def _square(model, x, y, *, norm, eps, queries, seed, example_ids):
    attack = make_attack("square", norm=norm, eps=eps, n_queries=queries)
    return attack(model, x, y, seed=seed, example_ids=example_ids)


__all__ = ["Check", "check_monotone", "run_checks"]
