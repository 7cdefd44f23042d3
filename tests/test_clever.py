"""CLEVER scores (metrics.clever) against values the code under test does not produce: the exact
distance to a linear classifier's decision boundary (numpy, from the weights), the minimal
perturbation that flips it, layer spectral norms (dense SVD) and autograd at x0 for a ReLU net,
and scipy draws from a reverse Weibull of known location."""

import contextlib

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from metrics import clever as clever_mod
from metrics.clever import clever, fit_reverse_weibull, sample_ball

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 4, 4)
D = 48
K = 5
DUAL = {"L2": 2, "Linf": 1}


def _linear(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, K)).to(dtype).eval()


def _relu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, K)).eval()


def _inputs(n=4, dtype=torch.float64, seed=1):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _boundary_distances(model, x, q):
    """numpy, float64: per example the predicted class, the distances to each other class's
    boundary g_j(x) / ||w_c - w_j||_q (inf at c) and ||w_c - w_j||_q."""
    w = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    xs = x.double().reshape(len(x), -1).numpy()
    logits = xs @ w.T + b
    c = logits.argmax(axis=1)
    dist = np.full((len(x), K), np.inf)
    wnorm = np.full((len(x), K), np.nan)
    for i in range(len(x)):
        for j in range(K):
            if j != c[i]:
                wnorm[i, j] = np.linalg.norm(w[c[i]] - w[j], ord=q)
                dist[i, j] = (logits[i, c[i]] - logits[i, j]) / wnorm[i, j]
    return c, dist, wnorm, w


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_linear_model_score_is_the_exact_boundary_distance(norm):
    model, x = _linear(), _inputs()
    q = DUAL[norm]
    c, dist, wnorm, w = _boundary_distances(model, x, q)
    r = clever(model, x, norm=norm, radius=100.0, n_batches=4, batch_size=8)
    assert r.predicted.tolist() == c.tolist()
    # The gradient of g_j is w_c - w_j everywhere: the estimate is its dual norm exactly.
    np.testing.assert_allclose(r.lipschitz_per_class.numpy(), wnorm, rtol=1e-5)
    np.testing.assert_allclose(r.lipschitz.numpy(), np.nanmax(wnorm, axis=1), rtol=1e-5)
    assert set(r.fits["reason"]) == {"constant sample"}
    np.testing.assert_allclose(r.score.numpy(), dist.min(axis=1), rtol=1e-5)
    assert r.nearest.tolist() == dist.argmin(axis=1).tolist()

    # The minimal perturbation towards the nearest boundary flips the prediction just past the
    # score and not just before it (unclipped: the linear model is defined everywhere).
    for i in range(len(x)):
        j, ci = int(r.nearest[i]), int(c[i])
        diff = w[ci] - w[j]
        direction = diff / np.linalg.norm(diff) if norm == "L2" else np.sign(diff)
        delta = -float(r.score[i]) * torch.from_numpy(direction).view(SHAPE)
        assert np.linalg.norm(delta.numpy().ravel(), ord=2 if norm == "L2" else np.inf) == \
            pytest.approx(float(r.score[i]))
        with torch.no_grad():
            assert model(x[i:i + 1] + 0.999 * delta).argmax().item() == ci
            assert model(x[i:i + 1] + 1.001 * delta).argmax().item() != ci


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_linear_model_score_is_capped_at_the_radius(norm):
    model, x = _linear(), _inputs()
    _, dist, _, _ = _boundary_distances(model, x, DUAL[norm])
    radius = 0.5 * dist.min()
    r = clever(model, x, norm=norm, radius=radius, n_batches=3, batch_size=4)
    np.testing.assert_allclose(r.score.numpy(), radius, rtol=1e-12)
    assert r.nearest.tolist() == dist.argmin(axis=1).tolist()


def test_float32_model_and_default_dtype():
    model = _linear(torch.float32)
    x = _inputs(3)            # float64 inputs: computed in the model's dtype
    _, dist, wnorm, _ = _boundary_distances(model, x.float(), 2)
    r = clever(model, x, radius=100.0, n_batches=3, batch_size=4)
    np.testing.assert_allclose(r.lipschitz_per_class.numpy(), wnorm, rtol=1e-5)
    np.testing.assert_allclose(r.score.numpy(), dist.min(axis=1), rtol=1e-4)


