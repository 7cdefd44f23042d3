"""The native PGD (attacks.pgd) on the bundled ResNet-8 and real images, against outside
oracles: a hand-written reference loop, torchattacks' PGD, and an independent re-prediction of
every adversarial example."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attacks import pgd
from conftest import require
from harness.data import load_sample
from harness.errors import HarnessError
from models.zoo import create_model

SAMPLE = load_sample()
MODEL = create_model("resnet8", pretrained=True)


def _batch(n, start=0):
    sl = slice(start, start + n)
    return (torch.from_numpy(SAMPLE.images[sl]).float() / 255,
            torch.from_numpy(SAMPLE.labels[sl]), SAMPLE.indices[sl])


def _size(res, x, norm):
    d = (res.x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


@settings(max_examples=10, deadline=None)
@given(norm=st.sampled_from(["Linf", "L2"]), frac=st.floats(0, 1), loss=st.sampled_from(
    ["ce", "dlr", "margin"]), steps=st.integers(1, 3), restarts=st.integers(1, 2),
    random_start=st.booleans(), targeted=st.booleans(), start=st.integers(0, 900))
def test_adversarial_examples_stay_in_the_ball_and_outcomes_are_true(
        norm, frac, loss, steps, restarts, random_start, targeted, start):
    eps = frac * (16 / 255 if norm == "Linf" else 2.0)
    x, y, ids = _batch(6, start)
    target = (y + 1) % 10 if targeted else None
    res = pgd(MODEL, x, y, eps=eps, norm=norm, loss=loss, steps=steps, restarts=restarts,
              random_start=random_start, targeted=targeted, target=target, example_ids=ids)
    assert (_size(res, x, norm) <= eps + (1e-6 if norm == "Linf" else 1e-5)).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        pred = MODEL(res.x_adv).argmax(1)
    assert torch.equal(res.pred, pred)
    assert torch.equal(res.fooled, (pred == target) if targeted else (pred != y))
    assert torch.equal(res.iteration == -1, ~res.fooled)
    assert ((res.iteration >= 0) & (res.iteration <= steps))[res.fooled].all()
    assert ((res.found_by == "") == (~res.fooled).numpy()).all()


def _reference_pgd(model, x, y, eps, alpha, steps):
    """Plain PGD from the clean image: sign step, projection, clamp; keeps the first iterate the
    model gets wrong (the harness's rule)."""
    xa, kept = x.clone(), x.clone()
    done = torch.zeros(len(x), dtype=torch.bool)
    for t in range(steps + 1):
        xa.requires_grad_(True)
        logits = model(xa)
        wrong = (logits.argmax(1) != y) & ~done
        kept[wrong] = xa.detach()[wrong]
        done |= wrong
        if t == steps:
            break
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    kept[~done] = xa.detach()[~done]
    return kept, done


def test_equals_a_hand_written_reference_loop():
    x, y, ids = _batch(64)
    eps, steps = 2 / 255, 5
    res = pgd(MODEL, x, y, eps=eps, steps=steps, random_start=False, example_ids=ids)
    kept, done = _reference_pgd(MODEL, x, y, eps, 2.5 * eps / steps, steps)
    assert torch.equal(res.fooled, done)
    # The harness steps only the examples still live (early stop), so its batches differ from
    # the reference's and float sums round differently: a gradient component within rounding
    # of 0 may change sign (measured: 37 of 196,608 values, each one step apart).
    differ = ((res.x_adv - kept).abs() > 1e-6).float().mean()
    assert differ < 1e-3


@pytest.mark.slow
def test_agrees_with_torchattacks_pgd():
    """Same settings (eps, alpha = 2.5 eps / 10, 10 steps) on 256 images. Without random start
    both are deterministic and agree example for example; with it each side draws its own
    start, and the robust accuracies stay within 1 pp (measured spread of one side over seeds:
    up to ~1 pp, so the check compares means over two seeds)."""
    ta = require("torchattacks")
    x, y, ids = _batch(256, 200)
    for eps in (1 / 255, 2 / 255):
        alpha = 2.5 * eps / 10
        ours = pgd(MODEL, x, y, eps=eps, steps=10, step_size=alpha, random_start=False)
        theirs = ta.PGD(MODEL, eps=eps, alpha=alpha, steps=10, random_start=False)(x, y)
        with torch.no_grad():
            fooled_ta = MODEL(theirs).argmax(1) != y
        # The harness keeps the first fooling iterate, torchattacks the last: an example fooled
        # midway and back to correct at the end is fooled only for the harness.
        assert (fooled_ta & ~ours.fooled).sum() == 0
        assert (ours.fooled != fooled_ta).float().mean() <= 0.01
        acc_ours, acc_ta = [], []
        for seed in (0, 1):
            acc_ours.append(pgd(MODEL, x, y, eps=eps, steps=10, step_size=alpha, seed=seed,
                                example_ids=ids).robust_accuracy)
            torch.manual_seed(seed)
            adv = ta.PGD(MODEL, eps=eps, alpha=alpha, steps=10, random_start=True)(x, y)
            with torch.no_grad():
                acc_ta.append(float((MODEL(adv).argmax(1) == y).float().mean()))
        assert abs(np.mean(acc_ours) - np.mean(acc_ta)) <= 0.01, (acc_ours, acc_ta)


def test_early_stop_changes_no_outcome():
    x, y, ids = _batch(48)
    for model in (MODEL, create_model("resnet8-sugar-bsilu", pretrained=True)):
        a = pgd(model, x, y, eps=[1 / 255, 4 / 255], restarts=2, example_ids=ids, seed=5)
        b = pgd(model, x, y, eps=[1 / 255, 4 / 255], restarts=2, example_ids=ids, seed=5,
                early_stop=False)
        for ra, rb in zip(a, b):
            assert torch.equal(ra.fooled, rb.fooled) and torch.equal(ra.iteration, rb.iteration)
            assert torch.equal(ra.pred, rb.pred) and torch.equal(ra.x_adv, rb.x_adv)
            assert (ra.found_by == rb.found_by).all()


def test_several_eps_equal_separate_calls_and_seeding_is_per_example():
    x, y, ids = _batch(40)
    many = pgd(MODEL, x, y, eps=[1 / 255, 3 / 255], example_ids=ids, seed=2)
    for eps, r in zip((1 / 255, 3 / 255), many):
        one = pgd(MODEL, x, y, eps=eps, example_ids=ids, seed=2)
        assert torch.equal(one.fooled, r.fooled)
        torch.testing.assert_close(one.x_adv, r.x_adv, atol=1e-6, rtol=0)
    again = pgd(MODEL, x, y, eps=3 / 255, example_ids=ids, seed=2)
    assert torch.equal(again.x_adv, many[1].x_adv)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shuffled = pgd(MODEL, x[perm], y[perm], eps=3 / 255, example_ids=ids[perm.numpy()], seed=2)
    assert torch.equal(shuffled.fooled, many[1].fooled[perm])
    torch.testing.assert_close(shuffled.x_adv, many[1].x_adv[perm], atol=1e-6, rtol=0)
    other = pgd(MODEL, x, y, eps=3 / 255, steps=1, example_ids=ids, seed=3)
    first = pgd(MODEL, x, y, eps=3 / 255, steps=1, example_ids=ids, seed=2)
    assert not torch.equal(other.x_adv, first.x_adv)


def test_restarts_never_help_the_model():
    x, y, ids = _batch(100)
    one = pgd(MODEL, x, y, eps=1 / 255, example_ids=ids)
    three = pgd(MODEL, x, y, eps=1 / 255, restarts=3, example_ids=ids)
    assert not (one.fooled & ~three.fooled).any()


def test_targeted_and_losses():
    x, y, ids = _batch(30)
    target = (y + 3) % 10
    res = pgd(MODEL, x, y, eps=8 / 255, targeted=True, target=target, loss="dlr")
    assert res.fooled.any()
    hit = res.fooled & torch.from_numpy(res.found_by != "clean")
    assert torch.equal(res.pred[hit], target[hit])
    for loss in ("ce", "dlr", "margin"):
        assert pgd(MODEL, x, y, eps=4 / 255, loss=loss).robust_accuracy < 0.5


class _Detached(nn.Module):
    def forward(self, x):
        return MODEL(x.detach())


class _HalfNaN(nn.Module):
    def forward(self, x):
        out = MODEL(x)
        return torch.where((torch.arange(len(x)) % 2 == 0)[:, None], out, torch.nan)


def test_bad_input_and_broken_models():
    x, y, _ = _batch(4)
    for kwargs in ({"eps": -0.1}, {"eps": 1.5}, {"eps": 0.1, "norm": "L3"},
                   {"eps": 0.1, "steps": 0}, {"eps": 0.1, "restarts": 0},
                   {"eps": 0.1, "loss": "hinge"}):
        with pytest.raises(HarnessError):
            pgd(MODEL, x, y, **kwargs)
    with pytest.raises(HarnessError, match="gradient"):
        pgd(_Detached(), x, y, eps=0.1)
    res = pgd(_HalfNaN(), x, y, eps=2 / 255)
    assert res.fooled[1::2].all() and (res.pred[1::2] == -1).all()
    assert torch.isfinite(res.x_adv).all()


def test_bfloat16_model():
    x, y, ids = _batch(16)
    bf = create_model("resnet8", pretrained=True).to(torch.bfloat16)
    res = pgd(bf, x, y, eps=2 / 255, example_ids=ids)
    assert res.x_adv.dtype == torch.float32
    assert ((res.x_adv - x).abs().amax() <= 2 / 255 + 1e-6)


def test_agrees_with_torchattacks_pgd_fast():
    """The fast tier's version of the agreement: deterministic (no random start), 64 images."""
    ta = require("torchattacks")
    x, y, _ = _batch(64, 300)
    eps = 2 / 255
    ours = pgd(MODEL, x, y, eps=eps, steps=10, step_size=eps / 4, random_start=False)
    theirs = ta.PGD(MODEL, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
    with torch.no_grad():
        fooled_ta = MODEL(theirs).argmax(1) != y
    assert (fooled_ta & ~ours.fooled).sum() == 0
    assert (ours.fooled != fooled_ta).sum() <= 1
