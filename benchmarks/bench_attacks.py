"""Native PGD against torchattacks' PGD and against a raw loop, and early stop against none.

Prints, on one model and one batch, in one run (median of ``--repeats`` timings each, after a
warm-up):

* native PGD-10 vs torchattacks PGD-10 (same eps, step size, steps, random start): images/s and
  robust accuracy side by side (goal >= 1.2x at equal robust accuracy +-0.5 pp), and the same
  with the native early stop off (how much of the gain is early stop);
* native PGD-10 without early stop vs a raw loop of 10 x (forward + backward + sign step +
  projection) on the same batch (goal >= 0.9: the harness's overhead);
* early stop vs none at an eps where robust accuracy is low (goal >= 2x) and, the unflattering
  case, where it is high.

    python benchmarks/bench_attacks.py [--n 500] [--model resnet8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from attacks import pgd
from harness.data import load_sample
from models.zoo import create_model


def timed(fn, repeats):
    fn()   # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def raw_loop(model, x, y, eps, alpha, steps):
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return xa


def accuracy(model, x_adv, y):
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--model", default="resnet8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eps", type=float, default=2 / 255, help="eps of the torchattacks and "
                    "raw-loop comparisons (default 2/255)")
    ap.add_argument("--low-eps", type=float, default=8 / 255, help="eps with low robust accuracy "
                    "for the early-stop comparison")
    ap.add_argument("--high-eps", type=float, default=1 / 255, help="eps with high robust "
                    "accuracy (the unflattering early-stop case)")
    args = ap.parse_args()
    import torchattacks

    s = load_sample()
    x = torch.from_numpy(s.images[:args.n]).float() / 255
    y = torch.from_numpy(s.labels[:args.n])
    ids = s.indices[:args.n]
    model = create_model(args.model, pretrained=True)
    model = model.to(memory_format=torch.channels_last)
    eps, steps = args.eps, 10
    alpha = 2.5 * eps / steps
    print(f"model {args.model} | n {args.n} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | PGD-{steps}, eps {eps * 255:.3g}/255, "
          f"alpha {alpha * 255:.3g}/255 | median of {args.repeats}")

    def native(es, e=eps):
        return pgd(model, x, y, eps=e, steps=steps, step_size=2.5 * e / steps, example_ids=ids,
                   early_stop=es)

    def ta_pgd():
        torch.manual_seed(0)
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)

    t_nat, r_nat = timed(lambda: native(True), args.repeats)
    t_nat_full, r_nat_full = timed(lambda: native(False), args.repeats)
    t_ta, adv_ta = timed(ta_pgd, args.repeats)
    torch.manual_seed(0)
    t_raw, adv_raw = timed(lambda: raw_loop(model, x, y, eps, alpha, steps), args.repeats)
    acc_ta, acc_raw = accuracy(model, adv_ta, y), accuracy(model, adv_raw, y)
    rows = [("native PGD (early stop)", t_nat, r_nat.robust_accuracy),
            ("native PGD (no early stop)", t_nat_full, r_nat_full.robust_accuracy),
            ("torchattacks PGD", t_ta, acc_ta),
            ("raw loop (fwd + bwd + sign step)", t_raw, acc_raw)]
    print(f"\n{'attack':36s} {'seconds':>8s} {'images/s':>9s} {'robust acc %':>13s}")
    for name, t, acc in rows:
        print(f"{name:36s} {t:8.2f} {args.n / t:9.0f} {100 * acc:13.2f}")

    def verdict(ok):
        return "PASS" if ok else "SHORT"

    print()
    ratio = t_ta / t_nat
    gap = abs(r_nat.robust_accuracy - acc_ta) * 100
    print(f"native vs torchattacks PGD-10: {ratio:.2f}x (goal >= 1.2x), robust accuracy "
          f"{100 * r_nat.robust_accuracy:.2f} vs {100 * acc_ta:.2f} % (|diff| {gap:.2f} pp, goal "
          f"<= 0.5 pp): {verdict(ratio >= 1.2 and gap <= 0.5)}")
    print(f"  without early stop: {t_ta / t_nat_full:.2f}x (the part of the gain that is not "
          "early stop)")
    limit = t_raw / t_nat_full
    print(f"native PGD-10 (no early stop) vs raw loop: {limit:.2f} (goal >= 0.9): "
          f"{verdict(limit >= 0.9)}")
    for label, e, goal in (("low", args.low_eps, 2.0), ("high", args.high_eps, None)):
        t_es, r_es = timed(lambda e=e: native(True, e), args.repeats)
        t_no, r_no = timed(lambda e=e: native(False, e), args.repeats)
        same = torch.equal(r_es.fooled, r_no.fooled)
        line = (f"early stop vs none at eps {e * 255:.3g}/255 ({label} robust accuracy "
                f"{100 * r_es.robust_accuracy:.1f} %): {t_no / t_es:.2f}x, same outcomes: {same}")
        if goal is not None:
            line += f" (goal >= {goal:.0f}x): {verdict(t_no / t_es >= goal and same)}"
        print(line)


if __name__ == "__main__":
    main()
