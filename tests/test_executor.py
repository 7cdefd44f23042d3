"""The executor interface: what a second executor (e.g. Ray) would need, and nothing more."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from harness.executor import EXECUTORS, LocalExecutor, execute
from harness.plan import plan_run
from harness.records import MetricRecord
from harness.store import Store
from harness.suites import Suite


class PickledExecutor:
    """Runs every job on a copy of the plan that went through pickle, as a worker process
    would receive it, in reverse order, and returns each result through pickle too."""

    def __init__(self) -> None:
        self.jobs = 0

    def run(self, plan, jobs, deliver):
        remote = pickle.loads(pickle.dumps(plan))
        for job in reversed(jobs):
            inputs = remote.suite.inputs(remote.data, job.shard, remote.ctx)
            result = remote.suite.evaluate(remote.models[job.model].module, inputs, job.shard,
                                           remote.ctx)
            deliver(job, pickle.loads(pickle.dumps(result)))
            self.jobs += 1
        return {}


def test_a_pickling_out_of_order_executor_stores_what_the_local_one_does():
    opts = {"corruptions": "gaussian_noise,fog", "severities": "2,5"}
    frames = {}
    for name, executor in (("local", LocalExecutor()), ("pickled", PickledExecutor())):
        plan = plan_run(suite="cifar10c", models=["resnet8", "resnet8-gelu"], n=30,
                        shard_size=20, options=opts)
        with Store(":memory:") as st:
            outs = execute(plan, st, executor=executor)
            assert [o.shards_computed for o in outs] == [10, 10]
            frames[name] = st.to_frame()
            # a second run resumes: no job reaches the executor
            again = PickledExecutor()
            execute(plan, st, executor=again)
            assert again.jobs == 0
    assert executor.jobs == 20
    pd.testing.assert_frame_equal(frames["local"], frames["pickled"])
    assert "local" in EXECUTORS


class Undeclared(Suite):
    """Returns a metric it never declared: a bug the engine must catch before storing."""

    name = "clean"

    def evaluate(self, model, inputs, shard, ctx):
        result = super().evaluate(model, inputs, shard, ctx)
        return type(result)(result.shard, result.example, result.label, result.pred,
                            result.correct, result.loss, result.wall_s,
                            metrics=(MetricRecord("secret", "run", "", 1.0),))


def test_a_result_that_breaks_its_declarations_is_not_stored():
    plan = plan_run(suite="clean", models=["resnet8"], n=20, shard_size=10)
    plan.suite = Undeclared()
    with Store(":memory:") as st:
        with pytest.raises(ValueError, match="undeclared metrics"):
            execute(plan, st)
        assert st.runs()[0]["n_shards"] == 0
