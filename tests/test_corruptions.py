"""harness.corruptions: registry, API contract, seeding, bad input (fidelity to make_cifar_c.py
is in test_corruption_fidelity.py)."""

import numpy as np
import pytest
import torch

from harness.corruptions import CORRUPTIONS, corrupt, list_corruptions
from harness.corruptions._impl import FROST_STYLES, frost_texture
from harness.corruptions._rng import ExampleRNG
from harness.data import load_sample
from harness.errors import HarnessError

RELEASE_ORDER = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
]
EXTRAS = ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
ALL = RELEASE_ORDER + EXTRAS
RANDOM = [n for n in ALL if CORRUPTIONS.meta(n)["random"]]


@pytest.fixture(scope="module")
def sample():
    data = load_sample()
    return torch.from_numpy(data.images[:24]), data.indices[:24]


def test_listing_follows_the_release():
    assert list_corruptions() == RELEASE_ORDER
    assert list_corruptions(include_extra=True) == ALL
    assert {n for n in ALL if not CORRUPTIONS.meta(n)["benchmark"]} == set(EXTRAS)
    assert {n for n in ALL if CORRUPTIONS.meta(n)["approximate"]} == {"frost"}
    assert set(ALL) - set(RANDOM) == {"defocus_blur", "zoom_blur", "brightness", "contrast",
                                      "pixelate", "jpeg_compression", "gaussian_blur", "saturate"}
    assert CORRUPTIONS.resolve("jpeg") == "jpeg_compression"


@pytest.mark.parametrize("name", ALL)
def test_every_corruption_and_severity_is_uint8_in_shape_and_changes_images(name, sample):
    x, idx = sample
    previous = None
    for s in range(1, 6):
        y = corrupt(x, name, s, seed=0, indices=idx)
        assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
        assert not torch.equal(y, x), f"{name} s{s} left the images unchanged"
        assert previous is None or not torch.equal(y, previous), f"{name}: s{s} equals s{s - 1}"
        previous = y


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_are_seeded_per_example(name, sample):
    x, idx = sample
    a = corrupt(x, name, 3, seed=7, indices=idx)
    assert torch.equal(a, corrupt(x, name, 3, seed=7, indices=idx)), "rerun differs"
    assert not torch.equal(a, corrupt(x, name, 3, seed=8, indices=idx)), "seed ignored"
    # A shard of any size reproduces the same images: draws depend on the index, not the batch.
    parts = [corrupt(x[i:j], name, 3, seed=7, indices=idx[i:j]) for i, j in ((0, 5), (5, 6), (6, 24))]
    assert torch.equal(torch.cat(parts), a)
    # ... and the index, not the position, decides.
    swapped = corrupt(x.flip(0), name, 3, seed=7, indices=idx[::-1].copy())
    assert torch.equal(swapped.flip(0), a)


def test_deterministic_corruptions_ignore_the_seed(sample):
    x, idx = sample
    for name in set(ALL) - set(RANDOM):
        assert torch.equal(corrupt(x, name, 4, seed=0), corrupt(x, name, 4, seed=123, indices=idx))


def test_numpy_input_and_default_indices(sample):
    x, _ = sample
    out = corrupt(x.numpy(), "fog", 2)
    assert torch.equal(out, corrupt(x, "fog", 2, indices=range(len(x))))


@pytest.mark.parametrize("call, message", [
    (lambda x: corrupt(x, "fgo", 1), r"unknown corruption 'fgo'; did you mean 'fog'"),
    (lambda x: corrupt(x, "fog", 0), r"severity must be an integer from 1 to 5, got 0"),
    (lambda x: corrupt(x, "fog", 6), r"severity must be an integer from 1 to 5, got 6"),
    (lambda x: corrupt(x, "fog", "3"), r"severity must be an integer"),
    (lambda x: corrupt(x, "fog", True), r"severity must be an integer"),
    (lambda x: corrupt(x.float() / 255, "fog", 1), r"needs uint8 images .* got dtype torch.float32"),
    (lambda x: corrupt(x[0], "fog", 1), r"shape \(N, 3, 32, 32\), got \(3, 32, 32\)"),
    (lambda x: corrupt(x.permute(0, 2, 3, 1), "fog", 1), r"got \(24, 32, 32, 3\)"),
    (lambda x: corrupt(x, "fog", 1, indices=[0, 1]), r"2 indices for 24 images"),
    (lambda x: corrupt([1, 2], "fog", 1), r"needs a uint8 tensor or array, got list"),
])
def test_bad_input_is_a_clear_harness_error(sample, call, message):
    with pytest.raises(HarnessError, match=message):
        call(sample[0])


def test_frost_texture_has_the_measured_photograph_statistics():
    rng = ExampleRNG(0, "frost", 1, range(4000))
    tex = frost_texture(rng, 32, 32)  # (N, 3, 32, 32) in 0..255
    style = ExampleRNG(0, "frost", 1, range(4000)).integers(0, len(FROST_STYLES))
    for s, (mean_rgb, between, _gain, spectrum) in enumerate(FROST_STYLES):
        t = tex[style == s]
        assert len(t) > 400
        np.testing.assert_allclose(t.mean((0, 2, 3)).numpy(), mean_rgb, atol=2.5)
        crop_means = t.mean((1, 2, 3))
        assert abs(float(crop_means.std()) - between) < 0.15 * between + 1
        grey = t.mean(1)
        power = (torch.fft.fft2(grey - grey.mean((1, 2), keepdim=True)).abs() ** 2 / 1024).mean(0)
        # the lowest radius (1) carries most of the variance: its power matches the photograph's
        low = float(power[0, 1] + power[1, 0] + power[0, -1] + power[-1, 0]) / 4
        assert abs(low - spectrum[0]) < 0.2 * spectrum[0] + 200
