#!/usr/bin/env python3
"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/RESULTS.md``.

The benchmarks are discovered (a new ``bench_*.py`` is not forgotten: one missing from the size
table below runs with its own defaults) and each runs as a subprocess of this interpreter, with
a timeout, its output streamed here and captured. Every benchmark prints one ``GOAL`` line per
goal (``benchmarks/_goals.py``); RESULTS.md holds the date (UTC), the machine (CPU, cores,
memory, OS, Python, torch, git commit and whether the tree is dirty, load average before and
after), per benchmark a table of measurement, value, goal and pass/short (``info`` rows are the
sceptic's numbers, without a verdict), its wall time, exact command line and exit status (a
failed or timed-out benchmark is listed as such), a summary line (N pass, M short, K failed),
and, collapsed at the end, every benchmark's full output. RESULTS.md is rewritten after each
benchmark, so an interrupted run leaves what it has.

Sizes (``SIZES``; the issue's budget is 20-30 minutes on the 2-core dev VM, estimates from the
benchmarks' docstrings and from timed runs of smaller sizes on that VM, 2026-12-03):

* attacks: defaults (n 500, repeats 3) with ``--threads 1``, the steadier measurement on a
  shared 2-core VM (its docstring); ~3 min.
* clean: defaults (all of $HARNESS_DATA's test split, else the 1,000-image sample; 8 rounds)
  with ``--threads 1``, as attacks (its docstring: steadier); under 1 min on the sample, ~2 min
  on 10,000 images.
* corruptions: defaults (1,000 images x 14 corruptions x 5 severities; no frost photographs);
  ~1.5 min.
* deepspline: defaults (256 x 16 x 32 x 32, 10 repeats); under 1 min.
* lca: ``--n 250 --repeats 2`` (one batch of 250, still LCA-1000 as the target) instead of
  n 1000, repeats 3 (25 minutes); ~5 min.
* lipschitz: ``--n 8 --repeats 2`` instead of n 16, repeats 3 (lca-resnet8 alone is ~3 min of
  CLEVER, which does not depend on n); CLEVER and the other estimators at the suite defaults,
  so the estimated suite totals keep their meaning; ~6 min.
* ray: the main job's default models and 15 x 5 sets at ``--n 200`` (the main job's 500 would
  take 20 minutes at six runs), ``--repeats 2``: local, ray and local on one torch thread,
  twice each in ABBA order after an untimed warm-up, and Ray's start-up; ~10 min.

Total: about 30 minutes on a quiet 2-core VM; a busy one can take twice that (each timeout is
about three times its estimate). ``--quick`` runs tiny sizes, a smoke check that every
benchmark runs and prints its GOAL lines (1 min 41 s on the VM at load average 2-3); its
numbers are not measurements.

Usage: python benchmarks/run_all.py [--only NAME[,NAME]] [--quick] [--out PATH]
Exit status 0 when every benchmark ran (pass or short), 1 when any failed or timed out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _goals import parse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Size:
    args: tuple[str, ...]
    timeout_s: int
    why: str


# name (bench_<name>.py) -> (full, quick) sizes.
SIZES: dict[str, tuple[Size, Size]] = {
    "attacks": (Size(("--threads", "1"), 900, "defaults (n 500, repeats 3), 1 thread: steadier "
                     "on a shared 2-core VM (docstring)"),
                Size(("--n", "50", "--repeats", "1", "--threads", "1"), 300, "smoke")),
    "clean": (Size(("--threads", "1"), 600, "defaults ($HARNESS_DATA's test split, else the "
                   "bundled sample; 8 rounds), 1 thread: steadier (docstring)"),
              Size(("--n", "500", "--rounds", "2", "--threads", "1"), 300, "smoke")),
    "corruptions": (Size((), 900, "defaults (1,000 images x 14 corruptions x 5 severities, "
                         "no frost photographs)"),
                    Size(("--n", "50", "--corruptions", "fog,glass_blur,gaussian_noise",
                          "--threads", "1"), 300, "smoke")),
    "deepspline": (Size((), 600, "defaults (256 x 16 x 32 x 32, 10 repeats)"),
                   Size(("--batch", "8", "--repeats", "2"), 300, "smoke")),
    "lca": (Size(("--n", "250", "--repeats", "2"), 1800, "one batch of 250 (LCA-1000 target "
                  "kept), best of 2: the defaults take 25 min"),
            Size(("--n", "50", "--batch-size", "50", "--cold-iterations", "300",
                  "--warp-iterations", "40", "--repeats", "1"), 300,
                 "smoke (LCA-300 target: not the goal's setting)")),
    "lipschitz": (Size(("--n", "8", "--repeats", "2"), 1800, "8 examples, median of 2, suite-"
                        "default estimator settings (lca-resnet8's CLEVER alone is ~3 min): "
                        "the defaults (n 16, repeats 3) take ~9 min"),
                  Size(("--models", "resnet8", "resnet8-gelu", "--n", "2", "--repeats", "1"), 300,
                       "smoke (2 models)")),
    "ray": (Size(("--n", "200", "--repeats", "2"), 3000,
                 "the main job's models and 15 x 5 sets at n 200; local, ray and local on one "
                 "torch thread, twice each (ABBA), after a warm-up"),
            Size(("--n", "50", "--corruptions", "fog", "--severities", "1", "--no-one-thread"),
                 300, "smoke (one set of 50 images)")),
}
UNKNOWN = (Size((), 1800, "not in run_all's size table: its defaults"),
           Size((), 600, "not in run_all's size table: its defaults"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Result:
    name: str
    command: list[str]
    size: Size
    status: str = "not run"              # ok | failed | timed out | not run
    returncode: int | None = None
    wall_s: float = 0.0
    output: str = ""
    goals: list[dict[str, str]] = field(default_factory=list)


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _run(cmd: list[str], **kw) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    memory = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    os_name = platform.platform()
    try:
        pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        if pretty:
            os_name = f"{pretty.group(1)} ({os_name})"
    except OSError:
        pass
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    commit = _run(["git", "rev-parse", "HEAD"], cwd=ROOT) or "unknown"
    changed = [line for line in _run(["git", "status", "--porcelain"], cwd=ROOT).splitlines()
               if line.strip()]
    dirty = f"dirty ({len(changed)} paths changed or untracked)" if changed else "clean"
    return {"CPU": cpu, "cores": str(os.cpu_count()), "memory": memory, "OS": os_name,
            "Python": f"{platform.python_version()} ({sys.executable})", "torch": torch,
            "git commit": f"{commit} (tree {dirty})",
            "HARNESS_DATA": os.environ.get("HARNESS_DATA") or "(unset: the bundled sample)"}


def run_one(name: str, size: Size, *, echo: bool = True) -> Result:
    """Run bench_<name>.py with ``size``; stream its output and keep it."""
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *size.args]
    res = Result(name, cmd, size)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env=env, start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        res.returncode = proc.wait(timeout=size.timeout_s)
        res.status = "ok" if res.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)          # the benchmark and what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        res.returncode, res.status = proc.returncode, "timed out"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)          # Ctrl-C: leave nothing running
        proc.wait()
        raise
    reader.join(timeout=30)
    res.wall_s = time.perf_counter() - t0
    res.output = ANSI.sub("", "".join(lines))
    res.goals = parse(res.output)
    return res


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _goal_text(g: dict[str, str]) -> str:
    if g["op"] == "info":
        return "(info)"
    return f"{g['op']} {_with_unit(g['target'], g['unit'])}"


def _with_unit(number: str, unit: str) -> str:
    if unit in ("", "-") or number in ("none", "nan", "true", "false"):
        return number
    return number + ("x" if unit == "x" else f" {unit}")


def _value_text(g: dict[str, str]) -> str:
    return _with_unit(g["value"], g["unit"])


def counts(results: list[Result]) -> tuple[int, int, int, int]:
    goals = [g for r in results for g in r.goals]
    return (sum(g["status"] == "pass" for g in goals), sum(g["status"] == "short" for g in goals),
            sum(r.status in ("failed", "timed out") for r in results),
            sum(g["status"] == "info" for g in goals))


def render(results: list[Result], *, started: dt.datetime, info: dict[str, str], load_before: str,
           load_after: str | None, quick: bool, pending: list[str]) -> str:
    n_pass, n_short, n_failed, n_info = counts(results)
    ran = [r for r in results if r.status != "not run"]
    total_s = sum(r.wall_s for r in ran)
    out = ["# Benchmark results", ""]
    out.append(f"Written by `python benchmarks/run_all.py{' --quick' if quick else ''}`, started "
               f"{started:%Y-%m-%d %H:%M} UTC; {len(ran)} benchmarks, {total_s / 60:.1f} min of "
               "benchmark wall time." + (" **Quick sizes: a smoke check, not measurements.**"
                                         if quick else ""))
    if pending:
        out.append(f"\n**In progress**: still to run: {', '.join(pending)}.")
    out += ["", f"**Summary: {n_pass} pass, {n_short} short, {n_failed} failed** "
            f"({n_info} info rows; pass/short count goals, failed counts benchmarks that did "
            "not finish).", ""]
    out += ["## Machine", "", "| | |", "|---|---|", f"| date (UTC) | {started:%Y-%m-%d %H:%M:%S} |"]
    out += [f"| {k} | {_cell(v)} |" for k, v in info.items()]
    out += [f"| load average before | {load_before} |",
            f"| load average after | {load_after or '(running)'} |", ""]
    out += ["## Results", "",
            "Each benchmark's GOAL lines (`benchmarks/_goals.py`). *info* rows are numbers for the "
            "sceptic (the ratio without the most flattering case, and the like): no verdict.", ""]
    for r in ran:
        verdicts = [g["status"] for g in r.goals]
        head = {"ok": "ran", "failed": f"FAILED (exit status {r.returncode})",
                "timed out": f"TIMED OUT after {r.size.timeout_s} s"}[r.status]
        out += [f"### {r.name}: {head}, {verdicts.count('pass')} pass, "
                f"{verdicts.count('short')} short", "",
                f"`{shlex.join(_relative(r.command))}`  ",
                f"wall time {r.wall_s:.1f} s, exit status {r.returncode}; size: {r.size.why}", ""]
        if r.goals:
            out += ["| measurement | value | goal | result | note |", "|---|---|---|---|---|"]
            for g in r.goals:
                result = {"pass": "pass", "short": "**short**", "info": "info"}.get(g["status"],
                                                                                   g["status"])
                out.append(f"| {_cell(g['name'])} | {_cell(_value_text(g))} | {_cell(_goal_text(g))}"
                           f" | {result} | {_cell(g['note'])} |")
        else:
            out.append("No GOAL lines" + (" (the output's tail is below)." if r.status != "ok"
                                          else "."))
        if r.status != "ok":
            tail = r.output.rstrip().splitlines()[-15:] or ["(no output)"]
            out += ["", "```text", *tail, "```"]
        out.append("")
    out += ["## Sizes", "", "| benchmark | arguments | timeout | why |", "|---|---|---|---|"]
    for r in results:
        out.append(f"| {r.name} | `{shlex.join(r.size.args) or '(defaults)'}` | {r.size.timeout_s} s "
                   f"| {_cell(r.size.why)} |")
    out += ["", "## Raw output", ""]
    for r in ran:
        out += ["<details>", f"<summary>{r.name} ({r.status}, {r.wall_s:.1f} s)</summary>", "",
                "````text", r.output.rstrip() or "(no output)", "````", "", "</details>", ""]
    return "\n".join(out)


def _relative(cmd: list[str]) -> list[str]:
    """The command as typed from the repository root (``python benchmarks/bench_x.py ...``)."""
    script = Path(cmd[1])
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return ["python", str(script), *cmd[2:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated names (attacks or bench_attacks)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    names = discover()
    if args.only:
        wanted = [w.strip().removeprefix("bench_").removesuffix(".py")
                  for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            ap.error(f"no benchmark named {', '.join(unknown)} (have: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    sizes = {n: SIZES.get(n, UNKNOWN)[1 if args.quick else 0] for n in names}
    for n in names:
        if n not in SIZES:
            print(f"note: bench_{n}.py is not in run_all's size table: it runs with its defaults")

    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    load_before = load_average()
    results = [Result(n, [sys.executable, str(HERE / f"bench_{n}.py"), *sizes[n].args], sizes[n])
               for n in names]
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(pending: list[str], load_after: str | None) -> None:
        text = render(results, started=started, info=info, load_before=load_before,
                      load_after=load_after, quick=args.quick, pending=pending)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)

    for i, n in enumerate(names):
        print(f"== bench_{n}.py ({sizes[n].why}; timeout {sizes[n].timeout_s} s)", flush=True)
        results[i] = run_one(n, sizes[n])
        r = results[i]
        print(f"== bench_{n}.py: {r.status} (exit status {r.returncode}) in {r.wall_s:.1f} s, "
              f"{len(r.goals)} GOAL lines", flush=True)
        write(names[i + 1:], None)
    write([], load_average())
    n_pass, n_short, n_failed, n_info = counts(results)
    print(f"{n_pass} pass, {n_short} short, {n_failed} failed ({n_info} info) -> {args.out}")
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
