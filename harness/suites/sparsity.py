"""Suite ``sparsity``: how sparse a model's activations and codes are, per layer, unit and
example (:mod:`metrics.sparsity`: forward hooks on every activation module and on sparse-coding
front ends, exact zeros counted).

Per example (fields): ``zero_fraction`` over all activation sites, ``code_l0`` (nonzero code
entries of an LCA / WARP-LCA front end; NaN without one) and ``code_l0_fraction``. Per shard
(metric records, exact integer counts that add up across shards and resume with them): per
unit its nonzero entries (``nonzero``, scope ``unit``, index ``layer/unit``) and per layer its
``units``, ``positions`` (per example), ``codes`` (1 for a codes site) and ``order`` (scope
``layer``). The summary merges the shards, so a **dead unit** (a channel that is zero for every
example and position) is judged over the whole evaluated set; it also gives a per-unit
activation-frequency histogram per layer.
"""

from __future__ import annotations

import time

import numpy as np

from harness.records import MetricRecord, ShardResult
from harness.suites._base import SUITES, Field, Metric, SampleSuite, Table

DEFAULT_N = 1000


@SUITES.register("sparsity", description="activation sparsity: exact zeros per layer, dead "
                 "units, per-unit frequencies, LCA code l0 per image")
class SparsitySuite(SampleSuite):
    name = "sparsity"
    sample_n = DEFAULT_N
    fields = (
        Field("zero_fraction", float, "exact zeros over all activation sites of the example"),
        Field("code_l0", float, "nonzero code entries of the sparse-coding front end (NaN: none)"),
        Field("code_l0_fraction", float, "code_l0 over the code size (NaN: no front end)"),
    )
    metrics = (
        Metric("nonzero", "unit", "nonzero entries of a unit over the shard"),
        Metric("units", "layer", "units (channels) of the layer"),
        Metric("positions", "layer", "entries per unit per example (H x W)"),
        Metric("codes", "layer", "1 for a sparse-coding site, 0 for an activation"),
        Metric("order", "layer", "position of the layer in the model's forward"),
    )
    primary = "zero_fraction"
    labels = {"accuracy": "clean %", "zero_fraction": "zeros %", "dead_units": "dead units",
              "code_l0_fraction": "code l0 %"}

    def evaluate(self, model, inputs, shard, ctx) -> ShardResult:
        import torch

        from harness.predict import outcomes
        from metrics.sparsity import SparsityAccumulator

        start = time.perf_counter()
        acc = SparsityAccumulator(model, device=ctx.device, dtype=ctx.torch_dtype,
                                  start=shard.start)
        preds, losses = [], []
        step = ctx.batch_size
        for i in range(0, len(inputs.example), step):
            xb, yb, ids = (inputs.images[i:i + step], inputs.labels[i:i + step],
                           inputs.example[i:i + step])
            with torch.inference_mode():
                pred, loss = outcomes(acc.observe(xb, ids=ids), yb.to(ctx.device))
            preds.append(pred.cpu())
            losses.append(loss.cpu())
        pred, loss = torch.cat(preds).numpy(), torch.cat(losses).double().numpy()
        res = acc.counts().result()
        ex = res.examples.set_index("example").reindex(inputs.example)
        has_codes = (res.layers["role"] == "codes").any()
        fields = {"zero_fraction": ex["zero_fraction"].to_numpy(np.float64),
                  "code_l0": (ex["code_l0"].to_numpy(np.float64) if has_codes
                              else np.full(len(ex), np.nan)),
                  "code_l0_fraction": ex["code_l0_fraction"].to_numpy(np.float64)}
        records = []
        for k, layer in enumerate(res.counts.layers):
            records += [MetricRecord("units", "layer", layer.name, float(layer.units)),
                        MetricRecord("positions", "layer", layer.name, float(layer.positions)),
                        MetricRecord("codes", "layer", layer.name,
                                     float(layer.role == "codes")),
                        MetricRecord("order", "layer", layer.name, float(k))]
            records += [MetricRecord("nonzero", "unit", f"{layer.name}/{u}", float(c))
                        for u, c in enumerate(layer.unit_nonzero)]
        labels = inputs.labels.cpu().numpy()
        return ShardResult(shard=shard, example=inputs.example, label=labels, pred=pred,
                           correct=pred == labels, loss=loss,
                           wall_s=time.perf_counter() - start, fields=fields,
                           metrics=tuple(records))

    # -- reading the store ---------------------------------------------------------------------
    def summarize(self, store, run_id):
        """One row: n, clean accuracy, zero fraction over all activation sites, dead units
        (of all units), mean code l0 per image. ``attrs["layers"]``: the per-layer table;
        ``attrs["histogram"]``: units per activation-frequency bin per layer."""
        import pandas as pd

        frame = store.to_frame([run_id])
        layers, histogram = layer_tables(store.metrics_frame([run_id]), n=len(frame))
        act = layers[~layers["codes"].astype(bool)]
        zeros = ((act["zero_fraction"] * act["elements"]).sum() / act["elements"].sum()
                 if len(act) else np.nan)
        out = pd.DataFrame([{
            "n": len(frame), "n_correct": int(frame["correct"].sum()),
            "accuracy": float(frame["correct"].mean()), "zero_fraction": float(zeros),
            "dead_units": int(act["dead_units"].sum()), "units": int(act["units"].sum()),
            "code_l0": float(frame["code_l0"].mean()),
            "code_l0_fraction": float(frame["code_l0_fraction"].mean()),
        }])
        out.attrs["layers"] = layers
        out.attrs["histogram"] = histogram
        out.attrs["note"] = ("" if len(layers) else "no activation or codes site found: "
                             "modules are hooked, functional calls (F.relu) are not")
        return out

    def headline(self, summary) -> dict[str, float]:
        r = summary.iloc[0]
        return {"accuracy": float(r["accuracy"]), "zero_fraction": float(r["zero_fraction"]),
                "dead_units": float(r["dead_units"]),
                "code_l0_fraction": float(r["code_l0_fraction"])}

    def format(self, key: str, value: float) -> str:
        return "-" if value != value else (f"{value:.0f}" if key == "dead_units"
                                           else super().format(key, value))

    def tables(self, outcomes, references=None):
        import pandas as pd

        rows = []
        for o in outcomes:
            for r in o.summary.attrs["layers"].itertuples(index=False):
                rows.append([o.spec.model, r.layer, "codes" if r.codes else "activation",
                             r.units, r.zero_fraction, r.dead_units, r.median_frequency])
        notes = [f"{o.spec.model}: {o.summary.attrs['note']}" for o in outcomes
                 if o.summary.attrs.get("note")]
        return [*notes, Table("sparsity per layer", pd.DataFrame(rows, columns=[
            "model", "layer", "role", "units", "zeros", "dead units", "median unit frequency"]),
            caption="zeros: exact zeros over all entries; dead: a unit zero on every example "
                    "and position of the run", percent=["zeros", "median unit frequency"])]

    def details(self, summary) -> list:
        layers, hist = summary.attrs["layers"], summary.attrs["histogram"]
        if not len(layers):
            return [summary.attrs["note"]]
        out: list = [Table("per layer", layers[["layer", "units", "zero_fraction", "dead_units",
                                                 "median_frequency"]],
                           percent=["zero_fraction", "median_frequency"])]
        if len(hist):
            wide = hist.pivot_table(index="layer", columns="label", values="units",
                                    aggfunc="sum", sort=False)
            wide = wide.reindex(index=layers["layer"],
                                columns=list(dict.fromkeys(hist["label"]))).reset_index()
            out.append(Table("units per activation frequency (fraction of entries != 0)", wide))
        return out


