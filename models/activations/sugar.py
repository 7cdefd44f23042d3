"""SUGAR: ReLU in the forward pass, the derivative of a smooth surrogate in the backward pass.

The forward output is exactly ``torch.relu(x)`` (so the network is a ReLU network at inference
and its activations stay exactly sparse); the backward pass multiplies the incoming gradient by
``s'(x)`` of a surrogate ``s`` instead of ReLU's step, so units below zero keep receiving
gradient. With ``negative_only=True`` the surrogate replaces the derivative only for x <= 0 and
x > 0 keeps ReLU's true derivative 1.

Surrogates (derivatives written out, checked against autograd of ``s`` in the tests):

* ``bsilu``: s(x) = (x + a) sigmoid(x) - a/2, a = 1.67 (B-SiLU)
* ``nelu``: s'(x) = 1 for x > 0, else a 2x / (1 + x^2)^2, a = 0.1 (NeLU)
* ``elu``, ``selu``, ``leaky_relu`` (slope 0.01), ``gelu`` (erf), ``silu``, ``mish``.

    >>> act = Sugar("bsilu")            # or make_activation("sugar-bsilu", num_channels=C)

Attacks: the surrogate backward is not the derivative of the forward, so a gradient attack
through it may be misled (gradient masking). ``Sugar`` declares the gradient modes of
:mod:`attacks.gradients`: ``gradient_mode = "surrogate"`` (default, the training backward) or
``"exact"`` (plain ``torch.relu`` through autograd: ReLU's true derivative, same values);
attack suites run both and keep the worse per example. ``derivative_mode = "exact"`` names the
mode whose backward is the forward's derivative (Lipschitz / CLEVER estimates use it).

``torch.func``: forward-mode derivatives (``jvp``, also plain forward-mode AD) use the same
Jacobian as the backward in each mode (the surrogate's s'(x), or ReLU's), and ``vmap`` works
through the Function's generated rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def _bsilu(x: torch.Tensor, a: float) -> torch.Tensor:
    sig = torch.sigmoid(x)
    return sig + (x + a) * sig * (1 - sig)


def _bsilu_grad(grad: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """grad * s'(x) for B-SiLU with ATen's fused backward kernels: s = silu(x) + a sigmoid(x)
    - a/2, so s' = silu' + a sigmoid'. Four kernels instead of seven elementwise passes, which
    keeps SUGAR's training overhead over ReLU small."""
    sig = torch.sigmoid(x)
    return torch.ops.aten.silu_backward(grad, x).add_(torch.ops.aten.sigmoid_backward(grad, sig),
                                                       alpha=a)


def _nelu(x: torch.Tensor, a: float) -> torch.Tensor:
    den = torch.mul(x, x).add_(1)
    out = torch.mul(x, 2 * a).div_(den.mul_(den))     # 2 a x / (1 + x^2)^2, in place
    return out.masked_fill_(x > 0, 1.0)


def _elu(x: torch.Tensor, a: float) -> torch.Tensor:
    return torch.where(x > 0, torch.ones_like(x), a * torch.exp(x))


def _selu(x: torch.Tensor, a: float) -> torch.Tensor:
    return _SELU_SCALE * torch.where(x > 0, torch.ones_like(x), _SELU_ALPHA * torch.exp(x))


def _leaky(x: torch.Tensor, a: float) -> torch.Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, a))


def _gelu(x: torch.Tensor, a: float) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


def _silu(x: torch.Tensor, a: float) -> torch.Tensor:
    sig = torch.sigmoid(x)
    return sig * (1 + x * (1 - sig))


def _mish(x: torch.Tensor, a: float) -> torch.Tensor:
    tsp = torch.tanh(nn.functional.softplus(x))
    return tsp + x * (1 - tsp * tsp) * torch.sigmoid(x)


