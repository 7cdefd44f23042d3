"""The records that cross module boundaries: run specs, per-example results, metrics.

Frozen, slotted dataclasses; suites produce them, the store persists them, reports read them.
A run is identified by :meth:`RunSpec.run_id`, a content hash of everything that determines its
numbers, so the same spec evaluated twice maps to the same stored run (resume), and any change
(weights, params, data, seed, dtype, harness version) to a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything that determines a run's numbers.

    Attributes:
        model: display name (registry name, ``pkg.mod:factory`` or a user label).
        model_fingerprint: hash of factory + kwargs + checkpoint sha256 (or of the weights).
        suite: suite name.
        params: the suite's canonical parameters (JSON-serialisable).
        data: where the data came from ("bundled-sample" or a directory name).
        data_fingerprint: sha256 of images + labels of the split.
        seed: run seed; every random draw derives from it and the example index.
        dtype: evaluation dtype ("float32", "bfloat16").
        harness_version: ``harness.__version__``.
    """

    model: str
    model_fingerprint: str
    suite: str
    params: Mapping[str, Any]
    data: str
    data_fingerprint: str
    seed: int
    dtype: str
    harness_version: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = dict(self.params)
        return d

    @property
    def run_id(self) -> str:
        """Content hash of the spec (the display ``model`` name is part of it)."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work of a suite: one condition over a contiguous slice of examples."""

    key: str
    condition: Mapping[str, Any]
    start: int
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class ExampleResult:
    """The outcome for one example under one condition.

    ``example`` is the position in the evaluated split (the bundled sample maps it back to the
    official test index through ``ImageSet.indices``).
    """

    example: int
    label: int
    pred: int
    correct: bool
    loss: float


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What a suite yields for one shard."""

    shard: Shard
    examples: tuple[ExampleResult, ...]
    wall_s: float

    @property
    def n_correct(self) -> int:
        return sum(e.correct for e in self.examples)


@dataclass(frozen=True, slots=True)
class MetricResult:
    """An aggregate metric (fractions in [0, 1], never percentages)."""

    name: str
    value: float
    n: int
    higher_is_better: bool
    condition: Mapping[str, Any] = field(default_factory=dict)
