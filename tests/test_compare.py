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
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, require
from harness.cli import main
from harness.errors import HarnessError
from harness.store import Store
from harness.suites import SUITES
from harness.suites.cifar10c import per_corruption
from reports.collect import collect
from reports.compare import (
    COLUMNS,
    _metric_rows,
    compare_entries,
    compare_refs,
    paired_metrics,
    resolve,
)

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


def test_identical_weights_and_an_improvement_pass(setup, tmp_path, capsys):
    """The same weights evaluated again (a second store: the model really runs twice) differ
    by nothing; a byte-identical copy in the same store resolves to the very same runs, which
    the notes say (its zero deltas are by construction, not evidence)."""
    again = tmp_path / "again.sqlite"
    _run(setup["same"], again, "--suite", "clean", "--n", "1000")
    _run(setup["same"], again, *CIFAR10C, "--n", "200")
    status, out, _ = _compare(capsys, setup["good"], setup["same"], "--baseline-store",
                              setup["s"], "--store", str(again), "--fail-on-drop", "2",
                              "--format", "json")
    assert status == 0
    doc = json.loads(out)
    # run ids derive from the spec, so they are equal; the runs are not (two stores)
    assert doc["a"]["store"] == setup["s"] and doc["b"]["store"] == str(again)
    assert {r["metric"] for r in doc["rows"]} >= {"clean:accuracy", "cifar10c:mean"}
    assert all(r["delta"] == 0 and r["p_value"] == 1 for r in doc["rows"])
    assert doc["verdict"]["regression"] is False
    assert not any("same runs" in n for n in doc["notes"])
    status, out, _ = _compare(capsys, setup["good"], setup["same"], "--store", setup["s"],
                              "--format", "json")
    doc = json.loads(out)
    assert status == 0 and doc["a"]["runs"] == doc["b"]["runs"]
    assert doc["notes"][0].startswith("A and B are the same runs")
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

def test_a_large_drop_that_is_not_significant_passes(setup, tmp_path, capsys):
    """On the first 20 images bad loses 3 that good gets right and gains none: a 15 pp drop,
    beyond a 2 pp threshold, but McNemar's exact p is 0.25 (checked here with statsmodels)."""
    mcnemar = require("statsmodels.stats.contingency_tables").mcnemar
    small = tmp_path / "small.sqlite"
    for w in (setup["good"], setup["bad"]):
        _run(w, small, "--suite", "clean", "--n", "20")
    status, out, _ = _compare(capsys, setup["good"], setup["bad"], "--store", str(small),
                              "--fail-on-drop", "2", "--format", "json")
    doc = json.loads(out)
    (row,) = doc["rows"]
    assert row["delta"] < -0.02 and not row["significant"]
    table = [[0, row["a_only"]], [row["b_only"], 0]]     # only the discordant cells count
    assert row["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue) and row["p_value"] > 0.05
    assert status == 0 and doc["verdict"]["regression"] is False
    assert doc["verdict"]["text"].startswith("No significant drop of more than 2 pp")


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
    two = [setup["good"], setup["bad"], "--baseline-store", setup["s"], "--store", setup["s2"],
           "--resamples", "500"]
    status, out, _ = _compare(capsys, *two, "--format", "json")
    doc = json.loads(out)
    assert status == 0
    assert [r["metric"] for r in doc["rows"]] == ["clean:accuracy"]
    assert doc["rows"][0]["n"] == 500            # B evaluated the first 500 examples only
    assert any("cifar10c skipped: different parameters" in n for n in doc["notes"])
    assert [s["suite"] for s in doc["skipped"]] == ["cifar10c"]
    # a gate must not silently lose a suite both sides have: cifar10c's runs differ
    one_line_error(capsys, *two, "--fail-on-drop", "2",
                   match="suite cifar10c both sides have cannot be compared: different "
                         "parameters (corruptions, severities)")
    # gating on the suites that do pair is explicit
    status, out, _ = _compare(capsys, *two, "--fail-on-drop", "2", "--suite", "clean",
                              "--format", "json")
    doc = json.loads(out)
    assert status == 1 and doc["verdict"]["regressions"] == ["clean:accuracy"]
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
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--resamples", "99",
                   match="--resamples: expected at least 100, got 99")
    # the permutation test's smallest p at 200 resamples is 2/201: alpha 0.005 could never
    # be reached by a permutation row (it was accepted, and such rows silently never counted)
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--resamples", "200", "--alpha",
                   "0.005", match="raise --resamples")
    one_line_error(capsys, setup["good"], setup["bad"], *s, "--alpha", "1e-30",
                   match="below the permutation test's smallest p-value")
    status, _, _ = _compare(capsys, setup["good"], setup["bad"], *s, "--resamples", "200",
                            "--alpha", "0.01")
    assert status == 0


