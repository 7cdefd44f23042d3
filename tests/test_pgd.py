"""attacks.pgd (the native batched PGD) on real images and the bundled ResNet-8, checked against
outside oracles: an independent re-prediction of every adversarial example, a hand-written
reference PGD loop, and torchattacks' PGD.

The module runs torch on one thread (restored afterwards). On the 2-core dev VM with other jobs
running, two OpenMP threads wait on each other at every op: measured 2026-12-03, a ResNet-8
forward + backward on 8 images took 0.69 s with 2 threads and 0.008 s with 1 (256 images:
0.99 s vs 0.28 s). Nothing here is timed; outcomes do not depend on the thread count (the
reference-loop and early-stop equalities hold bit for bit with 1 and 2 threads).
"""

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n, start=0):
    sl = slice(start, start + n)
    return (torch.from_numpy(SAMPLE.images[sl]).float() / 255,
            torch.from_numpy(SAMPLE.labels[sl]).long(), SAMPLE.indices[sl])


def _predict(model, x):
    """An independent re-prediction: plain contiguous float input, no harness code."""
    with torch.no_grad():
        return model(x).argmax(1)


def _size(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


def _assert_same(a, b):
    """Two AttackResults equal field by field, bit for bit."""
    assert torch.equal(a.fooled, b.fooled)
    assert torch.equal(a.iteration, b.iteration)
    assert torch.equal(a.pred, b.pred)
    assert torch.equal(a.x_adv, b.x_adv)
    assert (a.found_by == b.found_by).all()


# --- properties ------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(norm=st.sampled_from(["Linf", "L2"]), frac=st.floats(0, 1),
       loss=st.sampled_from(["ce", "dlr", "margin"]), steps=st.integers(1, 3),
       restarts=st.integers(1, 2), random_start=st.booleans(), targeted=st.booleans(),
       shift=st.integers(1, 9), n=st.integers(4, 8), start=st.integers(0, 990),
       seed=st.integers(0, 2**31 - 1))
def test_adversarial_examples_stay_in_the_ball_and_outcomes_are_true(
        norm, frac, loss, steps, restarts, random_start, targeted, shift, n, start, seed):
    eps = frac * (16 / 255 if norm == "Linf" else 2.0)
    x, y, ids = _batch(n, min(start, 1000 - n))
    target = (y + shift) % 10 if targeted else None
    res = pgd(MODEL, x, y, eps=eps, norm=norm, loss=loss, steps=steps, restarts=restarts,
              random_start=random_start, targeted=targeted, target=target, seed=seed,
              example_ids=ids)
    assert res.x_adv.dtype == torch.float32 and res.x_adv.shape == x.shape
    assert (_size(res.x_adv, x, norm) <= eps + (1e-6 if norm == "Linf" else 1e-5)).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    pred = _predict(MODEL, res.x_adv)
    assert torch.equal(res.fooled, (pred == target) if targeted else (pred != y))
    assert torch.equal(res.iteration == -1, ~res.fooled)
    assert ((res.iteration >= 0) & (res.iteration <= steps))[res.fooled].all()
    assert ((res.found_by == "") == (~res.fooled).numpy()).all()
    assert set(res.found_by[res.fooled.numpy()]) <= {"clean", "pgd"}


# --- against torchattacks ----------------------------------------------------------------------

def _torchattacks_fooled(ta, x, y, eps, alpha, *, random_start, seed=0):
    torch.manual_seed(seed)
    adv = ta.PGD(MODEL, eps=eps, alpha=alpha, steps=10, random_start=random_start)(x, y)
    assert ((adv - x).abs().amax() <= eps + 1e-6)
    return _predict(MODEL, adv) != y


