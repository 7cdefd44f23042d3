"""Certified Lipschitz upper bounds and empirical lower bounds (metrics.lipschitz,
metrics.operator_norms), checked against numpy's dense SVD of the unrolled operator, autograd
Jacobians and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metrics.lipschitz import (
    ACTIVATION_CONSTANTS,
    FUNCTION_CONSTANTS,
    GELU_CONSTANT,
    ascend_pairs,
    jacobian_norms,
    pair_ratios,
    upper_bound,
)
from metrics.operator_norms import conv2d_norm_bound, pool_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense_jacobian(fn, x: torch.Tensor) -> np.ndarray:
    """The Jacobian of ``fn`` at the single example ``x`` (1, ...) as (outputs, inputs), by
    autograd (the oracle is numpy's SVD of it)."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x.shape)).flatten(),
                                             x.flatten().double())
    return jac.detach().numpy()


def np_norm(mat: np.ndarray) -> float:
    return float(np.linalg.svd(mat, compute_uv=False)[0])


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return module.double().eval()


def test_linear_layer_bound_is_the_largest_singular_value():
    model = seeded(nn.Sequential(nn.Flatten(), nn.Linear(48, 10)))
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    ub = upper_bound(model, x)
    assert ub.bounded and ub.reason == ""
    assert ub.value == pytest.approx(np_norm(model[1].weight.detach().numpy()), rel=1e-9)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 1),
                                                            (2, 0, 1, 1), (1, 2, 2, 1),
                                                            (1, 1, 1, 2)])
def test_conv_bound_equals_dense_svd_of_the_unrolled_operator(stride, padding, dilation, groups):
    conv = seeded(nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation,
                            groups=groups, bias=True))
    x = torch.rand(1, 4, 7, 7, dtype=torch.float64)
    exact = np_norm(dense_jacobian(conv, x))
    ub = upper_bound(conv, x)            # small: the dense path
    assert ub.value == pytest.approx(exact, rel=1e-9)
    # the circular-embedding (FFT) bound, forced: rigorous and close
    fft = conv2d_norm_bound(conv.weight, input_hw=(7, 7), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, dense_limit=0)
    assert exact * (1 - 1e-9) <= fft <= exact * 1.25


def test_fft_bound_is_tight_on_a_larger_input():
    conv = seeded(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    exact = np_norm(dense_jacobian(conv, x))
    fft = conv2d_norm_bound(conv.weight, input_hw=(16, 16), padding=1, dense_limit=0)
    assert exact * (1 - 1e-9) <= fft <= exact * 1.02


def test_conv_batchnorm_is_folded_into_one_operator():
    """conv -> eval BN is one linear map: the bound is its exact norm (dense SVD), below the
    product of the two norms."""
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5))
    seeded(net)
    with torch.no_grad():
        net[1].running_var.copy_(torch.tensor([0.1, 4.0, 1.0, 0.5, 2.0], dtype=torch.float64))
        net[1].running_mean.normal_()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    exact = np_norm(dense_jacobian(net, x))
    ub = upper_bound(net, x)
    assert ub.value == pytest.approx(exact, rel=1e-9)
    separate = upper_bound(net[0], x).value * (net[1].weight.abs() / (net[1].running_var
                                                                      + net[1].eps).sqrt()).max()
    assert ub.value < separate.item()


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = x + F.relu(self.conv1(x))             # residual: 1 + L(branch)
        x = F.gelu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_composed_bound_of_a_residual_net():
    net = seeded(ResidualNet())
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    ub = upper_bound(net, x)
    w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    norm = {name: np_norm(dense_jacobian(getattr(net, name), torch.rand(shape, dtype=torch.float64)))
            for name, shape in (("conv1", (1, 3, 6, 6)), ("conv2", (1, 3, 6, 6)))}
    expected = ((1 + norm["conv1"]) * norm["conv2"] * GELU_CONSTANT * (1 / 3)   # mean of 3x3
                * np_norm(w["fc.weight"]))
    assert ub.value == pytest.approx(expected, rel=1e-9)
    # and above the Jacobian norm at random points (the exact local constant there)
    for seed in range(3):
        torch.manual_seed(seed)
        xr = torch.rand(1, 3, 6, 6, dtype=torch.float64)
        assert np_norm(dense_jacobian(net, xr)) <= ub.value


def test_linear_conv_net_bound_equals_its_operator_norm():
    """A single linear map in several pieces whose bound is exact: normalisation (a constant
    per-channel scale), conv with BN folded, and flatten -> the dense SVD of the whole."""
    mean = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.25, 0.25], dtype=torch.float64).view(1, 3, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv((x - mean) / std)).flatten(1)

    net = seeded(Net())
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert upper_bound(net, x).value == pytest.approx(np_norm(dense_jacobian(net, x)), rel=1e-9)


