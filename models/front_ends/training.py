"""Training of the sparse-coding front ends and of classifiers on their codes.

Three seeded steps, each timed and recorded in its checkpoint's metadata:

1. :func:`learn_and_save_dictionary` -- unsupervised LCA dictionary learning on the CIFAR-10
   train split (``models/weights/lca-dictionary.safetensors`` + ``.json``)::

       python -m models.front_ends.training dictionary --data-dir DATA --out models/weights/lca-dictionary

2. :func:`train_predictor` -- WARP-LCA's predictor, regressed onto converged cold-LCA states.
3. :func:`train_and_save_coded` -- the ResNet-8 backbone trained on the front end's codes of the
   train split with the shared recipe of :mod:`models.train` (``harness train --model
   lca-resnet8`` / ``warp-lca-resnet8`` end up here).

The codes of the train split are computed once per run (the front end is frozen while the
backbone learns), so augmentation happens in code space: a random shift of the code grid by up
to ``crop_pad // stride`` cells, which is exactly a shift of the image by a multiple of the
stride away from the borders. Horizontal flips are not used: a flip does not commute with a
stride-2 code grid centred on even pixels.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from harness.errors import HarnessError
from models.front_ends.lca import LCA, learn_dictionary, whitening_filter

DICTIONARY_STEM = Path(__file__).resolve().parents[1] / "weights" / "lca-dictionary"

# The dictionary of record: 64 atoms of 7x7 at stride 2 (code 64x16x16, 5.3x overcomplete),
# lcapt's λ = 0.25, on per-sample standardised images whitened by a 9x9 ZCA filter estimated
# from 10,000 train images (WHITENING_SETTINGS), learned with τ = 10. Without whitening the
# learned atoms are smooth and coherent (||Φ||² = 64.5 forced τ = 33, and WARP-LCA needed 47
# iterations to come within 5 % of converged energy); whitened, ||Φ||² = 14.25 and the models
# run τ = models.zoo.LCA_TAU >= ||Φ||²/2.
DICTIONARY_SETTINGS = {"features": 64, "kernel_size": 7, "stride": 2, "lambda_": 0.25, "tau": 10.0}
WHITENING_SETTINGS = {"size": 9, "eps": 0.05, "n_images": 10_000}


def learn_and_save_dictionary(
    *, out: str | Path = DICTIONARY_STEM, data_dir=None, steps: int = 300, batch_size: int = 128,
    lr: float = 0.01, iterations: int = 60, seed: int = 0, device: str = "cpu",
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Learn the LCA dictionary on the train split and write ``out.safetensors``/``out.json``."""
    from safetensors.torch import save

    from harness.data import load_cifar10_arrays
    from models.checkpoints import _atomic_write_bytes, checkpoint_file

    train = load_cifar10_arrays("train", data_dir=data_dir)
    torch.manual_seed(seed)
    start = time.perf_counter()
    white = {k: v for k, v in WHITENING_SETTINGS.items() if k != "n_images"}
    filt = whitening_filter(torch.from_numpy(train.images[:WHITENING_SETTINGS["n_images"]]),
                            seed=seed, **white)
    lca = LCA(**DICTIONARY_SETTINGS, iterations=iterations, whitening=filt)
    history = learn_dictionary(lca, torch.from_numpy(train.images), steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, device=device, log=log)
    seconds = time.perf_counter() - start
    blob = save({"dictionary": lca.dictionary.detach().cpu().contiguous(),
                 "whitening": filt.contiguous()})
    _atomic_write_bytes(checkpoint_file(out, ".safetensors"), blob)
    meta = {
        "kind": "lca-dictionary",
        "settings": {**DICTIONARY_SETTINGS, "threshold": "soft", "nonneg": True,
                     "standardize_input": True, "whitening": WHITENING_SETTINGS},
        "training": {"steps": steps, "batch_size": batch_size, "lr": lr,
                     "lca_iterations": iterations, "seed": seed, "flip": True,
                     "time_s": round(seconds, 1), "device": device,
                     "threads": torch.get_num_threads(), "torch": torch.__version__},
        "final": {k: round(sum(v[-20:]) / len(v[-20:]), 4) for k, v in history.items()
                  if isinstance(v, list)},
        "first": {k: round(v[0], 4) for k, v in history.items() if isinstance(v, list)},
        "operator_norm_sq": round(lca.operator_norm(), 4),
        "data": {"source": Path(train.source).name, "train_fingerprint": train.fingerprint},
        "sha256": hashlib.sha256(blob).hexdigest(),
        "weights_file": checkpoint_file(out, ".safetensors").name,
    }
    _atomic_write_bytes(checkpoint_file(out, ".json"), (json.dumps(meta, indent=2) + "\n").encode())
    log(f"dictionary learned in {seconds:.0f} s; wrote {out}.safetensors/.json")
    return meta


def load_dictionary(stem: str | Path = DICTIONARY_STEM) -> tuple[dict[str, torch.Tensor], dict]:
    """({"dictionary": atoms, "whitening": filter or absent}, metadata) of a dictionary
    checkpoint, sha256-verified; the tensors are :class:`LCA`'s keyword arguments."""
    from models.checkpoints import checkpoint_file, read_safetensors

    meta_path = checkpoint_file(stem, ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read dictionary metadata {str(meta_path)!r}: {exc}") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("weights_file"), str)
            and isinstance(meta.get("sha256"), str)):
        raise HarnessError(f"dictionary metadata {str(meta_path)!r} lacks weights_file/sha256")
    state = read_safetensors(meta_path.with_name(Path(meta["weights_file"]).name),
                             sha256=meta["sha256"])
    if "dictionary" not in state:
        raise HarnessError(f"{meta['weights_file']!r} holds no 'dictionary' tensor")
    return {k: v for k, v in state.items() if k in ("dictionary", "whitening")}, meta


