"""Certifiably 1-Lipschitz networks: spectrally normalised conv/linear layers and a residual
network built from them (for the 1-Lipschitz deep-spline front end).

Every layer of :class:`LipschitzResNet` has an l2 operator norm of at most 1 (for inputs of
the size it was built for), so the whole map from pixels in [0, 1] to logits is 1-Lipschitz
in l2 and a logit margin m certifies an l2 radius of m / sqrt(2):

* :class:`SNConv2d` / :class:`SNLinear`: the weight is divided by its operator norm. For a
  convolution that is the norm of the zero-padded, strided linear map on the layer's actual
  input size (not the kernel-matrix norm, which can be off by a factor of up to the kernel
  size). Training estimates it by power iteration on ``conv2d`` and its adjoint, one step per
  training step from a persistent vector (Miyato et al. 2018); such estimates approach the
  norm from below. Evaluation divides by :func:`circular_norm_bound`, a rigorous upper bound,
  once per weight version, so every evaluated layer provably has norm <= 1. The bound exceeds
  the exact norm by about C / (H + 1)^2 on H x H inputs, C set by the kernel (measured in
  tests/test_lipschitz.py: 1.7e-4 for the bundled model's 32 x 32 stem, 8e-3 on its 16 x 16
  and 4e-2 on its 8 x 8 layers; 2e-3 to 5e-3 for generic kernels on 32 x 32).
  ``operator_norm()`` gives the exact zero-padded norm (block power iteration).
* residual blocks take a learned convex combination of the two paths,
  ``(1 - a) shortcut(x) + a branch(x)``: Lip <= (1 - a) + a = 1;
* the input is only mean-centred (dividing by the CIFAR std would scale the constant by 4);
* global pooling is ``sqrt(H W) * mean``, the norm-1 linear functional (plain averaging would
  shrink every margin by sqrt(H W));
* activations must be 1-Lipschitz (``deepspline-1lip``: slopes projected into [-1, 1], or ReLU).

:func:`lipschitz_upper_bound` multiplies the layer norms and activation constants (the bound
of Aziznejad et al. 2020, Sec. IV): ``method="fft"`` (rigorous, <= 1 by construction) or
``"power"`` (the exact norms estimated by power iteration).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metrics.operator_norms import conv2d_norm_bound, matrix_norm
from models.activations import make_activation
from models.activations.deepspline import DeepSpline
from models.architectures._common import CIFAR10_MEAN, Normalize
from models.architectures.resnet import stage_plan

# operator_norm() / the "power" bound: stop when the estimated remaining relative error is below
# EVAL_TOL, or after EVAL_MAX_ITERS steps. The top singular values of a convolution on a
# 32 x 32 grid crowd together (they sample a smooth function of frequency), so convergence is
# slow (relative error about 1e-4 after 400 steps of a block of 8 on a 16-channel layer).
EVAL_TOL = 1e-7
EVAL_MAX_ITERS = 400
EVAL_BLOCK = 8           # block size of the evaluation-time power iteration


@torch.no_grad()
def _power_iteration(layer, weight: torch.Tensor, v: torch.Tensor, iters: int,
                     tol: float | None, block: int = 1) -> tuple[float, torch.Tensor]:
    """Largest singular value of ``layer``'s map A (with ``weight``) by block power iteration
    on ``A^T A`` with Rayleigh-Ritz, starting from ``v`` (plus ``block - 1`` seeded random
    directions).

    With one vector this is the classical power method (one step per training iteration).
    With a block of b vectors the error shrinks like (s_{b+1} / s_1)^2 per step instead of
    (s_2 / s_1)^2, which matters for convolutions, whose top singular values crowd together.
    The Ritz estimate rises monotonically with geometrically shrinking steps d_k; with
    r = d_k / d_{k-1} the remaining error is about d_k r / (1 - r), and iteration stops when
    that is below ``tol`` (relative). Returns (estimate, unit top Ritz vector shaped like v).
    """
    shape = v.shape[1:]
    cols = [v.reshape(-1)]
    if block > 1:
        g = torch.Generator().manual_seed(12345)
        cols += list(torch.randn(block - 1, v.numel(), generator=g, dtype=v.dtype)
                     .to(v.device))
    basis = torch.linalg.qr(torch.stack(cols, 1))[0]            # (n, b) orthonormal
    est, prev_step, prev = 0.0, None, None
    top = basis[:, 0]
    for _ in range(iters):
        vs = basis.t().reshape(-1, *shape)
        ata = layer._adjoint(layer._apply_op(vs, weight), weight).reshape(len(vs), -1).t()
        ritz = basis.t() @ ata                                   # (b, b) symmetric
        vals, vecs = torch.linalg.eigh((ritz + ritz.t()) / 2)
        est = vals[-1].clamp_min(0).sqrt().item()
        top = basis @ vecs[:, -1]
        basis = torch.linalg.qr(ata)[0] if block > 1 else (ata / ata.norm().clamp_min(1e-30))
        if tol is None or prev is None:
            prev = est
            continue
        step = est - prev
        prev = est
        if step <= 0:
            break                                   # converged to rounding
        if prev_step is not None and prev_step > 0:
            r = min(step / prev_step, 0.999999)
            if step * r / (1 - r) <= tol * est:
                break
        prev_step = step
    if block == 1:
        top = basis[:, 0]                           # the latest iterate warms the next call
    return est, (top / top.norm().clamp_min(1e-30)).reshape(1, *shape)


class _SpectralNorm:
    """Mixin: ``self._apply_op(v, w)`` is the layer's linear map, ``self._adjoint(u, w)`` its
    transpose; ``self._v`` (buffer) the persistent right singular vector estimate.

    Evaluation divides by ``sigma`` (buffer), :func:`circular_norm_bound` of the weight,
    computed once per weight version (``_eval_key``: version, storage, device and dtype of
    the weight it belongs to), lazily, by the first evaluation forward after the weight
    changed (training steps, ``load_state_dict``, ``.to()``). Not in ``train(False)``: the
    bound costs 12-17 s on CPU for ResNet-18's 512-channel layers, which a model built and
    then only trained (``create_model(...).train()``) would pay for nothing.

    Inside a ``torch.func`` transform (vjp, jvp, vmap) the forward never writes a buffer (the
    transforms forbid mutating captured tensors): it reads ``sigma`` when it is current, else
    computes the same bound without storing it (kept as a number, ``_pending``, so repeated
    transformed calls compute it once, until the next plain forward stores it)."""

    def _init_sn(self, v_shape: Sequence[int]) -> None:
        v = torch.randn(1, *v_shape, generator=torch.Generator().manual_seed(0))
        self.register_buffer("_v", v / v.norm())
        self.register_buffer("sigma", torch.ones(()))   # the norm the weight was divided by
        self._eval_key: tuple | None = None              # the weight version sigma is for
        self._pending: tuple[tuple, float] | None = None  # (key, bound) computed in a transform

    def operator_norm(self, *, iters: int = EVAL_MAX_ITERS, tol: float = EVAL_TOL) -> float:
        """Operator norm of the raw (unnormalised) weight, by power iteration to convergence."""
        w = self.weight.detach().double()   # float64: the estimate is not limited by rounding
        norm, v = _power_iteration(self, w, self._v.double(), iters, tol, block=EVAL_BLOCK)
        self._v.copy_(v)
        return norm

    def _weight_key(self, w: torch.Tensor) -> tuple | None:
        """Identifies the weight's current values (None: a tensor of a torch.func transform,
        e.g. a transformed parameter of ``functional_call``, which has no storage to name)."""
        if torch._C._functorch.is_functorch_wrapped_tensor(w):
            return None
        return (w._version, w.data_ptr(), w.device, w.dtype)

    def certified_lipschitz(self, x: torch.Tensor) -> float:
        """The normalised layer's certified l2 operator norm on inputs shaped like ``x``
        (``metrics.lipschitz`` protocol; at most 1 up to rounding on ``input_hw``)."""
        with torch.no_grad():
            w = self.normalized_weight().detach()
        if isinstance(self, nn.Linear):
            return matrix_norm(w)
        return conv2d_norm_bound(w, input_hw=tuple(x.shape[-2:]), stride=self.stride,
                                 padding=self.padding)

    def normalized_weight(self) -> torch.Tensor:
        w = self.weight
        with torch.autocast(w.device.type, enabled=False):
            if self.training and torch.is_grad_enabled():
                self._v.copy_(_power_iteration(self, w.detach().float(), self._v.float(), 1,
                                               None)[1])
                sigma = self._apply_op(self._v.float(), w.float()).norm()   # grad flows to w
                with torch.no_grad():
                    self.sigma.copy_(sigma)
                    self._eval_key = None
                return w / sigma.to(w.dtype)
            key = self._weight_key(w)
            if key is not None and key == self._eval_key:
                sigma = self.sigma                               # current: only read
            elif torch._C._functorch.peek_interpreter_stack() is None:
                self._store_sigma(w, key)                        # plain call: compute, store
                sigma = self.sigma
            else:                                                # in a transform: no writes
                sigma = torch.full((), self._bound(w, key), dtype=self.sigma.dtype,
                                   device=self.sigma.device)
            return w / sigma.to(w.dtype)

    def _bound(self, w: torch.Tensor, key: tuple | None) -> float:
        """circular_norm_bound of ``w``, reusing the one a transformed call computed for the
        same weight version."""
        if key is not None and self._pending is not None and self._pending[0] == key:
            return self._pending[1]
        bound = circular_norm_bound(self, w)
        if key is not None:
            self._pending = (key, bound)
        return bound

    def _store_sigma(self, w: torch.Tensor, key: tuple | None) -> None:
        with torch.no_grad():
            self.sigma.fill_(self._bound(w, key))
        self._eval_key, self._pending = key, None


class SNConv2d(_SpectralNorm, nn.Conv2d):
    """``nn.Conv2d`` with operator norm 1 on inputs of spatial size ``input_hw``.

    Args:
        input_hw: (H, W) of the inputs the norm is computed for (zero padding makes the norm
            depend on it; on other sizes the layer still runs, without the guarantee).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 input_hw: tuple[int, int], stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride,
                           padding=padding, bias=bias)
        self.input_hw = tuple(input_hw)
        self._init_sn((in_channels, *self.input_hw))

    def _apply_op(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, w, None, self.stride, self.padding)

    def _adjoint(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        shape = (u.shape[0], *self._v.shape[1:])
        return torch.nn.grad.conv2d_input(shape, w, u, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)


class SNLinear(_SpectralNorm, nn.Linear):
    """``nn.Linear`` with spectral norm (largest singular value) 1."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_sn((in_features,))

    def _apply_op(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return v @ w.t()

    def _adjoint(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return u @ w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class LipschitzBlock(nn.Module):
    """act((1 - a) shortcut(x) + a conv2(act(conv1(x)))) with 1-Lipschitz parts and a learned
    convex weight a = sigmoid(mix) (0.5 at init), so the block is 1-Lipschitz too."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, act: str, input_hw: int) -> None:
        super().__init__()
        out_hw = (input_hw - 1) // stride + 1
        self.conv1 = SNConv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False,
                              input_hw=(input_hw, input_hw))
        self.act1 = make_activation(act, num_channels=out_ch)
        self.conv2 = SNConv2d(out_ch, out_ch, 3, padding=1, bias=False,
                              input_hw=(out_hw, out_hw))
        self.act2 = make_activation(act, num_channels=out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = SNConv2d(in_ch, out_ch, 1, stride=stride, bias=False,
                                     input_hw=(input_hw, input_hw))
        self.mix = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.mix)
        return self.act2(torch.lerp(self.shortcut(x), self.conv2(self.act1(self.conv1(x))), a))


