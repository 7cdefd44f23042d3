"""Suites ``pgd`` and ``autoattack``: accuracy under attack, per example, worst case over every
attack and gradient path.

A run has one shard per threat (norm, eps) plus a clean shard (and, for ``pgd``, a
gradient-masking checks shard). Within a threat shard every attack of the run (``--attacks``,
default ``pgd`` or ``autoattack``) is run through every **gradient path** the model offers
(:mod:`attacks.gradients`: a SUGAR model through its surrogate and through ReLU's true
derivative, an LCA front end unrolled and through BPDA; black-box attacks once), and each
example keeps its worst outcome: it counts robust only if it survives all of them.

Per example it stores the prediction and loss on the kept adversarial image, and the fields

* ``linf``, ``l2``: the norms of the kept perturbation (of the fooling one, else of the
  attack's last iterate);
* ``iteration``: gradient steps when first fooled (0: wrong before any step, -1: robust);
* ``found_by`` / ``gradient``: the attack and gradient path whose example is kept ("clean"
  for examples wrong on the clean image; "" where robust);
* ``fooled_by``: every ``attack/path`` that fooled the example (comma-separated), so reports
  can show each path's accuracy without a recompute.

Metric records: ``robust`` (scope ``path``, index ``attack/path``) counts the shard's examples
each attack path left correct, ``seconds`` its time; the checks shard stores ``check`` (the
measured value) and ``flag`` (1 when violated) per check (scope ``check``), which ``harness
show`` prints as flags.

The per-model **worst case across runs**: the summary's ``worst_case`` column counts an
example robust only if every stored ``pgd``/``autoattack`` run of the same model on the same
data at the same (norm, eps) that evaluated it left it correct.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.records import MetricRecord, ShardResult
from harness.suites._base import (
    SUITES,
    Field,
    Metric,
    Option,
    ShardInputs,
    Suite,
    Table,
    at_least_one,
    contiguous_shards,
    positive,
    raised_flags,
)

ATTACK_SUITES = ("pgd", "autoattack")
CLEAN = {"norm": "none", "eps": 0.0}
CHECKS = {"norm": "checks", "eps": 0.0}
# Examples per run when --n is not given, on this harness's CPU budget.
PGD_DEFAULT_N = 200
AUTOATTACK_DEFAULT_N = 100


def _eps_list(norm: str):
    def check(text):
        from attacks import check_eps, parse_eps  # lazy: torch

        if text is None or str(text).strip().lower() in ("", "none"):
            return ()
        return tuple(sorted(dict.fromkeys(check_eps(e, norm) for e in parse_eps(text))))
    return check


def _attack_names(text: str) -> tuple[str, ...]:
    from attacks import ATTACKS  # lazy: torch

    names = tuple(dict.fromkeys(p.strip() for p in str(text).split(",") if p.strip()))
    if not names:
        raise ValueError("no attack given")
    for name in names:
        if not name.startswith("torchattacks:"):
            ATTACKS.resolve(name)   # raises with suggestions
    return names


def eps_label(norm: str, eps: float) -> str:
    """``1/255`` for Linf multiples of 1/255, else the number."""
    k = eps * 255
    if norm == "Linf" and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class AttackInputs(ShardInputs):
    """Shard inputs plus the ids that seed each example's random draws (the image's index in
    the official test split, so the bundled sample and the full split draw alike)."""

    seed_ids: Any = None


class AttackSuite(Suite):
    """Shared machinery of ``pgd`` and ``autoattack`` (see the module docstring)."""

    sample_default_n = PGD_DEFAULT_N
    fields = (
        Field("linf", float, "Linf norm of the kept perturbation"),
        Field("l2", float, "L2 norm of the kept perturbation"),
        Field("iteration", int, "steps when first fooled (0 before any step, -1 robust)"),
        Field("found_by", str, "attack whose adversarial example is kept"),
        Field("gradient", str, "gradient path of that attack"),
        Field("fooled_by", str, "every attack/path that fooled the example"),
    )
    metrics = (
        Metric("robust", "path", "examples of the shard each attack/path left correct"),
        Metric("seconds", "path", "time each attack/path took on the shard"),
        Metric("check", "check", "a gradient-masking check's measured value"),
        Metric("flag", "check", "1 when the check is violated"),
    )
    primary = "worst"
    labels = {"clean": "clean %"}

    def default_n(self, data) -> int | None:
        return min(self.sample_default_n, len(data))

    # -- parameters and shards -------------------------------------------------------------------
    def params(self, *, n, shard_size=None, data=None, device="cpu", **options):
        if not options["linf"] and not options["l2"]:
            raise HarnessError(f"suite {self.name!r}: no eps to attack (give --linf or --l2)")
        return {**super().params(n=n, shard_size=shard_size), **self.attack_params(options)}

    def attack_params(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"linf": list(options["linf"]), "l2": list(options["l2"]),
                "attacks": list(options["attacks"]), "gradients": options["gradients"]}

    def threats(self, params) -> list[tuple[str, float]]:
        return [("Linf", e) for e in params["linf"]] + [("L2", e) for e in params["l2"]]

    def shards(self, data, params):
        n, size = params["n"], params["shard_size"]
        out = contiguous_shards(n, size, CLEAN, "clean")
        for norm, eps in self.threats(params):
            out += contiguous_shards(n, size, {"norm": norm, "eps": eps},
                                     f"{norm}/{eps_label(norm, eps).replace('/', 'o')}")
        return out

    def describe(self, params) -> str:
        threats = ", ".join(f"{n} {eps_label(n, e)}" for n, e in self.threats(params))
        return (f"n = {params['n']} | {', '.join(params['attacks'])} | {threats} | gradients "
                f"{params['gradients']}")

    def inputs(self, data, shard, ctx):
        base = super().inputs(data, shard, ctx)
        return AttackInputs(base.images, base.labels, base.example,
                            seed_ids=data.indices[shard.start:shard.stop])

    def check_model(self, module, name, data, *, device, dtype):
        """Gradient attacks need the logits to depend differentiably on the input."""
        import torch

        from attacks.gradients import has_gradient

        x = torch.from_numpy(data.images[:2]).to(device=device, dtype=getattr(torch, dtype))
        if not has_gradient(module, x.div(255)):
            raise HarnessError(f"model {name!r} has no gradient with respect to its input: "
                               f"gradient attacks cannot run on it (suite {self.name!r})")

    # -- evaluation ------------------------------------------------------------------------------
    def make(self, name: str, norm: str, eps: float, ctx):
        from attacks import make_attack  # lazy: torch

        return make_attack(name, norm=norm, eps=eps, **self.attack_settings(name, ctx))

    def attack_settings(self, name: str, ctx) -> dict[str, Any]:
        """Keyword settings of attack ``name`` from the run's parameters and options."""
        return {}

    def evaluate(self, model, inputs, shard, ctx) -> ShardResult:
        import torch

        from attacks.gradients import default_path, gradient_paths, use_gradient

        start = time.perf_counter()
        x = inputs.images.to(ctx.device).to(torch.float32).div_(255)
        y = inputs.labels.to(ctx.device)
        n = len(y)
        cond = shard.condition
        fields = {"iteration": np.full(n, -1),
                  "found_by": np.full(n, "", dtype=object), "gradient": np.full(n, "", dtype=object),
                  "fooled_by": np.full(n, "", dtype=object)}
        metrics: list[MetricRecord] = []
        if cond["norm"] == "checks":
            return self._checks(model, x, y, inputs, shard, ctx, start)
        x_adv = x.clone()
        if cond["norm"] != "none":
            paths = gradient_paths(model)
            if ctx.params["gradients"] == "default":
                paths = [default_path(model)]
            fooled = np.zeros(n, dtype=bool)
            by: list[list[str]] = [[] for _ in range(n)]
            for name in ctx.params["attacks"]:
                attack = self.make(name, cond["norm"], cond["eps"], ctx)
                for path in (paths if attack.uses_gradient else [default_path(model)]):
                    t0 = time.perf_counter()
                    with use_gradient(model, path):
                        res = attack(model, x, y, seed=ctx.seed, example_ids=inputs.seed_ids)
                    label = f"{attack.name}/{path}" if attack.uses_gradient else attack.name
                    f = res.fooled.cpu().numpy()
                    new = f & ~fooled
                    # Not fooled so far: take this attack's image (its fooling one, else its
                    # last iterate); fooled earlier: keep the first attack path's example.
                    take = torch.from_numpy(~fooled).to(x.device)
                    x_adv[take] = res.x_adv[take].to(x_adv.dtype)
                    fields["iteration"][new] = res.iteration.cpu().numpy()[new]
                    fields["found_by"][new] = res.found_by[new]
                    fields["gradient"][new] = np.where(res.found_by[new] == "clean", "",
                                                       path if attack.uses_gradient else "")
                    for i in np.flatnonzero(f):
                        by[i].append(label)
                    fooled |= f
                    metrics += [MetricRecord("robust", "path", label, float((~f).sum())),
                                MetricRecord("seconds", "path", label, time.perf_counter() - t0)]
            fields["fooled_by"] = np.array([",".join(b) for b in by], dtype=object)
        delta = (x_adv - x).flatten(1)
        fields["linf"] = delta.abs().amax(1).double().cpu().numpy()
        fields["l2"] = delta.norm(dim=1).double().cpu().numpy()
        from harness.predict import predict

        pred, loss = predict(model, x_adv, y, device=ctx.device, dtype=ctx.torch_dtype,
                             batch_size=ctx.batch_size)
        pred, loss = pred.numpy(), loss.double().numpy()
        return ShardResult(shard=shard, example=inputs.example, label=y.cpu().numpy(),
                           pred=pred, correct=pred == y.cpu().numpy(), loss=loss,
                           wall_s=time.perf_counter() - start, fields=fields,
                           metrics=tuple(metrics))

    def _checks(self, model, x, y, inputs, shard, ctx, start) -> ShardResult:
        raise HarnessError(f"suite {self.name!r} has no checks shard")

    # -- reading the store -------------------------------------------------------------------------
    def summarize(self, store, run_id):
        """Per threat: n, n_correct, accuracy, and ``worst_case`` (robust under every stored
        attack run of this model on the same data and threat); the clean row first; the
        checks shard is left out (its flags are in ``attrs["flags"]``)."""
        frame = store.condition_summary(run_id)
        frame = frame[frame["norm"] != "checks"].copy()
        frame["worst_case"] = worst_case(store, run_id, frame)
        key = frame["norm"].map({"none": 0, "Linf": 1, "L2": 2}).fillna(3) * 10 + frame["eps"]
        out = frame.iloc[key.argsort(kind="stable")].reset_index(drop=True)
        metrics = store.metrics_frame([run_id])   # read once: flags and per-path accuracy
        out.attrs["flags"] = raised_flags(metrics)
        out.attrs["paths"] = path_accuracy(metrics, out)
        return out

    def headline(self, summary) -> dict[str, float]:
        out: dict[str, float] = {}
        for row in summary.itertuples(index=False):
            key = "clean" if row.norm == "none" else f"{row.norm} {eps_label(row.norm, row.eps)}"
            out[key] = float(row.accuracy)
        threat = headline_threat(zip(summary["norm"], summary["eps"]))
        if threat is not None:  # the headline: the worst case at headline_threat
            norm, eps = threat
            at = summary[(summary["norm"] == norm) & ((summary["eps"] - eps).abs() < 1e-9)]
            out["worst"] = float(at["worst_case"].iloc[-1])
        return out

    def label(self, key: str) -> str:
        if key == "worst":
            return "worst case %"
        return self.labels.get(key, f"{key} %")

    def tables(self, outcomes, references=None):
        import pandas as pd

        rows, lines = [], []
        for o in outcomes:
            s = o.summary
            for r in s[s["norm"] != "none"].itertuples(index=False):
                rows.append([o.spec.model, r.norm, eps_label(r.norm, r.eps), r.accuracy,
                             r.worst_case])
        out: list = []
        paths = [(o.spec.model, o.summary.attrs.get("paths")) for o in outcomes]
        prow = []
        for model, frame in paths:
            if frame is None or not len(frame):
                continue
            for (norm, eps), group in frame.groupby(["norm", "eps"], sort=False):
                if group["path"].nunique() > 1:
                    prow += [[model, norm, eps_label(norm, eps), p, a]
                             for p, a in zip(group["path"], group["accuracy"])]
        if prow:
            out.append(Table("robust accuracy % by attack / gradient path",
                             pd.DataFrame(prow, columns=["model", "norm", "eps", "attack/path",
                                                         "accuracy"]),
                             caption="each path attacked every example; the run keeps the worst "
                                     "per example", percent=["accuracy"]))
        if rows:
            out.append(Table("robust accuracy % per threat",
                             pd.DataFrame(rows, columns=["model", "norm", "eps", "this run",
                                                         "worst case"]),
                             caption="worst case: robust under every stored attack run of the "
                                     "model on these examples", percent=["this run", "worst case"]))
        for o in outcomes:
            for flag in o.summary.attrs.get("flags", []):
                lines.append(f"FLAG {o.spec.model}: {flag}")
        return out + lines