def _deterministic_agreement(ta, x, y, eps):
    """Without random start both sides are the same deterministic algorithm. The harness keeps
    the first fooling iterate and torchattacks the last, so an example torchattacks fools is
    fooled by the harness too; the converse can fail only for an example that crossed the
    boundary and came back (none in the measured batches)."""
    alpha = 2.5 * eps / 10
    ours = pgd(MODEL, x, y, eps=eps, steps=10, step_size=alpha, random_start=False)
    theirs = _torchattacks_fooled(ta, x, y, eps, alpha, random_start=False)
    assert not (theirs & ~ours.fooled).any()
    assert (ours.fooled == theirs).float().mean() >= 0.99
    return ours.robust_accuracy, 1 - theirs.float().mean().item()


# Random start noise, measured 2026-12-03 on images 0-255 and 200-455, PGD-10, alpha = eps / 4,
# five seeds per side: robust accuracy moved by at most 1 example (0.39 pp) on either side
# (e.g. 2/255, images 0-255: harness 18.75-19.14 %, torchattacks 19.14-19.53 %); without random
# start both gave exactly 51.95 / 18.75 / 55.86 / 20.70 % with 0 per-example disagreements. 1 pp
# is outside that noise, so the random-start comparison asserts the 1 pp directly.
RANDOM_START_NOISE_PP = 0.4


def test_agrees_with_torchattacks_pgd_fast():
    """256 images at 2/255: per example without random start, within 1 pp with it."""
    ta = require("torchattacks")
    x, y, ids = _batch(256)
    eps = 2 / 255
    _deterministic_agreement(ta, x, y, eps)
    alpha = 2.5 * eps / 10
    ours = pgd(MODEL, x, y, eps=eps, steps=10, step_size=alpha, example_ids=ids, seed=0)
    theirs = 1 - _torchattacks_fooled(ta, x, y, eps, alpha, random_start=True).float().mean()
    assert abs(ours.robust_accuracy - float(theirs)) <= 0.01, (ours.robust_accuracy, theirs)


@pytest.mark.slow
def test_agrees_with_torchattacks_pgd():
    """256 images at 1/255 and 2/255 (the issue's check): the random start's own effect is
    measured on each side over two seeds; the robust accuracies (mean over the seeds) agree
    within 1 pp, or the measured noise band if that is larger."""
    ta = require("torchattacks")
    x, y, ids = _batch(256, 200)
    for eps in (1 / 255, 2 / 255):
        acc_ours_det, acc_ta_det = _deterministic_agreement(ta, x, y, eps)
        assert abs(acc_ours_det - acc_ta_det) <= 0.005
        alpha = 2.5 * eps / 10
        ours, theirs = [], []
        for seed in (0, 1):
            ours.append(pgd(MODEL, x, y, eps=eps, steps=10, step_size=alpha, seed=seed,
                            example_ids=ids).robust_accuracy)
            theirs.append(1 - _torchattacks_fooled(ta, x, y, eps, alpha, random_start=True,
                                                   seed=seed).float().mean().item())
        noise = max(np.ptp(ours), np.ptp(theirs))
        assert noise <= 0.02, (ours, theirs)   # the start moves either side by ~1 example
        assert abs(np.mean(ours) - np.mean(theirs)) <= max(0.01, noise), (ours, theirs)


# --- early stop, several eps, seeding ------------------------------------------------------------

def test_early_stop_changes_no_outcome():
    x, y, ids = _batch(100)
    eps = [1 / 255, 4 / 255]
    fast = pgd(MODEL, x, y, eps=eps, restarts=2, example_ids=ids, seed=5)
    full = pgd(MODEL, x, y, eps=eps, restarts=2, example_ids=ids, seed=5, early_stop=False)
    for a, b in zip(fast, full):
        _assert_same(a, b)
    # Not vacuous: early stop dropped examples at several iterations, and some stay robust.
    assert len(set(fast[0].iteration[fast[0].fooled].tolist())) > 3
    assert 0 < fast[0].robust_accuracy < 1


