"""The findings page: the seed papers' claims judged against the numbers in the store.

Each claim comes from one paper summary (``sugar.md``, ``deep_splines.md``, ``warp_lca.md``,
the shared paper folder) and is judged for one pair of stored models (a baseline ``a`` and a
candidate ``b``, found by registry name; the ReLU baseline is ``resnet8``). A :class:`Claim`
states its decision rule in words, independent of the numbers, and its verdict is a function
of the numbers only, with the significance level ``alpha`` as a parameter:

* ``supported``: the rule holds on the stored numbers;
* ``not supported``: the numbers are there and the rule does not hold (a difference in the
  other direction, or one that is not significant at ``alpha``);
* ``not measured``: the store lacks the runs (or only holds runs that cannot be paired);
  ``missing`` says what is absent and which ``harness run`` command would measure it.

Paired differences come from :func:`reports.compare.paired_metrics` (the same examples in both
runs; exact McNemar test for one condition, paired permutation test for pooled conditions and
per-example values, paired bootstrap CIs); dead units, which are counts over units, from
Fisher's exact test (``scipy.stats.fisher_exact``); WARP-LCA's iterations and energy against
cold-start LCA from one ``coding`` run, which traces both starts on the same images (two
per-example quantities of one run: paired permutation test and bootstrap CI from
:mod:`reports.stats`). Per claim the comparison uses the pair of comparable runs that pairs
the most examples. Every claim is tested at ``alpha`` on its own:
no correction for the number of claims on the page. A robustness claim (accuracy under PGD)
is never ``supported`` when either pgd run raised a gradient-masking flag
(:func:`harness.suites.raised_flags`); the flags are shown in its evidence.

Units in ``evidence`` and ``tests``: ``%`` marks a fraction (the pages print it as a
percentage), ``count`` a count, ``x`` a Lipschitz constant (an l2 gain).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import HarnessError
from harness.store import Store
from harness.suites import SUITES
from harness.suites.adversarial import eps_label
from reports.collect import ModelEntry, RunView, view_run
from reports.compare import comparable, paired_metrics
from reports.stats import paired_bootstrap_ci, paired_permutation_p

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, NOT_MEASURED)
SUGAR_SECTION = "SUGAR vs ReLU"
SPLINE_SECTION = "Deep splines: Lipschitz control"
LCA_SECTION = "WARP-LCA vs LCA"
SECTIONS = (SUGAR_SECTION, SPLINE_SECTION, LCA_SECTION)

RELU = "resnet8"
SUGAR = {"resnet8-sugar-bsilu": "SUGAR with the B-SiLU surrogate",
         "resnet8-sugar-nelu": "SUGAR with the NeLU surrogate"}
SPLINE, ONE_LIP = "resnet8-deepspline", "resnet8-deepspline-1lip"
WARP, LCA = "warp-lca-resnet8", "lca-resnet8"
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
# Where a clean accuracy can come from, in the order that breaks ties in paired examples.
CLEAN = (("clean", "accuracy"), ("cifar10c", "clean"), ("sparsity", "accuracy"),
         ("pgd", "clean"), ("autoattack", "clean"), ("lipschitz", "accuracy"))
LIPSCHITZ_TOL = 1e-6     # relative, as the lipschitz suite's own lower > upper flag
# The condition robustness claims add: a higher accuracy under attack can come from gradient
# masking (the attack fails, the model is not robust), which the pgd suite's checks look for.
NO_MASKING_FLAG = ("neither pgd run raised a gradient-masking flag (the suite's own checks: "
                   "with a flag raised the accuracy under attack may be overstated by gradient "
                   "masking, so the claim is not supported whatever the test says)")


@dataclass
class Claim:
    """One claim of a paper for one pair of models, with one verdict.

    ``evidence``: dicts with what, value (float or None), unit, n, source (data and run id
    prefix), run_id, and ``flag`` (True) on a raised gradient-masking flag. ``tests``: the
    paired comparisons the verdict reads, dicts with what, metric, a, b, delta (b - a),
    ci_low, ci_high, p_value, test, n, unit, a_only, b_only, direction (+1: the claim needs
    b > a, -1: b < a) and runs. ``missing``: what the store
    lacks and the command that would measure it. ``models``: role (``a`` baseline, ``b``
    candidate, or ``model``) -> model key in the store (the registry name when absent).
    """

    id: str
    section: str
    claim: str
    paper: str
    rule: str
    verdict: str = NOT_MEASURED
    evidence: list[dict[str, Any]] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- verdicts: functions of the numbers only ---------------------------------------------------
def directional_verdict(delta: float | None, p_value: float | None, *, direction: int,
                        alpha: float) -> str:
    """``supported`` when ``delta`` has the claimed sign and ``p_value < alpha``."""
    if delta is None or p_value is None or delta != delta or p_value != p_value:
        return NOT_SUPPORTED
    return SUPPORTED if delta * direction > 0 and p_value < alpha else NOT_SUPPORTED


def bound_verdict(upper: float | None, lower: float | None, *, limit: float | None = None
                  ) -> str:
    """``supported`` when the certified ``upper`` bound exists, is at most ``limit`` (+1e-6,
    when given) and no lower bound exceeds it (relative tolerance 1e-6)."""
    if upper is None or not math.isfinite(upper):
        return NOT_SUPPORTED
    if limit is not None and upper > limit + LIPSCHITZ_TOL:
        return NOT_SUPPORTED
    if lower is not None and lower > upper * (1 + LIPSCHITZ_TOL):
        return NOT_SUPPORTED
    return SUPPORTED


def dead_units_test(dead_a: int, units_a: int, dead_b: int, units_b: int) -> float:
    """Two-sided p-value of Fisher's exact test on (dead, alive) unit counts of two models."""
    table = [[dead_b, units_b - dead_b], [dead_a, units_a - dead_a]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)


