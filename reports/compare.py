"""``harness compare A B``: a paired comparison of two models (or runs) on the examples both
evaluated, read from the store; nothing is recomputed.

A and B are each a model key or name, a checkpoint path (matched by its sha256) or a run id
prefix (:func:`resolve`). For every suite both have, the two runs must be comparable: same
suite, data fingerprint and seed, parameters equal except ``n``/``shard_size`` (otherwise the
suite is skipped with a note, and ``--fail-on-drop`` refuses to gate without it). Examples are
paired on (condition keys, example index) present in both runs, and :func:`paired_metrics`
gives one row per metric:

* ``accuracy`` rows: the fraction correct. On one condition (one corruption at one severity,
  one attack threat, the clean set) the test is the exact McNemar test (``mcnemar-exact``, with
  the discordant counts ``a_only``/``b_only``); a metric pooling several conditions (the
  CIFAR-10-C mean, a severity, a corruption over its severities) takes per example the mean
  over those conditions, so an example's conditions stay together, and the test is a paired
  sign-flip permutation test (``permutation``). Over the same examples ``a``/``b`` are the
  suites' own headline numbers (unweighted means over conditions, as the suites define them).
  ``pgd:worst``/``autoattack:worst``: per example, robust under every stored attack run of
  the model at the largest Linf eps (else the largest L2 eps), as ``harness show`` counts it,
  except that only attack runs whose (suite, parameters but ``n``/``shard_size``) both sides
  have count, so that both worst cases are over the same attacks (a run left out is named in
  a note).
* ``value`` rows: a per-example number (a Jacobian norm, a zero fraction): mean over the paired
  examples, permutation test. An example whose value is NaN in A or B is left out (a note
  says how many), except the ``coding`` suite's iteration counts, where NaN means "did not
  reach the target within ``max_iterations``": those count as ``max_iterations + 1`` (right-
  censored, so the means are lower bounds; a note says how many).
* ``model`` rows: one number per model (the certified Lipschitz bound, dead units): the
  suites' headline values, no test (``n`` 0, CI and p NaN, ``test`` "-"); ``--metric`` cannot
  watch them.

A row over fewer than two paired examples has no test and no CI (p and CI NaN, test "-",
never significant; a note says so).

``resamples`` (at least 100) serves both the bootstrap and the permutation test, whose smallest
two-sided p is about 2 / (resamples + 1): an ``alpha`` below that is refused, since no
permutation row could ever be significant. ``seed`` seeds both.

Every delta is B - A with a paired bootstrap 95 % CI over examples (:mod:`reports.stats`).
Each metric is tested on its own at ``alpha``: there is no correction for multiple
comparisons, so with several watched metrics the chance that some unchanged metric shows a
"significant" drop is larger than ``alpha`` (the verdict and captions say so).

:func:`compare_refs` (references) and :func:`compare_entries` (``reports.collect`` entries, no
re-collection of the store) gather the rows of every shared suite into a :class:`Comparison`,
which renders as a rich table, GitHub markdown (a one-line verdict first, for a pull-request
comment) or JSON; :func:`compare_cli` is what ``harness compare`` runs (``--fail-on-drop PP``:
exit 1 when a watched metric drops significantly by more than PP percentage points).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.store import Store
from harness.suites import SUITES
from harness.suites.adversarial import (
    ATTACK_SUITES,
    attack_peers,
    eps_label,
    headline_threat,
    robust_examples,
)
from reports.collect import (
    ModelEntry,
    RunView,
    checkpoint_sha256,
    collect,
    find_models,
    model_identity,
    view_run,
)
from reports.stats import mcnemar_exact, paired_bootstrap_ci, paired_permutation_p

COLUMNS = ["metric", "suite", "kind", "n", "a", "b", "delta", "ci_low", "ci_high", "p_value",
           "test", "a_only", "b_only", "significant"]
SUITE_ORDER = ("clean", "cifar10c", "pgd", "autoattack", "lipschitz", "sparsity")
# The headline accuracy --fail-on-drop watches by default, per suite (other suites: accuracy).
DEFAULT_WATCH = {"clean": "accuracy", "cifar10c": "mean", "pgd": "worst", "autoattack": "worst",
                 "lipschitz": "accuracy", "sparsity": "accuracy"}
# Per-example numeric fields compared as `value` rows, and headline keys shown as `model` rows.
VALUE_FIELDS = {"lipschitz": ("jacobian_norm", "pair_ratio"),
                "sparsity": ("zero_fraction", "code_l0_fraction"),
                "pgd": (), "autoattack": (), "cifar10c": (), "clean": ()}
MODEL_KEYS = {"lipschitz": ("upper", "lower"), "sparsity": ("dead_units",)}
# Per-example fields whose NaN means "not within the run parameter's count": right-censored at
# that parameter + 1 instead of dropped (harness.suites.coding stores NaN for an example that did
# not reach the target within max_iterations).
CENSORED = {"coding": {"iterations_to_target": "max_iterations",
                       "cold_iterations_to_target": "max_iterations"}}
MIN_RESAMPLES = 100
MINUS = "\u2212"


# -- resolving references ---------------------------------------------------------------------
def resolve(store: Store, ref: str, *, entries: list | None = None) -> list[RunView]:
    """The runs a reference names in ``store``: every suite's chosen run of a model (a model
    key or name, or a checkpoint path matched by its sha256), else the one run whose id starts
    with ``ref``.

    Raises:
        HarnessError: a name that matches several models (different weights), a checkpoint no
            run evaluated, or nothing found (the message names what the store holds).

    ``entries``: ``reports.collect.collect(store)`` when the caller has it already.
    """
    entries = collect(store) if entries is None else entries
    models = find_models(entries, ref)
    if len(models) > 1:
        raise HarnessError(
            f"{ref!r} matches {len(models)} models with different weights in store "
            f"{store.path!r} ({', '.join(e.key for e in models)}): give a model key, the "
            "checkpoint path or a run id")
    if models:
        return sorted(models[0].runs.values(), key=lambda v: _suite_rank(v.suite))
    if ref and any(r["run_id"].startswith(ref) for r in store.runs()):
        return [view_run(store, store.find_run(ref))]   # ambiguous prefix: find_run says so
    held = ", ".join(e.key for e in entries) or "no models"
    path = Path(ref).expanduser()
    what = (f"checkpoint {ref!r} was not evaluated" if path.is_file()
            else f"no model, checkpoint or run {ref!r}")
    raise HarnessError(f"{what} in store {store.path!r}; it holds {held} "
                       "(see 'harness ls runs')")


def _suite_rank(suite: str) -> tuple[int, str]:
    return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite)


def comparable(view_a: RunView, view_b: RunView) -> str | None:
    """Why two runs cannot be paired (None when they can): a different suite, data, seed, or
    parameters other than n/shard_size; a run without stored examples."""
    if view_a.suite != view_b.suite:
        return f"different suites ({view_a.suite} vs {view_b.suite})"
    sa, sb = view_a.spec, view_b.spec
    if sa.get("data_fingerprint") != sb.get("data_fingerprint"):
        return (f"different data ({sa.get('data')} {str(sa.get('data_fingerprint'))[:8]} vs "
                f"{sb.get('data')} {str(sb.get('data_fingerprint'))[:8]})")
    if sa.get("seed") != sb.get("seed"):
        return (f"different seeds ({sa.get('seed')} vs {sb.get('seed')}): the generated inputs "
                "and attack starts differ")
    pa, pb = _setting(view_a.params), _setting(view_b.params)
    if pa != pb:
        diff = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
        return f"different parameters ({', '.join(diff)})"
    if not view_a.run["n"] or not view_b.run["n"]:
        return "a run has no stored examples"
    return None


# -- paired metrics -----------------------------------------------------------------------------
def _examples(store: Store, view: RunView) -> tuple[pd.DataFrame, list[str]]:
    """A run's per-example rows and its condition keys (attack suites: no checks shard)."""
    keys = list(store.condition_summary(view.run_id).columns)
    keys = keys[:keys.index("n")]
    frame = store.to_frame([view.run_id])
    if view.suite in ATTACK_SUITES and "norm" in frame:
        frame = frame[frame["norm"] != "checks"]
    return frame, keys


