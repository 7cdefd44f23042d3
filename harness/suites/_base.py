"""The suite protocol: what a suite declares and the few methods the engine calls.

A suite declares its **options** (:class:`Option`: name, type, default, help, validation; the
CLI flag ``--name`` and the ``harness.evaluate`` keyword are generated from it), its
**per-example fields** beyond label/pred/correct/loss (:class:`Field`), its **metric records**
that are not per example (:class:`Metric`), and how to summarise stored rows into its table,
its headline numbers and any extra tables (:class:`Table`). The engine (``harness.plan``,
``harness.executor``, ``harness.cli``) knows no suite by name.

A shard (one condition over a range of examples) is the unit of resume. Preparing a shard's
inputs (e.g. generating a corrupted set) does not depend on the model, so an executor prepares
them once and evaluates every model that still needs the shard. :meth:`Suite.inputs` and
:meth:`Suite.evaluate` are pure (tensors in, a :class:`~harness.records.ShardResult` out): no
printing, no store, so any executor can run them.

Write one (a new file under ``harness/suites/`` that registers itself, or any module the user
imports, e.g. through ``HARNESS_PLUGINS``)::

    @SUITES.register("brightness", description="accuracy on brightened images")
    class Brightness(Suite):
        options = (Option("gain", type=float, default=1.5, help="pixel gain", check=positive),)
        fields = (Field("mean_pixel", float, "mean input pixel in [0, 1]"),)

        def params(self, *, n, shard_size=None, data=None, device="cpu", **options):
            return {**super().params(n=n, shard_size=shard_size), "gain": options["gain"]}

        def shards(self, data, params):
            return contiguous_shards(params["n"], params["shard_size"], {"gain": params["gain"]},
                                     "bright")

        def inputs(self, data, shard, ctx): ...             # -> ShardInputs
        def evaluate(self, model, inputs, shard, ctx): ...  # super().evaluate(...) + fields
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data import load_cifar10_arrays
from harness.errors import HarnessError
from harness.records import CORE_COLUMNS, Shard, ShardResult
from harness.registry import Registry

SUITES: Registry[type[Suite]] = Registry("suite")

# Names the run itself uses (CLI flags and harness.evaluate keywords): no suite option may
# take one of them.
RESERVED_OPTIONS = frozenset({
    "suite", "model", "models", "weights", "weights_dir", "data", "data_dir", "n", "batch_size",
    "shard_size", "device", "dtype", "seed", "store", "force", "quiet", "executor", "name",
    "help", "format",
})
FIELD_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}


def positive(value: float) -> float:
    """An :class:`Option` check: a finite number > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a finite number > 0, got {value}")
    return value


