"""metrics.sparsity: exact zero counts at activation and code sites, checked against numpy
computations on hand-built networks with known zero patterns, and against a hook-free
computation on the bundled ResNet-8."""

from fractions import Fraction
from math import ceil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from metrics.sparsity import (
    FREQUENCY_BINS,
    SparsityAccumulator,
    activation_sparsity,
    find_sites,
    frequency_bins,
    histogram_labels,
    merge_counts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n=6, seed=0):
    """uint8 images; image 0 is black, image 1 has no red pixel above 0.5 (so channel 2 of
    :func:`_pattern_net` is zero there) and a zero green pixel."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    x[0] = 0
    x[1, 0] = np.minimum(x[1, 0], 127)
    x[1, 1, 5, 7] = 0
    return x


def _pattern_net():
    """conv1x1 (4 channels) -> ReLU -> avg pool -> Linear(4, 3) -> ReLU -> Linear(3, 2) ->
    Sigmoid, with weights that fix each unit's zero pattern:

    * ReLU "1": channel 0 = relu(-1) (dead), 1 = relu(1) (always active),
      2 = relu(red - 0.5), 3 = relu(green);
    * ReLU "4": feature 0 dead (bias -1), 1 = relu(mean of channel 2), 2 = relu(1);
    * Sigmoid "6": never exactly zero."""
    conv = nn.Conv2d(3, 4, 1)
    lin1, lin2 = nn.Linear(4, 3), nn.Linear(3, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[2, 0] = 1.0
        conv.weight[3, 1] = 1.0
        conv.bias.copy_(torch.tensor([-1.0, 1.0, -0.5, 0.0]))
        lin1.weight.zero_()
        lin1.weight[1, 2] = 1.0
        lin1.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        lin2.weight.fill_(0.1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin1,
                         nn.ReLU(), lin2, nn.Sigmoid()).eval()


def _expected_pattern(x_u8):
    """Per layer, the (N, units, positions) boolean 'active' arrays of :func:`_pattern_net`,
    computed by numpy from the images alone."""
    x = x_u8.astype(np.float64) / 255
    n = len(x)
    conv = np.stack([np.zeros((n, 32, 32), bool), np.ones((n, 32, 32), bool),
                     x[:, 0] > 0.5, x[:, 1] > 0]).transpose(1, 0, 2, 3).reshape(n, 4, -1)
    lin = np.stack([np.zeros(n, bool), (x[:, 0] > 0.5).any(axis=(1, 2)),
                    np.ones(n, bool)], axis=1)[:, :, None]
    sig = np.ones((n, 2, 1), bool)
    return {"1": conv, "5": lin, "7": sig}


def test_known_zero_pattern_is_reported_exactly():
    x = _images()
    res = activation_sparsity(_pattern_net(), x, batch_size=4)
    expected = _expected_pattern(x)
    assert list(res.layers["layer"]) == ["1", "5", "7"]
    assert list(res.layers["module"]) == ["ReLU", "ReLU", "Sigmoid"]
    assert list(res.layers["shape"]) == ["4x32x32", "3", "2"]
    assert (res.layers["role"] == "activation").all()
    for name, active in expected.items():
        row = res.layers.set_index("layer").loc[name]
        n, units, positions = active.shape
        assert (row["units"], row["positions"], row["examples"]) == (units, positions, n)
        assert row["zeros"] == (~active).sum()
        assert row["zero_fraction"] == pytest.approx((~active).mean(), abs=0)
        per_unit = active.sum(axis=(0, 2))
        assert row["dead_units"] == (per_unit == 0).sum()
        assert row["always_active_units"] == (per_unit == n * positions).sum()
        assert row["mean_frequency"] == pytest.approx(active.mean(), rel=1e-12)
        units_frame = res.units[res.units["layer"] == name]
        np.testing.assert_array_equal(units_frame["nonzero"], per_unit)
        np.testing.assert_allclose(units_frame["frequency"], per_unit / (n * positions),
                                   rtol=1e-15)
        np.testing.assert_array_equal(units_frame["dead"], per_unit == 0)
        # histogram, from exact fractions
        bins = [0 if f == 0 else FREQUENCY_BINS + 1 if f == 1 else ceil(f * FREQUENCY_BINS)
                for f in (Fraction(int(k), n * positions) for k in per_unit)]
        hist = res.histogram[res.histogram["layer"] == name]
        assert len(hist) == FREQUENCY_BINS + 2 and hist["units"].sum() == units
        np.testing.assert_array_equal(hist["units"],
                                      np.bincount(bins, minlength=FREQUENCY_BINS + 2))
    # the first ReLU: channel 0 dead, 1 always on, 2 dead on images 0-1 only
    relu = res.units[res.units["layer"] == "1"]
    assert list(relu["dead"]) == [True, False, False, False]
    assert relu["frequency"].iloc[1] == 1.0 and 0 < relu["frequency"].iloc[2] < 1
    assert res.layers.set_index("layer").loc["5", "dead_units"] == 1
    # per example: over all activation sites
    actives = [a.reshape(len(x), -1) for a in expected.values()]
    zeros = sum((~a).sum(1) for a in actives)
    elements = sum(a.shape[1] for a in actives)
    np.testing.assert_array_equal(res.examples["example"], np.arange(len(x)))
    np.testing.assert_array_equal(res.examples["zeros"], zeros)
    assert (res.examples["elements"] == elements).all()
    np.testing.assert_allclose(res.examples["zero_fraction"], zeros / elements, rtol=1e-15)
    assert res.examples["zero_fraction"].iloc[0] > res.examples["zero_fraction"].iloc[2]
    assert (res.examples["code_l0"] == 0).all() and res.examples["code_l0_fraction"].isna().all()
    per_layer = res.example_layers[res.example_layers["layer"] == "1"]
    np.testing.assert_array_equal(per_layer["nonzero"], expected["1"].sum(axis=(1, 2)))
    assert res.skipped == {}


def test_frequency_bins_at_the_edges():
    entries = 20
    nonzero = np.arange(entries + 1)   # frequencies 0, 0.05, ..., 1, edges included
    want = [0 if k == 0 else FREQUENCY_BINS + 1 if k == entries
            else ceil(Fraction(k, entries) * FREQUENCY_BINS) for k in nonzero]
    np.testing.assert_array_equal(frequency_bins(nonzero, entries), want)
    assert list(frequency_bins(np.array([2, 6, 19]), 20)) == [1, 3, 10]  # 0.1, 0.3: upper edges
    labels = histogram_labels()
    assert [lab for lab, _, _ in labels[:2]] == ["0", "(0, 0.1]"]
    assert [lab for lab, _, _ in labels[-2:]] == ["(0.9, 1)", "1"]


def test_hooks_are_removed_and_float_double_and_contiguous_inputs_agree():
    x = _images()
    net = _pattern_net()
    ref = activation_sparsity(net, x)
    assert all(not m._forward_hooks for m in net.modules())
    floats = torch.from_numpy(x).double().div(255)  # already in [0, 1], float64
    again = activation_sparsity(net.double(), floats, dtype=torch.float64, batch_size=5)
    pd.testing.assert_frame_equal(ref.layers, again.layers)
    pd.testing.assert_frame_equal(ref.units, again.units)
    pd.testing.assert_frame_equal(ref.examples, again.examples)


def test_streaming_batches_equals_one_batch():
    x = _images(7, seed=3)
    net = _pattern_net()
    whole = activation_sparsity(net, x, batch_size=7)
    for bs in (1, 3):
        part = activation_sparsity(net, x, batch_size=bs)
        for frame in ("layers", "units", "histogram", "examples", "example_layers"):
            pd.testing.assert_frame_equal(getattr(whole, frame), getattr(part, frame))


def test_merging_shards_equals_the_whole_and_dead_units_are_global():
    x = _images(6)
    net = _pattern_net()
    whole = activation_sparsity(net, x).counts
    first = SparsityAccumulator(net)
    first.observe(x[:1])                       # the black image alone: channels 2, 3 dead
    second = SparsityAccumulator(net, start=1)
    for i in range(1, 6, 2):
        second.observe(x[i:i + 2])
    a, b = first.counts(), second.counts()
    assert a.result().layers.set_index("layer").loc["1", "dead_units"] == 3
    merged = merge_counts(b, a).result()       # order of parts does not matter
    ref = whole.result()
    assert merged.layers.loc[0, "dead_units"] == 1
    for frame in ("layers", "units", "histogram", "examples", "example_layers"):
        pd.testing.assert_frame_equal(getattr(ref, frame), getattr(merged, frame))
    with pytest.raises(ValueError, match="more than one part"):
        merge_counts(a, a)
    with pytest.raises(ValueError, match="observed twice"):
        first.observe(x[:1], ids=[0])


class _Threshold(nn.Module):
    """A soft-threshold sparse coder: codes = relu(conv(x) - 0.3), with an inner ReLU module
    (which must not become a site of its own)."""

    sparsity_site = "codes"

    def __init__(self, features=5, tuple_output=False):
        super().__init__()
        self.conv = nn.Conv2d(3, features, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.tuple_output = tuple_output

    def forward(self, x):
        codes = self.relu(self.conv(x) - 0.3)
        return (codes, "states") if self.tuple_output else codes


class _Warm(nn.Module):
    """A WARP-like wrapper: an inner coder and a predictor with ReLUs; the outer is the site."""

    sparsity_site = "codes"

    def __init__(self):
        super().__init__()
        self.inner = _Threshold()
        self.predictor = nn.Sequential(nn.Conv2d(5, 5, 1), nn.ReLU())

    def forward(self, x):
        return self.inner(x) * (1 + self.predictor(self.inner(x)))


def _coded_net(front):
    return nn.Sequential(front, nn.Conv2d(5, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 6, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)).eval()


@pytest.mark.parametrize("tuple_output", [False, True])
def test_codes_site_reports_per_image_l0(tuple_output):
    torch.manual_seed(0)
    net = _coded_net(_Threshold(tuple_output=tuple_output))
    if tuple_output:   # the backbone takes the first element
        net[0] = nn.Sequential(net[0])
        net[0].forward = lambda x, m=net[0][0]: m(x)[0]
    x = _images(5, seed=1)
    res = activation_sparsity(net, x, batch_size=2)
    coder = net[0][0] if tuple_output else net[0]
    codes_name = "0.0" if tuple_output else "0"
    assert list(res.layers["layer"]) == [codes_name, "2", "4"]
    assert list(res.layers["role"]) == ["codes", "activation", "activation"]
    xf = torch.from_numpy(x).float().div(255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = coder(xf)
        codes = out[0] if tuple_output else out
        relu_out = net[4](net[3](net[2](net[1](codes))))
        gelu_out = net[2](net[1](codes))
    l0 = (codes != 0).sum(dim=(1, 2, 3)).numpy()
    assert l0[0] == 0 and 0 < l0[1:].min() and l0.max() < codes[0].numel()  # image 0 is black
    np.testing.assert_array_equal(res.examples["code_l0"], l0)
    assert (res.examples["code_elements"] == codes[0].numel()).all()
    np.testing.assert_allclose(res.examples["code_l0_fraction"], l0 / codes[0].numel())
    # the per-example zero fraction covers the activation sites only, not the codes
    act_zeros = ((relu_out == 0).sum(dim=(1, 2, 3)) + (gelu_out == 0).sum(dim=(1, 2, 3))).numpy()
    np.testing.assert_array_equal(res.examples["zeros"], act_zeros)
    assert (res.examples["elements"] == relu_out[0].numel() + gelu_out[0].numel()).all()
    assert res.skipped == {}


def test_nested_sites_belong_to_the_outermost():
    torch.manual_seed(0)
    net = _coded_net(_Warm())
    assert [(s.name, s.role) for s in find_sites(net)] == [
        ("0", "codes"), ("2", "activation"), ("4", "activation")]
    res = activation_sparsity(net, _images(3))
    assert list(res.layers["layer"]) == ["0", "2", "4"]
    with torch.no_grad():
        codes = net[0](torch.from_numpy(_images(3)).float().div(255))
    np.testing.assert_array_equal(res.examples["code_l0"],
                                  (codes != 0).sum(dim=(1, 2, 3)).numpy())
    # a module that is itself the site, e.g. a bare coder
    assert [s.name for s in find_sites(_Threshold())] == ["<model>"]


class _Shared(nn.Module):
    """One ReLU instance called twice (as torchvision's BasicBlock does), a site that opts
    out, an activation-declaring custom module, and one whose output holds no tensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.quiet = nn.ReLU()
        self.quiet.sparsity_site = None
        self.custom = _Custom()
        self.odd = _Odd()

    def forward(self, x):
        h = self.relu(self.conv(x))
        h = self.quiet(self.custom(h - 0.5))
        self.odd(h)
        return self.relu(h.mean(dim=(2, 3)) - 0.2)


class _Custom(nn.Module):
    sparsity_site = "activation"

    def forward(self, x):
        return torch.where(x > 0, x, torch.zeros_like(x))


class _Odd(nn.Module):
    sparsity_site = "activation"

    def forward(self, x):
        return "no tensor"


def test_repeated_calls_opt_out_custom_sites_and_skipped_outputs():
    torch.manual_seed(0)
    net = _Shared().eval()
    res = activation_sparsity(net, _images(4))
    assert list(res.layers["layer"]) == ["relu", "relu#1", "custom"]
    assert list(res.layers["shape"]) == ["4x32x32", "4", "4x32x32"]
    assert set(res.skipped) == {"odd"}
    xf = torch.from_numpy(_images(4)).float().div(255)
    with torch.no_grad():
        h = net.relu(net.conv(xf))
        c = net.custom(h - 0.5)
        last = net.relu(c.mean(dim=(2, 3)) - 0.2)
    frac = res.layers.set_index("layer")["zero_fraction"]
    assert frac["relu"] == pytest.approx((h == 0).double().mean().item(), abs=0)
    assert frac["custom"] == pytest.approx((c == 0).double().mean().item(), abs=0)
    assert frac["relu#1"] == pytest.approx((last == 0).double().mean().item(), abs=0)
    bad = nn.Sequential(nn.ReLU())
    bad[0].sparsity_site = "weights"
    with pytest.raises(ValueError, match="sparsity_site"):
        find_sites(bad)


def test_resnet8_on_bundled_images_matches_a_hook_free_computation():
    import models
    from harness.data import load_cifar10_arrays

    net = models.create_model("resnet8", pretrained=True)
    x_u8 = load_cifar10_arrays("test").images[:20]
    res = activation_sparsity(net, x_u8, batch_size=20)
    assert len(res.layers) == 7 and (res.layers["role"] == "activation").all()
    assert list(res.layers["layer"][:3]) == ["stem.2", "layers.0.act1", "layers.0.act2"]
    assert ((res.layers["zero_fraction"] > 0) & (res.layers["zero_fraction"] < 1)).all()
    assert ((res.examples["zero_fraction"] > 0) & (res.examples["zero_fraction"] < 1)).all()
    assert all(not m._forward_hooks for m in net.modules())
    # the first block's inner activation, recomputed module by module without hooks (same
    # channels_last input and batch, so the same kernels and bit-identical values)
    x = torch.from_numpy(x_u8).float().div(255).contiguous(memory_format=torch.channels_last)
    block = net.layers[0]
    with torch.no_grad():
        a = block.act1(block.bn1(block.conv1(net.stem(net.normalize(x)))))
    active = (a != 0).numpy()
    row = res.layers.set_index("layer").loc["layers.0.act1"]
    assert row["shape"] == "16x32x32"
    assert row["zeros"] == (~active).sum()
    per_unit = active.sum(axis=(0, 2, 3))
    assert row["dead_units"] == (per_unit == 0).sum()
    units = res.units[res.units["layer"] == "layers.0.act1"]
    np.testing.assert_array_equal(units["nonzero"], per_unit)
    layer_rows = res.example_layers[res.example_layers["layer"] == "layers.0.act1"]
    np.testing.assert_array_equal(layer_rows["nonzero"], active.sum(axis=(1, 2, 3)))


@pytest.mark.parametrize("name", ["lca-resnet8", "warp-lca-resnet8"])
def test_bundled_sparse_coding_front_ends_are_codes_sites(name):
    import models
    from harness.data import load_cifar10_arrays

    net = models.create_model(name, pretrained=True)
    x_u8 = load_cifar10_arrays("test").images[:8]
    res = activation_sparsity(net, x_u8, batch_size=8)
    sites = res.layers.set_index("layer")
    assert sites.loc["front_end", "role"] == "codes"
    assert list(sites.index[sites["role"] == "codes"]) == ["front_end"]   # nothing inside it
    assert len(sites) == 8
    x = torch.from_numpy(x_u8).float().div(255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        codes = net.front_end(x)
    l0 = (codes != 0).sum(dim=(1, 2, 3)).numpy()
    assert 0 < l0.min() and l0.max() < codes[0].numel()
    np.testing.assert_array_equal(res.examples["code_l0"], l0)
    assert (res.examples["code_elements"] == codes[0].numel()).all()