# -- small helpers ------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _source(view: RunView) -> str:
    return f"{view.source}, {view.suite} run {view.run_id[:8]}"


def _bundled(entry: ModelEntry) -> bool:
    ident = entry.identity
    return "weights_sha256" not in ident and "checkpoint_sha256" in ident


def _evidence(what: str, value: Any, unit: str, n: int | None, view: RunView) -> dict[str, Any]:
    return {"what": what, "value": _num(value), "unit": unit, "n": None if n is None else int(n),
            "source": _source(view), "run_id": view.run_id}


def _test(what: str, row, unit: str, direction: int, va: RunView, vb: RunView
          ) -> dict[str, Any]:
    return {"what": what, "metric": row["metric"], "a": _num(row["a"]), "b": _num(row["b"]),
            "delta": _num(row["delta"]), "ci_low": _num(row["ci_low"]),
            "ci_high": _num(row["ci_high"]), "p_value": _num(row["p_value"]),
            "test": row["test"], "n": int(row["n"]), "unit": unit,
            "a_only": _num(row["a_only"]), "b_only": _num(row["b_only"]),
            "direction": direction, "runs": [va.run_id, vb.run_id]}


def _flag_value(opt, value: Any) -> str | None:
    """``--flag value`` of a suite option as a command line gives it (None: leave it out, or
    a value the option would refuse, like a count a disabled feature stored as 0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return opt.flag if value else "--no-" + opt.flag[2:]
    if isinstance(value, (list, tuple)):
        items = [eps_label("Linf", v) if opt.name == "linf" else
                 (f"{v:g}" if isinstance(v, float) else str(v)) for v in value]
        text = ",".join(items) if items else "none"
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    try:
        opt.parse(text)
    except (HarnessError, ValueError):
        return None
    return f"{opt.flag} {text}"


def _same(value: Any, default: Any) -> bool:
    """A stored parameter equals the option's default (lists against comma-separated text)."""
    if isinstance(default, str) and isinstance(value, (list, tuple)):
        default = [p.strip() for p in default.split(",") if p.strip()]
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


