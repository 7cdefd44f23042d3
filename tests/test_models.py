"""Conformance tests parametrised over every registered model (one test id per entry)."""

import json

import pytest
import torch

import models
from conftest import IN_CI
from harness.errors import HarnessError
from models.architectures import ModelMeta, Normalize
from models.checkpoints import read_meta, save_checkpoint, sha256_file
from models.zoo import MODELS, load_model, weights_path

ALL = models.list_models()
BUNDLED = models.list_models(pretrained=True)


def _params(names, slow):
    """Parameters; the entries in ``slow`` (> 25 s each on 2 cores) run with the slow tests."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]



def _input(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registry_names_are_well_formed():
    assert {"resnet8", "resnet20", "resnet18", "vgg16", "resnet8-gelu", "resnet8-silu"} <= set(ALL)
    assert ALL == sorted(ALL)
    assert models.list_models("resnet8*") == [
        "resnet8", "resnet8-deepspline", "resnet8-deepspline-1lip", "resnet8-gelu",
        "resnet8-silu", "resnet8-sugar-bsilu", "resnet8-sugar-nelu"]
    assert "vgg16-deepspline" in ALL and "vgg16-deepspline-1lip" not in ALL
    assert "resnet8" in models.list_models(default=True)


@pytest.mark.parametrize("name", _params(ALL, {"resnet18-deepspline-1lip"}))
def test_forward_contract(name):
    torch.manual_seed(0)
    model = models.create_model(name)
    assert not model.training
    assert isinstance(model.meta, ModelMeta) and model.meta.name == name
    if model.meta.front_end:   # LCA front ends standardise each image themselves
        lca = getattr(model.front_end, "lca", model.front_end)
        assert model.meta.front_end["iterative"] and lca.standardize_input
        assert model.meta.front_end["iterations"] > 0
    else:
        assert isinstance(model.normalize, Normalize)  # normalisation inside: inputs in [0, 1]
        assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(model.meta.mean))
    x = _input()
    out = model(x)
    assert out.shape == (2, model.meta.num_classes) and torch.isfinite(out).all()
    torch.manual_seed(0)
    again = models.create_model(name)  # same seed, same weights, same outputs
    assert torch.equal(out, again(x))
    assert not torch.equal(out, models.create_model(name)(x))  # the seed matters


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_input_and_every_parameter(name):
    torch.manual_seed(0)
    model = models.create_model(name).train()
    x = _input(4).requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # PGD needs this
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", _params(ALL, {"resnet18-deepspline-1lip"}))
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(1)
    model = models.create_model(name)
    meta = save_checkpoint(model, tmp_path / "ck", factory=name, extra={"note": "test"})
    assert meta["sha256"] == sha256_file(tmp_path / "ck.safetensors")
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())
    loaded = load_model(tmp_path / "ck.json")
    x = _input()
    assert torch.equal(model(x), loaded(x))
    assert loaded.checkpoint["note"] == "test"


def test_channels_last_does_not_change_outputs():
    model = models.create_model("resnet8")
    x = _input(8)
    ref = model(x)
    cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, cl, atol=1e-5)


def test_checkpoint_with_dotted_stem(tmp_path):
    model = models.create_model("resnet8")
    save_checkpoint(model, tmp_path / "r8.v2", factory="resnet8")
    assert (tmp_path / "r8.v2.json").is_file() and (tmp_path / "r8.v2.safetensors").is_file()
    assert torch.equal(load_model(tmp_path / "r8.v2.json")(_input()), model(_input()))


def test_create_model_errors():
    with pytest.raises(HarnessError, match="did you mean 'resnet20'"):
        models.create_model("resnet2")
    with pytest.raises(HarnessError, match="no bundled weights"):
        models.create_model("resnet20", pretrained=True)


def test_corrupt_checkpoint_is_refused(tmp_path):
    model = models.create_model("resnet8")
    save_checkpoint(model, tmp_path / "ck", factory="resnet8")
    blob = bytearray((tmp_path / "ck.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (tmp_path / "ck.safetensors").write_bytes(bytes(blob))
    with pytest.raises(HarnessError, match="do not match the sha256"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(HarnessError, match="is corrupt"):
        load_model(tmp_path / "ck")


def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    save_checkpoint(models.create_model("resnet8"), tmp_path / "ck", factory="resnet8")
    meta = json.loads((tmp_path / "ck.json").read_text())
    meta["factory"] = "resnet20"
    (tmp_path / "ck.json").write_text(json.dumps(meta))
    with pytest.raises(HarnessError, match="do not fit the model"):
        load_model(tmp_path / "ck")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_spec(name):
    stem = weights_path(name)
    meta = read_meta(stem)
    assert meta["factory"] == name
    assert meta["sha256"] == sha256_file(stem.with_suffix(".safetensors"))
    assert stem.with_suffix(".safetensors").stat().st_size < 2 * 1024 * 1024
    assert stem.with_suffix(".md").is_file()
    model = models.create_model(name, pretrained=True)
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())
    for key in ("recipe", "train_time_s", "test", "data", "hardware", "history"):
        assert key in meta
    assert meta["test"]["n"] == 10000
    assert meta["train_time_s"] <= 15 * 60
    assert stem.name == name   # each bundled checkpoint is named after its registry entry
    # same recipe, seed and budget as the ReLU baseline, so differences are the front end's
    base = read_meta(weights_path("resnet8"))
    if meta["model"]["arch"] == "resnet8":
        expected = MODELS.meta(name).get("recipe") or {}   # the front end's own settings
        shared = [k for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                              "label_smoothing", "warmup", "ema_decay", "crop_pad", "seed", "bf16")
                  if k not in expected]
        assert {k: meta["recipe"][k] for k in shared} == {k: base["recipe"][k] for k in shared}
        assert {"epochs", "lr", "seed", "batch_size"} <= set(shared)
        assert meta["data"] == base["data"]
        assert all(meta["recipe"][k] == v for k, v in expected.items())


def _floor(name: str, relu_accuracy: float) -> float:
    """Issue #5's floors: the 1-Lipschitz model >= 60 %, the others within 5 points of the
    bundled ReLU baseline's measured accuracy (itself >= 75 %, issue #3's floor); issue #6:
    LCA front ends >= 60 %."""
    if name.endswith("-1lip") or MODELS.meta(name).get("front_end"):
        return 0.60
    if name == "resnet8":
        return 0.75
    return relu_accuracy - 0.05


_FULL_SPLIT: dict[str, float] = {}


def _full_split_accuracy(name: str, cifar_dir) -> float:
    """Top-1 accuracy of a bundled model on the full 10,000-image test split, measured here
    with the harness's prediction loop (not read from the training script's output)."""
    if name not in _FULL_SPLIT:
        from harness.data import load_cifar10_arrays
        from harness.predict import predict

        test = load_cifar10_arrays("test", data_dir=cifar_dir)
        labels = torch.from_numpy(test.labels)
        model = models.create_model(name, pretrained=True).to(memory_format=torch.channels_last)
        pred, _ = predict(model, torch.from_numpy(test.images), labels, device="cpu",
                          dtype=torch.float32, batch_size=500)
        _FULL_SPLIT[name] = (pred == labels).double().mean().item()
    return _FULL_SPLIT[name]


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_meets_its_floor_on_the_full_test_split(name, cifar_dir):
    """Every bundled model on all 10,000 test images: its floor, and its model card's figure
    within 0.1 pp when the test split is the one the card was measured on."""
    from harness.data import load_cifar10_arrays

    acc = _full_split_accuracy(name, cifar_dir)
    relu = _full_split_accuracy("resnet8", cifar_dir)
    assert acc >= _floor(name, relu), f"{name}: {100 * acc:.2f} % on the full test split"
    meta = read_meta(weights_path(name))
    same_split = (load_cifar10_arrays("test", data_dir=cifar_dir).fingerprint
                  == meta["data"]["test_fingerprint"])
    if same_split or IN_CI:   # CI builds the copy the bundled models were measured on
        assert same_split
        assert abs(acc - meta["test"]["accuracy"]) <= 0.001
        card = weights_path(name).with_suffix(".md").read_text()
        assert f"**{100 * meta['test']['accuracy']:.2f} %**" in card


@pytest.mark.parametrize("name", _params(BUNDLED, {"lca-resnet8"}))
def test_bundled_weights_are_accurate_on_the_sample(name):
    """Real behaviour: the shipped weights classify the bundled sample well above chance."""
    from harness.data import load_sample
    from models.training import evaluate_accuracy

    ds = load_sample()
    model = models.create_model(name, pretrained=True)
    acc = evaluate_accuracy(model, torch.from_numpy(ds.images), torch.from_numpy(ds.labels))
    relu = read_meta(weights_path("resnet8"))["test"]["accuracy"]
    assert acc >= _floor(name, relu) - 0.05   # 1,000 images: a few points of sampling noise
    assert acc == pytest.approx(read_meta(weights_path(name))["test"]["accuracy"], abs=0.05)


def test_the_main_job_compares_six_bundled_resnet8_front_ends():
    assert models.list_models("resnet8*", default=True, pretrained=True) == [
        "resnet8", "resnet8-deepspline", "resnet8-deepspline-1lip", "resnet8-gelu",
        "resnet8-sugar-bsilu", "resnet8-sugar-nelu"]


def test_lca_front_ends_are_bundled_and_only_warp_is_in_the_main_job():
    """Cold LCA (100 iterations per image) is too slow for the main job's budget."""
    assert {"lca-resnet8", "warp-lca-resnet8"} <= set(BUNDLED)
    defaults = models.list_models(default=True, pretrained=True)
    assert "warp-lca-resnet8" in defaults and "lca-resnet8" not in defaults
    for name, kind in (("lca-resnet8", "lca"), ("warp-lca-resnet8", "warp-lca")):
        fe = models.create_model(name).meta.front_end
        assert fe["kind"] == kind and fe["iterative"] and fe["dictionary"] == "lca-dictionary"
        assert fe["whitening"] == "zca"
        assert read_meta(weights_path(name))["model"]["front_end"] == fe   # stated in .meta
    lca_meta = models.create_model("lca-resnet8").meta.front_end
    warp_meta = models.create_model("warp-lca-resnet8").meta.front_end
    assert warp_meta["iterations"] <= 20 < lca_meta["iterations"]


def test_lca_models_share_dictionary_and_backbone_recipe():
    a = models.create_model("lca-resnet8", pretrained=True)
    b = models.create_model("warp-lca-resnet8", pretrained=True)
    assert torch.equal(a.front_end.dictionary, b.front_end.lca.dictionary)
    assert torch.equal(a.front_end.whitening, b.front_end.lca.whitening)
    recipes = [read_meta(weights_path(n))["recipe"] for n in ("lca-resnet8", "warp-lca-resnet8")]
    assert recipes[0] == recipes[1]


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_activation_registry_entries(act):
    from models.activations import ACTIVATIONS, make_activation

    assert act in ACTIVATIONS.names()
    m = make_activation(act, num_channels=4)
    x = torch.linspace(-6, 6, 121)
    y = m(x)
    assert y.shape == x.shape and torch.all(y[x > 2] > 1.5) and torch.all(y[x < -4].abs() < 0.1)
    assert make_activation(act, num_channels=4) is not m  # a fresh module per use site


def test_unknown_activation_suggests():
    from models.activations import make_activation

    with pytest.raises(HarnessError, match="unknown activation 'gleu'; did you mean 'gelu'"):
        make_activation("gleu", num_channels=1)
