"""Suites ``lipschitz`` and ``sparsity`` end to end: stored per example and per layer,
resumable, merged across shards, shown by ``harness show``; numbers checked against dense
autograd Jacobians and a hook-free recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import harness
from harness.cli import main
from harness.data import load_sample
from harness.store import Store
from models.zoo import create_model, list_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = dict(power_iters=8, pair_steps=2, clever_n=1, clever_batches=4, clever_samples=8)


def dense_jacobian_norm(model, x: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(lambda v: model(v.reshape(x.shape)).flatten(),
                                             x.flatten())
    return float(np.linalg.svd(jac.detach().double().numpy(), compute_uv=False)[0])


def test_lipschitz_suite_stores_bounds_that_match_dense_jacobians(tmp_path):
    store = tmp_path / "s.sqlite"
    frame = harness.evaluate(create_model("resnet8", pretrained=True), suite="lipschitz", n=3,
                             store=str(store), **QUICK)
    assert len(frame) == 3
    model = create_model("resnet8", pretrained=True).eval()
    x = torch.from_numpy(load_sample().images[:3]).float() / 255
    exact = [dense_jacobian_norm(model, x[i:i + 1]) for i in range(3)]
    # power iteration from below: never above the exact norm, and close after 8 steps on a
    # rank-10 Jacobian
    got = frame.sort_values("example")["jacobian_norm"].to_numpy()
    assert (got <= np.array(exact) * (1 + 1e-4)).all()
    assert (got >= 0.95 * np.array(exact)).all()
    assert frame["clever_l2"].notna().sum() == 1 and frame["clever_linf"].notna().sum() == 1
    with Store(str(store), readonly=True) as s:
        run = s.runs()[0]["run_id"]
        from harness.suites import SUITES

        summary = SUITES.get("lipschitz")().summarize(s, run)
    r = summary.iloc[0]
    assert r["upper"] > r["lower"] >= r["jacobian_max"] > 0
    assert summary.attrs["flags"] == []
    assert len(summary.attrs["factors"]) > 10


def test_one_lipschitz_model_bound_and_lower_bounds(tmp_path):
    frame = harness.evaluate(create_model("resnet8-deepspline-1lip", pretrained=True), suite="lipschitz", n=2,
                             store=str(tmp_path / "s.sqlite"), **QUICK)
    with Store(str(tmp_path / "s.sqlite"), readonly=True) as s:
        from harness.suites import SUITES

        summary = SUITES.get("lipschitz")().summarize(s, s.runs()[0]["run_id"])
    upper = summary.iloc[0]["upper"]
    assert upper <= 1 + 1e-3
    assert (frame["jacobian_norm"] <= upper).all() and (frame["pair_ratio"] <= upper).all()
    assert (frame["jacobian_norm"] > 0.05).all()


def test_sparsity_suite_merges_shards_like_one_pass(tmp_path):
    """Two shards of 20 give the per-layer counts (dead units judged over all 40) of one pass of
    metrics.sparsity over the 40 images; the stem's dead channels match a hook-free count."""
    from harness.suites import SUITES
    from metrics.sparsity import activation_sparsity

    store = str(tmp_path / "s.sqlite")
    # batches of 8 within shards of 20: the last batch of each shard is short
    assert main(["run", "--suite", "sparsity", "--model", "resnet8", "--n", "40", "--shard-size",
                 "20", "--batch-size", "8", "--store", store, "--quiet"]) == 0
    with Store(store, readonly=True) as s:
        frame = s.to_frame()
        assert frame["shard_key"].nunique() == 2
        summary = SUITES.get("sparsity")().summarize(s, s.runs()[0]["run_id"])
    layers = summary.attrs["layers"].set_index("layer")
    model = create_model("resnet8", pretrained=True).eval()
    images = load_sample().images[:40]
    ref = activation_sparsity(model, images).layers.set_index("layer")
    assert list(layers.index) == list(ref.index)
    assert (layers["dead_units"] == ref["dead_units"]).all()
    assert np.allclose(layers["zero_fraction"], ref["zero_fraction"], rtol=0, atol=1e-12)
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        stem = model.stem(model.normalize(x))
    assert layers.loc["stem.2", "dead_units"] == int((stem.amax((0, 2, 3)) == 0).sum())
    assert frame["zero_fraction"].between(0, 1).all()
    assert frame["code_l0"].isna().all()
    hist = summary.attrs["histogram"]
    assert hist.groupby("layer")["units"].sum().to_dict() == layers["units"].to_dict()