# name -> (derivative s'(x; a), default a)
SURROGATES: dict[str, tuple[Callable[[torch.Tensor, float], torch.Tensor], float]] = {
    "bsilu": (_bsilu, 1.67),
    "nelu": (_nelu, 0.1),
    "elu": (_elu, 1.0),
    "selu": (_selu, 0.0),
    "leaky_relu": (_leaky, 0.01),
    "gelu": (_gelu, 0.0),
    "silu": (_silu, 0.0),
    "mish": (_mish, 0.0),
}


class _SugarFn(torch.autograd.Function):
    """ReLU whose derivative, in both directions, is the surrogate's: the backward multiplies
    the gradient and ``jvp`` the tangent by the same diagonal Jacobian s'(x), so reverse and
    forward mode (``torch.func.vjp`` / ``jvp``) see one linearisation; the vmap rule is
    generated from these staticmethods."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, derivative, alpha, negative_only):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, derivative, alpha, negative_only = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        ctx.derivative, ctx.alpha, ctx.negative_only = derivative, alpha, negative_only

    @staticmethod
    def backward(ctx, grad):
        return _times_surrogate_derivative(ctx, grad), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _times_surrogate_derivative(ctx, x_tangent)


def _times_surrogate_derivative(ctx, v: torch.Tensor) -> torch.Tensor:
    """v * s'(x), x saved by :class:`_SugarFn`: the surrogate Jacobian (diagonal) applied to a
    gradient (backward) or a tangent (jvp)."""
    (x,) = ctx.saved_tensors
    if ctx.derivative is _bsilu and not ctx.negative_only:
        return _bsilu_grad(v, x, ctx.alpha)
    d = ctx.derivative(x, ctx.alpha)
    if ctx.negative_only:
        d = torch.where(x > 0, torch.ones_like(d), d)
    return v * d


def _differentiated(x: torch.Tensor) -> bool:
    """Whether a derivative of this call can be taken: autograd records ``x``, a
    ``torch.func`` transform (vjp, jvp, vmap, ...) is active, or ``x`` carries a forward-mode
    tangent. Otherwise the forward is plain ReLU, without the Function's overhead."""
    return ((torch.is_grad_enabled() and x.requires_grad)
            or torch._C._functorch.peek_interpreter_stack() is not None
            or fwAD.unpack_dual(x).tangent is not None)


class Sugar(nn.Module):
    """ReLU forward, surrogate-derivative backward.

    Args:
        surrogate: one of :data:`SURROGATES`.
        alpha: the surrogate's parameter (B-SiLU's a, NeLU's a, ELU's alpha, LeakyReLU's
            slope); default: the paper's value.
        negative_only: use the surrogate derivative only for x <= 0.
    """

    def __init__(self, surrogate: str = "bsilu", *, alpha: float | None = None,
                 negative_only: bool = False) -> None:
        super().__init__()
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown SUGAR surrogate {surrogate!r}; one of {sorted(SURROGATES)}")
        self.surrogate = surrogate
        self.alpha = float(SURROGATES[surrogate][1] if alpha is None else alpha)
        self.negative_only = bool(negative_only)
        self.gradient_mode = "surrogate"

    # Backward passes an attack can choose (attacks.gradients); the forward is ReLU in both.
    gradient_modes = ("surrogate", "exact")
    # The mode whose backward is the forward's derivative (attacks.gradients.use_derivative).
    derivative_mode = "exact"
    # What metrics.sparsity counts (an activation: its exact zeros are ReLU's).
    sparsity_site = "activation"

    def certified_lipschitz(self, x: torch.Tensor) -> float:
        """l2 Lipschitz constant of the forward, ReLU: 1 (metrics.lipschitz protocol; the
        surrogate changes only the backward)."""
        return 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_mode == "exact" or not _differentiated(x):
            return torch.relu(x)
        return _SugarFn.apply(x, SURROGATES[self.surrogate][0], self.alpha, self.negative_only)

    def extra_repr(self) -> str:
        return f"surrogate={self.surrogate}, alpha={self.alpha}, negative_only={self.negative_only}"
