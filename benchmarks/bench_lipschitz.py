#!/usr/bin/env python3
"""What each Lipschitz and sparsity estimator costs, per bundled model, on the bundled sample.

Prints, in one run, per model: seconds for the certified upper bound (once per model), and
seconds per example for a clean forward pass (the yardstick), the Jacobian power iteration
(``--power-iters``), the PGD pair search (``--pair-steps``), CLEVER (``--clever-batches`` x
``--clever-samples`` per class, one norm) and the sparsity hooks; then each estimator's cost
as a multiple of the clean forward, and the totals of the suite defaults over all models
with and without the slowest model (the LCA front ends dominate: 100 unrolled iterations).

Timings are medians of --repeats after a warm-up. On a 2-core VM that other jobs share, two
torch threads can be 10-100x slower than one for small batches: the load average is printed
and --threads 1 (the default) is the steadier measurement.

Usage: python benchmarks/bench_lipschitz.py [--n 16] [--models resnet8 lca-resnet8 ...]
       [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _goals import goal

from attacks.gradients import use_derivative
from harness.data import load_sample
from harness.suites.lipschitz import LipschitzSuite
from metrics.clever import clever
from metrics.lipschitz import ascend_pairs, jacobian_norms, upper_bound
from metrics.sparsity import activation_sparsity
from models.zoo import create_model, list_models

DEFAULTS = {o.name: o.default for o in LipschitzSuite.options}


def median_time(fn, repeats: int) -> float:
    fn()                                                    # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, x: torch.Tensor, args) -> tuple[float, ...]:
    """(upper s, then s per example: forward, Jacobian, pairs, CLEVER (one norm), sparsity)."""
    model = create_model(name, pretrained=True).eval()

    def grad():
        return use_derivative(model)

    t_upper = median_time(lambda: upper_bound(model, x[:1]), 1)
    with torch.inference_mode():
        t_fwd = median_time(lambda: model(x), args.repeats) / len(x)
    t_jac = median_time(lambda: jacobian_norms(model, x, iters=args.power_iters, gradient=grad),
                        args.repeats) / len(x)
    t_pair = median_time(lambda: ascend_pairs(model, x, steps=args.pair_steps, gradient=grad),
                         args.repeats) / len(x)
    t_clever = median_time(lambda: clever(model, x[:1], norm="L2", n_batches=args.clever_batches,
                                          batch_size=args.clever_samples, gradient=grad), 1)
    t_sparse = median_time(lambda: activation_sparsity(model, x), args.repeats) / len(x)
    return t_upper, t_fwd, t_jac, t_pair, t_clever, t_sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="examples per timing")
    parser.add_argument("--models", nargs="*", default=None, help="default: every bundled model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--power-iters", type=int, default=DEFAULTS["power_iters"])
    parser.add_argument("--pair-steps", type=int, default=DEFAULTS["pair_steps"])
    parser.add_argument("--clever-batches", type=int, default=DEFAULTS["clever_batches"])
    parser.add_argument("--clever-samples", type=int, default=DEFAULTS["clever_samples"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or list_models(pretrained=True)
    data = load_sample()
    x = torch.from_numpy(data.images[:args.n]).float().div(255)
    print(f"load average {os.getloadavg()[0]:.2f} | torch threads {torch.get_num_threads()} | "
          f"n = {args.n} | repeats {args.repeats} | power iterations {args.power_iters}, pair "
          f"steps {args.pair_steps}, CLEVER {args.clever_batches} x {args.clever_samples}")
    header = (f"{'model':26s} {'upper s':>8s} {'fwd ms/ex':>9s} {'jac ms/ex':>9s} "
              f"{'pair ms/ex':>10s} {'CLEVER s/ex':>11s} {'sparsity ms/ex':>14s}   "
              f"x forward: jac / pair / CLEVER / sparsity")
    print(header)
    per_model = {}
    for name in names:
        t_upper, t_fwd, t_jac, t_pair, t_clever, t_sparse = measure(name, x, args)
        per_model[name] = (t_upper, t_jac, t_pair, t_clever)
        print(f"{name:26s} {t_upper:8.2f} {1e3 * t_fwd:9.2f} {1e3 * t_jac:9.1f} "
              f"{1e3 * t_pair:10.1f} {t_clever:11.2f} {1e3 * t_sparse:14.2f}   "
              f"{t_jac / t_fwd:6.0f} / {t_pair / t_fwd:4.0f} / {t_clever / t_fwd:7.0f} / "
              f"{t_sparse / t_fwd:4.1f}")
    n, k = 100, DEFAULTS["clever_n"]          # the suite's defaults: n = 100, CLEVER on k, 2 norms
    total = {m: u + n * (j + p) + 2 * k * c for m, (u, j, p, c) in per_model.items()}
    slowest = max(total, key=total.get)
    print(f"suite defaults (n = {n}, CLEVER on {k}, l2 + Linf), estimated: all models "
          f"{sum(total.values()):.0f} s; without the slowest ({slowest}, {total[slowest]:.0f} s) "
          f"{sum(total.values()) - total[slowest]:.0f} s")
    # No goal in the docstring: the totals are printed for the table, without a verdict.
    setting = f"n = {n}, CLEVER on {k}, l2 + Linf, {len(total)} models, estimated from n = {args.n}"
    goal("lipschitz suite defaults, all models", sum(total.values()), "info", unit="s", note=setting)
    goal("lipschitz suite defaults, without the slowest model",
         sum(total.values()) - total[slowest], "info", unit="s",
         note=f"{setting}; slowest {slowest} ({total[slowest]:.0f} s)")


if __name__ == "__main__":
    main()
