"""Executors run (model, shard) jobs of a :class:`~harness.plan.RunPlan`; :func:`execute`
drives them and is the single writer of the store.

The interface is one method, :meth:`Executor.run`: given the plan and the jobs still to do, it
evaluates each job with the plan's suite (``suite.inputs`` then ``suite.evaluate``) and hands
every finished :class:`~harness.records.ShardResult` to ``deliver`` as soon as it has it, in
the calling process. :func:`execute` opens the runs in the store, asks the executor for the
missing shards, writes each delivered shard in its own transaction (so a killed process
leaves only whole shards and a rerun resumes), then marks the runs complete and summarises
them. A new executor implements ``run`` and registers itself in :data:`EXECUTORS`; it needs
nothing else (the plan, its suite, data and modules are picklable). :class:`RayExecutor`
(``--executor ray``) runs every job as a Ray task and delivers the shards in the driver as they
arrive, so the driver stays the single writer of the store.

Example::

    plan = plan_run(suite="clean", models=["resnet8"])
    with Store("results.sqlite") as store:
        (outcome,) = execute(plan, store)                  # LocalExecutor by default
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from harness.errors import HarnessError, first_line
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
        prep = 0.0
        for group in by_shard(jobs):
            shard = group[0].shard
            inputs, seconds = prepare_inputs(plan.suite, plan.data, shard, plan.ctx)
            prep += seconds
            for job in group:
                deliver(job, evaluate_shard(plan.suite, plan.models[job.model].module, inputs,
                                            shard, plan.ctx))
        return {"inputs_s": prep}


def by_shard(jobs: Sequence[Job]) -> list[list[Job]]:
    """``jobs`` grouped by shard, in order: a shard's inputs are prepared once per group."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.shard.key, []).append(job)
    return list(groups.values())


def prepare_inputs(suite, data, shard: Shard, ctx) -> tuple[Any, float]:
    """A shard's inputs and the seconds they took; torch is seeded with the run seed first, so
    every executor prepares the same inputs."""
    torch.manual_seed(ctx.seed)
    t0 = time.perf_counter()
    inputs = suite.inputs(data, shard, ctx)
    return inputs, time.perf_counter() - t0


def evaluate_shard(suite, module, inputs, shard: Shard, ctx) -> ShardResult:
    """One model on one shard; every evaluation starts from the run seed, so the numbers depend
    neither on the executor nor on the order of the jobs."""
    torch.manual_seed(ctx.seed)
    return suite.evaluate(module, inputs, shard, ctx)


@EXECUTORS.register("ray", description="Ray tasks, one per (model, shard), on a local or "
                                         "existing cluster (--address); extra [ray]")
