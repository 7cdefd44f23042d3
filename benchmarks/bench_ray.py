#!/usr/bin/env python3
"""Ray overhead: the same cifar10c job through ``--executor local`` and ``--executor ray``.

Runs ``python -m harness run --suite cifar10c --quiet`` as a subprocess once per executor, each
into a fresh ``--store`` in a temporary folder, and times each whole command (interpreter start,
imports, model loading, Ray's start and shutdown on the Ray side, evaluation, store writes).
Default job: the main job, i.e. the registry's default models (no ``--model``) and the suite's
default n on the bundled sample (no ``--n``), all 15 corruptions x 5 severities. Order: local,
ray; with ``--repeats 2``: local, ray, ray, local (ABBA, so a slow drift of a shared machine hits
both), and per-executor medians. Then it checks that every store holds the same per-example
records as the first local one (``Store.to_frame()``, sorted by run_id, shard_key and example,
compared exactly; a difference is a failure: exit status 1), and prints:

* the ratio ray / local of the wall times (goal <= 1.3: on a 2-core machine Ray cannot win,
  it can only cost; the goal bounds what it costs);
* for the sceptic, the local run once more on one torch thread (``OMP_NUM_THREADS=1``, as
  Ray's tasks run) and Ray's ratio against that (info);
* Ray's own start-up cost, ``ray.init(num_cpus=<cores>, include_dashboard=False)``
  + ``ray.shutdown()`` timed in a separate subprocess (``RAY_AUTH_MODE=disabled``, as the
  harness sets it; ``<cores>`` = os.cpu_count(), the size of the local cluster ``harness run``
  starts), and the ratio with that start-up subtracted from the Ray side (info).

``--against local`` runs the local executor on both sides (a smoke check of the timing and the
store comparison, e.g. with a ``harness`` whose ``run`` has no ``--executor`` flag yet).

Usage: python benchmarks/bench_ray.py [--model M ...] [--n N] [--corruptions NAMES]
       [--severities LIST] [--repeats R] [--against ray|local] [--address ADDR] [--timeout S]

Measured 2026-12-03 on the 2-core dev VM (torch 2.14.1, Ray 2.60.0, CPU), while another job's
tests ran on it (load average 2-3), so only the shape of the numbers: one set of 50 images
(``--n 50 --corruptions fog --severities 1``): local 2.7-4.4 s, ray 9.7-15.1 s, 3.4-3.6x (Ray's
start-up alone is 5.2-5.5 s, so a job this small only measures it); 15 sets at severity 3 of
100 images (``--n 100 --severities 3 --repeats 2``): local 36.6 / 43.9 s, ray 28.9 / 28.0 s,
0.71x, start-up 4.3 s; records identical in every run. The main job (the defaults) takes an
estimated 3-4 minutes per executor on a quiet VM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _goals import goal

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.3

RAY_STARTUP = """
import os, time
import ray
t0 = time.perf_counter()
ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
t1 = time.perf_counter()
ray.shutdown()
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def has_executor_flag() -> bool:
    """Whether this checkout's ``harness run`` takes ``--executor``."""
    out = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    return "--executor" in out.stdout


def harness_command(executor: str, store: Path, args, with_flag: bool) -> list[str]:
    cmd = [sys.executable, "-m", "harness", "run", "--suite", "cifar10c", "--quiet",
           "--store", str(store)]
    if with_flag:
        cmd += ["--executor", executor]
        if executor == "ray" and args.address:
            cmd += ["--address", args.address]
    if args.model:
        cmd += ["--model", *args.model]
    for flag, value in (("--n", args.n), ("--corruptions", args.corruptions),
                        ("--severities", args.severities)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def timed_run(cmd: list[str], timeout: float | None, env: dict | None = None
              ) -> tuple[float, str]:
    """Wall seconds of ``cmd`` and its stdout; exits (status 1) when it fails."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(f"command failed (exit status {out.returncode}): {' '.join(cmd)}")
        print("\n".join((out.stdout + out.stderr).splitlines()[-30:]))
        sys.exit(1)
    return wall, out.stdout


def ray_startup(timeout: float | None) -> tuple[float, float]:
    """(ray.init seconds, ray.shutdown seconds) in a fresh interpreter."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", RAY_STARTUP], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        print("Ray start-up measurement failed:\n" + "\n".join(out.stderr.splitlines()[-20:]))
        sys.exit(1)
    init_s, shutdown_s = map(float, out.stdout.split()[-2:])
    return init_s, shutdown_s


def records(path: Path):
    """The store's per-example records in a canonical order."""
    from harness.store import Store

    store = Store(path, readonly=True)
    try:
        df = store.to_frame()
    finally:
        store.close()
    return df.sort_values(["run_id", "shard_key", "example"], kind="stable").reset_index(drop=True)


def same_records(reference, other) -> str | None:
    """None when equal, else what differs."""
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(reference, other, check_exact=True)
    except AssertionError as exc:
        return " ".join(str(exc).split())[:500]
    return None