@pytest.fixture(scope="module")
def metric_store(setup, tmp_path_factory):
    """pgd, lipschitz and sparsity runs of good and bad; a second, stronger pgd run of both
    (an attack both sides have) and a third one of good only (an attack B lacks)."""
    store_path = tmp_path_factory.mktemp("metrics") / "m.sqlite"
    pgd = ["--suite", "pgd", "--n", "20", "--linf", "1/255,2/255", "--l2", "none", "--steps", "3",
           "--check-n", "4"]
    stronger = ["--suite", "pgd", "--n", "20", "--linf", "2/255", "--l2", "none", "--no-checks"]
    for w in (setup["good"], setup["bad"]):
        _run(w, store_path, *pgd)
        _run(w, store_path, "--suite", "lipschitz", "--n", "3", "--clever-n", "0",
             "--power-iters", "2", "--pair-steps", "1")
        _run(w, store_path, "--suite", "sparsity", "--n", "100")
        _run(w, store_path, *stronger, "--steps", "6")
    _run(setup["good"], store_path, *stronger, "--steps", "9")
    return str(store_path)


@pytest.mark.slow  # its store (attack/Lipschitz/coding runs) takes seconds to fill
def test_attack_and_metric_suites_reproduce_their_headlines(setup, metric_store):
    """pgd per threat, lipschitz and sparsity: a/b are the suites' headline numbers (or the
    mean of the paired per-example field), model-level rows the headline values. pgd:worst:
    per example robust under every attack run both sides have (the compared run and the
    steps-6 run, counted here from Store.to_frame; the checks shard stays out), not good's
    steps-9 run, which B lacks and a note names; B has no extra run, so its worst case is the
    suite's own headline."""
    from reports.collect import view_run

    with Store(metric_store, readonly=True) as store:
        runs = store.runs()
        for suite in ("pgd", "lipschitz", "sparsity"):
            ids = [_run_id_params(runs, suite, w, steps=3 if suite == "pgd" else None)
                   for w in (setup["good"], setup["bad"])]
            va, vb = (view_run(store, r) for r in ids)
            frame = paired_metrics(store, va, store, vb, resamples=200)
            notes = frame.attrs["notes"]
            frame = frame.set_index("metric")
            assert frame["kind"].isin(["accuracy", "value", "model"]).all()
            s = SUITES.get(suite)()
            for side, run in (("a", ids[0]), ("b", ids[1])):
                head = s.headline(s.summarize(store, run["run_id"]))
                examples = store.to_frame([run["run_id"]])
                for metric, row in frame.iterrows():
                    key = metric.split(":", 1)[1]
                    if key == "worst":
                        continue
                    want = head.get(key)
                    if want is None:                   # a per-example field: its mean
                        want = examples[key].mean()
                    assert row[side] == pytest.approx(want, abs=1e-12), (metric, side)
            if suite == "pgd":
                assert {"pgd:clean", "pgd:Linf 1/255", "pgd:Linf 2/255", "pgd:worst"} <= set(
                    frame.index)
                worst = frame.loc["pgd:worst"]
                assert worst["test"] == "mcnemar-exact" and worst["n"] == 20
                for side, w in (("a", setup["good"]), ("b", setup["bad"])):
                    common = [ids[0 if side == "a" else 1]["run_id"],
                              _run_id_params(runs, "pgd", w, steps=6)["run_id"]]
                    f = store.to_frame(common)
                    f = f[(f["norm"] == "Linf") & ((f["eps"] - 2 / 255).abs() < 1e-9)]
                    robust = f.groupby("example")["correct"].all()
                    assert len(f) == 40 and worst[side] == pytest.approx(robust.mean())
                    assert worst[side] <= frame.loc["pgd:Linf 2/255", side]
                pgd_b = s.headline(s.summarize(store, ids[1]["run_id"]))
                assert worst["b"] == pytest.approx(pgd_b["worst"], abs=1e-12)
                extra = _run_id_params(runs, "pgd", setup["good"], steps=9)["run_id"]
                (note,) = [n for n in notes if n.startswith("pgd:worst:")]
                assert f"A's attack run {extra[:12]} (pgd, " in note and "steps=9)" in note
                assert "B has no run of that attack" in note
            if suite == "lipschitz":
                assert frame.loc["lipschitz:upper", "kind"] == "model"
                assert frame.loc["lipschitz:jacobian_norm", "test"] == "permutation"


