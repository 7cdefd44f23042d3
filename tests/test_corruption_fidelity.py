"""Fidelity of the batched torch corruptions to make_cifar_c.py, against the per-image numpy /
scipy / scikit-image / OpenCV / PIL reference in tests/reference/cifar_c_ref.py.

* deterministic corruptions: within 1 grey level on >= 99 % of the values (they are in fact
  exact or nearly so; the test also bounds the exact share);
* random corruptions: the release was not seeded, so they must match in distribution: the
  per-image mean absolute residual and the mean level agree between harness and reference
  within 4 standard errors;
* the bundled ResNet-8's accuracy on harness vs reference output, over the 1,000-image sample:
  within 2 pp per corruption (mean over severities) and 5 pp per cell (slow).

Frost needs the photographs (not redistributable): set HARNESS_FROST_DIR to a folder with
frost1.png ... frost5.jpg of hendrycks/robustness to include it. Its procedural texture matches
the photographs in distribution (the residual test passes) but the model's accuracy on it is
about 3 pp lower: that comparison is an expected failure, kept visible.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("skimage")
pytest.importorskip("scipy")

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import cifar_c_ref as ref  # noqa: E402

from harness.corruptions import CORRUPTIONS, corrupt, list_corruptions  # noqa: E402
from harness.data import load_sample  # noqa: E402

ALL = list_corruptions(include_extra=True)
DETERMINISTIC = [n for n in ALL if not CORRUPTIONS.meta(n)["random"]]
RANDOM = [n for n in ALL if CORRUPTIONS.meta(n)["random"] and n != "frost"]
FROST_DIR = os.environ.get("HARNESS_FROST_DIR")


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def _ref(images_nchw, name, severity, seed=0):
    frost = ref.load_frost_images(FROST_DIR) if name == "frost" else None
    out = ref.corrupt_batch(images_nchw.transpose(0, 2, 3, 1), name, severity, seed=seed,
                            frost_images=frost)
    return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_reference(name, sample):
    x = sample.images[:200]
    for s in range(1, 6):
        ours = corrupt(torch.from_numpy(x), name, s).numpy().astype(int)
        diff = np.abs(ours - _ref(x, name, s).astype(int))
        within1 = (diff <= 1).mean()
        assert within1 >= 0.99, f"{name} s{s}: {100 * within1:.2f} % within 1 grey level"
        assert (diff == 0).mean() >= 0.99, f"{name} s{s}: {100 * (diff == 0).mean():.2f} % exact"


def _per_image_stats(out, clean):
    out = out.astype(np.float64)
    return np.abs(out - clean).mean((1, 2, 3)), out.mean((1, 2, 3))


def _assert_same_distribution(name, s, ours, theirs, clean):
    for label, a, b in zip(("mean |residual|", "mean level"), _per_image_stats(ours, clean),
                           _per_image_stats(theirs, clean)):
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        z = abs(a.mean() - b.mean()) / max(se, 1e-9)
        assert z < 4, f"{name} s{s} {label}: harness {a.mean():.3f} vs reference {b.mean():.3f} (z={z:.1f})"


@pytest.mark.parametrize("name", RANDOM + (["frost"] if FROST_DIR else []))
def test_random_corruptions_match_the_reference_in_distribution(name, sample):
    x = sample.images[:500]
    clean = x.astype(np.float64)
    for s in range(1, 6):
        ours = corrupt(torch.from_numpy(x), name, s, seed=0, indices=sample.indices[:500]).numpy()
        _assert_same_distribution(name, s, ours, _ref(x, name, s, seed=1), clean)


def test_the_distribution_check_catches_a_wrong_parameter(sample):
    # The check above is not vacuous: a Gaussian noise 5 % weaker than severity 5's, or fog's
    # severity 4 passed off as 5, is rejected.
    x = sample.images[:500]
    clean = x.astype(np.float64)
    with pytest.raises(AssertionError, match="fog"):
        _assert_same_distribution("fog", 5, corrupt(torch.from_numpy(x), "fog", 4).numpy(),
                                  _ref(x, "fog", 5), clean)
    noise = np.random.default_rng(0).normal(0, 0.095 * 255, x.shape)
    weaker = np.clip(x + noise, 0, 255).astype(np.uint8)
    with pytest.raises(AssertionError, match="gaussian_noise"):
        _assert_same_distribution("gaussian_noise", 5, weaker, _ref(x, "gaussian_noise", 5), clean)


def _accuracy_gaps(sample, names):
    """(corruption, mean gap pp, worst cell |gap| pp) of the bundled ResNet-8 on harness vs
    reference output of the whole sample."""
    from harness.runner import prepare_model, resolve_model
    from harness.suites.clean import predict

    model = prepare_model(resolve_model("resnet8"), sample, device="cpu", dtype="float32")
    labels = torch.from_numpy(sample.labels)

    def accuracy(images):
        pred, _ = predict(model, torch.from_numpy(np.ascontiguousarray(images)), labels,
                          device="cpu", dtype=torch.float32, batch_size=500)
        return 100 * float((pred == labels).float().mean())

    report = []
    for name in names:
        cells = []
        for s in range(1, 6):
            ours = corrupt(torch.from_numpy(sample.images), name, s, seed=0,
                           indices=sample.indices).numpy()
            cells.append(accuracy(ours) - accuracy(_ref(sample.images, name, s)))
        report.append((name, float(np.mean(cells)), float(np.max(np.abs(cells)))))
    return report


@pytest.mark.slow
def test_bundled_model_accuracy_agrees_on_harness_and_reference_corruptions(sample):
    report = _accuracy_gaps(sample, [n for n in ALL if n != "frost"])
    bad = [r for r in report if abs(r[1]) > 2 or r[2] > 5]
    assert not bad, "accuracy disagreement (corruption, mean pp, worst cell pp): " + repr(bad)


@pytest.mark.slow
@pytest.mark.skipif(not FROST_DIR, reason="set HARNESS_FROST_DIR to the frost photographs")
@pytest.mark.xfail(reason="procedural frost texture: measured -3.1 pp mean, 6.0 pp worst cell "
                          "against the photographs (2026-11-29); the bar is 2 / 5 pp. Random "
                          "phases alone cost 1.9 / 4.3 pp (phase-randomised real crops)",
                   strict=False)
def test_frost_accuracy_agrees_with_the_photographs(sample):
    ((_, mean_gap, worst),) = _accuracy_gaps(sample, ["frost"])
    assert abs(mean_gap) <= 2 and worst <= 5, (mean_gap, worst)
