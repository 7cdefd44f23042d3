"""Gradient paths of the bundled models (attacks.gradients): forward values identical in every
path, SUGAR's exact path equal to the plain ReLU network with the same weights, and LCA's BPDA
gradient equal, for many steps, to the implicit-function gradient of the fixed point computed
by a dense solve (the outside oracle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks.gradients import default_path, gradient_paths, use_gradient
from harness.data import load_sample
from models.front_ends.lca import LCA
from models.zoo import MODELS, create_model

EXPECTED = {"resnet8-sugar-bsilu": ["surrogate", "exact"],
            "resnet8-sugar-nelu": ["surrogate", "exact"],
            "lca-resnet8": ["unrolled", "bpda"], "warp-lca-resnet8": ["unrolled", "bpda"]}
BUNDLED = MODELS.names(where=lambda e: e.meta.get("weights") is not None)


def _batch(n=4):
    s = load_sample()
    return torch.from_numpy(s.images[:n]).float() / 255, torch.from_numpy(s.labels[:n])


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), x)
    return out.detach(), g


@pytest.mark.parametrize("name", BUNDLED)
def test_paths_and_identical_logits(name):
    model = create_model(name, pretrained=True)
    paths = gradient_paths(model)
    assert paths == EXPECTED.get(name, ["autograd"])
    if model.meta.front_end:
        assert model.meta.front_end["attack_gradient"] == paths
    x, y = _batch(2 if "lca" in name else 4)
    with torch.no_grad():
        ref = model(x)
    for path in paths:
        with use_gradient(model, path):
            out, g = _input_grad(model, x, y)
        assert torch.equal(out, ref), path
        assert torch.isfinite(g).all() and g.abs().sum() > 0, path


def test_sugar_exact_path_is_the_relu_network_with_the_same_weights():
    x, y = _batch(8)
    sugar = create_model("resnet8-sugar-bsilu", pretrained=True)
    plain = create_model("resnet8").eval()
    plain.load_state_dict(sugar.state_dict())
    _, want = _input_grad(plain, x, y)
    with use_gradient(sugar, "exact"):
        _, exact = _input_grad(sugar, x, y)
    _, surrogate = _input_grad(sugar, x, y)
    torch.testing.assert_close(exact, want)
    assert not torch.allclose(surrogate, want, atol=1e-4)


def test_use_gradient_restores_modes_even_on_error():
    model = create_model("resnet8-sugar-nelu", pretrained=True)
    with pytest.raises(RuntimeError):
        with use_gradient(model, "exact"):
            assert {m.gradient_mode for m in model.modules() if hasattr(m, "gradient_modes")} \
                == {"exact"}
            raise RuntimeError("boom")
    assert {m.gradient_mode for m in model.modules() if hasattr(m, "gradient_modes")} \
        == {"surrogate"}
    assert default_path(model) == "surrogate"


def test_bpda_gradient_converges_to_the_implicit_function_gradient():
    """On a tiny LCA run to its fixed point u* = u* + (Φᵀ(s - Φ T(u*)) + T(u*) - u*)/τ, the
    gradient of w·T(u*) with respect to s is -D A⁻¹ B with A = ∂F/∂u, B = ∂F/∂s of
    F(u, s) = Φᵀ(s - Φ T(u)) + T(u) - u and D = T'(u*): a dense solve, independent of the
    LCA code's iterations. BPDA with many steps must match it; with few it approximates.
    λ = 0.5 keeps the active set (26 of 144 units) below the 36 pixels, so the active atoms are
    independent, the fixed point unique and A invertible (converged to a 1e-13 residual)."""
    torch.manual_seed(0)
    lca = LCA(in_channels=1, features=4, kernel_size=3, stride=1, lambda_=0.5, tau=1.0,
              iterations=3000, standardize_input=False).double()
    lca.tau = 1.05 * lca.operator_norm(size=(6, 6))
    s0 = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        u_star = lca.encode(s0).states
    a_star = lca.transfer(u_star)
    w = torch.randn_like(a_star)

    def fixed_point_map(u, s):
        a = lca.transfer(u)
        return lca.drive(s - lca.reconstruct(a, s.shape[-2:])) + a - u

    A = torch.autograd.functional.jacobian(lambda u: fixed_point_map(u, s0), u_star)
    B = torch.autograd.functional.jacobian(lambda s: fixed_point_map(u_star, s), s0)
    nu, ns = u_star.numel(), s0.numel()
    du_ds = -torch.linalg.solve(A.reshape(nu, nu), B.reshape(nu, ns))
    active = (u_star > lca.lambda_).double().flatten()
    want = (active[:, None] * du_ds).T @ w.flatten()

    def bpda_grad(steps):
        lca.bpda_steps = steps
        s = s0.clone().requires_grad_(True)
        codes = lca.codes(s, lambda _: None, mode="bpda")
        assert torch.equal(codes.detach(), a_star)
        (g,) = torch.autograd.grad((codes * w).sum(), s)
        return g.flatten()

    # Measured: relative error 0.96 / 0.84 / 3.8e-3 / 5e-15 after 1 / 5 / 400 / 4000 steps (a
    # Neumann series whose rate is set by the weakest active atom).
    err = {k: float((bpda_grad(k) - want).norm() / want.norm()) for k in (1, 5, 400, 4000)}
    assert err[4000] < 1e-9
    assert err[1] > err[5] > err[400] > err[4000]
