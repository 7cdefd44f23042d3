"""Batched image operations behind the corruptions, written to reproduce the library calls of
``make_cifar_c.py`` (scipy.ndimage, scikit-image, OpenCV, PIL, ImageMagick) on (N, C, H, W)
tensors on any device.

Border modes are spelled as in the library they imitate and mapped to index arithmetic, so the
same code serves every device:

* ``"nearest"`` (scipy) = OpenCV ``BORDER_REPLICATE``: ``a a | a b c``
* ``"mirror"`` (scipy) = OpenCV ``BORDER_REFLECT_101`` = torch ``"reflect"``: ``c b | a b c``
* ``"reflect"`` (scipy) = OpenCV ``BORDER_REFLECT``: ``b a | a b c``
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch


def border_index(idx: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map integer positions (any range) into ``[0, size)`` under a border ``mode``."""
    if mode == "nearest":
        return idx.clamp(0, size - 1)
    if mode == "mirror":
        if size == 1:
            return torch.zeros_like(idx)
        period = 2 * size - 2
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - idx, idx)
    if mode == "reflect":
        period = 2 * size
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - 1 - idx, idx)
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: torch.Tensor, before: int, after: int, dim: int, mode: str) -> torch.Tensor:
    """Pad ``x`` along ``dim`` by gathering with :func:`border_index`."""
    size = x.shape[dim]
    idx = torch.arange(-before, size + after, device=x.device)
    return x.index_select(dim, border_index(idx, size, mode))


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-channel 2-D correlation of (N, C, H, W) with an odd (kh, kw) kernel (cv2.filter2D).

    Zero border rows/columns of the kernel are dropped first (defocus's 17x17 disks have 5x5
    support), then the result is a sum of shifted slices in the input's dtype (a float64 conv2d
    is far slower on CPU). Every kernel the corruptions use is 5x5 or smaller after cropping.
    """
    kernel = kernel.to(x.device, x.dtype)
    while kernel.shape[0] > 1 and not kernel[[0, -1]].any():
        kernel = kernel[1:-1]
    while kernel.shape[1] > 1 and not kernel[:, [0, -1]].any():
        kernel = kernel[:, 1:-1]
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    xp = pad(pad(x, kh // 2, kh // 2, -2, mode), kw // 2, kw // 2, -1, mode)
    out = torch.zeros_like(x)
    for i, row in enumerate(kernel.tolist()):
        for j, k in enumerate(row):
            if k != 0:
                out.add_(xp[..., i:i + h, j:j + w], alpha=k)
    return out


@cache
def scipy_gaussian_weights(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """``scipy.ndimage.gaussian_filter1d`` weights: radius ``int(truncate*sigma + 0.5)``."""
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * t * t)
    return tuple((w / w.sum()).tolist())


@cache
def filter_matrix(size: int, weights: tuple[float, ...], mode: str) -> torch.Tensor:
    """(size, size) float64 matrix of a 1-D correlation with an odd kernel under a border
    ``mode``: row i holds the weights of the taps i - r .. i + r, folded back into the image."""
    r = len(weights) // 2
    m = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    for t, wt in enumerate(weights):
        cols = border_index(rows + t - r, size, mode)
        m.index_put_((rows, cols), torch.full((size,), float(wt), dtype=torch.float64),
                     accumulate=True)
    return m


def gaussian_filter(x: torch.Tensor, sigma: float, *, mode: str = "nearest",
                    truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian`` / ``scipy.ndimage.gaussian_filter`` over the last two dims
    (channels are not mixed), as two small matmuls with the border folded into the matrices.
    ``sigma`` of 0 returns the input, as scipy does."""
    if sigma <= 1e-15:
        return x
    weights = scipy_gaussian_weights(float(sigma), truncate)
    if len(weights) == 1:
        return x
    rows = filter_matrix(x.shape[-2], weights, mode).to(x.device, x.dtype)
    cols = filter_matrix(x.shape[-1], weights, mode).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.T)


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str
                    ) -> torch.Tensor:
    """Sample (N, C, H, W) at fractional (N, H', W') positions with bilinear weights; positions
    outside the image follow the border ``mode`` (scipy ``map_coordinates(order=1)`` and
    ``cv2.remap(INTER_LINEAR)`` semantics). Weights and output are in x's dtype."""
    n, c, h, w = x.shape
    r0 = torch.floor(rows)
    c0 = torch.floor(cols)
    fr = (rows - r0).to(x.dtype).unsqueeze(1)
    fc = (cols - c0).to(x.dtype).unsqueeze(1)
    r0 = r0.long()
    c0 = c0.long()
    ra, rb = border_index(r0, h, mode) * w, border_index(r0 + 1, h, mode) * w
    ca, cb = border_index(c0, w, mode), border_index(c0 + 1, w, mode)
    flat = x.reshape(n, c, h * w)

    def tap(ri, ci):
        idx = (ri + ci).reshape(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, idx).reshape(n, c, *rows.shape[1:])

    top = torch.lerp(tap(ra, ca), tap(ra, cb), fc)
    bottom = torch.lerp(tap(rb, ca), tap(rb, cb), fc)
    return torch.lerp(top, bottom, fr)


