"""Per-image reference implementation of the CIFAR-10-C corruptions (test oracle).

This module re-implements, one image at a time and with numpy / scipy / scikit-image / OpenCV / Pillow,
the generator that produced CIFAR-10-C:

    hendrycks/robustness, ``ImageNet-C/create_c/make_cifar_c.py``

It is a test oracle for the batched torch implementation, so it follows that script statement by
statement: the same constants, the same dtypes (float64 from ``/ 255.`` in most corruptions, float32 in
zoom_blur / snow / spatter / elastic_transform), the same library calls, and the same order of random
draws.  Speed is irrelevant here.

Changes that the current library versions force (everything else is as in the script):

* every ``np.random.*`` call draws from the ``rng`` argument (a ``np.random.Generator``) instead of the
  global RandomState: ``normal``, ``poisson``, ``uniform`` and ``integers`` with the same half-open ranges
  (``np.random.randint(-1, 1)`` -> ``rng.integers(-1, 1)``), in the same order as the script.  The
  streams therefore differ from the original's; the distributions do not.
* ``skimage.util.random_noise(..., mode='s&p', amount=c)`` gets ``rng=rng``.  Since scikit-image 0.13 the
  s&p mode is two independent per-element Bernoulli masks (``flipped`` with p=amount, ``salted`` with
  p=0.5), the same model as today; only the way the Bernoulli draws are made changed (0.19 / #5257).
* ``gaussian(..., multichannel=True)`` -> ``gaussian(..., channel_axis=-1)``; ``np.float_`` ->
  ``np.float64``; ``scipy.ndimage.interpolation.map_coordinates`` -> ``scipy.ndimage.map_coordinates``;
  ``np.fromstring`` is not needed (there is no PNG blob to decode, see below).
* spatter's ``filter2D`` kernel is built as int32: the script passes an int64 array, which OpenCV 3's
  Python binding converted to CV_32S (OpenCV 5 would take int64 as it is; the values are the same).
* glass_blur's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` is written as its net effect on numpy
  views, ``x[h, w] = x[h', w']`` (the same result, stated plainly).
* Wand / ImageMagick's ``MagickMotionBlurImage`` (motion_blur, snow) is replaced by
  :func:`motion_blur_magick`, a re-implementation of ImageMagick 6's MotionBlurImage including the
  8-bit PNG round trip (see its docstring).  The PNG encode / decode itself is lossless and is skipped.
  The 16-bit -> 8-bit step rounds, as every ImageMagick 6 before 6.9.10-69 (Oct 2019) did, hence
  presumably the one that made CIFAR-10-C (``MAGICK_PNG8 = "round"``); IM6 >= 6.9.10-69 truncates
  instead (``"floor"``), one level lower in a large share (~45 %) of the blurred samples.
* The script's input is ``trn.ToPILImage()(trn.ToTensor()(img))``; that round trip is exact for uint8
  (v / 255 * 255 == v in float32 for all 256 values), so the PIL image is built as
  ``Image.fromarray(img, "RGB")``.
* The script stores ``np.uint8(corruption(pil_img))``: a truncating cast of the float result.
  :func:`corrupt_image` does the same (``astype(np.uint8)``).

Known places where the *current* libraries may not reproduce the 2018/2019 numbers bit for bit (the
calls are kept as in the script; see also the report that came with this file):

* elastic_transform: ``scipy.ndimage.map_coordinates(order=1, mode='reflect')``.  In scipy <= 1.5 the
  second interpolation tap of a coordinate in (-1, 0) or (n-1, n) was fetched with whole-sample *mirror*
  indexing (e.g. x=-0.3 -> 0.7*a[1] + 0.3*a[0]); since scipy 1.6 it uses half-sample *reflect*
  (x=-0.3 -> a[0]).  Border pixels whose displaced coordinate falls in those bands differ.
* spatter: ``cv2.Canny`` / ``cv2.distanceTransform`` / ``cv2.equalizeHist`` of OpenCV 5 instead of 3.x.
* frost: ``cv2.imread`` of the JPEG photos (libjpeg version) and ``cv2.resize`` INTER_LINEAR (uint8
  fixed-point path) may differ by +-1 between OpenCV builds.
* jpeg_compression / pixelate: Pillow's bundled libjpeg-turbo and BOX resampling of today.
"""

