"""Spectrally normalised layers and the certifiably 1-Lipschitz ResNet."""

import pytest
import torch

import models
from models.architectures import LipschitzResNet, SNConv2d, SNLinear, lipschitz_upper_bound
from models.architectures.lipschitz import circular_norm_bound


def _dense_matrix(fn, in_shape):
    """The matrix of a linear map on tensors of ``in_shape`` (columns = images of basis vectors)."""
    n = int(torch.tensor(in_shape).prod())
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    return fn(basis).reshape(n, -1).t()


@pytest.mark.parametrize("stride, padding, k, hw", [(1, 1, 3, 6), (2, 1, 3, 6), (2, 0, 1, 6),
                                                   (2, 1, 3, 7), (1, 1, 3, 12), (2, 1, 3, 12)])
def test_conv_operator_norms(stride, padding, k, hw):
    """Power iteration on conv/adjoint gives the zero-padded operator's largest singular value
    (from the explicit matrix), not the kernel-matrix norm; the circular-embedding bound is
    above it and close; an evaluated layer has norm <= 1."""
    torch.manual_seed(0)
    conv = SNConv2d(3, 4, k, stride=stride, padding=padding, input_hw=(hw, hw)).double()
    w = conv.weight.detach()
    mat = _dense_matrix(lambda v: torch.nn.functional.conv2d(v, w, None, stride, padding),
                        (3, hw, hw))
    exact = torch.linalg.matrix_norm(mat, ord=2).item()
    assert conv.operator_norm() == pytest.approx(exact, rel=1e-5)
    kernel_norm = torch.linalg.matrix_norm(w.reshape(4, -1), ord=2).item()
    if k == 3:
        assert abs(kernel_norm - exact) > 1e-3 * exact   # the shortcut would be wrong
    bound = circular_norm_bound(conv, w)
    assert exact <= bound * (1 + 1e-12)
    assert bound <= exact * (1.15 if hw < 12 else 1.03)   # tight once the grid is not tiny
    conv.eval()
    normalised = _dense_matrix(lambda v: conv(v) - conv.bias.view(1, -1, 1, 1), (3, hw, hw))
    assert exact / bound - 1e-9 <= torch.linalg.matrix_norm(normalised, ord=2).item() <= 1 + 1e-9


def test_linear_norm_and_training_updates():
    torch.manual_seed(0)
    lin = SNLinear(7, 5)
    exact = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    lin.train()
    for _ in range(100):  # one power iteration per training forward converges
        lin(torch.randn(2, 7))
    assert lin.sigma.item() == pytest.approx(exact, rel=1e-4)
    lin.eval()
    w = lin.normalized_weight()
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, rel=1e-5)
    assert circular_norm_bound(lin, lin.weight) == pytest.approx(exact, rel=1e-6)
    with torch.no_grad():
        lin.weight.mul_(3)   # a changed weight invalidates the cached evaluation norm
    assert torch.linalg.matrix_norm(lin.normalized_weight(), ord=2).item() == pytest.approx(1.0, rel=1e-5)


def _jacobian_norm(model, x, iters=60):
    """Largest singular value of the input-to-logits Jacobian at x (power iteration)."""
    from torch.autograd.functional import jvp, vjp

    v = torch.randn_like(x)
    v /= v.norm()
    for _ in range(iters):
        jv = jvp(model, x, v)[1]
        v = vjp(model, x, jv)[1]
        v /= v.norm()
    return jvp(model, x, v)[1].norm().item()


def test_one_lipschitz_resnet_is_one_lipschitz_on_real_images():
    from harness.data import load_sample
    from models.training import TrainRecipe, train

    s = load_sample()
    images = torch.from_numpy(s.images)
    torch.manual_seed(0)
    model = models.create_model("resnet8-deepspline-1lip")
    assert isinstance(model, LipschitzResNet)
    # a few real optimisation steps, so the splines and weights are no longer at their init
    recipe = TrainRecipe(epochs=1, batch_size=100, lr=0.6, logit_scale=10.0, tv2=1e-4,
                         lipschitz_projection=True, spline_lr_scale=1e-2)
    model, _ = train(model, images[:500], torch.from_numpy(s.labels[:500]).long(), recipe=recipe)
    model = model.double()
    bound = lipschitz_upper_bound(model)              # rigorous (circular bounds)
    assert 0.5 < bound <= 1.0 + 1e-6
    x = images[500:532].double() / 255
    y = images[532:564].double() / 255
    with torch.no_grad():
        ratio = ((model(x) - model(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1))
    assert (ratio <= bound + 1e-6).all()
    for i in range(3):
        assert _jacobian_norm(model, x[i:i + 1]) <= bound + 1e-6


def test_upper_bound_refuses_other_models():
    with pytest.raises(TypeError, match="LipschitzResNet"):
        lipschitz_upper_bound(models.create_model("resnet8"))


def test_bundled_one_lipschitz_model_is_certified():
    from models.checkpoints import read_meta
    from models.zoo import weights_path

    name = "resnet8-deepspline-1lip"
    if weights_path(name) is None:
        pytest.skip("no bundled 1-Lipschitz checkpoint")
    model = models.create_model(name, pretrained=True)
    bound = lipschitz_upper_bound(model)
    assert bound <= 1.0 + 1e-6
    assert bound == pytest.approx(read_meta(weights_path(name))["lipschitz_upper_bound"],
                                  rel=1e-6)
