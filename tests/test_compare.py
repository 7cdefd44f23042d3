"""``harness compare``: a planted regression fails the gate; the paired numbers agree with oracles
the code under test did not produce (statsmodels' exact McNemar on a contingency table built
here from ``Store.to_frame()``, the suites' own headline aggregation); outputs, two stores, run
ids and user errors.

Real models and data: the bundled ResNet-8 weights (``good``), a copy with seeded Gaussian noise
on its conv weights (``bad``, about 11 pp lower on the bundled sample), evaluated on the
bundled 1,000-image sample by the CLI, with one torch thread (the two cores are shared; with
two threads under load the runs were 10x slower).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, require
from harness.cli import main
from harness.store import Store
from harness.suites import SUITES
from harness.suites.cifar10c import per_corruption
from reports.compare import COLUMNS, compare_refs, paired_metrics, resolve

CIFAR10C = ["--suite", "cifar10c", "--corruptions", "gaussian_noise,fog", "--severities", "1,3"]


def _run(weights, store, *extra):
    argv = ["run", "--model", "resnet8", "--weights", str(weights), "--store", str(store),
            "--quiet", *extra]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    """store S: clean (n 1000) and a small cifar10c run of good and bad; store S2: bad only,
    clean on 500 examples and a cifar10c run with other corruption sets."""
    tmp = tmp_path_factory.mktemp("compare")
    good, bad, same = tmp / "good.safetensors", tmp / "bad.safetensors", tmp / "same.safetensors"
    shutil.copy(REPO / "models" / "weights" / "resnet8.safetensors", good)
    shutil.copy(good, same)
    g = torch.Generator().manual_seed(0)
    save_file({k: (v + 0.2 * v.std() * torch.randn(v.shape, generator=g) if v.ndim == 4 else v)
               .contiguous() for k, v in load_file(good).items()}, bad)
    s, s2 = tmp / "s.sqlite", tmp / "s2.sqlite"
    for w in (good, bad):
        _run(w, s, "--suite", "clean", "--n", "1000")
        _run(w, s, *CIFAR10C, "--n", "200")
    _run(bad, s2, "--suite", "clean", "--n", "500")
    _run(bad, s2, "--suite", "cifar10c", "--corruptions", "fog", "--severities", "1",
         "--n", "100")
    return {"good": str(good), "bad": str(bad), "same": str(same), "s": str(s), "s2": str(s2)}


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _run_id(store: Store, suite: str, weights: str) -> str:
    """The run of ``suite`` whose recorded weights hash is the file's (read from the store)."""
    sha = _sha(weights)
    ids = [r["run_id"] for r in store.runs() if r["suite"] == suite
           and r["sessions"][-1]["model_identity"]["weights_sha256"] == sha]
    assert len(ids) == 1
    return ids[0]