def summary_line(stdout: str) -> str:
    """The harness's own 'wall time ...' line, if it printed one."""
    for line in stdout.splitlines():
        if line.strip().startswith("wall time"):
            return line.strip()
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=None,
                    help="models (default: the registry's default set, as the main job)")
    ap.add_argument("--n", type=int, default=None,
                    help="examples per set (default: the suite's, as the main job)")
    ap.add_argument("--corruptions", default=None, help="default: the suite's (the 15)")
    ap.add_argument("--severities", default=None, help="default: the suite's (1-5)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per executor, in ABBA order (local, ray, ray, local, ...)")
    ap.add_argument("--against", default="ray", choices=("ray", "local"),
                    help="the executor compared with local (local: a smoke check)")
    ap.add_argument("--address", default=None, help="--address passed to the Ray side")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per harness run")
    ap.add_argument("--no-one-thread", action="store_true",
                    help="skip the extra local run on one torch thread (OMP_NUM_THREADS=1)")
    args = ap.parse_args()

    with_flag = has_executor_flag()
    if not with_flag and args.against != "local":
        print("this checkout's `harness run` has no --executor flag: nothing to compare "
              "(--against local runs the smoke check)")
        sys.exit(2)
    sides = ("local", args.against)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"cifar10c job: models {' '.join(args.model) if args.model else '(default set)'} | "
          f"n {args.n or '(suite default)'} | corruptions {args.corruptions or '(default)'} | "
          f"severities {args.severities or '(default)'} | {os.cpu_count()} CPUs | load average "
          f"{load[0]:.2f} | repeats {args.repeats} | local vs {args.against}")

    times: dict[str, list[float]] = {"local": [], args.against: []}
    frames = []
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        for r in range(args.repeats):
            for i, side in enumerate(sides if r % 2 == 0 else sides[::-1]):
                store = Path(tmp) / f"{r}-{i}-{side}.sqlite"
                cmd = harness_command(side, store, args, with_flag)
                if r == 0 and i == 0:
                    print("command: " + " ".join(cmd))
                wall, stdout = timed_run(cmd, args.timeout)
                times[side].append(wall)
                frames.append((f"{side} (run {r + 1})", records(store)))
                print(f"run {r + 1} {side:>5}: {wall:8.2f} s   {summary_line(stdout)}", flush=True)

        # The sceptic's question: Ray's tasks run torch on one thread each (Ray sets
        # OMP_NUM_THREADS=1), the local run on all cores. On a shared 2-core VM two torch
        # threads can be much slower than one, so also time local on one thread.
        one_thread = None
        if args.against == "ray" and not args.no_one_thread:
            store = Path(tmp) / "local-1-thread.sqlite"
            wall, stdout = timed_run(harness_command("local", store, args, with_flag),
                                     args.timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
            one_thread = wall
            frames.append(("local, 1 thread", records(store)))
            print(f"local, 1 torch thread: {wall:8.2f} s   {summary_line(stdout)}", flush=True)

    ref_label, ref = frames[0]
    diffs = [(label, same_records(ref, df)) for label, df in frames[1:]]
    identical = len(ref) > 0 and all(d is None for _, d in diffs)
    print(f"records: {len(ref)} per-example rows in {ref['run_id'].nunique() if len(ref) else 0} "
          f"runs per store; identical to {ref_label}: "
          + ", ".join(f"{label} {'yes' if d is None else 'NO'}" for label, d in diffs))
    for label, d in diffs:
        if d is not None:
            print(f"  {label} differs: {d}")

    local = statistics.median(times["local"])
    other = statistics.median(times[args.against])
    ratio = other / local
    print(f"median wall time: local {local:.2f} s, {args.against} {other:.2f} s -> "
          f"ratio {args.against}/local {ratio:.3f} (goal <= {GOAL})")
    init_s, shutdown_s = ray_startup(args.timeout)
    startup = init_s + shutdown_s
    net = (other - startup) / local
    print(f"Ray start-up (separate process): ray.init {init_s:.2f} s + ray.shutdown "
          f"{shutdown_s:.2f} s = {startup:.2f} s"
          + (f"; ratio without it {net:.3f}" if args.against == "ray" else ""))

    job = (f"cifar10c, {'default models' if not args.model else ' '.join(args.model)}, "
           f"n {args.n or 'default'}, median of {args.repeats}, {os.cpu_count()} CPUs")
    goal(f"records identical, local vs {args.against}", identical, "==", True, unit="",
         note=f"{len(ref)} per-example rows per store, compared exactly")
    goal(f"cifar10c wall time {args.against} / local", ratio, "<=", GOAL,
         note=f"{job}; local {local:.1f} s, {args.against} {other:.1f} s"
              + ("" if args.against == "ray" else "; smoke check, no Ray"))
    goal("Ray start-up, ray.init + ray.shutdown", startup, "info", unit="s",
         note=f"separate process, num_cpus {os.cpu_count()}")
    if args.against == "ray":
        goal("cifar10c wall time (ray - Ray start-up) / local", net, "info",
             note="the ratio without Ray's fixed start-up cost")
    if one_thread is not None:
        goal("cifar10c wall time ray / local with 1 torch thread", other / one_thread, "info",
             note=f"local on one thread {one_thread:.1f} s (Ray's tasks get one thread each)")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
