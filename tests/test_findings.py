"""The findings page's claims (reports.findings) from a store filled through the CLI with real
models and small runs: every claim has a verdict and a rule, absent models and suites are
"not measured" with the command that measures them, and verdicts follow the numbers (a
SUGAR checkpoint with noise added to its convolutions is significantly less accurate than
ReLU, so its accuracy claim is "not supported"; a PGD setting whose gradient-masking checks
raise a flag cannot support a robustness claim). Evidence numbers are checked against
aggregates this file computes from ``Store.to_frame()`` / ``metrics_frame()``, and every
verdict against p-values this file recomputes from the stored examples with statsmodels'
exact McNemar test, scipy's permutation test and Fisher's exact test."""

from __future__ import annotations

import re

import jinja2
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy import stats

from conftest import REPO, require
from harness.cli import main
from harness.errors import HarnessError
from harness.store import Store
from harness.suites import raised_flags
from reports.build import fmt
from reports.collect import collect
from reports.findings import (
    NOT_MEASURED,
    NOT_SUPPORTED,
    SECTIONS,
    SUPPORTED,
    VERDICTS,
    Claim,
    bound_verdict,
    findings,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RELU, BSILU, NELU = "resnet8", "resnet8-sugar-bsilu", "resnet8-sugar-nelu"
ONE_LIP = "resnet8-deepspline-1lip"
WARP = "warp-lca-resnet8"
ALPHA = 0.05
RESAMPLES = 2000          # findings()' default, which the fixture uses
# A PGD setting too weak for its own masking checks on these models (3 steps: more steps or
# the black-box Square attack fool examples PGD left standing), at a threat where the
# 1-Lipschitz network is still significantly more accurate than ReLU.
FLAGGED_PGD = ["--suite", "pgd", "--n", "50", "--linf", "3/255", "--l2", "none", "--steps", "3",
               "--check-n", "20"]


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
    of ReLU and the two SUGARs, CIFAR-10-C and a smaller sparsity run (n 40, so its dead units
    are counted over other images than ReLU's) of the noisy SUGAR, the lipschitz suite of the
    1-Lipschitz network, two PGD runs of ReLU and the 1-Lipschitz network (Linf 2/255 without
    the masking checks; Linf 3/255 with 3 steps and the checks on 20 images, which raise a
    flag), and a tiny coding run of WARP-LCA (its own threshold). No cold LCA model, no
    lipschitz run of ReLU, no hard-threshold coding run. Returns (store path, claims at
    alpha 0.05, bad model key)."""
    root = tmp_path_factory.mktemp("findings")
    path = str(root / "store.sqlite")
    bad = noisy_checkpoint(root / "bad.safetensors")
    base = ["run", "--store", path, "--quiet"]
    cifar = ["--suite", "cifar10c", "--source", "generated", "--corruptions", "gaussian_noise,fog",
             "--severities", "1,3", "--n", "200"]
    for argv in (["--suite", "sparsity", "--n", "200", "--model", RELU, BSILU, NELU],
                 [*cifar, "--model", RELU, BSILU, NELU],
                 [*cifar, "--model", BSILU, "--weights", str(bad)],
                 ["--suite", "sparsity", "--n", "40", "--model", BSILU, "--weights", str(bad)],
                 ["--suite", "lipschitz", "--n", "20", "--clever-n", "0", "--power-iters", "3",
                  "--pair-steps", "2", "--model", ONE_LIP],
                 ["--suite", "pgd", "--n", "50", "--linf", "2/255", "--l2", "none", "--steps",
                  "3", "--no-checks", "--model", RELU, ONE_LIP],
                 [*FLAGGED_PGD, "--model", RELU, ONE_LIP],
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


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
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


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
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
    # the noisy checkpoint's sparsity run (n 40) and ReLU's (n 200) count dead units over
    # different images: not measured (it crashed the page once), and the smaller run is to be
    # repeated with the options of the larger, from its checkpoint
    dead = one(claims, f"sugar-dead-units:{bad}")
    assert dead.verdict == NOT_MEASURED and not dead.tests and not dead.evidence
    assert f"of {RELU} (n = 200) and {bad} (n = 40)" in dead.missing[0]
    assert (f"harness run --suite sparsity --model {BSILU} --weights CHECKPOINT --n 200 "
            "(the checkpoint of") in dead.missing[0]
    assert "--model resnet8 " not in dead.missing[0]     # ReLU's run is the one to match
    # the per-image fractions of the same runs pair on the 40 shared images
    assert one(claims, f"sugar-zeros:{bad}").tests[0]["n"] == 40


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
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


def per_example(frame, metric):
    """The per-example values (index: example) a paired ``metric`` ('suite:name') reads from
    one run's stored rows, as this file reads the suites' row layouts."""
    suite, name = metric.split(":", 1)
    if suite == "cifar10c":
        sev = frame["severity"].astype(int)
        if name == "clean":
            return frame[sev == 0].set_index("example")["correct"].astype(bool)
        if name == "mean":               # the mean over the stored benchmark sets, per image
            assert set(frame.loc[sev > 0, "corruption"]) == {"gaussian_noise", "fog"}
            return frame[sev > 0].groupby("example")["correct"].mean()
    if suite == "pgd":
        if name == "clean":
            sel = frame["norm"] == "none"
        else:                             # "Linf 2/255": that threat's rows of the run
            norm, label = name.split(" ")
            num, den = label.split("/")
            sel = (frame["norm"] == norm) & ((frame["eps"] - int(num) / int(den)).abs() < 1e-9)
        return frame[sel].set_index("example")["correct"].astype(bool)
    if suite == "sparsity":
        if name == "accuracy":
            return frame.set_index("example")["correct"].astype(bool)
        return frame.set_index("example")[name].astype(float)
    raise AssertionError(f"this test has no oracle for {metric}")


def dead_units(path, run_id):
    """(dead, units) of a sparsity run, counted here from its per-unit nonzero counts: a unit
    of an activation layer (not the codes of a front end) that was nonzero nowhere."""
    with Store(path, readonly=True) as store:
        m = store.metrics_frame([run_id])
    layers = m[m["scope"] == "layer"].pivot_table(index="index", columns="name", values="value",
                                                  aggfunc="first")
    counts = m[(m["scope"] == "unit") & (m["name"] == "nonzero")].groupby("index")["value"].sum()
    units = {layer: int(r["units"]) for layer, r in layers.iterrows() if not r["codes"]}
    dead = sum(counts.get(f"{layer}/{u}", 0.0) == 0 for layer, k in units.items()
               for u in range(k))
    return int(dead), sum(units.values())


def permutation_p(a, b):
    """Two-sided paired (sign-flip) permutation p of mean(b - a): scipy's, with 5x the
    resamples of the code's and another seed (exact when 2 ** n is fewer)."""
    return stats.permutation_test((a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis),
                                  permutation_type="samples", vectorized=True,
                                  n_resamples=5 * RESAMPLES,
                                  rng=np.random.default_rng(2024)).pvalue


def monte_carlo_tolerance(p):
    """4.5 standard errors of the difference of two Monte Carlo p-values near ``p`` (the
    code's, with findings' default resamples, and this file's)."""
    return 4.5 * float(np.sqrt(p * (1 - p) * (1 / RESAMPLES + 1 / (5 * RESAMPLES)))) + 1e-3


def oracle(path, c):
    """(delta, p, expected verdict) of a measured claim, from the stored examples, with the
    test its rule names computed here; the rule's other conditions (no masking flag on a
    robustness claim, an order of magnitude in median iterations) checked here too."""
    (t,) = c.tests
    a_run, b_run = t["runs"]
    extra = True
    if t["metric"] == "sparsity:dead_units":
        (da, ua), (db, ub) = dead_units(path, a_run), dead_units(path, b_run)
        delta = db - da
        p = stats.fisher_exact([[db, ub - db], [da, ua - da]]).pvalue
    elif t["metric"] == "coding:iterations_to_target":
        frame = run_frame(path, a_run)
        with Store(path, readonly=True) as store:
            cap = store.find_run(a_run)["spec"]["params"]["max_iterations"] + 1
        cold = frame["cold_iterations_to_target"].astype(float).fillna(cap).to_numpy()
        warp = frame["iterations_to_target"].astype(float).fillna(cap).to_numpy()
        delta, p = float(np.mean(warp - cold)), permutation_p(cold, warp)
        extra = np.median(cold) >= 10 * np.median(warp)
    else:
        sa, sb = (per_example(run_frame(path, r), t["metric"]) for r in (a_run, b_run))
        shared = sa.index.intersection(sb.index)
        a, b = sa[shared], sb[shared]
        assert len(shared) == t["n"], c.id
        delta = float(b.astype(float).mean() - a.astype(float).mean())
        if t["test"] == "mcnemar-exact":
            mcnemar = require("statsmodels.stats.contingency_tables").mcnemar
            table = [[int((a & b).sum()), int((a & ~b).sum())],
                     [int((~a & b).sum()), int((~a & ~b).sum())]]
            p = mcnemar(table, exact=True).pvalue
        else:
            p = permutation_p(a.to_numpy(float), b.to_numpy(float))
        if t["metric"].startswith("pgd:L"):          # a robustness claim: no masking flag
            with Store(path, readonly=True) as store:
                extra = not any(raised_flags(store.metrics_frame([r])) for r in (a_run, b_run))
    expect = SUPPORTED if delta * t["direction"] > 0 and p < ALPHA and extra else NOT_SUPPORTED
    return delta, p, expect


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
def test_verdicts_agree_with_tests_recomputed_from_the_stored_examples(filled):
    path, claims, _ = filled
    checked = set()
    for c in claims:
        if c.verdict == NOT_MEASURED or not c.tests:
            continue
        (t,) = c.tests
        delta, p, expect = oracle(path, c)
        assert t["delta"] == pytest.approx(delta, abs=1e-12), c.id
        if t["test"] == "permutation":       # Monte Carlo on both sides (exact for n = 4)
            tol = monte_carlo_tolerance(p)
            assert t["p_value"] == pytest.approx(p, abs=tol), c.id
            if abs(p - ALPHA) < tol:         # too close to alpha to tell the two apart
                continue
        else:
            assert t["p_value"] == pytest.approx(p, rel=1e-9), c.id
        assert c.verdict == expect, (c.id, delta, p)
        checked.add(c.id.split(":")[0])
    assert {"sugar-accuracy", "sugar-cifar10c", "sugar-zeros", "sugar-dead-units",
            "spline-1lip-robust", "spline-1lip-cost", "lca-iterations"} <= checked
    # both outcomes occur: the oracle is not trivially "not supported"
    verdicts = {c.verdict for c in claims if c.tests}
    assert verdicts == {SUPPORTED, NOT_SUPPORTED}


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
def test_verdicts_follow_the_significance_level(filled):
    path, claims, _ = filled
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


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
def test_a_raised_masking_flag_keeps_a_robustness_claim_from_being_supported(filled):
    path, claims, _ = filled
    c = one(claims, f"spline-1lip-robust:{ONE_LIP}:Linf 3/255")
    (t,) = c.tests
    with Store(path, readonly=True) as store:
        flags = {r: raised_flags(store.metrics_frame([r])) for r in t["runs"]}
        params = [store.find_run(r)["spec"]["params"] for r in t["runs"]]
    assert all(p["checks"] and p["steps"] == 3 for p in params)
    # the setting raises a flag on these models (the precondition of this test) ...
    assert any(flags.values()), flags
    # ... while the paired test alone, recomputed here, would support the claim
    delta, p, expect = oracle(path, c)
    assert delta > 0 and p < ALPHA and expect == NOT_SUPPORTED
    assert c.verdict == NOT_SUPPORTED
    shown = [ev for ev in c.evidence if ev.get("flag")]
    assert len(shown) == sum(map(len, flags.values()))
    for run_id, raised in flags.items():
        for flag in raised:
            assert any(ev["run_id"] == run_id and flag in ev["what"] for ev in shown), flag
    assert "gradient-masking flag" in c.rule
    # the same claim at 2/255 (checks not run, so nothing raised) follows its paired test
    clean = one(claims, f"spline-1lip-robust:{ONE_LIP}:Linf 2/255")
    (t2,) = clean.tests
    with Store(path, readonly=True) as store:
        assert not any(raised_flags(store.metrics_frame([r])) for r in t2["runs"])
    assert not any(ev.get("flag") for ev in clean.evidence)
    assert sum("masking checks not run" in ev["what"] for ev in clean.evidence) == 2
    assert t2["delta"] > 0 and t2["p_value"] < ALPHA and clean.verdict == SUPPORTED


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
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
    assert len(zeros) == 3                  # the bundled B-SiLU and NeLU, the noisy B-SiLU
    for c in zeros:
        fa, fb = (run_frame(path, ev["run_id"]).set_index("example") for ev in c.evidence)
        shared = fa.index.intersection(fb.index)
        for ev, f in zip(c.evidence, (fa, fb)):
            assert ev["value"] == pytest.approx(f.loc[shared, "zero_fraction"].mean())
            assert ev["n"] == len(shared) == min(len(fa), len(fb))

    for c in by_id(claims, "sugar-dead-units"):
        if c.verdict == NOT_MEASURED:
            continue
        dead = []
        for ev in c.evidence:
            n_dead, units = dead_units(path, ev["run_id"])
            assert ev["value"] == n_dead and ev["unit"] == "count"
            assert ev["what"].endswith(f"dead units (of {units})")
            dead.append((n_dead, units))
        (t,) = c.tests
        (da, ua), (db, ub) = dead
        assert t["p_value"] == pytest.approx(
            stats.fisher_exact([[db, ub - db], [da, ua - da]]).pvalue)
        assert c.verdict == (SUPPORTED if db < da and t["p_value"] < ALPHA else NOT_SUPPORTED)
        assert "units treated as independent draws of the training process" in c.rule


def test_bound_verdict_rejects_a_bound_above_the_limit_a_missing_bound_and_a_violated_one():
    assert bound_verdict(1.0 + 1e-7, 0.3, limit=1.0) == SUPPORTED
    assert bound_verdict(1.01, 0.3, limit=1.0) == NOT_SUPPORTED       # not 1-Lipschitz
    assert bound_verdict(None, 0.3, limit=1.0) == NOT_SUPPORTED       # no certified bound
    assert bound_verdict(float("nan"), 0.3) == NOT_SUPPORTED
    assert bound_verdict(2e5, 18.0) == SUPPORTED                       # holds, loose
    assert bound_verdict(0.5, 0.6, limit=1.0) == NOT_SUPPORTED        # a lower bound above it


@pytest.mark.slow  # the filled store takes ~12 s; the default tier renders findings in test_report
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


@pytest.mark.slow
def test_a_robustness_claim_whose_masking_checks_raised_nothing_follows_its_paired_test(
        tmp_path):
    """The checks run (20 images) and raise nothing with 5 PGD steps at Linf 2/255: the
    verdict is the paired test's (slow tier: the checks cost ~5 s on one CPU thread)."""
    path = str(tmp_path / "store.sqlite")
    assert main(["run", "--store", path, "--quiet", "--suite", "pgd", "--n", "50", "--linf",
                 "2/255", "--l2", "none", "--steps", "5", "--check-n", "20",
                 "--model", RELU, ONE_LIP]) == 0
    with Store(path, readonly=True) as store:
        claims = findings(store, collect(store), alpha=ALPHA)
    c = one(claims, f"spline-1lip-robust:{ONE_LIP}:Linf 2/255")
    (t,) = c.tests
    with Store(path, readonly=True) as store:
        assert all(store.find_run(r)["spec"]["params"]["checks"] for r in t["runs"])
        assert not any(raised_flags(store.metrics_frame([r])) for r in t["runs"])
    assert not any(ev.get("flag") or "masking" in ev["what"] for ev in c.evidence)
    delta, p, expect = oracle(path, c)
    assert delta > 0 and p < ALPHA and c.verdict == expect == SUPPORTED


def render_findings(claims, alpha=ALPHA):
    """The findings template as ``reports.build.build_site`` renders it (claims, alpha,
    sections and the ``fmt`` filter; the base template's page variables)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env.get_template("findings.html.j2").render(
        page="findings", title="Findings", claims=claims, alpha=alpha, sections=list(SECTIONS),
        version="test", built="now", store="store.sqlite", n_models=2)


def test_a_significant_difference_is_coloured_by_the_claims_direction_not_its_sign():
    def claim(cid, delta, p, direction, unit):
        t = {"what": cid, "metric": "m", "a": 0.5, "b": 0.5 + delta, "delta": delta,
             "ci_low": None, "ci_high": None, "p_value": p, "test": "t", "n": 100,
             "unit": unit, "a_only": None, "b_only": None, "direction": direction,
             "runs": ["r", "r"]}
        return Claim(id=cid, section=SECTIONS[0], claim=cid, paper="x.md", rule="Supported if",
                     verdict=SUPPORTED, tests=[t])

    cases = {  # id: (delta, p, direction, unit) -> the class of the b - a cell
        "lower-is-better-and-lower": ((-3.0, 0.001, -1, "count"), "good"),
        "lower-is-better-but-higher": ((3.0, 0.001, -1, "count"), "bad"),
        "higher-is-better-and-higher": ((0.1, 0.001, +1, "%"), "good"),
        "higher-is-better-but-lower": ((-0.1, 0.001, +1, "%"), "bad"),
        "lower-is-better-not-significant": ((-3.0, 0.2, -1, "x"), ""),
        "no-test": ((-3.0, None, -1, "x"), ""),
    }
    html = render_findings([claim(k, *args) for k, (args, _) in cases.items()])
    for cid, (_, colour) in cases.items():
        row = re.search(r"<tr><td>" + re.escape(cid) + r"</td>(.*?)</tr>", html, re.S)
        assert row, cid
        cells = re.findall(r'<td class="num([^"]*)">', row.group(1))
        assert cells[2].strip() == colour, (cid, cells)     # a, b, b - a
    # a raised masking flag is drawn as one
    flagged = Claim(id="f", section=SECTIONS[0], claim="f", paper="x.md", rule="Supported if",
                    verdict=NOT_SUPPORTED, evidence=[
                        {"what": "m: gradient-masking check raised a flag: more_steps",
                         "value": None, "unit": "", "n": 20, "source": "s", "run_id": "r",
                         "flag": True},
                        {"what": "m: clean accuracy", "value": 0.5, "unit": "%", "n": 20,
                         "source": "s", "run_id": "r"}])
    html = render_findings([flagged])
    assert re.search(r'<tr class="bad"><td>m: gradient-masking check raised a flag', html)
    assert "<tr><td>m: clean accuracy" in html