from __future__ import annotations

import math
import os
from io import BytesIO

import cv2
import numpy as np
import skimage as sk
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian

# The 15 benchmark corruptions, in the order of make_cifar_c.py's OrderedDict, then the 4 extra ones.
NAMES = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
]
EXTRA = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]

# The photos frost() picks from, in the script's order.  The script draws idx = randint(5), so
# frost6.jpg is never used; it is still loaded so that the list matches the script's.
FROST_FILES = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]


# /////////////// ImageMagick MotionBlurImage ///////////////

_MAGICK_EPSILON = 1.0e-12  # MagickEpsilon (magick/magick-type.h)
_MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062  # MagickSQ2PI (image-private.h)
_QUANTUM_RANGE = 65535  # Q16: QuantumRange
_QUANTUM_SCALE = 1.0 / _QUANTUM_RANGE  # QuantumScale

# How motion_blur / snow turn ImageMagick's 16-bit result into the 8-bit PNG they read back: "round" as
# every IM6 before 6.9.10-69 did (presumably what made CIFAR-10-C), "floor" as IM6 >= 6.9.10-69 does
# (see motion_blur_magick).  A module constant so that a test can switch it.
MAGICK_PNG8 = "round"


def _im_optimal_kernel_width_1d(radius: float, sigma: float) -> int:
    """``GetOptimalKernelWidth1D`` (magick/gem.c; identical in IM7's MagickCore/gem.c)."""
    if radius > _MAGICK_EPSILON:
        return int(2.0 * math.ceil(radius) + 1.0)
    gamma = abs(sigma)
    if gamma <= _MAGICK_EPSILON:
        return 3
    # radius == 0: grow the width until the outermost tap of a *two-sided* Gaussian drops below one
    # quantum (never used by make_cifar_c.py, whose radii are all > 0; kept for completeness).
    alpha = 1.0 / (2.0 * gamma * gamma)
    beta = 1.0 / (_MAGICK_SQ2PI * gamma)
    width = 5
    while True:
        j = (width - 1) // 2
        normalize = 0.0
        for i in range(-j, j + 1):
            normalize += math.exp(-float(i * i) * alpha) * beta
        value = math.exp(-float(j * j) * alpha) * beta / normalize
        if value < _QUANTUM_SCALE or value < _MAGICK_EPSILON:
            break
        width += 2
    return width - 2


def _im_motion_blur_kernel(width: int, sigma: float) -> np.ndarray:
    """``GetMotionBlurKernel`` (magick/effect.c): a *one-sided* Gaussian k[i] ~ exp(-i^2 / 2 sigma^2),
    i = 0 .. width-1, normalised to sum 1 (sequential double sums, as in the C loop)."""
    s = _MAGICK_EPSILON if abs(sigma) < _MAGICK_EPSILON else sigma  # MagickSigma
    kernel = []
    normalize = 0.0
    for i in range(width):
        k = math.exp(-float(i * i) / (2.0 * s * s)) / (_MAGICK_SQ2PI * s)
        kernel.append(k)
        normalize += k
    return np.array([k / normalize for k in kernel], dtype=np.float64)


def _im_motion_blur_offsets(width: int, angle_deg: float) -> list[tuple[int, int]]:
    """The integer tap offsets (dx, dy) of MotionBlurImage (magick/effect.c)::

        point.x = width * sin(DegreesToRadians(angle));  point.y = width * cos(...)
        offset[i].x = ceil(i * point.y / hypot(point.x, point.y) - 0.5)
        offset[i].y = ceil(i * point.x / hypot(point.x, point.y) - 0.5)

    i.e. tap i sits i pixels along (cos a, sin a) from the output pixel, rounded half-down."""
    rad = math.pi * angle_deg / 180.0  # DegreesToRadians: MagickPI*degrees/180.0
    px = float(width) * math.sin(rad)
    py = float(width) * math.cos(rad)
    norm = float(np.hypot(px, py))  # C hypot() (math.hypot uses its own algorithm)
    return [(math.ceil(i * py / norm - 0.5), math.ceil(i * px / norm - 0.5)) for i in range(width)]