class LipschitzResNet(nn.Module):
    """A CIFAR ResNet whose logits are a 1-Lipschitz (l2) function of the [0, 1] input.

    Same stage layout as :class:`~models.architectures.resnet.CifarResNet` (``blocks``,
    ``widths``), without BatchNorm (its eval-time scaling is unbounded).
    """

    def __init__(self, *, blocks: Sequence[int], widths: Sequence[int], act: str,
                 num_classes: int = 10, mean: Sequence[float] = CIFAR10_MEAN,
                 image_size: int = 32, init_scale: float = 1.0) -> None:
        super().__init__()
        plan = stage_plan(blocks, widths)
        self.normalize = Normalize(mean, (1.0,) * len(mean))        # centring only: Lip 1
        hw = image_size
        self.stem = nn.Sequential(
            SNConv2d(3, widths[0], 3, padding=1, input_hw=(hw, hw), bias=False),
            make_activation(act, num_channels=widths[0]),
        )
        layers = []
        for in_ch, out_ch, stride in plan:
            layers.append(LipschitzBlock(in_ch, out_ch, stride=stride, act=act, input_hw=hw))
            hw = (hw - 1) // stride + 1
        self.layers = nn.Sequential(*layers)
        self.fc = SNLinear(widths[-1], num_classes, bias=False)
        # Near-orthogonal init: a normalised random conv keeps only a small fraction of the
        # signal (most singular values are far below the largest), so after a few layers the
        # logits would be constant. Dirac kernels (identity / channel embedding / subsampling)
        # plus small noise have all singular values close to 1.
        # The layers are scale-invariant in their raw weights, so in theory the init scale
        # sets the initial effective learning rate (lr / scale^2; the zoo uses 4). In 3-epoch
        # pilots its effect was small: weight scales 0.5 / 1 / 2 gave 33.45 / 32.9 / 32.9 %.
        g = torch.Generator().manual_seed(0)
        for m in self.modules():
            if isinstance(m, SNConv2d):
                with torch.no_grad():
                    if m.in_channels == 3:
                        nn.init.orthogonal_(m.weight)
                    else:
                        nn.init.dirac_(m.weight)
                        m.weight.add_(torch.randn(m.weight.shape, generator=g), alpha=0.01)
                    m.weight.mul_(init_scale)
            elif isinstance(m, SNLinear):
                with torch.no_grad():
                    nn.init.orthogonal_(m.weight).mul_(init_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalize(x)))
        # norm-1 pooling; ** 0.5, not math.sqrt, so that torch.fx can trace the shape
        return x.mean((2, 3)) * (x.shape[2] * x.shape[3]) ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def circular_norm_bound(layer: nn.Module, weight: torch.Tensor) -> float:
    """A rigorous, tight upper bound on the operator norm of ``layer`` with ``weight``:
    :func:`metrics.operator_norms.conv2d_norm_bound`'s circular-embedding bound on the layer's
    ``input_hw`` (always the FFT path, so evaluation divides by the same number whatever the
    layer's size); dense layers: the exact largest singular value."""
    if isinstance(layer, nn.Linear):
        return matrix_norm(weight)
    return conv2d_norm_bound(weight, input_hw=layer.input_hw, stride=layer.stride,
                             padding=layer.padding, dense_limit=0)