def test_pooling_norms_against_dense_svd():
    x = torch.rand(1, 1, 7, 9, dtype=torch.float64)
    for kind, fn, kw in (("avg", lambda v: F.avg_pool2d(v, 3, 2, 1), dict(kernel_size=3, stride=2,
                                                                            padding=1)),
                         ("adaptive_avg", lambda v: F.adaptive_avg_pool2d(v, (3, 2)),
                          dict(output_size=(3, 2)))):
        assert pool_norm(kind, (7, 9), **kw) == pytest.approx(np_norm(dense_jacobian(fn, x)),
                                                             rel=1e-9)
    # max pooling: a bound; above the local Jacobian norm at random points
    bound = pool_norm("max", (7, 9), kernel_size=3, stride=2, padding=1)
    assert bound == pytest.approx(2.0)     # ceil(3 / 2)^2 = 4 windows share a pixel at most
    for seed in range(3):
        torch.manual_seed(seed)
        xr = torch.rand(1, 1, 7, 9, dtype=torch.float64)
        assert np_norm(dense_jacobian(lambda v: F.max_pool2d(v, 3, 2, 1), xr)) <= bound


@pytest.mark.parametrize("module,fn", [(nn.GELU(), F.gelu), (nn.SiLU(), F.silu),
                                       (nn.Mish(), F.mish), (nn.Sigmoid(), torch.sigmoid),
                                       (nn.Hardswish(), F.hardswish), (nn.SELU(), torch.selu),
                                       (nn.Softplus(), F.softplus), (nn.Tanh(), torch.tanh)])
def test_activation_constants_bound_the_largest_slope(module, fn):
    x = torch.linspace(-12, 12, 480_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    slope = g.abs().max().item()
    const = GELU_CONSTANT if isinstance(module, nn.GELU) else ACTIVATION_CONSTANTS[type(module)]
    assert slope <= const <= slope * 1.001
    if fn in FUNCTION_CONSTANTS:
        assert FUNCTION_CONSTANTS[fn] == const


class Squarer(nn.Module):
    def forward(self, x):
        return x * x


class Sorter(nn.Module):
    def forward(self, x):
        return torch.sort(x.flatten(1), dim=1).values


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize("module,why", [(Squarer(), "product or quotient of two input-dependent"),
                                        (Sorter(), "no Lipschitz rule for function sort"),
                                        (Branchy(), "cannot trace")])
def test_unknown_operations_give_no_bound_with_the_reason(module, why):
    ub = upper_bound(nn.Sequential(nn.Conv2d(3, 3, 1), module).eval(), torch.rand(1, 3, 4, 4))
    assert not ub.bounded and ub.value is None
    assert why in ub.reason


def test_declared_bounds_and_training_mode():
    class Declares(nn.Module):
        def forward(self, x):
            return 3 * torch.tanh(x)

        def certified_lipschitz(self, x):
            return 3.0

    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False), Declares()).eval()
    x = torch.rand(1, 3, 2, 2)
    assert upper_bound(net, x).value == pytest.approx(3 * np_norm(net[1].weight.detach().numpy()),
                                                      rel=1e-6)
    net.train()
    assert "training mode" in upper_bound(net, x).reason


def test_lower_bounds_are_below_the_upper_bound_and_agree_with_dense_jacobians():
    net = seeded(ResidualNet())
    torch.manual_seed(1)
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    norms, direction = jacobian_norms(net, x, iters=50)
    exact = [np_norm(dense_jacobian(net, x[i:i + 1])) for i in range(4)]
    assert norms.numpy() == pytest.approx(exact, rel=1e-4)       # power iteration converged
    assert direction.flatten(1).norm(dim=1).numpy() == pytest.approx([1.0] * 4)
    ub = upper_bound(net, x[:1]).value
    ratio, x2 = ascend_pairs(net, x, radius=0.05, steps=15, start=direction)
    assert (ratio <= ub).all()
    # the pairs are real: recomputing their ratio gives the reported numbers
    assert pair_ratios(net, x, x2).numpy() == pytest.approx(ratio.numpy(), rel=1e-9)
    assert ((x2 - x).flatten(1).norm(dim=1) <= 0.05 + 1e-12).all()
    assert x2.min() >= 0 and x2.max() <= 1
    # a tiny radius along the top direction nearly reaches the local Jacobian norm
    small, _ = ascend_pairs(net, x, radius=1e-4, steps=0, start=direction)
    assert (small.numpy() >= 0.9 * np.array(exact)).all()


