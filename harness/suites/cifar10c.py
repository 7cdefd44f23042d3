"""Suite ``cifar10c``: accuracy under the CIFAR-10-C corruptions, per example.

Conditions are (corruption, severity, source) with ``source`` ``released`` (the published .npy
files) or ``generated`` (the harness's corruptions of the clean test images, seeded per
example), plus the clean images as severity 0 when they are available, so relative mCE needs
no other run. Each (condition, example range) is a shard, so runs resume per
(corruption, severity, shard).

Headline numbers (:meth:`Cifar10CSuite.headline`): the mean accuracy over the 15 benchmark
corruptions x 5 severities (RobustBench's number), the per-severity means, and the extras'
mean shown separately. :func:`mce` gives mCE and relative mCE against a baseline run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from harness.data import load_cifar10c
from harness.errors import HarnessError
from harness.records import Shard
from harness.store import Store
from harness.suites._base import SUITES, Option, ShardInputs, Suite, Table, contiguous_shards

# Examples per corrupted set by default on the bundled 1,000-image sample: sized so the main
# job (every default model, 15 x 5 sets) stays within its 5-minute budget on 2 CPU cores.
SAMPLE_DEFAULT_N = 500
CLEAN = {"corruption": "none", "severity": 0, "source": "clean"}


def parse_corruptions(value: str | Iterable[str] | None) -> list[str]:
    """Canonical corruption names in the release's order. Accepts names, aliases and the
    groups ``benchmark`` (the 15), ``extra`` (the 4) and ``all``; a string may be
    comma-separated."""
    from harness.corruptions import CORRUPTIONS, list_corruptions  # lazy: torch

    if value is None:
        return list_corruptions()
    items = [value] if isinstance(value, str) else list(value)
    tokens = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    if not tokens:
        raise HarnessError("corruptions: the list is empty")
    chosen: set[str] = set()
    everything = list_corruptions(include_extra=True)
    for t in tokens:
        if t == "all":
            chosen.update(everything)
        elif t == "benchmark":
            chosen.update(list_corruptions())
        elif t in ("extra", "extras"):
            chosen.update(set(everything) - set(list_corruptions()))
        else:
            chosen.add(CORRUPTIONS.resolve(t))
    return [c for c in everything if c in chosen]


def parse_severities(value: str | Iterable[int] | None) -> list[int]:
    """Sorted severities from a list or a string like ``"1,3-5"``."""
    from harness.corruptions import SEVERITIES, check_severity  # lazy: torch

    if value is None:
        return list(SEVERITIES)
    out: set[int] = set()
    items = [value] if isinstance(value, (str, int)) else list(value)
    for item in items:
        for tok in str(item).split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                if "-" in tok[1:]:
                    lo, hi = (int(v) for v in tok.split("-", 1))
                    vals = range(lo, hi + 1)
                else:
                    vals = [int(tok)]
            except ValueError:
                raise HarnessError(f"severities: {tok!r} is not a severity (1-5)") from None
            out.update(check_severity(v) for v in vals)
    if not out:
        raise HarnessError("severities: the list is empty")
    return sorted(out)


@SUITES.register("cifar10c", aliases=("cifar-10-c",),
                 description="accuracy under the CIFAR-10-C corruptions (released or generated)")
class Cifar10CSuite(Suite):
    name = "cifar10c"
    default_shard_size = 500
    options = (
        Option("corruptions", "comma-separated names, or benchmark (default: the 15), extra (the "
               "4 extras), all", check=parse_corruptions, metavar="NAMES"),
        Option("severities", "e.g. 1,3-5 (default 1-5)", check=parse_severities, metavar="LIST"),
        Option("source", "released CIFAR-10-C files (DIR/CIFAR-10-C/*.npy), generated "
               "corruptions, or auto (released when present)", default="auto",
               choices=("auto", "released", "generated")),
        Option("baseline", "print mCE / relative mCE against this model's stored cifar10c run "
               "on the same data", metavar="MODEL"),
    )
    primary = "mean"
    labels = {"clean": "clean %", "mean": "C-10-C mean %", "extras": "extras mean %"}

    def load_data(self, *, data_dir=None, source: str = "auto", **options: Any):
        return load_cifar10c(data_dir=data_dir, source=source)

    def default_n(self, data) -> int | None:
        if data.source == "generated" and data.clean.source == "bundled-sample":
            return SAMPLE_DEFAULT_N
        return None

    def params(self, *, n, shard_size=None, data=None, device="cpu", corruptions=None,
               severities=None, source=None, **options):
        names = parse_corruptions(corruptions)
        sev = parse_severities(severities)
        src = data.source if data is not None else (source or "generated")
        if src == "released" and data is not None:
            data.released.check(names)
        params = {
            "n": int(n), "shard_size": int(shard_size or self.default_shard_size),
            "source": src, "corruptions": names, "severities": sev,
            "clean": bool(data is None or data.clean is not None),
        }
        if src == "generated":
            import torch  # lazy, see the module docstring

            from harness.corruptions import generator_fingerprint  # lazy: torch

            kind = torch.device(device).type
            if kind not in ("cpu", "cuda"):
                raise HarnessError(f"generated corruptions run in float64, which {kind} lacks: "
                                   "use device cpu or cuda (or source 'released')")
            # What decides the generated pixels: the corruption code, torch's generator streams,
            # and the device (float sums may round differently, flipping a truncation by 1).
            params["generator"] = {"code": generator_fingerprint(),
                                   "torch": torch.__version__.split("+")[0], "device": kind}
        return params

    def data_identity(self, data, params):
        if params["source"] == "released":
            fp = data.released.fingerprint(params["corruptions"])
            if data.clean is not None:
                fp = f"{fp}+{data.clean.fingerprint[:16]}"
            return data.name, fp
        return data.name, data.clean.fingerprint

    def describe(self, params) -> str:
        return (f"n = {params['n']} per set | {len(params['corruptions'])} corruptions x "
                f"{len(params['severities'])} severities | source {params['source']}")

    def shards(self, data, params):
        n, size, src = params["n"], params["shard_size"], params["source"]
        out: list[Shard] = []
        if params["clean"]:
            out += contiguous_shards(n, size, CLEAN, "clean/0")
        for name in params["corruptions"]:
            for s in params["severities"]:
                cond = {"corruption": name, "severity": s, "source": src}
                out += contiguous_shards(n, size, cond, f"{name}/{s}")
        return out

    def inputs(self, data, shard, ctx):
        import torch  # lazy, see the module docstring

        from harness.corruptions import corrupt  # lazy: torch

        c = shard.condition
        example = np.arange(shard.start, shard.stop, dtype=np.int64)
        labels = torch.from_numpy(np.ascontiguousarray(data.labels[shard.start:shard.stop]))
        if c["severity"] == 0:
            return ShardInputs(torch.from_numpy(data.clean.images[shard.start:shard.stop]),
                               labels, example)
        if c["source"] == "released":
            images = data.released.images(c["corruption"], c["severity"], shard.start, shard.stop)
            return ShardInputs(torch.from_numpy(images), labels, example)
        clean = torch.from_numpy(data.clean.images[shard.start:shard.stop]).to(ctx.device)
        images = corrupt(clean, c["corruption"], c["severity"], seed=ctx.seed,
                         indices=data.clean.indices[shard.start:shard.stop])
        return ShardInputs(images, labels, example)

    def summarize(self, store, run_id):
        """Per-condition table, clean first, then the release's corruption order by severity."""
        from harness.corruptions import list_corruptions  # lazy: torch

        frame = store.condition_summary(run_id)
        order = {name: i for i, name in enumerate(["none", *list_corruptions(include_extra=True)])}
        key = frame["corruption"].map(order).fillna(len(order)) * 10 + frame["severity"]
        return frame.iloc[key.argsort(kind="stable")].reset_index(drop=True)

    def headline(self, summary) -> dict[str, float]:
        return headline(summary)

    def references(self, store_path, plan):
        """The ``baseline`` option's stored run (id and summary), found before the run starts."""
        model = plan.options.get("baseline")
        if model is None:
            return None
        spec = {"data_fingerprint": plan.data_fingerprint, "params": plan.params,
                "seed": plan.seed}
        with Store(store_path, readonly=True) as store:
            run_id = find_baseline(store, model, spec)
            return {"model": model, "run_id": run_id, "summary": self.summarize(store, run_id)}

    def tables(self, outcomes, references=None):
        """Accuracy by corruption (mean over severities) per model; mCE lines with a baseline."""
        import pandas as pd  # lazy, like torch (see the module docstring)

        from harness.corruptions import CORRUPTIONS  # lazy: torch

        per = [per_corruption(o.summary) for o in outcomes]
        names = list(dict.fromkeys(k for p in per for k in p))
        generated = outcomes[0].spec.params["source"] == "generated"
        rows = []
        for name in names:
            meta = CORRUPTIONS.meta(name)
            mark = ("" if meta["benchmark"] else " *") + (
                " ~" if meta["approximate"] and generated else "")
            rows.append([name + mark, *[p.get(name, float("nan")) for p in per]])
        models = [o.spec.model for o in outcomes]
        out: list = [Table("accuracy % by corruption",
                           pd.DataFrame(rows, columns=["corruption", *models]),
                           caption="mean over severities; * extra, not in the mean; ~ "
                                   "approximate generator", percent=models)]
        if references is not None:
            for o in outcomes:
                m = mce(o.summary, references["summary"])
                rel = f", relative mCE {m['relative_mce']:.1f} %" if "relative_mce" in m else ""
                if m.get("relative_excluded"):
                    rel += (f" (without {', '.join(m['relative_excluded'])}: baseline error not "
                            "above its clean error)")
                out.append(f"{o.spec.model}: mCE {m['mce']:.1f} %{rel} (baseline "
                           f"{references['model']}, run {references['run_id'][:12]})")
        return out


