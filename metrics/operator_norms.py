"""Operator norms (l2 -> l2) of the linear maps inside classifiers, as rigorous upper bounds or
exact values.

* :func:`conv2d_norm_bound`: a zero-padded, strided, dilated, grouped 2-D convolution on inputs
  of a given size. Exact when the unrolled matrix is small (dense SVD, ``dense_limit``);
  otherwise the circular-embedding bound: the zero-padded operator is a restriction of a
  strided circular convolution on an n x n grid (n >= H + p, divisible by the stride: embed the
  input with zeros, keep the outputs that never wrap), so its norm is at most the circular one,
  which the 2-D DFT block-diagonalises (Sedghi et al. 2019; strided: the s^2 aliasing fine
  frequencies of each coarse frequency form one block). The bound exceeds the exact norm by
  about C / (H + 1)^2 (measured in tests/test_lipschitz.py).
* :func:`matrix_norm`: the largest singular value of a dense matrix.
* :func:`pool_norm`: average pooling (exact, from the separable 1-D averaging matrices).
* :func:`dense_operator`: the unrolled matrix of any linear map on a given input shape (tests
  and small exact norms).

Everything is computed in float64 on the weight's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Unrolled convolutions with at most this many input x output entries get an exact dense SVD
# (a 3 x 32 x 32 -> 16 x 32 x 32 stem is 5e7 entries: about 2 s on 2 cores).
DENSE_LIMIT = 2_000_000


def matrix_norm(w: torch.Tensor) -> float:
    """Largest singular value of a 2-D matrix (float64)."""
    return torch.linalg.matrix_norm(w.detach().double(), ord=2).item()


def dense_operator(fn: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int], *,
                   dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The matrix (outputs x inputs) of the linear map ``fn`` on inputs of ``input_shape``
    (without the batch dimension), built by applying ``fn`` to the identity basis."""
    n = math.prod(input_shape)
    eye = torch.eye(n, dtype=dtype, device=device).reshape(n, *input_shape)
    return fn(eye).reshape(n, -1).t()


def _pairs(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d_norm_bound(weight: torch.Tensor, *, input_hw: Sequence[int], stride=1, padding=0,
                      dilation=1, groups: int = 1, dense_limit: int = DENSE_LIMIT) -> float:
    """Rigorous upper bound on the l2 operator norm of ``conv2d(x, weight, stride, padding,
    dilation, groups)`` on inputs of spatial size ``input_hw`` (zero padding; the bias does
    not change a Lipschitz constant). Exact (dense SVD) when the unrolled matrix has at most
    ``dense_limit`` entries."""
    w = weight.detach().double()
    (sh, sw), (dh, dw) = _pairs(stride), _pairs(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":          # stride 1 only (torch's rule): pad k_eff // 2 around
            padding = ((dh * (w.shape[2] - 1)) // 2, (dw * (w.shape[3] - 1)) // 2)
            if (dh * (w.shape[2] - 1)) % 2 or (dw * (w.shape[3] - 1)) % 2:
                raise ValueError("asymmetric 'same' padding is not supported")
        else:
            raise ValueError(f"unknown padding {padding!r}")
    ph, pw = _pairs(padding)
    h, wd = (int(v) for v in input_hw)
    in_ch = w.shape[1] * groups
    out_h = (h + 2 * ph - dh * (w.shape[2] - 1) - 1) // sh + 1
    out_w = (wd + 2 * pw - dw * (w.shape[3] - 1) - 1) // sw + 1
    if in_ch * h * wd * w.shape[0] * out_h * out_w <= dense_limit:
        mat = dense_operator(lambda v: F.conv2d(v, w, None, (sh, sw), (ph, pw), (dh, dw), groups),
                             (in_ch, h, wd), device=w.device)
        return matrix_norm(mat)
    if groups > 1:                        # block diagonal over groups: the largest block
        per = w.shape[0] // groups
        return max(conv2d_norm_bound(w[g * per:(g + 1) * per], input_hw=input_hw,
                                     stride=stride, padding=(ph, pw), dilation=dilation,
                                     dense_limit=0) for g in range(groups))
    if dh > 1 or dw > 1:                  # the dilated kernel with its holes made explicit
        kh, kw = dh * (w.shape[2] - 1) + 1, dw * (w.shape[3] - 1) + 1
        full = w.new_zeros(*w.shape[:2], kh, kw)
        full[:, :, ::dh, ::dw] = w
        w = full
    out_ch, in_c, kh, kw = w.shape
    n = []
    for size, pad, s, k in ((h, ph, sh, kh), (wd, pw, sw, kw)):
        m = max(size + pad, k)
        n.append(-(-m // s) * s)                                  # round up to a multiple
    spec = torch.fft.fft2(w, s=tuple(n))                          # (out, in, nh, nw)
    spec = spec.reshape(out_ch, in_c, sh, n[0] // sh, sw, n[1] // sw)
    # aliases of coarse frequency (a, b) are (a + i n/s, b + j n/s): bring (i, j) next to in
    blocks = spec.permute(3, 5, 0, 1, 2, 4).reshape(-1, out_ch, in_c * sh * sw)
    # largest singular value = sqrt(largest eigenvalue of the smaller Gram matrix): a Hermitian
    # eigenvalue problem is several times cheaper than an SVD for wide layers
    gram = blocks @ blocks.mH if out_ch <= in_c * sh * sw else blocks.mH @ blocks
    top = torch.linalg.eigvalsh(gram)[:, -1].max().clamp_min(0)
    return (top.sqrt() / math.sqrt(sh * sw)).item()


def pool_norm(kind: str, input_hw: Sequence[int], *, kernel_size=None, stride=None, padding=0,
              ceil_mode: bool = False, count_include_pad: bool = True, output_size=None,
              dilation=1) -> float:
    """l2 operator norm of 2-D pooling on ``input_hw`` (per channel; channels do not mix).

    ``"avg"``/``"adaptive_avg"``: exact, as the product of the norms of the two separable 1-D
    averaging matrices. ``"max"``: the bound sqrt(c), c the largest number of windows that
    share an input pixel (|max a - max b| <= max |a - b|, summed over windows)."""
    h, w = (int(v) for v in input_hw)
    if kind == "adaptive_avg":
        oh, ow = _pairs(output_size)
        oh, ow = oh or h, ow or w
        mats = [dense_operator(lambda v, o=o: F.adaptive_avg_pool1d(v[:, None], o)[:, 0], (n,))
                for n, o in ((h, oh), (w, ow))]
        return matrix_norm(mats[0]) * matrix_norm(mats[1])
    (kh, kw) = _pairs(kernel_size)
    (sh, sw) = _pairs(stride if stride is not None else kernel_size)
    (ph, pw) = _pairs(padding)
    if kind == "avg":
        mats = [dense_operator(lambda v, k=k, s=s, p=p: F.avg_pool1d(
            v[:, None], k, s, p, ceil_mode, count_include_pad)[:, 0], (n,))
            for n, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw))]
        return matrix_norm(mats[0]) * matrix_norm(mats[1])
    if kind == "max":
        (dh, dw) = _pairs(dilation)
        counts = 1.0
        for n, k, s, p, d in ((h, kh, sh, ph, dh), (w, kw, sw, pw, dw)):
            # windows per position in 1-D: pool an indicator of each position with a sum
            x = torch.eye(n, dtype=torch.float64)[:, None]
            hit = F.max_pool1d(F.pad(x, (p, p), value=0.0), k, s, 0, d, ceil_mode)[:, 0]
            counts *= hit.sum(1).max().item()
        return math.sqrt(counts)
    raise ValueError(f"unknown pooling {kind!r}")
