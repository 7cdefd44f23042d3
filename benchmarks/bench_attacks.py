#!/usr/bin/env python3
"""Native PGD against torchattacks' PGD and against a raw loop, and early stop against none.

Prints, on one model and one batch of the bundled sample, in one run:

* native PGD-10 vs torchattacks PGD-10 (same eps, step size 2.5 eps / 10, steps, random start):
  images/s and robust accuracy side by side (goal >= 1.2x at equal robust accuracy +-0.5 pp),
  and the same ratio with the native early stop off (the part of the gain that is not early
  stop);
* native PGD-10 without early stop vs a raw loop of 10 x (forward + backward + sign step +
  projection) on the same batch, same input layout (goal >= 0.9: native / raw throughput, the
  harness's own overhead);
* early stop vs none at --low-eps (8/255, low robust accuracy; goal >= 2x, same outcomes) and,
  the unflattering case, at --high-eps (1/255, high robust accuracy);
* where the time of one native call goes (random start, clean check, forward + backward, step,
  bookkeeping, final check), so that a missed goal says what to fix.

Timings are medians of --repeats after a warm-up of every contender. The contenders of one
comparison run interleaved (A B C, B C A, ...) so that a busy phase of the machine hits them all.
On a 2-core VM that other jobs share, two torch threads can be 10-100x slower than one (each op
waits for the descheduled thread): the load average is printed, and --threads 1 is the steadier
measurement there.

Usage: python benchmarks/bench_attacks.py [--n 500] [--model resnet8] [--repeats 3]
       [--eps 2/255] [--low-eps 8/255] [--high-eps 1/255] [--threads T]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _goals import goal

from attacks import parse_eps, pgd
from harness.data import load_sample
from models.zoo import create_model

STEPS = 10
# The module, not the function: ``attacks`` re-exports the function pgd under the module's name,
# so ``import attacks.pgd as m`` binds the function.
pgd_module = importlib.import_module("attacks.pgd")


def eps_arg(text: str) -> float:
    (value,) = parse_eps(text)
    return value


def interleaved(contenders: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per contender and each one's last output; one warm-up call each, then
    ``repeats`` rounds in rotating order."""
    names = list(contenders)
    out = {name: contenders[name]() for name in names}   # warm-up
    times = defaultdict(list)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            out[name] = contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(times[name]) for name in names}, out


