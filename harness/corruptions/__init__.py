"""CIFAR-10-C corruptions, generated on the fly: the 15 benchmark corruptions and the 4 extras of
Hendrycks & Dietterich (2019) with the CIFAR parameters of hendrycks/robustness
``make_cifar_c.py``, as batched torch operations on uint8 (N, 3, 32, 32) images.

    >>> from harness.corruptions import corrupt, list_corruptions
    >>> out = corrupt(images_u8, "fog", 3, seed=0, indices=test_indices)

Randomness is per example: every draw derives from (seed, corruption, severity, example index),
so any shard reproduces exactly and reruns are bit-identical on CPU. The release was not seeded,
so random corruptions match it in distribution; given the same variates, each reproduces the
per-image reference of tests/reference (the tests check this). Where a library changed since
the release was made, the 2019 behaviour is kept (scipy's map_coordinates border, OpenCV 3's
warpAffine grid, ImageMagick's rounding 8-bit PNG writer). Frost cannot be reproduced: it
blends a procedural texture instead of the photographs and carries ``approximate=True`` in its
metadata (:data:`CORRUPTIONS`.meta(name)).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.corruptions import _impl
from harness.corruptions._rng import ExampleRNG
from harness.errors import HarnessError
from harness.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class Corruption:
    """A corruption: its function and the parameters of severities 1..5."""

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Any, ...]

    def __call__(self, images: torch.Tensor, severity: int, rng: ExampleRNG) -> torch.Tensor:
        return self.fn(images, self.params[severity - 1], rng)


CORRUPTIONS: Registry[Corruption] = Registry("corruption")
_ORDER: list[str] = []  # registration order = the release's order


def _register(name: str, fn, params, *, group: str, benchmark: bool = True, random: bool = True,
              approximate: bool = False, note: str = "", aliases: Sequence[str] = ()) -> None:
    assert len(params) == len(SEVERITIES), name
    CORRUPTIONS.add(name, Corruption(name, fn, tuple(params)), aliases=aliases, group=group,
                    benchmark=benchmark, random=random, approximate=approximate, note=note,
                    params=tuple(params))
    _ORDER.append(name)


# Registration order is the release's order (make_cifar_c.py), which listings keep.
_register("gaussian_noise", _impl.gaussian_noise, [0.04, 0.06, 0.08, 0.09, 0.10], group="noise")
_register("shot_noise", _impl.shot_noise, [500, 250, 100, 75, 50], group="noise")
_register("impulse_noise", _impl.impulse_noise, [0.01, 0.02, 0.03, 0.05, 0.07], group="noise")
_register("defocus_blur", _impl.defocus_blur,
          [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], group="blur", random=False)
_register("glass_blur", _impl.glass_blur,
          [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], group="blur")
_register("motion_blur", _impl.motion_blur, [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
          group="blur", note="ImageMagick MotionBlurImage re-implemented; random angle")
_register("zoom_blur", _impl.zoom_blur, [1.06, 1.11, 1.16, 1.21, 1.26], group="blur", random=False)
_register("snow", _impl.snow, [
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], group="weather")
_register("frost", _impl.frost, [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
          group="weather", approximate=True,
          note="procedural frost texture matched to the photographs' statistics")
_register("fog", _impl.fog, [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], group="weather")
_register("brightness", _impl.brightness, [0.05, 0.1, 0.15, 0.2, 0.3], group="digital",
          random=False)
_register("contrast", _impl.contrast, [0.75, 0.5, 0.4, 0.3, 0.15], group="digital", random=False)
_register("elastic_transform", _impl.elastic_transform, [
    (32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
    (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)], group="digital",
    aliases=("elastic",))
_register("pixelate", _impl.pixelate, [0.95, 0.9, 0.85, 0.75, 0.65], group="digital", random=False)
_register("jpeg_compression", _impl.jpeg_compression, [80, 65, 58, 50, 40], group="digital",
          random=False, aliases=("jpeg",))
_register("speckle_noise", _impl.speckle_noise, [0.06, 0.1, 0.12, 0.16, 0.2], group="noise",
          benchmark=False)
_register("gaussian_blur", _impl.gaussian_blur, [0.4, 0.6, 0.7, 0.8, 1], group="blur",
          benchmark=False, random=False)
_register("spatter", _impl.spatter, [
    (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)], group="weather",
    benchmark=False, note="OpenCV water-mask chain (Canny, distance transform, ...) in torch")
_register("saturate", _impl.saturate, [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
          group="digital", benchmark=False, random=False)
CORRUPTIONS.freeze()


@functools.cache
def generator_fingerprint() -> str:
    """sha256 (16 hex) of this package's source: part of every generated run's spec, so a
    change to any corruption invalidates stored generated results instead of mixing them."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def list_corruptions(include_extra: bool = False) -> list[str]:
    """The 15 benchmark corruptions in the release's order, then (optionally) the 4 extras."""
    return [n for n in _ORDER if include_extra or CORRUPTIONS.meta(n)["benchmark"]]


def check_severity(severity: Any) -> int:
    """``severity`` as an int in 1..5, or a HarnessError."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or int(severity) not in SEVERITIES:
        raise HarnessError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def _as_images(images: Any) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise HarnessError(f"corrupt() needs a uint8 tensor or array, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise HarnessError(f"corrupt() needs uint8 images in 0..255, got dtype {images.dtype}"
                           " (convert with (x * 255).round().to(torch.uint8))")
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise HarnessError("corrupt() needs images of shape (N, 3, 32, 32), got "
                           f"{tuple(images.shape)}")
    return images


def corrupt(images_uint8, name: str, severity: int, *, seed: int = 0,
            indices: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to uint8 images (N, 3, 32, 32).

    Args:
        images_uint8: uint8 tensor (or numpy array) on any device.
        name: a name of :func:`list_corruptions` (``include_extra=True``) or an alias.
        severity: 1..5.
        seed: run seed; with the corruption, the severity and ``indices`` it fixes every draw.
        indices: each image's example index (default ``0..N-1``): pass positions in the source
            split so an image is corrupted the same way in any batch or shard.

    Returns:
        uint8 tensor of the same shape on the same device.

    Raises:
        HarnessError: unknown name (with suggestions), severity outside 1..5, wrong dtype or
            shape, or ``indices`` of the wrong length.
    """
    corruption = CORRUPTIONS.get(name)
    severity = check_severity(severity)
    images = _as_images(images_uint8)
    n = images.shape[0]
    if indices is None:
        idx = list(range(n))
    else:
        idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
        if len(idx) != n:
            raise HarnessError(f"corrupt(): {len(idx)} indices for {n} images")
    if n == 0:
        return images.clone()
    random = CORRUPTIONS.meta(corruption.name)["random"]
    rng = ExampleRNG(seed, corruption.name, severity, idx) if random else None
    out = corruption(images, severity, rng)
    return out.to(images.device)


__all__ = ["CORRUPTIONS", "Corruption", "SEVERITIES", "check_severity", "corrupt",
           "generator_fingerprint", "list_corruptions"]