@pytest.mark.slow  # its store (attack/Lipschitz/coding runs) takes seconds to fill
def test_model_level_rows_cannot_be_watched(setup, metric_store, capsys):
    args = [setup["good"], setup["bad"], "--store", metric_store, "--suite", "lipschitz",
            "--resamples", "200", "--fail-on-drop", "0"]
    for metric in ("lipschitz:upper", "lipschitz:lower"):
        one_line_error(capsys, *args, "--metric", metric,
                       match=f"--metric: {metric!r} is a per-model number with no test")
    status, out, err = _compare(capsys, *args, "--metric", "lipschitz:upper")
    assert "available: lipschitz:accuracy, lipschitz:jacobian_norm, lipschitz:pair_ratio" in err
    assert "lipschitz:upper" not in err.split("available:")[1]
    status, out, _ = _compare(capsys, *args, "--metric", "lipschitz:jacobian_norm",
                              "--format", "json")
    assert status in (0, 1) and json.loads(out)["watched"] == ["lipschitz:jacobian_norm"]


def _run_id_params(runs, suite, weights, *, steps=None):
    sha = _sha(weights)
    out = [r for r in runs if r["suite"] == suite
           and r["sessions"][-1]["model_identity"]["weights_sha256"] == sha
           and (steps is None or r["spec"]["params"]["steps"] == steps)]
    assert len(out) == 1
    return out[0]


# -- few examples, NaN values --------------------------------------------------------------------
def test_one_paired_example_has_no_test(setup, tmp_path):
    """One image: the zero-fraction difference is nonzero, and scipy's permutation test
    raised on a single pair; now p and CI are NaN, the row is not significant, a note says
    why. The single clean outcome keeps its discordant counts, without a test."""
    store_path = tmp_path / "one.sqlite"
    for w in (setup["good"], setup["bad"]):
        _run(w, store_path, "--suite", "sparsity", "--n", "1")
    with Store(store_path, readonly=True) as store:
        comp = compare_refs(store, setup["good"], store, setup["bad"], resamples=200)
    rows = comp.rows.set_index("metric")
    tested = rows[rows["kind"] != "model"]
    assert (tested["n"] == 1).all() and len(tested) >= 2
    value = rows.loc["sparsity:zero_fraction"]
    assert value["delta"] != 0
    assert tested["p_value"].isna().all() and tested["ci_low"].isna().all()
    assert tested["ci_high"].isna().all() and not tested["significant"].any()
    assert (tested["test"] == "-").all()
    acc = rows.loc["sparsity:accuracy"]
    assert acc["a_only"] + acc["b_only"] <= 1
    for metric in tested.index:
        assert any(n.startswith(f"{metric}: 1 paired example: no test and no confidence "
                                "interval") for n in comp.notes), metric
    assert "No significant drop" in comp.verdict()


@pytest.fixture(scope="module")
def coding_store(tmp_path_factory, one_torch_thread):
    """Coding runs of WARP-LCA and LCA traced for 5 iterations only: most examples do not
    reach the target (NaN iterations)."""
    path = tmp_path_factory.mktemp("coding") / "c.sqlite"
    for model in ("warp-lca-resnet8", "lca-resnet8"):
        assert main(["run", "--suite", "coding", "--model", model, "--store", str(path),
                     "--n", "6", "--reference-iterations", "60", "--max-iterations", "5",
                     "--quiet"]) == 0
    return str(path)


@pytest.mark.slow  # its store (attack/Lipschitz/coding runs) takes seconds to fill
def test_iterations_not_reached_are_censored_not_dropped(coding_store):
    with Store(coding_store, readonly=True) as store:
        frames = {r["model"]: store.to_frame([r["run_id"]]).sort_values("example")
                  for r in store.runs()}
        comp = compare_refs(store, "warp-lca-resnet8", store, "lca-resnet8", resamples=200)
    rows = comp.rows.set_index("metric")
    a, b = frames["warp-lca-resnet8"], frames["lca-resnet8"]
    for field in ("iterations_to_target", "cold_iterations_to_target"):
        assert a[field].isna().any() and b[field].isna().any()   # the case under test
        row = rows.loc[f"coding:{field}"]
        assert row["n"] == 6                                     # nobody dropped
        assert row["a"] == pytest.approx(a[field].fillna(6).mean(), abs=1e-12)
        assert row["b"] == pytest.approx(b[field].fillna(6).mean(), abs=1e-12)
        assert (f"coding:{field}: NaN (not reached within max_iterations 5) counted as 6 for "
                f"{a[field].isna().sum()} examples of A and {b[field].isna().sum()} of B"
                in " ".join(comp.notes))
    assert not any("left out" in n for n in comp.notes)