def attack_peers(runs, spec) -> list[dict]:
    """The stored attack runs (``Store.runs()`` rows) of the model (fingerprint) of ``spec`` on
    its data (fingerprint), the run itself included: what a worst case is taken over."""
    return [r for r in runs
            if r["suite"] in ATTACK_SUITES
            and r["spec"]["model_fingerprint"] == spec["model_fingerprint"]
            and r["spec"]["data_fingerprint"] == spec["data_fingerprint"]]


def robust_examples(frame, run_id: str, norm: str, eps: float):
    """Per example of run ``run_id`` at a threat: correct under every run in ``frame`` (the
    per-example rows of attack runs, ``Store.to_frame``) that evaluated it at that threat (a
    bool Series indexed by the run's examples; empty when the run has no such rows)."""
    same = frame[(frame["norm"] == norm) & ((frame["eps"] - eps).abs() < 1e-9)]
    mine = same[same["run_id"] == run_id]
    return same.groupby("example")["correct"].all().reindex(mine["example"].to_numpy())


def headline_threat(threats):
    """The threat (norm, eps) a worst-case headline is at: the largest Linf eps, else the
    largest eps of the other norms; None when nothing was attacked."""
    attacked = [(norm, float(eps)) for norm, eps in threats if norm not in ("none", "checks")]
    if not attacked:
        return None
    return max([t for t in attacked if t[0] == "Linf"] or attacked, key=lambda t: t[1])