def test_several_eps_in_one_call_equal_separate_calls():
    x, y, ids = _batch(40, 500)
    eps = [1 / 255, 3 / 255, 0.0]
    many = pgd(MODEL, x, y, eps=eps, example_ids=ids, seed=2, restarts=2)
    assert isinstance(many, list) and len(many) == 3
    for e, r in zip(eps, many):
        _assert_same(pgd(MODEL, x, y, eps=e, example_ids=ids, seed=2, restarts=2), r)
    # eps 0 moves nothing: fooled exactly where the clean image is already wrong.
    assert torch.equal(many[2].x_adv, x)
    assert torch.equal(many[2].fooled, _predict(MODEL, x) != y)


def test_seeding_is_per_example():
    x, y, ids = _batch(40, 100)
    kw = dict(eps=3 / 255, steps=2, example_ids=ids, seed=7)
    first = pgd(MODEL, x, y, **kw)
    torch.manual_seed(123)   # the global RNG plays no part
    _assert_same(first, pgd(MODEL, x, y, **kw))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shuffled = pgd(MODEL, x[perm], y[perm], **{**kw, "example_ids": ids[perm.numpy()]})
    for field in ("fooled", "iteration", "pred", "x_adv"):
        assert torch.equal(getattr(shuffled, field), getattr(first, field)[perm])
    assert (shuffled.found_by == first.found_by[perm.numpy()]).all()
    part = pgd(MODEL, x[:9], y[:9], **{**kw, "example_ids": ids[:9]})   # a sub-batch
    assert torch.equal(part.x_adv, first.x_adv[:9]) and torch.equal(part.fooled, first.fooled[:9])
    # Another seed, or other ids, change the start of the examples that are attacked.
    attacked = torch.from_numpy(first.found_by != "clean")
    for other in (dict(seed=8), dict(example_ids=ids + 1)):
        res = pgd(MODEL, x, y, **{**kw, **other})
        moved = (res.x_adv != first.x_adv).flatten(1).any(1)
        assert moved[attacked].all() and not moved[~attacked].any()


# --- against a hand-written reference loop -----------------------------------------------------

def _reference_pgd(model, x, y, eps, alpha, steps):
    """PGD from the clean image in plain torch: sign step of the CE gradient, projection onto
    the Linf ball and [0, 1]; keeps the first iterate the model gets wrong (clean check
    included) and its step count, else the last iterate."""
    xa, kept = x.clone(), x.clone()
    iteration = torch.full((len(x),), -1)
    for t in range(steps + 1):
        xa.requires_grad_(True)
        logits = model(xa)
        wrong = (logits.argmax(1) != y) & (iteration < 0)
        kept[wrong] = xa.detach()[wrong]
        iteration[wrong] = t
        if t == steps:
            break
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    kept[iteration < 0] = xa.detach()[iteration < 0]
    return kept, iteration >= 0, iteration


@pytest.mark.parametrize("eps", [2 / 255, 4 / 255])
def test_equals_a_hand_written_reference_loop(eps):
    x, y, ids = _batch(64)
    steps = 5
    kept, fooled, iteration = _reference_pgd(MODEL, x, y, eps, 2.5 * eps / steps, steps)
    assert 0 < fooled.float().mean() < 1
    # Contiguous input, as the reference: bit for bit, with and without early stop.
    for early_stop in (True, False):
        res = pgd(MODEL, x, y, eps=eps, steps=steps, random_start=False, restarts=1,
                  early_stop=early_stop, channels_last=False, example_ids=ids)
        assert torch.equal(res.fooled, fooled) and torch.equal(res.iteration, iteration)
        assert torch.equal(res.x_adv, kept)
    # The default feeds channels_last tensors: convolutions sum in another order, and a
    # gradient component within rounding of 0 can take the other sign (measured: 37 of 196,608
    # values at 2/255 and 4 at 4/255, one example each, one step apart).
    res = pgd(MODEL, x, y, eps=eps, steps=steps, random_start=False, example_ids=ids)
    assert torch.equal(res.fooled, fooled) and torch.equal(res.iteration, iteration)
    assert ((res.x_adv - kept).abs() > 1e-6).float().mean() < 1e-3
    assert (res.x_adv != kept).flatten(1).any(1).sum() <= 3


# --- targeted, losses ------------------------------------------------------------------------------

