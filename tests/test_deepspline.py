"""Deep-spline activations: the deepsplines package as oracle, regularisers, the 1-Lipschitz
projection, cost independent of the number of coefficients."""

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from models.activations import make_activation
from models.activations.deepspline import DeepSpline, model_tv2, project_slopes


def _pair(mode, num, size=51, range_=4.0, seed=0):
    """Our spline and the deepsplines package's DeepBSpline with the same random coefficients
    (a leaky-ReLU init plus noise: every interval has its own slope), in float64."""
    from deepsplines.ds_modules import DeepBSpline

    ref = DeepBSpline(mode, num, size=size, range_=range_, init="leaky_relu").double()
    ours = DeepSpline(num, size=size, range_=range_, init="leaky_relu").double()
    assert torch.equal(ref.coefficients, ours.coefficients)  # same init, same grid
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c = ours.coefficients + 0.3 * torch.randn(num, size, generator=g, dtype=torch.float64)
        ref.coefficients_vect.copy_(c.reshape(-1))
        ours.coefficients.copy_(c)
    return ref, ours


@pytest.mark.parametrize("layout", ["conv", "channels_last", "fc"])
def test_matches_the_deepsplines_package(layout):
    mode = "fc" if layout == "fc" else "conv"
    ref, ours = _pair(mode, 6)
    g = torch.Generator().manual_seed(1)
    shape = (7, 6) if mode == "fc" else (3, 6, 5, 4)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)  # inside and far outside [-4, 4]
    x.view(-1)[:4] = torch.tensor([-11.0, 9.5, 4.01, -4.2], dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref = x.clone().contiguous().requires_grad_()
    x_ours = x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=1e-6)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    y_ref.backward(grad)
    y_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-6)
    # coefficient gradients sum many terms (up to ~15 here); the package's extrapolation uses
    # float32 knot positions, so compare to 1e-6 relative
    torch.testing.assert_close(ours.coefficients.grad.reshape(-1), ref.coefficients_vect.grad,
                               rtol=1e-6, atol=1e-6)
    # TV(2) is the package's total variation (L1 norm of the ReLU-basis slopes)
    assert ours.tv2().item() == pytest.approx(ref.float().totalVariation().sum().item(), rel=1e-6)
    if layout == "channels_last":
        assert y_ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("init, fn", [("relu", F.relu), ("identity", lambda t: t),
                                      ("leaky_relu", lambda t: F.leaky_relu(t, 0.01))])
def test_inits_reproduce_their_function_everywhere(init, fn):
    act = DeepSpline(3, init=init)
    x = torch.linspace(-12, 12, 2401).view(1, 1, -1).expand(2, 3, -1).reshape(2, 3, 49, 49)
    torch.testing.assert_close(act(x), fn(x), rtol=0, atol=1e-5)


def test_gradcheck_float64():
    act = DeepSpline(2, size=7, range_=1.5, init="identity").double()
    with torch.no_grad():
        act.coefficients.add_(torch.randn(2, 7, dtype=torch.float64))
    # inputs away from knots (the derivative jumps there)
    x = (torch.rand(3, 2, 2, 2, dtype=torch.float64) * 4 - 2)
    x = (x / act.grid).floor() * act.grid + act.grid * (0.2 + 0.6 * torch.rand_like(x))
    assert torch.autograd.gradcheck(act, (x.requires_grad_(),))


