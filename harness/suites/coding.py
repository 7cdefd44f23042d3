"""Suite ``coding``: the sparse-coding energy of an LCA-type front end (:mod:`metrics.coding`).

For each example: the energy of the model's codes (after its own iterations, from its own
start: zeros for LCA, the learned prediction for WARP-LCA) against the target, cold LCA's
energy after ``--reference-iterations`` (the paper's LCA-1000); after how many iterations the
model's start and the cold start each come within ``--tolerance`` of the target; and the
codes' l0. Per iteration (metric records, scope ``iteration``): the mean energy from the
model's start (``energy``) and from zeros (``energy_cold``) over the shard, with the shard's
size (``examples``), so the summary's curves are exact means over the run. This is how
"WARP-LCA needs fewer iterations than cold LCA for the same energy" is measured.

Only models with a sparse-coding front end can run it; others are refused before the store
opens (exit 2).
"""

from __future__ import annotations

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
    positive,
)

DEFAULT_N = 100


def _threshold(value: str) -> str:
    if value not in ("model", "soft", "hard"):
        raise ValueError(f"expected model, soft or hard, got {value!r}")
    return value


@SUITES.register("coding", description="sparse-coding energy of LCA / WARP-LCA front ends: "
                 "energy against cold LCA-1000, iterations to reach it from the model's start "
                 "and from zeros, code l0")
