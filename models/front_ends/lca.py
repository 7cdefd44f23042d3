"""Convolutional sparse coding with the Locally Competitive Algorithm (LCA, Rozell et al. 2008).

For an input ``s`` (per-sample standardised image, optionally ZCA-whitened: :meth:`LCA.prepare`)
and a dictionary ``Φ`` of unit-norm conv atoms (``features`` x ``in_channels`` x ``k`` x ``k``,
applied at ``stride``), LCA looks for a sparse code ``a`` (``features`` x H/stride x W/stride)
minimising

    E(a) = 1/2 ||s - Φ * a||²  +  λ ||a||_1        (soft threshold)
    E(a) = 1/2 ||s - Φ * a||²  +  λ ||a||_0        (hard threshold; λ²/2 in some texts)

by iterating the membrane potential ``u``::

    a = T_λ(u)                       soft: relu(u - λ)   hard: u · 1[u > λ]
    u <- u + (1/τ) (b - u - G * a)   b = Φᵀ * s,  G = ΦᵀΦ - I

(``nonneg=False`` makes both thresholds sign-symmetric). Because the atoms have unit norm,
``b - G * a = Φᵀ * (s - Φ * a) + a``: one transposed conv (the reconstruction) and one conv
(the back-projection) per iteration instead of the features x features 7x7 inhibition conv on
the code grid of the textbook form (lanl/lca-pytorch) -- about 10x fewer multiply-adds for 64
atoms of 7x7 at stride 2, and the reconstruction, hence the energy trace, comes for free.
With ``padding="same"`` it is also the exact gradient of the energy at the image border, where
atoms are cut; lcapt's
inhibition conv counts the atoms' overlap outside the image as well, so the two agree exactly
only for ``padding="valid"`` (tested against lcapt).

Step size: one iteration is ISTA's proximal-gradient step relaxed by 1/τ. The energy is
non-increasing (soft threshold) when τ ≥ ||Φ||², the squared operator norm of the conv
dictionary (:meth:`LCA.operator_norm`), and ISTA converges for 1/τ < 2/||Φ||²; tests check
monotone energy on random inputs for τ ≥ ||Φ||², and that τ = 1 (ISTA with step 1) diverges for
a coherent overcomplete dictionary. For an orthonormal dictionary ``||Φ||² = 1`` and τ = 1
converges in one step to the closed-form soft-threshold solution. A conv dictionary learned on
raw images at stride 2 is coherent (smooth atoms overlap their own shifts), which inflates
||Φ||² and forces a large τ; learned on whitened images (:func:`whitening_filter`) it is far
less coherent. The bundled dictionary's measured ||Φ||² and the τ the zoo's models run with
are in the dictionary's JSON (``models/weights/lca-dictionary.json``).

Memory: without autograd, O(batch x code size) whatever the iteration count (the trace keeps
only per-sample scalars). Under autograd (attacks differentiating through the unrolled loop)
every iteration's tensors are kept, O(iterations x batch x code size); in the ``"bpda"``
gradient mode only the :attr:`LCA.bpda_steps` iterations of the backward approximation are.

Dictionary learning: :func:`models.training.learn_dictionary`.

Example::

    lca = LCA(features=16, kernel_size=7, stride=2, lambda_=0.25, tau=10.0, iterations=100)
    codes = lca(images)                              # (N, 16, 16, 16) on random unit atoms
    lca = models.zoo.dictionary_lca()                # the zoo's: learned atoms, whitening, τ
    codes = lca(images)                              # (N, 64, 16, 16), images in [0, 1]
    out = lca.encode(lca.prepare(images), trace=True)
    out.trace["energy"]                              # (iterations + 1, N)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from metrics.lipschitz import NoBound
from metrics.operator_norms import conv2d_norm_bound, dense_operator, matrix_norm

THRESHOLDS = ("soft", "hard")


def standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample zero mean and unit variance over all of C, H, W (as lcapt's preprocessing).
    The eps keeps a constant image finite (it maps to zeros)."""
    dims = tuple(range(1, x.dim()))
    x = x - x.mean(dim=dims, keepdim=True)
    return x / (x.std(dim=dims, keepdim=True) + eps)


