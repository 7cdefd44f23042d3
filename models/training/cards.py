"""What a training run writes: the checkpoint with its training metadata
(:func:`write_trained`) and the model card ``STEM.md`` (:func:`model_card`), a summary of the
metadata that the bundled ``models/weights/*.md`` are.

Example::

    meta = write_trained(ema, "runs/resnet8", name="resnet8", summary=summary, accuracy=acc,
                         train_set=train_set, test_set=test_set)
    print(model_card(meta))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from models.checkpoints import checkpoint_file, save_checkpoint
from models.training.recipe import DEFAULTS

# Recipe settings a card lists as front-end settings when they differ from the defaults (the
# registry entries' ``recipe`` meta sets them).
_FRONT_END = {k: DEFAULTS[k] for k in ("sugar", "tv2", "logit_scale", "lipschitz_projection",
                                       "spline_lr_scale", "label_smoothing", "weight_decay")}


def _front_end(rec: dict) -> str:
    """The non-default front-end recipe settings, e.g. 'tv2 0.0001, logit_scale 10.0'."""
    return ", ".join(f"{k} {rec[k]}" for k, default in _FRONT_END.items()
                     if rec.get(k, default) != default)


def _coded_lines(meta: dict) -> list[str]:
    """Model-card lines of a sparse-coding front end (trained by models.training.coded)."""
    fe = meta.get("model", {}).get("front_end") or {}
    if not fe:
        return []
    lines = [
        f"- Front end: {fe['kind']} -- convolutional LCA, {fe['features']} atoms of "
        f"{fe['kernel_size']}x{fe['kernel_size']} at stride {fe['stride']} (dictionary "
        f"`{fe['dictionary']}`, learned unsupervised and fixed), {fe['threshold']} threshold "
        f"λ = {fe['lambda']}, τ = {fe['tau']}, per-sample standardised"
        f"{' and ZCA-whitened' if fe.get('whitening') else ''} input; **evaluation runs "
        f"{fe['iterations']} LCA iterations** per image"
        + (" from the predictor's warm start." if fe["kind"] == "warp-lca" else
           " from zero (cold start)."),
        f"- The backbone was trained on codes of the train split computed once "
        f"({meta['coding_time_s']} s, included in the training time); augmentation is a shift "
        f"of the code grid by up to {meta['recipe']['crop_pad']} px (no flips).",
    ]
    pred = meta.get("predictor")
    if pred:
        stage1 = [h for h in pred["history"] if "unrolled" not in h]
        stage2 = [h for h in pred["history"] if "unrolled" in h]
        lines.append(
            f"- Predictor: regressed onto cold LCA's states u* after {pred['teacher_iterations']} "
            f"iterations for {pred['n']:,} training images (teacher {pred['teacher_time_s']} s, "
            f"fit {pred['train_time_s']} s): {pred['epochs']} epochs Adam lr {pred['lr']} on "
            f"u(0), mean squared error {stage1[-1]['mse']} against "
            f"{pred['mse_of_untrained_guess_b']} for the untrained guess u(0) = b"
            + (f"; then {len(stage2)} epochs through the unrolled iterations on the first "
               f"{pred['unroll_n']:,} images (Adam lr {pred['unroll_lr']}), mean squared error "
               f"of u({stage2[-1]['unrolled']}) {stage2[-1]['mse']}." if stage2 else "."))
    return lines


def model_card(meta: dict) -> str:
    """The model card (markdown) of a checkpoint written by :func:`write_trained`."""
    rec = meta["recipe"]
    hist = meta["history"]
    lines = [
        f"# {meta['factory']} -- bundled checkpoint",
        "",
        f"- Architecture: {meta['model']['arch']}, activation {meta['model']['activation']}, "
        f"{meta['num_params']:,} parameters, "
        + ("per-sample standardisation"
           + (" and ZCA whitening" if meta["model"]["front_end"].get("whitening") else "")
           + " in the front end"
           if meta.get("model", {}).get("front_end") else
           f"normalisation inside the model (mean {meta['model']['mean']}, std "
           f"{meta['model']['std']})") + ", inputs in [0, 1].",
        f"- Clean accuracy on the full CIFAR-10 test split ({meta['test']['n']:,} images): "
        f"**{100 * meta['test']['accuracy']:.2f} %** (EMA weights, no test-time augmentation).",
        f"- Training: {rec['epochs']} epochs, batch {rec['batch_size']}, SGD Nesterov "
        f"(momentum {rec['momentum']}), one-cycle lr peak {rec['lr']} (warm-up "
        f"{rec['warmup']:.0%}), weight decay {rec['weight_decay']} on conv/linear weights, label "
        f"smoothing {rec['label_smoothing']}, random crop (reflect pad {rec['crop_pad']})"
        f"{' + flip' if rec.get('flip', True) else ''}, "
        f"EMA decay {rec['ema_decay']}, {'bf16 autocast' if rec.get('bf16') else 'fp32'}, "
        f"seed {rec['seed']}.",
        *([f"- Front-end settings: {_front_end(rec)}."] if _front_end(rec) else []),
        *_coded_lines(meta),
        *([f"- Certified l2 Lipschitz bound from pixels in [0, 1] to logits (product of the "
           f"layers' rigorous circular-embedding norm bounds and the splines' max slopes): "
           f"{meta['lipschitz_upper_bound']:.6f}."]
          if "lipschitz_upper_bound" in meta else []),
        f"- Measured training time: {meta['train_time_s'] / 60:.1f} min (plus "
        f"{meta['eval_time_s']:.0f} s of test-split monitoring) on "
        f"{meta['hardware']['threads']} CPU threads ({meta['hardware']['cpu']}), torch "
        f"{meta['hardware']['torch']}, device {meta['hardware']['device']}.",
        f"- Training data: {meta['data']['train_n']:,} images from `{meta['data']['source']}`, "
        f"sha256 `{meta['data']['train_fingerprint']}`; test fingerprint "
        f"`{meta['data']['test_fingerprint']}`.",
        *([f"- Data note: {meta['data']['note']}"] if meta["data"].get("note") else []),
        f"- Weights: `{meta['weights_file']}`, sha256 `{meta['sha256']}`.",
        "",
        "Per-epoch log (EMA accuracy on the test split):",
        "",
        "| epoch | train loss | test acc | elapsed (s) |",
        "|---:|---:|---:|---:|",
    ]
    for h in hist:
        acc = f"{100 * h['eval_acc_ema']:.2f} %" if "eval_acc_ema" in h else "-"
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {acc} | {h['elapsed_s']} |")
    flags = (f"--epochs {rec['epochs']} --batch-size {rec['batch_size']} --lr {rec['lr']} "
             f"--seed {rec['seed']}" + ("" if rec.get("bf16", False) else " --fp32"))
    if rec.get("sugar"):
        flags += f" --sugar {rec['sugar']}"   # the other front-end settings come with the model
    lines += ["", f"Reproduce: `python -m harness train --model {meta['factory']} {flags} "
              "--data-dir DATA --out STEM` (seeded; tests/test_train.py checks that a short run "
              "of the recipe repeats bit-exactly on one machine).", ""]
    return "\n".join(lines)


def write_trained(model: nn.Module, out: str, *, name: str, summary: dict, accuracy: float,
                  train_set, test_set, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Save a trained model as ``out.safetensors``/``out.json`` with its training summary, test
    accuracy and data fingerprints, write the model card ``out.md``; returns the metadata."""
    extra = {
        **summary,
        "test": {"n": len(test_set.labels), "accuracy": accuracy},
        "data": {
            "source": Path(train_set.source).name,
            "train_n": len(train_set.labels),
            "train_fingerprint": train_set.fingerprint,
            "test_fingerprint": test_set.fingerprint,
        },
    }
    meta = save_checkpoint(model, out, factory=name, extra=extra)
    checkpoint_file(out, ".md").write_text(model_card(meta))
    log(f"test accuracy {accuracy:.4f}; wrote {out}.safetensors/.json/.md")
    return meta
