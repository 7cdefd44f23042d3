"""Fidelity of the batched torch corruptions to make_cifar_c.py, against the per-image numpy /
scipy / scikit-image / OpenCV / PIL reference in tests/reference/cifar_c_ref.py.

* deterministic corruptions: every value within 1 grey level, and exactly equal for those
  that are (brightness, saturate, defocus, pixelate, JPEG); the others' share of values off
  by one is bounded per corruption at the measured figure;
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

from conftest import require

require("cv2")
require("skimage")
require("scipy")

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


# Deterministic corruptions equal the reference value for value, except where floating-point
# sums are ordered differently (separable convolutions vs scipy/skimage, contrast's mean): a
# value that lands within rounding of an integer then truncates to the neighbouring level.
# Measured on the 1,000-image sample, all severities (2026-12-02): worst difference 1 grey level
# everywhere; share of values off by one at most 5.6e-4 (gaussian_blur s1), 1.6e-4 (contrast s2),
# 2.5e-5 (zoom_blur s1); every other corruption exact.
EXACT = {"defocus_blur", "brightness", "pixelate", "jpeg_compression", "saturate"}
OFF_BY_ONE_SHARE = {"gaussian_blur": 1e-3, "contrast": 3e-4, "zoom_blur": 1e-4}


def _check_deterministic(name, images):
    assert set(DETERMINISTIC) == EXACT | set(OFF_BY_ONE_SHARE)
    for s in range(1, 6):
        ours = corrupt(torch.from_numpy(images), name, s).numpy().astype(int)
        diff = np.abs(ours - _ref(images, name, s).astype(int))
        if name in EXACT:
            assert diff.max() == 0, f"{name} s{s}: {(diff > 0).sum()} values differ, worst {diff.max()}"
        else:
            assert diff.max() <= 1, f"{name} s{s}: worst difference {diff.max()} grey levels"
            share = (diff > 0).mean()
            assert share <= OFF_BY_ONE_SHARE[name], f"{name} s{s}: {share:.2e} of values off by one"


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_reference(name, sample):
    _check_deterministic(name, sample.images[:200])


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_reference_on_the_whole_sample(name, sample):
    _check_deterministic(name, sample.images)


def _per_image_stats(out, clean):
    out = out.astype(np.float64)
    return np.abs(out - clean).mean((1, 2, 3)), out.mean((1, 2, 3))


def _assert_same_distribution(name, s, ours, theirs, clean):
    for label, a, b in zip(("mean |residual|", "mean level"), _per_image_stats(ours, clean),
                           _per_image_stats(theirs, clean)):
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        z = abs(a.mean() - b.mean()) / max(se, 1e-9)
        assert z < 4, f"{name} s{s} {label}: harness {a.mean():.3f} vs reference {b.mean():.3f} (z={z:.1f})"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "glass_blur" else n
                                  for n in RANDOM + (["frost"] if FROST_DIR else [])])
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
    from harness.plan import prepare_model
    from harness.predict import predict
    from harness.resolve import resolve_model

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


class _Replay:
    """Stands in for the reference's np.random.Generator. It holds, in the reference's call
    order, the *standardised* variates the harness drew for one example (N(0, 1), U[0, 1),
    or integers with the range the harness used) and applies the parameters the reference
    asks for (loc/scale, low/high): a harness constant that differs from the reference's then
    gives different images, and an integer range that differs fails here."""

    def __init__(self, draws):
        self.draws = list(draws)

    def _pop(self, kind, size):
        got, value, extra = self.draws.pop(0)
        assert got == kind, f"the reference draws {kind} where the harness drew {got}"
        assert np.shape(value) == (() if size is None else tuple(np.atleast_1d(size))), \
            f"{kind}: reference size {size}, harness {np.shape(value)}"
        return value, extra

    def normal(self, loc=0.0, scale=1.0, size=None):
        z, _ = self._pop("normal", size)
        return loc + scale * z

    def uniform(self, low=0.0, high=1.0, size=None):
        u, _ = self._pop("uniform", size)
        return low + (high - low) * u

    def integers(self, low, high=None, size=None):
        value, (lo, hi) = self._pop("integers", size)
        assert (lo, hi) == (low, high), f"harness draws integers in [{lo}, {hi}), reference [{low}, {high})"
        return value


def _harness_draws(name, severity, index, seed=0):
    """The variates the harness draws for example ``index``, standardised, shaped and ordered
    as the reference's calls: ``(kind, value, integer range or None)``."""
    from harness.corruptions._rng import ExampleRNG

    rng = ExampleRNG(seed, name, severity, [index])

    def std_normal(*shape):
        return ("normal", rng.normal(*shape)[0].numpy(), None)

    def std_uniform(*shape):
        u = rng.uniform(*shape)[0]
        return ("uniform", u.numpy() if shape else float(u), None)

    if name in ("gaussian_noise", "speckle_noise"):
        kind, z, _ = std_normal(3, 32, 32)
        return [(kind, z.transpose(1, 2, 0), None)]
    if name == "glass_blur":
        # the harness's own integer range, from the function's parameters
        _, delta, iters = CORRUPTIONS.get(name).params[severity - 1]
        offs = rng.integers(-delta, delta, iters, 30, 30, 2)[0].numpy().reshape(-1, 2)
        return [("integers", o, (-delta, delta)) for o in offs]
    if name == "motion_blur":
        return [std_uniform()]
    if name == "snow":
        return [std_normal(32, 32), std_uniform()]
    if name == "spatter":
        return [std_normal(32, 32)]
    if name == "fog":
        sides = [32 // step for step in (32, 16, 8, 4, 2) for _ in range(3)]
        u = rng.uniform(sum(k * k for k in sides))[0].numpy()
        out, pos = [], 0
        for k in sides:
            out.append(("uniform", u[pos:pos + k * k].reshape(k, k), None))
            pos += k * k
        return out
    if name == "elastic_transform":
        return [std_uniform(3, 2), std_uniform(32, 32), std_uniform(32, 32)]
    raise KeyError(name)


REPLAYED = ["gaussian_noise", "speckle_noise", "glass_blur", "motion_blur", "snow", "fog",
            "spatter", "elastic_transform"]


def _replay_agreement(name, severity, x, idx, corruption=None):
    """Share of values within one grey level between the harness (``corruption``: the
    registered one by default) and the reference fed the harness's variates (elastic: away
    from the border, see below)."""
    if corruption is None:
        ours = corrupt(torch.from_numpy(x), name, severity, seed=0, indices=idx)
    else:
        from harness.corruptions._rng import ExampleRNG

        ours = corruption(torch.from_numpy(x), severity, ExampleRNG(0, name, severity, idx))
    ours = ours.numpy().astype(int)
    theirs = np.empty_like(x)
    for i in range(len(x)):
        replay = _Replay(_harness_draws(name, severity, int(idx[i])))
        theirs[i] = ref.corrupt_image(x[i].transpose(1, 2, 0), name, severity, replay).transpose(2, 0, 1)
        assert not replay.draws, "the reference drew fewer variates than the harness"
    diff = np.abs(ours - theirs.astype(int))
    if name == "elastic_transform":
        diff = diff[..., 6:26, 6:26]
    return (diff <= 1).mean()


@pytest.mark.parametrize("name", REPLAYED)
def test_random_corruptions_equal_the_reference_given_the_same_draws(name, sample):
    """Beyond distributions: fed the harness's own variates, the per-image reference produces
    the same images: the harness's draws, standardised, with the reference's own parameters
    applied (a wrong harness constant fails, see the test after this one). Elastic follows
    the libraries of 2019 where they changed since: scipy's border rule
    (ops.legacy_reflect), so it is compared away from the border, and OpenCV 3's
    1/32-pixel warpAffine coordinates, which today's OpenCV computes exactly (measured: with
    exact coordinates the interior agrees on 100.000 % of values, with the 1/32 grid on
    99.55-99.94 % within one level)."""
    x, idx = sample.images[:100], sample.indices[:100]
    bar = 0.995 if name == "elastic_transform" else 0.999
    for s in range(1, 6):
        within1 = _replay_agreement(name, s, x, idx)
        assert within1 >= bar, f"{name} s{s}: {100 * within1:.3f} % within 1"


@pytest.mark.parametrize("name, index, factor", [("gaussian_noise", 0, 1.05), ("snow", 0, 1.1),
                                                  ("fog", 1, 0.9), ("elastic_transform", 2, 1.2),
                                                  ("spatter", 1, 1.1)])
def test_the_replay_catches_a_wrong_harness_constant(name, index, factor, sample):
    """The replay applies the reference's own loc/scale/low/high to the harness's standardised
    draws, so a harness whose constant is off (here one parameter of severity 5 scaled by
    ``factor``) no longer reproduces the reference, while the same path with the registered
    constants does."""
    import dataclasses

    corruption = CORRUPTIONS.get(name)
    params = list(corruption.params)
    last = params[4]
    params[4] = (last * factor if not isinstance(last, tuple)
                 else tuple(v * factor if i == index else v for i, v in enumerate(last)))
    wrong = dataclasses.replace(corruption, params=tuple(params))
    x, idx = sample.images[:20], sample.indices[:20]
    assert _replay_agreement(name, 5, x, idx, corruption) >= 0.995
    assert _replay_agreement(name, 5, x, idx, wrong) < 0.99


def test_the_replay_refuses_a_different_integer_range():
    replay = _Replay([("integers", np.array([0, 1]), (-1, 1))])
    with pytest.raises(AssertionError, match="integers in"):
        replay.integers(-2, 2, size=(2,))


def test_legacy_reflect_border_rule():
    from harness.corruptions import _ops as ops

    a = torch.tensor([10.0, 20.0, 40.0, 80.0], dtype=torch.float64).view(1, 1, 1, 4)
    c = torch.tensor([-0.3, -0.7, 0.5, 2.6, 3.3, 4.2], dtype=torch.float64).view(1, 1, -1)
    out = ops.bilinear_sample(a, torch.zeros_like(c), ops.legacy_reflect(c, 4), "mirror")
    # scipy < 1.6: -0.3 -> -0.7 -> taps -1 (mirrored to 1) and 0: 0.7*20 + 0.3*10
    assert out.flatten().tolist() == pytest.approx([17.0, 13.0, 15.0, 64.0, 68.0, 72.0])


def test_canny_equals_opencv():
    import cv2

    from harness.corruptions._spatter import canny

    rng = np.random.default_rng(0)
    blobs = np.stack([cv2.GaussianBlur(rng.uniform(0, 255, (32, 32)), (0, 0), sigmaX=float(s))
                      for s in rng.uniform(0.6, 2.0, 200)]).clip(0, 255).astype(np.uint8)
    ours = canny(torch.from_numpy(blobs).long().unsqueeze(1), 50, 150)[:, 0].numpy()
    theirs = np.stack([cv2.Canny(b, 50, 150) > 0 for b in blobs])
    assert ours.sum() > 1000
    assert (ours != theirs).sum() == 0
