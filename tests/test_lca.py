"""LCA and WARP-LCA front ends: the dynamics against closed forms, the energy, thresholds,
dictionary learning, the warm start, and (optionally) lanl/lca-pytorch as an oracle."""

import os
import sys

import pytest
import torch

from models.front_ends import LCA, WarpLCA, standardize, threshold
from models.training import learn_dictionary, train_predictor


def _images(n=8, seed=0):
    from harness.data import load_sample

    ds = load_sample()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.labels), generator=g)[:n]
    return torch.from_numpy(ds.images)[idx].float() / 255


def _orthonormal_lca(nonneg=True, **kw):
    """A 1x1 dictionary of 3 orthonormal atoms: Φ is orthogonal, G = 0."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    return LCA(in_channels=3, features=3, kernel_size=1, stride=1, nonneg=nonneg,
               dictionary=q.T.reshape(3, 3, 1, 1), **kw)


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("tau", [1.0, 5.0])
def test_orthonormal_dictionary_converges_to_the_soft_threshold_solution(nonneg, tau):
    lca = _orthonormal_lca(nonneg, lambda_=0.3, tau=tau, threshold="soft")
    s = standardize(_images(4))
    b = torch.einsum("fc,nchw->nfhw", lca.dictionary.flatten(1), s)   # Φᵀs
    closed = threshold(b, 0.3, "soft", nonneg)                       # argmin of the energy
    out = lca.encode(s, iterations=1 if tau == 1 else 150)
    assert torch.allclose(out.codes, closed, atol=1e-5)
    assert (closed == 0).float().mean() > 0.2 and (closed != 0).any()   # a real threshold
    # no code of lower energy nearby: E(a*) <= E(a* + small perturbation) (convex, soft)
    e = lca.energy(s, out.codes)
    for scale in (1e-2, 1e-1):
        other = out.codes + scale * torch.randn_like(out.codes)
        if nonneg:
            other = other.clamp_min(0)
        assert (lca.energy(s, other) >= e - 1e-4).all()


def test_drive_and_reconstruct_are_adjoint_and_norm_matches_dense_matrix():
    torch.manual_seed(0)
    lca = LCA(features=8, kernel_size=5, stride=2)
    s = torch.randn(2, 3, 12, 12)
    a = torch.randn(2, 8, 6, 6)
    lhs = (lca.drive(s) * a).sum()
    rhs = (s * lca.reconstruct(a, (12, 12))).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5)
    eye = torch.eye(8 * 36).reshape(-1, 8, 6, 6)
    dense = lca.reconstruct(eye, (12, 12)).flatten(1)              # columns of Φ
    norms = dense.norm(dim=1).reshape(8, 6, 6)
    assert torch.allclose(norms[:, 2:-2, 2:-2], torch.ones(8, 2, 2), atol=1e-5)  # unit atoms
    assert (norms <= 1 + 1e-5).all() and (norms[:, 0, 0] < 1).all()      # cut at the border
    exact = torch.linalg.matrix_norm(dense, ord=2).item() ** 2
    assert lca.operator_norm((12, 12)) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_residual_form_matches_the_textbook_inhibition_conv(kind):
    """Our iteration against the textbook one (lcapt's): G = ΦᵀΦ - I as an explicit
    features x features conv on the code grid, u <- u + (b - u - G*a)/τ. Valid padding: every
    atom lies inside the image, so the two forms are the same operator."""
    torch.manual_seed(0)
    lca = LCA(features=12, kernel_size=7, stride=2, lambda_=0.25, tau=20, threshold=kind,
              padding="valid")
    phi = lca.dictionary
    # G[i, j, dy, dx] = <φ_i, φ_j shifted by (2dy, 2dx)>, |d| <= 3
    gram = torch.nn.functional.conv2d(phi, phi, stride=2, padding=6)    # (12, 12, 7, 7)
    gram[range(12), range(12), 3, 3] -= 1.0
    s = standardize(_images(3))
    b = lca.drive(s)
    u = torch.zeros_like(b)
    for _ in range(25):
        a = lca.transfer(u)
        inhib = torch.nn.functional.conv2d(a, gram.transpose(0, 1).flip(-1, -2), padding=3)
        u = u + (b - u - inhib) / 20
    ours = lca.encode(s, iterations=25)
    assert torch.allclose(ours.states, u, atol=1e-4)
    assert torch.equal(ours.codes != 0, lca.transfer(u) != 0)


def test_atoms_have_unit_norm_and_g_identity_holds():
    """b - G*a == Φᵀ(s - Φa) + a, with G*a = ΦᵀΦa - a."""
    torch.manual_seed(0)
    lca = LCA(features=6, kernel_size=5, stride=2)
    assert torch.allclose(lca.dictionary.flatten(1).norm(dim=1), torch.ones(6), atol=1e-6)
    s = torch.randn(2, 3, 16, 16)
    a = torch.relu(torch.randn(2, 6, 8, 8))
    residual_form = lca.drive(s - lca.reconstruct(a, (16, 16))) + a
    g_a = lca.drive(lca.reconstruct(a, (16, 16))) - a
    assert torch.allclose(lca.drive(s) - g_a, residual_form, atol=1e-5)


def test_energy_is_non_increasing_for_soft_threshold_when_tau_covers_the_gram_norm():
    torch.manual_seed(0)
    lca = LCA(features=32, kernel_size=7, stride=2, lambda_=0.25, threshold="soft")
    norm = lca.operator_norm((16, 16))
    assert norm > 4            # overcomplete and coherent
    s = standardize(torch.randn(6, 3, 16, 16))
    for tau in (norm, 2 * norm, 100.0):
        lca.tau = tau
        e = lca.encode(s, iterations=int(6 * tau), trace=True).trace["energy"]
        assert (e[1:] <= e[:-1] * (1 + 1e-6) + 1e-5).all(), tau
        assert (e[-1] < 0.6 * e[0]).all()          # and it actually decreases
    lca.tau = 1.0               # ISTA's step 1 > 2 / ||Φ||²: the iteration diverges
    e = lca.encode(s, iterations=20, trace=True).trace["energy"]
    assert (e[-1] > 10 * e[0]).all()


def test_bundled_models_tau_is_in_the_convergent_range_and_energy_decreases_on_images():
    """The zoo's τ against the learned dictionary: 1/τ < 2/||Φ||² (ISTA's convergence range),
    and the energy is monotone on real and on noise-corrupted images."""
    import models
    from models.zoo import load_dictionary

    lca = models.create_model("lca-resnet8").front_end
    norm = lca.operator_norm()
    assert lca.tau > norm / 2
    # the measured values the models use are the dictionary checkpoint's
    meta = load_dictionary()[1]
    assert lca.tau == meta["evaluation"]["tau"] and abs(norm - meta["operator_norm_sq"]) < 1e-3
    # whitened input keeps the learned atoms incoherent (unwhitened, ||Φ||² and τ were
    # several times larger)
    assert lca.whitening is not None and norm < 20 and lca.tau < 10
    x = _images(16)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for inp in (x, noisy):
        e = lca.encode(lca.prepare(inp), iterations=150, trace=True).trace["energy"]
        assert (e[1:] <= e[:-1] * (1 + 1e-6) + 1e-4).all()
        assert (e[-1] < 0.7 * e[0]).all()


def test_bundled_warp_lca_comes_within_5_percent_of_converged_energy_in_its_iterations():
    """Issue #6's goal on held-out sample images: the bundled WARP-LCA, after the 20 iterations it
    runs, is within 5 % of LCA-1000's mean energy; cold LCA after 20 is not (the warm start is
    what gets it there). benchmarks/bench_lca.py measures the full curves."""
    import models

    warp = models.create_model("warp-lca-resnet8", pretrained=True).front_end
    lca = warp.lca
    s = lca.prepare(_images(64, seed=5))
    with torch.no_grad():
        converged = lca.energy(s, lca.encode(s, iterations=1000).codes).mean()
        warm = lca.energy(s, warp.encode(s).codes).mean()
        cold = lca.energy(s, lca.encode(s, iterations=warp.iterations).codes).mean()
    assert warp.iterations <= 20
    assert warm <= 1.05 * converged < cold, (warm / converged, cold / converged)


def test_energy_trace_rows_match_the_codes():
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, tau=20)
    s = standardize(_images(4))
    out = lca.encode(s, iterations=15, trace=True)
    tr = out.trace
    assert set(tr) == {"energy", "recon_error", "sparsity_penalty", "l0"}
    assert tr["energy"].shape == (16, 4)
    assert torch.allclose(tr["energy"][0], 0.5 * s.flatten(1).square().sum(1))   # a(0) = 0
    assert (tr["l0"][0] == 0).all()
    assert torch.allclose(tr["energy"][-1], lca.energy(s, out.codes), rtol=1e-5)
    assert torch.allclose(tr["energy"], tr["recon_error"] + tr["sparsity_penalty"])
    assert torch.equal(lca.encode(s, iterations=15).codes, out.codes)  # tracing changes nothing


@pytest.mark.parametrize("nonneg", [True, False])
def test_hard_threshold_gives_exact_zeros_below_lambda_and_no_shrinkage(nonneg):
    u = torch.linspace(-2, 2, 401)
    a = threshold(u, 0.5, "hard", nonneg)
    below = u <= 0.5 if nonneg else u.abs() <= 0.5
    assert torch.equal(a[below], torch.zeros(int(below.sum())))
    assert torch.equal(a[~below], u[~below])                        # kept as is
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, lambda_=0.5, tau=20, threshold="hard",
              nonneg=nonneg)
    out = lca.encode(standardize(_images(4)), iterations=30)
    active = out.codes != 0
    assert active.any() and not active.all()
    assert (out.codes[active].abs() > 0.5).all()                                   # no value in (0, λ]
    assert torch.equal(out.codes, threshold(out.states, 0.5, "hard", nonneg))


def test_warp_lca_with_zero_iterations_is_the_thresholded_prediction():
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, tau=10)
    warp = WarpLCA(lca, iterations=5, hidden=8)
    torch.nn.init.normal_(warp.predictor[-1].weight, std=0.1)      # a non-trivial predictor
    s = standardize(_images(4))
    guess = warp.predict_states(s)
    out = warp.encode(s, iterations=0)
    assert torch.equal(out.codes, lca.transfer(guess))
    assert torch.equal(out.states, guess)
    # and k iterations from the guess equal LCA started from it
    assert torch.equal(warp.encode(s, iterations=3).codes, lca.encode(s, guess, iterations=3).codes)


def test_untrained_predictor_starts_from_the_drive():
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2)
    warp = WarpLCA(lca)
    s = standardize(_images(2))
    assert torch.equal(warp.predict_states(s), lca.drive(s))


def test_predictor_training_reduces_the_regression_error_and_the_warm_energy():
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, tau=10, iterations=60)
    warp = WarpLCA(lca, iterations=3, hidden=16)
    images = (_images(256, seed=1) * 255).to(torch.uint8)
    s = standardize(_images(64, seed=2))
    assert warp.encode(s).trace == {}                  # traces only when asked
    e_before = lca.energy(s, warp.encode(s).codes).mean()
    info = train_predictor(warp, images, teacher_iterations=60, epochs=6, batch_size=32, lr=3e-3)
    assert info["history"][-1]["mse"] < 0.7 * info["mse_of_untrained_guess_b"]
    with torch.no_grad():
        e_after = lca.energy(s, warp.encode(s).codes).mean()
    assert e_after < e_before                         # held-out images: a better warm start


def _neighbour_correlation(s):
    a, b = s[..., :, :-1].flatten(), s[..., :, 1:].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_whitening_filter_decorrelates_neighbouring_pixels_at_unit_variance():
    from models.front_ends.lca import whiten, whitening_filter

    train = (_images(600, seed=3) * 255).to(torch.uint8)
    filt = whitening_filter(train, size=9, eps=0.05)
    assert filt.shape == (3, 3, 9, 9)
    held_out = standardize(_images(200, seed=4))
    raw, white = _neighbour_correlation(held_out), _neighbour_correlation(whiten(held_out, filt))
    # natural images are strongly correlated; eps = 0.05 leaves a little (0.30 measured)
    assert raw > 0.8 and abs(white) < 0.4, (raw, white)
    assert 0.8 < whiten(standardize(train.float() / 255), filt).std() < 1.2
    lca = LCA(features=8, whitening=filt)
    x = _images(4)
    assert torch.equal(lca.prepare(x), whiten(standardize(x), filt))
    assert "whitening" in lca.state_dict() and "whitening" not in LCA(features=8).state_dict()
    with pytest.raises(ValueError, match="whitening filter"):
        LCA(features=8, whitening=torch.zeros(3, 3, 4, 4))


def test_dictionary_learning_lowers_the_energy_keeps_unit_atoms_and_is_seeded():
    images = (_images(200) * 255).to(torch.uint8)

    def run():
        torch.manual_seed(0)
        lca = LCA(features=16, kernel_size=7, stride=2, tau=10, iterations=20)
        hist = learn_dictionary(lca, images, steps=30, batch_size=16, lr=0.05, seed=3)
        return lca, hist

    lca, hist = run()
    assert sum(hist["energy"][-5:]) < 0.8 * sum(hist["energy"][:5])
    assert torch.allclose(lca.dictionary.flatten(1).norm(dim=1), torch.ones(16), atol=1e-5)
    assert torch.equal(run()[0].dictionary, lca.dictionary)


def test_gradients_flow_through_the_unrolled_iterations():
    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, tau=10, iterations=10)
    x = _images(2).requires_grad_(True)
    lca(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="odd"):
        LCA(kernel_size=4)
    with pytest.raises(ValueError, match="threshold"):
        LCA(threshold="medium")
    with pytest.raises(ValueError, match="dictionary shape"):
        LCA(features=4, dictionary=torch.randn(5, 3, 7, 7))
    lca = LCA(features=4)
    with pytest.raises(ValueError, match="initial states"):
        lca.encode(torch.randn(1, 3, 32, 32), torch.zeros(1, 4, 8, 8))


LCAPT = os.environ.get("LCAPT_PATH")


@pytest.mark.skipif(not LCAPT, reason="oracle: set LCAPT_PATH to a checkout of lanl/lca-pytorch")
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_codes_match_lanl_lca_pytorch(kind, tmp_path):
    """lcapt's LCAConv2D (explicit inhibition conv) and ours (residual form) agree."""
    sys.path.insert(0, LCAPT)
    from lcapt.lca import LCAConv2D

    torch.manual_seed(0)
    ours = LCA(features=16, kernel_size=7, stride=2, lambda_=0.25, tau=20, threshold=kind,
               padding="valid")
    ref = LCAConv2D(16, 3, str(tmp_path), kernel_size=7, stride=2, lambda_=0.25, tau=20,
                    lca_iters=41, transfer_func=f"{kind}_threshold", return_vars=["acts", "states"],
                    pad="valid")
    ref.assign_weight_values(ours.dictionary.clone())
    x = _images(4)
    acts, states = ref(x)
    # lcapt returns the acts computed at the start of its last iteration: T(u_40)
    out = ours.encode(ours.prepare(x), iterations=40)
    scale = states.abs().max()
    assert torch.allclose(out.codes, acts, atol=2e-4 * scale)
    assert (out.codes != 0).eq(acts != 0).float().mean() > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lca-resnet8", "warp-lca-resnet8"])