class _Judge:
    """The store read once: models by name, runs by model fingerprint, paired rows cached."""

    def __init__(self, store: Store, entries: Sequence[ModelEntry], *, alpha: float,
                 resamples: int, seed: int) -> None:
        self.store, self.entries = store, list(entries)
        self.alpha, self.resamples, self.seed = alpha, resamples, seed
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for run in store.runs():
            fp = run["spec"]["model_fingerprint"]
            self.runs.setdefault(fp, {}).setdefault(run["suite"], []).append(run)
        self._views = {v.run_id: v for e in self.entries for v in e.runs.values()}
        self._paired: dict[tuple[str, str], pd.DataFrame] = {}

    # models -----------------------------------------------------------------------------------
    def models(self, name: str) -> list[ModelEntry]:
        return [e for e in self.entries if e.name == name]

    def baseline(self, name: str) -> ModelEntry | None:
        """The model named ``name``: the one with the registry's bundled weights when several
        checkpoints of it are stored, else the first stored."""
        found = self.models(name)
        bundled = [e for e in found if _bundled(e)]
        return (bundled or found or [None])[0]

    def candidates(self, name: str) -> list[ModelEntry | None]:
        """Every stored model named ``name`` (one claim each), or [None] when there is none."""
        return self.models(name) or [None]

    # runs -------------------------------------------------------------------------------------
    def view(self, run: dict[str, Any]) -> RunView:
        if run["run_id"] not in self._views:
            self._views[run["run_id"]] = view_run(self.store, run)
        return self._views[run["run_id"]]

    def views(self, entry: ModelEntry | None, suite: str) -> list[RunView]:
        """The model's runs of ``suite``: collect's choice first, then the others."""
        if entry is None:
            return []
        chosen = entry.runs.get(suite)
        out = [chosen] if chosen is not None and chosen.run["n"] else []
        for run in self.runs.get(entry.fingerprint, {}).get(suite, []):
            if run["n"] and (chosen is None or run["run_id"] != chosen.run_id):
                out.append(self.view(run))
        return out

    def pairs(self, a: ModelEntry | None, b: ModelEntry | None, suite: str
              ) -> list[tuple[RunView, RunView]]:
        """Comparable (a, b) runs of ``suite``, most paired examples first (complete runs
        before partial ones)."""
        out = [(va, vb) for va in self.views(a, suite) for vb in self.views(b, suite)
               if comparable(va, vb) is None]
        return sorted(out, key=lambda p: (not (p[0].run["complete"] and p[1].run["complete"]),
                                          -min(p[0].n, p[1].n)))

    def paired(self, va: RunView, vb: RunView) -> pd.DataFrame:
        key = (va.run_id, vb.run_id)
        if key not in self._paired:
            try:
                self._paired[key] = paired_metrics(self.store, va, self.store, vb,
                                                   resamples=self.resamples, seed=self.seed,
                                                   alpha=self.alpha)
            except HarnessError:              # e.g. no shared example: nothing to pair
                self._paired[key] = pd.DataFrame(columns=["metric"])
        return self._paired[key]

    def find(self, a: ModelEntry | None, b: ModelEntry | None,
             measures: Sequence[tuple[str, str]]):
        """(view a, view b, row) of the first measure (suite, metric) found in the comparable
        runs that pair the most examples (ties: the order of ``measures``); None when none."""
        options = [(k, va, vb) for k, (suite, _) in enumerate(measures)
                   for va, vb in self.pairs(a, b, suite)]
        options.sort(key=lambda o: (not (o[1].run["complete"] and o[2].run["complete"]),
                                    -min(o[1].n, o[2].n), o[0]))
        for k, va, vb in options:
            suite, metric = measures[k]
            rows = self.paired(va, vb)
            hit = rows[rows["metric"] == f"{suite}:{metric}"]
            if len(hit):
                return va, vb, hit.iloc[0]
        return None

    # what is missing ----------------------------------------------------------------------------
    def command(self, suite: str, models: Sequence[tuple[str, ModelEntry | None]],
                overrides: dict[str, Any] | None = None, *, like: RunView | None = None
                ) -> str:
        """The ``harness run`` command(s) that would give ``models`` comparable ``suite`` runs:
        the options of ``like`` or else of the largest stored run of one of them (so the new
        run pairs with it), with ``overrides``; a model with other than the bundled weights
        needs its checkpoint."""
        existing = [v for _, e in models for v in self.views(e, suite)]
        ref = like or (max(existing, key=lambda v: v.n) if existing else None)
        opts: list[str] = []
        if ref is not None:
            opts.append(f"--n {ref.n}")
            if not str(ref.spec.get("data", "")).startswith("bundled-sample"):
                opts.append("--data-dir DATA")
            if ref.spec.get("seed", 0) != 0:
                opts.append(f"--seed {ref.spec['seed']}")
        params = dict(ref.params) if ref is not None else {}
        params.update(overrides or {})
        if suite in SUITES:
            for opt in SUITES.get(suite).options:
                if opt.name not in params:
                    continue
                try:
                    default = opt.parse(opt.default) if opt.default is not None else None
                except (HarnessError, ValueError):
                    default = opt.default
                value = params[opt.name]
                if not _same(value, default) and (text := _flag_value(opt, value)):
                    opts.append(text)
        tail = (" " + " ".join(opts)) if opts else ""
        plain = [name for name, e in models if e is None or _bundled(e)]
        cmds = [f"harness run --suite {suite} --model {' '.join(plain)}{tail}"] if plain else []
        for name, e in models:
            if e is not None and not _bundled(e):
                sha = (e.checkpoint_sha256 or "")[:12]
                cmds.append(f"harness run --suite {suite} --model {name} --weights CHECKPOINT"
                            f"{tail} (the checkpoint of {e.key}, sha256 {sha})")
        return "; ".join(cmds)

    def missing(self, a_name: str, a: ModelEntry | None, b_name: str, b: ModelEntry | None,
                suites: Iterable[str], what: str, overrides: dict[str, Any] | None = None
                ) -> list[str]:
        """Why a paired measure is absent, and the command that would measure it (for the
        first of ``suites``, the one a new run would use)."""
        suites = list(suites)
        suite = suites[0]
        reasons = []
        for name, entry in ((a_name, a), (b_name, b)):
            if entry is None:
                reasons.append(f"no {name} model in the store")
            elif not any(self.views(entry, s) for s in suites):
                reasons.append(f"no {' or '.join(suites)} run of {entry.key} in the store")
        if not reasons:
            unpaired = [f"{va.run_id[:8]} and {vb.run_id[:8]}: {comparable(va, vb)}"
                        for s in suites for va in self.views(a, s) for vb in self.views(b, s)
                        if comparable(va, vb) is not None]
            paired = any(self.pairs(a, b, s) for s in suites)
            if paired:
                reasons.append(f"the paired runs of {a.key} and {b.key} do not hold {what}")
            elif unpaired:
                reasons.append(f"the runs of {a.key} and {b.key} cannot be paired ("
                               + "; ".join(unpaired[:3]) + ")")
        cmd = self.command(suite, [(a_name, a), (b_name, b)], overrides)
        return [f"{'; '.join(reasons)}. To measure it: {cmd}"]