def legacy_reflect(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Fold coordinates as scipy < 1.6 ``map_coordinates(mode='reflect')`` did before
    interpolating (``c < 0 -> -c - 1``, ``c >= size -> 2 size - c - 1``); its taps outside
    the image were then fetched whole-sample mirrored, so pass the result to
    :func:`bilinear_sample` with ``"mirror"``. scipy 1.6 (PR #12767, Dec 2020) changed this
    to a continuous half-sample reflection; CIFAR-10-C (2019) was made with the old rule.
    Coordinates here stay within one image size of the border."""
    coord = torch.where(coord < 0, -coord - 1, coord)
    return torch.where(coord >= size, 2 * size - coord - 1, coord)


# -- colour ------------------------------------------------------------------------------------
def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``skimage.color.rgb2hsv`` on (N, 3, H, W): hue in [0, 1), ties resolved as skimage does
    (blue over green over red)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    return torch.stack((h, s, v), 1)


# For each sextant of the hue, which of (v, t, p, q) is r, g and b (skimage's np.choose table).
_SEXTANT_RGB = ((0, 3, 2, 2, 1, 0), (1, 0, 0, 3, 2, 2), (2, 2, 1, 0, 0, 3))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """``skimage.color.hsv2rgb`` on (N, 3, H, W)."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sextant = hi.long().remainder(6).unsqueeze(1)  # (N, 1, H, W)
    table = torch.tensor(_SEXTANT_RGB, device=hsv.device)  # (3, 6): channel, sextant -> source
    which = table[:, sextant.squeeze(1)].transpose(0, 1)  # (N, 3, H, W)
    return torch.stack((v, t, p, q), 1).gather(1, which)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``COLOR_RGB2GRAY`` on float images: 0.299 R + 0.587 G + 0.114 B, shape (N,1,H,W)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


# -- resampling --------------------------------------------------------------------------------
@cache
def zoom_matrix(size: int, zoom: float) -> torch.Tensor:
    """(size, size) float64 linear map of ``clipped_zoom`` along one axis: centre crop of
    ``ceil(size/zoom)``, ``scipy.ndimage.zoom(order=1)`` (corner-aligned grid) to
    ``round(crop*zoom)``, centre trim back to ``size``."""
    ch = int(np.ceil(size / zoom))
    top = (size - ch) // 2
    out = int(round(ch * zoom))
    trim = (out - size) // 2
    step = (ch - 1) / (out - 1) if out > 1 else 0.0
    a = np.zeros((size, size), dtype=np.float64)
    for j in range(size):
        t = (j + trim) * step
        i0 = int(np.floor(t))
        a[j, top + i0] += 1 - (t - i0)
        a[j, top + min(i0 + 1, ch - 1)] += t - i0
    return torch.from_numpy(a)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """``clipped_zoom`` of make_cifar_c.py over the last two (equal) dims, in x's dtype."""
    a = zoom_matrix(x.shape[-1], zoom).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(a, x), a.T)


PIL_PRECISION_BITS = 32 - 8 - 2


@cache
def pil_box_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point BOX resampling coefficients as an (out, in) integer matrix
    (``precompute_coeffs`` + ``normalize_coeffs_8bpc`` of Pillow's Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    mat = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        for x in range(xmax):
            t = (x + xmin - center + 0.5) / filterscale
            ws.append(1.0 if -0.5 <= t < 0.5 else 0.0)
        total = sum(ws)
        for x, wv in enumerate(ws):
            k = wv / total if total else 0.0
            mat[xx, xmin + x] = int(k * (1 << PIL_PRECISION_BITS) + (0.5 if k >= 0 else -0.5))
    return mat


def pil_resize_box(x_u8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``PIL.Image.resize(size, BOX)`` of uint8 (N, C, H, W): horizontal pass, rounding to
    uint8, vertical pass, exactly as Pillow's 8-bit path (float64 keeps the integer sums
    exact)."""
    h_out, w_out = size
    n, c, h, w = x_u8.shape
    x = x_u8.to(torch.float64)
    half = float(1 << (PIL_PRECISION_BITS - 1))
    scale = float(1 << PIL_PRECISION_BITS)
    if w_out != w:
        kw = torch.from_numpy(pil_box_coefficients(w, w_out)).to(x.device, torch.float64)
        x = torch.floor((x @ kw.T + half) / scale).clamp_(0, 255)
    if h_out != h:
        kh = torch.from_numpy(pil_box_coefficients(h, h_out)).to(x.device, torch.float64)
        x = torch.floor((kh @ x + half) / scale).clamp_(0, 255)
    return x.to(torch.uint8)


# -- ImageMagick motion blur -------------------------------------------------------------------
def magick_motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """MotionBlurImage's one-sided Gaussian: width ``2*ceil(radius)+1``, normalised."""
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i * i) / (2.0 * sigma * sigma))
    return k / k.sum()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor
                ) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage`` of (N, C, H, W) in 0..255 with one angle per image.

    Tap ``i`` reads the pixel at integer offset ``(ceil(i cos a - 0.5), ceil(i sin a - 0.5))``
    (x, y), edge pixels extend the image (ImageMagick's default virtual pixels), and the result
    is rounded to 8 bit as the PNG round trip of the original does. Accumulates in float32
    (the inputs are 8-bit values), one gather per tap.
    """
    n, c, h, w = x.shape
    k = magick_motion_kernel(radius, sigma)
    taps = len(k)
    a = torch.deg2rad(angle_deg.to("cpu", torch.float64)).unsqueeze(1)
    i = torch.arange(taps, dtype=torch.float64)
    ox = torch.ceil(i * torch.cos(a) - 0.5).long().to(x.device)  # (N, taps)
    oy = torch.ceil(i * torch.sin(a) - 0.5).long().to(x.device)
    p = taps  # every offset lies within [-taps, taps]
    xp = pad(pad(x.to(torch.float32), p, p, -2, "nearest"), p, p, -1, "nearest")
    wp = w + 2 * p
    flat = xp.reshape(n, c, -1)
    base = ((torch.arange(h, device=x.device) + p).view(h, 1) * wp
            + torch.arange(w, device=x.device) + p).view(1, -1)
    out = torch.zeros(n, c, h * w, dtype=torch.float32, device=x.device)
    for t in range(taps):
        idx = (base + (oy[:, t] * wp + ox[:, t]).view(n, 1)).unsqueeze(1).expand(n, c, -1)
        out.add_(flat.gather(2, idx), alpha=float(k[t]))
    return torch.floor(out.view(n, c, h, w).double() + 0.5).clamp_(0, 255)
