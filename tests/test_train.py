"""The training recipe: the fit loop, augmentation semantics and a short real run."""

import pytest
import torch

from models import create_model
from models.training import TrainRecipe, augment, evaluate_accuracy, fit, train


def test_fit_walks_seeded_batches_sets_the_schedule_and_minimises():
    """The one loop every trainer uses: a fresh permutation per epoch (ragged tail dropped) or
    draws with replacement, lr(step) x the group's lr_scale before each step, hooks in order,
    and the updates actually minimise the loss."""
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "lr_scale": 0.5}], lr=1.0)
    seen, lrs, events = [], [], []

    def loss_fn(idx):
        seen.append(idx.clone())
        lrs.append(opt.param_groups[0]["lr"])
        return (w - 1).square().sum()

    def run(**kw):
        return fit(loss_fn, opt, n=10, batch_size=3, generator=torch.Generator().manual_seed(0),
                   after_step=lambda t: events.append(("step", t)),
                   end_epoch=lambda e, losses: events.append(("epoch", e, len(losses))), **kw)

    assert run(epochs=4, lr=lambda t: 0.8 / (t + 1)) == 12
    epochs = [torch.cat(seen[i:i + 3]) for i in range(0, 12, 3)]
    assert all(len(set(e.tolist())) == 9 for e in epochs)         # no repeats within an epoch
    assert not torch.equal(epochs[0], epochs[1])                    # reshuffled
    assert lrs == pytest.approx([0.4 / (t + 1) for t in range(12)])
    assert events[:4] == [("step", 0), ("step", 1), ("step", 2), ("epoch", 0, 3)]
    assert torch.allclose(w.detach(), torch.ones(3), atol=0.05)    # 1 - prod(1 - 2 lr_t) = 0.97
    first = [s.clone() for s in seen]
    seen.clear()
    assert run(epochs=4, lr=lambda t: 0.8 / (t + 1)) == 12
    assert all(torch.equal(a, b) for a, b in zip(first, seen))      # seeded
    seen.clear()
    # with replacement: as many steps as asked, from all of the examples (150 draws of 10)
    assert run(epochs=1, steps_per_epoch=50, replacement=True) == 50
    assert sorted(set(torch.cat(seen).tolist())) == list(range(10)) and len(seen) == 50


def test_augment_is_a_shift_and_optional_flip():
    x = torch.rand(64, 3, 32, 32)
    out = augment(x, pad=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(64):  # every output is some crop of the padded image, maybe mirrored
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    flipped = sum(not any(torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])
                          for dy in range(9) for dx in range(9)) for i in range(64))
    assert 10 < flipped < 54  # about half are mirrored