def motion_blur_magick(
    img: np.ndarray,
    radius: float,
    sigma: float,
    angle_deg: float,
    *,
    quantize: bool = True,
    png8: str = "round",
) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage(image, radius, sigma, angle)`` on an 8-bit image, as Wand's
    ``MagickMotionBlurImage`` ran it inside make_cifar_c.py (PNG blob in, PNG blob out).

    ``img`` is (H, W) or (H, W, C), values on the 0..255 scale.

    * ``quantize=True`` (the script's path): the values are taken as the 8-bit samples of the PNG the
      script writes (they are integers there; anything else is rounded and clipped to 0..255), and the
      result is what ``cv2.imdecode`` gets back from the 8-bit PNG ImageMagick writes: uint8, same shape.
    * ``quantize=False``: the same taps and weights on the raw values, no quantum steps; float64 in
      0..255.  Useful to compare a float implementation before its own rounding.
    * ``png8`` picks how the 16-bit result becomes the 8-bit PNG sample, which depends on the
      ImageMagick 6 release (Q16, non-HDRI):

      - ``"round"`` (default): ``ScaleQuantumToChar(Q) = ((Q+128) - ((Q+128) >> 8)) >> 8``, i.e.
        round(Q / 257).  That is what every IM6 before 6.9.10-69 (Oct 2019) wrote: up to 6.9.10-12 the
        PNG coder exported depth-8 samples with ScaleQuantumToChar; 6.9.10-13 added
        ``SetImageDepth(image, image->depth)`` to ``coders/png.c``, but ``ScaleQuantumToAny`` still
        rounded (``range*q/QuantumRange + 0.5``), which gives the same value for all 65536 quanta.
        CIFAR-10-C (2018/2019; Ubuntu 16.04/18.04 shipped IM6 6.8.9 / 6.9.7) was presumably made so.
      - ``"floor"``: ``floor(255 * Q / 65535)``.  Since 6.9.10-69 (commit 879bb6a13, issue #1727) the
        non-HDRI ``ScaleQuantumToAny`` in ``magick/quantum-private.h`` truncates, and the PNG coder's
        ``SetImageDepth`` -> ``SetImageChannelDepth`` (``magick/attribute.c``) maps every quantum
        through ``ScaleAnyToQuantum(ScaleQuantumToAny(Q, 255), 255)`` before writing.  This is what the
        IM6 of today's distributions (e.g. Debian 12's 6.9.11-60) produces; it is one level lower in a
        large share (~45 %) of the blurred samples.

    What was read, and from where (github:ImageMagick/ImageMagick6, tags 6.9.7-4 and 6.9.11-60, the IM6
    that Debian / Ubuntu ship and that Wand binds; github:ImageMagick/ImageMagick ``MagickCore/effect.c``
    has the same kernel, offsets and sampling):

    * ``magick/effect.c`` ``MotionBlurImage`` -> ``MotionBlurImageChannel(DefaultChannels)``:
      ``width = GetOptimalKernelWidth1D(radius, sigma)``, which is ``2*ceil(radius)+1`` for radius > 0
      (``magick/gem.c``); ``kernel = GetMotionBlurKernel(width, sigma)``: k[i] = exp(-i*i/(2 sigma^2))
      / (sqrt(2 pi) sigma) for i = 0..width-1 (one-sided: the blur only trails behind the pixel),
      divided by its sum.  Tap offsets as in :func:`_im_motion_blur_offsets` (x from cos, y from sin,
      ``ceil(... - 0.5)``).  Output pixel (x, y) = sum_i k[i] * src(x + off[i].x, y + off[i].y),
      accumulated in double in tap order starting from the image bias (0), for red, green, blue
      separately (the image has no alpha, so the non-matte branch), then ``ClampToQuantum``.
    * Pixels outside the image come from ``GetOneCacheViewVirtualPixel`` with the image's virtual-pixel
      method, ``UndefinedVirtualPixelMethod`` by default, which ``magick/cache.c`` treats as
      ``EdgeVirtualPixelMethod``: coordinates are clamped to the nearest edge pixel.
    * Quantum arithmetic, ``magick/quantum.h`` for Q16 without HDRI (Debian/Ubuntu's
      libmagickwand-6.q16): reading an 8-bit PNG gives ``ScaleCharToQuantum(v) = 257 * v``;
      ``ClampToQuantum(q)`` is 0 for q <= 0, 65535 for q >= 65535, else ``(Quantum)(q + 0.5)``; the
      8-bit write is described under ``png8``.  PNG itself is lossless; ImageMagick may store the result
      as a grey or palette PNG, but ``cv2.imdecode(IMREAD_UNCHANGED)`` gives back the same sample values.
    * Not modelled: the OpenCL path (``AccelerateMotionBlurImage``, only with an OpenCL device enabled)
      and HDRI builds (they skip the 16-bit rounding and round q/257 instead: rare +-1 differences).

    Checked (scratch script, not in the repo) against Wand 0.7.2 on Debian 12's ImageMagick 6.9.11-60
    Q16: with ``png8="floor"`` identical on 510 images (CIFAR images, snow layers, random RGB and grey
    images of odd sizes; angles incl. 0, +-45, +-90, 180; radius 1..14, sigma 0.5..12) and on the whole
    script's motion_blur / snow (Wand) vs :func:`corrupt_image`, 100 images x 5 severities each.  With
    ``png8="round"`` against the Q16HDRI build of the same release (which rounds when writing 8 bits):
    9 of about 10^6 samples differ, by 1 (the double rounding noted above).
    """
    if png8 not in ("round", "floor"):
        raise ValueError(f"png8 must be 'round' or 'floor', got {png8!r}")
    a = np.asarray(img)
    squeeze = a.ndim == 2
    if squeeze:
        a = a[..., np.newaxis]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {np.asarray(img).shape}")
    h, w = a.shape[:2]

    width = _im_optimal_kernel_width_1d(radius, sigma)
    kernel = _im_motion_blur_kernel(width, sigma)
    offsets = _im_motion_blur_offsets(width, angle_deg)

    if quantize:
        # 8-bit samples -> Q16 quanta (exact integers in double).
        src = np.clip(np.rint(a.astype(np.float64)), 0, 255) * 257.0
    else:
        src = a.astype(np.float64)

    ys, xs = np.mgrid[0:h, 0:w]
    acc = np.zeros(a.shape, dtype=np.float64)  # qixel = bias = 0
    for k, (dx, dy) in zip(kernel, offsets):
        yy = np.clip(ys + dy, 0, h - 1)  # edge virtual pixels
        xx = np.clip(xs + dx, 0, w - 1)
        acc = acc + k * src[yy, xx]  # qixel.red += (*k) * pixel.red

    if not quantize:
        return acc[..., 0] if squeeze else acc
    # ClampToQuantum (Q16, no HDRI): truncation of q + 0.5 after clamping.
    q = np.where(acc <= 0.0, 0.0, np.where(acc >= _QUANTUM_RANGE, _QUANTUM_RANGE, acc + 0.5))
    q = np.floor(q).astype(np.int64)
    if png8 == "round":
        out = ((q + 128) - ((q + 128) >> 8)) >> 8  # ScaleQuantumToChar (Q16)
    else:
        out = np.floor(255.0 * q / _QUANTUM_RANGE).astype(np.int64)  # ScaleQuantumToAny(q, 255), truncating
    out = out.astype(np.uint8)
    return out[..., 0] if squeeze else out


# /////////////// Distortion helpers (make_cifar_c.py) ///////////////


def disk(radius, alias_blur=0.1, dtype=np.float32):
    """Anti-aliased disk kernel for defocus_blur (float32 17x17 for the CIFAR radii)."""
    if radius <= 8:
        L = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        L = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X**2 + Y**2) <= radius**2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)

    # supersample disk to antialias
    return cv2.GaussianBlur(aliased_disk, ksize=ksize, sigmaX=alias_blur)


def plasma_fractal(rng: np.random.Generator, mapsize=32, wibbledecay=3):
    """Diamond-square height map in [0, 1] (float64, mapsize x mapsize).

    Random draws, in order: per step, one uniform array for the squares, then two for the diamonds."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)  # np.float_ in the script
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        """For each square of points stepsize apart, calculate middle value as mean of points + wibble"""
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(
            squareaccum
        )

    def filldiamonds():
        """For each diamond of points stepsize apart, calculate middle value as mean of points + wibble"""
        mapsize = maparray.shape[0]
        drgrid = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay

    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img, zoom_factor):
    """Centre crop of ceil(h / zoom) pixels, bilinear zoom (scipy, order=1), centre trim back to h."""
    h = img.shape[0]
    # ceil crop height(= crop width)
    ch = int(np.ceil(h / zoom_factor))

    top = (h - ch) // 2
    img = scizoom(img[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
    # trim off any extra pixels
    trim_top = (img.shape[0] - h) // 2

    return img[trim_top : trim_top + h, trim_top : trim_top + h]


# /////////////// Distortions (make_cifar_c.py; x is a PIL RGB image) ///////////////


def gaussian_noise(x, severity, rng):
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]

    x = np.array(x) / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng):
    c = [500, 250, 100, 75, 50][severity - 1]

    x = np.array(x) / 255.0
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity, rng):
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]

    x = sk.util.random_noise(np.array(x) / 255.0, mode="s&p", amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, severity, rng):
    c = [0.06, 0.1, 0.12, 0.16, 0.2][severity - 1]

    x = np.array(x) / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, severity, rng):
    c = [0.4, 0.6, 0.7, 0.8, 1][severity - 1]

    x = gaussian(np.array(x) / 255.0, sigma=c, channel_axis=-1)
    return np.clip(x, 0, 1) * 255


