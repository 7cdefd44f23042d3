"""The batched prediction loop every suite and the training monitor share (foundation layer).

Example::

    pred, loss = predict(model, images_u8, labels, device="cpu", dtype=torch.float32,
                         batch_size=250)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.records import NO_PREDICTION


def predict(model, images_u8: torch.Tensor, labels: torch.Tensor, *, device: str, dtype,
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, loss) for uint8 images (or float images already in [0, 1], e.g. adversarial
    ones), batched under inference mode; one host sync at the end.

    Images are converted to ``dtype`` in [0, 1] and channels_last per batch on the device.
    An example whose logits are not all finite (NaN or +-Inf, e.g. an overflow in float16)
    has no prediction: ``pred`` is :data:`~harness.records.NO_PREDICTION` (never a label, so
    never counted correct) and ``loss`` is NaN. ``argmax`` alone would pick a NaN's index.
    """
    dtype = dtype or torch.float32
    preds, losses = [], []
    with torch.inference_mode():
        for xb, yb in zip(images_u8.split(batch_size), labels.split(batch_size)):
            pred, loss = outcomes(model(prepare_batch(xb, device=device, dtype=dtype)),
                                  yb.to(device, non_blocking=True))
            preds.append(pred)
            losses.append(loss)
    return torch.cat(preds).cpu(), torch.cat(losses).cpu()


def prepare_batch(images: torch.Tensor, *, device, dtype) -> torch.Tensor:
    """A batch as the model takes it: on ``device`` in ``dtype``, uint8 scaled to [0, 1]
    (float images are taken as already in [0, 1]), channels_last when 4-D."""
    scaled = images.is_floating_point()
    x = images.to(device, non_blocking=True).to(dtype)
    x = x if scaled else x.div_(255)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def top1(logits: torch.Tensor) -> torch.Tensor:
    """The argmax per row, or :data:`~harness.records.NO_PREDICTION` where the logits are not
    all finite (``argmax`` alone would pick a NaN's index). The one rule the suites and the
    attacks share."""
    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), NO_PREDICTION)


def outcomes(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, loss) per example of a batch of logits: :func:`top1` and the cross-entropy
    (NaN where the logits are not all finite)."""
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, reduction="none")
    return top1(logits), torch.where(torch.isfinite(logits).all(1), loss, torch.nan)
