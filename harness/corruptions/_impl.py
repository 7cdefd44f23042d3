"""The 19 CIFAR-10-C corruptions as batched torch functions with the CIFAR parameters of
hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``.

Each function takes uint8 images (N, 3, 32, 32) on any device, the severity's parameters and an
:class:`ExampleRNG`, and returns uint8 images quantised as the release was: clip to [0, 1],
multiply by 255 and truncate (``np.uint8``), except where the original's last step is an 8-bit
image library (PIL for jpeg/pixelate, ImageMagick for motion_blur), which rounds.

Arithmetic is float64, as the original's ``x / 255.``, except where the original works on
float32 images (zoom_blur, snow, spatter, elastic_transform), which stay in float32 or are
rounded to it at the same points.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch

from harness.corruptions import _ops as ops
from harness.corruptions._rng import ExampleRNG
from harness.corruptions._spatter import water_mask

F64 = torch.float64


def to_unit(x_u8: torch.Tensor, dtype=F64) -> torch.Tensor:
    return x_u8.to(dtype) / 255.0


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 as the release: clip, x255, truncate."""
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def _dev(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.device, like.dtype)


# -- noise -------------------------------------------------------------------------------------
def gaussian_noise(x_u8, c, rng: ExampleRNG):
    x = to_unit(x_u8)
    return quantize(x + _dev(rng.normal(*x.shape[1:], scale=c), x))


def shot_noise(x_u8, c, rng: ExampleRNG):
    x = to_unit(x_u8)
    return quantize(_dev(rng.poisson(x * c), x) / c)


def impulse_noise(x_u8, c, rng: ExampleRNG):
    """skimage ``random_noise(mode='s&p', amount=c)``: each value is flipped with probability
    c, to 1 or 0 with equal odds."""
    x = to_unit(x_u8)
    # One uniform u per value: flipped when u < c, and then u / c is uniform on [0, 1), so
    # u < c / 2 is the independent fair salt-or-pepper coin.
    u = _dev(rng.uniform(*x.shape[1:]), x)
    flipped = u < c
    salted = u < c / 2
    x = torch.where(flipped & salted, torch.ones_like(x), x)
    x = torch.where(flipped & ~salted, torch.zeros_like(x), x)
    return quantize(x)


def speckle_noise(x_u8, c, rng: ExampleRNG):
    x = to_unit(x_u8)
    return quantize(x + x * _dev(rng.normal(*x.shape[1:], scale=c), x))


# -- blur --------------------------------------------------------------------------------------
def gaussian_blur(x_u8, c, rng=None):
    return quantize(ops.gaussian_filter(to_unit(x_u8), c, mode="nearest"))


def glass_blur(x_u8, c, rng: ExampleRNG):
    """Gaussian blur, local pixel moves, Gaussian blur.

    The original's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views copies rather than
    swaps, and because the scan runs from (31, 31) down while sources lie up/left, every copy
    reads a pixel the scan has not reached yet: one iteration is the parallel gather
    ``x[h, w] <- x[h + dy, w + dx]`` for h, w in 2..31, with dx, dy uniform in {-1, 0}.
    """
    sigma, delta, iters = c
    n, _, hgt, wid = x_u8.shape
    x = ops.gaussian_filter(to_unit(x_u8), sigma, mode="nearest")
    x = (x * 255).to(torch.uint8)
    lo, hi = delta + 1, hgt - delta + 1  # range(32 - delta, delta, -1): delta+1 .. 32-delta
    span = hi - lo
    # Draw order of the original: for each iteration, for h, w descending: (dx, dy).
    offs = rng.integers(-delta, delta, iters, span, span, 2).to(x.device)
    offs = offs.flip(2, 3)  # index [i, h - lo, w - lo] in ascending order
    rows = torch.arange(hgt, device=x.device).view(1, hgt, 1).expand(n, hgt, wid)
    cols = torch.arange(wid, device=x.device).view(1, 1, wid).expand(n, hgt, wid)
    for i in range(iters):
        src_r = rows.clone()
        src_c = cols.clone()
        src_r[:, lo:hi, lo:hi] += offs[:, i, :, :, 1]
        src_c[:, lo:hi, lo:hi] += offs[:, i, :, :, 0]
        idx = (src_r * wid + src_c).reshape(n, 1, -1).expand(n, 3, -1)
        x = x.reshape(n, 3, -1).gather(2, idx).reshape(n, 3, hgt, wid)
    return quantize(ops.gaussian_filter(to_unit(x), sigma, mode="nearest"))


