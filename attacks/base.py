"""The one attack interface: threat checks, the result every attack returns, the registry.

Every attack takes any ``nn.Module`` that maps images in [0, 1] (N, C, H, W) to logits, and
eps in pixel space ([0, 1] scale). It returns an :class:`AttackResult`: the adversarial
images, the model's prediction on them, whether each example was fooled, the iteration (or
query count) of first success and which (sub-)attack found it. Attacks never import
``models``: what they know of a model is its forward and backward.

Registry (``ATTACKS``; unknown names raise with suggestions)::

    attack = make_attack("pgd", norm="Linf", eps=8 / 255, steps=10)
    attack = make_attack("autoattack", norm="Linf", eps=8 / 255)      # pyautoattack, standard
    attack = make_attack("torchattacks:CW", norm="L2", eps=0.5, c=1.0) # any torchattacks class
    result = attack(model, x, y, seed=0, example_ids=ids)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import HarnessError
from harness.predict import top1
from harness.registry import Registry

NORMS = ("Linf", "L2")
_NORM_ALIASES = {"linf": "Linf", "inf": "Linf", "l-inf": "Linf", "l2": "L2", "2": "L2"}


def check_norm(norm: str) -> str:
    """The canonical norm name ("Linf" or "L2"), or a HarnessError with the choices."""
    canon = _NORM_ALIASES.get(str(norm).strip().lower())
    if canon is None:
        raise HarnessError(f"unknown norm {norm!r}; one of {', '.join(NORMS)}")
    return canon


def check_eps(eps: float, norm: str = "Linf") -> float:
    """A finite eps in [0, 1] for Linf; finite and >= 0 for L2 (its ball's radius can exceed 1:
    the [0, 1]^d cube's diameter is sqrt(d))."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise HarnessError(f"eps must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise HarnessError(f"eps must be a finite number >= 0, got {eps!r}")
    if check_norm(norm) == "Linf" and value > 1:
        raise HarnessError(f"Linf eps must be at most 1 (pixel space [0, 1]), got {eps!r}")
    return value


def parse_eps(text: str | float | Sequence[float]) -> list[float]:
    """``"1/255,2/255,0.03"`` (fractions allowed) or numbers -> list of floats, unchecked."""
    if isinstance(text, (int, float)):
        return [float(text)]
    if not isinstance(text, str):
        return [float(v) for v in text]
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "/" in part:
                num, den = part.split("/", 1)
                out.append(float(num) / float(den))
            else:
                out.append(float(part))
        except (ValueError, ZeroDivisionError):
            raise HarnessError(f"cannot read eps {part!r}: use numbers or fractions like "
                               "8/255, comma-separated") from None
    if not out:
        raise HarnessError("no eps given")
    return out


@dataclass
class AttackResult:
    """What an attack returns for N examples.

    Attributes:
        x_adv: (N, C, H, W) float images in [0, 1]: the adversarial example for fooled
            examples, the attack's last (or strongest) iterate otherwise.
        pred: int64 (N,), the model's prediction on ``x_adv`` (-1 where its logits were not
            finite: no prediction, counted as fooled).
        fooled: bool (N,): the model is wrong on ``x_adv`` (targeted: predicts the target).
            Examples already wrong on the clean image count as fooled at iteration 0.
        iteration: int64 (N,): gradient steps (or queries) taken when first fooled; 0 = wrong
            from the start; -1 = never fooled.
        found_by: (N,) object array of str: the (sub-)attack that found the example ("clean"
            for examples wrong on the clean image, "" where never fooled).
    """

    x_adv: torch.Tensor
    pred: torch.Tensor
    fooled: torch.Tensor
    iteration: torch.Tensor
    found_by: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x_adv)
        if not all(len(v) == n for v in (self.pred, self.fooled, self.iteration, self.found_by)):
            raise ValueError("AttackResult fields must have one entry per example")

    @property
    def robust_accuracy(self) -> float:
        return float((~self.fooled).float().mean()) if len(self.fooled) else float("nan")


class Attack:
    """Base class: an attack bound to a threat model (``norm``, ``eps``) and its settings.

    Subclasses set ``name`` and implement :meth:`__call__`. ``uses_gradient`` is False for
    black-box attacks (e.g. Square): their outcome does not depend on the model's backward,
    so a suite runs them once instead of once per gradient path.
    """

    name: str = ""
    uses_gradient: bool = True

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(eps, self.norm)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 seed: int = 0, example_ids: Sequence[int] | np.ndarray | None = None
                 ) -> AttackResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm!r}, eps={self.eps:.6g})"


AttackFactory = Callable[..., Attack]
ATTACKS: Registry[AttackFactory] = Registry("attack")
TORCHATTACKS_PREFIX = "torchattacks:"


def make_attack(name: str, *, norm: str = "Linf", eps: float = 8 / 255, **kwargs) -> Attack:
    """Build a registered attack (``pgd``, ``autoattack``, ``square``, ...) or any torchattacks
    attack as ``torchattacks:NAME`` with its keyword arguments. Unknown names raise a
    :class:`HarnessError` with close matches."""
    if name.startswith(TORCHATTACKS_PREFIX):
        from attacks.adapters import torchattacks_attack  # lazy: torchattacks is an extra

        return torchattacks_attack(name[len(TORCHATTACKS_PREFIX):], norm=norm, eps=eps, **kwargs)
    return ATTACKS.get(name)(norm=norm, eps=eps, **kwargs)


def predict_labels(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The model's top-1 prediction on images ``x`` in [0, 1] (no autograd); -1 where the
    logits are not finite."""
    out = []
    with torch.no_grad():
        for xb in x.split(batch_size):
            out.append(top1(model(xb).float()))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)