def test_show_prints_the_metric_tables(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    assert main(["run", "--suite", "sparsity", "--model", "resnet8", "--n", "10", "--store",
                 store, "--quiet"]) == 0
    capsys.readouterr()
    with Store(store, readonly=True) as s:
        run = s.runs()[0]["run_id"]
    assert main(["show", run[:10], "--store", store]) == 0
    out = capsys.readouterr().out
    assert "per layer" in out and "layers.2.act2" in out and "activation frequency" in out


@pytest.mark.parametrize("argv,message", [
    (["--clever-n", "-1"], "clever_n"), (["--pair-radius", "0"], "pair_radius"),
    (["--power-iters", "0"], "power_iters"),
])
def test_bad_lipschitz_options_exit_2_without_a_store(tmp_path, capsys, argv, message):
    store = tmp_path / "s.sqlite"
    assert main(["run", "--suite", "lipschitz", "--model", "resnet8", "--store", str(store),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(pretrained=True))
def test_every_bundled_model_lower_bounds_below_the_certified_bound(name, tmp_path):
    frame = harness.evaluate(create_model(name, pretrained=True), suite="lipschitz", n=2,
                             store=str(tmp_path / "s.sqlite"), power_iters=5, pair_steps=3,
                             clever_n=0)
    with Store(str(tmp_path / "s.sqlite"), readonly=True) as s:
        from harness.suites import SUITES

        summary = SUITES.get("lipschitz")().summarize(s, s.runs()[0]["run_id"])
    r = summary.iloc[0]
    assert r["upper"] == r["upper"], summary.attrs["reason"]       # every bundled model has one
    assert (frame["jacobian_norm"] <= r["upper"]).all()
    assert (frame["pair_ratio"] <= r["upper"]).all()
    assert (frame["jacobian_norm"] > 0).all()


def test_sparsity_run_resumes_without_recomputing(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    argv = ["run", "--suite", "sparsity", "--model", "lca-resnet8", "--n", "6", "--shard-size",
            "3", "--store", store, "--quiet"]
    assert main(argv) == 0
    with Store(store, readonly=True) as s:
        first = s.to_frame()
        run = s.runs()[0]["run_id"]
        metrics = s.metrics_frame([run])
    capsys.readouterr()
    assert main(argv) == 0
    assert "0/2" in capsys.readouterr().out            # nothing recomputed
    with Store(store, readonly=True) as s:
        again = s.to_frame()
    assert first.equals(again)
    # LCA codes: l0 per image stored, and the codes layer counted as one site
    assert (first["code_l0"] > 0).all()
    assert set(metrics.loc[(metrics["name"] == "codes") & (metrics["value"] == 1), "index"]) \
        == {"front_end"}


def test_sparsity_of_a_model_without_sites_says_so(tmp_path):
    from harness.suites import SUITES

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)).eval()
    store = str(tmp_path / "s.sqlite")
    frame = harness.evaluate(net, suite="sparsity", n=4, store=store)
    assert frame["zero_fraction"].isna().all()
    with Store(store, readonly=True) as s:
        suite = SUITES.get("sparsity")()
        run = s.runs()[0]["run_id"]
        summary = suite.summarize(s, run)
        assert "no activation or codes site" in suite.details(suite.summarize(s, run))[0]
    assert summary.iloc[0]["dead_units"] == 0 and len(summary.attrs["layers"]) == 0


@pytest.mark.parametrize("name", [m for m in list_models(pretrained=True) if "lca" not in m])
def test_bundled_models_jacobian_below_certified_bound(name):
    """Fast twin of the slow per-model suite test (the LCA front ends, 10 s each, are there):
    the certified bound exists and is above the Jacobian norm at two sample images."""
    from attacks.gradients import use_derivative
    from metrics.lipschitz import jacobian_norms, upper_bound

    model = create_model(name, pretrained=True).eval()
    x = torch.from_numpy(load_sample().images[:2]).float() / 255
    ub = upper_bound(model, x[:1])
    assert ub.bounded, ub.reason
    norms, _ = jacobian_norms(model, x, iters=4, gradient=lambda: use_derivative(model))
    assert (norms > 0).all() and (norms <= ub.value).all()