def whitening_filter(images: torch.Tensor, *, size: int = 9, eps: float = 0.05,
                     patches_per_image: int = 8, seed: int = 0) -> torch.Tensor:
    """A translation-invariant ZCA whitening filter (C, C, size, size) for :func:`whiten`,
    estimated from ``size`` x ``size`` patches of per-sample standardised ``images`` (uint8 or
    [0, 1] floats, N x C x H x W).

    ZCA ``W = U (Λ + eps·mean(Λ))^(-1/2) Uᵀ`` of the patch covariance; the filter is W's rows of
    the patch centre (one per channel), i.e. the ZCA transform applied patch-wise. ``eps``
    (relative to the mean eigenvalue) caps the gain of the weakest (highest-frequency)
    directions. The filter is scaled so that whitened training images have unit variance, so
    λ keeps its meaning.

    Why whiten: natural images concentrate their power at low frequencies, so a dictionary
    learned on raw images is made of smooth atoms that overlap their own stride-2 shifts; that
    coherence inflates ||Φ||² and hence the τ LCA needs, and every iteration then removes only
    1/τ of a unit's error. On whitened images the learned atoms are edge-like and ||Φ||² and τ
    are several times smaller (the bundled dictionary's values: see its JSON,
    ``models/weights/lca-dictionary.json``; Olshausen & Field's sparse coding also whitens).
    The price: whitening amplifies high frequencies, pixel noise included, so classifiers on
    whitened codes lose much more accuracy under CIFAR-10-C's noise corruptions than on raw
    ones (the main job measures it; the bundled models' ``meta.notes`` say so).
    """
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    s = standardize(x)
    patches = F.unfold(s, size)                                    # N, C·k·k, L
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, patches.shape[2], (len(s), patches_per_image), generator=gen)
    idx = idx[:, None, :].expand(-1, patches.shape[1], -1)
    p = torch.gather(patches, 2, idx).transpose(1, 2).reshape(-1, patches.shape[1]).double()
    p = p - p.mean(0)
    eigval, eigvec = torch.linalg.eigh(p.T @ p / len(p))
    zca = eigvec @ torch.diag((eigval + eps * eigval.mean()).rsqrt()) @ eigvec.T
    channels = x.shape[1]
    centre = [c * size * size + size * size // 2 for c in range(channels)]
    filt = zca[centre].reshape(channels, channels, size, size).float()
    return filt / whiten(s[:2000], filt).std()


def whiten(s: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Convolve with a whitening filter from :func:`whitening_filter` (reflect-padded, same
    size)."""
    pad = filt.shape[-1] // 2
    return F.conv2d(F.pad(s, (pad,) * 4, mode="reflect"), filt.to(s.dtype))


def threshold(u: torch.Tensor, lambda_: float, kind: str = "soft", nonneg: bool = True) -> torch.Tensor:
    """The LCA transfer function T_λ(u): soft ``relu(u - λ)`` or hard ``u·1[u > λ]``;
    ``nonneg=False`` applies it to both signs (soft: sign(u)·relu(|u| - λ))."""
    if kind == "soft":
        if nonneg:
            return F.relu(u - lambda_)
        return F.relu(u - lambda_) - F.relu(-u - lambda_)
    if kind == "hard":
        if nonneg:
            return u * (u > lambda_)
        return u * (u.abs() > lambda_)
    raise ValueError(f"threshold must be one of {THRESHOLDS}, got {kind!r}")


@dataclass
class LCAOutput:
    """Result of :meth:`LCA.encode`: codes ``a = T(u)``, the final states ``u`` and, when asked,
    a per-iteration trace ``{name: (iterations + 1, N) tensor}`` with row t describing
    ``a_t = T(u_t)`` (row 0: the initial state): ``energy``, ``recon_error`` (1/2 ||s - Φa||²),
    ``sparsity_penalty`` (λ||a||_1 or λ||a||_0) and ``l0`` (fraction of active units)."""

    codes: torch.Tensor
    states: torch.Tensor
    trace: dict[str, torch.Tensor] = field(default_factory=dict)


class LCA(nn.Module):
    """A convolutional LCA sparse-coding layer with a fixed (buffer) dictionary.

    Args:
        in_channels: input channels (3 for RGB).
        features: number of dictionary atoms (code channels).
        kernel_size: atom size (odd).
        stride: code-grid stride; the code of an H x W input is ceil(H/stride) x ceil(W/stride).
        lambda_: threshold λ (the weight of the sparsity penalty).
        tau: time constant τ; each iteration moves u by 1/τ of the way (see the module notes for
            the stable range).
        iterations: iterations of a forward pass (overridable per call of :meth:`encode`).
        threshold: ``"soft"`` (ℓ1) or ``"hard"`` (ℓ0).
        nonneg: non-negative codes (lcapt's default) or sign-symmetric thresholding.
        standardize_input: per-sample zero mean / unit variance before coding (inputs in [0, 1]
            are expected otherwise).
        whitening: optional (C, C, k, k) filter from :func:`whitening_filter`, applied after
            standardisation; the coded signal ``s`` (and the energy) is then the whitened image.
        dictionary: optional initial atoms (features, in_channels, k, k); normalised to unit norm.
            Default: ``torch.randn`` (seed the global generator for reproducibility).
        padding: ``"same"`` (atoms centred on every stride-th pixel, cut at the border; the
            code of H x W is ceil(H/stride) x ceil(W/stride)) or ``"valid"`` (atoms inside the
            image only).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        features: int = 64,
        kernel_size: int = 7,
        stride: int = 2,
        lambda_: float = 0.25,
        tau: float = 10.0,
        iterations: int = 100,
        threshold: str = "soft",
        nonneg: bool = True,
        standardize_input: bool = True,
        dictionary: torch.Tensor | None = None,
        padding: str = "same",
        whitening: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        if tau <= 0 or lambda_ < 0 or iterations < 0 or stride < 1:
            raise ValueError("need tau > 0, lambda_ >= 0, iterations >= 0, stride >= 1")
        self.in_channels, self.features = in_channels, features
        self.kernel_size, self.stride = kernel_size, stride
        self.lambda_, self.tau, self.iterations = float(lambda_), float(tau), int(iterations)
        self.threshold, self.nonneg = threshold, nonneg
        self.standardize_input = standardize_input
        self.pad_mode = padding
        if dictionary is None:
            dictionary = torch.randn(features, in_channels, kernel_size, kernel_size)
        if dictionary.shape != (features, in_channels, kernel_size, kernel_size):
            raise ValueError(f"dictionary shape {tuple(dictionary.shape)} does not match "
                             f"({features}, {in_channels}, {kernel_size}, {kernel_size})")
        self.register_buffer("dictionary", normalize_atoms(dictionary.float()))
        if whitening is not None and (whitening.dim() != 4 or whitening.shape[:2] != (in_channels,) * 2
                                      or whitening.shape[2] != whitening.shape[3]
                                      or whitening.shape[2] % 2 != 1):
            raise ValueError(f"whitening filter of shape {tuple(whitening.shape)}; expected "
                             f"({in_channels}, {in_channels}, k, k) with k odd")
        self.register_buffer("whitening", None if whitening is None else whitening.float())

    # -- the linear maps ---------------------------------------------------------------------
    @property
    def padding(self) -> int:
        return self.kernel_size // 2 if self.pad_mode == "same" else 0

    def code_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(features, h, w) of the code of an input of that size."""
        k, p, st = self.kernel_size, self.padding, self.stride
        return (self.features, (height + 2 * p - k) // st + 1, (width + 2 * p - k) // st + 1)

    def drive(self, s: torch.Tensor) -> torch.Tensor:
        """b = Φᵀ * s (correlation of the input with every atom, on the code grid)."""
        return F.conv2d(s, self.dictionary.to(s.dtype), stride=self.stride, padding=self.padding)

    def reconstruct(self, a: torch.Tensor, size: tuple[int, int],
                    dictionary: torch.Tensor | None = None) -> torch.Tensor:
        """Φ * a, the input the code explains, cropped to ``size`` = (H, W); the adjoint of
        :meth:`drive`. ``dictionary`` replaces Φ (dictionary learning differentiates it)."""
        k, st, p = self.kernel_size, self.stride, self.padding
        out_pad = [size[i] - ((a.shape[2 + i] - 1) * st - 2 * p + k) for i in range(2)]
        if not all(0 <= o < st for o in out_pad):
            raise ValueError(f"code of shape {tuple(a.shape[2:])} does not fit input size {size}")
        phi = self.dictionary if dictionary is None else dictionary
        return F.conv_transpose2d(a, phi.to(a.dtype), stride=st, padding=p,
                                  output_padding=tuple(out_pad))

    def transfer(self, u: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        return threshold(u, self.lambda_, kind or self.threshold, self.nonneg)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The signal s that is coded: ``x`` standardised per sample and whitened, as configured."""
        s = standardize(x) if self.standardize_input else x
        return s if self.whitening is None else whiten(s, self.whitening)

    @torch.no_grad()
    def operator_norm(self, size: tuple[int, int] = (32, 32), iters: int = 200) -> float:
        """||Φ||² (largest eigenvalue of ΦᵀΦ on inputs of ``size``) by power iteration: the
        smallest τ for which the iteration is guaranteed stable."""
        gen = torch.Generator().manual_seed(0)
        v = torch.randn(1, self.features, *self.code_shape(*size)[1:], generator=gen)
        v = v.to(self.dictionary)
        lam = 0.0
        for _ in range(iters):
            w = self.drive(self.reconstruct(v, size))
            lam = w.norm().item()
            v = w / lam
        return lam

    # -- energy and iterations ---------------------------------------------------------------
    def energy_terms(self, s: torch.Tensor, a: torch.Tensor, recon: torch.Tensor | None = None,
                     kind: str | None = None) -> dict[str, torch.Tensor]:
        """Per-sample ``recon_error`` 1/2||s - Φa||², ``sparsity_penalty``, ``energy``, ``l0``."""
        if recon is None:
            recon = self.reconstruct(a, s.shape[-2:])
        err = 0.5 * (s - recon).float().square().flatten(1).sum(1)
        active = (a != 0).flatten(1)
        if (kind or self.threshold) == "soft":
            pen = self.lambda_ * a.float().abs().flatten(1).sum(1)
        else:
            pen = self.lambda_ * active.sum(1).float()
        return {"energy": err + pen, "recon_error": err, "sparsity_penalty": pen,
                "l0": active.float().mean(1)}

    def energy(self, s: torch.Tensor, a: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """E(a) per sample for the standardised signal ``s`` (see the module docstring)."""
        return self.energy_terms(s, a, kind=kind)["energy"]

    def encode(
        self,
        s: torch.Tensor,
        states: torch.Tensor | None = None,
        *,
        iterations: int | None = None,
        threshold: str | None = None,
        trace: bool = False,
    ) -> LCAOutput:
        """Run LCA on the (already prepared) signal ``s`` from ``states`` (default zeros).

        Args:
            s: (N, C, H, W) signal, e.g. ``self.prepare(images)``.
            states: initial membrane potentials u(0), shape (N, features, h, w).
            iterations: default ``self.iterations``; 0 returns T(u(0)).
            threshold: override ``self.threshold`` for this call.
            trace: record the energy terms of a_t for t = 0..iterations.
        """
        iterations = self.iterations if iterations is None else int(iterations)
        kind = threshold or self.threshold
        size = s.shape[-2:]
        shape = (s.shape[0], *self.code_shape(*size))
        u = s.new_zeros(shape) if states is None else states.to(s.dtype)
        if u.shape != shape:
            raise ValueError(f"initial states of shape {tuple(u.shape)}; expected {shape}")
        eta = 1.0 / self.tau
        # Preallocated: thousands of small per-iteration tensors interleaved with the large
        # ones fragment the heap (glibc) -- 1,000 traced iterations grew the process to 24 GB.
        rows = {key: s.new_empty(iterations + 1, s.shape[0], dtype=torch.float32)
                for key in ("energy", "recon_error", "sparsity_penalty", "l0")} if trace else {}
        for t in range(iterations + 1):
            a = self.transfer(u, kind)
            if t == iterations and not trace:
                break
            recon = self.reconstruct(a, size)
            if trace:
                for key, val in self.energy_terms(s, a, recon, kind).items():
                    rows[key][t] = val.detach()
            if t == iterations:
                break
            # u <- u + η (b - u - G a) with b - G a = Φᵀ(s - Φa) + a
            u = u + eta * (self.drive(s - recon) + a - u)
        return LCAOutput(codes=a, states=u, trace=rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of images ``x`` after ``self.iterations`` iterations from zero."""
        return self.codes(self.prepare(x), lambda s: None, mode=self.gradient_mode)

    # Backward passes an attack can choose (attacks.gradients): autograd through every
    # unrolled iteration, or BPDA. The codes (forward values) are the same in both.
    gradient_modes = ("unrolled", "bpda")
    gradient_mode = "unrolled"
    # BPDA's approximation: K LCA iterations from the detached converged state with the input
    # attached. They truncate the implicit-function gradient (I + G D)^-1 at the fixed point
    # u* = b(s) - G T(u*), a Neumann series (tests: K -> infinity matches a dense solve). On the
    # bundled dictionary it converges slowly (nearly dependent active atoms): the gradient still
    # changes after hundreds of steps, so K is chosen by attack strength, not convergence.
    # Measured (PGD, 10 steps, Linf eps 0.25/255 and 0.5/255, bundled sample; robust accuracy,
    # lower = stronger): lca-resnet8 (96 images) K = 1 / 5 / 10 / 20 / 50: .49/.19, .33/.10,
    # .26/.08, .23/.05, .22/.04 (unrolled .20/.02); warp-lca-resnet8 (160 images): .48/.23,
    # .41/.16, .39/.14, .38/.14, .41/.18 (unrolled .34/.11). K = 20 is best or near-best on both
    # and costs as much as WARP-LCA's own 20 iterations (a fifth of cold LCA's 100).
    bpda_steps = 20

    def codes(self, s: torch.Tensor, start, *, iterations: int | None = None,
              mode: str = "unrolled") -> torch.Tensor:
        """Codes of the prepared signal ``s`` from the initial state ``start(s)`` (None: zeros).

        ``mode="unrolled"``: autograd through every iteration. ``mode="bpda"`` (only matters
        when ``s`` carries a gradient): the codes are computed without autograd and returned
        with the gradient of :attr:`bpda_steps` iterations restarted from the detached final
        state (Athalye et al. 2018's BPDA, as a straight-through estimator: the value is
        exactly the unrolled codes).
        """
        if mode == "bpda" and torch.is_grad_enabled() and s.requires_grad:
            with torch.no_grad():
                out = self.encode(s, start(s), iterations=iterations)
            approx = self.encode(s, out.states, iterations=self.bpda_steps).codes
            return out.codes + (approx - approx.detach())
        if mode not in self.gradient_modes:
            raise ValueError(f"gradient mode must be one of {self.gradient_modes}, got {mode!r}")
        return self.encode(s, start(s), iterations=iterations).codes

    # Where it counts: metrics.sparsity hooks the codes, metrics.lipschitz asks for the bound;
    # the derivative of the forward is the unrolled backward (attacks.gradients.use_derivative).
    sparsity_site = "codes"
    derivative_mode = "unrolled"

    def signal_bound(self, x: torch.Tensor) -> float:
        """l2 Lipschitz bound of ``prepare`` (images -> coded signal s) on inputs shaped like
        ``x``: per-sample standardisation c / (std(c) + eps) has Jacobian norm at most
        1 / (a ||c|| + eps) <= 1 / eps (a = 1 / sqrt(n - 1); reached by near-constant images),
        times the whitening filter's exact norm (dense SVD of the reflect-padded conv)."""
        bound = 1.0 / 1e-6 if self.standardize_input else 1.0
        if self.whitening is not None:
            filt = self.whitening.detach().double().cpu()
            bound *= _whitening_norm(filt.numpy().tobytes(), tuple(filt.shape),
                                     tuple(x.shape[1:]))
        return bound

    def iteration_bound(self, size: tuple[int, int], *, signal: float, start: float,
                        iterations: int) -> float:
        """l2 Lipschitz bound of the codes after ``iterations`` steps, given bounds on the
        signal s (``signal``) and on the initial state u(0) (``start``, 0 from zeros).

        One step is u <- (1 - η) u + η (Φᵀ s + a - ΦᵀΦ a), a = T(u): η ||Φ|| in s, and in u
        its Jacobian (a.e.; T's slope D is 0 or 1 per unit for the soft threshold) is
        block-triangular over the active (A) and inactive (I) units: [[I - η G_AA, 0],
        [-η G_IA, (1 - η) I]] with G = ΦᵀΦ. The first block column, E_A - η ΦᵀΦ_A, has norm
        <= 1 when η ||Φ||² <= 2 (||x||² - η (2 - η ||Φ||²) ||Φ_A x||²), so the Jacobian's norm is
        at most ρ = sqrt(1 + (1 - η)²) (Cauchy-Schwarz); always valid is the cruder
        |1 - η| + η max(1, ||Φ||² - 1) (the norm of I - ΦᵀΦ). With the smaller ρ,
        L(t+1) = ρ L(t) + η ||Φ|| L_s. ||Φ|| is the circular-embedding upper bound of the strided
        drive convolution. The bound grows like ρ^t: on the bundled dictionary it is vacuous
        after 100 iterations. A hard threshold is discontinuous: no bound."""
        if self.threshold != "soft":
            raise NoBound(f"LCA with a {self.threshold} threshold is discontinuous in its input")
        phi = self.dictionary_norm(size)
        eta = 1.0 / self.tau
        rho = abs(1 - eta) + eta * max(1.0, phi * phi - 1.0)
        if 0 < eta <= 1 and eta * phi * phi <= 2:
            rho = min(rho, (1 + (1 - eta) ** 2) ** 0.5)
        bound = start
        for _ in range(iterations):
            bound = rho * bound + eta * phi * signal
        return bound

    def dictionary_norm(self, size: tuple[int, int]) -> float:
        """A rigorous upper bound on ||Φ|| (the drive convolution's operator norm) on inputs of
        ``size`` (:func:`metrics.operator_norms.conv2d_norm_bound`)."""
        return conv2d_norm_bound(self.dictionary, input_hw=size, stride=self.stride,
                                 padding=self.padding)

    def certified_lipschitz(self, x: torch.Tensor) -> float:
        """Certified l2 Lipschitz bound of images -> codes (``metrics.lipschitz`` protocol),
        for the unrolled iterations from zero: see :meth:`signal_bound` and
        :meth:`iteration_bound`. Per-sample standardisation makes it vast (1 / eps): the
        map is not Lipschitz-controlled near constant images."""
        return self.iteration_bound(tuple(x.shape[-2:]), signal=self.signal_bound(x), start=0.0,
                                    iterations=self.iterations)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.features}, kernel={self.kernel_size}, "
                f"stride={self.stride}, lambda_={self.lambda_}, tau={self.tau}, "
                f"iterations={self.iterations}, threshold={self.threshold}, nonneg={self.nonneg}, "
                f"whitened={self.whitening is not None}")


@functools.lru_cache(maxsize=8)
def _whitening_norm(filt_bytes: bytes, filt_shape: tuple, input_shape: tuple) -> float:
    """Exact l2 norm of the reflect-padded whitening convolution on ``input_shape`` (dense
    SVD; ~8 s for 3 x 32 x 32 on 2 cores, so cached per filter: LCA and WARP-LCA share one)."""
    filt = torch.frombuffer(bytearray(filt_bytes), dtype=torch.float64).reshape(filt_shape)
    return matrix_norm(dense_operator(lambda v: whiten(v, filt), input_shape))


def normalize_atoms(phi: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Every atom (first dimension) scaled to unit l2 norm."""
    return phi / phi.flatten(1).norm(dim=1).clamp_min(eps).view(-1, *([1] * (phi.dim() - 1)))
