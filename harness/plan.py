"""One run plan: every check before anything is stored, shared by the CLI, ``harness.evaluate``
and the executors.

:func:`plan_run` resolves the suite and its options, the device and dtype, loads the data and
cuts it to ``n``, computes the suite's canonical parameters and shards, resolves every model,
puts it on the device and probes it once, and builds one :class:`~harness.records.RunSpec` per
model. A bad input raises :class:`HarnessError` here, before a store is opened or created.

Example::

    plan = plan_run(suite="cifar10c", models=["resnet8"], n=100,
                    options={"corruptions": "fog", "severities": "5"})
    with Store("results.sqlite") as store:
        outcomes = execute(plan, store)           # harness.executor
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError, first_line
from harness.provenance import check_device, check_dtype
from harness.records import RunSpec, Shard
from harness.resolve import LoadedModel, default_models, resolve_model
from harness.suites import SUITES, EvalContext, Suite
from harness.version import __version__


@dataclass
class PlannedModel:
    """A resolved model, prepared for evaluation (``module``), and its run spec."""

    loaded: LoadedModel
    module: Any
    spec: RunSpec

    @property
    def name(self) -> str:
        return self.loaded.name


@dataclass
class RunPlan:
    """Everything an executor needs to run (model, shard) jobs; picklable."""

    suite: Suite
    options: dict[str, Any]          # the suite's options, validated, defaults filled in
    data: Any                        # the suite's data, cut to n
    params: dict[str, Any]           # the suite's canonical parameters (part of every run id)
    data_name: str
    data_fingerprint: str
    shards: list[Shard]
    models: list[PlannedModel]
    ctx: EvalContext

    @property
    def seed(self) -> int:
        return self.ctx.seed


def plan_run(
    *,
    suite: str,
    models: Sequence[str | LoadedModel] = (),
    data=None,
    data_dir=None,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 250,
    shard_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    weights: str | None = None,
    weights_dir: str | None = None,
) -> RunPlan:
    """Check everything a run needs and build its plan (nothing is written anywhere).

    Args:
        suite: suite name or alias.
        models: registry names / ``pkg.module:factory`` / ``file.py:factory`` references or
            :class:`LoadedModel` objects; empty: the registry's default set.
        data: the suite's data object (default: ``suite.load_data(data_dir, options)``).
        n: examples per condition (default: the suite's, else all of the data).
        options: suite options (None values = not given).
        weights: weights file for a single model reference.
        weights_dir: RobustBench checkpoint folder for ``robustbench:`` references.

    Raises:
        HarnessError: unknown suite/model/option, bad values, missing data or weights, a model
            that cannot classify the data.
    """
    suite_obj = SUITES.get(suite)()
    opts = suite_obj.check_options(options or {})
    if batch_size < 1:
        raise HarnessError(f"batch size must be at least 1, got {batch_size}")
    if shard_size is not None and shard_size < 1:
        raise HarnessError(f"shard size must be at least 1, got {shard_size}")
    check_dtype(dtype)
    device = check_device(device)
    refs = list(models) or default_models()
    if weights is not None and len(refs) != 1:
        raise HarnessError("weights need exactly one model")
    if data is None:
        data = suite_obj.load_data(data_dir=data_dir, **opts)
    if n is not None and not 1 <= n <= len(data):
        raise HarnessError(f"n={n} is outside 1..{len(data)} for {data.name}")
    head = data.head(n if n is not None else suite_obj.default_n(data))
    params = suite_obj.params(n=len(head), shard_size=shard_size, data=head, device=device, **opts)
    data_name, data_fp = suite_obj.data_identity(head, params)
    planned = []
    for ref in refs:
        lm = ref if isinstance(ref, LoadedModel) else resolve_model(
            ref, weights=weights, device=device, weights_dir=weights_dir)
        spec = RunSpec(model=lm.name, model_fingerprint=lm.fingerprint, suite=suite_obj.name,
                       params=params, data=data_name, data_fingerprint=data_fp, seed=seed,
                       dtype=dtype, harness_version=__version__)
        module = prepare_model(lm, head, device=device, dtype=dtype)
        suite_obj.check_model(module, lm.name, head, device=device, dtype=dtype)
        planned.append(PlannedModel(lm, module, spec))
    return RunPlan(suite=suite_obj, options=opts, data=head, params=params, data_name=data_name,
                   data_fingerprint=data_fp, shards=suite_obj.shards(head, params),
                   models=planned, ctx=EvalContext(params=params, options=opts, seed=seed,
                                                   device=device, dtype=dtype,
                                                   batch_size=batch_size))


def prepare_model(model: LoadedModel, data, *, device: str, dtype: str):
    """Put the model on ``device`` in ``dtype``, channels_last and eval mode, and probe it on
    the first examples of ``data``; returns the module.

    Raises:
        HarnessError: unknown dtype, or the model cannot classify the probe batch.
    """
    torch_dtype = getattr(torch, check_dtype(dtype))
    module = model.module.to(device=device, dtype=torch_dtype, memory_format=torch.channels_last)
    module.eval()
    _probe(module, model.name, data, device=device, dtype=torch_dtype)
    return module


def _probe(module, name: str, data, *, device: str, dtype) -> None:
    """Fail before touching the store when the model cannot classify two examples."""
    k = min(2, len(data))
    x = torch.from_numpy(data.images[:k]).to(device=device, dtype=dtype).div_(255)
    try:
        with torch.inference_mode():
            out = module(x.contiguous(memory_format=torch.channels_last))
    except Exception as exc:
        raise HarnessError(f"model {name!r} failed on a {tuple(x.shape)} batch in [0, 1]: "
                           f"{type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != k or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HarnessError(f"model {name!r} must return logits of shape (N, classes); got {shape}")
    if int(data.labels.max()) >= out.shape[1]:
        raise HarnessError(f"model {name!r} has {out.shape[1]} outputs but the labels go up to "
                           f"{int(data.labels.max())}")
