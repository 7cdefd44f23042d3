"""The suite interface: a suite plans shards and evaluates them; the runner stores the results.

A suite takes (model, data, params, seed) and yields :class:`ShardResult` records, one per
shard, so the runner can persist work as it completes and skip what is already stored. Suites
never print, render or touch the store.

Write one::

    @SUITES.register("my-suite", description="...")
    class MySuite(Suite):
        def shards(self, data, params): ...
        def evaluate_shard(self, model, data, shard, *, params, seed, device, dtype, batch_size): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from harness.records import Shard, ShardResult
from harness.registry import Registry

SUITES: Registry[type[Suite]] = Registry("suite")


class Suite:
    """Base class of suites.

    Attributes:
        name: registry name (set by the registration).
        default_shard_size: examples per shard (a shard is the unit of resume).
    """

    name: str = ""
    default_shard_size: int = 500

    def params(self, *, n: int, shard_size: int | None = None, **options: Any) -> dict[str, Any]:
        """Canonical parameters that enter the run spec (and so the run id)."""
        return {"n": int(n), "shard_size": int(shard_size or self.default_shard_size)}

    def shards(self, data, params: Mapping[str, Any]) -> list[Shard]:
        """All shards of a run, in execution order."""
        raise NotImplementedError

    def evaluate_shard(self, model, data, shard: Shard, *, params: Mapping[str, Any], seed: int,
                       device: str, dtype, batch_size: int) -> ShardResult:
        """Evaluate one shard; no I/O."""
        raise NotImplementedError

    def run(self, model, data, params: Mapping[str, Any], seed: int, *, device: str = "cpu",
            dtype=None, batch_size: int = 250, skip: Iterable[str] = ()) -> Iterator[ShardResult]:
        """Yield the results of every shard not in ``skip``."""
        skip = set(skip)
        for shard in self.shards(data, params):
            if shard.key not in skip:
                yield self.evaluate_shard(model, data, shard, params=params, seed=seed,
                                          device=device, dtype=dtype, batch_size=batch_size)

    def summarize(self, store, run_id: str) -> Any:
        """Per-condition table (pandas) of a stored run: condition columns, n, n_correct,
        accuracy. Reads the store only; suites with other aggregates override this."""
        return store.condition_summary(run_id)


def contiguous_shards(n: int, shard_size: int, condition: Mapping[str, Any], prefix: str
                      ) -> list[Shard]:
    """Consecutive example ranges of at most ``shard_size``, keyed by ``prefix`` and range."""
    return [
        Shard(key=f"{prefix}/{start:06d}-{min(start + shard_size, n):06d}",
              condition=dict(condition), start=start, stop=min(start + shard_size, n))
        for start in range(0, n, shard_size)
    ]