def layer_tables(metrics, *, n: int):
    """(layers, histogram) from a run's metric records (all shards merged): per layer its
    units, entries, zero fraction, dead units (zero on every example and position) and the
    median unit frequency; per layer and frequency bin the number of units."""
    import pandas as pd

    from metrics.sparsity import frequency_bins, histogram_labels

    columns = ["layer", "codes", "units", "elements", "zero_fraction", "dead_units",
               "median_frequency"]
    lay = metrics[metrics["scope"] == "layer"]
    if not len(lay):                      # no hooked site (e.g. only functional activations)
        return pd.DataFrame(columns=columns), pd.DataFrame(columns=["layer", "label", "units"])
    lay = lay.pivot_table(index="index", columns="name", values="value", aggfunc="first")
    units = metrics[(metrics["scope"] == "unit") & (metrics["name"] == "nonzero")]
    counts = units.groupby("index", sort=False)["value"].sum()
    rows, hist = [], []
    labels = histogram_labels()
    for layer, r in lay.sort_values("order").iterrows():
        k, positions = int(r["units"]), int(r["positions"])
        nonzero = np.array([counts.get(f"{layer}/{u}", 0.0) for u in range(k)], dtype=np.int64)
        entries = n * positions
        freq = nonzero / entries if entries else np.full(k, np.nan)
        rows.append({"layer": layer, "codes": bool(r["codes"]), "units": k,
                     "elements": entries * k,
                     "zero_fraction": 1 - nonzero.sum() / (entries * k) if entries else np.nan,
                     "dead_units": int((nonzero == 0).sum()),
                     "median_frequency": float(np.median(freq))})
        if entries:
            binned = np.bincount(frequency_bins(nonzero, entries), minlength=len(labels))
            hist += [{"layer": layer, "label": lab, "units": int(binned[b])}
                     for b, (lab, _, _) in enumerate(labels)]
    layers = pd.DataFrame(rows, columns=columns)
    return layers, pd.DataFrame(hist, columns=["layer", "label", "units"])
