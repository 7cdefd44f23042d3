"""CLEVER scores (Weng et al. 2018, "Evaluating the Robustness of Neural Networks: An Extreme
Value Theory Approach"): per example, an estimate of the smallest l2 or linf perturbation (pixel
units, inputs in [0, 1]) that changes a classifier's prediction, from an extreme-value estimate
of the local Lipschitz constant of the logit margins.

Algorithm (untargeted, :func:`clever`), per example x0 with predicted class c and for every
other class j, on the margin g_j(x) = f_c(x) - f_j(x) (``f``: the logits):

1. draw ``n_batches`` batches of ``batch_size`` points uniformly in the ball
   B_p(x0, ``radius``) (l2: uniform in the ball, a Gaussian direction and a radius
   R U^(1/d); linf: uniform in the cube x0 + [-R, R]^d), clipped to [0, 1] (``clip``, below);
2. at every point, the dual norm ||grad g_j||_q (l2 -> q = 2, linf -> q = 1); keep the largest
   per batch;
3. fit a reverse Weibull (:data:`scipy.stats.weibull_max`) to the ``n_batches`` maxima
   (:func:`fit_reverse_weibull`); its location, the distribution's upper end, is the estimate
   L_j of the largest gradient norm in the ball, i.e. of the local Lipschitz constant of g_j;
4. score = min_j min(g_j(x0) / L_j, R).

The score is an *estimate*, not a certificate: L_j can fall below the true local constant
(nothing guarantees that sampling found the steepest point), and the reverse-Weibull
extrapolation can also overshoot it.

Choices (and where they differ from the references):

* **Clipping** (``clip=True``, default): samples are clipped to [0, 1], as both the authors'
  gradient collector (IBM/CLEVER ``estimate_gradient_norm.py`` clips to the image range) and
  IBM ART's ``clever_u`` do: the estimate is the Lipschitz constant on the ball intersected
  with the image domain, where an attacker's perturbations live. Clipping is the projection onto
  the box, which moves no coordinate further from x0, so every clipped sample is still in the
  ball. ``clip=False`` samples the whole ball (the set of the paper's theorem); its estimate is
  larger, so its score is smaller (more conservative).
* **Sampling**: uniform in the ball as in the paper's algorithm. In d = 3072 dimensions nearly
  all of a ball's volume lies near its surface (99% of uniform l2 samples have radius above
  0.9985 R), so the gradient norms are those of a shell at distance ~R; the authors' collector
  instead draws the l2 radius uniformly in [0, R].
* **Floor**: L_j is never below the largest sampled gradient norm nor the gradient norm at x0
  itself: both are points of the ball, so both are lower bounds of the true local constant.
  When the fit is unusable (a constant sample, e.g. a linear model; every scipy fit failed;
  the best fit's Kolmogorov-Smirnov p-value is below ``min_pvalue``, which the authors'
  ``clever.py`` uses, 0.001; a location below the sample maximum), L_j is the sample maximum
  (with that floor); the ``fits`` table says which, per (example, class).
* **Fit**: the maxima are shifted and scaled to [-1, 0] (the authors do the same: scipy's
  Nelder-Mead MLE converges far more reliably there), fitted from each initial shape in
  ``shapes`` (the authors' list), and the fit with the best KS p-value is kept. As in the
  authors' recommended method (``mle_reg``), the likelihood scipy maximises gets a penalty
  ``shape_penalty`` * shape^2 (0.01) through ``weibull_max.fit``'s ``optimizer`` hook (the
  same Nelder-Mead): without it, on the maxima of a ReLU net (piecewise-constant gradients,
  so an atom at the top) the shape ran to 1e8 and the location to 1e5-1e6 x the sample
  maximum, with KS p-values that still looked good.
* **Common random numbers**: the perturbations depend on the seed only, not on the example or
  on which other examples are in ``x``: every example (and every model evaluated with the same
  seed) sees the same draws, so an example's result does not depend on batch composition or
  ``max_batch``, and comparisons between models are less noisy.
* **Radius**: l2 2.0, linf 16/255 by default: above the distances any CIFAR-10 model here is
  robust to (scores are capped at R), and the two defaults probe shells at similar l2 distance
  (a linf sample of 16/255 in 3072 dimensions has l2 norm ~2.0).
* **Cost**: the reference settings are 500 batches x 1024 samples (``collect_gradients.py``
  defaults); on this CPU that is ~45 min per example, so the defaults here are 50 x 64. Each batch
  costs one forward and one backward per class (K - 1 backwards over ``batch_size`` samples,
  retaining the graph): measured on ResNet-8 with one CPU thread, 64 samples x 9 classes take
  0.34 s this way against 0.55 s for one vmapped backward (``is_grads_batched``) and 0.9 s for
  ``torch.func`` ``vmap(jacrev)``; end to end with the defaults, 24-26 s per example (one
  thread on a shared 2-core CPU; the 9 fits per example take ~0.6 s of it).

``gradient``: where a model's backward is not the derivative of its forward (SUGAR's surrogate
gradients), autograd's gradient norms are not the model's; the caller passes a context factory
(e.g. ``lambda: attacks.gradients.use_derivative(model)``) under which autograd is the
derivative. The whole computation runs inside it.

The model must be in eval mode (BatchNorm in training mode would mix the samples of a batch)
and return logits of shape (N, K).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats
from torch import nn

from metrics.lipschitz import gradient_context

# The authors' initial shapes (IBM/CLEVER clever.py ``c_init``).
SHAPES = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
MIN_PVALUE = 1e-3
SHAPE_PENALTY = 0.01
DEFAULT_RADIUS = {"L2": 2.0, "Linf": 16 / 255}
# A sample whose spread is below this fraction of its maximum is constant up to rounding.
_CONSTANT = 1e-6


@dataclass(frozen=True)
class WeibullFit:
    """The estimate of a sample's upper end (``location``) and how it was obtained: ``method``
    is ``"weibull"`` (the location of the fitted reverse Weibull) or ``"sample max"`` (the
    fit was unusable; ``reason`` says why). ``shape``, ``scale`` and ``pvalue`` (the
    Kolmogorov-Smirnov test of the sample against the fit) are those of the best fit, NaN
    when there was none."""

    location: float
    sample_max: float
    method: str
    reason: str = ""
    shape: float = math.nan
    scale: float = math.nan
    pvalue: float = math.nan


def _fmin_penalised(func, x0, args=(), disp=0, *, penalty: float):
    """scipy's default fitting optimiser (Nelder-Mead ``fmin``) on scipy's objective plus
    ``penalty`` * shape^2 (the shape is the first parameter)."""
    def objective(theta, *a):
        return func(theta, *a) + penalty * theta[0] ** 2

    return optimize.fmin(objective, x0, args=args, disp=disp)


def fit_reverse_weibull(sample, *, shapes: tuple[float, ...] = SHAPES,
                        min_pvalue: float = MIN_PVALUE,
                        shape_penalty: float = SHAPE_PENALTY) -> WeibullFit:
    """Fit :data:`scipy.stats.weibull_max` (support x <= location) to ``sample`` (1-D, e.g. the
    per-batch maxima of gradient norms) by maximum likelihood penalised by ``shape_penalty`` *
    shape^2 (0: the plain MLE), from each initial shape in ``shapes``, on the sample shifted
    and scaled to [-1, 0]; keep the fit with the best KS p-value. Falls back to the sample
    maximum when the sample is constant, every fit fails, the best p-value is below
    ``min_pvalue`` or the location is below the sample maximum."""
    s = np.asarray(sample, dtype=np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("fit_reverse_weibull needs a non-empty sample of finite values")
    top = float(s.max())
    spread = top - float(s.min())
    if spread <= _CONSTANT * abs(top):
        return WeibullFit(top, top, "sample max", "constant sample")
    z = (s - top) / spread
    optimizer = functools.partial(_fmin_penalised, penalty=shape_penalty)
    best: tuple[float, float, float, float] | None = None
    for c0 in shapes:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                c, loc, scale = stats.weibull_max.fit(z, c0, optimizer=optimizer)
                pvalue = stats.kstest(z, stats.weibull_max(c, loc, scale).cdf).pvalue
        except (ValueError, RuntimeError, FloatingPointError, OverflowError):
            continue
        if not (np.isfinite([c, loc, scale, pvalue]).all() and c > 0 and scale > 0):
            continue
        if best is None or pvalue > best[3]:
            best = (float(c), float(loc), float(scale), float(pvalue))
    if best is None:
        return WeibullFit(top, top, "sample max", "every fit failed")
    c, loc, scale, pvalue = best
    location = top + loc * spread
    fitted = {"shape": c, "scale": scale * spread, "pvalue": pvalue}
    if pvalue < min_pvalue:
        return WeibullFit(top, top, "sample max", f"KS p-value {pvalue:.2g} < {min_pvalue:g}",
                          **fitted)
    if location < top:
        return WeibullFit(top, top, "sample max", "location below the sample maximum", **fitted)
    return WeibullFit(location, top, "weibull", **fitted)


def _norm_name(norm: str) -> str:
    key = str(norm).lower()
    if key in ("l2", "2"):
        return "L2"
    if key in ("linf", "inf", "li"):
        return "Linf"
    raise ValueError(f"norm must be 'L2' or 'Linf', got {norm!r}")


def sample_ball(x0: torch.Tensor, n: int, *, norm: str = "L2", radius: float,
                generator: torch.Generator | None = None, clip: bool = True) -> torch.Tensor:
    """``n`` points uniformly distributed in the ``norm`` ball of ``radius`` around ``x0`` (one
    example, any shape), shape (n, *x0.shape), clipped to [0, 1] when ``clip``. Drawn in
    float64 on the CPU from ``generator`` (so the same generator state gives the same points on
    any device), returned like ``x0``."""
    norm = _norm_name(norm)
    d = x0.numel()
    if norm == "L2":
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        delta = z * (radius * u.pow(1.0 / d) / z.norm(dim=1, keepdim=True).clamp_min(1e-300))
    else:
        delta = (2 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1) * radius
    delta = delta.to(device=x0.device, dtype=x0.dtype).view(n, *x0.shape)
    points = x0.unsqueeze(0) + delta
    return points.clamp(0, 1) if clip else points


@dataclass
class CleverResult:
    """Per example (N of them, K classes):

    * ``score`` (N,): the CLEVER score, min_j min(g_j(x0) / L_j, radius); 0 where the
      prediction is tied;
    * ``predicted`` (N,): the predicted class c;
    * ``nearest`` (N,): the class j with the smallest g_j(x0) / L_j (the estimated nearest
      decision boundary), also when the score is capped at the radius;
    * ``lipschitz`` (N,): max_j L_j, the estimated local Lipschitz constant of the margins;
    * ``lipschitz_per_class`` (N, K), ``margin_per_class`` (N, K): L_j and g_j(x0), NaN at c;
    * ``maxima`` (N, K, n_batches): the per-batch maxima of ||grad g_j||_q the fits used;
    * ``fits``: one row per (example, class): ``example``, ``cls``, ``margin``,
      ``lipschitz``, ``sample_max``, ``grad_norm_x0``, ``method``, ``reason``, ``shape``,
      ``scale``, ``pvalue`` (see :class:`WeibullFit`);

    and the settings used (``norm``, ``radius``, ``n_batches``, ``batch_size``, ``clip``,
    ``seed``). Tensors are float64 (long for classes) on the CPU."""

    score: torch.Tensor
    predicted: torch.Tensor
    nearest: torch.Tensor
    lipschitz: torch.Tensor
    lipschitz_per_class: torch.Tensor
    margin_per_class: torch.Tensor
    maxima: torch.Tensor
    fits: pd.DataFrame
    norm: str
    radius: float
    n_batches: int
    batch_size: int
    clip: bool
    seed: int


def _others(c: torch.Tensor, k: int) -> torch.Tensor:
    """(e, K-1): for each predicted class, the other classes in increasing order."""
    classes = torch.arange(k, device=c.device).expand(len(c), k)
    return classes[classes != c.unsqueeze(1)].view(len(c), k - 1)


def _margin_grad_norms(model: nn.Module, points: torch.Tensor, c: torch.Tensor,
                       others: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows ``points`` (R, ...) with predicted class ``c`` (R,) and classes ``others``
    (R, J): the margins f_c - f_j (R, J) and ||grad (f_c - f_j)||_q (R, J), one forward and J
    backwards (retaining the graph)."""
    points = points.detach().requires_grad_(True)
    out = model(points)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and len(out) == len(points)):
        raise ValueError("clever needs a model returning logits of shape (N, K), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    rows = torch.arange(len(points), device=out.device)
    margins = (out[rows, c].unsqueeze(1) - out.gather(1, others)).detach()
    norms = torch.empty_like(margins)
    for k in range(others.shape[1]):
        weights = torch.zeros_like(out)
        weights[rows, c] = 1
        weights[rows, others[:, k]] = -1
        (grad,) = torch.autograd.grad(out, points, weights,
                                      retain_graph=k < others.shape[1] - 1)
        norms[:, k] = grad.flatten(1).norm(p=q, dim=1)
    return margins, norms


def clever(model: nn.Module, x: torch.Tensor, *, norm: str = "L2", radius: float | None = None,
           n_batches: int = 50, batch_size: int = 64, clip: bool = True, seed: int = 0,
           shapes: tuple[float, ...] = SHAPES, min_pvalue: float = MIN_PVALUE,
           shape_penalty: float = SHAPE_PENALTY, max_batch: int = 256,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           gradient: Callable[[], contextlib.AbstractContextManager] | None = None
           ) -> CleverResult:
    """Untargeted CLEVER scores of ``model`` (eval mode, logits (N, K)) at each example of
    ``x`` ((N, C, H, W) or any (N, ...), values in [0, 1]); see the module docstring.

    Args:
        norm: ``"L2"`` or ``"Linf"``: the perturbation norm (gradients are measured in its
            dual, 2 or 1).
        radius: the sampling radius R, which also caps the score (default
            :data:`DEFAULT_RADIUS`: l2 2.0, linf 16/255).
        n_batches, batch_size: N_b maxima, each over N_s samples (reference: 500 x 1024).
        clip: clip the samples to [0, 1].
        seed: the perturbations' seed; results are deterministic given it (and the
            platform), and the same for an example whatever else is in ``x``.
        shapes, min_pvalue, shape_penalty: the fit's initial shapes, acceptance threshold
            and shape penalty (:func:`fit_reverse_weibull`).
        max_batch: rows per forward pass: examples are processed together, at least one at a
            time, so that examples x ``batch_size`` stays within it.
        device, dtype: where and in which precision to compute (default: those of the model's
            parameters, else of ``x``); the model must already be there.
        gradient: a context-manager factory under which autograd gives the derivative of the
            model's forward (for models with surrogate gradients).
    """
    if model.training:
        raise ValueError("clever needs the model in eval mode (call model.eval()): in training "
                         "mode BatchNorm and dropout mix or randomise the samples")
    norm = _norm_name(norm)
    radius = float(DEFAULT_RADIUS[norm] if radius is None else radius)
    if radius <= 0 or n_batches < 1 or batch_size < 1:
        raise ValueError("radius, n_batches and batch_size must be positive")
    q = 2.0 if norm == "L2" else 1.0
    param = next(iter(model.parameters()), None)
    if device is None:
        device = param.device if param is not None else x.device
    if dtype is None:
        dtype = param.dtype if param is not None and param.is_floating_point() else (
            x.dtype if x.is_floating_point() else torch.float32)
    x = x.detach().to(device=device, dtype=dtype)
    if x.dim() < 2 or len(x) == 0:
        raise ValueError("clever needs a non-empty batch (N, ...)")
    if clip and (x.min() < 0 or x.max() > 1):
        raise ValueError("clever with clip=True needs inputs in [0, 1]")

    n = len(x)
    per_pass = max(1, max_batch // batch_size)
    margins, norms0, maxima, predicted = [], [], [], []
    with gradient_context(gradient), torch.enable_grad():
        for start in range(0, n, per_pass):
            x0 = x[start:start + per_pass]
            e = len(x0)
            with torch.no_grad():
                logits = model(x0)
            k = logits.shape[-1]
            if k < 2:
                raise ValueError("clever needs at least two classes")
            c = logits.argmax(dim=1)
            others = _others(c, k)
            m0, g0 = _margin_grad_norms(model, x0, c, others, q)
            gen = torch.Generator().manual_seed(seed)
            c_rows = c.repeat_interleave(batch_size)
            others_rows = others.repeat_interleave(batch_size, dim=0)
            batch_max = torch.empty(e, k - 1, n_batches, dtype=torch.float64)
            for b in range(n_batches):
                delta = sample_ball(torch.zeros_like(x0[0]), batch_size, norm=norm,
                                    radius=radius, generator=gen, clip=False)
                points = (x0.unsqueeze(1) + delta.unsqueeze(0)).flatten(0, 1)
                if clip:
                    points = points.clamp(0, 1)
                _, g = _margin_grad_norms(model, points, c_rows, others_rows, q)
                batch_max[:, :, b] = g.view(e, batch_size, k - 1).amax(dim=1).double().cpu()
            predicted.append(c.cpu())
            margins.append(m0.double().cpu())
            norms0.append(g0.double().cpu())
            maxima.append(batch_max)

    predicted_t = torch.cat(predicted)
    margins_t, norms0_t, maxima_t = torch.cat(margins), torch.cat(norms0), torch.cat(maxima)
    others_all = _others(predicted_t, k)
    lip = torch.empty_like(margins_t)
    rows = []
    for i in range(n):
        for jj in range(k - 1):
            sample = maxima_t[i, jj].numpy()
            if np.isfinite(sample).all() and math.isfinite(norms0_t[i, jj]):
                fit = fit_reverse_weibull(sample, shapes=shapes, min_pvalue=min_pvalue,
                                          shape_penalty=shape_penalty)
                estimate = max(fit.location, fit.sample_max, float(norms0_t[i, jj]))
            else:
                fit = WeibullFit(math.nan, math.nan, "none", "non-finite gradient norms")
                estimate = math.nan
            lip[i, jj] = estimate
            rows.append({"example": i, "cls": int(others_all[i, jj]),
                         "margin": float(margins_t[i, jj]), "lipschitz": estimate,
                         "sample_max": fit.sample_max, "grad_norm_x0": float(norms0_t[i, jj]),
                         "method": fit.method, "reason": fit.reason, "shape": fit.shape,
                         "scale": fit.scale, "pvalue": fit.pvalue})
    # g / L, with g <= 0 (a tie) giving 0 and L = 0 (a flat margin) giving no bound (inf);
    # NaN logits or gradients give NaN.
    ratio = torch.where(lip == 0, math.inf, margins_t / lip)
    ratio = torch.where(margins_t <= 0, 0.0, ratio)
    best, arg = ratio.min(dim=1)
    score = best.clamp(max=radius)

    def per_class(values: torch.Tensor) -> torch.Tensor:
        out = torch.full((n, k), math.nan, dtype=torch.float64)
        out.scatter_(1, others_all, values)
        return out

    full_maxima = torch.full((n, k, n_batches), math.nan, dtype=torch.float64)
    full_maxima.scatter_(1, others_all.unsqueeze(2).expand(-1, -1, n_batches), maxima_t)
    return CleverResult(
        score=score, predicted=predicted_t, nearest=others_all.gather(1, arg[:, None])[:, 0],
        lipschitz=lip.amax(dim=1), lipschitz_per_class=per_class(lip),
        margin_per_class=per_class(margins_t), maxima=full_maxima, fits=pd.DataFrame(rows),
        norm=norm, radius=radius, n_batches=n_batches, batch_size=batch_size, clip=clip,
        seed=seed)