def _cells(summary):
    from harness.corruptions import list_corruptions  # lazy: torch

    bench = set(list_corruptions())
    corrupted = summary[summary["severity"] > 0]
    return corrupted[corrupted["corruption"].isin(bench)], corrupted[~corrupted["corruption"].isin(bench)]


def headline(summary) -> dict[str, float]:
    """clean, mean over the benchmark (corruption, severity) sets, per-severity means s1..s5
    and the extras' mean; keys present only where the run has the data. Means are unweighted
    over sets, as RobustBench reports."""
    out: dict[str, float] = {}
    clean = summary[summary["severity"] == 0]
    if len(clean):
        out["clean"] = float(clean["n_correct"].sum() / clean["n"].sum())
    bench, extra = _cells(summary)
    if len(bench):
        out["mean"] = float(bench["accuracy"].mean())
        for s, group in bench.groupby("severity"):
            out[f"s{int(s)}"] = float(group["accuracy"].mean())
    if len(extra):
        out["extras"] = float(extra["accuracy"].mean())
    return out


def per_corruption(summary) -> dict[str, float]:
    """Mean accuracy over severities for each corruption, in the summary's order."""
    corrupted = summary[summary["severity"] > 0]
    means = corrupted.groupby("corruption", sort=False)["accuracy"].mean()
    return {str(k): float(v) for k, v in means.items()}