def test_regularisers_and_lipschitz_constant():
    relu = DeepSpline(5, init="relu")
    assert relu.tv2().item() == pytest.approx(5.0, rel=1e-4)   # one unit kink per activation
    assert torch.allclose(relu.lipschitz(), torch.ones(5))
    assert DeepSpline(4, init="identity").tv2().item() == pytest.approx(0.0, abs=1e-3)  # f32 knots
    act = DeepSpline(3, size=11, range_=2.0).double()
    with torch.no_grad():
        act.coefficients.copy_(torch.randn(3, 11, generator=torch.Generator().manual_seed(0)))
    # the constant is the steepest slope actually seen on a dense evaluation
    x = torch.linspace(-5, 5, 100001, dtype=torch.float64)
    y = act(x.view(-1, 1).expand(-1, 3).contiguous())
    seen = ((y[1:] - y[:-1]) / (x[1] - x[0])).abs().amax(0)
    torch.testing.assert_close(seen, act.lipschitz().detach(), rtol=1e-6, atol=0)
    model = torch.nn.Sequential(relu, torch.nn.Identity(), act.float())
    assert model_tv2(model).item() == pytest.approx(relu.tv2().item() + act.tv2().item())
    assert model_tv2(torch.nn.Linear(2, 2)).item() == 0


def test_one_lipschitz_variant():
    act = DeepSpline(4, size=21, range_=2.0, lipschitz_bound=1.0)
    with torch.no_grad():  # wild coefficients: slopes up to ~30
        act.coefficients.copy_(3 * torch.randn(4, 21, generator=torch.Generator().manual_seed(2)))
    assert act.lipschitz().max().item() <= 1.0 + 1e-6
    a, b = torch.randn(2, 5000, 4) * 3
    assert ((act(a) - act(b)).abs() <= (a - b).abs() + 1e-5).all()
    # projection keeps each activation's mean coefficient and is the identity inside the bound
    proj = project_slopes(act.coefficients, act.grid, 1.0)
    torch.testing.assert_close(proj.mean(1), act.coefficients.mean(1))
    torch.testing.assert_close(project_slopes(proj, act.grid, 1.0), proj)
    ok = DeepSpline(4, init="leaky_relu")
    torch.testing.assert_close(project_slopes(ok.coefficients, ok.grid, 1.0), ok.coefficients)
    act(torch.randn(8, 4)).sum().backward()                     # gradients pass through
    assert act.coefficients.grad.abs().sum() > 0


def test_anchored_variant_passes_through_the_origin():
    act = DeepSpline(3, size=11, range_=2.0, lipschitz_bound=1.0, anchored=True)
    with torch.no_grad():
        act.coefficients.copy_(torch.randn(3, 11, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(act(torch.zeros(4, 3)), torch.zeros(4, 3))
    assert act.lipschitz().max().item() <= 1 + 1e-6
    assert not torch.allclose(act(torch.ones(1, 3)), torch.zeros(1, 3))
    assert "anchored=True" in repr(act)


def test_cost_does_not_grow_with_the_number_of_coefficients():
    """O(N C H W): what the backward keeps does not depend on ``size``."""
    saved = {}
    for size in (5, 51, 1001):
        act = DeepSpline(8, size=size)
        x = torch.randn(4, 8, 16, 16, requires_grad=True)
        nbytes = []

        def pack(t, acc=nbytes):
            acc.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            act(x).sum().backward()
        saved[size] = sum(nbytes)
    assert saved[5] == saved[51] == saved[1001]
    assert saved[51] <= 4 * 8 * 16 * 16 * 16   # a few per-element tensors, no size factor


def test_dtype_layout_and_input_untouched():
    act = DeepSpline(4)
    x = torch.randn(2, 4, 3, 3)
    before = x.clone()
    act(x)
    assert torch.equal(x, before)
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = act(xb)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), act(xb.detach().float()), atol=0.05, rtol=0.02)


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        DeepSpline(3, size=50)
    with pytest.raises(ValueError, match="init"):
        DeepSpline(3, init="tanh")
    with pytest.raises(ValueError, match=r"expects \(N, 3\)"):
        DeepSpline(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(HarnessError, match="did you mean 'deepspline'"):
        make_activation("deepspine", num_channels=3)
    act = make_activation("deepspline-1lip", num_channels=3)
    assert act.lipschitz_bound == 1.0 and make_activation("deepspline", num_channels=3) is not act