@dataclass(frozen=True)
class _Metric:
    """A paired metric over the conditions ``mask`` selects, on ``column`` (``correct``: an
    accuracy; else a per-example numeric field)."""

    key: str
    kind: str
    mask: Callable[[pd.DataFrame], Any]
    column: str = "correct"


def _metrics(suite: str, pairs: pd.DataFrame, keys: Sequence[str]) -> list[_Metric]:
    """The accuracy and value metrics of a suite, in the order the table shows them."""
    out: list[_Metric] = []
    if suite == "cifar10c":
        from harness.corruptions import list_corruptions  # lazy: torch

        bench = list_corruptions()
        sev, cor = pairs["severity"].astype(int), pairs["corruption"]
        is_bench = cor.isin(bench) & (sev > 0)
        out += [_Metric("clean", "accuracy", lambda p: sev == 0),
                _Metric("mean", "accuracy", lambda p: is_bench)]
        for s in sorted(set(sev[is_bench])):
            out.append(_Metric(f"s{s}", "accuracy", lambda p, s=s: is_bench & (sev == s)))
        out.append(_Metric("extras", "accuracy", lambda p: (sev > 0) & ~cor.isin(bench)))
        present = set(cor[sev > 0])
        for name in [c for c in list_corruptions(include_extra=True) if c in present] + sorted(
                present - set(list_corruptions(include_extra=True))):
            out.append(_Metric(name, "accuracy", lambda p, c=name: (sev > 0) & (cor == c)))
    elif suite in ATTACK_SUITES:
        order = {"none": 0, "Linf": 1, "L2": 2}
        threats = sorted({(r.norm, float(r.eps)) for r in pairs[["norm", "eps"]].itertuples()},
                         key=lambda t: (order.get(t[0], 3), t[1]))
        for norm, eps in threats:
            name = "clean" if norm == "none" else f"{norm} {eps_label(norm, eps)}"
            out.append(_Metric(name, "accuracy", lambda p, t=(norm, eps): _at_threat(p, *t)))
    else:
        out.append(_Metric("accuracy", "accuracy", lambda p: pd.Series(True, index=p.index)))
        conds = list(dict.fromkeys(pairs["cond"])) if len(keys) else []
        if len(conds) > 1:
            for c in conds:
                out.append(_Metric(c, "accuracy", lambda p, c=c: p["cond"] == c))
    declared = VALUE_FIELDS.get(suite)
    if declared is None and suite in SUITES:
        declared = tuple(f.name for f in SUITES.get(suite).fields if f.type in (int, float))
    for name in declared or ():
        if f"{name}_a" in pairs:
            out.append(_Metric(name, "value", lambda p: pd.Series(True, index=p.index), name))
    return out