def worst_case(store, run_id: str, summary) -> list[float]:
    """Per row of ``summary`` (a threat of run ``run_id``): the fraction of the run's examples
    that every stored attack run of the same model (fingerprint) on the same data (fingerprint)
    at the same threat left correct. Runs that did not evaluate an example do not count for
    it."""
    runs = store.runs()
    me = next(r for r in runs if r["run_id"] == run_id)["spec"]
    frame = store.to_frame([r["run_id"] for r in attack_peers(runs, me)])
    frame = frame[frame["norm"].isin(["Linf", "L2"])]
    out = []
    for row in summary.itertuples(index=False):
        if row.norm == "none":
            out.append(float(row.accuracy))
            continue
        robust = robust_examples(frame, run_id, row.norm, row.eps)
        out.append(float(robust.mean()) if len(robust) else math.nan)
    return out


def path_accuracy(m, summary):
    """Robust accuracy per threat and attack/gradient path (pandas: norm, eps, path,
    accuracy), from a run's ``robust`` metric records (``m``: its ``metrics_frame``); empty
    when the run has none."""
    import pandas as pd

    cols = ["norm", "eps", "path", "accuracy"]
    if not len(m) or "norm" not in m:
        return pd.DataFrame(columns=cols)
    m = m[(m["name"] == "robust") & (m["scope"] == "path")]
    n = summary.set_index(["norm", "eps"])["n"]
    rows = []
    for (norm, eps, path), group in m.groupby(["norm", "eps", "index"], sort=False):
        total = n.get((norm, eps))
        if total:
            rows.append([norm, eps, path, float(group["value"].sum()) / float(total)])
    return pd.DataFrame(rows, columns=cols)


