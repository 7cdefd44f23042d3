"""Deep-spline activations: a learnable linear-spline activation per channel (conv) or per
neuron (dense), with the TV(2) regulariser and a 1-Lipschitz variant (Aziznejad et al. 2020,
``../shared/papers/deep_splines.md``; reference implementation: the ``deepsplines`` package).

Parametrisation: linear B-spline (B1) coefficients ``c[j, k]`` of activation ``j`` on the
uniform grid ``t_k = (k - size // 2) * T``, ``k = 0 .. size-1``, with ``T = range / (size // 2)``
(so the knots cover ``[-range, range]``). Between knots the activation interpolates linearly;
outside, it extrapolates linearly with the end slopes. B1 splines interpolate, so
``c[j, k] = sigma_j(t_k)``: initialising from ReLU / leaky ReLU / identity means sampling it.

* ``tv2()`` = sum_j sum_k |c[j, k+1] - 2 c[j, k] + c[j, k-1]| / T, the second-order total
  variation (L1 norm of the ReLU-basis slopes); add ``lambda * model_tv2(model)`` to the loss.
* ``lipschitz()`` = max_k |c[j, k+1] - c[j, k]| / T per activation (end slopes included,
  since extrapolation continues them).
* ``DeepSpline(..., lipschitz_bound=1.0)`` projects the slopes into [-1, 1] in every forward
  (clip the finite differences, re-integrate, keep each activation's mean coefficient): the
  stored coefficients are free parameters, the activation actually applied is always
  1-Lipschitz, and gradients pass through the projection. ``anchored=True`` also shifts the
  applied activation so that sigma(0) = 0 (used without BatchNorm, where a drifting offset
  has nothing to absorb it).

Cost: evaluation is O(N*C*H*W), independent of ``size``: each input finds its interval by a
floor, and two gathers (value and slope of that interval) give the output. The backward pass
scatters two weighted sums per input into the coefficient gradient. The work happens in
float32 (float64 for float64 inputs) on a flat view in the tensor's own memory order
(channels_last stays channels_last).

    >>> act = DeepSpline(16, size=51, range_=4.0, init="relu")  # 16 channels
    >>> y = act(torch.randn(8, 16, 32, 32))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INITS = ("relu", "leaky_relu", "identity")


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor laid out channels_last (and not also contiguous)."""
    if x.dim() != 4 or x.is_contiguous():
        return False
    try:
        return x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:   # vmap's batched tensors only answer for the contiguous format
        return False


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """A contiguous view of ``x`` whose last or second axis is the activation axis, and the
    permutation that undoes it (None: none needed).

    2-D (N, C) and contiguous (N, C, H, W) inputs are used as they are (channel = axis 1);
    channels_last inputs are viewed as (N, H, W, C) (channel = last axis), a free permute.
    """
    if _channels_last(x):
        return x.permute(0, 2, 3, 1), (0, 3, 1, 2)
    return x.contiguous(), None


def _offsets(x_rows: torch.Tensor, inverse: tuple | None, num: int, size: int) -> torch.Tensor:
    """Float offset of each activation's zero knot in the flattened coefficient table,
    shaped to broadcast against ``x_rows``."""
    off = torch.arange(num, device=x_rows.device, dtype=torch.float32) * size + size // 2
    if inverse is not None or x_rows.dim() == 2:
        return off                                   # channel is the last axis
    return off.view(1, num, *([1] * (x_rows.dim() - 2)))