class RayExecutor:
    """Each (model, shard) job is a Ray task; this process stays the single writer of the store.

    The plan's data, suite and context and every model's weights are put into Ray's object
    store once; each shard's inputs are prepared once by a task of their own (seeded as
    :class:`LocalExecutor` seeds them) and shared through the object store by every model that
    needs the shard. Finished shards come back to the driver, which hands each to ``deliver``
    (and so writes it) as soon as it arrives. A worker that dies mid-shard is retried by Ray
    (``max_retries``); an exception raised by the suite is not retried and is re-raised here,
    after the shards finished before it are stored. At most ``max_in_flight`` shards (default:
    twice the cluster's CPUs) have inputs in the object store at once.

    Args:
        address: an existing cluster (``"auto"``, ``"ray://host:10001"``); None starts a local
            one for this run (``num_cpus``: default all cores) unless Ray is already
            initialised in this process, or ``$RAY_ADDRESS`` names a cluster.
        num_cpus: CPUs of a local cluster started here.
        cpus_per_task: CPUs (and torch threads) each task gets.
        gpus_per_task: GPUs each task gets when the plan's device is CUDA (default 1).
        max_retries: Ray's retries of a task whose worker died.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 cpus_per_task: float = 1, gpus_per_task: float = 1, max_retries: int = 3,
                 max_in_flight: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self._started = False

    def connect(self) -> None:
        """Reach the cluster (or start the local one) now: the CLI calls this before it opens
        the store, so an unreachable address is a one-line error with nothing written. Ray
        started here is shut down by :meth:`close`."""
        ray = import_ray()
        if not ray.is_initialized():
            self._started = connect_ray(ray, self.address, num_cpus=self.num_cpus)

    def close(self) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False

    def run(self, plan: RunPlan, jobs: Sequence[Job], deliver: Deliver) -> dict[str, float]:
        if not jobs:
            return {"inputs_s": 0.0}
        ray = import_ray()
        started_here = not ray.is_initialized()
        self.connect()
        try:
            return self._run(ray, plan, jobs, deliver)
        finally:
            if started_here:
                self.close()

    def _run(self, ray, plan: RunPlan, jobs: Sequence[Job], deliver: Deliver) -> dict[str, float]:
        from ray import cloudpickle

        # Models and suites from user files (`file.py:factory`, $HARNESS_PLUGINS) live in
        # modules a worker cannot import: ship their code by value.
        for name, module in list(sys.modules.items()):
            if name.startswith("_harness_user_"):
                cloudpickle.register_pickle_by_value(module)
        cuda = str(plan.ctx.device).startswith("cuda")
        options: dict[str, Any] = {"num_cpus": self.cpus_per_task,
                                   "max_retries": self.max_retries}
        if cuda:
            # Both kinds of task use the device (suites may prepare inputs on it, as the local
            # executor does); a task sees only its own GPU, so "cuda:1" becomes "cuda". Ray
            # would start a fresh worker for every GPU task (max_calls=1): keep them.
            options.update(num_gpus=self.gpus_per_task, max_calls=0)
        ctx = dataclasses.replace(plan.ctx, device="cuda") if cuda else plan.ctx
        prepare = ray.remote(num_returns=2, **options)(_remote_prepare)
        evaluate = ray.remote(**options)(_remote_evaluate)
        suite_ref = _put(ray, plan.suite, f"suite {plan.suite.name!r}")
        ctx_ref = ray.put(ctx)
        # Data and inputs travel as pickled bytes: Ray would hand numpy arrays to a task as
        # read-only views of its shared memory, which torch and the suites may write to.
        data_ref = _put(ray, plan.data, f"data {plan.data_name!r}", pickled=True)
        model_refs = {i: _put(ray, _portable(plan.models[i].module, cuda),
                              f"model {plan.models[i].name!r}")
                      for i in sorted({job.model for job in jobs})}
        groups = by_shard(jobs)
        limit = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, Job] = {}
        open_shards: dict[str, int] = {}           # shard key -> jobs not yet delivered
        prep_refs: list[Any] = []
        next_group = 0

        def submit_more() -> None:
            nonlocal next_group
            while next_group < len(groups) and len(open_shards) < limit:
                group = groups[next_group]
                next_group += 1
                shard = group[0].shard
                inputs_ref, seconds_ref = prepare.remote(suite_ref, data_ref, shard, ctx_ref)
                prep_refs.append(seconds_ref)
                open_shards[shard.key] = len(group)
                for job in group:
                    ref = evaluate.remote(suite_ref, model_refs[job.model], inputs_ref, shard,
                                          ctx_ref)
                    pending[ref] = job
                # inputs_ref goes out of scope here: Ray frees the inputs once the last task
                # that takes them has finished.

        def fetch(ref, job: Job):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            except ray.exceptions.RayError as exc:
                raise HarnessError(f"Ray could not run {plan.models[job.model].name!r} on "
                                   f"shard {job.shard.key} (a task whose worker dies is "
                                   f"retried {self.max_retries} times): {type(exc).__name__}: "
                                   f"{first_line(exc, type(exc).__name__)}") from None

        submit_more()
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    result = fetch(ref, job)
                except BaseException:
                    self._salvage(ray, pending, deliver)
                    raise
                deliver(job, result)
                open_shards[job.shard.key] -= 1
                if not open_shards[job.shard.key]:
                    del open_shards[job.shard.key]
                    submit_more()
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)
        return {"inputs_s": float(sum(ray.get(prep_refs)))}

    @staticmethod
    def _salvage(ray, pending: dict, deliver: Deliver) -> None:
        """A task failed: store the shards other tasks have already finished (so a rerun does
        not recompute them) before the run stops; anything else is cancelled by the caller."""
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in ready:
            job = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            deliver(job, result)


def make_executor(name: str = "local", *, address: str | None = None) -> Executor:
    """The executor called ``name`` (:data:`EXECUTORS`); ``address`` is Ray's cluster address.

    Raises:
        HarnessError: unknown executor, an address for an executor that takes none, or Ray
            not installed.
    """
    factory = EXECUTORS.get(name)
    if EXECUTORS.resolve(name) != "ray":
        if address is not None:
            raise HarnessError(f"--address is for --executor ray, not {name!r}")
        return factory()
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        import_ray()                                   # raises the one-line install hint
    return factory(address=address)


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise HarnessError("--executor ray needs Ray: pip install 'robustness-harness[ray]'"
                           ) from None
    return ray


def connect_ray(ray, address: str | None, *, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local cluster; True when this call started Ray (the
    caller then shuts it down). An already initialised Ray is used as it is."""
    if ray.is_initialized():
        return False
    import logging

    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True}
    given = address or os.environ.get("RAY_ADDRESS")
    if given is None or given == "local":
        # A cluster of our own, even when `ray start` left one running (Ray would join that
        # one, and refuse num_cpus); its CPUs: what Ray counts (container limits included).
        address = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # no ~/.ray/auth_token written
    elif given != "auto":
        _check_reachable(given)     # Ray itself keeps retrying an unreachable address for minutes
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise HarnessError(f"cannot start or reach a Ray cluster at {address or 'a new local one'}"
                           f": {first_line(exc, type(exc).__name__)}") from None
    return True


