"""The ``pgd`` and ``autoattack`` suites end to end on real bundled models and images.

What is checked against something the suite did not produce: stored per-example outcomes
against the model re-run on the stored perturbation bounds and on clean images; the worst case
across runs against a per-example AND computed here with pandas from the stored rows; the
gradient paths of SUGAR against the plain ReLU network with the same weights; the masking checks
against a model that masks by construction (a quantising input layer, zero gradient) and one
that returns NaN.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import harness
from conftest import run_cli, run_suite
from harness.cli import main
from harness.store import Store
from harness.suites.adversarial import flags
from models.zoo import create_model

FAST = {"linf": "2/255,8/255", "l2": "none", "checks": False}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pgd_run_stores_consistent_per_example_records(tmp_path):
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        outcome = run_suite(model="resnet8", store=st, suite="pgd", n=60, options=FAST)
        df = st.to_frame([outcome.run_id])
    clean = df[df["norm"] == "none"]
    # Clean rows equal the model's own clean predictions (an independent forward).
    from harness.data import load_sample

    s = load_sample()
    model = create_model("resnet8", pretrained=True)
    with torch.no_grad():
        pred = model(torch.from_numpy(s.images[:60]).float() / 255).argmax(1).numpy()
    assert (clean.sort_values("example")["pred"].to_numpy() == pred).all()
    for eps in (2 / 255, 8 / 255):
        rows = df[(df["norm"] == "Linf") & ((df["eps"] - eps).abs() < 1e-12)]
        assert len(rows) == 60
        assert (rows["linf"] <= eps + 1e-6).all()
        assert (rows["correct"] == (rows["pred"] == rows["label"])).all()
        # fooled_by is empty exactly where the example survived every attack path.
        assert ((rows["fooled_by"] == "") == rows["correct"]).all()
        assert ((rows["iteration"] == -1) == rows["correct"]).all()
        # An example wrong on the clean image is found at iteration 0 by "clean".
        wrong = rows.set_index("example").loc[clean.loc[~clean["correct"], "example"]]
        assert (wrong["found_by"] == "clean").all() and (wrong["iteration"] == 0).all()
    acc = outcome.summary.set_index("eps")["accuracy"]
    assert acc[0.0] >= acc[2 / 255] >= acc[8 / 255]


def test_sugar_is_attacked_through_both_gradients_and_keeps_the_worse(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        outcome = run_suite(model="resnet8-sugar-bsilu", store=st, suite="pgd", n=60,
                            options={"linf": "2/255", "l2": "none", "checks": False})
        df = st.to_frame([outcome.run_id])
    paths = outcome.summary.attrs["paths"]
    assert set(paths["path"]) == {"pgd-ce/surrogate", "pgd-ce/exact"}
    row = outcome.summary[outcome.summary["norm"] == "Linf"].iloc[0]
    assert row["accuracy"] <= paths["accuracy"].min() + 1e-12
    attacked = df[df["norm"] == "Linf"]
    fooled = attacked[~attacked["correct"] & (attacked["found_by"] != "clean")]
    assert set(fooled["gradient"]) <= {"surrogate", "exact"} and len(fooled)
    # Each path's stored count equals the per-example fooled_by lists.
    for path in ("pgd-ce/surrogate", "pgd-ce/exact"):
        survived = (~attacked["fooled_by"].str.split(",").apply(lambda b, p=path: p in b)).mean()
        assert survived == pytest.approx(float(paths.loc[paths["path"] == path, "accuracy"].iloc[0]))


def test_exact_gradient_path_equals_the_plain_relu_network():
    """The SUGAR model attacked through its 'exact' path is attacked exactly like plain ResNet-8
    carrying its weights (the issue's oracle)."""
    from attacks import pgd, use_gradient
    from harness.data import load_sample

    s = load_sample()
    x, y = torch.from_numpy(s.images[:48]).float() / 255, torch.from_numpy(s.labels[:48])
    sugar = create_model("resnet8-sugar-bsilu", pretrained=True)
    plain = create_model("resnet8")
    plain.load_state_dict(sugar.state_dict())
    with use_gradient(sugar, "exact"):
        a = pgd(sugar, x, y, eps=2 / 255)
    b = pgd(plain.eval(), x, y, eps=2 / 255)
    assert torch.equal(a.fooled, b.fooled) and torch.equal(a.iteration, b.iteration)
    s_ = pgd(sugar, x, y, eps=2 / 255)   # the surrogate path differs somewhere
    assert not torch.equal(s_.x_adv, a.x_adv)


def test_worst_case_is_the_per_example_and_over_stored_runs(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        weak = run_suite(model="resnet8", store=st, suite="pgd", n=60,
                         options={**FAST, "steps": 1, "loss": "margin"})
        strong = run_suite(model="resnet8", store=st, suite="pgd", n=40,
                           options={**FAST, "steps": 5, "restarts": 2})
        df = st.to_frame([weak.run_id, strong.run_id])
        summary = harness.suites.SUITES.get("pgd")().summarize(st, weak.run_id)
    for eps in (2 / 255, 8 / 255):
        rows = df[(df["norm"] == "Linf") & ((df["eps"] - eps).abs() < 1e-12)]
        both = rows.groupby("example")["correct"].all()
        mine = rows[rows["run_id"] == weak.run_id]["example"]
        want = both.reindex(mine).mean()
        got = summary.loc[(summary["eps"] - eps).abs() < 1e-12, "worst_case"].iloc[0]
        assert got == pytest.approx(want)
        own = summary.loc[(summary["eps"] - eps).abs() < 1e-12, "accuracy"].iloc[0]
        assert got <= own


class Quantised(nn.Module):
    """A masked model by construction: the input is rounded to 4 grey levels (zero gradient
    almost everywhere), then a bundled ResNet-8 classifies it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("resnet8", pretrained=True)

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("resnet8", pretrained=True)

    def forward(self, x):
        out = self.net(x)
        bad = (x.flatten(1).mean(1) > 0.45)[:, None]
        return torch.where(bad, torch.full_like(out, float("nan")), out)


def _checks(module, tmp_path, name):
    path = tmp_path / f"{name}.sqlite"
    harness.evaluate(module, suite="pgd", n=60, store=path, name=name, linf="2/255,8/255",
                     l2="none", check_n=60)
    with Store(path, readonly=True) as st:
        (run,) = st.runs()
        m = st.metrics_frame([run["run_id"]])
        return {r.index: r.value for r in m[m["name"] == "flag"].itertuples()}, run, path


def test_masking_checks_fire_on_a_quantised_model_and_stay_silent_on_resnet8(tmp_path):
    raised, run, path = _checks(Quantised(), tmp_path, "quantised")
    assert raised["unbounded"] == 1.0
    assert raised["black_box"] == 1.0
    out = run_cli("show", run["run_id"][:10], "--store", str(path))
    assert out.returncode == 0 and "FLAG" in out.stdout and "unbounded" in out.stdout
    raised, _, _ = _checks(create_model("resnet8", pretrained=True), tmp_path, "resnet8")
    assert not any(raised.values()), raised


def test_nan_model_gets_a_flagged_record_not_a_silent_number(tmp_path):
    df_path = tmp_path / "nan.sqlite"
    harness.evaluate(NaNModel(), suite="pgd", n=40, store=df_path, name="nan", linf="2/255",
                     l2="none", check_n=20, steps=2)
    with Store(df_path, readonly=True) as st:
        (run,) = st.runs()
        raised = flags(st, run["run_id"])
        df = st.to_frame([run["run_id"]])
    assert any(line.startswith("nonfinite") for line in raised)
    nan_rows = df[df["pred"] == -1]
    assert len(nan_rows) and not nan_rows["correct"].any()


def test_bad_input_exits_2_and_leaves_the_store_untouched(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    ok = run_cli("run", "--suite", "pgd", "--model", "resnet8", "--n", "10", "--linf", "8/255",
                 "--l2", "none", "--no-checks", "--store", str(store), "--quiet")
    assert ok.returncode == 0, ok.stderr
    before = _digest(store)
    nograd = tmp_path / "nograd.py"
    nograd.write_text("import torch\nclass M(torch.nn.Module):\n"
                      "    def __init__(self):\n        super().__init__()\n"
                      "        self.lin = torch.nn.Linear(3072, 10)\n"
                      "    def forward(self, x):\n        return self.lin(x.detach().flatten(1))\n"
                      "def build():\n    return M()\n")
    cases = {
        ("--suite", "pgd", "--linf=-1/255"): "eps",
        ("--suite", "pgd", "--linf", "2"): "at most 1",
        ("--suite", "pgd", "--l2=-0.5"): "eps",
        ("--suite", "pgd", "--attacks", "pgdd"): "did you mean 'pgd'",
        ("--suite", "pgd", "--steps", "0"): "steps",
        ("--suite", "pgd", "--restarts", "0"): "restarts",
        ("--suite", "pgd", "--model", f"{nograd}:build"): "no gradient",
        ("--suite", "autoattack", "--norm", "L3"): "L3",
        ("--suite", "autoattack", "--eps=-1"): "eps",
    }
    for args, words in cases.items():   # in-process: main() is what the console script runs
        capsys.readouterr()
        assert main(["run", *args, "--store", str(store), "--n", "10", "--quiet"]) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, err)
        assert _digest(store) == before


def test_ls_attacks_lists_the_registry():
    out = run_cli("ls", "attacks")
    assert out.returncode == 0 and "pgd" in out.stdout


def test_rerun_resumes_without_recompute(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        first = run_suite(model="resnet8", store=st, suite="pgd", n=20, options=FAST)
        again = run_suite(model="resnet8", store=st, suite="pgd", n=20, options=FAST)
    assert first.run_id == again.run_id and again.shards_computed == 0
    assert np.allclose(first.summary["accuracy"], again.summary["accuracy"])


class Noisy(nn.Module):
    """A randomised model: Gaussian input noise on every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("resnet8", pretrained=True)

    def forward(self, x):
        return self.net(x + 0.02 * torch.randn_like(x))


def test_random_forward_is_flagged_unless_eot_is_used():
    from attacks.checks import run_checks

    s = load_sample_batch(16)
    checks, _ = run_checks(Noisy(), *s, eps=[8 / 255], steps=2, unbounded_steps=2,
                           square_queries=5)
    assert {c.name: c.flag for c in checks}["random_forward"]
    checks, _ = run_checks(Noisy(), *s, eps=[8 / 255], steps=2, unbounded_steps=2,
                           square_queries=5, eot=2)
    assert not {c.name: c.flag for c in checks}["random_forward"]
    checks, _ = run_checks(create_model("resnet8", pretrained=True), *s, eps=[8 / 255], steps=2,
                           unbounded_steps=2, square_queries=5)
    assert not {c.name: c.flag for c in checks}["random_forward"]


def load_sample_batch(n):
    from harness.data import load_sample

    s = load_sample()
    return torch.from_numpy(s.images[:n]).float() / 255, torch.from_numpy(s.labels[:n])
