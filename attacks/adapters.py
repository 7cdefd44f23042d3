"""Adapters: the standard AutoAttack (PyPI ``pyautoattack``), its black-box Square attack, and
any torchattacks attack, behind the :class:`~attacks.base.Attack` interface.

* ``autoattack``: Croce & Hein's standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square with the
  standard settings), the number RobustBench reports. It is run one sub-attack at a time on the
  examples still robust, in the standard order and with the standard batching and seed, which
  is exactly what ``run_standard_evaluation`` does, so the robust set is the same and each
  example's ``found_by`` names the sub-attack that broke it (``autoattack:apgd-ce``, ...).
  AutoAttack seeds per call (``seed``), not per example, and does not report iterations:
  ``iteration`` is 1 for examples a sub-attack fooled (``found_by`` says which one).
* ``square``: the Square attack alone (black-box, ``uses_gradient = False``), ``n_queries``
  (5,000 as in AutoAttack by default).
* ``torchattacks:NAME``: any attack class of torchattacks with its keyword arguments. Attacks
  with an ``eps`` argument get the run's eps (and its ``norm`` where they take one; an attack
  of one fixed norm, such as PGD (Linf) or PGDL2 (L2), refuses a run of the other norm). For
  attacks without eps (CW, DeepFool, EAD, ...) the found perturbation is measured and an
  example counts as fooled only inside the eps ball of the run's norm: outside it, the example
  is kept clean (``x_adv`` is the clean image) and counts as robust, so an unbounded attack
  never inflates the success rate. torchattacks' ``AutoAttack`` is a reduced
  re-implementation: its name says so, and its numbers are never those of the standard
  ``autoattack``. ``iteration`` of a fooled example is the attack's ``steps`` (its step budget:
  torchattacks does not report the step of first success), or 1 for attacks without steps.
  Seeding: attacks with a ``seed`` argument get the run's seed; the others draw from torch's
  global generator, seeded with ``seed`` inside a forked RNG state (the caller's is untouched).

In every adapter the model's prediction on the returned images decides: an image outside the
eps ball or [0, 1] beyond numerical slack (``TOLERANCE``) is not counted (clean image kept),
and images within the slack are projected onto the ball exactly.

Both libraries are optional (``pip install 'robustness-harness[attacks]'``) and imported only
when an adapter runs.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging

import numpy as np
import torch

from attacks.base import ATTACKS, Attack, AttackResult, check_eps, check_norm, predict_labels
from harness.errors import HarnessError

INSTALL = "pip install 'robustness-harness[attacks]'"
AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "custom")
TOLERANCE = 1e-5   # numerical slack of a library's projection onto the ball


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise HarnessError(f"{module} is not installed: {INSTALL}") from None


def _norms(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = delta.flatten(1)
    return flat.abs().amax(1), flat.norm(dim=1)


def _result(model, x, y, x_adv, *, norm, eps, name, iteration=1) -> AttackResult:
    """AttackResult for a library's adversarial images: re-predicted by the model; an image
    outside the eps ball (beyond numerical slack) or [0, 1] is not counted and replaced by the
    clean image."""
    x_adv = x_adv.detach().to(x.device, torch.float32)
    linf, l2 = _norms(x_adv - x)
    size = linf if norm == "Linf" else l2
    inside = (size <= eps * (1 + TOLERANCE) + 1e-7) & (x_adv.flatten(1).amin(1) >= -1e-6) & (
        x_adv.flatten(1).amax(1) <= 1 + 1e-6)
    x_adv = torch.where(inside.view(-1, 1, 1, 1), x_adv.clamp(0, 1), x)
    if norm == "Linf":   # remove the slack: the stored example is inside the ball exactly
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps)
    else:
        d = x_adv - x
        dn = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        x_adv = (x + d * torch.clamp(eps / dn, max=1.0).view(-1, 1, 1, 1)).clamp(0, 1)
    clean = predict_labels(model, x)
    pred = predict_labels(model, x_adv)
    fooled = pred != y
    wrong = clean != y
    found = np.where(wrong.cpu().numpy(), "clean", np.where(fooled.cpu().numpy(), name, ""))
    iters = torch.where(wrong, 0, torch.where(fooled, iteration, -1))
    x_adv = torch.where(wrong.view(-1, 1, 1, 1), x, x_adv)
    pred = torch.where(wrong, clean, pred)
    return AttackResult(x_adv=x_adv, pred=pred, fooled=fooled | wrong, iteration=iters.long(),
                        found_by=found.astype(object))


def _forked_rng(device: torch.device):
    """Restore torch's global RNG state (CPU, and ``device``'s if CUDA) on exit."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextlib.contextmanager