class CodingSuite(SampleSuite):
    name = "coding"
    sample_n = DEFAULT_N
    default_shard_size = 50
    options = (
        Option("reference_iterations", type=int, default=1000, check=at_least_one,
               help="cold LCA iterations whose energy is the target"),
        Option("max_iterations", type=int, default=200, check=at_least_one,
               help="iterations traced from each start"),
        Option("tolerance", type=float, default=0.05, check=positive,
               help="an example reaches the target within this relative energy"),
        Option("threshold", default="model", check=_threshold, choices=("model", "soft", "hard"),
               help="threshold of the codes: the model's own, soft or hard"),
    )
    fields = (
        Field("energy", float, "energy after the model's own iterations from its own start"),
        Field("energy_reference", float, "energy of cold LCA after --reference-iterations"),
        Field("energy_ratio", float, "energy / energy_reference"),
        Field("iterations_to_target", float, "iterations from the model's start to within "
              "--tolerance of the target (NaN: not within --max-iterations; the summary's "
              "median counts it as never)"),
        Field("cold_iterations_to_target", float, "the same from zeros (cold LCA)"),
        Field("l0_fraction", float, "active code units after the model's own iterations"),
    )
    metrics = (
        Metric("energy", "iteration", "mean energy after t iterations from the model's start"),
        Metric("energy_cold", "iteration", "mean energy after t iterations from zeros"),
        Metric("examples", "shard", "examples the shard's means are over"),
        Metric("model_iterations", "model", "the model's own iteration count"),
    )
    primary = "energy_ratio"
    labels = {"accuracy": "clean %", "energy_ratio": "energy / LCA-ref",
              "iterations": "iterations to target", "cold_iterations": "cold iterations",
              "l0_fraction": "code l0 %"}

    def describe(self, params) -> str:
        return (f"n = {params['n']} | target: cold LCA after {params['reference_iterations']} "
                f"iterations, within {100 * params['tolerance']:g} % | traced "
                f"{params['max_iterations']} iterations | threshold {params['threshold']}")

    def check_model(self, module, name, data, *, device, dtype):
        from metrics.coding import find_coder

        if find_coder(module) is None:
            raise HarnessError(f"model {name!r} has no sparse-coding front end (LCA, WARP-LCA): "
                               f"suite {self.name!r} measures its energy")

    def evaluate(self, model, inputs, shard, ctx) -> ShardResult:
        from harness.predict import prepare_batch
        from metrics.coding import energy_traces, iterations_to, model_iterations

        result = super().evaluate(model, inputs, shard, ctx)
        start = time.perf_counter()
        p = ctx.params
        threshold = None if p["threshold"] == "model" else p["threshold"]
        parts = []
        k = model_iterations(model)
        # traced far enough for both the model's own iterations and --max-iterations; the
        # iteration counts look at the first max_iterations only, so they do not depend on k
        traced = max(k, p["max_iterations"])
        for i in range(0, len(inputs.example), ctx.batch_size):
            x = prepare_batch(inputs.images[i:i + ctx.batch_size], device=ctx.device,
                              dtype=ctx.torch_dtype)
            parts.append(energy_traces(model, x, reference_iterations=p["reference_iterations"],
                                       max_iterations=traced, threshold=threshold))
        ref = np.concatenate([t.reference for t in parts])
        own = np.concatenate([t.own for t in parts], axis=1)
        cold = np.concatenate([t.cold for t in parts], axis=1)
        l0 = np.concatenate([t.own_l0 for t in parts], axis=1)
        target = ref * (1 + p["tolerance"])
        window = p["max_iterations"] + 1
        fields = {"energy": own[k], "energy_reference": ref, "energy_ratio": own[k] / ref,
                  "iterations_to_target": iterations_to(own[:window], target),
                  "cold_iterations_to_target": iterations_to(cold[:window], target),
                  "l0_fraction": l0[k]}
        own, cold = own[:window], cold[:window]
        records = [MetricRecord("examples", "shard", "", float(len(ref)))]
        records += [MetricRecord("energy", "iteration", str(t), float(v))
                    for t, v in enumerate(own.mean(axis=1))]
        records += [MetricRecord("energy_cold", "iteration", str(t), float(v))
                    for t, v in enumerate(cold.mean(axis=1))]
        if shard.start == 0:
            records.append(MetricRecord("model_iterations", "model", "", float(k)))
        return ShardResult(shard=shard, example=result.example, label=result.label,
                           pred=result.pred, correct=result.correct, loss=result.loss,
                           wall_s=result.wall_s + time.perf_counter() - start, fields=fields,
                           metrics=tuple(records))

    # -- reading the store ---------------------------------------------------------------------
    def summarize(self, store, run_id):
        """One row: n, clean accuracy, the model's iterations, mean energy ratio, median
        iterations to the target from the model's start and from zeros (and how many examples
        reached it), mean code l0. ``attrs["curves"]``: mean energy per iteration from both
        starts, weighted by the shards' sizes."""
        import pandas as pd

        frame = store.to_frame([run_id])
        metrics = store.metrics_frame([run_id])
        sizes = metrics[metrics["name"] == "examples"].set_index("shard_key")["value"]
        it = metrics[metrics["scope"] == "iteration"].copy()
        it["weight"] = it["shard_key"].map(sizes)
        it["iteration"] = it["index"].astype(int)
        curves = (it.assign(wv=it["value"] * it["weight"])
                  .groupby(["name", "iteration"])[["wv", "weight"]].sum())
        curves = (curves["wv"] / curves["weight"]).unstack("name").reset_index()
        k = metrics[metrics["name"] == "model_iterations"]["value"]
        own, cold = frame["iterations_to_target"], frame["cold_iterations_to_target"]
        # an example that never reached the target is censored, not dropped: it counts as
        # infinitely many iterations, so the median is "not reached" when most did not
        out = pd.DataFrame([{
            "n": len(frame), "accuracy": float(frame["correct"].mean()),
            "model_iterations": int(k.iloc[0]) if len(k) else -1,
            "energy_ratio": float(frame["energy_ratio"].mean()),
            "iterations": float(own.fillna(np.inf).median()), "reached": int(own.notna().sum()),
            "cold_iterations": float(cold.fillna(np.inf).median()),
            "cold_reached": int(cold.notna().sum()),
            "l0_fraction": float(frame["l0_fraction"].mean()),
        }])
        out.attrs["curves"] = curves
        return out

    def headline(self, summary) -> dict[str, float]:
        r = summary.iloc[0]
        return {"accuracy": float(r["accuracy"]), "energy_ratio": float(r["energy_ratio"]),
                "iterations": float(r["iterations"]),
                "cold_iterations": float(r["cold_iterations"]),
                "l0_fraction": float(r["l0_fraction"])}

    def format(self, key: str, value: float) -> str:
        if value != value:
            return "-"
        if key == "energy_ratio":
            return f"{value:.3f}"
        if key in ("iterations", "cold_iterations"):
            return "not reached" if value == np.inf else f"{value:.0f}"
        return super().format(key, value)

    def details(self, summary) -> list:
        curves = summary.attrs["curves"]
        marks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                 if t in set(curves["iteration"])]
        return [Table("mean energy after t iterations",
                      curves[curves["iteration"].isin(marks)].reset_index(drop=True))]