def test_lower_bound_of_a_linear_map_is_exact():
    torch.manual_seed(0)
    net = seeded(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)))
    x = torch.rand(3, 3, 2, 2, dtype=torch.float64) * 0.5 + 0.25
    norms, _ = jacobian_norms(net, x, iters=200)
    ratio, _ = ascend_pairs(net, x, radius=0.01, steps=30)
    exact = np_norm(net[1].weight.detach().numpy())
    assert norms.numpy() == pytest.approx([exact] * 3, rel=1e-6)
    assert (ratio.numpy() <= exact * (1 + 1e-9)).all() and (ratio.numpy() > 0.99 * exact).all()
    assert math.isclose(upper_bound(net, x[:1]).value, exact, rel_tol=1e-9)


def test_lca_iteration_bound_is_above_dense_jacobians_of_the_unrolled_codes():
    """A small soft-threshold LCA (η ||Φ||² <= 2): the bound on s -> codes after K steps is
    above the dense Jacobian norm at random signals, for each K, and one step's Jacobian in u
    is below ρ = sqrt(1 + (1 - η)²)."""
    from models.front_ends.lca import LCA

    torch.manual_seed(0)
    lca = LCA(in_channels=1, features=6, kernel_size=3, stride=1, lambda_=0.1, tau=1.0,
              iterations=4, standardize_input=False).double()
    phi2 = lca.dictionary_norm((5, 5)) ** 2
    lca.tau = max(1.0, phi2 / 2)              # the refined rate applies
    eta = 1 / lca.tau
    rho = math.sqrt(1 + (1 - eta) ** 2)
    for k in (1, 2, 4):
        bound = lca.iteration_bound((5, 5), signal=1.0, start=0.0, iterations=k)
        for seed in range(3):
            torch.manual_seed(seed)
            s = torch.randn(1, 1, 5, 5, dtype=torch.float64)
            jac = dense_jacobian(lambda v, k=k: lca.encode(v, iterations=k).codes, s)
            assert np_norm(jac) <= bound * (1 + 1e-9)
    for seed in range(5):
        torch.manual_seed(seed)
        s = torch.randn(1, 1, 5, 5, dtype=torch.float64)
        u = torch.randn(1, *lca.code_shape(5, 5), dtype=torch.float64)
        step = dense_jacobian(lambda v, s=s: lca.encode(s, v, iterations=1).states, u)
        assert np_norm(step) <= rho * (1 + 1e-9)


def test_lca_with_a_hard_threshold_has_no_bound():
    from models.front_ends.lca import LCA

    lca = LCA(in_channels=3, features=4, kernel_size=3, threshold="hard", iterations=2).eval()
    ub = upper_bound(lca, torch.rand(1, 3, 8, 8))
    assert not ub.bounded and "discontinuous" in ub.reason


def test_standardisation_bound_is_reached_near_constant_images():
    """LCA.signal_bound says per-image standardisation is 1/eps-Lipschitz, reached near
    constant images: the dense Jacobian there is close to it and never above."""
    from models.front_ends.lca import LCA

    lca = LCA(in_channels=3, features=4, kernel_size=3).double()
    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    bound = lca.signal_bound(x)
    assert bound == pytest.approx(1e6)
    for scale in (1e-12, 1e-3, 1.0):
        torch.manual_seed(0)
        xr = x + scale * torch.randn_like(x)
        norm = np_norm(dense_jacobian(lca.prepare, xr))
        assert norm <= bound * (1 + 1e-9)
        if scale == 1e-12:
            assert norm > 0.99 * bound


def test_declared_constants_of_the_bundled_activations_bound_their_slopes():
    """SUGAR declares ReLU's 1 and a deep spline its largest |slope|: above the largest
    |derivative| autograd finds on a fine grid (beyond the knots too), and reached."""
    from models.activations import make_activation
    from models.zoo import create_model

    spline = next(m for m in create_model("resnet8-deepspline", pretrained=True).modules()
                  if type(m).__name__ == "DeepSpline")
    x = torch.linspace(-8, 8, 64_001).repeat(spline.num_activations, 1).t().contiguous()
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(spline(x).sum(), x)
    declared = spline.certified_lipschitz(x)
    assert g.abs().max().item() <= declared * (1 + 1e-5)
    assert g.abs().max().item() >= declared * 0.999
    sugar = make_activation("sugar-bsilu", num_channels=4)
    with torch.enable_grad():
        from attacks.gradients import use_derivative

        xs = torch.linspace(-5, 5, 1001, requires_grad=True)
        with use_derivative(sugar):
            (gs,) = torch.autograd.grad(sugar(xs).sum(), xs)
    assert gs.abs().max().item() <= sugar.certified_lipschitz(xs) == 1.0