class _SplineFn(torch.autograd.Function):
    """Linear-spline evaluation with a hand-written backward (autograd through gathers would
    store and scatter far more) and forward-mode derivative, so it runs under ``torch.func``
    (vjp, jvp, vmap: the vmap rule is generated from these staticmethods).

    ``forward`` returns, besides the output, the per-element intermediates the derivatives
    need (left-knot index, position within the interval, the interval's rise): new-style
    Functions (``setup_context``) can keep only inputs and outputs. They are marked
    non-differentiable; :meth:`DeepSpline.forward` returns only the first output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, coefficients, grid):
        num, size = coefficients.shape
        x_rows, inverse = _rows(x)
        offsets = _offsets(x_rows, inverse, num, size)
        work = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 if given
        u = x_rows.to(work)                                 # position in grid units:
        u = u / grid if u is x_rows else u.div_(grid)       # (never write into x)
        left = torch.clamp(u, -(size // 2), size // 2 - 1).floor_()
        frac = u.sub_(left)                                 # in [0, 1) inside the grid
        idx = left.add_(offsets).int()                      # flat index of the left knot
        flat = idx.view(-1)
        c = coefficients.to(work)
        diff = F.pad(c[:, 1:] - c[:, :-1], (0, 1)).reshape(-1)   # knot-to-knot rise
        rise = diff.index_select(0, flat).view_as(frac)
        out = c.reshape(-1).index_select(0, flat).view_as(frac).addcmul_(rise, frac).to(x.dtype)
        if inverse is not None:
            out = out.permute(*inverse)
        return out, idx, frac, rise

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, coefficients, grid = inputs
        _, idx, frac, rise = output
        ctx.mark_non_differentiable(idx, frac, rise)
        ctx.set_materialize_grads(False)        # no zero gradients for the intermediates
        ctx.save_for_backward(idx, frac, rise)
        ctx.save_for_forward(idx, frac, rise)
        ctx.grid, ctx.shape = grid, tuple(coefficients.shape)
        ctx.inverse = (0, 3, 1, 2) if _channels_last(x) else None     # as forward's _rows
        ctx.x_dtype, ctx.coef_dtype = x.dtype, coefficients.dtype

    @staticmethod
    def backward(ctx, grad, *_):
        idx, frac, rise = ctx.saved_tensors
        grad_x = grad_c = None
        if grad is None:                        # the output does not reach the loss
            return grad_x, grad_c, None
        g = grad.permute(0, 2, 3, 1) if ctx.inverse is not None else grad
        g = g.to(frac.dtype).contiguous()
        if ctx.needs_input_grad[0]:
            grad_x = (g * rise).mul_(1.0 / ctx.grid).to(grad.dtype)
            if ctx.inverse is not None:
                grad_x = grad_x.permute(*ctx.inverse)
        if ctx.needs_input_grad[1]:
            # d out / d c[left] = 1 - frac, d out / d c[left + 1] = frac.
            flat, n = idx.view(-1), ctx.shape[0] * ctx.shape[1]
            total = torch.bincount(flat, g.view(-1), minlength=n)
            right = torch.bincount(flat, (g * frac).view(-1), minlength=n)
            grad_c = total - right
            grad_c[1:] += right[:-1]   # a left knot is never a row's last, so no row bleeds
            grad_c = grad_c.view(ctx.shape).to(ctx.coef_dtype)
        return grad_x, grad_c, None

    @staticmethod
    def jvp(ctx, x_tangent, c_tangent, _grid_tangent):
        """The Jacobian the backward transposes: d out = (rise / T) dx + (1 - frac) dc[left]
        + frac dc[left + 1], per element, on the rows layout of the forward."""
        idx, frac, rise = ctx.saved_tensors
        out = None
        if x_tangent is not None:
            t = x_tangent.permute(0, 2, 3, 1) if ctx.inverse is not None else x_tangent
            out = (t.to(frac.dtype) * rise).mul_(1.0 / ctx.grid)
        if c_tangent is not None:
            tc = c_tangent.to(frac.dtype)
            flat = idx.view(-1)
            t_rise = F.pad(tc[:, 1:] - tc[:, :-1], (0, 1)).reshape(-1).index_select(0, flat)
            t_left = tc.reshape(-1).index_select(0, flat)
            dc = t_left.view_as(frac).addcmul_(t_rise.view_as(frac), frac)
            out = dc if out is None else out.add_(dc)
        if out is None:
            return None, None, None, None
        out = out.to(ctx.x_dtype)
        if ctx.inverse is not None:
            out = out.permute(*ctx.inverse)
        return out, None, None, None


def project_slopes(coefficients: torch.Tensor, grid: float, bound: float) -> torch.Tensor:
    """Coefficients whose slopes are clipped to [-bound, bound], re-integrated from the left
    and shifted so each row keeps its mean (differentiable; identity when already within)."""
    diff = (coefficients[:, 1:] - coefficients[:, :-1]).clamp(-bound * grid, bound * grid)
    proj = torch.cat([torch.zeros_like(coefficients[:, :1]), diff.cumsum(1)], dim=1)
    return proj + (coefficients - proj).mean(1, keepdim=True)


class DeepSpline(nn.Module):
    """A learnable linear-spline activation per channel (4-D inputs) or neuron (2-D inputs).

    Args:
        num_activations: channels (conv) or neurons (dense).
        size: number of B-spline coefficients (odd).
        range_: the knots span [-range_, range_]; grid step T = range_ / (size // 2).
        init: "relu", "leaky_relu" (slope 0.01) or "identity".
        lipschitz_bound: if set, slopes are projected into [-bound, bound] in every forward.
        anchored: the applied activation is shifted so that sigma(0) = 0 (the coefficients
            keep no free offset; without BatchNorm to absorb it, a drifting offset can shift
            a whole channel out of the spline's useful range).
    """

    def __init__(self, num_activations: int, *, size: int = 51, range_: float = 4.0,
                 init: str = "relu", lipschitz_bound: float | None = None,
                 anchored: bool = False) -> None:
        super().__init__()
        if num_activations < 1:
            raise ValueError("num_activations must be positive")
        if size < 3 or size % 2 == 0:
            raise ValueError(f"size must be odd and >= 3, got {size}")
        if range_ <= 0:
            raise ValueError(f"range_ must be positive, got {range_}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; one of {INITS}")
        if lipschitz_bound is not None and lipschitz_bound <= 0:
            raise ValueError("lipschitz_bound must be positive")
        self.num_activations, self.size, self.range_ = int(num_activations), int(size), float(range_)
        # T rounded to float32: the knots are then the same in float32 and float64 evaluation
        # (and the same as the deepsplines package's, which stores T as a float32 tensor).
        self.grid = float(torch.tensor(self.range_ / (self.size // 2), dtype=torch.float32))
        self.init = init
        self.lipschitz_bound = None if lipschitz_bound is None else float(lipschitz_bound)
        self.anchored = bool(anchored)
        knots = self.knots().expand(self.num_activations, self.size)
        if init == "relu":
            coef = F.relu(knots)
        elif init == "leaky_relu":
            coef = F.leaky_relu(knots, 0.01)
        else:
            coef = knots.clone()
        self.coefficients = nn.Parameter(coef.contiguous())

    def knots(self) -> torch.Tensor:
        """Knot positions t_k (size,)."""
        return (torch.arange(self.size, dtype=torch.float32) - self.size // 2) * self.grid

    def effective_coefficients(self) -> torch.Tensor:
        """The coefficients actually applied (projected for the Lipschitz variant)."""
        c = self.coefficients
        if self.lipschitz_bound is not None:
            c = project_slopes(c, self.grid, self.lipschitz_bound)
        if self.anchored:
            c = c - c[:, self.size // 2:self.size // 2 + 1]
        return c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_activations:
            raise ValueError(f"DeepSpline({self.num_activations}) expects (N, "
                             f"{self.num_activations}) or (N, {self.num_activations}, H, W) "
                             f"input, got {tuple(x.shape)}")
        return _SplineFn.apply(x, self.effective_coefficients(), self.grid)[0]

    # What metrics.sparsity counts: the spline's output (exact zeros where it is flat at 0).
    sparsity_site = "activation"

    def certified_lipschitz(self, x: torch.Tensor) -> float:
        """l2 Lipschitz constant of the applied activation (metrics.lipschitz protocol): the
        largest |slope| over channels and segments, end slopes included (elementwise, so the
        map on a whole tensor has the same constant)."""
        with torch.no_grad():
            return self.lipschitz().max().item()

    def slopes(self) -> torch.Tensor:
        """Slopes of the applied activation between consecutive knots (num, size - 1)."""
        c = self.effective_coefficients()
        return (c[:, 1:] - c[:, :-1]) / self.grid

    def lipschitz(self) -> torch.Tensor:
        """Lipschitz constant of each activation, max |slope| (num,)."""
        return self.slopes().abs().amax(1)

    def tv2(self) -> torch.Tensor:
        """Second-order total variation summed over the activations (a scalar with grad)."""
        c = self.effective_coefficients()
        return ((c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).abs().sum() / self.grid)

    def extra_repr(self) -> str:
        lip = "" if self.lipschitz_bound is None else f", lipschitz_bound={self.lipschitz_bound}"
        anchored = ", anchored=True" if self.anchored else ""
        return (f"{self.num_activations}, size={self.size}, range_={self.range_}, "
                f"init={self.init}{lip}{anchored}")


def model_tv2(model: nn.Module) -> torch.Tensor:
    """Sum of ``tv2()`` over every DeepSpline in ``model`` (0 if there is none)."""
    terms = [m.tv2() for m in model.modules() if isinstance(m, DeepSpline)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