def mce(summary, baseline) -> dict[str, Any]:
    """mCE and relative mCE (Hendrycks & Dietterich) of a run against a baseline run, in %.

    CE_c = sum_s E(c, s) / sum_s E_base(c, s); relative CE_c = sum_s (E(c, s) - E_clean) /
    sum_s (E_base(c, s) - E_base_clean); both averaged over the benchmark corruptions the two
    runs share. Relative mCE needs the clean condition in both runs; corruptions on which the
    baseline's error does not exceed its clean error are left out of it and listed in
    ``relative_excluded``.

    Raises:
        HarnessError: the runs share no benchmark (corruption, severity) set.
    """
    from harness.corruptions import list_corruptions  # lazy: torch

    def errors(frame) -> dict[tuple[str, int], float]:
        f = frame[frame["severity"] > 0]
        return {(str(r.corruption), int(r.severity)): 1.0 - float(r.accuracy)
                for r in f.itertuples(index=False)}

    e, b = errors(summary), errors(baseline)
    shared = [k for k in e if k in b and k[0] in set(list_corruptions())]
    if not shared:
        raise HarnessError("the run and the baseline share no benchmark corruption sets")
    names = list(dict.fromkeys(c for c, _ in shared))
    ce = [sum(e[k] for k in shared if k[0] == c) / max(sum(b[k] for k in shared if k[0] == c), 1e-12)
          for c in names]
    out: dict[str, Any] = {"mce": 100 * float(np.mean(ce))}
    hl, hb = headline(summary), headline(baseline)
    if "clean" in hl and "clean" in hb:
        ec, bc = 1 - hl["clean"], 1 - hb["clean"]
        rel, excluded = [], []
        for c in names:
            den = sum(b[k] - bc for k in shared if k[0] == c)
            if den > 1e-12:
                rel.append(sum(e[k] - ec for k in shared if k[0] == c) / den)
            else:  # the baseline lost nothing to this corruption: its relative CE is undefined
                excluded.append(c)
        if rel:
            out["relative_mce"] = 100 * float(np.mean(rel))
        out["relative_excluded"] = excluded
    return out


def find_baseline(store, model: str, spec: Mapping[str, Any]) -> str:
    """The latest complete cifar10c run of ``model`` in ``store`` that a run with ``spec`` (a
    run spec dict: data_fingerprint, params, seed) can be compared with: same data, source, n,
    seed and generator, covering every (corruption, severity) set of the run. Its run id, or a
    HarnessError."""
    want = spec["params"]
    matches = []
    for r in store.runs():
        s, p = r["spec"], r["spec"]["params"]
        if (r["suite"] == "cifar10c" and r["model"] == model and r["complete"]
                and s["data_fingerprint"] == spec["data_fingerprint"] and s["seed"] == spec["seed"]
                and all(p.get(k) == want.get(k) for k in ("source", "n", "generator"))
                and set(want["corruptions"]) <= set(p["corruptions"])
                and set(want["severities"]) <= set(p["severities"])
                and (p["clean"] or not want["clean"])):
            matches.append(r)
    if not matches:
        raise HarnessError(f"baseline {model!r}: no complete cifar10c run of that model in the "
                           "store covers these corruption sets on the same data, source, n, seed "
                           "and generator; run it first")
    return matches[-1]["run_id"]