def test_bundled_one_lipschitz_model_bound_agrees_with_its_own():
    """The generic composition on the 1-Lip ResNet-8 gives at most the architecture's own
    product bound (models.architectures.lipschitz_upper_bound, written independently of the
    fx rules), and both are <= 1 + 1e-3."""
    from models.architectures.lipschitz import lipschitz_upper_bound
    from models.zoo import create_model

    model = create_model("resnet8-deepspline-1lip", pretrained=True).eval()
    x = torch.rand(1, 3, 32, 32)
    generic = upper_bound(model, x)
    own = lipschitz_upper_bound(model, method="fft")
    assert generic.bounded
    assert generic.value <= own * (1 + 1e-6) <= 1 + 1e-3
    assert generic.value >= 0.9 * own


class Broadcasts(nn.Module):
    """Replicates each input pixel 4 times through a broadcast add: Lipschitz constant 2."""

    def forward(self, x):
        return x.mean((2, 3), keepdim=True) * 4 + torch.zeros(1, 3, 2, 2, dtype=x.dtype)


class DividesByZero(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1, 1))

    def forward(self, x):
        return x / self.scale


def test_broadcasting_and_division_by_zero():
    x = torch.rand(1, 3, 2, 2, dtype=torch.float64)
    net = Broadcasts().double().eval()
    exact = np_norm(dense_jacobian(net, x))
    assert exact == pytest.approx(4.0)         # mean of 4 (1/2) x 4, replicated 4 times (x 2)
    assert upper_bound(net, x).value == pytest.approx(exact, rel=1e-9)
    ub = upper_bound(DividesByZero().eval(), torch.rand(1, 3, 2, 2))
    assert not ub.bounded and "zero somewhere" in ub.reason


class ScaledConv(nn.Conv2d):
    """A subclass that changes forward (as weight-standardised or scaled convs do)."""

    def forward(self, x):
        return F.conv2d(x, 10 * self.weight, self.bias, self.stride, self.padding)


class InPlaceSkip(nn.Module):
    def forward(self, x):
        y = 2 * x
        skip = y
        y += x                      # skip is y: the sum below is 2 (3x), constant 6, not 5
        return y + skip


class InPlaceMethod(nn.Module):
    def forward(self, x):
        y = 2 * x
        z = y.add_(x)
        return z + y


class InPlaceActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.SELU(inplace=True)

    def forward(self, x):
        y = 2 * x
        return self.act(y) + y


class LeavesTheGraph(nn.Module):
    def forward(self, x):
        return x * x.sum().item()


class Flattens(nn.Module):
    def forward(self, x):
        return x.reshape(-1).sum()


class Rounds(nn.Module):
    def forward(self, x):
        return torch.div(x, 0.01, rounding_mode="floor")


class DictOut(nn.Module):
    def forward(self, x):
        return {"logits": x.flatten(1)}


class KeywordAdd(nn.Module):
    def forward(self, x):
        return torch.add(x, other=x)


@pytest.mark.parametrize("net,expected", [
    (nn.Sequential(ScaledConv(3, 2, 3, padding=1)), "exact"),
    (InPlaceSkip(), "does not reproduce"),
    (InPlaceMethod(), "in-place"),
    (InPlaceActivation(), "in-place"),
    (LeavesTheGraph(), "leaves the tensor graph"),
    (Flattens(), "exact"),
    (Rounds(), "rounding"),
    (DictOut(), "not a tensor"),
    (KeywordAdd(), "exact"),
])
def test_rules_that_must_not_under_count(net, expected):
    """Cases a reviewer found under-counted (or crashing): each is now either the exact
    constant (dense SVD) or no bound with the reason."""
    seeded(net)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    ub = upper_bound(net, x)
    if expected == "exact":
        assert ub.value >= np_norm(dense_jacobian(net, x)) * (1 - 1e-9)
        assert ub.value == pytest.approx(np_norm(dense_jacobian(net, x)), rel=1e-9)
    else:
        assert not ub.bounded and expected in ub.reason


def test_training_submodules_and_hooks_give_no_bound():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    net[1].train()
    assert "training mode" in upper_bound(net, torch.rand(1, 4)).reason
    net.eval()
    handle = net[0].register_forward_hook(lambda m, i, o: 3 * o)
    assert "forward hooks" in upper_bound(net, torch.rand(1, 4)).reason
    handle.remove()
    assert upper_bound(net, torch.rand(1, 4)).bounded