def flags(store, run_id: str) -> list[str]:
    """The raised flags (e.g. gradient-masking checks) of a stored run, one line each."""
    return raised_flags(store.metrics_frame([run_id]))


@SUITES.register("pgd", description="accuracy under PGD (Linf and L2), every gradient path, "
                 "worst case per example, gradient-masking checks")
class PGDSuite(AttackSuite):
    name = "pgd"
    options = (
        Option("linf", "Linf eps list, fractions allowed ('none' for no Linf)",
               default="1/255,2/255,4/255,8/255", metavar="LIST"),
        Option("l2", "L2 eps list ('none' for no L2)", default="0.25,0.5", metavar="LIST"),
        Option("attacks", "attacks run on every threat, comma-separated (pgd, autoattack, "
               "square, torchattacks:NAME)", default="pgd", metavar="LIST"),
        Option("steps", "PGD steps", type=int, default=10, check=at_least_one),
        Option("restarts", "PGD random restarts", type=int, default=1, check=at_least_one),
        Option("step_size", "PGD step size (default 2.5 eps / steps)", type=float,
               check=positive),
        Option("loss", "PGD loss", default="ce", choices=("ce", "dlr", "margin")),
        Option("gradients", "gradient paths: all the model offers, or only its own backward",
               default="all", choices=("all", "default")),
        Option("eot", "gradient samples per step (expectation over transformation)", type=int,
               default=1, check=at_least_one),
        Option("checks", "run the gradient-masking checks", type=bool, default=True),
        Option("check_n", "examples the masking checks use", type=int, default=100,
               check=at_least_one),
        Option("early_stop", "drop fooled examples from the batch (changes no outcome)",
               type=bool, default=True),
    )

    def check_options(self, options):
        opts = super().check_options(options)
        opts["linf"] = _eps_list("Linf")(opts["linf"])
        opts["l2"] = _eps_list("L2")(opts["l2"])
        try:
            opts["attacks"] = _attack_names(opts["attacks"])
        except ValueError as exc:
            raise HarnessError(f"option 'attacks': {exc}") from None
        from attacks import make_attack  # lazy: torch

        # Build each attack once per norm the run uses: an attack that cannot run a threat
        # (e.g. torchattacks:PGD, an Linf attack, under L2) fails here, before anything runs.
        for name in opts["attacks"]:
            for norm in ("Linf", "L2"):
                eps = opts["linf" if norm == "Linf" else "l2"]
                if eps:
                    make_attack(name, norm=norm, eps=eps[-1])
        return opts

    def attack_params(self, options):
        return {**super().attack_params(options),
                **{k: options[k] for k in ("steps", "restarts", "step_size", "loss", "eot")},
                "checks": bool(options["checks"]),
                "check_n": int(options["check_n"]) if options["checks"] else 0}

    def attack_settings(self, name, ctx):
        if name != "pgd":
            return {}
        return {**{k: ctx.params[k] for k in ("steps", "restarts", "step_size", "loss", "eot")},
                "early_stop": bool(ctx.options.get("early_stop", True)),
                "batch_size": ctx.batch_size}

    def shards(self, data, params):
        out = super().shards(data, params)
        if params["checks"]:
            out += contiguous_shards(min(params["check_n"], params["n"]),
                                     min(params["check_n"], params["n"]), CHECKS, "checks")
        return out

    def _checks(self, model, x, y, inputs, shard, ctx, start):
        from attacks.checks import run_checks

        p = ctx.params
        norm, eps = ("Linf", p["linf"]) if p["linf"] else ("L2", p["l2"])
        checks, per_example = run_checks(model, x, y, eps=eps, norm=norm, steps=p["steps"],
                                         restarts=p["restarts"], loss=p["loss"], seed=ctx.seed,
                                         example_ids=inputs.seed_ids, eot=p["eot"])
        correct = per_example["unbounded_correct"]
        n = len(y)
        metrics = []
        for c in checks:
            metrics += [MetricRecord("check", "check", c.name, c.value),
                        MetricRecord("flag", "check", c.name, float(c.flag))]
        fields = {"linf": np.ones(n), "l2": np.full(n, np.nan), "iteration": np.full(n, -1),
                  "found_by": np.where(correct, "", "pgd-unbounded").astype(object),
                  "gradient": np.full(n, "", dtype=object),
                  "fooled_by": np.full(n, "", dtype=object)}
        yy = y.cpu().numpy()
        return ShardResult(shard=shard, example=inputs.example, label=yy,
                           pred=np.where(correct, yy, -1), correct=correct,
                           loss=np.full(n, np.nan), wall_s=time.perf_counter() - start,
                           fields=fields, metrics=tuple(metrics))