def _quiet_autoattack():
    logger = logging.getLogger("auto-attack")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


@ATTACKS.register("autoattack", description="the standard AutoAttack (pyautoattack): APGD-CE, "
                  "APGD-T, FAB-T, Square; per-example sub-attack attribution")
class AutoAttackAdapter(Attack):
    name = "autoattack"

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255, version: str = "standard",
                 attacks: list[str] | tuple[str, ...] | None = None, batch_size: int = 250) -> None:
        super().__init__(norm=norm, eps=eps)
        if version not in AUTOATTACK_VERSIONS:
            raise HarnessError(f"unknown AutoAttack version {version!r}; one of "
                               f"{', '.join(AUTOATTACK_VERSIONS)}")
        if (version == "custom") != (attacks is not None):
            raise HarnessError("AutoAttack: give attacks=[...] exactly when version='custom'")
        self.version, self.attacks, self.batch_size = version, attacks, int(batch_size)
        if version != "standard":
            self.name = f"autoattack-{version}"

    def build(self, model, device, seed):
        pyaa = _import("pyautoattack")
        kwargs = {"attacks": list(self.attacks)} if self.version == "custom" else {}
        with _quiet_autoattack():
            try:
                aa = pyaa.AutoAttack(model, norm=self.norm, eps=self.eps, version=self.version,
                                     seed=seed, device=device, **kwargs)
            except (ValueError, AssertionError) as exc:
                raise HarnessError(f"AutoAttack: {exc}") from None
        aa.verbose = False
        return aa

    def __call__(self, model, x, y, *, seed=0, example_ids=None) -> AttackResult:
        x = x.detach().float()
        with _forked_rng(x.device):   # pyautoattack reseeds torch's global generator
            aa = self.build(model, x.device, seed)
            return self._run(aa, model, x, y, prefix="autoattack")

    def _run(self, aa, model, x, y, *, prefix) -> AttackResult:
        """``run_standard_evaluation`` one sub-attack at a time: it checks clean accuracy, then
        runs each sub-attack in order on the still-robust examples, in chunks of ``batch_size``
        of their indices, each chunk seeded afresh, and drops the examples whose prediction on
        the sub-attack's output is wrong. Calling it with ``attacks_to_run = [sub]`` on exactly
        the still-robust examples repeats those chunks and decisions (its own ``y_adv`` decides),
        so the final robust set equals one call's, and we learn who found each example."""
        order = list(aa.attacks_to_run)
        clean = predict_labels(model, x, self.batch_size)
        fooled = clean != y
        found = np.where(fooled.cpu().numpy(), "clean", "").astype(object)
        x_adv = x.clone()
        with _quiet_autoattack():
            try:
                for sub in order:
                    idx = (~fooled).nonzero()[:, 0]
                    if len(idx) == 0:
                        break
                    aa.attacks_to_run = [sub]
                    adv, y_adv = aa.run_standard_evaluation(x[idx], y[idx],
                                                            batch_size=self.batch_size)
                    adv = adv.detach().to(x.device, torch.float32)
                    hit = y_adv.to(y.device) != y[idx]
                    x_adv[idx[hit]] = adv[hit]
                    fooled[idx[hit]] = True
                    found[idx[hit].cpu().numpy()] = f"{prefix}:{sub}"
            finally:
                aa.attacks_to_run = order
        res = _result(model, x, y, x_adv, norm=self.norm, eps=self.eps, name="")
        # The re-check decides; the attribution is the sub-attack's.
        res.found_by = np.where(res.fooled.cpu().numpy(), found, "").astype(object)
        res.found_by[(res.found_by == "") & res.fooled.cpu().numpy()] = prefix
        return res


@ATTACKS.register("square", description="black-box Square attack (pyautoattack), "
                  "n_queries (default 5000)")