# WARP-LCA's predictor: regressed onto cold LCA's states after `teacher_iterations` (twice
# the cold model's evaluation count: closer to convergence) of the first `teacher_n` training
# images; then through the model's unrolled iterations on the first `unroll_n` of them.
PREDICTOR_SETTINGS = {"teacher_n": 10_000, "teacher_iterations": 200, "epochs": 12,
                      "batch_size": 128, "lr": 2e-3, "unroll_epochs": 3, "unroll_n": 5120,
                      "unroll_lr": 1e-3}


@torch.no_grad()
def encode_images(front_end, images: torch.Tensor, *, batch_size: int = 128,
                  device: str = "cpu", dtype=torch.float16) -> torch.Tensor:
    """Codes of uint8 images, stored as ``dtype`` on the CPU (float16: 1.6 GB for the train split)."""
    front_end = front_end.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(front_end(x).to(dtype).cpu())
    return torch.cat(out)


@torch.no_grad()
def _accuracy_on_codes(backbone, codes, labels, *, device: str, batch_size: int = 1000) -> float:
    backbone.eval()
    correct = 0
    for c, y in zip(codes.split(batch_size), labels.split(batch_size)):
        correct += (backbone(c.to(device).float()).argmax(1).cpu() == y).sum().item()
    return correct / len(labels)


def train_and_save_coded(
    *, model_name: str, out: str, data_dir=None, recipe=None, device: str = "cpu",
    log: Callable[[str], None] = lambda msg: None, on_step=None, eval_every: int = 4,
) -> dict:
    """Train a front-end classifier (``lca-resnet8``, ``warp-lca-resnet8``): the bundled
    dictionary stays fixed; WARP-LCA's predictor is fitted first; then the train split is coded
    once and the backbone trained on the codes with ``recipe``. Writes ``out.safetensors``,
    ``out.json`` and the model card ``out.md``; returns the metadata.

    ``train_time_s`` counts everything that produces the weights: predictor (teacher states
    included), coding the train split and the backbone's optimisation. Coding the test split
    for monitoring and the final full-model evaluation count as ``eval_time_s``.
    """
    from models.front_ends.warp_lca import WarpLCA, train_predictor
    from models.train import TrainRecipe, evaluate_accuracy, load_splits, train, write_trained
    from models.zoo import MODELS

    recipe = recipe or TrainRecipe()
    name = MODELS.resolve(model_name)
    train_set, test_set, (xtr, ytr, xte, yte) = load_splits(data_dir)
    torch.manual_seed(recipe.seed)
    model = MODELS.get(name)()
    front_end, backbone = model.front_end, model.backbone
    extra: dict = {}
    start = time.perf_counter()
    if isinstance(front_end, WarpLCA):
        settings = dict(PREDICTOR_SETTINGS)
        n = settings.pop("teacher_n")
        extra["predictor"] = train_predictor(front_end, xtr[:n], seed=recipe.seed,
                                             device=device, log=log, **settings)
    t_codes = time.perf_counter()
    codes_tr = encode_images(front_end, xtr, device=device)
    extra["coding_time_s"] = round(time.perf_counter() - t_codes, 1)
    log(f"coded the train split in {extra['coding_time_s']} s "
        f"(l0 {(codes_tr[:1000] != 0).float().mean().item():.4f})")
    prep_time = time.perf_counter() - start
    t_eval = time.perf_counter()
    codes_te = encode_images(front_end, xte, device=device)
    test_coding_time = time.perf_counter() - t_eval
    stride = front_end.lca.stride if isinstance(front_end, WarpLCA) else front_end.stride
    ema, summary = train(
        backbone, codes_tr, ytr, recipe=recipe, device=device, log=log, on_step=on_step,
        eval_every=eval_every, crop_pad=recipe.crop_pad // stride,
        evaluate=lambda m: _accuracy_on_codes(m, codes_te, yte, device=device),
    )
    del codes_tr
    model.backbone = ema.to("cpu").to(memory_format=torch.contiguous_format)
    model = model.eval()
    t_eval = time.perf_counter()
    acc = evaluate_accuracy(model, xte, yte, device=device)
    final_eval = time.perf_counter() - t_eval
    summary["train_time_s"] = round(summary["train_time_s"] + prep_time, 1)
    summary["eval_time_s"] = round(summary["eval_time_s"] + test_coding_time + final_eval, 1)
    extra.update(summary)
    return write_trained(model, out, name=name, summary=extra, accuracy=acc,
                         train_set=train_set, test_set=test_set, log=log)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.front_ends.training")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dictionary", help="learn the LCA dictionary (unsupervised)")
    d.add_argument("--data-dir")
    d.add_argument("--out", default=str(DICTIONARY_STEM))
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        learn_and_save_dictionary(out=args.out, data_dir=args.data_dir, steps=args.steps,
                                  seed=args.seed, device=args.device, log=print)
    except HarnessError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
