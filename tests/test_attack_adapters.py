"""Adapters (attacks.adapters) against the libraries they wrap, on the bundled ResNet-8 and
real images: the standard AutoAttack's robust set equals one plain ``run_standard_evaluation``
call (the oracle), attribution names its sub-attacks, torchattacks attacks stay in the ball and
their outcomes equal an independent re-prediction, an eps-less attack (CW) counts only what the
ball admits (checked against CW run directly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import make_attack
from conftest import require
from harness.data import load_sample
from harness.errors import HarnessError
from models.zoo import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch():
    s = load_sample()   # images: uint8 (N, 3, 32, 32)
    return torch.from_numpy(s.images[:32]).float() / 255, torch.from_numpy(s.labels[:32])


@pytest.fixture(scope="module")
def model():
    return create_model("resnet8", pretrained=True).eval()


def _sizes(res, x, norm):
    d = (res.x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


def _in_ball(res, x, norm, eps):
    assert (_sizes(res, x, norm) <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def _predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("spec,kwargs,steps", [
    ("torchattacks:FGSM", {}, 1),
    ("torchattacks:PGD", {"alpha": 0.5 / 255, "steps": 5}, 5),
])
def test_torchattacks_linf(spec, kwargs, steps, batch, model):
    require("torchattacks")
    x, y = batch
    attack = make_attack(spec, norm="Linf", eps=2 / 255, **kwargs)
    assert attack.name == spec
    res = attack(model, x, y, seed=3)
    _in_ball(res, x, "Linf", 2 / 255)
    pred, clean = _predict(model, res.x_adv), _predict(model, x)
    assert torch.equal(res.fooled, pred != y)
    assert torch.equal(res.pred, pred)
    assert res.robust_accuracy <= float((clean == y).float().mean())
    assert res.fooled.sum() > (clean != y).sum()   # the attack found something
    wrong = (clean != y).numpy()
    assert (res.found_by[wrong] == "clean").all() and (res.iteration[wrong] == 0).all()
    found = res.fooled.numpy() & ~wrong
    assert (res.found_by[found] == spec).all() and (res.iteration[found] == steps).all()
    assert (res.iteration[~res.fooled] == -1).all() and (res.found_by[~res.fooled] == "").all()
    again = attack(model, x, y, seed=3)
    assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.fooled, res.fooled)


def test_seed_reaches_random_starts_and_own_seed_arguments(batch, model):
    require("torchattacks")
    x, y = batch[0][:16], batch[1][:16]
    state = torch.get_rng_state()
    pgd = make_attack("torchattacks:PGD", eps=2 / 255, alpha=0.5 / 255, steps=2)
    assert not torch.equal(pgd(model, x, y, seed=0).x_adv, pgd(model, x, y, seed=1).x_adv)
    # Square takes its own seed (default 0) and norm: the run's are passed to it.
    square = make_attack("torchattacks:Square", norm="L2", eps=0.5, n_queries=20)
    a, b = square(model, x, y, seed=0), square(model, x, y, seed=0)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(a.x_adv, square(model, x, y, seed=1).x_adv)
    _in_ball(a, x, "L2", 0.5)
    moved = (a.x_adv - x).flatten(1).norm(dim=1)
    assert (moved > 0.4).any()   # an L2 Square (a Linf one of this eps would leave the ball)
    assert torch.equal(torch.get_rng_state(), state)   # the caller's generator is untouched


def test_eps_less_attack_counts_only_inside_the_ball(batch, model):
    ta = require("torchattacks")
    x, y = batch[0][:16], batch[1][:16]
    eps = 0.1
    res = make_attack("torchattacks:CW", norm="L2", eps=eps, c=10.0, steps=20)(model, x, y)
    _in_ball(res, x, "L2", eps)
    assert (_sizes(res, x, "L2")[res.fooled] <= eps + 1e-6).all()
    assert torch.equal(res.fooled, _predict(model, res.x_adv) != y)
    # The oracle: CW itself, unbounded. It fools examples outside the ball, which must not count.
    raw = ta.CW(model, c=10.0, steps=20)(x, y)
    raw_size = (raw - x).flatten(1).norm(dim=1)
    raw_fooled = _predict(model, raw) != y
    clean_wrong = _predict(model, x) != y
    outside = raw_fooled & ~clean_wrong & (raw_size > eps * (1 + 1e-4))
    assert outside.any(), "the check needs an example CW fools only outside the ball"
    assert not res.fooled[outside].any()
    assert torch.equal(res.x_adv[outside], x[outside])   # kept clean
    inside = raw_fooled & (raw_size <= eps)
    assert res.fooled[inside].all()
    loose = make_attack("torchattacks:CW", norm="L2", eps=10.0, c=10.0, steps=20)(model, x, y)
    assert torch.equal(loose.fooled, raw_fooled | clean_wrong)


def test_names_and_arguments_are_checked():
    require("torchattacks")
    with pytest.raises(HarnessError, match="torchattacks:PGD"):
        make_attack("torchattacks:PDG")
    with pytest.raises(HarnessError, match="'autoattack'"):
        make_attack("autoatack")
    with pytest.raises(HarnessError, match="foo"):
        make_attack("torchattacks:PGD", foo=1)
    with pytest.raises(HarnessError, match="Linf attack"):
        make_attack("torchattacks:PGD", norm="L2", eps=0.5)
    with pytest.raises(HarnessError, match="L2 attack"):
        make_attack("torchattacks:PGDL2", norm="Linf", eps=8 / 255)
    with pytest.raises(HarnessError, match="seed"):
        make_attack("torchattacks:Square", seed=3)
    assert "not the standard" in make_attack("torchattacks:AutoAttack").name
    with pytest.raises(HarnessError, match="version"):
        make_attack("autoattack", version="fast")
    with pytest.raises(HarnessError, match="custom"):
        make_attack("autoattack", attacks=["apgd-ce"])
    with pytest.raises(HarnessError):
        make_attack("square", n_queries=0)
    with pytest.raises(HarnessError):
        make_attack("autoattack", eps=-0.1)
    with pytest.raises(HarnessError):
        make_attack("autoattack", norm="L3")


def _oracle(pyaa, model, x, y, eps, **kwargs):
    aa = pyaa.AutoAttack(model, norm="Linf", eps=eps, seed=0, device="cpu", **kwargs)
    aa.verbose = False
    adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    return adv, _predict(model, adv) != y


def test_autoattack_apgd_ce_matches_pyautoattack(batch, model):
    pyaa = require("pyautoattack")
    x, y = batch[0][:16], batch[1][:16]
    state = torch.get_rng_state()
    res = make_attack("autoattack", eps=1 / 255, version="custom", attacks=["apgd-ce"])(
        model, x, y, seed=0)
    assert torch.equal(torch.get_rng_state(), state)   # pyautoattack's reseeding is undone
    adv, oracle = _oracle(pyaa, model, x, y, 1 / 255, version="custom", attacks=["apgd-ce"])
    assert torch.equal(res.fooled, oracle)
    assert torch.equal(res.x_adv[res.fooled], adv[res.fooled])
    _in_ball(res, x, "Linf", 1 / 255)
    assert set(res.found_by) == {"", "clean", "autoattack:apgd-ce"}
    assert (res.iteration[res.found_by == "autoattack:apgd-ce"] == 1).all()


@pytest.mark.slow
def test_standard_autoattack_matches_one_standard_evaluation(batch, model):
    pyaa = require("pyautoattack")
    x, y = batch[0][:16], batch[1][:16]
    eps = 0.5 / 255   # small enough that APGD-CE leaves work for the later sub-attacks
    res = make_attack("autoattack", eps=eps)(model, x, y, seed=0)
    _, oracle = _oracle(pyaa, model, x, y, eps, version="standard")
    assert torch.equal(res.fooled, oracle)
    _in_ball(res, x, "Linf", eps)
    assert torch.equal(res.fooled, _predict(model, res.x_adv) != y)
    subs = set(res.found_by) - {"", "clean"}
    assert subs <= {f"autoattack:{a}" for a in ("apgd-ce", "apgd-t", "fab-t", "square")}
    assert len(subs) >= 2, f"attribution to a later sub-attack is not exercised: {subs}"


def test_square_is_black_box_and_in_ball(batch, model):
    require("pyautoattack")
    x, y = batch
    attack = make_attack("square", eps=8 / 255, n_queries=50)
    assert attack.uses_gradient is False
    res = attack(model, x, y, seed=0)
    _in_ball(res, x, "Linf", 8 / 255)
    assert torch.equal(res.fooled, _predict(model, res.x_adv) != y)
    assert "square" in set(res.found_by)
    assert set(np.unique(res.found_by)) <= {"", "clean", "square"}
