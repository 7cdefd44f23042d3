#!/usr/bin/env python3
"""Corruption generation: the harness's batched torch corruptions vs the per-image reference.

Both sides corrupt the bundled 1,000-image sample at every (corruption, severity) of the
15 x 5 benchmark sets, in one process: harness, reference, harness again (the harness time is
the mean of its two passes, so slow phases of the VM hit both sides). The reference is
tests/reference/cifar_c_ref.py: make_cifar_c.py's recipe one image at a time with numpy, scipy,
scikit-image, OpenCV and PIL (needs the dev extra). Frost needs the photographs for the
reference: pass --frost-dir (the folder with frost1.png ... frost5.jpg of hendrycks/robustness);
without it frost is left out on both sides. Prints per-corruption times and the overall ratio
reference / harness (goal >= 10).

Usage: python benchmarks/bench_corruptions.py [--n N] [--threads T] [--frost-dir DIR]
       [--corruptions a,b,...] [--device cpu|cuda]
Measured 2026-11-29 on the 2-vCPU dev VM (torch 2.14.1, CPU, 2 threads, with --frost-dir):
10.5x (4.45 s vs 46.89 s) and 10.9x (4.07 s vs 44.44 s); per-example Poisson draws of
shot_noise (~0.65 s) are the largest harness share, glass_blur's per-pixel loop (~26 s) the
reference's.
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

from harness.corruptions import corrupt, list_corruptions  # noqa: E402
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
    names = args.corruptions.split(",") if args.corruptions else list_corruptions()
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
    print(f"{'corruption':18s} {'harness s':>10s} {'reference s':>12s} {'ratio':>7s}")
    for name in names:
        h = (first[name] + second[name]) / 2
        print(f"{name:18s} {h:10.2f} {reference[name]:12.2f} {reference[name] / h:7.1f}")
    h_total = (sum(first.values()) + sum(second.values())) / 2
    r_total = sum(reference.values())
    print(f"{'total':18s} {h_total:10.2f} {r_total:12.2f} {r_total / h_total:7.1f}")
    print(f"harness passes: {sum(first.values()):.2f} s and {sum(second.values()):.2f} s")
    print(f"ratio reference / harness: {r_total / h_total:.1f}x (goal >= 10)")


if __name__ == "__main__":
    main()