def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """``disk()``: normalised aliased disk on the -8..8 grid, smoothed by a 3x3 Gaussian
    (cv2.GaussianBlur, reflect-101 border), float32 as the original."""
    size = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(size, size)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    t = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    # cv2.GaussianBlur of a float32 image: float32 taps, float32 arithmetic. (Summing in float64
    # instead leaves s1's kernel 1.4e-8 short of 1, so flat regions truncate one level lower.)
    blur = ops.filter_matrix(disk.shape[0], tuple(g.astype(np.float32).tolist()), "mirror")
    blur = blur.to(torch.float32)
    return blur @ torch.from_numpy(disk) @ blur.T


def defocus_blur(x_u8, c, rng=None):
    kernel = _disk_kernel(*c).to(x_u8.device)
    return quantize(ops.correlate2d(to_unit(x_u8), kernel, "mirror"))


def motion_blur(x_u8, c, rng: ExampleRNG):
    radius, sigma = c
    angle = rng.uniform(low=-45.0, high=45.0).to(x_u8.device)
    return ops.motion_blur(x_u8.to(F64), radius, sigma, angle).to(torch.uint8)


def _zoom_factors(severity_stop: float) -> list[float]:
    return [float(z) for z in np.arange(1, severity_stop, 0.01)]


def zoom_blur(x_u8, c, rng=None):
    x = to_unit(x_u8, torch.float32)
    out = torch.zeros_like(x)
    zooms = _zoom_factors(c)
    for z in zooms:
        # scipy interpolates in float64 and returns float32; float32 products differ from
        # that by ~1e-7, far below the 1/255 quantisation step.
        out += ops.clipped_zoom(x, z)
    x = (x + out) / (len(zooms) + 1)
    return quantize(x)


# -- weather -----------------------------------------------------------------------------------
def snow(x_u8, c, rng: ExampleRNG):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x_u8.shape
    x = to_unit(x_u8, torch.float32)
    layer = rng.normal(h, w, loc=loc, scale=scale).to(x.device).unsqueeze(1)  # (N,1,H,W) f64
    layer = ops.clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = (layer.clamp(0, 1) * 255).to(torch.uint8).to(F64)
    angle = rng.uniform(low=-135.0, high=-45.0).to(x.device)
    layer = (ops.motion_blur(layer, radius, sigma, angle) / 255.0).to(torch.float32)
    gray = ops.rgb_to_gray(x)
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return quantize(x + layer + layer.flip(-1, -2))


