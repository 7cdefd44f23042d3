"""The model registry: keyword-only factories returning ``nn.Module`` with ``.meta``.

Names are ``<arch>`` for the ReLU model and ``<arch>-<activation>`` for the others
(``resnet8``, ``resnet8-gelu``, ``resnet20-silu``). Entry metadata:

* ``default`` -- part of the set ``harness run`` evaluates without ``--model``;
* ``weights`` -- stem of a bundled checkpoint in ``models/weights/`` (None: random init only);
* ``arch``, ``activation``, ``description``;
* ``recipe`` -- training-recipe settings the front end needs (TV2 weight, logit scale, ...),
  applied by ``harness train`` unless given on the command line.

Front ends: ``lca-resnet8`` (cold-start LCA, 100 iterations; bundled, not in the default set:
too slow for the main job) and ``warp-lca-resnet8`` (WARP-LCA, default set), see
:mod:`models.front_ends`.

Activations: ``relu`` (no suffix), ``gelu``, ``silu``, ``sugar-bsilu``, ``sugar-nelu``,
``deepspline`` on every architecture; ``deepspline-1lip`` on the ResNets only, built as a
:class:`~models.architectures.lipschitz.LipschitzResNet` (spectrally normalised, no BatchNorm)
so that the whole network is certifiably 1-Lipschitz.

Checkpoints: :func:`load_model` rebuilds any model checkpoint (``harness train`` output) from
its registry factory; :func:`load_dictionary` / :func:`dictionary_lca` read the LCA dictionary
checkpoint (``models/weights/lca-dictionary``), whose JSON holds the settings the front ends
run with, the evaluation τ included.

Add a model (a keyword-only factory returning a module with ``.meta``; a new activation is
registered first, see :mod:`models.activations`)::

    @MODELS.register("resnet8-mish", arch="resnet8", activation="mish", default=False, weights=None)
    def resnet8_mish(*, num_classes: int = 10) -> nn.Module:
        model = CifarResNet(blocks=(1, 1, 1), widths=(16, 32, 64), act="mish",
                            num_classes=num_classes)
        model.meta = ModelMeta(name="resnet8-mish", arch="resnet8", activation="mish",
                               num_classes=num_classes, factory="resnet8-mish")
        return model
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError
from harness.registry import Registry
from models.architectures import (
    CIFAR10_STD,
    VGG16,
    CifarResNet,
    CifarVGG,
    LipschitzResNet,
    ModelMeta,
)
from models.checkpoints import checkpoint_file, load_state_into, read_checkpoint
from models.front_ends import LCA, FrontEndClassifier, WarpLCA

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# arch -> (constructor, architectural kwargs, description)
_ARCHS: dict[str, tuple[type[nn.Module], dict, str]] = {
    "resnet8": (CifarResNet, {"blocks": (1, 1, 1), "widths": (16, 32, 64)},
                "CIFAR ResNet-8 (3 stages x 1 block, widths 16/32/64, 78k params), CPU-sized"),
    "resnet20": (CifarResNet, {"blocks": (3, 3, 3), "widths": (16, 32, 64)},
                 "CIFAR ResNet-20 (3 stages x 3 blocks, widths 16/32/64, 0.27M params)"),
    "resnet18": (CifarResNet, {"blocks": (2, 2, 2, 2), "widths": (64, 128, 256, 512)},
                 "CIFAR ResNet-18 (4 stages x 2 blocks, widths 64..512, 11M params), GPU-sized"),
    "vgg16": (CifarVGG, {"config": VGG16}, "VGG-16 with BatchNorm, GPU-sized"),
}
_ACTIVATIONS = ("relu", "gelu", "silu", "sugar-bsilu", "sugar-nelu", "deepspline")
# Front-end-specific recipe settings (everything else is the shared recipe,
# models.training.TrainRecipe).
_RECIPES: dict[str, dict] = {
    "deepspline": {"tv2": 1e-4},
    # A 1-Lipschitz network's logits differ by at most the input distance, so softmax needs a
    # temperature; the stored coefficients are kept projected so they equal the applied ones.
    # Spline coefficients get lr / 1000: their gradients sum over every position of a channel,
    # and without BatchNorm larger steps destabilise training. No weight decay: spectrally
    # normalised weights are scale-invariant, so decay only shrinks them and inflates the
    # effective learning rate (by ~16x over 24 epochs). No label smoothing: it caps the logit
    # margins, which are what a 1-Lipschitz network certifies (margin / sqrt(2) = l2 radius).
    "deepspline-1lip": {"tv2": 1e-4, "logit_scale": 16.0, "lipschitz_projection": True,
                        "spline_lr_scale": 1e-3, "label_smoothing": 0.0, "weight_decay": 0.0},
}
# (arch, activation) -> bundled weights stem; the trained checkpoints live in models/weights/.
# All six were trained with one recipe, seed and epoch budget (24 epochs, the most that keeps
# the slowest front end, the deep splines, within 15 minutes on the 2-core dev machine).
_BUNDLED = {("resnet8", act): "resnet8" if act == "relu" else f"resnet8-{act}"
            for act in ("relu", "gelu", "sugar-bsilu", "sugar-nelu", "deepspline",
                        "deepspline-1lip")}
# Entries evaluated by `harness run` when no --model is given: the bundled front ends.
_DEFAULT = set(_BUNDLED.values())


def _model_name(arch: str, act: str) -> str:
    return arch if act == "relu" else f"{arch}-{act}"


def _make_factory(name: str, arch: str, act: str) -> Callable[..., nn.Module]:
    cls, arch_kwargs, _ = _ARCHS[arch]
    lipschitz = act == "deepspline-1lip"
    if lipschitz:
        cls = LipschitzResNet

    extra = {"init_scale": 4.0} if lipschitz else {}   # see LipschitzResNet's init comment

    def factory(*, num_classes: int = 10) -> nn.Module:
        model = cls(**arch_kwargs, **extra, act=act, num_classes=num_classes)
        model.meta = ModelMeta(
            name=name, arch=arch, activation=act, num_classes=num_classes, factory=name,
            std=(1.0, 1.0, 1.0) if lipschitz else CIFAR10_STD,
            notes=("certifiably 1-Lipschitz in l2 from [0, 1] pixels to logits "
                   "(models.architectures.lipschitz_upper_bound)",) if lipschitz else (),
            factory_kwargs={} if num_classes == 10 else {"num_classes": num_classes},
            weights=_BUNDLED.get((arch, act)),
        )
        return model

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"{_ARCHS[arch][2]}; activation {act}. Inputs in [0, 1]."
    if lipschitz:
        factory.__doc__ += " Spectrally normalised, no BatchNorm, 1-Lipschitz."
    return factory


def _register_all() -> None:
    for arch, (cls, _, description) in _ARCHS.items():
        acts = _ACTIVATIONS + (("deepspline-1lip",) if cls is CifarResNet else ())
        for act in acts:
            name = _model_name(arch, act)
            text = f"{description}; {act}"
            if act == "deepspline-1lip":
                text += ("; 1-Lipschitz variant: spectrally normalised convs, averaged residuals, "
                         "no BatchNorm")
            MODELS.add(
                name, _make_factory(name, arch, act),
                arch=arch, activation=act, description=text,
                weights=_BUNDLED.get((arch, act)), default=name in _DEFAULT,
                recipe=dict(_RECIPES.get(act, {})),
            )


_register_all()

# -- sparse-coding front ends ----------------------------------------------------------------
# The learned dictionary is part of the architecture (fixed, unsupervised). Its checkpoint's
# JSON holds the LCA settings it was learned with, its measured ||Φ||² (operator_norm_sq) and
# the τ the models run with (evaluation.tau, inside ISTA's convergence range 1/τ < 2/||Φ||²):
# see the dictionary's JSON for the numbers. Iterations (stated in every model's
# .meta.front_end): cold LCA 100 (within 1 % of LCA-1000's energy, benchmarks/bench_lca.py);
# WARP-LCA 20 from the predicted state, the count its predictor was trained through.
DICTIONARY_STEM = WEIGHTS_DIR / "lca-dictionary"
DICTIONARY_KIND = "lca-dictionary"
LCA_ITERATIONS = 100
WARP_LCA_ITERATIONS = 20
# name -> (warm start?, default set?). Cold LCA costs ~100 iterations per image (~100 images/s
# on the 2-core dev machine), too slow for the main job's budget; WARP-LCA is in the default set.
_CODED = {"lca-resnet8": (False, False), "warp-lca-resnet8": (True, True)}
# The LCA settings a dictionary checkpoint records (its JSON's "settings") that build the layer.
_LCA_SETTINGS = ("features", "kernel_size", "stride", "lambda_", "threshold", "nonneg",
                 "standardize_input")


def load_dictionary(stem: str | os.PathLike = DICTIONARY_STEM) -> tuple[dict[str, torch.Tensor], dict]:
    """({"dictionary": atoms, "whitening": filter or absent}, metadata) of an LCA dictionary
    checkpoint, sha256-verified; the tensors are :class:`LCA`'s keyword arguments."""
    meta, state, weights = read_checkpoint(stem, kind=DICTIONARY_KIND)
    if "dictionary" not in state:
        raise HarnessError(f"{str(weights)!r} holds no 'dictionary' tensor")
    return {k: v for k, v in state.items() if k in ("dictionary", "whitening")}, meta


