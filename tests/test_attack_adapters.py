"""Adapters (attacks.adapters) against the libraries they wrap, on the bundled ResNet-8 and
real images: the standard AutoAttack's robust set equals one plain ``run_standard_evaluation``
call (the oracle), attribution names its sub-attacks, torchattacks attacks stay in the ball and
their outcomes equal an independent re-prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import make_attack
from conftest import require
from harness.data import load_sample
from harness.errors import HarnessError
from models.zoo import create_model


@pytest.fixture(scope="module")
def batch():
    s = load_sample()
    return torch.from_numpy(s.images[:32]).float() / 255, torch.from_numpy(s.labels[:32])


@pytest.fixture(scope="module")
def model():
    return create_model("resnet8", pretrained=True)


def _in_ball(res, x, norm, eps):
    d = (res.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


@pytest.mark.parametrize("spec,kwargs", [("torchattacks:FGSM", {}),
                                         ("torchattacks:PGD", {"alpha": 0.5 / 255, "steps": 5})])
def test_torchattacks_linf(spec, kwargs, batch, model):
    require("torchattacks")
    x, y = batch
    attack = make_attack(spec, norm="Linf", eps=2 / 255, **kwargs)
    res = attack(model, x, y, seed=3)
    _in_ball(res, x, "Linf", 2 / 255)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
        clean = model(x).argmax(1)
    assert torch.equal(res.fooled, (pred != y) | (clean != y))
    assert res.robust_accuracy <= float((clean == y).float().mean())
    again = attack(model, x, y, seed=3)
    assert torch.equal(again.x_adv, res.x_adv)
    assert set(res.found_by) <= {"", "clean", spec}


def test_eps_less_attack_counts_only_inside_the_ball(batch, model):
    require("torchattacks")
    x, y = batch
    res = make_attack("torchattacks:CW", norm="L2", eps=0.1, c=10.0, steps=20)(model, x, y)
    _in_ball(res, x, "L2", 0.1)
    loose = make_attack("torchattacks:CW", norm="L2", eps=10.0, c=10.0, steps=20)(model, x, y)
    # CW's perturbations are unbounded: a small ball admits fewer of them than a huge one.
    assert res.fooled.sum() < loose.fooled.sum()


def test_names_and_arguments_are_checked():
    with pytest.raises(HarnessError, match="torchattacks:PGD"):
        make_attack("torchattacks:PDG")
    with pytest.raises(HarnessError, match="'autoattack'"):
        make_attack("autoatack")
    with pytest.raises(HarnessError, match="foo"):
        make_attack("torchattacks:PGD", foo=1)
    assert "not the standard" in make_attack("torchattacks:AutoAttack").name
    with pytest.raises(HarnessError):
        make_attack("pgd", eps=-0.1)
    with pytest.raises(HarnessError):
        make_attack("pgd", norm="L3")


def test_autoattack_apgd_ce_matches_pyautoattack(batch, model):
    pyaa = require("pyautoattack")
    x, y = batch
    res = make_attack("autoattack", eps=2 / 255, version="custom", attacks=["apgd-ce"])(
        model, x, y, seed=0)
    aa = pyaa.AutoAttack(model, norm="Linf", eps=2 / 255, version="custom",
                         attacks=["apgd-ce"], seed=0, device="cpu")
    aa.verbose = False
    adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        oracle = model(adv).argmax(1) != y
    assert torch.equal(res.fooled, oracle)
    _in_ball(res, x, "Linf", 2 / 255)
    assert set(res.found_by) <= {"", "clean", "autoattack:apgd-ce"}


@pytest.mark.slow
def test_standard_autoattack_matches_one_standard_evaluation(batch, model):
    pyaa = require("pyautoattack")
    x, y = batch
    res = make_attack("autoattack", eps=2 / 255)(model, x, y, seed=0)
    aa = pyaa.AutoAttack(model, norm="Linf", eps=2 / 255, version="standard", seed=0,
                         device="cpu")
    aa.verbose = False
    adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    with torch.no_grad():
        oracle = model(adv).argmax(1) != y
    assert torch.equal(res.fooled, oracle)
    subs = {f for f in res.found_by if f.startswith("autoattack:")}
    assert subs and subs <= {f"autoattack:{a}" for a in ("apgd-ce", "apgd-t", "fab-t", "square")}


def test_square_is_black_box_and_in_ball(batch, model):
    require("pyautoattack")
    x, y = batch
    attack = make_attack("square", eps=8 / 255, n_queries=50)
    assert attack.uses_gradient is False
    res = attack(model, x, y, seed=0)
    _in_ball(res, x, "Linf", 8 / 255)
    assert set(np.unique(res.found_by)) <= {"", "clean", "square"}