def lipschitz_upper_bound(model: nn.Module, *, method: str = "fft") -> float:
    """The l2 Lipschitz bound of a :class:`LipschitzResNet` (input pixels to logits): the
    product over the layer chain of the normalised layers' operator norms and the activation
    constants, each residual block contributing the convex combination of its paths' bounds.

    Args:
        method: ``"fft"``: the rigorous circular-embedding bounds of
            :func:`circular_norm_bound` (what evaluation normalises by, so each factor is 1 up
            to rounding); ``"power"``: the exact zero-padded norms, estimated from below by
            block power iteration (slow: seconds per layer).
    """
    if method not in ("power", "fft"):
        raise ValueError(f"method must be 'power' or 'fft', got {method!r}")

    def act_lip(m: nn.Module) -> float:
        if isinstance(m, DeepSpline):
            return m.lipschitz().max().item()
        if isinstance(m, nn.ReLU | nn.Identity):
            return 1.0
        raise TypeError(f"no Lipschitz constant known for {type(m).__name__}")

    def lin_lip(m: nn.Module) -> float:
        if isinstance(m, nn.Identity):
            return 1.0
        was_training = m.training
        m.eval()
        with torch.no_grad():
            w = m.normalized_weight().double()
            lip = _norm_of(m, w) if method == "power" else circular_norm_bound(m, w)
        m.train(was_training)
        return lip

    if not isinstance(model, LipschitzResNet):
        raise TypeError("lipschitz_upper_bound expects a LipschitzResNet")
    bound = 1.0 * lin_lip(model.stem[0]) * act_lip(model.stem[1])
    for block in model.layers:
        branch = lin_lip(block.conv1) * act_lip(block.act1) * lin_lip(block.conv2)
        a = torch.sigmoid(block.mix.detach().double()).item()
        bound *= ((1 - a) * lin_lip(block.shortcut) + a * branch) * act_lip(block.act2)
    return bound * lin_lip(model.fc)


def _norm_of(layer: _SpectralNorm, weight: torch.Tensor) -> float:
    """Operator norm of ``weight`` used as ``layer``'s map, power-iterated from a fresh random
    start (independent of the layer's own stored vector)."""
    v = torch.randn(layer._v.shape, generator=torch.Generator().manual_seed(1),
                    dtype=weight.dtype)
    return _power_iteration(layer, weight, v, EVAL_MAX_ITERS, EVAL_TOL, block=EVAL_BLOCK)[0]