def dictionary_lca(stem: str | os.PathLike = DICTIONARY_STEM, *,
                   iterations: int = LCA_ITERATIONS) -> LCA:
    """The LCA layer of a dictionary checkpoint as the zoo's front ends run it: its atoms,
    whitening filter and settings, and the evaluation τ its JSON records."""
    tensors, meta = load_dictionary(stem)
    try:
        settings = {k: meta["settings"][k] for k in _LCA_SETTINGS}
        tau = float(meta["evaluation"]["tau"])
    except (KeyError, TypeError) as exc:
        raise HarnessError(f"dictionary metadata {str(checkpoint_file(stem, '.json'))!r} lacks "
                           f"{exc}") from None
    return LCA(**settings, tau=tau, iterations=iterations, **tensors)


def _coded_factory(name: str, warp: bool) -> Callable[..., nn.Module]:
    def factory(*, num_classes: int = 10) -> nn.Module:
        lca = dictionary_lca()
        front_end = WarpLCA(lca, iterations=WARP_LCA_ITERATIONS) if warp else lca
        backbone = CifarResNet(**_ARCHS["resnet8"][1], act="relu", num_classes=num_classes,
                               mean=None, std=None, in_channels=lca.features)
        model = FrontEndClassifier(front_end, backbone)
        iterations = WARP_LCA_ITERATIONS if warp else LCA_ITERATIONS
        model.meta = ModelMeta(
            name=name, arch="resnet8", activation="relu", num_classes=num_classes, factory=name,
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
            notes=("iterative front end: attacks must differentiate through the unrolled LCA "
                   "loop (plain autograd) or use BPDA",
                   "each image is standardised per sample (zero mean, unit variance) and "
                   "ZCA-whitened by the front end",
                   "whitening amplifies pixel noise: expect large drops under CIFAR-10-C's "
                   "noise corruptions (gaussian, shot, impulse)"),
            factory_kwargs={} if num_classes == 10 else {"num_classes": num_classes},
            weights=name,
            front_end={
                "kind": "warp-lca" if warp else "lca", "iterative": True,
                "iterations": iterations, "cold_iterations": LCA_ITERATIONS,
                "threshold": lca.threshold, "nonneg": lca.nonneg, "lambda": lca.lambda_,
                "tau": lca.tau, "features": lca.features, "kernel_size": lca.kernel_size,
                "stride": lca.stride, "dictionary": DICTIONARY_STEM.name,
                "whitening": None if lca.whitening is None else "zca",
                # the gradient paths attacks.gradients.gradient_paths(model) finds: the
                # front end's modes (the ReLU backbone declares none)
                "attack_gradient": list(front_end.gradient_modes),
            },
        )
        return model

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = (("WARP-LCA (learned warm start + few LCA iterations)" if warp else
                        "cold-start convolutional LCA") +
                       " sparse-coding front end (the bundled dictionary: 64 atoms 7x7, "
                       "stride 2) + ResNet-8 on the codes. Inputs in [0, 1].")
    return factory


