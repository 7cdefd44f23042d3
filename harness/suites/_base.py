"""The suite interface: a suite loads its data, plans shards, prepares each shard's inputs once
and evaluates any number of models on them; the runner stores the results.

A shard is the unit of resume. Preparing inputs (e.g. generating a corrupted set) does not
depend on the model, so the runner prepares each shard once and feeds it to every model that
still needs it. Suites never print, render or touch the store.

Write one::

    @SUITES.register("my-suite", description="...")
    class MySuite(Suite):
        def shards(self, data, params): ...
        def inputs(self, data, shard, *, params, seed, device): ...   # -> ShardInputs
        # evaluate() defaults to top-1 prediction on the inputs
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.records import Shard, ShardResult
from harness.registry import Registry

SUITES: Registry[type[Suite]] = Registry("suite")


@dataclass(frozen=True)
class ShardInputs:
    """Model-independent inputs of one shard: uint8 images (N, 3, H, W) (a tensor, on the
    evaluation device when the suite generated them there), int64 labels, example ids."""

    images: Any
    labels: Any
    example: np.ndarray


class Suite:
    """Base class of suites.

    Attributes:
        name: registry name (set by the registration).
        default_shard_size: examples per shard (a shard is the unit of resume).
        options: names of the suite-specific options it accepts (CLI flags, API keywords).
        primary: the :meth:`headline` key that lists of runs show.
    """

    name: str = ""
    default_shard_size: int = 500
    options: tuple[str, ...] = ()
    primary: str = "accuracy"

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Drop unset options; reject ones this suite does not take."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
            raise HarnessError(f"{flags} does not apply to suite {self.name!r}")
        return given

    def load_data(self, *, data_dir=None, **options: Any):
        """The data a run reads (default: the CIFAR-10 test split or the bundled sample).
        Takes every suite option and uses those that choose data (cifar10c: ``source``)."""
        from harness.data import load_cifar10_arrays

        return load_cifar10_arrays("test", data_dir=data_dir)

    def default_n(self, data) -> int | None:
        """Examples per condition when the user gives no ``n`` (None: all of ``data``)."""
        return None

    def params(self, *, n: int, shard_size: int | None = None, data=None, device: str = "cpu",
               **options: Any) -> dict[str, Any]:
        """Canonical parameters that enter the run spec (and so the run id). ``device`` is the
        evaluation device, for suites whose inputs depend on where they are computed."""
        return {"n": int(n), "shard_size": int(shard_size or self.default_shard_size)}

    def data_identity(self, data, params: Mapping[str, Any]) -> tuple[str, str]:
        """(name, fingerprint) of the data for the run spec."""
        return data.name, data.fingerprint

    def shards(self, data, params: Mapping[str, Any]) -> list[Shard]:
        """All shards of a run, in execution order."""
        raise NotImplementedError

    def inputs(self, data, shard: Shard, *, params: Mapping[str, Any], seed: int, device: str
               ) -> ShardInputs:
        """The shard's images and labels; no model involved."""
        import torch

        return ShardInputs(torch.from_numpy(data.images[shard.start:shard.stop]),
                           torch.from_numpy(data.labels[shard.start:shard.stop]),
                           np.arange(shard.start, shard.stop, dtype=np.int64))

    def evaluate(self, model, inputs: ShardInputs, shard: Shard, *, device: str, dtype,
                 batch_size: int) -> ShardResult:
        """Top-1 prediction, correctness and loss per example of prepared inputs."""
        from harness.suites.clean import predict

        start = time.perf_counter()
        pred, loss = predict(model, inputs.images, inputs.labels, device=device, dtype=dtype,
                             batch_size=batch_size)
        labels = inputs.labels.cpu()
        return ShardResult(shard=shard, example=inputs.example, label=labels.numpy(),
                           pred=pred.numpy(), correct=(pred == labels).numpy(),
                           loss=loss.double().numpy(), wall_s=time.perf_counter() - start)

    def evaluate_shard(self, model, data, shard: Shard, *, params: Mapping[str, Any], seed: int,
                       device: str, dtype, batch_size: int) -> ShardResult:
        """Prepare and evaluate one shard for one model."""
        inputs = self.inputs(data, shard, params=params, seed=seed, device=device)
        return self.evaluate(model, inputs, shard, device=device, dtype=dtype,
                             batch_size=batch_size)

    def summarize(self, store, run_id: str) -> Any:
        """Per-condition table (pandas) of a stored run: condition columns, n, n_correct,
        accuracy. Reads the store only; suites with other aggregates override this."""
        return store.condition_summary(run_id)

    def headline(self, summary) -> dict[str, float]:
        """The few numbers a summary table shows per model, in column order (accuracies as
        fractions). Default: accuracy over all conditions."""
        return {"accuracy": float(summary["n_correct"].sum() / summary["n"].sum())}


def contiguous_shards(n: int, shard_size: int, condition: Mapping[str, Any], prefix: str
                      ) -> list[Shard]:
    """Consecutive example ranges of at most ``shard_size``, keyed by ``prefix`` and range."""
    return [
        Shard(key=f"{prefix}/{start:06d}-{min(start + shard_size, n):06d}",
              condition=dict(condition), start=start, stop=min(start + shard_size, n))
        for start in range(0, n, shard_size)
    ]