def _at_threat(pairs: pd.DataFrame, norm: str, eps: float):
    return (pairs["norm"] == norm) & ((pairs["eps"].astype(float) - eps).abs() < 1e-9)


def _setting(params: dict[str, Any]) -> dict[str, Any]:
    """A run's parameters but how many examples and how they are sharded: what must match for
    two runs to measure the same thing."""
    return {k: v for k, v in params.items() if k not in ("n", "shard_size")}


def _attack_key(run: dict[str, Any]) -> tuple[str, str]:
    """What makes two attack runs the same attack: the suite and :func:`_setting`."""
    return run["suite"], json.dumps(_setting(run["spec"].get("params", {})), sort_keys=True,
                                    default=str)


def _peer_name(run: dict[str, Any], view: RunView) -> str:
    """``run 1a2b3c4d5e6f (pgd, steps=6)``: the run with what sets it apart from ``view``."""
    params, mine = _setting(run["spec"].get("params", {})), _setting(view.params)
    diff = [f"{k}={params.get(k)}" for k in sorted(set(params) | set(mine))
            if params.get(k) != mine.get(k)]
    return f"run {run['run_id'][:12]} ({', '.join([run['suite'], *diff])})"


def _common_peers(store_a: Store, view_a: RunView, store_b: Store, view_b: RunView
                  ) -> tuple[list[str], list[str], list[str]]:
    """The attack runs each side's worst case is over (ids, A then B): those whose
    (suite, parameters but n/shard_size) both sides have, so that the two worst cases are
    over the same attacks; and a note per run left out."""
    peers_a, peers_b = (attack_peers(store_a.runs(), view_a.spec),
                        attack_peers(store_b.runs(), view_b.spec))
    keys_a = {_attack_key(r) for r in peers_a}
    keys_b = {_attack_key(r) for r in peers_b}
    notes = []
    kept: list[list[str]] = []
    for side, other, peers, view in (("A", "B", peers_a, view_a), ("B", "A", peers_b, view_b)):
        theirs = keys_b if side == "A" else keys_a
        kept.append([r["run_id"] for r in peers if _attack_key(r) in theirs])
        notes += [f"{view.suite}:worst: {side}'s attack {_peer_name(r, view)} left out of the "
                  f"worst case: {other} has no run of that attack"
                  for r in peers if _attack_key(r) not in theirs]
    return kept[0], kept[1], notes


def _worst_examples(store: Store, view: RunView, norm: str, eps: float,
                    peers: Sequence[str]) -> pd.Series:
    """Per example of the run at a threat: robust under every run of ``peers`` (attack runs of
    the same model and data, the run among them) that evaluated it: the per-example form of
    ``harness.suites.adversarial.worst_case``."""
    frame = store.to_frame(list(dict.fromkeys([view.run_id, *peers])))
    return robust_examples(frame[frame["norm"].isin(["Linf", "L2"])], view.run_id, norm, eps)


def _row(suite: str, key: str, kind: str, a: np.ndarray, b: np.ndarray, *, single: bool,
         resamples: int, seed: int, alpha: float, notes: list[str]) -> dict[str, Any]:
    """One paired row from per-example values (``single``: one condition's 0/1 outcomes).
    Fewer than two examples: no test, no CI (NaN), not significant, and a line in ``notes``."""
    metric = f"{suite}:{key}"
    a_only = b_only = math.nan
    if a.size < 2:
        notes.append(f"{metric}: {a.size} paired example{'s' * (a.size != 1)}: no test and no "
                     "confidence interval (they need at least 2)")
        low = high = p = math.nan
        test = "-"
        if kind == "accuracy" and single:
            m = mcnemar_exact(a.astype(bool), b.astype(bool))
            a_only, b_only = m.a_only, m.b_only
    else:
        low, high = paired_bootstrap_ci(a, b, n_resamples=resamples, seed=seed)
        if kind == "accuracy" and single:
            m = mcnemar_exact(a.astype(bool), b.astype(bool))
            p, test, a_only, b_only = m.p_value, "mcnemar-exact", m.a_only, m.b_only
        else:
            p = paired_permutation_p(a, b, n_resamples=resamples, seed=seed)
            test = "permutation"
    ma, mb = float(np.mean(a)), float(np.mean(b))
    return {"metric": metric, "suite": suite, "kind": kind, "n": int(a.size),
            "a": ma, "b": mb, "delta": mb - ma, "ci_low": low, "ci_high": high,
            "p_value": float(p), "test": test, "a_only": float(a_only), "b_only": float(b_only),
            "significant": bool(p < alpha)}   # NaN < alpha is False