# -- the claims ---------------------------------------------------------------------------------
class _Findings(_Judge):
    def key(self, entry: ModelEntry | None, name: str) -> str:
        return entry.key if entry is not None else name

    def paired_claim(self, *, id: str, section: str, paper: str, a_name: str, b_name: str,
                     claim: str, rule: str, measures: Sequence[tuple[str, str]], what: str,
                     unit: str, direction: int, overrides: dict[str, Any] | None = None,
                     context: Sequence[tuple[str, str, str]] = ()) -> list[Claim]:
        """One claim per stored candidate model: ``b`` vs ``a`` on the first measure found.
        ``claim`` and ``rule`` are formatted with ``a``/``b`` (model keys) and ``alpha``;
        ``context``: (suite, metric, what) rows of the same paired runs added as evidence."""
        a = self.baseline(a_name)
        out = []
        for b in self.candidates(b_name):
            ka, kb = self.key(a, a_name), self.key(b, b_name)
            c = Claim(id=f"{id}:{kb}", section=section, paper=paper,
                      claim=claim.format(a=ka, b=kb, alpha=self.alpha),
                      rule=rule.format(a=ka, b=kb, alpha=self.alpha),
                      models={"a": ka, "b": kb})
            found = self.find(a, b, measures) if a is not None and b is not None else None
            if found is None:
                c.missing = self.missing(a_name, a, b_name, b, [s for s, _ in measures], what,
                                         overrides)
                out.append(c)
                continue
            va, vb, row = found
            c.evidence = [_evidence(f"{ka}: {what}", row["a"], unit, row["n"], va),
                          _evidence(f"{kb}: {what}", row["b"], unit, row["n"], vb)]
            rows = self.paired(va, vb)
            for suite, metric, label in context:
                hit = rows[rows["metric"] == f"{suite}:{metric}"]
                if suite == va.suite and len(hit):
                    r = hit.iloc[0]
                    c.evidence += [_evidence(f"{ka}: {label}", r["a"], "%", r["n"], va),
                                   _evidence(f"{kb}: {label}", r["b"], "%", r["n"], vb)]
            t = _test(f"{what}: {kb} \u2212 {ka}", row, unit, direction, va, vb)
            c.tests = [t]
            c.verdict = directional_verdict(t["delta"], t["p_value"], direction=direction,
                                            alpha=self.alpha)
            out.append(c)
        return out

    # SUGAR ------------------------------------------------------------------------------------
    def sugar(self) -> list[Claim]:
        out: list[Claim] = []
        for name, label in SUGAR.items():
            common = {"section": SUGAR_SECTION, "paper": "sugar.md", "a_name": RELU,
                      "b_name": name}
            out += self.paired_claim(
                id="sugar-accuracy", **common, measures=CLEAN, unit="%", direction=+1,
                what="clean accuracy",
                claim=label + " ({b}) reaches a higher test accuracy than plain ReLU ({a}) "
                      "with the same architecture and recipe (sugar.md: CIFAR-100 VGG-16 "
                      "48.7 % -> 64.5 %, ResNet-18 49.0 % -> 56.5 % with B-SiLU).",
                rule="Supported if {b}'s clean accuracy minus {a}'s, paired on the same test "
                     "images, is positive and the exact McNemar test gives p < {alpha}; "
                     "otherwise not supported. The clean images come from the suite whose "
                     "runs pair the most images (ties: clean, cifar10c, sparsity, pgd, "
                     "autoattack, lipschitz).")
            out += self.paired_claim(
                id="sugar-cifar10c", **common, measures=(("cifar10c", "mean"),), unit="%",
                direction=+1, what="CIFAR-10-C mean accuracy",
                context=(("cifar10c", "clean", "clean accuracy"),),
                claim=label + " ({b}) generalises better than plain ReLU ({a}): higher "
                      "accuracy on the CIFAR-10-C corruptions (sugar.md claims better test "
                      "accuracy and asks for robustness numbers next to ReLU; this is the "
                      "corrupted-input reading of it).",
                rule="Supported if {b}'s mean accuracy over the benchmark CIFAR-10-C sets "
                     "(per image, the mean over its sets) minus {a}'s is positive and the "
                     "paired permutation test gives p < {alpha}; otherwise not supported.")
            out += self.paired_claim(
                id="sugar-zeros", **common, measures=(("sparsity", "zero_fraction"),),
                unit="%", direction=+1, what="exact-zero fraction of activations per image",
                claim=label + " ({b}) has sparser activations than plain ReLU ({a}) "
                      "(sugar.md: 'sparser activations').",
                rule="Supported if the per-image fraction of exact zeros over all activation "
                     "sites is higher for {b} than for {a} on average over the same images "
                     "and the paired permutation test gives p < {alpha}; otherwise not "
                     "supported.")
            out += self.dead_units(name, label)
        return out

    def dead_units(self, name: str, label: str) -> list[Claim]:
        a = self.baseline(RELU)
        out = []
        for b in self.candidates(name):
            ka, kb = self.key(a, RELU), self.key(b, name)
            c = Claim(id=f"sugar-dead-units:{kb}", section=SUGAR_SECTION, paper="sugar.md",
                      models={"a": ka, "b": kb},
                      claim=f"{label} ({kb}) has fewer dead units than plain ReLU ({ka}) "
                            "(sugar.md: a dead unit is a channel whose output is 0 for every "
                            "example of the evaluation set).",
                      rule=f"Supported if {kb} has fewer dead units (zero on every image and "
                           f"position of the run) than {ka}, both counted over the same images "
                           "(sparsity runs with equal n on the same data), and Fisher's exact "
                           "test on their dead/alive unit counts (units treated as independent "
                           f"draws of the training process) gives p < {self.alpha}; otherwise "
                           "not supported. That independence is an assumption: each model is "
                           "one trained network, whose units are not independent samples, so "
                           "p speaks to these two networks, not to what retraining would give.")
            pairs = [(va, vb) for va, vb in self.pairs(a, b, "sparsity")
                     if va.n == vb.n and va.summary is not None and vb.summary is not None
                     and int(va.summary["units"].iloc[0]) and int(vb.summary["units"].iloc[0])]
            unequal = [(va, vb) for va, vb in self.pairs(a, b, "sparsity") if va.n != vb.n]
            if not pairs and unequal:
                # the model with fewer images is rerun with the options of the other's run
                va, vb = unequal[0]
                (sn, se), like = ((RELU, a), vb) if va.n < vb.n else ((name, b), va)
                c.missing = [f"the sparsity runs of {ka} (n = {va.n}) and {kb} (n = {vb.n}) "
                             "count dead units over different images. To measure it: "
                             + self.command("sparsity", [(sn, se)], like=like)]
                out.append(c)
                continue
            if not pairs:
                c.missing = self.missing(RELU, a, name, b, ["sparsity"], "dead units")
                out.append(c)
                continue
            va, vb = pairs[0]
            ra, rb = va.summary.iloc[0], vb.summary.iloc[0]
            da, ua, db, ub = (int(ra["dead_units"]), int(ra["units"]), int(rb["dead_units"]),
                              int(rb["units"]))
            p = dead_units_test(da, ua, db, ub)
            c.evidence = [_evidence(f"{ka}: dead units (of {ua})", da, "count", va.n, va),
                          _evidence(f"{kb}: dead units (of {ub})", db, "count", vb.n, vb)]
            c.tests = [{"what": f"dead units: {kb} \u2212 {ka}", "metric": "sparsity:dead_units",
                        "a": float(da), "b": float(db), "delta": float(db - da),
                        "ci_low": None, "ci_high": None, "p_value": p, "test": "fisher-exact",
                        "n": int(va.n), "unit": "count", "a_only": None, "b_only": None,
                        "direction": -1, "runs": [va.run_id, vb.run_id]}]
            c.verdict = directional_verdict(db - da, p, direction=-1, alpha=self.alpha)
            out.append(c)
        return out

    # deep splines -----------------------------------------------------------------------------
    def bound_claim(self, *, id: str, name: str, claim: str, rule: str,
                    limit: float | None) -> list[Claim]:
        out = []
        for e in self.candidates(name):
            k = self.key(e, name)
            c = Claim(id=f"{id}:{k}", section=SPLINE_SECTION, paper="deep_splines.md",
                      claim=claim.format(m=k), rule=rule.format(m=k), models={"model": k})
            view = e.runs.get("lipschitz") if e is not None else None
            if view is None or view.summary is None:
                what = f"no lipschitz run of {k}" if e is not None else f"no {k} model"
                c.missing = [f"{what} in the store. To measure it: "
                             + self.command("lipschitz", [(name, e)])]
                out.append(c)
                continue
            r = view.summary.iloc[0]
            upper, lower = _num(r["upper"]), _num(r["lower"])
            c.evidence = [
                _evidence(f"{k}: certified l2 upper bound (pixels -> logits)", upper, "x",
                          view.n, view),
                _evidence(f"{k}: best lower bound (largest Jacobian norm or pair ratio)", lower,
                          "x", view.n, view),
                _evidence(f"{k}: largest input-Jacobian spectral norm", r["jacobian_max"], "x",
                          view.n, view),
                _evidence(f"{k}: largest ||f(x) - f(x')|| / ||x - x'|| found", r["pair_max"],
                          "x", view.n, view)]
            reason = view.summary.attrs.get("reason")
            if reason:
                c.evidence.append({**_evidence(f"{k}: no certified bound: {reason}", None, "",
                                               view.n, view)})
            c.verdict = bound_verdict(upper, lower, limit=limit)
            out.append(c)
        return out

    def splines(self) -> list[Claim]:
        out = self.bound_claim(
            id="spline-bound-holds", name=SPLINE, limit=None,
            claim="The deep-spline network ({m}) has a certified global Lipschitz bound, "
                  "Lip(f) <= prod ||W_l|| * prod max |spline slope| (deep_splines.md), and "
                  "it holds on the data.",
            rule="Supported if the lipschitz suite stored a finite certified l2 upper bound "
                 "for {m} and no lower bound (largest input-Jacobian norm, largest pair "
                 "ratio) exceeds it (relative tolerance 1e-6); otherwise not supported.")
        out += self.bound_claim(
            id="spline-1lip-certified", name=ONE_LIP, limit=1.0,
            claim="The 1-Lipschitz deep-spline variant ({m}: slopes in [-1, 1], every "
                  "linear layer of spectral norm <= 1) is certifiably 1-Lipschitz from "
                  "pixels to logits (deep_splines.md).",
            rule="Supported if the stored certified l2 upper bound of {m} is <= 1 (+1e-6) "
                 "and every lower bound (the largest input-Jacobian norm and pair ratio "
                 "over the images) is <= the upper bound (relative tolerance 1e-6); "
                 "otherwise not supported.")
        out += self.paired_claim(
            id="spline-1lip-smoother", section=SPLINE_SECTION, paper="deep_splines.md",
            a_name=RELU, b_name=ONE_LIP, measures=(("lipschitz", "jacobian_norm"),),
            unit="x", direction=-1, what="input-Jacobian spectral norm per image",
            claim="Controlling the Lipschitz constant makes the network smoother where the "
                  "data is: {b}'s local Lipschitz estimates are below ReLU's ({a}) "
                  "(deep_splines.md: Lipschitz control).",
            rule="Supported if {b}'s per-image input-Jacobian spectral norm (a lower bound "
                 "of the local Lipschitz constant) is lower than {a}'s on average over the "
                 "same images and the paired permutation test gives p < {alpha}; otherwise "
                 "not supported.")
        out += self.per_threat(
            id="spline-1lip-robust", section=SPLINE_SECTION, paper="deep_splines.md",
            a_name=RELU, b_name=ONE_LIP, bounds=True,
            claim="Lipschitz control buys robustness: the 1-Lipschitz network ({b}) keeps "
                  "more images correct than ReLU ({a}) under PGD at {threat} (the purpose of "
                  "the controlled Lipschitz constant in deep_splines.md).",
            rule="Supported if {b}'s accuracy under the stored PGD attack at {threat} (worst "
                 "over its gradient paths) minus {a}'s, on the same images, is positive, "
                 "the exact McNemar test gives p < {alpha}, and " + NO_MASKING_FLAG + "; "
                 "otherwise not supported.")
        out += self.paired_claim(
            id="spline-1lip-cost", section=SPLINE_SECTION, paper="deep_splines.md",
            a_name=RELU, b_name=ONE_LIP, measures=CLEAN, unit="%", direction=-1,
            what="clean accuracy",
            claim="Lipschitz control costs clean accuracy: the 1-Lipschitz network ({b}) is "
                  "less accurate on clean images than ReLU ({a}) (the price its robustness "
                  "is read against; deep_splines.md gives no number).",
            rule="Supported if {b}'s clean accuracy minus {a}'s, paired on the same test "
                 "images, is negative and the exact McNemar test gives p < {alpha}; "
                 "otherwise not supported. The clean images come from the suite whose runs "
                 "pair the most images.")
        return out

    def per_threat(self, *, id: str, section: str, paper: str, a_name: str, b_name: str,
                   claim: str, rule: str, bounds: bool = False) -> list[Claim]:
        """One claim per attack threat (norm, eps) the paired pgd runs share."""
        a = self.baseline(a_name)
        out = []
        for b in self.candidates(b_name):
            ka, kb = self.key(a, a_name), self.key(b, b_name)
            threats: dict[tuple[str, float], tuple[RunView, RunView]] = {}
            for va, vb in (self.pairs(a, b, "pgd") if a is not None and b is not None else []):
                for norm in ("Linf", "L2"):
                    for eps in va.params.get(norm.lower(), []):
                        threats.setdefault((norm, float(eps)), (va, vb))
            if not threats:
                c = Claim(id=f"{id}:{kb}", section=section, paper=paper,
                          claim=claim.format(a=ka, b=kb, threat="each threat", alpha=self.alpha),
                          rule=rule.format(a=ka, b=kb, threat="each threat", alpha=self.alpha),
                          models={"a": ka, "b": kb})
                c.missing = self.missing(a_name, a, b_name, b, ["pgd"], "an attack threat")
                out.append(c)
                continue
            for (norm, eps), (va, vb) in sorted(threats.items(),
                                                key=lambda t: (t[0][0] != "Linf", t[0][1])):
                threat = f"{norm} {eps_label(norm, eps)}"
                c = Claim(id=f"{id}:{kb}:{threat}", section=section, paper=paper,
                          claim=claim.format(a=ka, b=kb, threat=threat, alpha=self.alpha),
                          rule=rule.format(a=ka, b=kb, threat=threat, alpha=self.alpha),
                          models={"a": ka, "b": kb})
                rows = self.paired(va, vb)
                hit = rows[rows["metric"] == f"pgd:{threat}"]
                if not len(hit):
                    c.missing = self.missing(a_name, a, b_name, b, ["pgd"], threat)
                    out.append(c)
                    continue
                row = hit.iloc[0]
                c.evidence = [_evidence(f"{ka}: accuracy under PGD {threat}", row["a"], "%",
                                        row["n"], va),
                              _evidence(f"{kb}: accuracy under PGD {threat}", row["b"], "%",
                                        row["n"], vb)]
                clean = rows[rows["metric"] == "pgd:clean"]
                if len(clean):
                    r = clean.iloc[0]
                    c.evidence += [_evidence(f"{ka}: clean accuracy", r["a"], "%", r["n"], va),
                                   _evidence(f"{kb}: clean accuracy", r["b"], "%", r["n"], vb)]
                if bounds:
                    for k, e in ((ka, a), (kb, b)):
                        lv = e.runs.get("lipschitz")
                        if lv is not None and "upper" in lv.headline:
                            c.evidence.append(_evidence(f"{k}: certified l2 Lipschitz upper "
                                                        "bound", lv.headline["upper"], "x",
                                                        lv.n, lv))
                flagged = False
                for k, v in ((ka, va), (kb, vb)):
                    for flag in v.flags:
                        flagged = True
                        c.evidence.append({**_evidence(f"{k}: gradient-masking check raised a "
                                                       f"flag: {flag}", None, "", v.n, v),
                                           "flag": True})
                    if not v.params.get("checks", True):
                        c.evidence.append(_evidence(f"{k}: gradient-masking checks not run "
                                                    "(--no-checks)", None, "", v.n, v))
                t = _test(f"accuracy under PGD {threat}: {kb} \u2212 {ka}", row, "%", +1, va, vb)
                c.tests = [t]
                c.verdict = (NOT_SUPPORTED if flagged else
                             directional_verdict(t["delta"], t["p_value"], direction=+1,
                                                 alpha=self.alpha))
                out.append(c)
        return out

    # WARP-LCA ---------------------------------------------------------------------------------
    def coding_run(self, entry: ModelEntry | None, *, hard: bool) -> RunView | None:
        """The model's coding run with the most examples: hard-threshold runs only (``hard``),
        else the model's own threshold first, then any."""
        views = [v for v in self.views(entry, "coding") if v.summary is not None]
        if hard:
            views = [v for v in views if v.params.get("threshold") == "hard"]
        return max(views, default=None,
                   key=lambda v: (v.run["complete"], v.params.get("threshold") == "model", v.n))

    def iterations(self) -> list[Claim]:
        """WARP-LCA vs cold LCA: iterations to the same energy, from one coding run of
        WARP-LCA (its learned start and the zero start of the same LCA, on the same images)."""
        out = []
        for e in self.candidates(WARP):
            k = self.key(e, WARP)
            c = Claim(id=f"lca-iterations:{k}", section=LCA_SECTION, paper="warp_lca.md",
                      models={"model": k},
                      claim=f"WARP-LCA ({k}) needs orders of magnitude fewer iterations than "
                            "cold-start LCA (the same dictionary and lambda from zeros) to "
                            "reach the same sparse-coding energy (warp_lca.md).",
                      rule="Supported if, per image, WARP-LCA needs fewer iterations than "
                           "cold-start LCA to come within the coding run's tolerance of cold "
                           "LCA's energy after the run's reference iterations (the paper's "
                           f"LCA-1000 by default), the paired permutation test gives p < "
                           f"{self.alpha}, and the median count from zeros is at least 10x "
                           "WARP-LCA's (at least one order of magnitude); otherwise not "
                           "supported. An image that does not get there within the run's "
                           "--max-iterations counts as --max-iterations + 1 (a lower bound).")
            view = self.coding_run(e, hard=False)
            if view is None:
                c.missing = self.coding_missing(e, k, hard=False)
                out.append(c)
                continue
            frame = self.store.to_frame([view.run_id])
            cap = float(view.params.get("max_iterations", np.nan)) + 1
            warp = frame["iterations_to_target"].astype("float64").fillna(cap).to_numpy()
            cold = frame["cold_iterations_to_target"].astype("float64").fillna(cap).to_numpy()
            thr = view.params.get("threshold", "model")
            target = (f"to within {100 * view.params.get('tolerance', math.nan):g} % of cold "
                      f"LCA-{view.params.get('reference_iterations')}'s energy "
                      f"({'its own' if thr == 'model' else thr} threshold)")
            reached = f"images that got there within {int(cap) - 1} iterations"
            c.evidence = [
                _evidence(f"{k}: median iterations from its learned start {target}",
                          float(np.median(warp)), "iterations", len(warp), view),
                _evidence("cold-start LCA: median iterations from zeros, the same target",
                          float(np.median(cold)), "iterations", len(cold), view),
                _evidence(f"{k}: {reached}", int(frame["iterations_to_target"].notna().sum()),
                          "count", len(frame), view),
                _evidence(f"cold-start LCA: {reached}",
                          int(frame["cold_iterations_to_target"].notna().sum()), "count",
                          len(frame), view)]
            t = self.within_run_test("iterations to the target: WARP-LCA \u2212 cold LCA",
                                     "coding:iterations_to_target", cold, warp, "iterations",
                                     view)
            c.tests = [t]
            ratio_ok = float(np.median(cold)) >= 10 * float(np.median(warp))
            c.verdict = (directional_verdict(t["delta"], t["p_value"], direction=-1,
                                             alpha=self.alpha) if ratio_ok else NOT_SUPPORTED)
            out.append(c)
        return out

    def final_energy(self) -> list[Claim]:
        """WARP-LCA's energy after its own iterations vs cold LCA's after the reference
        iterations, hard threshold, from one coding run (the same images)."""
        out = []
        for e in self.candidates(WARP):
            k = self.key(e, WARP)
            c = Claim(id=f"lca-final-energy:{k}", section=LCA_SECTION, paper="warp_lca.md",
                      models={"model": k},
                      claim=f"With hard thresholding WARP-LCA ({k}) ends at a lower energy than "
                            "cold-start LCA (warp_lca.md).",
                      rule="Supported if, with the hard threshold, WARP-LCA's energy after its "
                           "own iterations is lower than cold-start LCA's after the coding "
                           "run's reference iterations (the paper's LCA-1000 by default) on "
                           "average over the same images and the paired permutation test "
                           f"gives p < {self.alpha}; otherwise not supported.")
            view = self.coding_run(e, hard=True)
            if view is None:
                c.missing = self.coding_missing(e, k, hard=True)
                out.append(c)
                continue
            frame = self.store.to_frame([view.run_id])
            own = frame["energy"].astype("float64").to_numpy()
            ref = frame["energy_reference"].astype("float64").to_numpy()
            iters = view.summary["model_iterations"].iloc[0]
            refk = view.params.get("reference_iterations")
            c.evidence = [
                _evidence(f"{k}: mean energy after its {iters} iterations (hard threshold)",
                          float(own.mean()), "", len(own), view),
                _evidence(f"cold-start LCA: mean energy after {refk} iterations (hard "
                          "threshold)", float(ref.mean()), "", len(ref), view)]
            t = self.within_run_test("energy: WARP-LCA \u2212 cold LCA", "coding:energy", ref,
                                     own, "", view)
            c.tests = [t]
            c.verdict = directional_verdict(t["delta"], t["p_value"], direction=-1,
                                            alpha=self.alpha)
            out.append(c)
        return out

    def within_run_test(self, what: str, metric: str, a, b, unit: str, view: RunView
                        ) -> dict[str, Any]:
        """Two per-example quantities of one run (the same images by construction): mean
        b - a, paired bootstrap CI and permutation p (:mod:`reports.stats`)."""
        low, high = paired_bootstrap_ci(a, b, n_resamples=self.resamples, seed=self.seed)
        p = paired_permutation_p(a, b, n_resamples=self.resamples, seed=self.seed)
        return {"what": what, "metric": metric, "a": float(np.mean(a)), "b": float(np.mean(b)),
                "delta": float(np.mean(b) - np.mean(a)), "ci_low": _num(low),
                "ci_high": _num(high), "p_value": _num(p), "test": "permutation",
                "n": int(len(a)), "unit": unit, "a_only": None, "b_only": None,
                "direction": -1, "runs": [view.run_id, view.run_id]}

    def coding_missing(self, entry: ModelEntry | None, key: str, *, hard: bool) -> list[str]:
        what = "hard-threshold coding run" if hard else "coding run"
        head = (f"no {key} model in the store" if entry is None
                else f"no {what} of {key} in the store")
        cmd = self.command("coding", [(WARP, entry)],
                           {"threshold": "hard"} if hard else {"threshold": "model"})
        return [f"{head}. To measure it: {cmd}"]

    def lca(self) -> list[Claim]:
        out = [*self.iterations(), *self.final_energy()]
        out += self.paired_claim(
            id="lca-sparser-codes", section=LCA_SECTION, paper="warp_lca.md", a_name=LCA,
            b_name=WARP, measures=(("sparsity", "code_l0_fraction"),), unit="%", direction=-1,
            what="nonzero fraction of the code per image (l0)",
            claim="WARP-LCA ({b}) gives sparser codes than cold-start LCA ({a}) "
                  "(warp_lca.md).",
            rule="Supported if {b}'s per-image fraction of nonzero code entries is lower than "
                 "{a}'s on average over the same images and the paired permutation test gives "
                 "p < {alpha}; otherwise not supported.")
        noise_pairs = ((LCA, WARP, "WARP-LCA ({b}) is more robust to {c} than cold-start "
                                   "LCA ({a}) as a classifier front end (warp_lca.md: "
                                   "'better robustness when used as the front end')."),
                       (RELU, WARP, "The WARP-LCA front end ({b}) makes the classifier more "
                                    "robust to {c} than the plain ResNet-8 ({a}) (warp_lca.md: "
                                    "'better robustness when used as the front end')."),
                       (RELU, LCA, "The cold-start LCA front end ({b}) makes the classifier "
                                   "more robust to {c} than the plain ResNet-8 ({a}) (the "
                                   "sparse-coding front end warp_lca.md builds on)."))
        for a_name, b_name, sentence in noise_pairs:
            for corruption in NOISE:
                human = corruption.replace("_", " ")
                out += self.paired_claim(
                    id=f"lca-noise-{corruption}-vs-{a_name}", section=LCA_SECTION,
                    paper="warp_lca.md", a_name=a_name, b_name=b_name,
                    measures=(("cifar10c", corruption),), unit="%", direction=+1,
                    what=f"accuracy under {human} (mean over severities)",
                    overrides={"corruptions": list(NOISE)},
                    context=(("cifar10c", "clean", "clean accuracy"),),
                    claim=sentence.replace("{c}", human),
                    rule="Supported if {b}'s accuracy under CIFAR-10-C " + human + " (per "
                         "image, the mean over the stored severities) minus {a}'s is positive "
                         "and the paired test (permutation over several severities, exact "
                         "McNemar for one) gives p < {alpha}; otherwise not supported.")
        out += self.per_threat(
            id="lca-robust", section=LCA_SECTION, paper="warp_lca.md", a_name=LCA, b_name=WARP,
            claim="WARP-LCA ({b}) keeps more images correct than cold-start LCA ({a}) under "
                  "PGD at {threat}, attacked through every gradient path (unrolled and BPDA) "
                  "(warp_lca.md: 'better robustness when used as the front end').",
            rule="Supported if {b}'s accuracy under the stored PGD attack at {threat} (worst "
                 "over its gradient paths) minus {a}'s, on the same images, is positive, "
                 "the exact McNemar test gives p < {alpha}, and " + NO_MASKING_FLAG + "; "
                 "otherwise not supported.")
        return out


def findings(store: Store, entries: Sequence[ModelEntry], *, alpha: float = 0.05,
             resamples: int = 2000, seed: int = 0) -> list[Claim]:
    """The claims of the seed papers, judged from ``store`` for the models in ``entries``
    (:func:`reports.collect.collect`), section by section (:data:`SECTIONS`).

    Raises:
        HarnessError: ``alpha`` not strictly between 0 and 1.
    """
    if not (0 < alpha < 1):
        raise HarnessError(f"alpha: expected a number between 0 and 1, got {alpha:g}")
    judge = _Findings(store, entries, alpha=alpha, resamples=resamples, seed=seed)
    return [*judge.sugar(), *judge.splines(), *judge.lca()]