@SUITES.register("autoattack", description="the standard AutoAttack (pyautoattack), every "
                 "gradient path, worst case per example")
class AutoAttackSuite(AttackSuite):
    name = "autoattack"
    sample_default_n = AUTOATTACK_DEFAULT_N
    options = (
        Option("norm", "threat model", default="Linf", choices=("Linf", "L2")),
        Option("eps", "radius (default 8/255 for Linf, 0.5 for L2)", metavar="EPS"),
        Option("version", "AutoAttack version", default="standard",
               choices=("standard", "plus", "rand")),
        Option("gradients", "gradient paths: all the model offers, or only its own backward",
               default="all", choices=("all", "default")),
    )

    def check_options(self, options):
        opts = super().check_options(options)
        eps = opts.pop("eps") or ("8/255" if opts["norm"] == "Linf" else "0.5")
        values = _eps_list(opts["norm"])(eps)
        if len(values) != 1 or values[0] <= 0:
            raise HarnessError(f"option 'eps': one radius > 0, got {eps!r}")
        opts["linf"], opts["l2"] = ((values, ()) if opts["norm"] == "Linf" else ((), values))
        opts["attacks"] = ("autoattack",)
        return opts

    def attack_params(self, options):
        import importlib.metadata as md

        try:
            version = md.version("pyautoattack")
        except md.PackageNotFoundError:
            raise HarnessError("suite 'autoattack' needs pyautoattack: pip install "
                               "'robustness-harness[attacks]'") from None
        return {**super().attack_params(options), "version": options["version"],
                "pyautoattack": version}

    def attack_settings(self, name, ctx):
        return {"version": ctx.params["version"], "batch_size": ctx.batch_size}