def glass_blur(x, severity, rng):
    # sigma, max_delta, iterations
    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]

    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=c[0], channel_axis=-1) * 255)

    # locally shuffle pixels: h, w run from 31 down to 2, (dx, dy) in {-1, 0}^2
    for _ in range(c[2]):
        for h in range(32 - c[1], c[1], -1):
            for w in range(32 - c[1], c[1], -1):
                dx, dy = rng.integers(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                # The script writes "x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]".  With
                # numpy views on the right-hand side that is not a swap: x[h, w] gets the neighbour's
                # value and the second assignment then writes that same value back.  Net effect:
                x[h, w] = x[h_prime, w_prime]

    return np.clip(gaussian(x / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255


def defocus_blur(x, severity, rng):
    c = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]

    x = np.array(x) / 255.0
    kernel = disk(radius=c[0], alias_blur=c[1])

    channels = []
    for d in range(3):
        channels.append(cv2.filter2D(x[:, :, d], -1, kernel))
    channels = np.array(channels).transpose((1, 2, 0))  # 3x32x32 -> 32x32x3

    return np.clip(channels, 0, 1) * 255


def motion_blur(x, severity, rng):
    c = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]

    # Script: PIL image -> PNG -> Wand motion_blur(radius, sigma, angle) -> PNG -> cv2.imdecode (BGR, or
    # 2-D if ImageMagick wrote a grey PNG) -> back to RGB.  The colour-order flips cancel, and a grey
    # result is the same values in all three channels, so this is the blur of the RGB array itself.
    angle = rng.uniform(-45, 45)
    x = motion_blur_magick(np.array(x), radius=c[0], sigma=c[1], angle_deg=angle, png8=MAGICK_PNG8)
    return np.clip(x, 0, 255)  # uint8, as cv2.imdecode returns it


def zoom_blur(x, severity, rng):
    c = [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ][severity - 1]

    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        out += clipped_zoom(x, zoom_factor)

    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def fog(x, severity, rng):
    c = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]

    x = np.array(x) / 255.0
    max_val = x.max()
    x += c[0] * plasma_fractal(rng, wibbledecay=c[1])[:32, :32][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def frost(x, severity, rng, frost_images):
    if frost_images is None:
        raise ValueError(
            "frost needs the frost photos: pass frost_images=load_frost_images(<dir with frost1.png .. "
            "frost6.jpg from hendrycks/robustness ImageNet-C/create_c>)"
        )
    if len(frost_images) != len(FROST_FILES):
        raise ValueError(f"frost_images must hold the {len(FROST_FILES)} photos {FROST_FILES}")
    c = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    idx = rng.integers(5)  # np.random.randint(5): frost6.jpg is never picked, as in the script
    frost = frost_images[idx]  # cv2.imread(filename): BGR uint8
    frost = cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)
    # randomly crop and convert to rgb
    x_start, y_start = rng.integers(0, frost.shape[0] - 32), rng.integers(0, frost.shape[1] - 32)
    frost = frost[x_start : x_start + 32, y_start : y_start + 32][..., [2, 1, 0]]

    return np.clip(c[0] * np.array(x) + c[1] * frost, 0, 255)


