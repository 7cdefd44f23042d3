"""Activation factories, one registry: ``ACTIVATIONS.get("relu")()`` returns a fresh module.

Architectures take an activation *name* (``act="gelu"``) and call the factory once per use
site, so a stateful activation (a learnable spline, later) gets its own parameters per layer.
Factories take ``num_channels`` (keyword-only) so per-channel activations can size themselves;
stateless ones ignore it.

Add one::

    @ACTIVATIONS.register("mish")
    def _mish(*, num_channels: int) -> nn.Module:
        return nn.Mish()
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.registry import Registry
from models.activations.deepspline import DeepSpline
from models.activations.sugar import SURROGATES, Sugar

ActivationFactory = Callable[..., nn.Module]

ACTIVATIONS: Registry[ActivationFactory] = Registry("activation")


@ACTIVATIONS.register("relu", description="rectified linear unit")
def _relu(*, num_channels: int) -> nn.Module:
    return nn.ReLU(inplace=False)


@ACTIVATIONS.register("gelu", description="Gaussian error linear unit (exact erf form)")
def _gelu(*, num_channels: int) -> nn.Module:
    return nn.GELU()


@ACTIVATIONS.register("silu", aliases=("swish",), description="sigmoid-weighted linear unit")
def _silu(*, num_channels: int) -> nn.Module:
    return nn.SiLU()


def _register_sugar() -> None:
    for surrogate in SURROGATES:
        def factory(*, num_channels: int, _s=surrogate) -> nn.Module:
            return Sugar(_s)

        ACTIVATIONS.add(f"sugar-{surrogate.replace('_', '-')}", factory,
                        description=f"SUGAR: ReLU forward, {surrogate} surrogate gradient")


_register_sugar()


@ACTIVATIONS.register("deepspline", description="learnable linear spline per channel (51 "
                      "coefficients on [-4, 4], ReLU init)")
def _deepspline(*, num_channels: int) -> nn.Module:
    return DeepSpline(num_channels, size=51, range_=4.0, init="relu")


@ACTIVATIONS.register("deepspline-1lip", description="linear spline per channel with slopes "
                      "projected into [-1, 1] (1-Lipschitz), ReLU init")
def _deepspline_1lip(*, num_channels: int) -> nn.Module:
    return DeepSpline(num_channels, size=51, range_=4.0, init="relu", lipschitz_bound=1.0,
                      anchored=True)


def make_activation(name: str, *, num_channels: int) -> nn.Module:
    """A fresh activation module for ``num_channels`` channels (``name`` checked with suggestions)."""
    return ACTIVATIONS.get(name)(num_channels=num_channels)


__all__ = ["ACTIVATIONS", "make_activation"]
