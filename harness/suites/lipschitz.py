"""Suite ``lipschitz``: how Lipschitz a model's logit map is (l2 -> l2, pixels in [0, 1]).

Per model, a **certified upper bound** (:func:`metrics.lipschitz.upper_bound`: operator norms
and activation constants composed over the traced graph, or "no bound" with the reason), and
per example two **empirical lower bounds** and the **CLEVER** scores:

* ``jacobian_norm``: the input-Jacobian's spectral norm at the example, by power iteration
  (``--power-iters``), each iterate a lower bound;
* ``pair_ratio``: the largest ||f(x) - f(x')|| / ||x - x'|| that projected gradient ascent
  (PGD on the ratio, ``--pair-steps`` steps) found within an l2 ball of ``--pair-radius``
  around the example, started along the Jacobian's top direction; measured by forward passes
  only, so it is a lower bound whatever gradient found it;
* ``clever_l2``, ``clever_linf``: CLEVER scores (an estimate, not a bound, of the distance to
  the decision boundary; :mod:`metrics.clever`) of the first ``--clever-n`` examples (NaN for
  the others).

Gradient-based estimates run with every module in its ``derivative_mode``
(:func:`attacks.gradients.use_derivative`): a SUGAR model's surrogate backward would give a
Jacobian that is not its forward's. The model-level records (``upper``, one ``factor`` and
``bound`` per node of the bound's chain, or ``no_bound`` with the reason as index) are stored
with the shard that starts at example 0. The summary checks lower <= upper and raises a flag
when not.
"""

from __future__ import annotations

import math
import time

import numpy as np

from harness.errors import HarnessError
from harness.records import MetricRecord, ShardResult
from harness.suites._base import (
    SUITES,
    Field,
    Metric,
    Option,
    SampleSuite,
    Table,
    at_least_one,
    count,
    positive,
)

DEFAULT_N = 100


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4g}"


@SUITES.register("lipschitz", description="certified l2 Lipschitz upper bound, empirical lower "
                 "bounds (Jacobian norm, PGD pairs) and CLEVER scores")