for _name, (_warp, _default) in _CODED.items():
    MODELS.add(
        _name, _coded_factory(_name, _warp), arch="resnet8", activation="relu",
        front_end="warp-lca" if _warp else "lca", weights=_name, default=_default,
        description=("WARP-LCA front end (predicted start, "
                     f"{WARP_LCA_ITERATIONS} LCA iterations)" if _warp else
                     f"LCA front end (cold start, {LCA_ITERATIONS} iterations; not in the "
                     "default set: too slow for the main job)") +
                    " + ResNet-8 on 64x16x16 sparse codes",
        # Codes are coded once per run; flips do not commute with the stride-2 code grid.
        recipe={"flip": False},
    )


def weights_path(name: str) -> Path | None:
    """The bundled checkpoint stem for a registered model, or None."""
    stem = MODELS.meta(name).get("weights")
    return None if stem is None else WEIGHTS_DIR / stem


def create_model(name: str, *, pretrained: bool = False, device: str = "cpu") -> nn.Module:
    """Build a registered model, optionally with its bundled weights, in eval mode.

    Args:
        name: registry name or alias (``harness ls models``).
        pretrained: load the bundled checkpoint (sha256-verified, strict).
        device: where to put the model.

    Raises:
        HarnessError: unknown name, or ``pretrained`` for a model without bundled weights.
    """
    name = MODELS.resolve(name)
    if not pretrained:
        return MODELS.get(name)().to(device).eval()
    stem = weights_path(name)
    if stem is None:
        raise HarnessError(
            f"model {name!r} has no bundled weights; train it (harness train --model {name}) "
            "or pass --weights"
        )
    return load_model(stem, device=device)


def load_model(path: str | os.PathLike, *, device: str = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint written by
    :func:`models.checkpoints.save_checkpoint`: the registry factory with the recorded
    ``factory_kwargs``, then the sha256-verified weights, loaded strictly.

    Returns:
        The model in eval mode on ``device``, with ``model.checkpoint`` set to the metadata.
    """
    meta, state, weights = read_checkpoint(path)
    factory = MODELS.get(meta["factory"])
    try:
        model = factory(**meta.get("factory_kwargs", {}))
    except TypeError as exc:
        raise HarnessError(f"checkpoint {str(checkpoint_file(path, ''))!r}: bad factory_kwargs: "
                           f"{exc}") from None
    load_state_into(model, state, source=str(weights))
    model.checkpoint = meta
    return model.to(device).eval()


def list_models(pattern: str = "*", *, exclude: str | tuple[str, ...] = (),
                pretrained: bool | None = None, default: bool | None = None) -> list[str]:
    """Sorted registry names matching ``pattern`` (fnmatch), optionally filtered by flags."""

    def keep(entry) -> bool:
        if pretrained is not None and (entry.meta.get("weights") is not None) != pretrained:
            return False
        return default is None or bool(entry.meta.get("default")) == default

    return MODELS.names(pattern, exclude=exclude, where=keep)
