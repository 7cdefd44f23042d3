#!/usr/bin/env python3
"""Measure the frost photographs' statistics behind ``harness.corruptions._impl.FROST_STYLES``.

make_cifar_c.py blends a random 32x32 crop of one of the photographs frost1..frost5 (chosen
uniformly; frost2 and frost3 are the same picture), downscaled x0.2 with cv2.resize. The
photographs are not redistributed with the harness, so the generated frost is a Gaussian
random field with each photograph's statistics, measured here over 400 random crops:

* mean RGB over all crops, std of the crops' grey-level means (crop-to-crop variation),
* the radially averaged power spectrum of the mean-removed grey level, at integer radii
  1..22 of the 32x32 DFT (numpy convention, |fft2|^2 / 1024),
* per-channel gain: regression slope of each channel on the grey level within crops.

Usage: python scripts/measure_frost.py FROST_DIR   (the folder with frost1.png ... frost5.jpg
from hendrycks/robustness ImageNet-C/create_c/). Needs opencv-python-headless.
"""

from __future__ import annotations

import sys

import numpy as np

FILES = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]
CROPS = 400
RADII = 22


def measure(path: str) -> tuple:
    import cv2

    img = cv2.imread(path)
    small = cv2.resize(img, (0, 0), fx=0.2, fy=0.2)[..., ::-1].astype(np.float64)
    rng = np.random.default_rng(0)
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    radius = np.round(np.sqrt(fx**2 + fy**2) * 32).astype(int)
    power = np.zeros((32, 32))
    means, resid_rgb, resid_grey = [], [], []
    for _ in range(CROPS):
        a = rng.integers(0, small.shape[0] - 32)
        b = rng.integers(0, small.shape[1] - 32)
        crop = small[a:a + 32, b:b + 32]
        grey = crop.mean(-1)
        means.append(grey.mean())
        g = grey - grey.mean()
        power += np.abs(np.fft.fft2(g)) ** 2 / 1024
        resid_rgb.append((crop - crop.mean((0, 1))).reshape(-1, 3))
        resid_grey.append(g.ravel())
    power /= CROPS
    radial = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    rgb = np.concatenate(resid_rgb)
    grey = np.concatenate(resid_grey)
    gains = (rgb * grey[:, None]).sum(0) / (grey**2).sum()
    mean_rgb = small.reshape(-1, 3).mean(0)
    def r(values, digits):
        return tuple(round(float(v), digits) for v in values)

    return (r(mean_rgb, 1), round(float(np.std(means)), 1), r(gains, 3),
            r(radial[1:RADII + 1], 0))


if __name__ == "__main__":
    folder = sys.argv[1]
    print("FROST_STYLES = (")
    for name in FILES:
        print(f"    {measure(f'{folder}/{name}')!r},  # {name}")
    print(")")
