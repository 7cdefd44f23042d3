"""The Python API: harness.evaluate on arbitrary modules."""

import numpy as np
import pytest
import torch
from torch import nn

import harness
from harness.data import load_sample
from harness.errors import HarnessError
from harness.store import Store


class ConstantClassifier(nn.Module):
    """Predicts class ``k`` for every input: accuracy is exactly 10 % on balanced data."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("bias", torch.nn.functional.one_hot(torch.tensor(k), 10).float())

    def forward(self, x):
        return self.bias.expand(x.shape[0], 10) + 0 * x.mean((1, 2, 3), keepdim=False)[:, None]


class ChannelMeanOracle(nn.Module):
    """A tiny real classifier: nearest class-mean of per-channel pixel averages."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        feats = torch.from_numpy(images).float().div(255).mean((2, 3))
        self.register_buffer("means", torch.stack([feats[labels == c].mean(0) for c in range(10)]))

    def forward(self, x):
        return -torch.cdist(x.mean((2, 3)), self.means)


def test_evaluate_returns_per_example_frame():
    df = harness.evaluate(ConstantClassifier(3), suite="clean")
    assert len(df) == 1000 and df["correct"].mean() == pytest.approx(0.1)
    assert (df["pred"] == 3).all()
    sample = load_sample()
    assert df["label"].tolist() == sample.labels.tolist()
    assert df["example"].tolist() == list(range(1000))
    assert set(df["condition"]) == {"clean"} and set(df["model"]) == {"ConstantClassifier"}


def test_evaluate_real_classifier_beats_chance_and_persists(tmp_path):
    s = load_sample()
    model = ChannelMeanOracle(s.images, s.labels)
    path = tmp_path / "r.sqlite"
    df = harness.evaluate(model, suite="clean", n=400, store=path, name="chan-mean")
    acc = df["correct"].mean()
    assert 0.15 < acc < 0.6  # colour alone carries some signal, far from perfect
    with Store(path, readonly=True) as st:
        stored = st.to_frame()
    assert stored["correct"].tolist() == df["correct"].tolist()
    assert set(stored["model"]) == {"chan-mean"}


def test_evaluate_bad_input():
    with pytest.raises(HarnessError, match="needs a torch.nn.Module"):
        harness.evaluate(lambda x: x, suite="clean")
    with pytest.raises(HarnessError, match="unknown suite 'clen'; did you mean 'clean'"):
        harness.evaluate(ConstantClassifier(0), suite="clen")
    with pytest.raises(HarnessError, match="outside 1..1000"):
        harness.evaluate(ConstantClassifier(0), suite="clean", n=0)


def test_evaluate_cifar10c_with_options():
    from models import create_model

    df = harness.evaluate(create_model("resnet8", pretrained=True), suite="cifar10c", n=40,
                          corruptions="contrast", severities="1,5")
    assert sorted(set(zip(df["corruption"], df["severity"]))) == [
        ("contrast", 1), ("contrast", 5), ("none", 0)]
    assert (df.groupby("severity").size() == 40).all()
    acc = df.groupby("severity")["correct"].mean()
    assert acc[0] > acc[5]  # severity 5 contrast hurts
    with pytest.raises(HarnessError, match="does not apply to suite 'clean'"):
        harness.evaluate(create_model("resnet8"), suite="clean", corruptions="fog")
