"""The findings page's claims (reports.findings) from a store filled through the CLI with real
models and small runs: every claim has a verdict and a rule, absent models and suites are
"not measured" with the command that measures them, and verdicts follow the numbers (a
SUGAR checkpoint with noise added to its convolutions is significantly less accurate than
ReLU, so its accuracy claim is "not supported"). Evidence numbers are checked against
aggregates this file computes from ``Store.to_frame()`` / ``metrics_frame()``."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy import stats

from conftest import REPO, require
from harness.cli import main
from harness.errors import HarnessError
from harness.store import Store
from reports.collect import collect
from reports.findings import (
    NOT_MEASURED,
    NOT_SUPPORTED,
    SECTIONS,
    SUPPORTED,
    VERDICTS,
    bound_verdict,
    findings,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RELU, BSILU, NELU = "resnet8", "resnet8-sugar-bsilu", "resnet8-sugar-nelu"
ONE_LIP = "resnet8-deepspline-1lip"
WARP = "warp-lca-resnet8"
ALPHA = 0.05


def noisy_checkpoint(path, *, scale: float = 0.3, seed: int = 0):
    """The bundled SUGAR B-SiLU weights with seeded Gaussian noise (``scale`` x each conv
    kernel's std) added to every convolution kernel."""
    state = load_file(str(REPO / "models" / "weights" / f"{BSILU}.safetensors"))
    rng = np.random.default_rng(seed)
    out = {k: (v + rng.normal(0, scale * float(v.std()), v.shape).astype(v.dtype)
               if v.ndim == 4 else v) for k, v in state.items()}
    save_file(out, str(path))
    return path


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A store with small real runs: sparsity and CIFAR-10-C (2 corruptions x 2 severities)
    of ReLU and the two SUGARs, CIFAR-10-C of the noisy SUGAR, the lipschitz suite of the
    1-Lipschitz network, PGD (Linf 2/255) of ReLU and the 1-Lipschitz network, and a tiny
    coding run of WARP-LCA (its own threshold). No cold LCA model, no lipschitz run of ReLU,
    no hard-threshold coding run. Returns (store path, claims at alpha 0.05, bad model
    key)."""
    root = tmp_path_factory.mktemp("findings")
    path = str(root / "store.sqlite")
    bad = noisy_checkpoint(root / "bad.safetensors")
    base = ["run", "--store", path, "--quiet"]
    cifar = ["--suite", "cifar10c", "--source", "generated", "--corruptions", "gaussian_noise,fog",
             "--severities", "1,3", "--n", "200"]
    for argv in (["--suite", "sparsity", "--n", "200", "--model", RELU, BSILU, NELU],
                 [*cifar, "--model", RELU, BSILU, NELU],
                 [*cifar, "--model", BSILU, "--weights", str(bad)],
                 ["--suite", "lipschitz", "--n", "20", "--clever-n", "0", "--power-iters", "3",
                  "--pair-steps", "2", "--model", ONE_LIP],
                 ["--suite", "pgd", "--n", "50", "--linf", "2/255", "--l2", "none", "--steps",
                  "3", "--no-checks", "--model", RELU, ONE_LIP],
                 ["--suite", "coding", "--n", "4", "--reference-iterations", "30",
                  "--max-iterations", "20", "--model", WARP]):
        assert main([*base, *argv]) == 0, argv
    with Store(path, readonly=True) as store:
        entries = collect(store)
        claims = findings(store, entries, alpha=ALPHA)
    bad_keys = [e.key for e in entries if e.name == BSILU
                and "weights_sha256" in e.identity]
    assert len(bad_keys) == 1
    return path, claims, bad_keys[0]


def by_id(claims, prefix):
    found = [c for c in claims if c.id == prefix or c.id.startswith(prefix + ":")]
    assert found, f"no claim {prefix!r} in {[c.id for c in claims]}"
    return found


def one(claims, cid):
    found = [c for c in claims if c.id == cid]
    assert len(found) == 1, (cid, [c.id for c in claims])
    return found[0]


def run_frame(path, run_id):
    with Store(path, readonly=True) as store:
        return store.to_frame([run_id])


def test_every_claim_has_a_verdict_a_rule_and_its_numbers_or_what_is_missing(filled):
    _, claims, _ = filled
    assert len({c.id for c in claims}) == len(claims)
    assert {c.section for c in claims} == set(SECTIONS)
    for c in claims:
        assert c.verdict in VERDICTS, c.id
        assert c.rule.startswith("Supported if"), c.id
        assert c.paper.endswith(".md") and c.paper in c.claim, c.id
        if c.verdict == NOT_MEASURED:
            assert c.missing and not c.tests, c.id
        else:
            assert c.evidence and not c.missing, c.id
            for ev in c.evidence:
                assert ev["n"] > 0 and ev["source"] and ev["unit"] is not None, (c.id, ev)
            for t in c.tests:
                assert t["n"] > 0 and t["p_value"] is not None, (c.id, t)
    measured = {c.id.split(":")[0] for c in claims if c.verdict != NOT_MEASURED}
    assert {"sugar-accuracy", "sugar-cifar10c", "sugar-zeros", "sugar-dead-units",
            "spline-1lip-certified", "spline-1lip-robust", "spline-1lip-cost",
            "lca-iterations"} <= measured


def test_claims_whose_models_or_suites_are_absent_are_not_measured_with_a_command(filled):
    _, claims, bad = filled
    lca = [c for c in claims if c.section == "WARP-LCA vs LCA" and c.id != f"lca-iterations:{WARP}"]
    assert lca and all(c.verdict == NOT_MEASURED for c in lca)
    for c in lca:
        assert "harness run --suite" in c.missing[0], c.missing
    # the hard-threshold energy needs its own coding run, with the options of the stored one
    energy = one(claims, f"lca-final-energy:{WARP}")
    assert (f"harness run --suite coding --model {WARP} --n 4 --reference-iterations 30 "
            "--max-iterations 20 --threshold hard" in energy.missing[0])
    noise = one(claims, "lca-noise-shot_noise-vs-resnet8:warp-lca-resnet8")
    # ReLU's stored CIFAR-10-C run gives the options a new run must match to pair with it
    assert ("harness run --suite cifar10c --model resnet8 warp-lca-resnet8 --n 200 "
            "--corruptions gaussian_noise,shot_noise,impulse_noise --severities 1,3"
            in noise.missing[0])
    # ReLU has no lipschitz run: the paired Jacobian claim cannot be judged
    smoother = one(claims, f"spline-1lip-smoother:{ONE_LIP}")
    assert smoother.verdict == NOT_MEASURED
    assert "no lipschitz run of resnet8 in the store" in smoother.missing[0]
    assert f"harness run --suite lipschitz --model resnet8 {ONE_LIP} --n 20" in smoother.missing[0]
    assert one(claims, "spline-bound-holds:resnet8-deepspline").verdict == NOT_MEASURED
    # the noisy checkpoint has no sparsity run: measuring it needs that checkpoint
    zeros = one(claims, f"sugar-zeros:{bad}")
    assert zeros.verdict == NOT_MEASURED
    assert f"--model {BSILU} --weights CHECKPOINT" in zeros.missing[0]


def test_planted_regression_makes_the_accuracy_claim_not_supported(filled):
    path, claims, bad = filled
    c = one(claims, f"sugar-accuracy:{bad}")
    assert c.verdict == NOT_SUPPORTED and c.models == {"a": RELU, "b": bad}
    (t,) = c.tests
    assert t["delta"] < 0 and t["p_value"] < ALPHA and t["test"] == "mcnemar-exact"
    # the numbers, from the stored examples: the clean set of each cifar10c run
    ev_a, ev_b = c.evidence
    a_run, b_run = t["runs"]
    fa, fb = (run_frame(path, r) for r in (a_run, b_run))
    fa, fb = (f[f["severity"] == 0].set_index("example")["correct"] for f in (fa, fb))
    assert ev_a["run_id"] == a_run and ev_b["run_id"] == b_run
    assert ev_a["n"] == ev_b["n"] == t["n"] == len(fa) == 200
    assert ev_a["value"] == pytest.approx(fa.mean()) and ev_b["value"] == pytest.approx(fb.mean())
    assert t["delta"] == pytest.approx(fb.mean() - fa.mean())
    mcnemar = require("statsmodels.stats.contingency_tables").mcnemar
    table = [[int((fa & fb).sum()), int((fa & ~fb).sum())],
             [int((~fa & fb).sum()), int((~fa & ~fb).sum())]]
    assert t["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    # the bundled checkpoint is judged on its own, from its own runs
    (good,) = [x for x in by_id(claims, "sugar-accuracy")
               if x.models["b"].startswith(BSILU) and x.models["b"] != bad]
    assert good.tests[0]["runs"][1] != b_run and good.tests[0]["delta"] > t["delta"]


def test_verdicts_follow_the_numbers_and_the_significance_level(filled):
    path, claims, _ = filled
    for c in claims:
        if c.verdict != NOT_MEASURED and c.tests:
            (t,) = c.tests
            expect = (t["delta"] * t["direction"] > 0 and t["p_value"] < ALPHA)
            if c.id.startswith("lca-iterations"):     # and an order of magnitude in medians
                expect = expect and c.evidence[1]["value"] >= 10 * c.evidence[0]["value"]
            assert c.verdict == (SUPPORTED if expect else NOT_SUPPORTED), c.id
    # PGD at Linf 2/255: the 1-Lipschitz network keeps clearly more images than ReLU
    robust = one(claims, f"spline-1lip-robust:{ONE_LIP}:Linf 2/255")
    assert robust.verdict == SUPPORTED
    with Store(path, readonly=True) as store:
        strict = findings(store, collect(store), alpha=1e-12)
    assert {c.id for c in strict} == {c.id for c in claims}
    for c in strict:
        if c.tests:              # nothing is significant at alpha 1e-12 with n <= 200
            assert c.verdict == NOT_SUPPORTED, c.id
    assert one(strict, f"spline-1lip-robust:{ONE_LIP}:Linf 2/255").tests == robust.tests
    # the certificate does not depend on alpha
    assert one(strict, f"spline-1lip-certified:{ONE_LIP}").verdict == SUPPORTED
    with pytest.raises(HarnessError, match="alpha"), Store(path, readonly=True) as store:
        findings(store, collect(store), alpha=0)


def test_certificate_and_sparsity_evidence_match_the_store(filled):
    path, claims, _ = filled
    cert = one(claims, f"spline-1lip-certified:{ONE_LIP}")
    assert cert.verdict == SUPPORTED
    run_id = cert.evidence[0]["run_id"]
    with Store(path, readonly=True) as store:
        metrics = store.metrics_frame([run_id])
        frame = store.to_frame([run_id])
    upper = float(metrics.loc[metrics["name"] == "upper", "value"].iloc[0])
    lower = float(max(frame["jacobian_norm"].max(), frame["pair_ratio"].max()))
    assert upper <= 1 + 1e-6 and lower <= upper
    assert [ev["value"] for ev in cert.evidence[:2]] == pytest.approx([upper, lower])
    assert cert.evidence[0]["n"] == len(frame) == 20

    zeros = [c for c in by_id(claims, "sugar-zeros") if c.verdict != NOT_MEASURED]
    assert len(zeros) == 2                  # the bundled B-SiLU and NeLU
    for c in zeros:
        for ev in c.evidence:
            f = run_frame(path, ev["run_id"])
            assert ev["value"] == pytest.approx(f["zero_fraction"].mean()) and ev["n"] == len(f)

    for c in by_id(claims, "sugar-dead-units"):
        if c.verdict == NOT_MEASURED:
            continue
        dead = []
        for ev in c.evidence:
            with Store(path, readonly=True) as store:
                m = store.metrics_frame([ev["run_id"]])
            layers = m[(m["scope"] == "layer")].pivot_table(index="index", columns="name",
                                                            values="value", aggfunc="first")
            counts = m[(m["scope"] == "unit") & (m["name"] == "nonzero")].groupby(
                "index")["value"].sum()
            units = {layer: int(r["units"]) for layer, r in layers.iterrows() if not r["codes"]}
            n_dead = sum(counts.get(f"{layer}/{u}", 0.0) == 0 for layer, k in units.items()
                         for u in range(k))
            assert ev["value"] == n_dead and ev["unit"] == "count"
            dead.append((n_dead, sum(units.values())))
        (t,) = c.tests
        (da, ua), (db, ub) = dead
        assert t["p_value"] == pytest.approx(
            stats.fisher_exact([[db, ub - db], [da, ua - da]]).pvalue)
        assert c.verdict == (SUPPORTED if db < da and t["p_value"] < ALPHA else NOT_SUPPORTED)


def test_bound_verdict_rejects_a_bound_above_the_limit_a_missing_bound_and_a_violated_one():
    assert bound_verdict(1.0 + 1e-7, 0.3, limit=1.0) == SUPPORTED
    assert bound_verdict(1.01, 0.3, limit=1.0) == NOT_SUPPORTED       # not 1-Lipschitz
    assert bound_verdict(None, 0.3, limit=1.0) == NOT_SUPPORTED       # no certified bound
    assert bound_verdict(float("nan"), 0.3) == NOT_SUPPORTED
    assert bound_verdict(2e5, 18.0) == SUPPORTED                       # holds, loose
    assert bound_verdict(0.5, 0.6, limit=1.0) == NOT_SUPPORTED        # a lower bound above it


def test_iterations_to_equal_energy_come_from_the_coding_run(filled):
    path, claims, _ = filled
    c = one(claims, f"lca-iterations:{WARP}")
    assert c.verdict in (SUPPORTED, NOT_SUPPORTED) and c.models == {"model": WARP}
    (t,) = c.tests
    frame = run_frame(path, t["runs"][0])
    assert t["runs"][0] == t["runs"][1] and len(frame) == t["n"] == 4
    cap = 21                                   # --max-iterations 20, not reached: 21
    warp = frame["iterations_to_target"].astype(float).fillna(cap)
    cold = frame["cold_iterations_to_target"].astype(float).fillna(cap)
    assert [c.evidence[0]["value"], c.evidence[1]["value"]] == [warp.median(), cold.median()]
    assert (t["a"], t["b"]) == pytest.approx((cold.mean(), warp.mean()))
    assert t["delta"] == pytest.approx((warp - cold).mean())