def _input_gradient_norms(model, x0, c, q):
    """||grad (f_c - f_j)(x0)||_q for every j (autograd's Jacobian), float64."""
    jac = torch.autograd.functional.jacobian(lambda v: model(v)[0], x0.unsqueeze(0))
    jac = jac.reshape(K, -1).double()
    return torch.linalg.vector_norm(jac[c] - jac, ord=q, dim=1)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_relu_net_estimate_between_gradient_at_x0_and_spectral_bound(norm):
    model, x = _relu_net(), _inputs(3, torch.float32)
    q = DUAL[norm]
    r = clever(model, x, norm=norm, radius=0.5, n_batches=20, batch_size=16)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    inner = 1.0
    for layer in lin[:-1]:
        inner *= torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2).item()
    w_last = lin[-1].weight.detach().double()
    for i in range(len(x)):
        c = int(r.predicted[i])
        at_x0 = _input_gradient_norms(model, x[i], c, q)
        for j in range(K):
            if j == c:
                assert torch.isnan(r.lipschitz_per_class[i, j])
                continue
            # ||grad g_j||_2 <= ||w_c - w_j||_2 prod_l ||W_l||_2 (ReLU slopes in [0, 1]);
            # ||v||_1 <= sqrt(d) ||v||_2.
            bound = torch.linalg.vector_norm(w_last[c] - w_last[j]).item() * inner
            if q == 1:
                bound *= D ** 0.5
            estimate = r.lipschitz_per_class[i, j].item()
            assert at_x0[j].item() * (1 - 1e-5) <= estimate <= bound
            assert estimate >= r.maxima[i, j].max().item()
    # On this net the fits are usable and extrapolate beyond the sample maximum. (Without the
    # shape penalty, shape_penalty=0, some fits diverge to locations far above the bound.)
    assert (r.fits["method"] == "weibull").mean() > 0.5
    assert (r.fits["lipschitz"] > r.fits["sample_max"]).any()
    margins = r.margin_per_class.numpy()
    expected = np.nanmin(margins / r.lipschitz_per_class.numpy(), axis=1).clip(max=0.5)
    np.testing.assert_allclose(r.score.numpy(), expected, rtol=1e-12)


def test_seed_determinism_and_independence_from_batch_composition():
    model, x = _relu_net(1), _inputs(3, torch.float32, seed=2)
    settings = dict(radius=0.3, n_batches=8, batch_size=8, shapes=(1.0, 5.0))
    a = clever(model, x, seed=7, **settings)
    b = clever(model, x, seed=7, **settings)
    assert torch.equal(a.maxima.nan_to_num(-1), b.maxima.nan_to_num(-1))
    assert torch.equal(a.score, b.score) and torch.equal(a.nearest, b.nearest)
    other = clever(model, x, seed=8, **settings)
    assert not torch.equal(a.maxima.nan_to_num(-1), other.maxima.nan_to_num(-1))
    # The draws depend on the seed only: one example alone, or in passes of one example,
    # gets the same maxima as within the batch (up to BLAS rounding across batch sizes).
    alone = clever(model, x[1:2], seed=7, **settings)
    torch.testing.assert_close(alone.maxima[0], a.maxima[1], equal_nan=True, rtol=1e-5,
                               atol=0)
    single = clever(model, x, seed=7, max_batch=1, **settings)
    torch.testing.assert_close(single.maxima, a.maxima, equal_nan=True, rtol=1e-5, atol=0)


def test_fit_recovers_a_known_location():
    rng = np.random.default_rng(0)
    for shape in (0.8, 2.0):
        sample = stats.weibull_max.rvs(shape, loc=3.0, scale=0.5, size=200, random_state=rng)
        fit = fit_reverse_weibull(sample)
        assert fit.method == "weibull" and fit.sample_max == sample.max()
        assert abs(fit.location - 3.0) < 0.01 * 3.0
        assert abs(fit.location - 3.0) <= abs(sample.max() - 3.0)
        assert fit.pvalue > 0.05
    # Invariant to shifting and scaling the sample (the wrapper rescales to [-1, 0]).
    shifted = fit_reverse_weibull(10 + 4 * sample)
    assert shifted.location == pytest.approx(10 + 4 * fit.location, rel=1e-6)


def test_fit_falls_back_to_the_sample_max():
    constant = fit_reverse_weibull(np.full(20, 1.5))
    assert (constant.location, constant.method, constant.reason) == (1.5, "sample max",
                                                                     "constant sample")
    two_values = fit_reverse_weibull([1.0] * 25 + [2.0] * 25)
    assert two_values.location == 2.0 and two_values.reason.startswith("KS p-value")
    with pytest.raises(ValueError):
        fit_reverse_weibull([1.0, np.nan])