# Frost photographs are not redistributable, so frost blends a seeded Gaussian random field
# with the statistics of the photograph make_cifar_c.py would have drawn (frost1..5 uniformly,
# downscaled x0.2, random 32x32 crop), measured by scripts/measure_frost.py: mean RGB, std of
# crop means, per-channel gain on the grey level, and the radially averaged power spectrum of
# the grey level at DFT radii 1..22 (beyond: the last value). A Gaussian field has random
# phases, and phase structure matters to a CNN: blending phase-randomised real crops (each
# crop's own spectrum kept) already costs the bundled ResNet-8 1.9 pp on average and 4.3 pp at
# severity 5 against the real crops (measured 2026-11-29); this texture costs 3.1 pp / 6.0 pp.
FROST_STYLES = (  # (mean RGB, std of crop means, RGB gain on grey, grey power spectrum)
    (  # frost1.png
        (77.5, 149, 165.7), 10.7, (1.361, 0.899, 0.74),
        (8515, 1701, 799, 315, 220, 176, 140, 123, 107, 114, 109, 104, 98, 99, 103, 97, 92, 90, 91,
         76, 87, 98),
    ),
    (  # frost2.png
        (200.8, 205.4, 214.5), 8.7, (0.975, 0.997, 1.029),
        (6944, 1950, 786, 662, 494, 361, 384, 305, 281, 292, 254, 270, 224, 205, 188, 198, 175, 159,
         156, 181, 161, 177),
    ),
    (  # frost3.png (= frost2)
        (200.8, 205.4, 214.5), 8.7, (0.975, 0.997, 1.029),
        (6944, 1950, 786, 662, 494, 361, 384, 305, 281, 292, 254, 270, 224, 205, 188, 198, 175, 159,
         156, 181, 161, 177),
    ),
    (  # frost4.jpg
        (138, 153.2, 165.6), 10.4, (0.986, 0.989, 1.025),
        (8963, 2529, 1344, 1025, 772, 679, 790, 691, 600, 695, 544, 558, 518, 535, 524, 528, 451,
         476, 466, 486, 422, 428),
    ),
    (  # frost5.jpg
        (112.3, 123.3, 134.7), 15.6, (1.015, 1.003, 0.982),
        (16072, 7335, 4802, 2954, 2264, 1830, 1432, 1100, 1000, 975, 920, 874, 824, 728, 737, 709,
         673, 719, 672, 634, 637, 493),
    ),
)


@cache
def _frost_amplitudes(size: int) -> torch.Tensor:
    """(styles, size, size) DFT amplitudes sqrt(P(radius)) of each style's grey level."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.round(np.sqrt(fx**2 + fy**2) * size).astype(int)
    out = []
    for *_, spectrum in FROST_STYLES:
        table = np.array((0.0, *spectrum))
        power = table[np.minimum(radius, len(table) - 1)] * (size * size / 1024)
        out.append(np.sqrt(power))
    return torch.from_numpy(np.stack(out))


def frost_texture(rng: ExampleRNG, h: int, w: int) -> torch.Tensor:
    """(N, 3, H, W) float64 textures in 0..255: per example a style, a crop-level offset and a
    random field with the style's power spectrum (white noise shaped in the Fourier domain)."""
    style = rng.integers(0, len(FROST_STYLES))
    offset = rng.normal()
    noise = rng.normal(h, w)
    amp = _frost_amplitudes(h)[style]
    grey = torch.fft.ifft2(torch.fft.fft2(noise) * amp).real  # zero mean, the style's spectrum
    mean = torch.tensor([s[0] for s in FROST_STYLES], dtype=F64)[style]  # (N, 3)
    between = torch.tensor([s[1] for s in FROST_STYLES], dtype=F64)[style]
    gain = torch.tensor([s[2] for s in FROST_STYLES], dtype=F64)[style]
    level = mean + (between * offset).unsqueeze(1)  # (N, 3)
    out = level.view(-1, 3, 1, 1) + gain.view(-1, 3, 1, 1) * grey.unsqueeze(1)
    return out.clamp(0, 255)


def frost(x_u8, c, rng: ExampleRNG):
    img_w, frost_w = c
    tex = frost_texture(rng, *x_u8.shape[-2:]).to(x_u8.device)
    return (img_w * x_u8.to(F64) + frost_w * tex).clamp(0, 255).to(torch.uint8)