def non_negative(value: float) -> float:
    """An :class:`Option` check: a finite number >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a finite number >= 0, got {value}")
    return value


def at_least_one(value: int) -> int:
    """An :class:`Option` check: an integer >= 1 (steps, iterations)."""
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {value}")
    return value


def count(value: int) -> int:
    """An :class:`Option` check: an integer >= 0 (a number of examples, 0 for none)."""
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {value}")
    return value


@dataclass(frozen=True)
class Option:
    """A suite option: one CLI flag (``--name-with-dashes``) and one ``evaluate`` keyword.

    Attributes:
        name: identifier (``snake_case``).
        help: one line for ``harness run --suite S --help``.
        type: converts a command-line string (``str``, ``int``, ``float`` or ``bool``).
        default: value when not given; None leaves the option unset (the suite decides).
        choices: allowed values, when a fixed set.
        check: validates/canonicalises the converted value; raises ``ValueError`` or
            :class:`HarnessError` with a message (the engine prefixes the option's name).
        metavar: placeholder in help.
    """

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: Sequence[Any] = ()
    check: Callable[[Any], Any] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """Convert (strings from the command line) and validate ``value``."""
        if self.type is bool and isinstance(value, str):
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise HarnessError(f"option {self.name!r}: expected true or false, got {value!r}")
            value = low in ("1", "true", "yes", "on")
        elif isinstance(value, str) and self.type is not str:
            try:
                value = self.type(value)
            except ValueError:
                raise HarnessError(f"option {self.name!r}: expected {self.type.__name__}, got "
                                   f"{value!r}") from None
        if self.choices and value not in self.choices:
            raise HarnessError(f"option {self.name!r}: {value!r} is not one of "
                               f"{', '.join(map(str, self.choices))}")
        if self.check is not None:
            try:
                value = self.check(value)
            except ValueError as exc:
                raise HarnessError(f"option {self.name!r}: {exc}") from None
        return value


@dataclass(frozen=True)
class Field:
    """A per-example value a suite stores beside label/pred/correct/loss (e.g. a perturbation
    norm, the attack that found an example). ``type``: int, float, str or bool."""

    name: str
    type: type
    help: str = ""


@dataclass(frozen=True)
class Metric:
    """A record that is not per example: ``scope`` names what its index counts ("run",
    "layer", "iteration", ...)."""

    name: str
    scope: str
    help: str = ""


@dataclass(frozen=True)
class Table:
    """A table a suite adds to the printed summary: ``frame`` (pandas) with a title; columns in
    ``percent`` hold fractions shown as percentages."""

    title: str
    frame: Any
    caption: str = ""
    percent: Sequence[str] = ()


@dataclass(frozen=True)
class ShardInputs:
    """Model-independent inputs of one shard: uint8 images (N, 3, H, W) (a tensor, on the
    evaluation device when the suite generated them there), int64 labels, example ids."""

    images: Any
    labels: Any
    example: np.ndarray


@dataclass(frozen=True)
class EvalContext:
    """How a run evaluates: everything :meth:`Suite.inputs`/:meth:`Suite.evaluate` may read
    besides the data. ``params`` are the suite's canonical parameters (they decide the numbers
    and the run id); ``options`` all of the suite's options as given (including those that do
    not change the numbers). Picklable (an executor may ship it to another process)."""

    params: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 250

    @property
    def torch_dtype(self):
        import torch  # lazy: `harness --help` imports the suites and must not load torch

        return getattr(torch, self.dtype)


class Suite:
    """Base class of suites: declarations plus default behaviour (the clean split, top-1).

    Class attributes:
        name: registry name (set by the subclass).
        default_shard_size: examples per shard (a shard is the unit of resume).
        options / fields / metrics: the declarations above.
        primary: the :meth:`headline` key that lists of runs show.
        labels: column labels of headline keys in printed tables (default ``"<key> %"``).
    """

    name: str = ""
    default_shard_size: int = 500
    options: tuple[Option, ...] = ()
    fields: tuple[Field, ...] = ()
    metrics: tuple[Metric, ...] = ()
    primary: str = "accuracy"
    labels: Mapping[str, str] = {"accuracy": "accuracy %"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = [o.name for o in cls.options]
        if len(set(names)) != len(names) or RESERVED_OPTIONS & set(names):
            raise TypeError(f"suite {cls.__name__}: option names must be unique and not one of "
                            f"the run's own ({', '.join(sorted(RESERVED_OPTIONS & set(names)))})")
        fields = [f.name for f in cls.fields]
        if len(set(fields)) != len(fields) or set(CORE_COLUMNS) & set(fields):
            raise TypeError(f"suite {cls.__name__}: field names must be unique and not one of "
                            f"{', '.join(CORE_COLUMNS)}")
        bad = [f.name for f in cls.fields if f.type not in FIELD_TYPES]
        if bad:
            raise TypeError(f"suite {cls.__name__}: fields {bad} must be int, float, str or bool")

    # -- options and data ------------------------------------------------------------------------
    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Given options (None = not given) -> every declared option, converted and validated,
        defaults filled in; an option this suite does not declare is an error."""
        declared = {o.name: o for o in self.options}
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            own = ", ".join(declared) or "none"
            raise HarnessError(f"option {', '.join(map(repr, unknown))} does not apply to suite "
                               f"{self.name!r} (its options: {own})")
        return {name: (opt.parse(given[name]) if name in given else opt.default)
                for name, opt in declared.items()}

    def load_data(self, *, data_dir=None, **options: Any):
        """The data a run reads (default: the CIFAR-10 test split or the bundled sample).
        Takes every suite option and uses those that choose data (cifar10c: ``source``)."""
        return load_cifar10_arrays("test", data_dir=data_dir)

    def default_n(self, data) -> int | None:
        """Examples per condition when the user gives no ``n`` (None: all of ``data``)."""
        return None

    def params(self, *, n: int, shard_size: int | None = None, data=None, device: str = "cpu",
               **options: Any) -> dict[str, Any]:
        """Canonical parameters that enter the run spec (and so the run id): what changes the
        numbers, nothing else. ``device`` is the evaluation device, for suites whose inputs
        depend on where they are computed."""
        return {"n": int(n), "shard_size": int(shard_size or self.default_shard_size)}

    def data_identity(self, data, params: Mapping[str, Any]) -> tuple[str, str]:
        """(name, fingerprint) of the data for the run spec."""
        return data.name, data.fingerprint

    def describe(self, params: Mapping[str, Any]) -> str:
        """What a run covers, for the summary's header line."""
        return f"n = {params['n']} examples"

    def check_model(self, module, name: str, data, *, device: str, dtype: str) -> None:
        """Raise :class:`HarnessError` when the prepared ``module`` cannot be evaluated by this
        suite (called by ``plan_run`` after the probe, before anything is stored; e.g. attack
        suites need an input gradient). Default: nothing more to check."""

    # -- work ----------------------------------------------------------------------------------
    def shards(self, data, params: Mapping[str, Any]) -> list[Shard]:
        """All shards of a run, in execution order."""
        return contiguous_shards(params["n"], params["shard_size"], {"condition": self.name},
                                 self.name)

    def inputs(self, data, shard: Shard, ctx: EvalContext) -> ShardInputs:
        """The shard's images and labels; no model involved."""
        import torch  # lazy, see EvalContext.torch_dtype

        return ShardInputs(torch.from_numpy(data.images[shard.start:shard.stop]),
                           torch.from_numpy(data.labels[shard.start:shard.stop]),
                           np.arange(shard.start, shard.stop, dtype=np.int64))

    def evaluate(self, model, inputs: ShardInputs, shard: Shard, ctx: EvalContext) -> ShardResult:
        """Top-1 prediction, correctness and loss per example of prepared inputs."""
        from harness.predict import predict  # lazy (torch), see EvalContext.torch_dtype

        start = time.perf_counter()
        pred, loss = predict(model, inputs.images, inputs.labels, device=ctx.device,
                             dtype=ctx.torch_dtype, batch_size=ctx.batch_size)
        labels = inputs.labels.cpu()
        return ShardResult(shard=shard, example=inputs.example, label=labels.numpy(),
                           pred=pred.numpy(), correct=(pred == labels).numpy(),
                           loss=loss.double().numpy(), wall_s=time.perf_counter() - start)

    def check_result(self, result: ShardResult) -> None:
        """Raise ``ValueError`` when a result does not carry exactly the declared fields or
        carries an undeclared metric (a bug in the suite, caught before anything is stored)."""
        want, got = {f.name for f in self.fields}, set(result.fields)
        if want != got:
            raise ValueError(f"suite {self.name!r} declared fields {sorted(want)} but its "
                             f"result has {sorted(got)}")
        declared = {(m.name, m.scope) for m in self.metrics}
        extra = {(m.name, m.scope) for m in result.metrics} - declared
        if extra:
            raise ValueError(f"suite {self.name!r} produced undeclared metrics {sorted(extra)}")

    @property
    def field_types(self) -> dict[str, str]:
        """Declared per-example fields as {name: "int" | "float" | "str" | "bool"}."""
        return {f.name: FIELD_TYPES[f.type] for f in self.fields}

    # -- reading the store ---------------------------------------------------------------------
    def summarize(self, store, run_id: str) -> Any:
        """Per-condition table (pandas) of a stored run: condition columns, n, n_correct,
        accuracy. Reads the store only; suites with other aggregates override this."""
        return store.condition_summary(run_id)

    def headline(self, summary) -> dict[str, float]:
        """The few numbers a summary table shows per model, in column order (accuracies as
        fractions). Default: accuracy over all conditions."""
        return {"accuracy": float(summary["n_correct"].sum() / summary["n"].sum())}

    def label(self, key: str) -> str:
        """Column label of a headline key."""
        return self.labels.get(key, f"{key} %")

    def format(self, key: str, value: float) -> str:
        """A headline value as printed: fractions as percentages ("-" for NaN: not measured);
        suites whose headline holds other quantities (a Lipschitz bound) override this."""
        return "-" if value != value else f"{100 * value:.2f}"

    def references(self, store_path: str, plan) -> Any:
        """What this run's tables compare with, read from the store at ``store_path`` before
        anything is written (open it read-only: ``Store(store_path, readonly=True)``, which
        fails with a one-line error when it does not exist). Raise :class:`HarnessError` when a
        requested reference is missing. Default: nothing (the store is not opened)."""
        return None

    def details(self, summary) -> list[Table | str]:
        """Tables and lines ``harness show RUN`` prints after the summary table (e.g. a
        per-layer breakdown), from the run's :meth:`summarize` output (its ``attrs`` can carry
        them, so the store is read once). Default: none."""
        return []

    def tables(self, outcomes: Sequence[Any], references: Any = None) -> list[Table | str]:
        """Tables and lines printed after the summary table, from the outcomes' summaries
        (each a :class:`~harness.executor.RunOutcome`). Default: none."""
        return []


