"""Executors run (model, shard) jobs of a :class:`~harness.plan.RunPlan`; :func:`execute`
drives them and is the single writer of the store.

The interface is one method, :meth:`Executor.run`: given the plan and the jobs still to do, it
evaluates each job with the plan's suite (``suite.inputs`` then ``suite.evaluate``) and hands
every finished :class:`~harness.records.ShardResult` to ``deliver`` as soon as it has it, in
the calling process. :func:`execute` opens the runs in the store, asks the executor for the
missing shards, writes each delivered shard in its own transaction (so a killed process
leaves only whole shards and a rerun resumes), then marks the runs complete and summarises
them. A new executor (e.g. Ray) implements ``run`` and registers itself in :data:`EXECUTORS`;
it needs nothing else (the plan, its suite, data and modules are picklable).

Example::

    plan = plan_run(suite="clean", models=["resnet8"])
    with Store("results.sqlite") as store:
        (outcome,) = execute(plan, store)                  # LocalExecutor by default
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from harness.plan import RunPlan
from harness.provenance import provenance
from harness.records import RunSpec, Shard, ShardResult
from harness.registry import Registry


@dataclass(frozen=True)
class Job:
    """Evaluate ``plan.models[model]`` on ``shard``."""

    model: int
    shard: Shard


Deliver = Callable[[Job, ShardResult], None]


class Executor(Protocol):
    """Runs jobs; hands each finished shard to ``deliver`` (in the calling process).

    Returns timing figures, e.g. ``{"inputs_s": seconds spent preparing inputs}``.
    """

    def run(self, plan: RunPlan, jobs: Sequence[Job], deliver: Deliver) -> dict[str, float]: ...


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@EXECUTORS.register("local", description="in this process, shard by shard")
class LocalExecutor:
    """In-process, in plan order: each shard's inputs are prepared once (seeded by the run
    seed) and evaluated by every model that still needs that shard."""

    def run(self, plan: RunPlan, jobs: Sequence[Job], deliver: Deliver) -> dict[str, float]:
        by_shard: dict[str, list[Job]] = {}
        for job in jobs:
            by_shard.setdefault(job.shard.key, []).append(job)
        prep = 0.0
        for group in by_shard.values():
            shard = group[0].shard
            torch.manual_seed(plan.seed)
            t0 = time.perf_counter()
            inputs = plan.suite.inputs(plan.data, shard, plan.ctx)
            prep += time.perf_counter() - t0
            for job in group:
                deliver(job, plan.suite.evaluate(plan.models[job.model].module, inputs, shard,
                                                 plan.ctx))
        return {"inputs_s": prep}


@dataclass
class RunOutcome:
    """What :func:`execute` returns per model: spec, id, per-condition summary and counts."""

    spec: RunSpec
    run_id: str
    summary: Any                     # pandas DataFrame (the suite's summarize())
    shards_total: int
    shards_computed: int
    wall_s: float                    # this model's evaluation + storing time (inputs excluded)
    suite: Any = None                # the Suite object (headline numbers, labels, tables)
    extra: dict[str, Any] = field(default_factory=dict)


def execute(
    plan: RunPlan,
    store,
    *,
    executor: Executor | None = None,
    force: bool = False,
    on_plan: Callable[[str, int, int], None] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> list[RunOutcome]:
    """Run ``plan`` into ``store``, resuming every model's run from what it already holds.

    Args:
        executor: what runs the jobs (default :class:`LocalExecutor`).
        force: start new executions (recompute everything; nothing is overwritten).
        on_plan: called per model with (model name, examples to compute, already stored).
        on_progress: called with (model name, examples) after each stored shard.

    Returns:
        One :class:`RunOutcome` per model, in plan order.
    """
    executor = executor or LocalExecutor()
    suite = plan.suite
    writers, todo = [], []
    for pm in plan.models:
        writer = store.begin(pm.spec, force=force, provenance={
            **provenance(device=plan.ctx.device, dtype=plan.ctx.dtype,
                         batch_size=plan.ctx.batch_size),
            "model_identity": pm.loaded.identity})
        missing = [s for s in plan.shards if s.key not in writer.done]
        writers.append(writer)
        todo.append(len(missing))
        if on_plan is not None:
            todo_n = sum(s.n for s in missing)
            on_plan(pm.name, todo_n, sum(s.n for s in plan.shards) - todo_n)
    # Shard-major, so an executor can prepare a shard's inputs once for every model needing it.
    jobs = [Job(i, s) for s in plan.shards for i, w in enumerate(writers) if s.key not in w.done]
    wall = [0.0] * len(plan.models)

    def deliver(job: Job, result: ShardResult) -> None:
        t0 = time.perf_counter()
        suite.check_result(result)
        store.write_shard(writers[job.model], result, fields=suite.field_types)
        wall[job.model] += result.wall_s + time.perf_counter() - t0
        if on_progress is not None:
            on_progress(plan.models[job.model].name, job.shard.n)

    start = time.perf_counter()
    stats = executor.run(plan, jobs, deliver)
    total = time.perf_counter() - start
    outcomes = []
    for pm, writer, computed, seconds in zip(plan.models, writers, todo, wall):
        if not writer.complete:
            store.complete(writer, len(plan.shards))
        outcomes.append(RunOutcome(
            spec=pm.spec, run_id=pm.spec.run_id, summary=suite.summarize(store, pm.spec.run_id),
            shards_total=len(plan.shards), shards_computed=computed, wall_s=seconds, suite=suite,
            extra={**stats, "total_s": total}))
    return outcomes
