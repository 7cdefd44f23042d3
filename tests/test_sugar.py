"""SUGAR activation: exact ReLU forward, surrogate derivative backward (checked against autograd
of each surrogate function in float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.activations import ACTIVATIONS, make_activation
from models.activations.sugar import SURROGATES, Sugar

A_BSILU, A_NELU = 1.67, 0.1

# The surrogate functions s(x) themselves; autograd of these is the oracle for s'(x).
SURROGATE_FUNCTIONS = {
    "bsilu": lambda x: (x + A_BSILU) * torch.sigmoid(x) - A_BSILU / 2,
    "nelu": lambda x: torch.where(x > 0, x, -A_NELU / (1 + x * x)),
    "elu": lambda x: F.elu(x, alpha=1.0),
    "selu": F.selu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "gelu": F.gelu,
    "silu": F.silu,
    "mish": F.mish,
}


def _x():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64) * 3
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-8, -1e-8], dtype=torch.float64)
    return x


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_relu_bit_for_bit(name):
    x = _x().float()
    act = Sugar(name)
    assert torch.equal(act(x), torch.relu(x))
    xg = x.clone().requires_grad_()
    assert torch.equal(act(xg), torch.relu(x))
    assert torch.equal(x, _x().float())  # nothing in place


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("negative_only", [False, True])
def test_backward_is_the_surrogate_derivative(name, negative_only):
    x = _x().requires_grad_()
    g = torch.randn_like(x)
    Sugar(name, negative_only=negative_only)(x).backward(g)
    xs = _x().requires_grad_()
    (ds,) = torch.autograd.grad(SURROGATE_FUNCTIONS[name](xs), xs, torch.ones_like(xs))
    if negative_only:
        ds = torch.where(xs.detach() > 0, torch.ones_like(ds), ds)
    torch.testing.assert_close(x.grad, g * ds, rtol=1e-10, atol=1e-12)


def test_surrogate_gradient_revives_negative_units():
    x = (-torch.rand(100, dtype=torch.float64)).requires_grad_()  # all dead for ReLU
    Sugar("bsilu")(x).sum().backward()
    assert (x.grad != 0).all()
    y = x.detach().requires_grad_()
    torch.relu(y).sum().backward()
    assert (y.grad == 0).all()


def test_registry_and_zoo():
    assert {"sugar-bsilu", "sugar-nelu", "sugar-leaky-relu"} <= set(ACTIVATIONS.names("sugar*"))
    act = make_activation("sugar-nelu", num_channels=8)
    assert isinstance(act, Sugar) and act.surrogate == "nelu" and act.alpha == A_NELU
    assert make_activation("sugar-bsilu", num_channels=8).alpha == A_BSILU
    from models import create_model

    net = create_model("resnet8-sugar-bsilu")
    assert any(isinstance(m, Sugar) for m in net.modules())
    with pytest.raises(ValueError, match="unknown SUGAR surrogate"):
        Sugar("nope")


def test_gradcheck_of_the_custom_function_against_its_own_definition():
    # d/dx of the module equals the closed form everywhere, including near 0 where ReLU kinks
    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    Sugar("gelu")(x).sum().backward()
    expected = 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(x.grad, expected.detach())
