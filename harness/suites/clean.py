"""Suite ``clean``: top-1 accuracy on unperturbed images, stored per example.

Per example it records the predicted class, correctness and the cross-entropy loss, so any
re-aggregation or paired comparison between checkpoints needs no recompute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.suites._base import SUITES, Suite, contiguous_shards


def predict(model, images_u8: torch.Tensor, labels: torch.Tensor, *, device: str, dtype,
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, loss) for uint8 images, batched under inference mode; one host sync at the end.

    Images are converted to ``dtype`` in [0, 1] and channels_last per batch on the device.
    """
    dtype = dtype or torch.float32
    preds, losses = [], []
    with torch.inference_mode():
        for xb, yb in zip(images_u8.split(batch_size), labels.split(batch_size)):
            xb = xb.to(device, non_blocking=True).to(dtype).div_(255)
            xb = xb.contiguous(memory_format=torch.channels_last)
            logits = model(xb).float()
            yb = yb.to(device, non_blocking=True)
            preds.append(logits.argmax(1))
            losses.append(F.cross_entropy(logits, yb, reduction="none"))
    return torch.cat(preds).cpu(), torch.cat(losses).cpu()


@SUITES.register("clean", description="clean top-1 accuracy, per example")
class CleanSuite(Suite):
    name = "clean"

    def shards(self, data, params):
        return contiguous_shards(params["n"], params["shard_size"], {"condition": "clean"}, "clean")