def test_targeted_success_means_predicting_the_target():
    x, y, ids = _batch(40, 300)
    clean = _predict(MODEL, x)
    target = (y + 3) % 10
    assert ((clean != y) & (clean != target)).any()   # wrong, but not the target
    for loss in ("ce", "dlr", "margin"):
        res = pgd(MODEL, x, y, eps=8 / 255, loss=loss, targeted=True, target=target,
                  example_ids=ids)
        pred = _predict(MODEL, res.x_adv)
        assert torch.equal(res.fooled, pred == target)
        assert torch.equal(res.pred[res.fooled], target[res.fooled])
        assert res.fooled.float().mean() > 0.5, loss
    # eps 0: the clean check alone. Examples the model gets wrong count only where it predicts
    # the target (here: where the target is set to the clean prediction).
    target = torch.where(torch.arange(40) % 2 == 0, clean, target)
    res = pgd(MODEL, x, y, eps=0.0, targeted=True, target=target, example_ids=ids)
    assert torch.equal(res.fooled, clean == target)
    assert ((clean != y) & ~res.fooled).any()
    assert (res.found_by[res.fooled.numpy()] == "clean").all()


def test_untargeted_losses_all_attack():
    x, y, ids = _batch(40, 300)
    clean = (_predict(MODEL, x) == y).float().mean()
    for loss in ("ce", "dlr", "margin"):
        for norm, eps in (("Linf", 4 / 255), ("L2", 0.5)):
            res = pgd(MODEL, x, y, eps=eps, norm=norm, loss=loss, example_ids=ids)
            assert res.robust_accuracy < clean - 0.2, (loss, norm)


# --- bad input, broken models -------------------------------------------------------------------

class _DetachedInput(nn.Module):
    """A forward that cuts the autograd path from the input (parameters still need grad)."""

    def forward(self, x):
        return MODEL(x.detach())


class _NoGradAtAll(nn.Module):
    """No parameters and a detached input: the output needs no gradient at all."""

    def forward(self, x):
        return x.detach().flatten(1)[:, :10] * 10


@pytest.mark.parametrize("kwargs", [
    {"eps": -0.1}, {"eps": 1.5}, {"eps": float("nan")}, {"eps": 0.1, "norm": "L3"},
    {"eps": 0.1, "steps": 0}, {"eps": 0.1, "steps": 1.5}, {"eps": 0.1, "restarts": 0},
    {"eps": 0.1, "loss": "hinge"}, {"eps": 0.1, "schedule": "linear"},
    {"eps": 0.1, "step_size": -1.0}, {"eps": 0.1, "targeted": True},
    {"eps": [0.1, -0.1]}, {"eps": 0.1, "example_ids": [1, 2]},
], ids=str)
def test_bad_input_raises_harness_error(kwargs):
    x, y, _ = _batch(4)
    with pytest.raises(HarnessError):
        pgd(MODEL, x, y, **kwargs)


@pytest.mark.parametrize("model", [_DetachedInput(), _NoGradAtAll()],
                         ids=["detached-input", "no-grad-at-all"])
def test_model_without_input_gradient_raises_harness_error(model):
    x, y, _ = _batch(4)
    y = _predict(model, x)   # correct on the clean images, so the attack runs
    with pytest.raises(HarnessError, match="gradient"):
        pgd(model, x, y, eps=0.1)


class _NaNForOddRows(nn.Module):
    def forward(self, x):
        out = MODEL(x)
        odd = (torch.arange(len(x)) % 2 == 1)[:, None]
        return torch.where(odd, torch.nan, out)


class _NaNGradient(torch.autograd.Function):
    """Identity whose gradient is NaN for the rows close to one of ``poisoned`` (by content: the
    attack's working batch drops and reorders rows)."""

    @staticmethod
    def forward(ctx, x, poisoned):
        ctx.save_for_backward(x, poisoned)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        x, poisoned = ctx.saved_tensors
        near = ((x[:, None] - poisoned[None]).flatten(2).abs().amax(2) < 0.1).any(1)
        return torch.where(near[:, None, None, None], torch.nan, g), None