class SquareAdapter(AutoAttackAdapter):
    name = "square"
    uses_gradient = False

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255, n_queries: int = 5000,
                 batch_size: int = 250) -> None:
        super().__init__(norm=norm, eps=eps, version="custom", attacks=["square"],
                         batch_size=batch_size)
        if int(n_queries) < 1:
            raise HarnessError(f"n_queries must be >= 1, got {n_queries!r}")
        self.n_queries = int(n_queries)
        self.name = "square"

    def __call__(self, model, x, y, *, seed=0, example_ids=None) -> AttackResult:
        x = x.detach().float()
        with _forked_rng(x.device):
            aa = self.build(model, x.device, seed)
            aa.square.n_queries = self.n_queries
            res = self._run(aa, model, x, y, prefix="square")
        res.found_by = np.where(res.found_by == "square:square", "square", res.found_by)
        return res


def torchattacks_names() -> list[str]:
    """The attack classes torchattacks exports."""
    ta = _import("torchattacks")
    base = ta.attack.Attack
    return sorted(n for n in dir(ta) if isinstance(getattr(ta, n), type)
                  and issubclass(getattr(ta, n), base) and getattr(ta, n) is not base
                  and not n.startswith("_") and n not in ("MultiAttack",))


class TorchattacksAdapter(Attack):
    """One torchattacks attack class with its keyword arguments (see the module docstring for
    eps, norm, seeding and what counts as fooled)."""

    def __init__(self, cls, *, norm: str, eps: float, kwargs: dict) -> None:
        super().__init__(norm=norm, eps=eps)
        self.cls, self.kwargs = cls, dict(kwargs)
        name = cls.__name__
        params = inspect.signature(cls.__init__).parameters
        takes = [p for p in params if p not in ("self", "model")]
        unknown = sorted(set(self.kwargs) - set(params))
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise HarnessError(f"torchattacks:{name} takes no argument(s) {', '.join(unknown)} "
                               f"(it takes {', '.join(takes) or 'none'})")
        if "seed" in self.kwargs:
            raise HarnessError(f"torchattacks:{name}: the run's seed is used; do not pass seed "
                               "as a setting")
        self.takes_eps, self.takes_seed = "eps" in params, "seed" in params
        self.takes_norm = "norm" in params
        if self.takes_eps and not self.takes_norm:
            # One fixed norm: PGDL2 and PGDRSL2 are L2, every other eps-taking class Linf.
            fixed = "L2" if name.endswith("L2") else "Linf"
            if fixed != self.norm:
                raise HarnessError(f"torchattacks:{name} is an {fixed} attack; run it with "
                                   f"norm={fixed!r}" + (" or use torchattacks:PGDL2"
                                                        if name == "PGD" else ""))
        self.name = f"torchattacks:{name}"
        if name == "AutoAttack":
            self.name = "torchattacks:AutoAttack (reduced, not the standard AutoAttack)"

    def __call__(self, model, x, y, *, seed=0, example_ids=None) -> AttackResult:
        x = x.detach().float()
        kwargs = dict(self.kwargs)
        if self.takes_eps:
            kwargs["eps"] = self.eps
        if self.takes_norm:
            kwargs["norm"] = self.norm
        if self.takes_seed:
            kwargs["seed"] = int(seed)
        with _forked_rng(x.device):
            torch.manual_seed(seed)
            try:
                attack = self.cls(model, **kwargs)
            except (TypeError, ValueError, AssertionError) as exc:
                message = " ".join(str(exc).split())
                raise HarnessError(f"{self.name}: {message}") from None
            x_adv = attack(x, y)
        steps = getattr(attack, "steps", None)
        iteration = int(steps) if isinstance(steps, int) and steps >= 1 else 1
        return _result(model, x, y, x_adv, norm=self.norm, eps=self.eps, name=self.name,
                       iteration=iteration)


def torchattacks_attack(name: str, *, norm: str = "Linf", eps: float = 8 / 255,
                        **kwargs) -> Attack:
    """``torchattacks:NAME`` (case as torchattacks spells it; a wrong case or a typo gets
    suggestions)."""
    norm = check_norm(norm)
    eps = check_eps(eps, norm)
    names = torchattacks_names()
    if name not in names:
        by_lower = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('torchattacks:' + by_lower[c] for c in close)}?" \
            if close else f" (one of {', '.join(names)})"
        raise HarnessError(f"unknown torchattacks attack {name!r}{hint}")
    import torchattacks

    return TorchattacksAdapter(getattr(torchattacks, name), norm=norm, eps=eps, kwargs=kwargs)
