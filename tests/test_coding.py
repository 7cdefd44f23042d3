"""The ``coding`` suite: stored energies and iteration counts of the LCA front ends, checked
against closed forms and the front end's own forward (codes the classifier really used)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.data import load_sample
from harness.store import Store
from harness.suites import SUITES
from models import create_model

ARGS = ["--n", "6", "--reference-iterations", "60", "--max-iterations", "30", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("coding") / "s.sqlite"
    assert main(["run", "--suite", "coding", "--model", "warp-lca-resnet8", "--store", str(path),
                 *ARGS]) == 0
    return path


def test_stored_energies_match_the_models_own_codes(store):
    model = create_model("warp-lca-resnet8", pretrained=True).eval()
    warp = model.front_end
    lca = warp.lca
    x = torch.from_numpy(load_sample().images[:6]).float() / 255
    with Store(store, readonly=True) as st:
        (run,) = st.runs()
        df = st.to_frame([run["run_id"]]).sort_values("example")
        summary = SUITES.get("coding")().summarize(st, run["run_id"])
    with torch.no_grad():
        s = lca.prepare(x)
        codes = model.codes(x)                     # what the classifier sees
        energy = lca.energy(s, codes).double().numpy()
        cold0 = 0.5 * s.double().square().flatten(1).sum(1).numpy()   # E(0) = 1/2 ||s||^2
        ref = lca.energy(s, lca.encode(s, None, iterations=60).codes).double().numpy()
        trace = warp.encode(s, iterations=30, trace=True).trace["energy"].double().numpy()
    np.testing.assert_allclose(df["energy"], energy, rtol=1e-5)
    np.testing.assert_allclose(df["energy_reference"], ref, rtol=1e-5)
    np.testing.assert_allclose(df["energy_ratio"], energy / ref, rtol=1e-5)
    np.testing.assert_allclose(df["l0_fraction"], (codes != 0).flatten(1).float().mean(1), rtol=1e-6)
    for j in range(6):  # the first iteration within 5 % of the target, counted here
        hits = [t for t in range(31) if trace[t, j] <= 1.05 * ref[j]]
        got = df["iterations_to_target"].iloc[j]
        assert (hits[0] if hits else None) == (None if np.isnan(got) else int(got))
    curves = summary.attrs["curves"].set_index("iteration")
    assert curves.loc[0, "energy_cold"] == pytest.approx(cold0.mean(), rel=1e-5)
    assert curves.loc[warp.iterations, "energy"] == pytest.approx(energy.mean(), rel=1e-5)
    assert summary["model_iterations"].iloc[0] == warp.iterations
    # cold LCA only decreases its energy on this dictionary (tau large enough): a sanity check
    assert np.all(np.diff(curves["energy_cold"].to_numpy()[1:]) <= 1e-3 * curves["energy_cold"].iloc[1])


def test_models_without_a_front_end_are_refused(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    assert main(["run", "--suite", "coding", "--model", "resnet8", "--store", str(path),
                 *ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sparse-coding front end" in err
    assert not path.exists()
    assert main(["run", "--suite", "coding", "--model", "lca-resnet8", "--threshold", "none",
                 "--store", str(path), *ARGS]) == 2
    assert not path.exists()


def test_listing_prints_the_headline_as_the_suite_formats_it(store, capsys):
    """``harness ls runs`` used to print every headline as a percentage (x 100)."""
    with Store(store, readonly=True) as st:
        (run,) = st.runs()
        ratio = st.to_frame([run["run_id"]])["energy_ratio"].mean()
    assert main(["ls", "runs", "--store", str(store)]) == 0
    assert f"{ratio:.3f} (energy / LCA-ref)" in capsys.readouterr().out


def test_short_traces_change_only_the_iteration_counts(store, tmp_path):
    """--max-iterations below the model's own 20 iterations: the energy is still the energy
    after 20 (it was the energy after --max-iterations), the counts are the 30-iteration run's
    counts cut at the window, and the summary's medians count misses as never reached."""
    short = tmp_path / "short.sqlite"
    args = [a if a != "30" else "8" for a in ARGS]
    assert main(["run", "--suite", "coding", "--model", "warp-lca-resnet8", "--store",
                 str(short), *args]) == 0
    with Store(store, readonly=True) as st:
        long = st.to_frame().sort_values("example").reset_index(drop=True)
    with Store(short, readonly=True) as st:
        (run,) = st.runs()
        cut = st.to_frame().sort_values("example").reset_index(drop=True)
        summary = SUITES.get("coding")().summarize(st, run["run_id"])
    np.testing.assert_allclose(cut["energy"], long["energy"], rtol=1e-6)
    for col in ("iterations_to_target", "cold_iterations_to_target"):
        want = long[col].where(long[col] <= 8)
        np.testing.assert_array_equal(cut[col].to_numpy(), want.to_numpy())
        med = float(np.median(cut[col].fillna(np.inf)))
        key = "iterations" if col == "iterations_to_target" else "cold_iterations"
        assert summary[key].iloc[0] == med
    suite = SUITES.get("coding")()
    assert suite.format("cold_iterations", np.inf) == "not reached"