def raw_loop(model, x, y, eps, alpha, steps, channels_last):
    """The floor: random start, then steps x (forward, backward, sign step, projection)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa


def robust_accuracy(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def time_parts(model, x, y, eps, ids, early_stop) -> dict[str, float]:
    """Seconds per part of one native call, by wrapping pgd()'s helpers with timers."""
    spent = defaultdict(float)
    originals = {}

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)
        originals[(owner, attr)] = fn

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0
        setattr(owner, attr, timed)

    runner = pgd_module._Runner
    wrap(pgd_module, "_random_start", "random start (per-example generators)")
    wrap(runner, "gradient", "forward + backward")
    wrap(runner, "step", "sign step + projection")
    wrap(runner, "success", "success check")
    wrap(runner, "predict", "final check (forward)")
    wrap(pgd_module._State, "mark", "bookkeeping (mark fooled)")
    try:
        t0 = time.perf_counter()
        pgd(model, x, y, eps=eps, steps=STEPS, example_ids=ids, early_stop=early_stop)
        total = time.perf_counter() - t0
    finally:
        for (owner, attr), fn in originals.items():
            setattr(owner, attr, fn)
    spent["rest (clean check, last forward, working-set gathers)"] = total - sum(spent.values())
    spent["total"] = total
    return dict(spent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eps", type=eps_arg, default=2 / 255, help="eps of the torchattacks and "
                    "raw-loop comparisons, e.g. 2/255 (default)")
    ap.add_argument("--low-eps", type=eps_arg, default=8 / 255,
                    help="eps with low robust accuracy for the early-stop goal (8/255)")
    ap.add_argument("--high-eps", type=eps_arg, default=1 / 255,
                    help="eps with high robust accuracy, the unflattering early-stop case")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchattacks

    s = load_sample()
    x = torch.from_numpy(s.images[:args.n]).float() / 255
    y = torch.from_numpy(s.labels[:args.n]).long()
    ids = s.indices[:args.n]
    model = create_model(args.model, pretrained=True).to(memory_format=torch.channels_last)
    eps = args.eps
    alpha = 2.5 * eps / STEPS
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {args.model} | n {len(x)} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load average "
          f"{load:.1f} | PGD-{STEPS}, eps {eps * 255:.3g}/255, alpha {alpha * 255:.3g}/255, "
          f"random start | median of {args.repeats}")

    def native(early_stop, e=eps):
        return pgd(model, x, y, eps=e, steps=STEPS, step_size=2.5 * e / STEPS, example_ids=ids,
                   seed=0, early_stop=early_stop)

    def torchattacks_pgd():
        torch.manual_seed(0)
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)(x, y)

    def raw():
        torch.manual_seed(0)
        return raw_loop(model, x, y, eps, alpha, STEPS, channels_last=True)

    t, out = interleaved({"native PGD (early stop)": lambda: native(True),
                          "native PGD (no early stop)": lambda: native(False),
                          "torchattacks PGD": torchattacks_pgd,
                          "raw loop (fwd + bwd + sign step)": raw}, args.repeats)
    acc = {"native PGD (early stop)": out["native PGD (early stop)"].robust_accuracy,
           "native PGD (no early stop)": out["native PGD (no early stop)"].robust_accuracy,
           "torchattacks PGD": robust_accuracy(model, out["torchattacks PGD"], y),
           "raw loop (fwd + bwd + sign step)": robust_accuracy(
               model, out["raw loop (fwd + bwd + sign step)"], y)}
    print(f"\n{'attack':36s} {'seconds':>8s} {'images/s':>9s} {'robust acc %':>13s}")
    for name in t:
        print(f"{name:36s} {t[name]:8.2f} {len(x) / t[name]:9.0f} {100 * acc[name]:13.2f}")

    def verdict(ok):
        return "PASS" if ok else "SHORT"

    print()
    ratio = t["torchattacks PGD"] / t["native PGD (early stop)"]
    gap = 100 * abs(acc["native PGD (early stop)"] - acc["torchattacks PGD"])
    print(f"native vs torchattacks PGD-10: {ratio:.2f}x (goal >= 1.2x), robust accuracy "
          f"{100 * acc['native PGD (early stop)']:.2f} vs {100 * acc['torchattacks PGD']:.2f} % "
          f"(|diff| {gap:.2f} pp, goal <= 0.5 pp): {verdict(ratio >= 1.2 and gap <= 0.5)}")
    print(f"  with native early stop off: {t['torchattacks PGD'] / t['native PGD (no early stop)']:.2f}x"
          " (the part of the gain that is not early stop)")
    limit = t["raw loop (fwd + bwd + sign step)"] / t["native PGD (no early stop)"]
    print(f"native PGD-10 (no early stop) vs raw loop: {limit:.2f} (native / raw throughput, "
          f"goal >= 0.9): {verdict(limit >= 0.9)}")
    setting = f"{args.model}, n {len(x)}, eps {eps * 255:.3g}/255"
    goal("native vs torchattacks PGD-10 throughput", ratio, ">=", 1.2, note=setting)
    goal("native vs torchattacks PGD-10 robust accuracy |diff|", gap, "<=", 0.5, unit="pp",
         note=setting)
    goal("native (early stop off) vs torchattacks PGD-10 throughput",
         t["torchattacks PGD"] / t["native PGD (no early stop)"], "info",
         note="the part of the gain that is not early stop")
    goal("native PGD-10 (no early stop) / raw loop throughput", limit, ">=", 0.9,
         note="the harness's own overhead")

    for label, e, target in (("low", args.low_eps, 2.0), ("high", args.high_eps, None)):
        te, oe = interleaved({"es": lambda e=e: native(True, e),
                              "none": lambda e=e: native(False, e)}, args.repeats)
        same = all(torch.equal(getattr(oe["es"], f), getattr(oe["none"], f))
                   for f in ("fooled", "iteration", "pred", "x_adv"))
        speedup = te["none"] / te["es"]
        line = (f"early stop vs none at eps {e * 255:.3g}/255 ({label} robust accuracy "
                f"{100 * oe['es'].robust_accuracy:.1f} %): {te['es']:.2f} s vs {te['none']:.2f} s,"
                f" {speedup:.2f}x, same outcomes: {same}")
        if target is not None:
            line += f" (goal >= {target:.0f}x): {verdict(speedup >= target and same)}"
        print(line)
        where = f"eps {e * 255:.3g}/255, robust accuracy {100 * oe['es'].robust_accuracy:.1f} %"
        if target is not None:
            goal(f"early stop vs none, {label} eps: speed-up", speedup, ">=", target, note=where)
            goal(f"early stop vs none, {label} eps: same outcomes", same, "==", True, unit="",
                 note=where)
        else:
            goal(f"early stop vs none, {label} eps: speed-up", speedup, "info",
                 note=f"{where}, the unflattering case; same outcomes: {same}")

    print("\nwhere one native call's time goes (no early stop / early stop, eps "
          f"{eps * 255:.3g}/255):")
    parts = {es: time_parts(model, x, y, eps, ids, es) for es in (False, True)}
    for part in parts[False]:
        a, b = parts[False][part], parts[True].get(part, 0.0)
        print(f"  {part:56s} {a:6.2f} s {100 * a / parts[False]['total']:5.1f} %"
              f"   {b:6.2f} s {100 * b / parts[True]['total']:5.1f} %")


if __name__ == "__main__":
    main()