@dataclass(frozen=True)
class _Pooled:
    """Per-example values of one metric for A and B (``a``, ``b``), the condition count, and
    what became of NaN values: examples left out (``dropped``) or counted at the censoring
    value (``censored_a``/``censored_b``)."""

    a: np.ndarray
    b: np.ndarray
    conditions: int
    examples: int
    dropped: int = 0
    censored_a: int = 0
    censored_b: int = 0


def _pooled(sel: pd.DataFrame, column: str, censor: float | None = None) -> _Pooled:
    """Per example, the mean of ``column`` over the selected conditions, for A and B; only
    examples with a row in every selected condition in both runs. A NaN value is replaced by
    ``censor`` when given (a right-censored count), else its example is left out."""
    frame = pd.DataFrame({"example": sel["example"].to_numpy(), "cond": sel["cond"].to_numpy(),
                          "a": sel[f"{column}_a"].to_numpy(dtype="float64"),
                          "b": sel[f"{column}_b"].to_numpy(dtype="float64"), "present": 1.0})
    wa, wb, present = (frame.pivot(index="example", columns="cond", values=v)
                       for v in ("a", "b", "present"))
    complete = present.notna().all(axis=1)             # a row in every condition
    wa, wb, complete = wa[complete], wb[complete], int(complete.sum())
    censored = (0, 0)
    if censor is not None:
        censored = (int(wa.isna().any(axis=1).sum()), int(wb.isna().any(axis=1).sum()))
        wa, wb = wa.fillna(censor), wb.fillna(censor)
    keep = (wa.notna().all(axis=1) & wb.notna().all(axis=1)).to_numpy()
    return _Pooled(a=wa.to_numpy()[keep].mean(axis=1), b=wb.to_numpy()[keep].mean(axis=1),
                   conditions=int(wa.shape[1]), examples=complete,
                   dropped=complete - int(keep.sum()), censored_a=censored[0],
                   censored_b=censored[1])


def _censor_value(suite: str, column: str, view: RunView) -> tuple[str, float] | None:
    """(parameter, value) a NaN of ``column`` is counted as (the parameter + 1), or None."""
    param = CENSORED.get(suite, {}).get(column)
    if param is None or view.params.get(param) is None:
        return None
    return param, float(view.params[param]) + 1