def _compare(capsys, *args):
    capsys.readouterr()
    status = main(["compare", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(capsys, *args, match: str):
    status, out, err = _compare(capsys, *args)
    assert status == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("harness: error: "), err
    assert "Traceback" not in err and match in err, err


# -- the gate -----------------------------------------------------------------------------------
def test_planted_regression_fails_the_gate(setup, capsys):
    status, out, _ = _compare(capsys, setup["good"], setup["bad"], "--store", setup["s"],
                              "--fail-on-drop", "2")
    assert status == 1
    assert "Regression: clean:accuracy \u2212" in out and "cifar10c:mean" in out


def test_identical_weights_and_an_improvement_pass(setup, capsys):
    status, out, _ = _compare(capsys, setup["good"], setup["same"], "--store", setup["s"],
                              "--fail-on-drop", "2", "--format", "json")
    assert status == 0
    doc = json.loads(out)
    assert all(r["delta"] == 0 and r["p_value"] == 1 for r in doc["rows"])
    assert doc["verdict"]["regression"] is False
    status, out, _ = _compare(capsys, setup["bad"], setup["good"], "--store", setup["s"],
                              "--fail-on-drop", "2", "--resamples", "200")
    assert status == 0 and "No significant drop of more than 2 pp" in out


def test_watched_metrics_and_threshold(setup, capsys):
    args = [setup["good"], setup["bad"], "--store", setup["s"], "--resamples", "200"]
    # an 11 pp drop is not more than 50 pp; clean:accuracy alone trips a 0 pp gate
    assert _compare(capsys, *args, "--fail-on-drop", "50")[0] == 0
    status, out, _ = _compare(capsys, *args, "--fail-on-drop", "0", "--metric", "clean:accuracy",
                              "--format", "json")
    doc = json.loads(out)
    assert status == 1 and doc["watched"] == ["clean:accuracy"]
    assert doc["verdict"]["regressions"] == ["clean:accuracy"]
    # without --fail-on-drop the verdict is reported but the exit status stays 0
    assert _compare(capsys, *args)[0] == 0
    # a drop beyond the threshold that is not significant at alpha does not fail (McNemar's
    # p of the clean drop is about 1e-17; the permutation p-values are >= 1/201)
    status, out, _ = _compare(capsys, *args, "--fail-on-drop", "2", "--alpha", "1e-30")
    assert status == 0 and "No significant drop of more than 2 pp" in out


# -- oracles --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows(setup):
    with Store(setup["s"], readonly=True) as store:
        va = {v.suite: v for v in resolve(store, setup["good"])}
        vb = {v.suite: v for v in resolve(store, setup["bad"])}
        return {suite: paired_metrics(store, va[suite], store, vb[suite], resamples=500)
                for suite in ("clean", "cifar10c")}


def test_rows_have_the_interface_columns(rows):
    for frame in rows.values():
        assert list(frame.columns) == COLUMNS
    c = rows["cifar10c"].set_index("metric")
    assert c.loc["cifar10c:mean", "test"] == "permutation"
    assert np.isnan(c.loc["cifar10c:mean", "a_only"])
    assert c.loc["cifar10c:clean", "test"] == "mcnemar-exact"
    assert list(c.index[:4]) == ["cifar10c:clean", "cifar10c:mean", "cifar10c:s1", "cifar10c:s3"]


def test_mcnemar_equals_statsmodels_on_a_table_built_here(setup, rows):
    mcnemar = require("statsmodels.stats.contingency_tables").mcnemar
    with Store(setup["s"], readonly=True) as store:
        for suite, metric, keep in (("clean", "clean:accuracy", None),
                                    ("cifar10c", "cifar10c:clean", ("severity", 0))):
            fa = store.to_frame([_run_id(store, suite, setup["good"])])
            fb = store.to_frame([_run_id(store, suite, setup["bad"])])
            if keep:
                fa, fb = fa[fa[keep[0]] == keep[1]], fb[fb[keep[0]] == keep[1]]
            m = fa.merge(fb, on="example", suffixes=("_a", "_b"))
            a, b = m["correct_a"].to_numpy(bool), m["correct_b"].to_numpy(bool)
            table = [[int(np.sum(a & b)), int(np.sum(a & ~b))],
                     [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
            want = mcnemar(table, exact=True).pvalue
            row = rows[suite].set_index("metric").loc[metric]
            assert row["p_value"] == pytest.approx(want, rel=1e-9, abs=1e-300)
            assert (row["a_only"], row["b_only"], row["n"]) == (table[0][1], table[1][0], len(m))
            assert row["significant"] == (want < 0.05)


def test_accuracies_are_the_suites_headlines(setup, rows):
    with Store(setup["s"], readonly=True) as store:
        for suite in ("clean", "cifar10c"):
            s = SUITES.get(suite)()
            frame = rows[suite].set_index("metric")
            for side, weights in (("a", setup["good"]), ("b", setup["bad"])):
                summary = s.summarize(store, _run_id(store, suite, weights))
                head = s.headline(summary)
                keys = (["accuracy"] if suite == "clean"
                        else ["clean", "mean", "s1", "s3"])
                assert set(keys) <= set(head)
                for key in keys:
                    assert frame.loc[f"{suite}:{key}", side] == pytest.approx(head[key],
                                                                              abs=1e-12)
                if suite == "cifar10c":
                    for name, acc in per_corruption(summary).items():
                        assert frame.loc[f"cifar10c:{name}", side] == pytest.approx(acc,
                                                                                    abs=1e-12)


def test_deltas_and_confidence_intervals(rows):
    for frame in rows.values():
        for r in frame.itertuples(index=False):
            assert r.delta == pytest.approx(r.b - r.a, abs=1e-12)
            assert -1 <= r.ci_low <= r.delta <= r.ci_high <= 1
            assert 0 <= r.p_value <= 1
    clean = rows["clean"].set_index("metric").loc["clean:accuracy"]
    assert clean["delta"] < -0.05 and clean["ci_high"] < 0 and clean["significant"]


def test_json_and_markdown(setup, rows, capsys):
    args = [setup["good"], setup["bad"], "--store", setup["s"], "--resamples", "500"]
    status, out, _ = _compare(capsys, *args, "--format", "json", "--fail-on-drop", "2")
    doc = json.loads(out)
    assert status == 1 and doc["fail_on_drop_pp"] == 2 and doc["alpha"] == 0.05
    assert doc["watched"] == ["clean:accuracy", "cifar10c:mean"]
    assert doc["a"]["checkpoint_sha256"] == _sha(setup["good"])
    assert doc["b"]["checkpoint_sha256"] == _sha(setup["bad"])
    assert doc["verdict"]["regression"] is True
    got = {r["metric"]: r for r in doc["rows"]}
    for frame in rows.values():
        for r in frame.to_dict(orient="records"):
            j = got[r["metric"]]
            assert set(j) == set(COLUMNS)
            for col in ("n", "a", "b", "delta", "ci_low", "ci_high", "p_value", "significant"):
                assert j[col] == pytest.approx(r[col], rel=1e-12), (r["metric"], col)
    status, out, _ = _compare(capsys, *args, "--format", "markdown", "--fail-on-drop", "2")
    lines = out.splitlines()
    assert status == 1 and lines[0].startswith("**Regression**: ")
    assert "95 % CI" in lines[0] and "p " in lines[0]
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0].startswith("| metric |") and set(table[1]) <= set("|-:")
    assert any(ln.startswith("| clean:accuracy |") for ln in table)


# -- references and stores ----------------------------------------------------------------------
def test_baseline_store_and_run_id_refs(setup, capsys):
    status, out, _ = _compare(capsys, setup["good"], setup["bad"], "--baseline-store",
                              setup["s"], "--store", setup["s2"], "--fail-on-drop", "2",
                              "--format", "json", "--resamples", "500")
    doc = json.loads(out)
    assert status == 1
    assert [r["metric"] for r in doc["rows"]] == ["clean:accuracy"]
    assert doc["rows"][0]["n"] == 500            # B evaluated the first 500 examples only
    assert any("cifar10c skipped: different parameters" in n for n in doc["notes"])
    with Store(setup["s"], readonly=True) as s:
        fa = s.to_frame([_run_id(s, "clean", setup["good"])])
        ids = [_run_id(s, suite, w) for suite in ("clean", "cifar10c")
               for w in (setup["good"], setup["bad"])]
    assert doc["rows"][0]["a"] == pytest.approx(fa[fa["example"] < 500]["correct"].mean())
    # run id prefixes name single runs
    status, out, _ = _compare(capsys, ids[0][:8], ids[1][:8], "--store", setup["s"],
                              "--format", "json", "--resamples", "500")
    doc = json.loads(out)
    assert status == 0 and [r["metric"] for r in doc["rows"]] == ["clean:accuracy"]
    assert doc["a"]["runs"] == {"clean": ids[0]} and doc["b"]["runs"] == {"clean": ids[1]}
    with Store(setup["s"], readonly=True) as s:
        comp = compare_refs(s, ids[2], s, ids[3], resamples=200)
    assert comp.watched == ["cifar10c:mean"] and comp.rows["suite"].eq("cifar10c").all()


def test_user_errors_are_one_line(setup, tmp_path, capsys):
    s = ["--store", setup["s"]]
    one_line_error(capsys, setup["good"], "nosuchmodel", *s,
                   match="no model, checkpoint or run 'nosuchmodel'")
    one_line_error(capsys, "resnet8", setup["bad"], *s, match="matches 2 models")
    one_line_error(capsys, setup["good"], setup["bad"], "--store", str(tmp_path / "none.sqlite"),
                   match="does not exist")
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--baseline-store",
                   str(tmp_path / "none.sqlite"), match="does not exist")
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--fail-on-drop", "-1",
                   match="--fail-on-drop")
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--metric", "cifar10c:nope",
                   match="available: clean:accuracy")
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--suite", "pgd",
                   match="nothing to compare")


