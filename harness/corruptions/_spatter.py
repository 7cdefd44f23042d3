"""The OpenCV chain of spatter's water branch, batched in torch.

``make_cifar_c.py`` turns the thresholded liquid layer into an embossed water mask with
``cv2.Canny(., 50, 150)``, ``cv2.distanceTransform(., DIST_L2, 5)`` truncated at 20, a 3x3 box
blur, ``cv2.equalizeHist``, an emboss ``filter2D`` and another box blur. Each step is
re-implemented here from OpenCV's definition (Sobel 3x3 with replicated border and L1 magnitude,
non-maximum suppression with OpenCV's 22.5 degree sectors and tie rules (``>`` before, ``>=``
after along the axes, ``>`` on both sides diagonally), 8-connected hysteresis;
the 5x5 chamfer distance with OpenCV's fixed-point weights 1, 1.4, 2.1969; OpenCV's histogram
equalisation LUT). Canny is checked against cv2.Canny, and the whole corruption against the
per-image reference given the same variates (tests/test_corruption_fidelity.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.corruptions import _ops as ops

_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
_SHIFT = 16
_HV, _DIAG, _LONG = 1 << _SHIFT, round(1.4 * (1 << _SHIFT)), round(2.1969 * (1 << _SHIFT))


def _shift(x: torch.Tensor, dy: int, dx: int, fill: float = 0) -> torch.Tensor:
    """out[y, x] = x[y + dy, x + dx], ``fill`` outside."""
    h, w = x.shape[-2:]
    p = F.pad(x, (2, 2, 2, 2), value=fill)
    return p[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w]


def canny(img: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """cv2.Canny(img, low, high) (aperture 3, L1 gradient) of (N, 1, H, W) int64 -> bool."""
    x = img.to(torch.float64)
    sob_x = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64, device=x.device)
    dx = ops.correlate2d(x, sob_x, "nearest").long()
    dy = ops.correlate2d(x, sob_x.T.contiguous(), "nearest").long()
    mag = dx.abs() + dy.abs()
    ax = dx.abs()
    ay = dy.abs() << 15
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    s = torch.where((dx ^ dy) < 0, -1, 1)
    magf = mag.double()
    left, right = _shift(magf, 0, -1), _shift(magf, 0, 1)
    up, down = _shift(magf, -1, 0), _shift(magf, 1, 0)
    up_left, down_right = _shift(magf, -1, -1), _shift(magf, 1, 1)
    up_right, down_left = _shift(magf, -1, 1), _shift(magf, 1, -1)
    diag_before = torch.where(s > 0, up_left, up_right)
    diag_after = torch.where(s > 0, down_right, down_left)
    keep = (
        (horizontal & (magf > left) & (magf >= right))
        | (vertical & (magf > up) & (magf >= down))
        | (diagonal & (magf > diag_before) & (magf > diag_after))  # OpenCV: strict both sides
    )
    weak = keep & (mag > low)
    edges = weak & (mag > high)
    while True:
        grown = weak & (F.max_pool2d(edges.double(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def chamfer_distance(zero: torch.Tensor) -> torch.Tensor:
    """cv2.distanceTransform(DIST_L2, 5): distance of each pixel to the nearest pixel where
    ``zero`` is True, through 5x5 chamfer moves inside the image; float (pixels)."""
    big = torch.iinfo(torch.int64).max // 4
    d = torch.where(zero, 0, big)
    moves = [(dy, dx, _HV) for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    moves += [(dy, dx, _DIAG) for dy in (-1, 1) for dx in (-1, 1)]
    moves += [(dy, dx, _LONG) for dy, dx in ((1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1),
                                              (-1, -2), (-2, -1))]
    while True:
        new = d
        for dy, dx, cost in moves:
            new = torch.minimum(new, _shift(d, dy, dx, fill=big) + cost)
        if torch.equal(new, d):
            return d.double() / (1 << _SHIFT)
        d = new


def box3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)) (reflect-101 border) before any 8-bit rounding."""
    k = torch.full((3, 3), 1 / 9, dtype=torch.float64, device=x.device)
    return ops.correlate2d(x, k, "mirror")


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist of (N, 1, H, W) integer images in 0..255."""
    n = img.shape[0]
    flat = img.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.int64, device=img.device).scatter_add_(
        1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    scale = (255.0 / (total - first_count).clamp(min=1).float())  # float32 as OpenCV
    cum = hist.cumsum(1)
    lut = torch.round((cum - first_count).float() * scale).clamp(0, 255).long()
    bins = torch.arange(256, device=img.device).expand(n, 256)
    lut = torch.where(bins <= first, 0, lut)
    out = lut.gather(1, flat).reshape(img.shape)
    constant = (first_count == total).view(n, 1, 1, 1)
    return torch.where(constant, first.view(n, 1, 1, 1).expand_as(out), out)


_EMBOSS = torch.tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=torch.float64)


def water_mask(liquid: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) thresholded liquid layer -> the normalised water mask in [0, 1]."""
    liquid_u8 = (liquid * 255).long().remainder(256)  # np.uint8 cast of the original
    edges = canny(liquid_u8, 50, 150)
    dist = chamfer_distance(edges).clamp(max=20).to(torch.float32).double()
    dist = box3(dist).to(torch.float32).long()  # .astype(np.uint8) truncates
    dist = equalize_hist(dist).double()
    dist = torch.round(ops.correlate2d(dist, _EMBOSS.to(dist.device), "mirror")).clamp(0, 255)
    dist = torch.round(box3(dist)).clamp(0, 255)
    m = liquid_u8.double() * dist
    peak = m.amax((2, 3), keepdim=True)
    return m / peak.clamp(min=1e-12)