def test_fit_goes_through_scipy(monkeypatch):
    calls = []
    real = stats.weibull_max.fit

    def spy(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(stats.weibull_max, "fit", spy)
    sample = stats.weibull_max.rvs(2.0, loc=1.0, scale=0.3, size=30, random_state=0)
    fit_reverse_weibull(sample, shapes=(1.0, 5.0))
    assert calls == [30, 30]

    def broken(*args, **kwargs):
        raise RuntimeError("no convergence")

    monkeypatch.setattr(stats.weibull_max, "fit", broken)
    failed = fit_reverse_weibull(sample)
    assert failed.location == sample.max() and failed.reason == "every fit failed"


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_samples_are_uniform_in_the_ball(norm):
    x0 = torch.full((3, 2, 2), 0.5, dtype=torch.float64)
    radius, d, n = 0.2, 12, 20000
    pts = sample_ball(x0, n, norm=norm, radius=radius,
                      generator=torch.Generator().manual_seed(0), clip=False)
    delta = (pts - x0).reshape(n, d)
    if norm == "L2":
        r = delta.norm(dim=1)
        assert r.max() <= radius * (1 + 1e-12)
        # Uniform in the ball: P(||delta|| <= rho) = (rho / R)^d.
        for frac in (0.1, 0.5, 0.9):
            inside = (r <= radius * frac ** (1 / d)).double().mean().item()
            assert abs(inside - frac) < 0.02
    else:
        assert delta.abs().max() <= radius
        for frac in (0.1, 0.5, 0.9):
            inside = (delta.abs() <= frac * radius).double().mean().item()
            assert abs(inside - frac) < 0.01
    # Clipping keeps the points in [0, 1] and in the ball.
    edge = torch.zeros(3, 2, 2, dtype=torch.float64)
    clipped = sample_ball(edge, 100, norm=norm, radius=radius,
                          generator=torch.Generator().manual_seed(0))
    assert clipped.min() >= 0 and clipped.max() <= 1
    p = 2 if norm == "L2" else float("inf")
    assert torch.linalg.vector_norm(clipped.reshape(100, -1), ord=p, dim=1).max() <= radius + 1e-12


class _Surrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad


class _SurrogateIdentity(nn.Module):
    """Identity whose backward is 3x the derivative unless ``exact``."""

    exact = False

    def forward(self, x):
        return x * 1.0 if self.exact else _Surrogate.apply(x)


def test_gradient_context_selects_the_gradient_path():
    layer = _SurrogateIdentity()
    linear = _linear()
    model = nn.Sequential(layer, *linear).eval()
    x = _inputs(2)
    _, _, wnorm, _ = _boundary_distances(linear, x, 2)

    @contextlib.contextmanager
    def exact():
        layer.exact = True
        try:
            yield
        finally:
            layer.exact = False

    surrogate = clever(model, x, radius=100.0, n_batches=2, batch_size=4)
    np.testing.assert_allclose(surrogate.lipschitz_per_class.numpy(), 3 * wnorm, rtol=1e-5)
    derivative = clever(model, x, radius=100.0, n_batches=2, batch_size=4, gradient=exact)
    np.testing.assert_allclose(derivative.lipschitz_per_class.numpy(), wnorm, rtol=1e-5)
    assert not layer.exact


def test_flat_margins_and_bad_arguments():
    model = _linear()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(K, dtype=torch.float64))
    r = clever(model, _inputs(2), radius=0.25, n_batches=2, batch_size=4)
    assert r.lipschitz.tolist() == [0.0, 0.0] and r.score.tolist() == [0.25, 0.25]
    with torch.no_grad():           # a tie between classes 0 and 1: no margin, score 0
        model[1].bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    r = clever(model, _inputs(2), radius=0.25, n_batches=2, batch_size=4)
    assert r.score.tolist() == [0.0, 0.0] and r.nearest.tolist() == [1, 1]
    with pytest.raises(ValueError, match="eval mode"):
        clever(model.train(), _inputs(2))
    model.eval()
    with pytest.raises(ValueError, match="norm"):
        clever(model, _inputs(2), norm="L1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clever(model, _inputs(2) + 1)
    assert clever_mod.DEFAULT_RADIUS == {"L2": 2.0, "Linf": 16 / 255}