def plasma_fractal(rng: ExampleRNG, mapsize: int = 32, wibbledecay: float = 3.0) -> torch.Tensor:
    """Batched diamond-square heightmap of ``plasma_fractal`` (N, mapsize, mapsize) in [0, 1],
    with the original's noise amplitude ``wibble * U(-wibble, wibble)``."""
    n = len(rng)
    counts = []
    step = mapsize
    while step >= 2:
        counts += [(mapsize // step) ** 2] * 3
        step //= 2
    draws = rng.uniform(sum(counts), low=-1.0, high=1.0)
    m = torch.zeros(n, mapsize, mapsize, dtype=F64)
    pos = 0

    def wibbled(arr, wibble):
        nonlocal pos
        k = arr[0].numel()
        u = draws[:, pos:pos + k].view(arr.shape)
        pos += k
        return arr / 4 + wibble * (wibble * u)

    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        acc = corner + corner.roll(-1, 1)
        acc = acc + acc.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(acc, wibble)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = dr + dr.roll(1, 1) + ul + ul.roll(-1, 2)
        m[:, 0::step, half::step] = wibbled(lt, wibble)
        tt = dr + dr.roll(1, 2) + ul + ul.roll(-1, 1)
        m[:, half::step, 0::step] = wibbled(tt, wibble)
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(x_u8, c, rng: ExampleRNG):
    strength, decay = c
    x = to_unit(x_u8)
    max_val = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * plasma_fractal(rng, 32, decay).to(x.device)[:, :x.shape[-2], :x.shape[-1]].unsqueeze(1)
    return quantize(x * max_val / (max_val + strength))


def spatter(x_u8, c, rng: ExampleRNG):
    """Water (mode 0) or mud (mode 1) blobs. The water branch's OpenCV chain (Canny, L2
    distance transform with the 5x5 mask, box blurs, histogram equalisation, emboss filter) is
    re-implemented in :mod:`harness.corruptions._spatter`."""
    loc, scale, sigma, threshold, mix, mode = c
    n, _, h, w = x_u8.shape
    x = to_unit(x_u8, torch.float32).to(F64)
    liquid = rng.normal(h, w, loc=loc, scale=scale).to(x.device).unsqueeze(1)
    liquid = ops.gaussian_filter(liquid, sigma, mode="nearest")
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 0:
        m = water_mask(liquid) * mix  # (N,1,H,W)
        color = torch.tensor([175 / 255, 238 / 255, 238 / 255], dtype=F64, device=x.device)
        return quantize(x + m * color.view(1, 3, 1, 1))
    m = (liquid > threshold).to(F64)
    m = ops.gaussian_filter(m, mix, mode="nearest").to(torch.float32).to(F64)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    color = torch.tensor([63 / 255, 42 / 255, 20 / 255], dtype=F64, device=x.device)
    return quantize(x * (1 - m) + color.view(1, 3, 1, 1) * m)


# -- digital -----------------------------------------------------------------------------------
def brightness(x_u8, c, rng=None):
    hsv = ops.rgb_to_hsv(to_unit(x_u8))
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    return quantize(ops.hsv_to_rgb(hsv))


def saturate(x_u8, c, rng=None):
    scale, shift = c
    hsv = ops.rgb_to_hsv(to_unit(x_u8))
    hsv[:, 1] = (hsv[:, 1] * scale + shift).clamp(0, 1)
    return quantize(ops.hsv_to_rgb(hsv))


def contrast(x_u8, c, rng=None):
    x = to_unit(x_u8)
    means = x.mean((2, 3), keepdim=True)
    return quantize((x - means) * c + means)


def _affine_matrices(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """cv2.getAffineTransform for batches: (N, 3, 2) point pairs -> (N, 2, 3)."""
    a = torch.cat((src, torch.ones_like(src[..., :1])), -1)  # (N,3,3)
    return torch.linalg.solve(a, dst).transpose(1, 2)


def _invert_affine(m: torch.Tensor) -> torch.Tensor:
    """cv2.invertAffineTransform for (N, 2, 3) matrices, with OpenCV's formula."""
    a, b, c = m[:, 0].unbind(1)
    d, e, f = m[:, 1].unbind(1)
    det = a * e - b * d
    inv_det = torch.where(det != 0, 1 / det, torch.zeros_like(det))
    a11, a12, a21, a22 = e * inv_det, -b * inv_det, -d * inv_det, a * inv_det
    b1, b2 = -a11 * c - a12 * f, -a21 * c - a22 * f
    return torch.stack((torch.stack((a11, a12, b1), 1), torch.stack((a21, a22, b2), 1)), 1)


def _warp_coordinate(row: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """One source coordinate of cv2.warpAffine(INTER_LINEAR) of OpenCV 3 (what made the
    release) for (N, 3) inverse-matrix rows: it sums x*M0 and y*M1 + M2, each rounded to
    1/1024 (cvRound, half to even), adds half a 1/32 step and truncates to the 1/32 grid of its
    interpolation table. (OpenCV 5 interpolates at the exact coordinate.)"""
    ab_scale, shift = 1024, 5
    per_x = torch.round(row[:, 0, None, None] * xx * ab_scale)
    per_y = torch.round((row[:, 1, None, None] * yy + row[:, 2, None, None]) * ab_scale)
    fixed = (per_x + per_y).long() + ab_scale // 32 // 2
    return (fixed >> shift).double() / 32


def elastic_transform(x_u8, c, rng: ExampleRNG):
    """Random affine (cv2.warpAffine, bilinear, reflect-101, with OpenCV's fixed-point source
    coordinates) then a smooth random displacement resampled with scipy's
    ``map_coordinates(order=1, mode='reflect')`` as scipy computed it when the release was made
    (border rule of scipy < 1.6; see :func:`ops.legacy_reflect`)."""
    alpha, sigma, jitter = c
    n, _, h, w = x_u8.shape
    x = to_unit(x_u8, torch.float32)  # float32 throughout, as the original's image
    center = float(min(h, w) // 2)  # float32(shape) // 2
    sq = min(h, w) // 3
    pts1 = torch.tensor([[center + sq, center + sq], [center + sq, center - sq],
                         [center - sq, center - sq]], dtype=F64)
    jit = rng.uniform(3, 2, low=-jitter, high=jitter).to(torch.float32)
    pts2 = (pts1.to(torch.float32) + jit).to(F64)  # float32 sum, as the original
    m = _affine_matrices(pts1.expand(n, 3, 2), pts2)  # maps source -> destination
    inv = _invert_affine(m).to(x.device)  # destination -> source, as cv2.invertAffineTransform
    yy, xx = torch.meshgrid(torch.arange(h, dtype=F64, device=x.device),
                            torch.arange(w, dtype=F64, device=x.device), indexing="ij")
    src_x = _warp_coordinate(inv[:, 0], xx, yy)
    src_y = _warp_coordinate(inv[:, 1], xx, yy)
    x = ops.bilinear_sample(x, src_y, src_x, "mirror")

    def displacement():
        field = rng.uniform(h, w, low=-1.0, high=1.0).to(x.device).unsqueeze(1)
        field = ops.gaussian_filter(field, sigma, mode="reflect", truncate=3.0) * alpha
        return field[:, 0].to(torch.float32)

    dx = displacement()
    dy = displacement()
    # float32 image as the original's (map_coordinates interpolates it in float64 and returns
    # float32; interpolating in float32 differs by ~1e-7, far below the 1/255 step). Border:
    # the scipy of 2019 (see ops.legacy_reflect), not today's.
    rows = ops.legacy_reflect(yy.float() + dy, h)
    cols = ops.legacy_reflect(xx.float() + dx, w)
    x = ops.bilinear_sample(x, rows, cols, "mirror")
    return quantize(x)


def pixelate(x_u8, c, rng=None):
    h, w = x_u8.shape[-2:]
    small = ops.pil_resize_box(x_u8, (int(h * c), int(w * c)))
    return ops.pil_resize_box(small, (h, w))


def jpeg_compression(x_u8, c, rng=None):
    """PIL's ``save(format="JPEG", quality=c)`` round trip, through torchvision.io's libjpeg
    (the same baseline encoder and decoder: bit-identical images, about 6x faster than PIL
    image by image and 50x faster than the earlier hand-written torch JPEG). It runs on the
    CPU whatever the device: nvJPEG on CUDA rounds differently from libjpeg."""
    from torchvision.io import decode_jpeg, encode_jpeg

    cpu = x_u8.detach().to("cpu", torch.uint8).contiguous()
    if len(cpu) == 0:
        return x_u8.clone()
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec (not a
        # dependency here); they work, and tests check them bit-exact against PIL.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        decoded = decode_jpeg(encode_jpeg(list(cpu), quality=int(c)))
    return torch.stack(decoded).to(x_u8.device)
