"""The records that cross module boundaries: run specs, shards, per-example results and metrics.

Frozen, slotted dataclasses; suites produce them, the store persists them, reports read them.
A suite's shard result carries the four core per-example columns (label, pred, correct, loss),
the per-example values of the fields the suite declares (``fields``, one array per field) and
records that are not per example (``metrics``: run-, layer- or iteration-level values).
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

import numpy as np

SCHEMA_VERSION = 2
# Columns every per-example record has; a suite's own fields must use other names.
CORE_COLUMNS = ("example", "label", "pred", "correct", "loss")
# ``pred`` of an example whose logits were not all finite (NaN or +-Inf): it is counted wrong,
# its loss is NaN, and summaries count such examples (``n_nonfinite``).
NO_PREDICTION = -1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


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
    official test index through ``ImageSet.indices``); ``pred`` is :data:`NO_PREDICTION` where
    the model's logits were not finite.
    """

    example: int
    label: int
    pred: int
    correct: bool
    loss: float


@dataclass(frozen=True, slots=True)
class MetricRecord:
    """A value that is not per example: ``name`` at ``scope``/``index``.

    ``scope`` says what ``index`` counts ("run" with index "", "layer" with a module name,
    "iteration" with a step number, ...); ``value`` is a float (NaN when not finite).
    """

    name: str
    scope: str
    index: str | int
    value: float


@dataclass(frozen=True, slots=True, eq=False)
class ShardResult:
    """What a suite yields for one shard: per-example outcomes as equal-length columns.

    Columnar (one numpy array per field) rather than one object per example: CIFAR-10-C alone
    stores 95 conditions x N examples per model, and the columns go to SQLite without a Python
    object per row. :meth:`rows` gives the :class:`ExampleResult` view of the core columns;
    ``fields`` holds the suite's declared per-example values (name -> array of length n) and
    ``metrics`` its other records.
    """

    shard: Shard
    example: np.ndarray   # int64, positions in the evaluated split
    label: np.ndarray     # int64
    pred: np.ndarray      # int64
    correct: np.ndarray   # bool
    loss: np.ndarray      # float64, NaN where not finite
    wall_s: float
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: tuple[MetricRecord, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.example)
        cols = (self.label, self.pred, self.correct, self.loss, *self.fields.values())
        if any(len(col) != n for col in cols):
            raise ValueError("ShardResult columns (core and fields) must have equal length")

    @property
    def n(self) -> int:
        return len(self.example)

    @property
    def n_correct(self) -> int:
        return int(np.count_nonzero(self.correct))

    def rows(self) -> list[ExampleResult]:
        return [ExampleResult(*r) for r in zip(self.example.tolist(), self.label.tolist(),
                                               self.pred.tolist(), self.correct.tolist(),
                                               self.loss.tolist())]

    @classmethod
    def from_rows(cls, shard: Shard, rows, *, wall_s: float) -> ShardResult:
        """Build from :class:`ExampleResult` rows (tests, small suites)."""
        rows = list(rows)
        col = lambda f, dt: np.array([getattr(r, f) for r in rows], dtype=dt)  # noqa: E731
        return cls(shard, col("example", np.int64), col("label", np.int64),
                   col("pred", np.int64), col("correct", bool), col("loss", np.float64), wall_s)
