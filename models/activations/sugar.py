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
attack suites run both and keep the worse per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
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
    @staticmethod
    def forward(ctx, x, derivative, alpha, negative_only):
        ctx.save_for_backward(x)
        ctx.derivative, ctx.alpha, ctx.negative_only = derivative, alpha, negative_only
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.derivative is _bsilu and not ctx.negative_only:
            return _bsilu_grad(grad, x, ctx.alpha), None, None, None
        d = ctx.derivative(x, ctx.alpha)
        if ctx.negative_only:
            d = torch.where(x > 0, torch.ones_like(d), d)
        return grad * d, None, None, None


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_mode == "exact" or not (torch.is_grad_enabled() and x.requires_grad):
            return torch.relu(x)
        return _SugarFn.apply(x, SURROGATES[self.surrogate][0], self.alpha, self.negative_only)

    def extra_repr(self) -> str:
        return f"surrogate={self.surrogate}, alpha={self.alpha}, negative_only={self.negative_only}"