def test_train_cli_trains_a_front_end_model_end_to_end(name, tmp_path):
    """`harness train` on 800 images: predictor (WARP), coding, backbone, checkpoint, card."""
    import json

    from conftest import make_small_cifar, run_cli

    make_small_cifar(tmp_path)
    out = tmp_path / name
    proc = run_cli("train", "--model", name, "--epochs", "1", "--batch-size", "100",
                   "--data-dir", str(tmp_path), "--out", str(out), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["test"]["n"] == 200 and meta["data"]["train_n"] == 800
    assert meta["recipe"]["flip"] is False
    assert meta["model"]["front_end"]["kind"] == name.removesuffix("-resnet8")
    assert ("predictor" in meta) == name.startswith("warp")
    if "predictor" in meta:
        p = meta["predictor"]
        assert p["n"] == 800 and p["history"][-1]["mse"] < p["mse_of_untrained_guess_b"]
    card = out.with_suffix(".md").read_text()
    assert f"evaluation runs {meta['model']['front_end']['iterations']} LCA iterations" in card
    from harness.data import load_cifar10_arrays
    from models.training import evaluate_accuracy
    from models.zoo import load_model

    model = load_model(out)      # dictionary, predictor and backbone all round-trip
    test = load_cifar10_arrays("test", data_dir=tmp_path)
    acc = evaluate_accuracy(model, torch.from_numpy(test.images), torch.from_numpy(test.labels))
    assert acc == meta["test"]["accuracy"]


def test_unrolled_stage_lowers_the_error_left_after_k_iterations():
    """Stage 2 of the predictor's training regresses u(K) onto u*: on held-out images the state
    after K iterations is closer to u* than with the stage-1 (u(0) regression) predictor."""
    import copy

    from models.front_ends.warp_lca import cold_states

    torch.manual_seed(0)
    lca = LCA(features=16, kernel_size=7, stride=2, tau=10, iterations=60)
    images = (_images(512, seed=1) * 255).to(torch.uint8)
    held_out = _images(128, seed=2)
    s, target = lca.prepare(held_out), cold_states(lca, held_out, iterations=60)

    def error_after(warp, k=5):
        with torch.no_grad():
            return (warp.encode(s, iterations=k).states - target).square().mean().item()

    stage1 = WarpLCA(lca, iterations=5, hidden=16)
    train_predictor(stage1, images, teacher_iterations=60, epochs=6, batch_size=32, lr=3e-3)
    both = copy.deepcopy(stage1)
    torch.manual_seed(0)
    info = train_predictor(both, images, teacher_iterations=60, epochs=0, batch_size=32,
                           unroll_epochs=3, unroll_lr=1e-3)
    assert info["unroll_iterations"] == 5 and info["history"][-1]["unrolled"] == 5
    assert error_after(both) < 0.9 * error_after(stage1)      # 0.82x measured


def test_dictionary_checkpoint_round_trip_and_corruption(tmp_path):
    from conftest import make_small_cifar
    from harness.errors import HarnessError
    from models.training import learn_and_save_dictionary
    from models.zoo import dictionary_lca, load_dictionary, load_model

    make_small_cifar(tmp_path)
    stem = tmp_path / "dict"
    meta = learn_and_save_dictionary(out=stem, data_dir=tmp_path, steps=3, batch_size=16,
                                     iterations=10)
    tensors, read = load_dictionary(stem)
    atoms = tensors["dictionary"]
    assert atoms.shape == (64, 3, 7, 7) and read == meta
    assert tensors["whitening"].shape == (3, 3, 9, 9)
    assert meta["settings"]["whitening"]["size"] == 9
    assert torch.allclose(atoms.flatten(1).norm(dim=1), torch.ones(64), atol=1e-5)
    assert meta["training"]["steps"] == 3 and meta["data"]["train_fingerprint"]
    # one checkpoint format: the reader of model checkpoints refuses it by kind, and the
    # zoo's LCA layer takes its τ from it
    assert meta["format_version"] == 1 and meta["kind"] == "lca-dictionary"
    assert meta["evaluation"]["tau"] > meta["operator_norm_sq"] / 2
    lca = dictionary_lca(stem, iterations=5)
    assert lca.tau == meta["evaluation"]["tau"]
    assert torch.allclose(lca.dictionary, atoms, atol=1e-6)
    with pytest.raises(HarnessError, match="is a 'lca-dictionary' checkpoint, not a 'model'"):
        load_model(stem)
    blob = bytearray(stem.with_suffix(".safetensors").read_bytes())
    blob[-1] ^= 0xFF
    stem.with_suffix(".safetensors").write_bytes(bytes(blob))
    with pytest.raises(HarnessError, match="sha256"):
        load_dictionary(stem)
    with pytest.raises(HarnessError, match="checkpoint metadata .* not found"):
        load_dictionary(tmp_path / "missing")
