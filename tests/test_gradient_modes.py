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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _lca_of(model):
    return model.front_end.lca if hasattr(model.front_end, "lca") else model.front_end


@pytest.mark.parametrize("name", ["lca-resnet8", "warp-lca-resnet8"])
def test_bpda_on_the_bundled_models_is_exact_forward_and_k_steps_backward(name):
    """BPDA on the bundled front ends, 4 real images: the logits equal the no-grad forward's,
    the input gradient is finite and nonzero; with 0 steps the codes carry no gradient (nothing else --
    WARP-LCA's predictor, the unrolled iterations, the inner LCA's own mode -- is
    differentiated, so the BPDA logic takes effect exactly once); with 1 step it equals the
    closed form η Φ (D ⊙ w) pulled back through ``prepare``, D = T'(u₁) at the state one step
    after the converged u*, w = ∂loss/∂codes."""
    model = create_model(name, pretrained=True)
    lca, front_end = _lca_of(model), model.front_end
    x, y = _batch(4)
    with torch.no_grad():
        ref = model(x)
    with use_gradient(model, "bpda"):
        assert {m.gradient_mode for m in model.modules() if hasattr(m, "gradient_modes")} \
            == {"bpda"}
        out, g = _input_grad(model, x, y)
        assert torch.equal(out, ref)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        lca.bpda_steps = 0
        assert not front_end(x.clone().requires_grad_(True)).requires_grad
        lca.bpda_steps = 1
        _, g1 = _input_grad(model, x, y)

    with torch.no_grad():
        s = lca.prepare(x)
        u = front_end.encode(s).states                      # the converged state u*
        a = lca.transfer(u)
        u1 = u + (lca.drive(s - lca.reconstruct(a, s.shape[-2:])) + a - u) / lca.tau
    codes = a.clone().requires_grad_(True)
    (w,) = torch.autograd.grad(F.cross_entropy(model.backbone(codes), y), codes)
    pulled = lca.reconstruct((u1 > lca.lambda_) * w, s.shape[-2:]) / lca.tau
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(lca.prepare(xg), xg, pulled)
    torch.testing.assert_close(g1, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    assert not torch.allclose(g1, g, rtol=0.1)              # the default steps differ


def test_bpda_steps_converge_on_the_bundled_dictionary_at_its_fixed_point():
    """On warp-lca-resnet8's own dictionary, images and backbone gradient, from a state near the
    fixed point (warm start + 300 iterations), the BPDA gradient's increments
    ||g(K+1) - g(K)|| shrink as K grows (a Neumann series of the fixed point's implicit
    gradient). Measured: 1.21 / 0.26 / 0.22 / 0.14 at K = 1 / 20 / 40 / 80. Slowly: the active
    atoms are nearly dependent (16 % of 16,384 units active for 3,072 pixels), so the series'
    rate is close to 1; from the model's own 20-iteration state the increments stall near 0.7
    of the first (the state is not a fixed point yet), see LCA.bpda_steps."""
    model = create_model("warp-lca-resnet8", pretrained=True)
    lca = model.front_end.lca
    x, y = _batch(4)
    with torch.no_grad():
        u = model.front_end.encode(lca.prepare(x), iterations=300).states

    def grad(steps):
        lca.bpda_steps = steps
        xg = x.clone().requires_grad_(True)
        codes = lca.codes(lca.prepare(xg), lambda _: u, iterations=0, mode="bpda")
        (g,) = torch.autograd.grad(F.cross_entropy(model.backbone(codes), y), xg)
        return g

    g1, g2, g80, g81 = (grad(k) for k in (1, 2, 80, 81))
    assert (g81 - g80).norm() < 0.25 * (g2 - g1).norm()


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

    # the module's own forward in bpda mode: the exact codes, a gradient that reaches s
    lca.gradient_mode, lca.bpda_steps = "bpda", 1
    s = s0.clone().requires_grad_(True)
    codes = lca(s)
    assert torch.equal(codes.detach(), a_star) and codes.requires_grad

    def bpda_grad(steps):                # from u* directly: the same state, 3000 fewer steps
        lca.bpda_steps = steps
        s = s0.clone().requires_grad_(True)
        codes = lca.codes(s, lambda _: u_star, iterations=0, mode="bpda")
        (g,) = torch.autograd.grad((codes * w).sum(), s)
        return g.flatten()

    # Measured: relative error 0.96 / 0.84 / 3.8e-3 / 4.7e-12 after 1 / 5 / 400 / 2000 steps (a
    # Neumann series whose rate is set by the weakest active atom).
    err = {k: float((bpda_grad(k) - want).norm() / want.norm()) for k in (1, 5, 400, 2000)}
    assert err[2000] < 1e-9
    assert err[1] > err[5] > err[400] > err[2000]