def snow(x, severity, rng):
    c = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ][severity - 1]

    x = np.array(x, dtype=np.float32) / 255.0
    snow_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])  # [:2] for monochrome

    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0

    # Script: 8-bit 'L' PIL image -> PNG -> Wand motion blur -> PNG -> cv2.imdecode (2-D uint8) / 255.
    snow_layer = np.asarray(
        Image.fromarray((np.clip(snow_layer.squeeze(), 0, 1) * 255).astype(np.uint8), mode="L")
    )
    snow_layer = (
        motion_blur_magick(
            snow_layer, radius=c[4], sigma=c[5], angle_deg=rng.uniform(-135, -45), png8=MAGICK_PNG8
        )
        / 255.0
    )
    snow_layer = snow_layer[..., np.newaxis]

    x = c[6] * x + (1 - c[6]) * np.maximum(
        x, cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(32, 32, 1) * 1.5 + 0.5
    )
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255


def spatter(x, severity, rng):
    c = [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0

    liquid_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])

    liquid_layer = gaussian(liquid_layer, sigma=c[2])
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        # (values above 1 wrap modulo 256 in this cast, as they did on x86 with old numpy)
        liquid_layer = (liquid_layer * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid_layer, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        # The script passes an int64 array; OpenCV 3's binding converted int64 to CV_32S.
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.int32)
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)

        m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
        with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero layer gives NaN, as before
            m /= np.max(m, axis=(0, 1))
        m *= c[4]

        # water is pale turqouise
        color = np.concatenate(
            (
                175 / 255.0 * np.ones_like(m[..., :1]),
                238 / 255.0 * np.ones_like(m[..., :1]),
                238 / 255.0 * np.ones_like(m[..., :1]),
            ),
            axis=2,
        )

        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)

        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    else:
        m = np.where(liquid_layer > c[3], 1, 0)
        m = gaussian(m.astype(np.float32), sigma=c[4])
        m[m < 0.8] = 0

        # mud brown
        color = np.concatenate(
            (
                63 / 255.0 * np.ones_like(x[..., :1]),
                42 / 255.0 * np.ones_like(x[..., :1]),
                20 / 255.0 * np.ones_like(x[..., :1]),
            ),
            axis=2,
        )

        color *= m[..., np.newaxis]
        x *= 1 - m[..., np.newaxis]

        return np.clip(x + color, 0, 1) * 255