def _put(ray, obj, what: str, *, pickled: bool = False):
    """``ray.put`` (of ``obj``'s cloudpickle bytes when ``pickled``), or a one-line error when
    ``obj`` cannot be pickled (user code can fail to in many ways)."""
    from ray import cloudpickle

    try:
        return ray.put(cloudpickle.dumps(obj) if pickled else obj)
    except Exception as exc:
        raise HarnessError(f"{what} cannot be sent to Ray workers ({type(exc).__name__}: "
                           f"{first_line(exc)}); run it with --executor local") from None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error unless something listens at ``[ray://]host:port``."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise HarnessError(f"--address {address!r}: expected 'auto', HOST:PORT or "
                           f"ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                 timeout=timeout).close()
    except OSError as exc:
        raise HarnessError(f"no Ray cluster at {address!r}: {exc.strerror or exc} (start one "
                           f"with 'ray start --head', or drop --address for a local one)"
                           ) from None


def _portable(module, cuda: bool):
    """What goes into the object store for a model: the module itself, or a CPU copy when it
    lives on a GPU (a worker moves it to the GPU Ray gave it)."""
    if not cuda:
        return module
    import copy

    return copy.deepcopy(module).to("cpu")


def _remote_prepare(suite, data: bytes, shard: Shard, ctx) -> tuple[bytes, float]:
    """A Ray task: :func:`prepare_inputs`, data in and inputs out as pickled bytes."""
    from ray import cloudpickle

    inputs, seconds = prepare_inputs(suite, cloudpickle.loads(data), shard, ctx)
    return cloudpickle.dumps(inputs), seconds


def _remote_evaluate(suite, module, inputs: bytes, shard: Shard, ctx) -> ShardResult:
    """A Ray task: :func:`evaluate_shard` on the GPU Ray gave it (``ctx.device``) or the CPU."""
    from ray import cloudpickle

    if ctx.device != "cpu":
        module = module.to(device=ctx.device, memory_format=torch.channels_last)
    return evaluate_shard(suite, module, cloudpickle.loads(inputs), shard, ctx)


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