def _metric_rows(suite: str, pairs: pd.DataFrame, keys: Sequence[str], *,
                 censor: dict[str, tuple[str, float]], resamples: int, seed: int,
                 alpha: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The accuracy and value rows of paired examples (``pairs``: the merged per-example rows
    of A and B with a ``cond`` column), and notes on examples left out or censored."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for m in _metrics(suite, pairs, keys):
        sel = pairs[np.asarray(m.mask(pairs), dtype=bool)]
        if not len(sel):
            continue
        cens = censor.get(m.column)
        got = _pooled(sel, m.column, None if cens is None else cens[1])
        metric = f"{suite}:{m.key}"
        if got.dropped and got.dropped == got.examples:
            notes.append(f"{metric}: not compared: the value is NaN for all {got.examples} "
                         "paired examples in A or B")
        elif got.dropped:
            notes.append(f"{metric}: {got.dropped} of {got.examples} paired examples left out: "
                         "the value is NaN in A or B")
        if got.censored_a or got.censored_b:
            param, value = cens
            notes.append(f"{metric}: NaN (not reached within {param} {value - 1:g}) counted as "
                         f"{value:g} for {got.censored_a} examples of A and {got.censored_b} "
                         "of B (right-censored: the means are lower bounds)")
        if got.a.size:
            rows.append(_row(suite, m.key, m.kind, got.a, got.b, single=got.conditions == 1,
                             resamples=resamples, seed=seed, alpha=alpha, notes=notes))
    return rows, notes


_MEMO: dict | None = None


@contextlib.contextmanager
def memoized():
    """Within the block, :func:`paired_metrics` computes each pair of runs once (the site's
    compare page and findings page pair many of the same runs). Scoped, not global: a store
    may gain executions between two calls of a long-lived process."""
    global _MEMO
    outer, _MEMO = _MEMO, ({} if _MEMO is None else _MEMO)
    try:
        yield
    finally:
        _MEMO = outer


def paired_metrics(store_a: Store, view_a: RunView, store_b: Store, view_b: RunView, *,
                   resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Memoized inside :func:`memoized`; see :func:`_paired_metrics`."""
    if _MEMO is None:
        return _paired_metrics(store_a, view_a, store_b, view_b, resamples=resamples, seed=seed,
                               alpha=alpha)
    key = (str(store_a.path), view_a.run_id, view_a.run["exec_id"], str(store_b.path),
           view_b.run_id, view_b.run["exec_id"], resamples, seed, alpha)
    if key not in _MEMO:
        _MEMO[key] = _paired_metrics(store_a, view_a, store_b, view_b, resamples=resamples,
                                     seed=seed, alpha=alpha)
    out = _MEMO[key].copy()
    out.attrs = {k: list(v) if isinstance(v, list) else v for k, v in _MEMO[key].attrs.items()}
    return out


def _paired_metrics(store_a: Store, view_a: RunView, store_b: Store, view_b: RunView, *,
                    resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparison of two runs of one suite (A = baseline, B = candidate), one row per
    metric; columns :data:`COLUMNS` (see the module docstring). ``attrs["notes"]``: lines on
    what was paired (e.g. fewer examples than a run holds, examples left out for NaN values,
    censored counts, attack runs left out of the worst case, rows with no test).

    Raises:
        HarnessError: the runs are not comparable (:func:`comparable`), or share no example,
            or their labels differ on a shared example.
    """
    suite = view_a.suite
    reason = comparable(view_a, view_b)
    if reason:
        raise HarnessError(f"{suite}: runs {view_a.run_id[:12]} and {view_b.run_id[:12]} cannot "
                           f"be paired: {reason}")
    fa, keys = _examples(store_a, view_a)
    fb, _ = _examples(store_b, view_b)
    on = [*keys, "example"]
    pairs = fa.merge(fb, on=on, suffixes=("_a", "_b"))
    notes = []
    if not len(pairs):
        raise HarnessError(f"{suite}: runs {view_a.run_id[:12]} and {view_b.run_id[:12]} share "
                           "no (condition, example)")
    if (pairs["label_a"] != pairs["label_b"]).any():
        raise HarnessError(f"{suite}: the labels of runs {view_a.run_id[:12]} and "
                           f"{view_b.run_id[:12]} differ on shared examples: not the same data")
    if len(pairs) < max(len(fa), len(fb)):
        notes.append(f"{suite}: paired {len(pairs)} (condition, example) rows; A has {len(fa)}, "
                     f"B has {len(fb)}")
    pairs["cond"] = pairs[keys].astype(str).agg("/".join, axis=1) if keys else ""
    opts = {"resamples": resamples, "seed": seed, "alpha": alpha}
    censor = {c: v for c in CENSORED.get(suite, {})
              if (v := _censor_value(suite, c, view_a)) is not None}
    rows, more = _metric_rows(suite, pairs, keys, censor=censor, **opts)
    notes += more
    if suite in ATTACK_SUITES:
        threat = headline_threat(zip(pairs["norm"], pairs["eps"].astype(float)))
        if threat is not None:
            norm, eps = threat
            peers_a, peers_b, left_out = _common_peers(store_a, view_a, store_b, view_b)
            notes += left_out
            wa = _worst_examples(store_a, view_a, norm, eps, peers_a)
            wb = _worst_examples(store_b, view_b, norm, eps, peers_b)
            both = wa.index.intersection(wb.index)
            if len(both):
                rows.append(_row(suite, "worst", "accuracy", wa[both].to_numpy(float),
                                 wb[both].to_numpy(float), single=True, notes=notes, **opts))
    for key in MODEL_KEYS.get(suite, ()):
        a, b = view_a.headline.get(key, math.nan), view_b.headline.get(key, math.nan)
        rows.append({"metric": f"{suite}:{key}", "suite": suite, "kind": "model", "n": 0,
                     "a": float(a), "b": float(b), "delta": float(b) - float(a),
                     "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "test": "-",
                     "a_only": math.nan, "b_only": math.nan, "significant": False})
    return _frame(rows, notes)


def _frame(rows: list[dict[str, Any]], notes: list[str]) -> pd.DataFrame:
    """Rows as a frame with :data:`COLUMNS` (also when there are none)."""
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["n"] = out["n"].astype("int64")
    out["significant"] = out["significant"].astype(bool)
    for col in ("a", "b", "delta", "ci_low", "ci_high", "p_value", "a_only", "b_only"):
        out[col] = out[col].astype("float64")
    out.attrs["notes"] = notes
    return out


# -- a comparison of two references -------------------------------------------------------------
def _label(store: Store, ref: str, views: Sequence[RunView]) -> dict[str, Any]:
    v = views[0]
    return {"ref": ref, "model": v.run["model"], "fingerprint": v.spec.get("model_fingerprint"),
            "checkpoint_sha256": checkpoint_sha256(model_identity(views)),
            "store": store.path, "runs": {x.suite: x.run_id for x in views}}


def _entry_label(store: Store, entry: ModelEntry) -> dict[str, Any]:
    views = sorted(entry.runs.values(), key=lambda v: _suite_rank(v.suite))
    if views:
        return _label(store, entry.key, views)
    return {"ref": entry.key, "model": entry.name, "fingerprint": entry.fingerprint,
            "checkpoint_sha256": entry.checkpoint_sha256, "store": store.path, "runs": {}}


def label_text(label: dict[str, Any]) -> str:
    """``model (fp 0fcc7f17, sha efd88d32)``."""
    sha = label.get("checkpoint_sha256")
    return (f"{label['model']} (fp {str(label.get('fingerprint'))[:8]}"
            + (f", sha {sha[:8]})" if sha else ")"))


@dataclass
class Comparison:
    """Paired rows of every suite A and B share, with their labels and notes.

    ``watched``: the metrics the verdict (and ``--fail-on-drop``) looks at (default: each
    compared suite's headline accuracy), each tested on its own at ``alpha`` (no correction for
    multiple comparisons); ``threshold_pp``: the drop in percentage points that counts (None:
    any significant drop, and the CLI exits 0 whatever the verdict). ``skipped``: (suite,
    reason) of the suites both sides have that could not be paired. ``rows`` may be empty
    (nothing comparable; :func:`compare_entries`): the outputs then say so.
    """

    a: dict[str, Any]
    b: dict[str, Any]
    rows: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    alpha: float = 0.05
    watched: list[str] = field(default_factory=list)
    threshold_pp: float | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.watched:
            self.watched = default_watched(self.rows)

    @property
    def metrics(self) -> list[str]:
        return list(self.rows["metric"])

    def regressions(self) -> pd.DataFrame:
        """Watched rows with a significant drop beyond the threshold (accuracies: more than
        ``threshold_pp`` percentage points; values: more than ``threshold_pp`` raw units)."""
        thr = self.threshold_pp or 0.0
        r = self.rows
        limit = np.where(r["kind"] == "accuracy", -thr / 100, -thr)
        hit = r["metric"].isin(self.watched) & r["significant"] & (r["kind"] != "model") \
            & (r["delta"] < limit)
        return r[hit.to_numpy()]

    def verdict(self, *, markdown: bool = False) -> str:
        """One line: the regressions, or that there is no significant drop (or nothing was
        compared). It says that each watched metric is tested at alpha on its own."""
        if not len(self.rows):
            return "Nothing compared: no suite could be paired (see the notes)"
        bad = self.regressions()
        each = (f"each watched metric tested at alpha {self.alpha:g}, without correction for "
                "multiple comparisons")
        if len(bad):
            parts = [f"{r.metric} {_delta(r.kind, r.delta, 1)} (95 % CI "
                     f"{_num(r.kind, r.ci_low, 1)} to {_num(r.kind, r.ci_high, 1)}, "
                     f"p {_p_eq(r.p_value)})" for r in bad.itertuples(index=False)]
            head = "**Regression**" if markdown else "Regression"
            return f"{head}: " + "; ".join(parts) + f" ({each})"
        beyond = (f" of more than {self.threshold_pp:g} pp" if self.threshold_pp else "")
        return (f"No significant drop{beyond} (watched: {', '.join(self.watched) or 'none'}; "
                f"{each})")

    def to_dict(self) -> dict[str, Any]:
        rows = [{k: _jsonable(v) for k, v in rec.items()}
                for rec in self.rows.to_dict(orient="records")]
        return {"a": self.a, "b": self.b, "alpha": self.alpha,
                "fail_on_drop_pp": self.threshold_pp, "watched": list(self.watched),
                "verdict": {"regression": bool(len(self.regressions())),
                            "regressions": list(self.regressions()["metric"]),
                            "text": self.verdict()},
                "notes": list(self.notes),
                "skipped": [{"suite": s, "reason": r} for s, r in self.skipped], "rows": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def cells(self, r, *, mark_significant: bool = True) -> list[str]:
        mark = "*" if r.significant and mark_significant else ""
        discord = ("-" if r.a_only != r.a_only
                   else f"{int(r.a_only)} / {int(r.b_only)}")
        ci = ("-" if r.ci_low != r.ci_low
              else f"[{_num(r.kind, r.ci_low, 2)}, {_num(r.kind, r.ci_high, 2)}]")
        return [r.metric, str(r.n) if r.n else "-", _value(r.kind, r.a), _value(r.kind, r.b),
                _delta(r.kind, r.delta, 2) + mark, ci, _p(r.p_value), r.test, discord]

    HEADER = ["metric", "n", "A", "B", "\u0394 (B \u2212 A)", "95 % CI", "p", "test",
              "A only / B only"]

    def caption(self, significant: str = "*") -> str:
        return ("accuracies in %, \u0394 and CI in percentage points; "
                f"{significant}: p < {self.alpha:g}, each metric tested on its own (no "
                "correction for multiple comparisons); A only / B only: examples only A / only B "
                "got right (McNemar's discordant pairs); value rows: means over paired examples")

    def to_table(self, width: int = 160) -> str:
        """A rich table rendered to plain text, then the notes and the verdict."""
        from rich.console import Console
        from rich.table import Table

        console = Console(file=io.StringIO(), width=width, color_system=None,
                          force_terminal=False, highlight=False)
        table = Table(title=f"A {label_text(self.a)}  vs  B {label_text(self.b)}",
                      caption=self.caption())
        for i, col in enumerate(self.HEADER):
            table.add_column(col, justify="left" if i in (0, 7) else "right")
        for r in self.rows.itertuples(index=False):
            table.add_row(*self.cells(r))
        console.print(table)
        for note in self.notes:
            console.print(f"note: {note}", soft_wrap=True)
        console.print(self.verdict(), soft_wrap=True)
        return console.file.getvalue()

    def to_markdown(self) -> str:
        """GitHub-flavoured markdown for a pull-request comment: the verdict line first."""
        lines = [self.verdict(markdown=True), "",
                 f"A (baseline): `{label_text(self.a)}` \u2014 B (candidate): "
                 f"`{label_text(self.b)}`", "",
                 "| " + " | ".join(self.HEADER) + " |",
                 "|" + "|".join(["---"] + ["---:"] * 6 + ["---", "---:"]) + "|"]
        for r in self.rows.itertuples(index=False):
            cells = [c.replace("|", "\\|") for c in self.cells(r, mark_significant=False)]
            if r.significant:
                cells[4] = f"**{cells[4]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", self.caption("bold \u0394") + "."]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def default_watched(rows: pd.DataFrame) -> list[str]:
    """Each compared suite's headline accuracy that the rows hold."""
    have = set(rows["metric"])
    out = []
    for suite in dict.fromkeys(rows["suite"]):
        name = f"{suite}:{DEFAULT_WATCH.get(suite, 'accuracy')}"
        if name in have:
            out.append(name)
    return out


def _check_resampling(resamples: int, alpha: float) -> None:
    """Refuse resamples below :data:`MIN_RESAMPLES` and an alpha no permutation row can reach
    (the test's smallest two-sided p-value is about 2 / (resamples + 1))."""
    if resamples < MIN_RESAMPLES:
        raise HarnessError(f"--resamples: expected at least {MIN_RESAMPLES}, got {resamples}")
    floor = 2 / (resamples + 1)
    if alpha < floor:
        raise HarnessError(f"--alpha {alpha:g} is below the permutation test's smallest "
                           f"p-value 2/(resamples + 1) = {floor:.3g} at --resamples "
                           f"{resamples}, so no permutation row could be significant: raise "
                           "--resamples")


def _same_store(store_a: Store, store_b: Store) -> bool:
    if store_a is store_b:
        return True
    if ":memory:" in (store_a.path, store_b.path):
        return False
    return Path(store_a.path).expanduser().resolve() == Path(store_b.path).expanduser().resolve()


def _compare_views(store_a: Store, views_a: dict[str, RunView], label_a: dict[str, Any],
                   store_b: Store, views_b: dict[str, RunView], label_b: dict[str, Any], *,
                   suites: Iterable[str] | None, resamples: int, seed: int, alpha: float,
                   lenient: bool) -> Comparison:
    """The comparison of A's and B's runs per suite; suites that cannot be paired are skipped
    with a note (``lenient``: also those whose runs share no example, or whose labels differ,
    which otherwise raise). The rows may be empty."""
    _check_resampling(resamples, alpha)
    notes: list[str] = []
    skipped: list[tuple[str, str]] = []
    if suites:
        wanted = [s if s in views_a or s in views_b else SUITES.resolve(s) for s in suites]
        wanted = list(dict.fromkeys(wanted))
    else:
        wanted = sorted(set(views_a) | set(views_b), key=_suite_rank)
    frames, same = [], []
    for suite in wanted:
        va, vb = views_a.get(suite), views_b.get(suite)
        if va is None or vb is None:
            side = "A" if vb is None and va is not None else "B" if va is None and vb else None
            notes.append(f"{suite} skipped: only {side} has it" if side
                         else f"{suite} skipped: neither has it")
            continue
        reason = comparable(va, vb)
        if reason:
            why = f"{reason} (runs {va.run_id[:12]}, {vb.run_id[:12]})"
            notes.append(f"{suite} skipped: {why}")
            skipped.append((suite, why))
            continue
        try:
            rows = paired_metrics(store_a, va, store_b, vb, resamples=resamples, seed=seed,
                                  alpha=alpha)
        except HarnessError as exc:
            if not lenient:
                raise
            notes.append(f"{suite} skipped: {exc}")
            skipped.append((suite, str(exc)))
            continue
        notes += rows.attrs.get("notes", [])
        for v in (va, vb):
            if not v.run["complete"]:
                notes.append(f"{suite}: run {v.run_id[:12]} is partial")
        if va.run_id == vb.run_id and _same_store(store_a, store_b):
            same.append(suite)
        frames.append(rows)
    if frames and len(same) == len(frames):
        notes.insert(0, "A and B are the same runs (" + ", ".join(
            f"{s} {views_a[s].run_id[:12]}" for s in same) + f" in store {store_a.path!r}): "
            "every difference is zero by construction")
    elif same:
        notes.insert(0, f"A and B are the same runs for {', '.join(same)}")
    rows = (pd.concat(frames, ignore_index=True) if len(frames) > 1
            else frames[0] if frames else _frame([], []))
    return Comparison(a=label_a, b=label_b, rows=rows.reset_index(drop=True), notes=notes,
                      alpha=alpha, skipped=skipped)


def compare_entries(store_a: Store, entry_a: ModelEntry, store_b: Store, entry_b: ModelEntry, *,
                    suites: Iterable[str] | None = None, resamples: int = 2000, seed: int = 0,
                    alpha: float = 0.05) -> Comparison:
    """Compare two models as :func:`reports.collect.collect` found them (A: ``entry_a`` of
    ``store_a``, B: ``entry_b`` of ``store_b``; each suite's chosen run) without collecting
    the stores again (a site compares every model with a reference).

    Unlike :func:`compare_refs` it does not raise when nothing is comparable: the rows are
    then empty and the notes say why (suites that cannot be paired, including runs that share
    no example, are skipped with a note).

    Raises:
        HarnessError: an unknown suite, or ``resamples``/``alpha`` refused (see the module
            docstring).
    """
    views_a = {v.suite: v for v in entry_a.runs.values()}
    views_b = {v.suite: v for v in entry_b.runs.values()}
    return _compare_views(store_a, views_a, _entry_label(store_a, entry_a),
                          store_b, views_b, _entry_label(store_b, entry_b), suites=suites,
                          resamples=resamples, seed=seed, alpha=alpha, lenient=True)


def compare_refs(store_a: Store, ref_a: str, store_b: Store, ref_b: str, *,
                 suites: Iterable[str] | None = None, resamples: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> Comparison:
    """Compare A (``ref_a`` in ``store_a``) with B (``ref_b`` in ``store_b``) on every suite
    both have (or only ``suites``); suites that cannot be paired are skipped with a note.

    Raises:
        HarnessError: a reference that resolves to nothing or several models, an unknown suite,
            ``resamples``/``alpha`` refused, runs that share no example, or nothing left to
            compare.
    """
    _check_resampling(resamples, alpha)
    entries_a = collect(store_a)
    entries_b = entries_a if store_b is store_a else collect(store_b)
    found_a = resolve(store_a, ref_a, entries=entries_a)
    found_b = resolve(store_b, ref_b, entries=entries_b)
    label_a, label_b = _label(store_a, ref_a, found_a), _label(store_b, ref_b, found_b)
    comp = _compare_views(store_a, {v.suite: v for v in found_a}, label_a,
                          store_b, {v.suite: v for v in found_b}, label_b, suites=suites,
                          resamples=resamples, seed=seed, alpha=alpha, lenient=False)
    if not len(comp.rows):
        raise HarnessError(f"nothing to compare between {label_text(label_a)} and "
                           f"{label_text(label_b)}: " + "; ".join(comp.notes))
    return comp


def compare_cli(args, default_store: str) -> tuple[str, int]:
    """``harness compare``: the rendered comparison and the exit status (1: a watched metric
    dropped significantly by more than ``--fail-on-drop`` percentage points; else 0).

    Raises:
        HarnessError: besides :func:`compare_refs`' errors, a ``--metric`` that is not a
            tested row, and ``--fail-on-drop`` (without ``--metric``) when a suite both sides
            have was skipped: the gate would silently lose it.
    """
    pp = args.fail_on_drop
    if pp is not None and not (math.isfinite(pp) and pp >= 0):
        raise HarnessError(f"--fail-on-drop: expected percentage points >= 0, got {pp:g}")
    if not (0 < args.alpha < 1):
        raise HarnessError(f"--alpha: expected a number between 0 and 1, got {args.alpha:g}")
    _check_resampling(args.resamples, args.alpha)
    path_b = args.store or default_store
    path_a = args.baseline_store or path_b
    with contextlib.ExitStack() as stack:
        store_b = stack.enter_context(Store(path_b, readonly=True))
        store_a = (store_b if Path(path_a).expanduser().resolve() == Path(path_b).expanduser()
                   .resolve() else stack.enter_context(Store(path_a, readonly=True)))
        comp = compare_refs(store_a, args.a, store_b, args.b, suites=args.suite,
                            resamples=args.resamples, seed=args.seed, alpha=args.alpha)
    if args.metric:
        gateable = list(comp.rows.loc[comp.rows["kind"] != "model", "metric"])
        problems = [f"unknown {m!r}" for m in args.metric if m not in comp.metrics]
        problems += [f"{m!r} is a per-model number with no test, which the gate cannot check"
                     for m in args.metric if m in comp.metrics and m not in gateable]
        if problems:
            raise HarnessError(f"--metric: {'; '.join(problems)}; available: "
                               f"{', '.join(gateable)}")
        comp.watched = list(dict.fromkeys(args.metric))
    elif pp is not None and comp.skipped:
        raise HarnessError("--fail-on-drop: " + "; ".join(
            f"suite {suite} both sides have cannot be compared: {why}"
            for suite, why in comp.skipped) + "; the gate would silently leave it out (make "
            "the runs comparable, or choose the gated suites with --suite)")
    comp.threshold_pp = pp
    render = {"table": comp.to_table, "markdown": comp.to_markdown, "json": comp.to_json}
    status = 1 if pp is not None and len(comp.regressions()) else 0
    return render[args.format](), status


# -- formatting ---------------------------------------------------------------------------------
def _minus(text: str) -> str:
    return text.replace("-", MINUS)


def _num(kind: str, x: float, digits: int) -> str:
    """A signed difference: percentage points for accuracies, else 4 significant digits."""
    if x != x:
        return "-"
    return _minus(f"{100 * x:.{digits}f}" if kind == "accuracy" else f"{x:.4g}")


def _delta(kind: str, x: float, digits: int) -> str:
    if x != x:
        return "-"
    if kind == "accuracy":
        return _minus(f"{100 * x:+.{digits}f} pp")
    return _minus(f"{x:+.4g}")


def _value(kind: str, x: float) -> str:
    if x != x:
        return "-"
    return f"{100 * x:.2f}" if kind == "accuracy" else f"{x:.4g}"


def _p(p: float) -> str:
    if p != p:
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _p_eq(p: float) -> str:
    text = _p(p)
    return text if text.startswith("<") else f"= {text}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v