def test_attack_and_metric_suites_reproduce_their_headlines(setup, tmp_path):
    """pgd (per threat, and the worst case over every stored attack run of the model: good has
    a second, stronger run, which lowers its worst case; the checks shard stays out),
    lipschitz and sparsity: a/b are the suites' headline numbers (or the mean of the paired
    per-example field), model-level rows the headline values."""
    from reports.collect import view_run

    store_path = tmp_path / "m.sqlite"
    pgd = ["--suite", "pgd", "--n", "20", "--linf", "1/255,2/255", "--l2", "none", "--steps", "3",
           "--check-n", "4"]
    for w in (setup["good"], setup["bad"]):
        _run(w, store_path, *pgd)
        _run(w, store_path, "--suite", "lipschitz", "--n", "3", "--clever-n", "0",
             "--power-iters", "2", "--pair-steps", "1")
        _run(w, store_path, "--suite", "sparsity", "--n", "100")
    # a second, stronger attack run of good: its worst case counts both runs
    _run(setup["good"], store_path, "--suite", "pgd", "--n", "20", "--linf", "2/255", "--l2",
         "none", "--steps", "6", "--no-checks")
    with Store(store_path, readonly=True) as store:
        runs = store.runs()
        for suite in ("pgd", "lipschitz", "sparsity"):
            ids = [_run_id_params(runs, suite, w, steps=3 if suite == "pgd" else None)
                   for w in (setup["good"], setup["bad"])]
            va, vb = (view_run(store, r) for r in ids)
            frame = paired_metrics(store, va, store, vb, resamples=200).set_index("metric")
            assert frame["kind"].isin(["accuracy", "value", "model"]).all()
            s = SUITES.get(suite)()
            for side, run in (("a", ids[0]), ("b", ids[1])):
                head = s.headline(s.summarize(store, run["run_id"]))
                examples = store.to_frame([run["run_id"]])
                for metric, row in frame.iterrows():
                    key = metric.split(":", 1)[1]
                    want = head.get(key)
                    if want is None:                   # a per-example field: its mean
                        want = examples[key].mean()
                    assert row[side] == pytest.approx(want, abs=1e-12), (metric, side)
            if suite == "pgd":
                assert {"pgd:clean", "pgd:Linf 1/255", "pgd:Linf 2/255", "pgd:worst"} <= set(
                    frame.index)
                assert frame.loc["pgd:worst", "test"] == "mcnemar-exact"
            if suite == "lipschitz":
                assert frame.loc["lipschitz:upper", "kind"] == "model"
                assert frame.loc["lipschitz:jacobian_norm", "test"] == "permutation"


def _run_id_params(runs, suite, weights, *, steps=None):
    sha = _sha(weights)
    out = [r for r in runs if r["suite"] == suite
           and r["sessions"][-1]["model_identity"]["weights_sha256"] == sha
           and (steps is None or r["spec"]["params"]["steps"] == steps)]
    assert len(out) == 1
    return out[0]
