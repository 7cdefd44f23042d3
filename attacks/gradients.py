"""Gradient paths: which backward an attack differentiates through.

An attack is only as strong as its gradient. Where a model's backward is not the derivative of
its forward (SUGAR's surrogate gradients) or is expensive and possibly obfuscating (an unrolled
iterative front end such as LCA), the model offers alternative backward passes with the same
forward values, and a suite attacks through each and keeps the worse outcome per example.

The protocol is duck-typed, so ``attacks`` never imports ``models`` and users' own modules can
take part. A module that offers alternatives declares

* ``gradient_modes``: a tuple of names; the first is its default (its own backward);
* ``gradient_mode``: the current mode, a settable attribute; the forward values must be the
  same in every mode, only the backward differs.

The bundled ones: SUGAR activations (``("surrogate", "exact")``: the surrogate derivative, or
ReLU's true derivative) and the LCA / WARP-LCA front ends (``("unrolled", "bpda")``:
differentiating through the unrolled iterations, or BPDA: exact codes forward, a differentiable
approximation backward).

A declaring module may also name, in ``derivative_mode``, the mode whose backward is the
derivative of its forward (SUGAR: ``"exact"``; LCA: ``"unrolled"``). :func:`use_derivative`
runs every declaring module in that mode: what an input-Jacobian estimate (a Lipschitz lower
bound) needs, where a surrogate would give a number that is not the model's.

A model's **paths** are its default path (every module in its own default mode; named after
those modes, or ``"autograd"`` when no module declares any) followed by each alternative mode
name declared anywhere in the model::

    gradient_paths(model)            # e.g. ["surrogate", "exact"] or ["unrolled", "bpda"]
    with use_gradient(model, "exact"):
        loss.backward()              # through ReLU's true derivative
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from harness.errors import HarnessError

AUTOGRAD = "autograd"


def _declaring(model: nn.Module) -> list[nn.Module]:
    out = []
    for m in model.modules():
        modes = getattr(m, "gradient_modes", None)
        if modes:
            if not hasattr(m, "gradient_mode"):
                raise HarnessError(f"{type(m).__name__} declares gradient_modes but has no "
                                   "gradient_mode attribute")
            out.append(m)
    return out


def default_path(model: nn.Module) -> str:
    """The name of the model's own backward: its modules' default modes joined by '+'
    (``"surrogate"``, ``"unrolled"``), or ``"autograd"``."""
    names = list(dict.fromkeys(m.gradient_modes[0] for m in _declaring(model)))
    return "+".join(names) if names else AUTOGRAD


def gradient_paths(model: nn.Module) -> list[str]:
    """The model's gradient paths: its default path first, then every alternative mode."""
    alternatives = []
    for m in _declaring(model):
        alternatives += [name for name in m.gradient_modes[1:] if name not in alternatives]
    return [default_path(model), *alternatives]


@contextlib.contextmanager
def use_gradient(model: nn.Module, path: str) -> Iterator[nn.Module]:
    """Within the block, every declaring module whose modes include ``path`` runs in that mode
    and the others in their default; the previous modes are restored on exit. ``path`` is
    one of :func:`gradient_paths`."""
    paths = gradient_paths(model)
    if path not in paths:
        raise HarnessError(f"gradient path {path!r} is not one of this model's: "
                           f"{', '.join(paths)}")
    modules = _declaring(model)
    saved = [m.gradient_mode for m in modules]
    try:
        for m in modules:
            m.gradient_mode = path if path in m.gradient_modes else m.gradient_modes[0]
        yield model
    finally:
        for m, mode in zip(modules, saved):
            m.gradient_mode = mode


@contextlib.contextmanager
def use_derivative(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, autograd through ``model`` is the derivative of its forward: every
    module declaring ``gradient_modes`` runs in its ``derivative_mode`` (a module declaring
    alternatives without saying which is the derivative is an error)."""
    modules = _declaring(model)
    for m in modules:
        mode = getattr(m, "derivative_mode", None)
        if mode not in m.gradient_modes:
            raise HarnessError(f"{type(m).__name__} declares gradient modes "
                               f"{', '.join(m.gradient_modes)} but no derivative_mode among them: "
                               "cannot tell which backward is its forward's derivative")
    saved = [m.gradient_mode for m in modules]
    try:
        for m in modules:
            m.gradient_mode = m.derivative_mode
        yield model
    finally:
        for m, mode in zip(modules, saved):
            m.gradient_mode = mode


def straight_through(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """BPDA's combinator: the value of ``exact`` with the gradient of ``approx``
    (``exact.detach() + approx - approx.detach()``)."""
    return exact.detach() + (approx - approx.detach())


def has_gradient(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's output depends differentiably on its input (a backward through
    the model reaches ``x`` with a gradient that is not identically missing)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return False
        (grad,) = torch.autograd.grad(out.float().sum(), x, allow_unused=True)
    return grad is not None