def contrast(x, severity, rng):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]

    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def brightness(x, severity, rng):
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]

    x = np.array(x) / 255.0
    x = sk.color.rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = sk.color.hsv2rgb(x)

    return np.clip(x, 0, 1) * 255


def saturate(x, severity, rng):
    c = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]

    x = np.array(x) / 255.0
    x = sk.color.rgb2hsv(x)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    x = sk.color.hsv2rgb(x)

    return np.clip(x, 0, 1) * 255


def jpeg_compression(x, severity, rng):
    c = [80, 65, 58, 50, 40][severity - 1]

    output = BytesIO()
    x.save(output, "JPEG", quality=c)  # Pillow's default subsampling (4:2:0)
    x = Image.open(output)

    return x


def pixelate(x, severity, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]

    x = x.resize((int(32 * c), int(32 * c)), Image.BOX)
    x = x.resize((32, 32), Image.BOX)

    return x


# mod of https://gist.github.com/erniejunior/601cdf56d2b424757de5
def elastic_transform(image, severity, rng):
    IMSIZE = 32
    c = [
        (IMSIZE * 0, IMSIZE * 0, IMSIZE * 0.08),
        (IMSIZE * 0.05, IMSIZE * 0.2, IMSIZE * 0.07),
        (IMSIZE * 0.08, IMSIZE * 0.06, IMSIZE * 0.06),
        (IMSIZE * 0.1, IMSIZE * 0.04, IMSIZE * 0.05),
        (IMSIZE * 0.1, IMSIZE * 0.03, IMSIZE * 0.03),
    ][severity - 1]

    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    shape_size = shape[:2]

    # random affine
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32(
        [
            center_square + square_size,
            [center_square[0] + square_size, center_square[1] - square_size],
            center_square - square_size,
        ]
    )
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)

    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(
        np.float32
    )
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(
        np.float32
    )
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]

    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    # NB scipy >= 1.6 changed how order=1 / mode='reflect' fetches the outer tap for coordinates in
    # (-1, 0) and (n-1, n); see the module docstring.
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