class _NaNGradForSome(nn.Module):
    def __init__(self, poisoned):
        super().__init__()
        self.poisoned = poisoned

    def forward(self, x):
        return MODEL(_NaNGradient.apply(x, self.poisoned))


def test_nan_logits_count_as_fooled_without_a_crash():
    x, y, ids = _batch(8)
    res = pgd(_NaNForOddRows(), x, y, eps=2 / 255, restarts=2, example_ids=ids)
    assert res.fooled[1::2].all() and (res.pred[1::2] == -1).all()
    assert (res.iteration[1::2] == 0).all() and (res.found_by[1::2] == "clean").all()
    assert torch.isfinite(res.x_adv).all()
    assert torch.equal(res.pred[0::2], _predict(MODEL, res.x_adv[0::2]))
    # Targeted too: no prediction counts as fooled.
    res = pgd(_NaNForOddRows(), x, y, eps=2 / 255, targeted=True, target=(y + 1) % 10,
              example_ids=ids)
    assert res.fooled[1::2].all() and (res.pred[1::2] == -1).all()
    assert torch.isfinite(res.x_adv).all()


def test_nan_gradients_do_not_move_the_example():
    x, y, ids = _batch(8)
    res = pgd(_NaNGradForSome(x[1::2]), x, y, eps=4 / 255, random_start=False,
              example_ids=ids)
    assert torch.isfinite(res.x_adv).all()
    assert torch.equal(res.x_adv[1::2], x[1::2])
    ref = pgd(MODEL, x, y, eps=4 / 255, random_start=False, example_ids=ids)
    assert torch.equal(res.x_adv[0::2], ref.x_adv[0::2])


# --- dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("Linf", 2 / 255), ("L2", 0.3)])
def test_bfloat16_model(norm, eps):
    x, y, ids = _batch(16)
    bf = create_model("resnet8", pretrained=True).to(torch.bfloat16)
    for kwargs in ({}, {"dtype": torch.bfloat16}):
        res = pgd(bf, x, y, eps=eps, norm=norm, example_ids=ids, **kwargs)
        assert res.x_adv.dtype == torch.float32
        assert (_size(res.x_adv, x, norm) <= eps + (1e-6 if norm == "Linf" else 1e-5)).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert res.fooled.any() and not res.fooled.all()
        with torch.no_grad():
            pred = bf(res.x_adv.to(torch.bfloat16)).float().argmax(1)
        assert torch.equal(res.fooled, pred != y)


def test_no_examples_give_empty_results():
    x, y, _ = _batch(0)
    res = pgd(MODEL, x, y, eps=[1 / 255, 2 / 255])
    assert [len(r.fooled) for r in res] == [0, 0] and res[0].x_adv.shape == (0, 3, 32, 32)
    assert res[0].pred.dtype == torch.long and np.isnan(res[0].robust_accuracy)


def test_restarts_never_help_the_model():
    """Restart r attacks only what restarts < r left robust, from its own seeded start: three
    restarts fool a superset of what one restart fooled (same seed)."""
    x, y, ids = _batch(100)
    one = pgd(MODEL, x, y, eps=1 / 255, example_ids=ids)
    three = pgd(MODEL, x, y, eps=1 / 255, restarts=3, example_ids=ids)
    assert not (one.fooled & ~three.fooled).any()
    assert three.fooled.sum() >= one.fooled.sum()


def test_early_stop_changes_no_outcome_through_a_surrogate_gradient():
    x, y, ids = _batch(32)
    sugar = create_model("resnet8-sugar-bsilu", pretrained=True)
    a = pgd(sugar, x, y, eps=[1 / 255, 4 / 255], restarts=2, example_ids=ids, seed=5)
    b = pgd(sugar, x, y, eps=[1 / 255, 4 / 255], restarts=2, example_ids=ids, seed=5,
            early_stop=False)
    for ra, rb in zip(a, b):
        _assert_same(ra, rb)
