"""What perturbs: the harness's PGD, adapters for AutoAttack (pyautoattack) and torchattacks,
gradient paths (BPDA, true derivatives) and gradient-masking checks.

Every attack takes any ``nn.Module`` on inputs in [0, 1] and eps in pixel space (normalisation
lives in the model), returns an :class:`~attacks.base.AttackResult`, and never imports
``models``. ``make_attack(name, norm=..., eps=..., **settings)`` builds one by registry name
(``pgd``, ``autoattack``, ``square``) or as ``torchattacks:NAME``.
"""

from attacks import adapters as _adapters  # noqa: F401  (registers "autoattack", "square")
from attacks import pgd as _pgd  # noqa: F401  (registers "pgd")
from attacks.base import ATTACKS, Attack, AttackResult, check_eps, check_norm, make_attack, parse_eps
from attacks.gradients import gradient_paths, use_gradient
from attacks.pgd import pgd

__all__ = ["ATTACKS", "Attack", "AttackResult", "check_eps", "check_norm", "gradient_paths",
           "make_attack", "parse_eps", "pgd", "use_gradient"]
