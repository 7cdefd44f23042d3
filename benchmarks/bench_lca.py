"""Energy vs iteration of cold-start LCA (1,000 iterations) and WARP-LCA (learned warm start)
on the bundled test sample, soft and hard threshold, with the dictionary and predictor of the
bundled ``warp-lca-resnet8``.

Prints, per threshold: the mean energy E = 1/2||s - Φa||² + λ·penalty at selected iterations,
the number of iterations each start needs to get within 5 % of LCA-1000's final energy (the
issue's goal for WARP-LCA: <= 20), final energies, ℓ0 (fraction of active units) and wall time
per batch for each configuration, all measured in this run.

    python benchmarks/bench_lca.py [--n 1000] [--batch-size 250] [--threads 2]

Measured on the 2-core dev machine (2026-11-29, bundled models, defaults; whitened dictionary
at its τ, see models/weights/lca-dictionary.json): soft threshold -- WARP-LCA within 5 % of
LCA-1000 (315.31) after 15 iterations (goal <= 20), cold LCA after 24; WARP-LCA-20 571 ms vs
cold LCA-100 2,687 ms per batch of 250 (4.7x). Hard threshold (predictor trained on
soft-threshold states) -- cold LCA within 5 % after 456 iterations, WARP-LCA not within 100,
though below cold LCA from iteration 3 on (613 vs 670 at 20). WARP-LCA's iteration-0 energy is
high (10,476): its predictor is trained as a start for 20 iterations (see
models/training/predictor.py), and 3 iterations bring it below cold LCA's. The earlier
unwhitened dictionary (coherent atoms: several times the ||Φ||² and τ) needed 47 WARP
iterations.
"""

from __future__ import annotations

import argparse
import time

import torch

import models
from harness.data import load_sample

CHECKPOINTS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def _first_within(curve: torch.Tensor, target: float) -> int | None:
    hits = (curve <= target).nonzero()
    return None if len(hits) == 0 else int(hits[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--cold-iterations", type=int, default=1000)
    parser.add_argument("--warp-iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = models.create_model("warp-lca-resnet8", pretrained=True)
    warp = model.front_end
    lca = warp.lca
    fe = model.meta.front_end
    ds = load_sample()
    x = torch.from_numpy(ds.images[: args.n]).float() / 255
    print(f"dictionary: {lca.features} atoms {lca.kernel_size}x{lca.kernel_size} stride "
          f"{lca.stride}, lambda {lca.lambda_}, tau {lca.tau}; {len(x)} sample images, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads; models evaluate cold LCA at "
          f"{fe['cold_iterations']} and WARP-LCA at {fe['iterations']} iterations")

    for kind in ("soft", "hard"):
        curves = {"cold": [], "warp": []}
        finals: dict[str, dict[str, list]] = {}
        times: dict[str, float] = {}
        with torch.inference_mode():
            for xb in x.split(args.batch_size):
                s = lca.prepare(xb)
                t0 = time.perf_counter()
                cold = lca.encode(s, iterations=args.cold_iterations, threshold=kind, trace=True)
                times["cold"] = times.get("cold", 0.0) + time.perf_counter() - t0
                t0 = time.perf_counter()
                w = warp.encode(s, iterations=args.warp_iterations, threshold=kind, trace=True)
                times["warp"] = times.get("warp", 0.0) + time.perf_counter() - t0
                for key, out in (("cold", cold), ("warp", w)):
                    curves[key].append(out.trace["energy"])
                    for term in ("energy", "l0", "recon_error"):
                        finals.setdefault(key, {}).setdefault(term, []).append(out.trace[term][-1])
                # wall time of the models' own settings (no trace)
                for key, coder, iters in (("cold@model", lca, fe["cold_iterations"]),
                                          ("warp@model", warp, fe["iterations"])):
                    t0 = time.perf_counter()
                    coder.encode(s, iterations=iters, threshold=kind)
                    times[key] = times.get(key, 0.0) + time.perf_counter() - t0
        nb = len(x.split(args.batch_size))
        cold_curve = torch.cat(curves["cold"], 1).mean(1)
        warp_curve = torch.cat(curves["warp"], 1).mean(1)
        target = 1.05 * cold_curve[-1].item()
        print(f"\n== {kind} threshold ==")
        print("iteration    " + "".join(f"{i:>10d}" for i in CHECKPOINTS))
        for key, curve in (("cold LCA", cold_curve), ("WARP-LCA", warp_curve)):
            print(f"{key:<13}" + "".join(f"{curve[i].item():>10.2f}" if i < len(curve) else f"{'':>10}"
                                         for i in CHECKPOINTS))
        k_warp = _first_within(warp_curve, target)
        k_cold = _first_within(cold_curve, target)
        def after(k, curve):
            return f"after {k} iterations" if k is not None else f"not within {len(curve) - 1}"

        print(f"within 5 % of LCA-{args.cold_iterations}'s final energy "
              f"({cold_curve[-1].item():.2f} -> target {target:.2f}): WARP-LCA "
              f"{after(k_warp, warp_curve)} (goal <= 20), cold LCA {after(k_cold, cold_curve)}")
        for key, label in (("cold", f"cold LCA-{args.cold_iterations}"),
                           ("warp", f"WARP-LCA-{args.warp_iterations}")):
            f = {t: torch.cat(v).mean().item() for t, v in finals[key].items()}
            print(f"{label:<16} final energy {f['energy']:9.2f}  recon {f['recon_error']:8.2f}  "
                  f"l0 {f['l0']:.4f}  {1000 * times[key] / nb:8.1f} ms/batch (traced)")
        print(f"model settings: cold LCA-{fe['cold_iterations']} "
              f"{1000 * times['cold@model'] / nb:.1f} ms/batch, WARP-LCA-{fe['iterations']} "
              f"{1000 * times['warp@model'] / nb:.1f} ms/batch -> "
              f"{times['cold@model'] / times['warp@model']:.1f}x faster")
        print(f"WARP-LCA at the model's {fe['iterations']} iterations: energy "
              f"{warp_curve[fe['iterations']].item():.2f} = "
              f"{warp_curve[fe['iterations']].item() / cold_curve[-1].item():.3f} x LCA-"
              f"{args.cold_iterations}; cold LCA-{fe['iterations']}: "
              f"{cold_curve[fe['iterations']].item() / cold_curve[-1].item():.3f} x; cold LCA-"
              f"{fe['cold_iterations']}: "
              f"{cold_curve[fe['cold_iterations']].item() / cold_curve[-1].item():.3f} x")


if __name__ == "__main__":
    main()