# /////////////// End Distortions ///////////////

_CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}
assert list(_CORRUPTIONS) == NAMES + EXTRA


def load_frost_images(directory) -> list[np.ndarray]:
    """The six frost photos, read with ``cv2.imread`` (BGR uint8) as the script reads them, in the
    script's order: frost1.png, frost2.png, frost3.png, frost4.jpg, frost5.jpg, frost6.jpg."""
    images = []
    for name in FROST_FILES:
        path = os.path.join(os.fspath(directory), name)
        img = cv2.imread(path)
        if img is None:
            raise FileNotFoundError(f"cannot read frost photo {path!r}")
        images.append(img)
    return images


def corrupt_image(
    img: np.ndarray, name: str, severity: int, rng: np.random.Generator, *, frost_images=None
) -> np.ndarray:
    """One CIFAR image (32, 32, 3) uint8 RGB -> its corruption, (32, 32, 3) uint8, as the script stores it:
    ``np.uint8(corruption(pil_img))``, a truncating cast of the float result (each corruption already
    clips to [0, 255])."""
    if name not in _CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {NAMES + EXTRA}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be 1..5, got {severity!r}")
    img = np.asarray(img)
    if img.shape != (32, 32, 3) or img.dtype != np.uint8:
        raise ValueError(f"expected a (32, 32, 3) uint8 RGB image, got {img.shape} {img.dtype}")

    pil_img = Image.fromarray(np.ascontiguousarray(img), "RGB")  # what trn.ToPILImage() gives
    if name == "frost":
        out = frost(pil_img, severity, rng, frost_images)
    else:
        out = _CORRUPTIONS[name](pil_img, severity, rng)
    with np.errstate(invalid="ignore"):  # NaN (spatter's degenerate case) casts as it always did
        out = np.asarray(out).astype(np.uint8)
    if out.shape != (32, 32, 3):
        raise AssertionError(f"{name}: unexpected output shape {out.shape}")
    return out


def corrupt_batch(
    images: np.ndarray, name: str, severity: int, *, seed: int = 0, frost_images=None
) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 32, 32, 3) uint8, one image at a time; image i uses
    ``np.random.default_rng([seed, i])``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected (N, 32, 32, 3) images, got {images.shape}")
    out = np.empty(images.shape, dtype=np.uint8)
    for i in range(images.shape[0]):
        rng = np.random.default_rng([seed, i])
        out[i] = corrupt_image(images[i], name, severity, rng, frost_images=frost_images)
    return out