class LipschitzSuite(SampleSuite):
    name = "lipschitz"
    sample_n = DEFAULT_N
    default_shard_size = 50
    options = (
        Option("power_iters", type=int, default=10, check=at_least_one,
               help="power-iteration steps per example for the input-Jacobian norm"),
        Option("pair_radius", type=float, default=0.1, check=positive,
               help="l2 radius (pixels in [0, 1]) of the PGD search for pairs with a large "
                    "||f(x) - f(x')|| / ||x - x'||"),
        Option("pair_steps", type=int, default=10, check=count,
               help="PGD steps of the pair search (0: only its start along the Jacobian)"),
        Option("clever_n", type=int, default=4, check=count,
               help="examples (the first of the set) that get CLEVER scores; 0: none"),
        Option("clever_batches", type=int, default=10, check=at_least_one,
               help="CLEVER: batches of gradient samples (the maxima the Weibull fit sees; "
                    "the reference uses 500)"),
        Option("clever_samples", type=int, default=32, check=at_least_one,
               help="CLEVER: gradient samples per batch (the reference uses 1024)"),
        Option("clever_radius_l2", type=float, default=2.0, check=positive,
               help="CLEVER: radius of the l2 ball the gradients are sampled in (and the "
                    "largest score)"),
        Option("clever_radius_linf", type=float, default=16 / 255, check=positive,
               help="CLEVER: half-width of the Linf cube the gradients are sampled in"),
    )
    fields = (
        Field("jacobian_norm", float, "spectral norm of the input Jacobian (a lower bound)"),
        Field("pair_ratio", float, "largest ||f(x)-f(x')||/||x-x'|| found (a lower bound)"),
        Field("clever_l2", float, "CLEVER score, l2 (NaN: not computed)"),
        Field("clever_linf", float, "CLEVER score, Linf (NaN: not computed)"),
    )
    metrics = (
        Metric("upper", "model", "certified l2 Lipschitz upper bound (NaN: no bound)"),
        Metric("no_bound", "reason", "1, with the reason there is no bound as index"),
        Metric("factor", "node", "a node's own constant in the bound's chain"),
        Metric("bound", "node", "bound of the map from the input to that node"),
        Metric("seconds", "estimator", "time each estimator took on the shard"),
    )
    primary = "lower"
    labels = {"accuracy": "clean %", "upper": "upper bound", "lower": "best lower",
              "clever_l2": "CLEVER l2"}

    def describe(self, params) -> str:
        return (f"n = {params['n']} | Jacobian: {params['power_iters']} power iterations | "
                f"pairs: l2 radius {params['pair_radius']:g}, {params['pair_steps']} steps | "
                f"CLEVER on {min(params['clever_n'], params['n'])}")

    def check_model(self, module, name, data, *, device, dtype):
        import torch

        from attacks.gradients import has_gradient, use_derivative

        x = torch.from_numpy(data.images[:2]).to(device=device, dtype=getattr(torch, dtype))
        with use_derivative(module):
            if not has_gradient(module, x.div(255)):
                raise HarnessError(f"model {name!r} has no gradient with respect to its input: "
                                   f"the Jacobian estimates cannot run (suite {self.name!r})")

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model, inputs, shard, ctx) -> ShardResult:
        import torch

        from attacks.gradients import use_derivative
        from harness.predict import prepare_batch
        from metrics.lipschitz import ascend_pairs, jacobian_norms, upper_bound

        def derivative():          # every gradient-based estimate: the forward's derivative
            return use_derivative(model)

        result = super().evaluate(model, inputs, shard, ctx)
        start = time.perf_counter()
        p = ctx.params
        x = prepare_batch(inputs.images, device=ctx.device, dtype=ctx.torch_dtype)
        n = len(x)
        jac, ratio = np.empty(n), np.empty(n)
        clever = {"clever_l2": np.full(n, np.nan), "clever_linf": np.full(n, np.nan)}
        seconds = {"jacobian": 0.0, "pairs": 0.0, "clever": 0.0, "upper": 0.0}
        chunk = max(1, min(ctx.batch_size, 25))      # the vjp keeps an unrolled graph
        for i in range(0, n, chunk):
            xb = x[i:i + chunk]
            ids = inputs.example[i:i + chunk]
            t0 = time.perf_counter()
            norms, direction = jacobian_norms(model, xb, iters=p["power_iters"], seed=ctx.seed,
                                              gradient=derivative)
            t1 = time.perf_counter()
            best, _ = ascend_pairs(model, xb, radius=p["pair_radius"], steps=p["pair_steps"],
                                   start=direction, gradient=derivative)
            t2 = time.perf_counter()
            jac[i:i + len(xb)] = norms.cpu().numpy()
            ratio[i:i + len(xb)] = best.cpu().numpy()
            seconds["jacobian"] += t1 - t0
            seconds["pairs"] += t2 - t1
            want = ids < p["clever_n"]
            if want.any():
                self._clever(model, xb[torch.from_numpy(want).to(xb.device)], p, ctx, clever,
                             np.flatnonzero(want) + i, derivative)
                seconds["clever"] += time.perf_counter() - t2
        records = []
        if shard.start == 0:
            t0 = time.perf_counter()
            ub = upper_bound(model, x[:1])
            seconds["upper"] = time.perf_counter() - t0
            records.append(MetricRecord("upper", "model", "",
                                        math.nan if ub.value is None else ub.value))
            if ub.value is None:
                records.append(MetricRecord("no_bound", "reason", ub.reason, 1.0))
            for k, row in enumerate(ub.factors.itertuples(index=False)):
                index = f"{k:03d} {row.op}"
                records += [MetricRecord("factor", "node", index, row.factor),
                            MetricRecord("bound", "node", index, row.bound)]
        records += [MetricRecord("seconds", "estimator", k, v) for k, v in seconds.items()]
        return ShardResult(shard=shard, example=result.example, label=result.label,
                           pred=result.pred, correct=result.correct, loss=result.loss,
                           wall_s=result.wall_s + time.perf_counter() - start,
                           fields={"jacobian_norm": jac, "pair_ratio": ratio, **clever},
                           metrics=tuple(records))

    def _clever(self, model, xb, p, ctx, out, rows, derivative) -> None:
        from metrics.clever import clever

        for norm, key in (("L2", "clever_l2"), ("Linf", "clever_linf")):
            radius = p["clever_radius_l2"] if norm == "L2" else p["clever_radius_linf"]
            res = clever(model, xb, norm=norm, radius=radius, n_batches=p["clever_batches"],
                         batch_size=p["clever_samples"], seed=ctx.seed,
                         gradient=derivative)
            out[key][rows] = res.score.detach().double().cpu().numpy()

    # -- reading the store ---------------------------------------------------------------------
    def summarize(self, store, run_id):
        """One row: n, clean accuracy, the certified upper bound, the largest Jacobian norm and
        pair ratio over the examples, the best lower bound, upper / lower, and the median
        CLEVER scores. ``attrs``: ``factors`` (the bound's chain), ``reason`` (no bound),
        ``flags`` (lower > upper: a bug or a wrong rule)."""
        import pandas as pd

        frame = store.to_frame([run_id])
        metrics = store.metrics_frame([run_id])
        upper = metrics.loc[metrics["name"] == "upper", "value"]
        upper = float(upper.iloc[0]) if len(upper) else math.nan
        reasons = metrics.loc[metrics["name"] == "no_bound", "index"].tolist()
        jac, pair = frame["jacobian_norm"].max(), frame["pair_ratio"].max()
        lower = float(np.nanmax([jac, pair]))
        row = {"n": len(frame), "n_correct": int(frame["correct"].sum()),
               "accuracy": float(frame["correct"].mean()), "upper": upper,
               "jacobian_max": float(jac), "pair_max": float(pair), "lower": lower,
               "upper_over_lower": upper / lower if lower > 0 else math.nan,
               "clever_l2": float(frame["clever_l2"].median()),
               "clever_linf": float(frame["clever_linf"].median())}
        out = pd.DataFrame([row])
        f = metrics[metrics["scope"] == "node"].pivot_table(index="index", columns="name",
                                                           values="value", aggfunc="first")
        out.attrs["factors"] = f.reset_index().rename(columns={"index": "node"}) if len(f) \
            else pd.DataFrame(columns=["node", "bound", "factor"])
        out.attrs["reason"] = reasons[0] if reasons else ""
        out.attrs["flags"] = ([f"lower bound {lower:.6g} exceeds the certified upper bound "
                               f"{upper:.6g}"] if upper == upper and lower > upper * (1 + 1e-6)
                              else [])
        return out

    def headline(self, summary) -> dict[str, float]:
        r = summary.iloc[0]
        return {"accuracy": float(r["accuracy"]), "upper": float(r["upper"]),
                "lower": float(r["lower"]), "clever_l2": float(r["clever_l2"])}

    def format(self, key: str, value: float) -> str:
        return super().format(key, value) if key == "accuracy" else _fmt(value)

    def tables(self, outcomes, references=None):
        import pandas as pd

        rows, lines = [], []
        for o in outcomes:
            r = o.summary.iloc[0]
            rows.append([o.spec.model, _fmt(r["upper"]), _fmt(r["jacobian_max"]),
                         _fmt(r["pair_max"]), _fmt(r["upper_over_lower"]), _fmt(r["clever_l2"]),
                         _fmt(r["clever_linf"])])
            if o.summary.attrs.get("reason"):
                lines.append(f"{o.spec.model}: no certified bound: {o.summary.attrs['reason']}")
            lines += [f"FLAG {o.spec.model}: {f}" for f in o.summary.attrs.get("flags", [])]
        table = Table("l2 Lipschitz constant of the logit map",
                      pd.DataFrame(rows, columns=["model", "certified upper", "max Jacobian norm",
                                                  "max pair ratio", "upper / lower",
                                                  "median CLEVER l2", "median CLEVER Linf"]),
                      caption="lower bounds: largest over the examples; CLEVER: an estimate of "
                              "the distance to the decision boundary, not a bound")
        return [table, *lines]

    def details(self, summary) -> list:
        factors = summary.attrs["factors"]
        out: list = []
        if len(factors):
            out.append(Table("the certified bound's chain (nodes that change it)",
                             factors[["node", "factor", "bound"]],
                             caption="bound: of the map from the input to the node"))
        if summary.attrs["reason"]:
            out.append(f"no certified bound: {summary.attrs['reason']}")
        return out + [f"FLAG {f}" for f in summary.attrs["flags"]]