def test_nan_values_of_other_fields_are_dropped_with_a_note():
    pairs = pd.DataFrame({"example": range(5), "cond": "",
                          "correct_a": [True, False, True, True, False],
                          "correct_b": [True, True, True, False, False],
                          "jacobian_norm_a": [1.0, np.nan, 2.0, 3.0, 4.0],
                          "jacobian_norm_b": [1.5, 2.0, np.nan, 3.5, 5.0]})
    rows, notes = _metric_rows("lipschitz", pairs, [], censor={}, resamples=200, seed=0,
                               alpha=0.05)
    got = {r["metric"]: r for r in rows}
    assert got["lipschitz:accuracy"]["n"] == 5
    assert got["lipschitz:jacobian_norm"]["n"] == 3
    assert got["lipschitz:jacobian_norm"]["a"] == pytest.approx(np.mean([1.0, 3.0, 4.0]))
    assert notes == ["lipschitz:jacobian_norm: 2 of 5 paired examples left out: the value is "
                     "NaN in A or B"]


# -- compare_entries: one collect per store ------------------------------------------------------
def test_compare_entries_does_not_collect_and_matches_compare_refs(setup, monkeypatch):
    import reports.compare as compare_module
    from reports.collect import collect

    calls = []
    real = compare_module.collect
    monkeypatch.setattr(compare_module, "collect", lambda store: calls.append(1) or real(store))
    with Store(setup["s"], readonly=True) as store:
        entries = collect(store)
        by_sha = {e.checkpoint_sha256: e for e in entries}
        good, bad = by_sha[_sha(setup["good"])], by_sha[_sha(setup["bad"])]
        refs = compare_refs(store, setup["good"], store, setup["bad"], resamples=200)
        assert len(calls) == 1                   # one store: collected once
        comp = compare_entries(store, good, store, bad, resamples=200)
        assert len(calls) == 1                   # compare_entries collects nothing
    pd.testing.assert_frame_equal(comp.rows, refs.rows)
    assert comp.notes == refs.notes and comp.watched == refs.watched
    assert comp.a["runs"] == refs.a["runs"] and comp.a["model"] == refs.a["model"]
    assert comp.b["checkpoint_sha256"] == _sha(setup["bad"])
    assert comp.verdict() == refs.verdict()


def test_compare_entries_with_nothing_comparable(setup):
    """compare_entries returns an empty comparison (compare_refs raises) and every output
    works on it."""
    with Store(setup["s"], readonly=True) as s, Store(setup["s2"], readonly=True) as s2:
        good = next(e for e in collect(s) if e.checkpoint_sha256 == _sha(setup["good"]))
        (bad,) = collect(s2)
        comp = compare_entries(s, good, s2, bad, suites=["cifar10c", "pgd"], resamples=200)
        with pytest.raises(HarnessError, match="nothing to compare"):
            compare_refs(s, setup["good"], s2, setup["bad"], suites=["cifar10c"],
                         resamples=200)
    assert list(comp.rows.columns) == COLUMNS and len(comp.rows) == 0
    assert comp.watched == [] and len(comp.regressions()) == 0
    assert any(n.startswith("cifar10c skipped: different parameters") for n in comp.notes)
    assert "pgd skipped: neither has it" in comp.notes
    assert comp.skipped[0][0] == "cifar10c"
    assert comp.verdict().startswith("Nothing compared")
    assert "Nothing compared" in comp.to_table() and "cifar10c skipped" in comp.to_table()
    md = comp.to_markdown()
    assert md.startswith("Nothing compared") and "| metric |" in md
    doc = json.loads(comp.to_json())
    assert doc["rows"] == [] and doc["verdict"]["regression"] is False
    assert doc["skipped"][0]["suite"] == "cifar10c"


def test_the_verdict_says_there_is_no_multiple_comparison_correction(setup):
    with Store(setup["s"], readonly=True) as store:
        comp = compare_refs(store, setup["good"], store, setup["bad"], resamples=200)
    comp.threshold_pp = 2
    for text in (comp.verdict(), comp.to_markdown().splitlines()[0]):
        assert text.endswith("(each watched metric tested at alpha 0.05, without correction "
                             "for multiple comparisons)")
    assert "no correction for multiple comparisons" in comp.caption()
    assert "no correction for multiple comparisons" in comp.to_markdown()
    comp.threshold_pp = 50
    assert comp.verdict().startswith("No significant drop of more than 50 pp")
    assert "without correction for multiple comparisons" in comp.verdict()