class SampleSuite(Suite):
    """A suite that measures the clean split under one condition named after the suite
    (``lipschitz``, ``sparsity``, ``coding``): at most :attr:`sample_n` examples unless ``n``
    is given, every option enters the parameters (and so the run id), contiguous shards."""

    sample_n: int | None = None

    def default_n(self, data) -> int | None:
        return None if self.sample_n is None else min(self.sample_n, len(data))

    def params(self, *, n: int, shard_size: int | None = None, data=None, device: str = "cpu",
               **options: Any) -> dict[str, Any]:
        return {**super().params(n=n, shard_size=shard_size), **options}

    def shards(self, data, params: Mapping[str, Any]) -> list[Shard]:
        return contiguous_shards(params["n"], params["shard_size"], {"condition": self.name},
                                 self.name)


def raised_flags(metrics) -> list[str]:
    """One line per raised flag of a run's metric records (``Store.metrics_frame``): a record
    named ``flag`` with a value > 0 is a check a suite stored as violated (e.g. a
    gradient-masking check); the record named ``check`` at the same scope and index holds
    what it measured."""
    if not len(metrics) or "name" not in metrics:
        return []
    value = {(r.scope, r.index): r.value for r in metrics.itertuples(index=False)
             if r.name == "check"}
    return [f"{r.index} ({r.scope}; measured {value.get((r.scope, r.index), float('nan')):.4g})"
            for r in metrics.itertuples(index=False) if r.name == "flag" and r.value > 0]


def contiguous_shards(n: int, shard_size: int, condition: Mapping[str, Any], prefix: str
                      ) -> list[Shard]:
    """Consecutive example ranges of at most ``shard_size``, keyed by ``prefix`` and range."""
    return [
        Shard(key=f"{prefix}/{start:06d}-{min(start + shard_size, n):06d}",
              condition=dict(condition), start=start, stop=min(start + shard_size, n))
        for start in range(0, n, shard_size)
    ]


