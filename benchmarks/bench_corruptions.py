#!/usr/bin/env python3
"""Corruption generation: the harness's batched torch corruptions vs the per-image reference.

Both sides corrupt the bundled 1,000-image sample at every (corruption, severity) of the
15 x 5 benchmark sets, in one process: harness, reference, harness again (the harness time is
the mean of its two passes, so slow phases of the VM hit both sides). The reference is
tests/reference/cifar_c_ref.py: make_cifar_c.py's recipe one image at a time with numpy, scipy,
scikit-image, OpenCV and PIL (needs the dev extra). Frost needs the photographs for the
reference: pass --frost-dir (the folder with frost1.png ... frost5.jpg of hendrycks/robustness);
without it frost is left out on both sides. Prints, per corruption, the harness time, the
reference time and their ratio reference / harness; the overall ratio (goal >= 10); the overall
ratio without glass_blur (the reference's per-pixel Python loop, about half its time) and without
the harness's own slowest corruption; the spread of the per-corruption ratios; and a warning
when the two harness passes differ by more than 30 % (a busy machine: rerun).

Usage: python benchmarks/bench_corruptions.py [--n N] [--threads T] [--frost-dir DIR]
       [--corruptions a,b,...] [--device cpu|cuda]
Measured 2026-12-02 on the 2-core dev VM (CPU, 2 torch threads, without --frost-dir, so 14
corruptions; jpeg_compression through torchvision.io), two runs: overall 12.2x (4.57 s vs
55.90 s) and 12.6x (4.49 s vs 56.48 s); without glass_blur 6.0x and 6.2x (glass_blur alone
103x-117x, 54 % of the reference time); without the harness's slowest (shot_noise) 14.2x and
14.6x. Per corruption the ratio spreads from 1.1x-1.6x (shot_noise, gaussian_noise,
impulse_noise, pixelate) over a median of 3.9x-4.3x to 59x (zoom_blur) and 103x-117x
(glass_blur): only those two reach 10x, and the overall goal is met because of them. Two
earlier runs while the machine ran other jobs had harness passes of 5.1 s / 32.1 s and
33.1 s / 13.4 s and printed 3.1x and 2.4x; such runs now print a warning.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reference"))

from _goals import goal  # noqa: E402

from harness.corruptions import CORRUPTIONS, corrupt, list_corruptions  # noqa: E402
from harness.data import load_sample  # noqa: E402


def harness_pass(x: torch.Tensor, indices, names, device: str) -> dict[str, float]:
    times = {}
    for name in names:
        start = time.perf_counter()
        for s in range(1, 6):
            out = corrupt(x, name, s, seed=0, indices=indices)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        del out
        times[name] = time.perf_counter() - start
    return times


def reference_pass(images_nhwc: np.ndarray, names, frost) -> dict[str, float]:
    import cifar_c_ref as ref

    times = {}
    for name in names:
        start = time.perf_counter()
        for s in range(1, 6):
            ref.corrupt_batch(images_nhwc, name, s, seed=0, frost_images=frost)
        times[name] = time.perf_counter() - start
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--frost-dir", default=None)
    ap.add_argument("--corruptions", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import cifar_c_ref as ref

    frost = ref.load_frost_images(args.frost_dir) if args.frost_dir else None
    names = ([CORRUPTIONS.resolve(n.strip()) for n in args.corruptions.split(",")]
             if args.corruptions else list_corruptions())
    if frost is None and "frost" in names:
        names.remove("frost")
        print("frost left out (no --frost-dir)")
    data = load_sample()
    images = data.images[:args.n]
    x = torch.from_numpy(images).to(args.device)
    indices = data.indices[:args.n]
    harness_pass(x[:16], indices[:16], names, args.device)  # warm-up: caches, kernels
    first = harness_pass(x, indices, names, args.device)
    reference = reference_pass(images.transpose(0, 2, 3, 1), names, frost)
    second = harness_pass(x, indices, names, args.device)
    print(f"{len(images)} images x {len(names)} corruptions x 5 severities, "
          f"{torch.get_num_threads()} torch threads, device {args.device}")
    harness = {name: (first[name] + second[name]) / 2 for name in names}
    ratios = {name: reference[name] / harness[name] for name in names}
    w = max(len("without ") + max(len(n) for n in names), 18)
    print(f"{'corruption':{w}s} {'harness s':>10s} {'reference s':>12s} {'ratio':>7s}")
    for name in names:
        print(f"{name:{w}s} {harness[name]:10.2f} {reference[name]:12.2f} {ratios[name]:7.1f}")

    def overall(label: str, keep) -> float:
        h, r = sum(harness[n] for n in keep), sum(reference[n] for n in keep)
        print(f"{label:{w}s} {h:10.2f} {r:12.2f} {r / h:7.1f}")
        return r / h

    total = overall("total", names)
    glassless = without_slowest = None
    if "glass_blur" in names and len(names) > 1:
        glassless = overall("without glass_blur", [n for n in names if n != "glass_blur"])
    slowest = max(names, key=harness.get)
    if (slowest != "glass_blur" or glassless is None) and len(names) > 1:
        without_slowest = overall(f"without {slowest}", [n for n in names if n != slowest])
    ordered = sorted(ratios.values())
    print(f"per-corruption ratios: min {ordered[0]:.1f}x ({min(ratios, key=ratios.get)}), median "
          f"{ordered[len(ordered) // 2]:.1f}x, max {ordered[-1]:.1f}x ({max(ratios, key=ratios.get)}); "
          f"{sum(r >= 10 for r in ordered)} of {len(ordered)} at >= 10x")
    p1, p2 = sum(first.values()), sum(second.values())
    print(f"harness passes: {p1:.2f} s and {p2:.2f} s (slowest harness corruption: {slowest})")
    if max(p1, p2) > 1.3 * min(p1, p2):
        print("warning: the two harness passes differ by more than 30 %: the machine was busy, "
              "rerun for a ratio to quote")
    print(f"ratio reference / harness: {total:.1f}x (goal >= 10)")
    if glassless is not None:
        share = reference["glass_blur"] / sum(reference.values())
        print(f"ratio without glass_blur: {glassless:.1f}x "
              f"(glass_blur is {100 * share:.0f} % of the reference time)")
    busy = max(p1, p2) > 1.3 * min(p1, p2)
    goal("corruptions reference / harness", total, ">=", 10,
         note=f"{len(images)} images x {len(names)} corruptions x 5 severities, device "
              f"{args.device}" + ("; harness passes differ > 30 %: busy machine" if busy else ""))
    if glassless is not None:
        goal("corruptions reference / harness without glass_blur", glassless, "info",
             note=f"glass_blur is {100 * share:.0f} % of the reference time")
    if without_slowest is not None:
        goal(f"corruptions reference / harness without {slowest}", without_slowest, "info",
             note="the harness's own slowest corruption left out")
    goal("corruptions per-corruption ratio, median", ordered[len(ordered) // 2], "info",
         note=f"min {ordered[0]:.1f}x ({min(ratios, key=ratios.get)}), max {ordered[-1]:.1f}x "
              f"({max(ratios, key=ratios.get)}); {sum(r >= 10 for r in ordered)} of "
              f"{len(ordered)} at >= 10x")

if __name__ == "__main__":
    main()