def test_augment_is_seeded():
    x = torch.rand(8, 3, 32, 32)
    a = augment(x, pad=4, generator=torch.Generator().manual_seed(1))
    b = augment(x, pad=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_short_training_learns_and_is_reproducible():
    from harness.data import load_sample

    s = load_sample()
    x, y = torch.from_numpy(s.images), torch.from_numpy(s.labels)
    recipe = TrainRecipe(epochs=3, batch_size=100, lr=0.1, seed=0)
    torch.manual_seed(0)
    m1, summary = train(create_model("resnet8"), x[:800], y[:800], recipe=recipe)
    torch.manual_seed(0)
    m2, _ = train(create_model("resnet8"), x[:800], y[:800], recipe=recipe)
    acc = evaluate_accuracy(m1, x, y)
    assert acc > 0.2  # chance is 0.1
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert summary["steps"] == 24 and len(summary["history"]) == 3


@pytest.mark.slow
def test_train_cli_writes_a_loadable_checkpoint_and_card(tmp_path):
    """`harness train` end to end on a small folder in the official layout."""
    import json

    from conftest import make_small_cifar, run_cli

    make_small_cifar(tmp_path)   # 800 train images, 200 test images
    out = tmp_path / "ck" / "r8"
    out.parent.mkdir()
    proc = run_cli("train", "--model", "resnet8", "--epochs", "2", "--batch-size", "100",
                   "--data-dir", str(tmp_path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["factory"] == "resnet8" and meta["test"]["n"] == 200
    assert meta["recipe"]["epochs"] == 2 and len(meta["history"]) == 2
    assert meta["data"]["train_n"] == 800
    card = out.with_suffix(".md").read_text()
    assert f"{100 * meta['test']['accuracy']:.2f} %" in card
    run = run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights",
                  str(out.with_suffix(".json")), "--data-dir", str(tmp_path), "--store",
                  str(tmp_path / "s.sqlite"), "--quiet")
    assert run.returncode == 0, run.stderr
    assert f"{100 * meta['test']['accuracy']:.2f}" in run.stdout  # same 200 test images
    bad = run_cli("train", "--model", "resnet8", "--out", str(tmp_path / "no" / "x"),
                  "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_recipe_for_merges_registry_settings_and_given_values():
    from models.training import recipe_for

    assert recipe_for("resnet8") == TrainRecipe()
    lip = recipe_for("resnet8-deepspline-1lip")
    assert lip.lipschitz_projection and lip.tv2 > 0 and lip.logit_scale > 1
    assert recipe_for("resnet8-deepspline").tv2 > 0
    assert recipe_for("resnet8-deepspline", tv2=0.0, epochs=None).tv2 == 0.0


def _short(name, **recipe):
    from harness.data import load_sample

    s = load_sample()
    x, y = torch.from_numpy(s.images[:300]), torch.from_numpy(s.labels[:300])
    torch.manual_seed(0)
    model, _ = train(create_model(name), x, y,
                     recipe=TrainRecipe(epochs=1, batch_size=100, lr=0.1, **recipe))
    return model


def test_sugar_recipe_option_trains_a_relu_model_like_the_sugar_entry():
    """--sugar bsilu on resnet8 is the same optimisation as training resnet8-sugar-bsilu
    (same init, same forward, same surrogate backward), and differs from plain training."""
    from models.activations.sugar import Sugar

    swapped = _short("resnet8", sugar="bsilu")
    entry = _short("resnet8-sugar-bsilu")
    plain = _short("resnet8")
    assert not any(isinstance(m, Sugar) for m in swapped.modules())  # saved as a ReLU model
    for a, b in zip(swapped.state_dict().values(), entry.state_dict().values()):
        assert torch.equal(a, b)
    diff = [not torch.equal(a, b) for a, b in zip(swapped.state_dict().values(),
                                                  plain.state_dict().values())]
    assert any(diff)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        _short("resnet8-gelu", sugar="bsilu")


def test_spline_recipe_options_act():
    from models.activations.deepspline import DeepSpline

    lip = _short("resnet8-deepspline-1lip", lipschitz_projection=True, spline_lr_scale=1.0,
                 logit_scale=10.0)
    for m in lip.modules():
        if isinstance(m, DeepSpline):   # the stored coefficients are themselves projected
            slopes = (m.coefficients[:, 1:] - m.coefficients[:, :-1]) / m.grid
            assert slopes.abs().max().item() <= 1 + 1e-5

    # TV(2) pulls rough splines back: start from noisy coefficients (TV about 7,000), then a
    # few steps with and without the regulariser
    from harness.data import load_sample

    data = load_sample()
    x, y = torch.from_numpy(data.images[:300]), torch.from_numpy(data.labels[:300])
    tv = []
    for lam in (0.0, 0.05):
        torch.manual_seed(0)
        model = create_model("resnet8-deepspline")
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, DeepSpline):
                    m.coefficients.add_(0.05 * torch.randn_like(m.coefficients))
        start = sum(m.tv2().item() for m in model.modules() if isinstance(m, DeepSpline))
        model, _ = train(model, x, y, recipe=TrainRecipe(epochs=1, batch_size=100, lr=0.1,
                                                         tv2=lam, spline_lr_scale=0.1))
        tv.append(sum(m.tv2().item() for m in model.modules() if isinstance(m, DeepSpline)))
    assert start > 5000 and tv[1] < 0.5 * tv[0]
