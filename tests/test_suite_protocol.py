"""The suite protocol end to end with a suite defined here, not under harness/.

``toy-gain`` brightens the images by its own option ``gain``, stores three per-example fields of
its own (mean input pixel, runner-up class, confidence flag) and two kinds of metric records
(per shard, per channel). It runs from ``harness.evaluate`` and from the CLI (in-process, and
in a subprocess that imports this file through ``$HARNESS_PLUGINS``), is killed mid-run and
resumed, and everything is read back with ``to_frame()``/``metrics_frame()`` and checked
against numbers computed here with plain torch/numpy.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import harness
from harness.cli import main
from harness.data import load_sample
from harness.errors import HarnessError
from harness.records import MetricRecord
from harness.store import Store
from harness.suites import (
    SUITES,
    Field,
    Metric,
    Option,
    ShardInputs,
    Suite,
    Table,
    contiguous_shards,
    non_negative,
    positive,
)

HERE = Path(__file__).resolve()


class ToyGain(Suite):
    name = "toy-gain"
    default_shard_size = 20
    options = (
        Option("gain", "multiply pixel values by this (then round and clip)", type=float,
               default=1.0, check=positive),
        Option("delay", "seconds to sleep per shard (lets a test kill a run mid-way); does not "
               "change the numbers, so it is not a parameter", type=float, default=0.0,
               check=non_negative),
    )
    fields = (
        Field("mean_pixel", float, "mean of the model's input in [0, 1]"),
        Field("top2", int, "runner-up class"),
        Field("confident", bool, "softmax maximum above 0.5"),
    )
    metrics = (Metric("mean_loss", "shard", "mean cross-entropy of the shard"),
               Metric("channel_mean", "channel", "mean input of each colour channel"))
    labels = {"accuracy": "accuracy %", "confident": "confident %"}

    def params(self, *, n, shard_size=None, data=None, device="cpu", gain=1.0, **options):
        return {**super().params(n=n, shard_size=shard_size), "gain": gain}

    def describe(self, params):
        return f"n = {params['n']} examples x gain {params['gain']}"

    def shards(self, data, params):
        return contiguous_shards(params["n"], params["shard_size"], {"gain": params["gain"]},
                                 "gain")

    def inputs(self, data, shard, ctx):
        base = super().inputs(data, shard, ctx)
        bright = (base.images.float() * ctx.params["gain"]).round().clamp(0, 255).to(torch.uint8)
        return ShardInputs(bright, base.labels, base.example)

    def evaluate(self, model, inputs, shard, ctx):
        time.sleep(ctx.options["delay"])
        result = super().evaluate(model, inputs, shard, ctx)
        x = inputs.images.float().div(255)
        with torch.inference_mode():
            probs = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)
        fields = {"mean_pixel": x.mean((1, 2, 3)).double().numpy(),
                  "top2": probs.topk(2, dim=1).indices[:, 1].numpy(),
                  "confident": (probs.max(1).values > 0.5).numpy()}
        metrics = (MetricRecord("mean_loss", "shard", "", float(result.loss.mean())),
                   *[MetricRecord("channel_mean", "channel", c, float(v))
                     for c, v in enumerate(x.mean((0, 2, 3)).tolist())])
        return dataclasses.replace(result, fields=fields, metrics=metrics)

    def summarize(self, store, run_id):
        frame = store.condition_summary(run_id)
        examples = store.to_frame([run_id])
        frame["confident"] = examples.groupby("gain")["confident"].mean().reindex(
            frame["gain"]).to_numpy(dtype=float)
        return frame

    def headline(self, summary):
        return {**super().headline(summary),
                "confident": float((summary["confident"] * summary["n"]).sum() / summary["n"].sum())}

    def tables(self, outcomes, references=None):
        rows = [[o.spec.model, o.summary["confident"].iloc[0]] for o in outcomes]
        return [Table("confidence by model", pd.DataFrame(rows, columns=["model", "confident"]),
                      percent=("confident",))]


if "toy-gain" not in SUITES:  # this file is imported twice in the subprocess test
    SUITES.add("toy-gain", ToyGain, description="test-only: accuracy on brightened images")


def oracle(n: int, gain: float):
    """What toy-gain must store, computed here: brightened uint8 images -> resnet8."""
    from models import create_model

    s = load_sample()
    bright = np.clip(np.rint(s.images[:n].astype(np.float32) * np.float32(gain)), 0, 255).astype(np.uint8)
    x = torch.from_numpy(bright).float().div(255)
    with torch.inference_mode():
        probs = create_model("resnet8", pretrained=True)(x).softmax(1)
    top3 = probs.topk(3, 1)
    return {"pred": probs.argmax(1).numpy(), "top2": top3.indices[:, 1].numpy(),
            # runner-up and third nearly tied: memory layout may swap them
            "top2_clear": (top3.values[:, 1] - top3.values[:, 2] > 1e-4).numpy(),
            "confident": (probs.max(1).values > 0.5).numpy(),
            "mean_pixel": x.mean((1, 2, 3)).double().numpy(), "labels": s.labels[:n],
            "channel_mean": x.mean((2, 3)).double().numpy()}


def check_records(df, metrics, n: int, gain: float) -> None:
    ref = oracle(n, gain)
    df = df.sort_values("example")
    assert df["example"].tolist() == list(range(n))
    assert (df["pred"].to_numpy() == ref["pred"]).all()
    assert (df["label"].to_numpy() == ref["labels"]).all()
    clear = ref["top2_clear"]
    assert clear.mean() > 0.9 and (df["top2"].to_numpy()[clear] == ref["top2"][clear]).all()
    assert (df["top2"] != df["pred"]).all()
    assert (df["confident"].to_numpy() == ref["confident"]).all()
    assert 0 < df["confident"].mean() < 1  # both values occur, so a constant would fail
    np.testing.assert_allclose(df["mean_pixel"].to_numpy(), ref["mean_pixel"], rtol=1e-6)
    assert str(df["mean_pixel"].dtype) == "float64" and str(df["top2"].dtype) == "Int64"
    assert str(df["confident"].dtype) == "boolean"
    assert set(df["gain"]) == {gain}
    shards = df["shard_key"].unique()
    losses = metrics[metrics["name"] == "mean_loss"].set_index("shard_key")["value"]
    assert sorted(losses.index) == sorted(shards)
    np.testing.assert_allclose(losses[shards].to_numpy(),
                               df.groupby("shard_key")["loss"].mean()[shards].to_numpy(),
                               rtol=1e-9)
    chan = metrics[metrics["name"] == "channel_mean"]
    assert len(chan) == 3 * len(shards) and set(chan["scope"]) == {"channel"}
    first = chan[chan["shard_key"] == sorted(shards)[0]].sort_values("index")
    size = (df["shard_key"] == sorted(shards)[0]).sum()
    np.testing.assert_allclose(first["value"].to_numpy(), ref["channel_mean"][:size].mean(0),
                               rtol=1e-5)


def test_declarations_are_checked():
    with pytest.raises(TypeError, match="field names"):
        type("Bad", (Suite,), {"fields": (Field("pred", int),)})
    with pytest.raises(TypeError, match="option names"):
        type("Bad", (Suite,), {"options": (Option("seed", "clashes with the run's seed"),)})
    with pytest.raises(TypeError, match="int, float, str or bool"):
        type("Bad", (Suite,), {"fields": (Field("x", list),)})


def test_toy_suite_from_evaluate(tmp_path):
    from models import create_model

    path = tmp_path / "s.sqlite"
    df = harness.evaluate(create_model("resnet8", pretrained=True), suite="toy-gain", n=60,
                          gain=1.4, store=path, name="r8")
    with Store(path, readonly=True) as st:
        stored, metrics = st.to_frame(), st.metrics_frame()
        (run,) = st.runs()
    assert run["spec"]["params"] == {"n": 60, "shard_size": 20, "gain": 1.4}
    pd.testing.assert_frame_equal(df.reset_index(drop=True), stored.reset_index(drop=True))
    check_records(stored, metrics, 60, 1.4)
    with pytest.raises(HarnessError, match="option 'gain': expected float, got 'x'"):
        harness.evaluate(create_model("resnet8"), suite="toy-gain", gain="x")
    with pytest.raises(HarnessError, match="option 'gain': expected a finite number > 0"):
        harness.evaluate(create_model("resnet8"), suite="toy-gain", gain=-1.0)
    with pytest.raises(HarnessError, match="option 'gain' does not apply to suite 'clean'"):
        harness.evaluate(create_model("resnet8"), suite="clean", gain=2.0)


def test_toy_suite_from_the_cli(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    assert main(["run", "--suite", "toy-gain", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "toy-gain options" in help_text and "--gain" in help_text and "--delay" in help_text
    assert "--corruptions" not in help_text   # only the named suite's options
    args = ["run", "--suite", "toy-gain", "--model", "resnet8", "--n", "40", "--gain", "0.7",
            "--store", store, "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "n = 40 examples x gain 0.7" in out and "confident %" in out
    assert "confidence by model" in out and "2/2" in out
    assert main(args) == 0 and "0/2" in capsys.readouterr().out  # resumed
    with Store(store, readonly=True) as st:
        check_records(st.to_frame(), st.metrics_frame(), 40, 0.7)
        (run,) = st.runs()
        head = ToyGain().headline(ToyGain().summarize(st, run["run_id"]))
    assert f"{100 * head['confident']:.2f}" in out
    assert main(["show", run["run_id"][:8], "--metrics", "--format", "csv", "--store", store]) == 0
    csv = capsys.readouterr().out.strip().splitlines()
    assert csv[0] == "run_id,model,suite,shard_key,gain,name,scope,index,value" and len(csv) == 9
    assert main(["run", "--suite", "toy-gain", "--gain", "-2", "--store", store]) == 2
    assert main(["run", "--suite", "clean", "--delay", "1", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "option 'gain': expected a finite number > 0, got -2.0" in err
    assert "option 'delay' does not apply to suite 'clean'" in err


def _shards(path) -> int:
    try:
        con = sqlite3.connect(path)
        try:
            return con.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_toy_suite_killed_mid_run_resumes_to_the_same_records(tmp_path):
    env = {**os.environ, "HARNESS_PLUGINS": str(HERE),
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE.parents[1])])}
    killed, clean = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    base = [sys.executable, "-m", "harness", "run", "--suite", "toy-gain", "--model", "resnet8",
            "--n", "300", "--gain", "1.2", "--quiet", "--store"]
    proc = subprocess.Popen([*base, str(killed), "--delay", "0.4"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and _shards(killed) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _shards(killed)
    assert 3 <= done < 15, "the kill must land mid-run"
    resumed = subprocess.run([*base, str(killed)], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{15 - done}/15" in resumed.stdout   # only the missing shards were computed
    whole = subprocess.run([*base, str(clean)], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    with Store(killed, readonly=True) as a, Store(clean, readonly=True) as b:
        assert a.runs()[0]["run_id"] == b.runs()[0]["run_id"] and a.runs()[0]["complete"]
        pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
        pd.testing.assert_frame_equal(a.metrics_frame(), b.metrics_frame())
        check_records(a.to_frame(), a.metrics_frame(), 300, 1.2)
