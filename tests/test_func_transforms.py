"""Every registered model under ``torch.func`` transforms (jvp, vjp, vmap), in eval mode on
real images of the bundled sample: the transformed forward reproduces the plain one, forward-
and reverse-mode derivatives are one linearisation (<J v, u> = <v, J^T u>), per-example vmap
gives the batched logits and tangents. Outside oracles for J v: autograd's double-vjp and
float64 central differences. The custom autograd Functions (SUGAR, deep splines) and the
1-Lipschitz layers' cached normalisation are checked on their own."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.func import functional_call, jvp, vjp, vmap

import models
from attacks.gradients import use_gradient
from harness.data import load_cifar10_arrays
from models.activations.deepspline import DeepSpline
from models.activations.sugar import SURROGATES, Sugar
from models.architectures import SNConv2d, SNLinear
from models.architectures.lipschitz import circular_norm_bound
from models.zoo import MODELS, create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = list(MODELS.names())
BUNDLED = set(models.list_models(pretrained=True))
# Building it costs 12-17 s on CPU: the evaluation bound of its 512-channel layers.
SLOW = {"resnet18-deepspline-1lip"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@functools.cache
def _model(name: str) -> torch.nn.Module:
    """The registry entry in eval mode, with its bundled weights when it has them (shared by
    the tests, which do not modify it)."""
    return create_model(name, pretrained=name in BUNDLED)


@functools.cache
def _images(n: int) -> torch.Tensor:
    s = load_cifar10_arrays("test")            # the bundled sample
    return torch.from_numpy(s.images[:n]).float() / 255


def _direction(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def _assert_near(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """max |got - want| <= rel * max |want| (a tolerance on the scale of the tensor)."""
    assert got.shape == want.shape
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x {scale:.3g}"


def _n_images(name: str) -> int:
    return 1 if name == "lca-resnet8" else 2   # cold LCA: 100 iterations per image


@pytest.mark.parametrize("name", _params(ALL))
def test_jvp_and_vjp_reproduce_the_forward(name):
    """jvp and vjp return the plain forward's logits; their tangent and input gradient are
    finite and nonzero; the vjp is autograd's input gradient; and the two are transposes of
    each other: <J v, u> = <v, J^T u>."""
    model, x = _model(name), _images(_n_images(name))
    v = _direction(x)
    with torch.no_grad():
        ref = model(x)
    out, jv = jvp(model, (x,), (v,))
    out2, pull = vjp(model, x)
    u = _direction(out2, seed=1)
    (jtu,) = pull(u)
    for y in (out, out2):
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for t in (jv, jtu):
        assert torch.isfinite(t).all() and t.abs().sum() > 0
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(model(xg), xg, u)
    _assert_near(jtu, want, 1e-5)
    lhs, rhs = (jv * u).sum().item(), (v * jtu).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-3, abs=1e-4 * jv.norm().item() * u.norm().item())


@pytest.mark.parametrize("name", _params(ALL))
def test_vmap_over_examples_gives_the_batched_logits_and_tangents(name):
    """A per-example function (one image -> its logits) under vmap gives the batched forward;
    a per-example jvp (vjp) under vmap gives the batched jvp's tangents (vjp's gradients)."""
    model, x = _model(name), _images(_n_images(name))
    v = _direction(x)

    def one(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    def one_jvp(xi, vi):
        return jvp(one, (xi,), (vi,))

    def one_vjp(xi, ui):
        return vjp(one, xi)[1](ui)[0]

    with torch.no_grad():
        ref = model(x)
    _, jv = jvp(model, (x,), (v,))
    u = _direction(ref, seed=1)
    (jtu,) = vjp(model, x)[1](u)
    _assert_near(vmap(one)(x), ref, 1e-5)
    out, tangents = vmap(one_jvp)(x, v)
    _assert_near(out, ref, 1e-5)
    _assert_near(tangents, jv, 1e-4)
    _assert_near(vmap(one_vjp)(x, u), jtu, 1e-4)


@pytest.mark.parametrize("name", ["resnet8", "resnet8-deepspline-1lip", "resnet8-deepspline"])
def test_jvp_tangent_is_autograds_jacobian_vector_product(name):
    """J v from jvp equals autograd's J v by the double-vjp trick (differentiate the linear
    map u -> J^T u), and, in float64, central differences of the forward."""
    model, x = _model(name), _images(2)
    v = _direction(x)
    _, jv = jvp(model, (x,), (v,))

    xg = x.clone().requires_grad_(True)
    y = model(xg)
    u = torch.zeros_like(y, requires_grad=True)
    (jtu,) = torch.autograd.grad(y, xg, u, create_graph=True)
    (want,) = torch.autograd.grad(jtu, u, v)
    _assert_near(jv, want, 1e-4)

    model64 = copy.deepcopy(model).double()
    x64, v64 = x.double(), v.double()
    _, jv64 = jvp(model64, (x64,), (v64,))
    # Piecewise linear maps: central differences are exact unless the segment crosses a kink,
    # which gets likelier with eps (splines have 51 knots per unit). Measured max relative
    # error at eps 1e-6 / 1e-8: ReLU 8e-11 / 7e-9, deep splines 4.5e-4 / 9e-9, 1-Lipschitz
    # 5.8e-3 / 3.9e-8 (crossings at 1e-6; rounding at 1e-8).
    eps = 1e-8
    with torch.no_grad():
        fd = (model64(x64 + eps * v64) - model64(x64 - eps * v64)) / (2 * eps)
    _assert_near(jv64, fd, 1e-6)
    _assert_near(jv64.float(), jv, 1e-3)


def _sugar_and_plain():
    sugar = _model("resnet8-sugar-bsilu")
    plain = create_model("resnet8")
    plain.load_state_dict(sugar.state_dict())
    return sugar, plain.eval()


def test_sugar_jvp_follows_the_gradient_mode():
    """SUGAR's jvp tangent is the surrogate Jacobian's in the default mode and ReLU's in
    "exact" mode, which equals the plain ReLU ResNet-8 with the same weights (as the vjp test
    in tests/test_gradient_modes.py); in both modes jvp and vjp are transposes."""
    sugar, plain = _sugar_and_plain()
    x = _images(4)
    v = _direction(x)
    _, want = jvp(plain, (x,), (v,))
    out, surrogate = jvp(sugar, (x,), (v,))
    with use_gradient(sugar, "exact"):
        out_exact, exact = jvp(sugar, (x,), (v,))
        assert all(m.gradient_mode == "exact" for m in sugar.modules() if isinstance(m, Sugar))
    torch.testing.assert_close(out, out_exact, rtol=0, atol=0)
    torch.testing.assert_close(exact, want)
    assert not torch.allclose(surrogate, want, atol=1e-4)
    u = _direction(out, seed=1)
    for mode, tangent in (("surrogate", surrogate), ("exact", exact)):
        with use_gradient(sugar, mode):
            (jtu,) = vjp(sugar, x)[1](u)
        assert (tangent * u).sum().item() == pytest.approx((v * jtu).sum().item(), rel=1e-4)


@pytest.mark.parametrize("negative_only", [False, True])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_sugar_jvp_is_its_backward(surrogate, negative_only):
    """The activation's Jacobian is diagonal, so J v = J^T v elementwise: jvp's tangent (via
    torch.func and via plain forward-mode AD) equals the backward's gradient for the same
    vector, bit for bit, and vmap over rows gives the same."""
    act = Sugar(surrogate, negative_only=negative_only)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(4, 257, generator=g)
    v = torch.randn(4, 257, generator=g)
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(act(xg), xg, v)
    out, tangent = jvp(act, (x,), (v,))
    assert torch.equal(out, torch.relu(x)) and torch.equal(tangent, want)
    with torch.autograd.forward_ad.dual_level():
        dual = act(torch.autograd.forward_ad.make_dual(x, v))
        assert torch.equal(torch.autograd.forward_ad.unpack_dual(dual).tangent, want)
    _, rows = vmap(lambda xi, vi: jvp(act, (xi,), (vi,)))(x, v)
    assert torch.equal(rows, want)
    act.gradient_mode = "exact"
    _, tangent = jvp(act, (x,), (v,))
    assert torch.equal(tangent, v * (x > 0))


@pytest.mark.parametrize("layout", ["conv", "channels_last", "fc"])
def test_deepspline_forward_mode_against_numerical_derivatives(layout):
    """The spline Function's jvp (input and coefficient tangents, the 1-Lipschitz projection
    and anchoring in front) against numerical derivatives (gradcheck with forward AD), away
    from the knots where the derivative jumps; jvp and vjp are transposes."""
    act = DeepSpline(3, size=9, range_=2.0, init="leaky_relu", lipschitz_bound=1.0,
                     anchored=True).double()
    g = torch.Generator().manual_seed(0)
    coef = act.coefficients.detach() + 0.3 * torch.randn(3, 9, generator=g, dtype=torch.float64)
    shape = (2, 3) if layout == "fc" else (2, 3, 2, 3)
    x = 5 * torch.rand(shape, generator=g, dtype=torch.float64) - 2.5   # in and out of range
    x = (x / act.grid).floor() * act.grid + act.grid * (0.2 + 0.6 * torch.rand(
        shape, generator=g, dtype=torch.float64))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)

    def f(x, c):
        return functional_call(act, {"coefficients": c}, (x,))

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), coef.requires_grad_()),
                                    check_forward_ad=True, check_backward_ad=True)
    x, coef = x.detach(), coef.detach()
    tx, tc = torch.randn_like(x), torch.randn_like(coef)
    out, tangent = jvp(f, (x, coef), (tx, tc))
    u = torch.randn_like(out)
    gx, gc = vjp(f, x, coef)[1](u)
    assert (tangent * u).sum().item() == pytest.approx(
        (tx * gx).sum().item() + (tc * gc).sum().item(), rel=1e-10)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def _sn_layers(model):
    return [m for m in model.modules() if isinstance(m, SNConv2d | SNLinear)]


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def test_lipschitz_layers_write_no_buffer_under_transforms():
    """On the bundled 1-Lipschitz model, freshly loaded (no evaluation yet, so the cached
    bounds are not current): jvp / vjp / vmap write no buffer and give the plain forward's
    logits; the normalised weights are the weights divided by circular_norm_bound, bit for
    bit, inside and outside the transforms; the plain forward then stores the bounds."""
    model = create_model("resnet8-deepspline-1lip", pretrained=True)
    x = _images(2)
    before = _buffers(model)
    out_j, _ = jvp(model, (x,), (_direction(x),))
    out_v, _ = vjp(model, x)
    out_m = vmap(lambda xi: model(xi.unsqueeze(0)).squeeze(0))(x)
    weights = {}
    for layer in _sn_layers(model):
        weights[layer] = vmap(lambda _, layer=layer: layer.normalized_weight())(x)[0]
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(out_j, ref) and torch.equal(out_v, ref)
    _assert_near(out_m, ref, 1e-5)
    for layer in _sn_layers(model):
        w = layer.weight.detach()
        bound = circular_norm_bound(layer, w)
        want = w / torch.tensor(bound, dtype=layer.sigma.dtype)
        assert layer.sigma.item() == torch.tensor(bound, dtype=layer.sigma.dtype).item()
        assert torch.equal(layer.normalized_weight().detach(), want)
        assert torch.equal(weights[layer], want)
    # current now: transformed calls only read
    before = _buffers(model)
    out_j, _ = jvp(model, (x,), (_direction(x),))
    assert torch.equal(out_j, ref)
    assert all(torch.equal(before[k], v) for k, v in _buffers(model).items())


def test_lipschitz_state_dict_loaded_after_eval_is_normalised_by_its_own_bound():
    """A model evaluated with its random weights, then given the bundled state dict: the
    next call, transformed or plain, divides by the new weights' bound (invalidated by the
    weight's version), and the plain call stores it."""
    bundled = create_model("resnet8-deepspline-1lip", pretrained=True)
    x = _images(2)
    with torch.no_grad():
        want = bundled(x)
    model = create_model("resnet8-deepspline-1lip")
    with torch.no_grad():
        model(x)                                   # bounds of the random weights, stored
    stale = {id(m): m.sigma.clone() for m in _sn_layers(model)}
    model.load_state_dict(bundled.state_dict())
    for m in _sn_layers(model):                    # the loaded sigma is the bundled one
        m.sigma.copy_(stale[id(m)])                # pretend it was not: must not be trusted
    out, _ = jvp(model, (x,), (_direction(x),))
    assert torch.equal(out, want)
    with torch.no_grad():
        assert torch.equal(model(x), want)
    for m, b in zip(_sn_layers(model), _sn_layers(bundled)):
        assert torch.equal(m.sigma, b.sigma)
