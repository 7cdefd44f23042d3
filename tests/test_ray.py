"""The Ray executor (``--executor ray``) against the local one, on real bundled models.

The oracle is :class:`~harness.executor.LocalExecutor`: the same plan run in this process into
another store must give the same per-example records and metric records, bit for bit (bar
the values of wall-clock timing records, which only have to be there). The
fault tests use real faults: a model file (``file.py:factory``, shipped to the workers by
value) whose forward SIGKILLs its own Ray worker, or raises, on the last shard; a run on this
process never triggers them because the model records the pid that built it.

Every test that starts Ray is slow and shares one local cluster (``ray_cluster``: 4-10 s to
start here); the CLI error tests at the top start nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli, store_records
from harness.cli import main
from harness.errors import HarnessError
from harness.executor import LocalExecutor, RayExecutor, execute, import_ray, make_executor
from harness.plan import plan_run
from harness.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- CLI errors (fast: no Ray start, no store) --------------------------------------------------
def _run_error(capsys, tmp_path, *extra: str) -> str:
    """``harness run --suite clean`` with ``extra``: exit status 2, one line, no store file."""
    store = tmp_path / "s.sqlite"
    status = main(["run", "--suite", "clean", "--model", "resnet8", "--n", "20", "--quiet",
                   "--store", str(store), *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert not store.exists()
    return err


def test_an_unknown_executor_is_one_line_with_suggestions(capsys, tmp_path):
    err = _run_error(capsys, tmp_path, "--executor", "rey")
    assert "unknown executor 'rey'" in err and "did you mean 'ray'?" in err
    err = _run_error(capsys, tmp_path, "--executor", "nope")
    assert "unknown executor 'nope'" in err


def test_the_unknown_executor_hint_names_a_command_that_exists(capsys):
    assert main(["ls", "executors"]) == 0
    out = capsys.readouterr().out
    assert "local" in out and "ray" in out


def test_an_address_needs_the_ray_executor(capsys, tmp_path):
    err = _run_error(capsys, tmp_path, "--executor", "local", "--address", "auto")
    assert "--address is for --executor ray, not 'local'" in err


def test_without_ray_the_ray_executor_says_how_to_install_it(capsys, tmp_path, monkeypatch):
    import importlib.util

    # None in sys.modules: find_spec says "not installed" and `import ray` fails, which is
    # the path make_executor takes (find_spec, then import_ray's install hint).
    monkeypatch.setitem(sys.modules, "ray", None)
    assert importlib.util.find_spec("ray") is None
    with pytest.raises(HarnessError, match=r"pip install 'robustness-harness\[ray\]'"):
        make_executor("ray")
    err = _run_error(capsys, tmp_path, "--executor", "ray")
    assert "--executor ray needs Ray: pip install 'robustness-harness[ray]'" in err


def test_make_executor_passes_the_address_and_starts_nothing():
    executor = make_executor("ray", address="ray://head:10001")
    assert isinstance(executor, RayExecutor) and executor.address == "ray://head:10001"
    assert isinstance(make_executor("local"), LocalExecutor)


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU cluster for the module; RayExecutor uses it and leaves it running."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")    # as a local cluster of the CLI's
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


KEY = ["run_id", "shard_key", "example"]
# Metric records that are wall-clock times (pgd's per path, lipschitz's per estimator): they
# differ between any two runs, so only their presence is compared.
TIMINGS = {"seconds"}


def records(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-example frame, metrics frame), in a fixed order; timing values blanked."""
    df, m = store_records(store)
    timing = m["name"].isin(TIMINGS)
    assert m.loc[timing, "value"].ge(0).all()
    m.loc[timing, "value"] = -1.0
    return df, m


def assert_same_records(got: tuple, want: tuple) -> None:
    for a, b in zip(got, want):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def run(plan, store: Store, executor=None) -> tuple[list, dict[str, int]]:
    """execute() counting the shards stored per model (each delivery stores one shard)."""
    stored: dict[str, int] = {}

    def on_progress(name: str, n: int) -> None:
        stored[name] = stored.get(name, 0) + 1

    return execute(plan, store, executor=executor, on_progress=on_progress), stored


def local_records(**plan_kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(":memory:") as st:
        run(plan_run(**plan_kwargs), st, LocalExecutor())
        return records(st)


# -- every suite: Ray's records are the local executor's ---------------------------------------
SUITE_RUNS = {
    "clean": dict(suite="clean", models=["resnet8", "resnet8-sugar-bsilu"], n=60, shard_size=10),
    "cifar10c": dict(suite="cifar10c", models=["resnet8", "warp-lca-resnet8"], n=20,
                     shard_size=10, options={"corruptions": "gaussian_noise,fog",
                                             "severities": "3"}),
    "pgd": dict(suite="pgd", models=["resnet8"], n=20, shard_size=5,
                options={"linf": "8/255", "l2": "none", "steps": 2, "check_n": 10}),
    "lipschitz": dict(suite="lipschitz", models=["resnet8"], n=4, shard_size=1,
                      options={"power_iters": 1, "pair_steps": 1, "clever_n": 1,
                               "clever_batches": 2, "clever_samples": 2}),
    "sparsity": dict(suite="sparsity", models=["resnet8-gelu", "warp-lca-resnet8"], n=40,
                     shard_size=10),
    "coding": dict(suite="coding", models=["warp-lca-resnet8"], n=4, shard_size=1,
                   options={"reference_iterations": 30, "max_iterations": 20}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUITE_RUNS))
def test_ray_stores_exactly_what_the_local_executor_stores(ray_cluster, name):
    kwargs = SUITE_RUNS[name]
    plan = plan_run(**kwargs)
    shards = len(plan.shards)
    assert 4 <= shards <= 10
    with Store(":memory:") as st:
        outcomes, stored = run(plan, st, RayExecutor())
        assert [o.shards_computed for o in outcomes] == [shards] * len(plan.models)
        # every shard delivered (and stored) once per model
        assert stored == {pm.name: shards for pm in plan.models}
        assert all(r["complete"] and r["n_shards"] == shards for r in st.runs())
        got = records(st)
        # resume: a second Ray run finds everything stored
        again, stored_again = run(plan, st, RayExecutor())
        assert [o.shards_computed for o in again] == [0] * len(plan.models)
        assert stored_again == {}
        assert_same_records(records(st), got)
    df = got[0]
    assert not df.duplicated(KEY).any()
    assert df.groupby("run_id")["shard_key"].nunique().tolist() == [shards] * len(plan.models)
    assert_same_records(got, local_records(**kwargs))


@pytest.mark.slow
def test_released_cifar10c_files_travel_as_paths_and_give_the_local_records(
        ray_cluster, tmp_path_factory, cifar_dir):
    """The released source reads memory-mapped 150 MB files: the plan's data must pickle
    without them (each worker reopens the files), and the records must be the local ones."""
    from ray import cloudpickle
    from test_cifar10c import _write_released

    from harness.data import load_cifar10_arrays

    root = tmp_path_factory.mktemp("released")
    os.symlink(cifar_dir / "cifar-10-batches-py", root / "cifar-10-batches-py")
    _write_released(root, load_cifar10_arrays("test", data_dir=cifar_dir), ["fog"], n=40)
    kwargs = dict(suite="cifar10c", models=["resnet8"], data_dir=root, n=40, shard_size=20,
                  options={"corruptions": "fog", "source": "released"})
    plan = plan_run(**kwargs)
    assert plan.params["source"] == "released"
    # one released file alone is 153,600,000 bytes of images
    assert len(cloudpickle.dumps(plan.data)) < 2_000_000
    with Store(":memory:") as st:
        (outcome,), stored = run(plan, st, RayExecutor())
        assert outcome.shards_computed == len(plan.shards) == 12     # (clean + 5) x 2
        got = records(st)
    assert set(got[0]["source"]) == {"released", "clean"}
    assert_same_records(got, local_records(**kwargs))


# -- faults: a worker killed mid-shard, an exception in a task ---------------------------------
FAULTY_MODEL = '''
import os
import signal

from torch import nn

from models.zoo import create_model

MARKER = {marker!r}
LAST = {last}               # the batch size of the last shard only


class Faulty(nn.Module):
    """resnet8; in a process other than the one that built it, on the last shard: {what}."""

    def __init__(self):
        super().__init__()
        self.net = create_model("resnet8", pretrained=True)
        self.builder = os.getpid()

    def forward(self, x):
        if x.shape[0] == LAST and os.getpid() != self.builder:
            {action}
        return self.net(x)


def build():
    return Faulty()
'''

KILL_ONCE = """try:
                fd = os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)"""

RAISE = """with open(MARKER, "a") as f:
                f.write(f"{os.getpid()}\\n")
            raise ValueError("bad batch in the last shard")"""

N, SHARD = 45, 10           # shards of 10, 10, 10, 10 and 5 examples


def faulty_model(tmp_path: Path, action: str, what: str) -> tuple[str, Path]:
    """A ``file.py:build`` reference and its marker file."""
    marker = tmp_path / "marker"
    source = FAULTY_MODEL.format(marker=str(marker), last=N % SHARD, action=action, what=what)
    (tmp_path / "faulty.py").write_text(textwrap.dedent(source))
    return f"{tmp_path / 'faulty.py'}:build", marker


def clean_plan(model: str):
    return plan_run(suite="clean", models=[model], n=N, shard_size=SHARD)


def assert_whole_shards_of(part: tuple, full: tuple, shard_keys) -> None:
    """``part`` holds exactly the shards ``shard_keys`` of ``full``, each whole."""
    df, m = part
    assert not df.duplicated(KEY).any()
    assert set(df["shard_key"]) == set(shard_keys)
    keep = [full[0]["shard_key"].isin(shard_keys), full[1]["shard_key"].isin(shard_keys)]
    assert_same_records(part, tuple(f[k].reset_index(drop=True) for f, k in zip(full, keep)))


@pytest.mark.slow
def test_a_worker_killed_mid_shard_is_retried_and_nothing_is_lost_or_doubled(ray_cluster,
                                                                             tmp_path):
    model, marker = faulty_model(tmp_path, KILL_ONCE, "SIGKILL itself once")
    plan = clean_plan(model)
    with Store(":memory:") as st:
        (outcome,), stored = run(plan, st, RayExecutor())          # max_retries=3
        assert marker.exists()                                     # the kill happened
        assert outcome.shards_computed == len(plan.shards) == 5
        assert stored == {model: 5}
        (r,) = st.runs()
        assert r["complete"] and r["n_shards"] == 5 and r["n"] == N
        got = records(st)
    assert not got[0].duplicated(KEY).any() and len(got[0]) == N
    # locally the model never kills: the pid is its builder's
    assert_same_records(got, local_records(suite="clean", models=[model], n=N, shard_size=SHARD))


@pytest.mark.slow
def test_without_retries_a_killed_worker_stops_the_run_and_a_rerun_resumes(ray_cluster,
                                                                           tmp_path):
    model, marker = faulty_model(tmp_path, KILL_ONCE, "SIGKILL itself once")
    plan = clean_plan(model)
    last = plan.shards[-1].key
    oracle = local_records(suite="clean", models=[model], n=N, shard_size=SHARD)
    # Two shards in flight: the last shard starts only after three were delivered.
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(HarnessError) as info:
            run(plan, st, RayExecutor(max_retries=0, max_in_flight=2))
        message = str(info.value)
        assert "\n" not in message
        assert repr(model) in message and f"shard {last}" in message
        assert "retried 0 times" in message
        assert marker.exists()
        part = records(st)
        delivered = set(part[0]["shard_key"])
        assert last not in delivered and len(delivered) >= 3
        assert_whole_shards_of(part, oracle, delivered)
        (r,) = st.runs()
        assert not r["complete"] and r["n_shards"] == len(delivered)
        # the rerun (the marker exists now: no kill) computes only the missing shards
        (outcome,), stored = run(plan, st, RayExecutor(max_retries=0))
        assert outcome.shards_computed == 5 - len(delivered)
        assert stored == {model: 5 - len(delivered)}
        assert st.runs()[0]["complete"]
        assert_same_records(records(st), oracle)


@pytest.mark.slow
def test_an_exception_in_a_task_is_raised_as_itself_after_the_finished_shards(ray_cluster,
                                                                            tmp_path):
    model, log = faulty_model(tmp_path, RAISE, "raise ValueError")
    plan = clean_plan(model)
    with Store(":memory:") as st:
        with pytest.raises(ValueError, match="bad batch in the last shard") as info:
            run(plan, st, RayExecutor(max_in_flight=2))
        # the original exception, not Ray's wrapper (RayTaskError(ValueError) is a ValueError)
        assert type(info.value) is ValueError
        assert not isinstance(info.value, ray_cluster.exceptions.RayTaskError)
        assert len(log.read_text().splitlines()) == 1          # raised once: not retried
        part = records(st)
        delivered = set(part[0]["shard_key"])
        assert plan.shards[-1].key not in delivered and len(delivered) >= 3
    assert_whole_shards_of(part, local_records(suite="clean", models=[model], n=N,
                                               shard_size=SHARD), delivered)


# -- the done-when: the CLI's table is the same through Ray -------------------------------------
def table_cells(stdout: str) -> list[list[str]]:
    """The printed tables as rows of cells, without what legitimately differs between two runs:
    the wall-time caption and the "eval s" column (borders, centring: layout only)."""
    rows, drop = [], None
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith("┃"):                              # a header row
            cells = [c.strip() for c in text.strip("┃").split("┃")]
            drop = cells.index("eval s") if "eval s" in cells else None
        elif text.startswith("│"):                            # a body row
            cells = [c.strip() for c in text.strip("│").split("│")]
        else:
            if text and not text.startswith("wall time") and text[0] not in "┏┡└━─":
                rows.append([text])
            continue
        rows.append([c for i, c in enumerate(cells) if i != drop])
    return rows


@pytest.mark.slow
def test_the_cli_prints_the_same_table_through_ray(tmp_path):
    argv = ["run", "--suite", "cifar10c", "--n", "40", "--corruptions", "gaussian_noise,fog",
            "--severities", "3", "--model", "resnet8", "resnet8-gelu", "--quiet"]
    tables = {}
    for executor in ("local", "ray"):
        done = run_cli(*argv, "--store", str(tmp_path / f"{executor}.sqlite"), "--executor",
                       executor, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "wall time" in done.stdout
        tables[executor] = table_cells(done.stdout)
    local, ray = tables["local"], tables["ray"]
    summary = [row for row in local if row[0] in ("resnet8", "resnet8-gelu")]
    # model, clean %, C-10-C mean %, s3 %, new shards, run id: all equal, run ids included
    assert len(summary) >= 2 and all(len(row) == 6 for row in summary[:2])
    assert all(len(row[-1]) == 12 for row in summary[:2])
    assert local == ray
    with Store(tmp_path / "local.sqlite", readonly=True) as a, \
            Store(tmp_path / "ray.sqlite", readonly=True) as b:
        assert_same_records(records(b), records(a))


def test_table_cells_drops_only_what_differs():
    out = textwrap.dedent("""\
        suite clean | seed 0
        ┏━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┓
        ┃ model   ┃ eval s ┃ run    ┃
        ┡━━━━━━━━━╇━━━━━━━━╇━━━━━━━━┩
        │ resnet8 │   {s} │ 9ca662 │
        └─────────┴────────┴────────┘
          wall time {s} s (input preparation 0.0 s)
        """)
    assert table_cells(out.format(s="0.5")) == table_cells(out.format(s="10.25"))
    assert table_cells(out.format(s="0.5")) == [["suite clean | seed 0"], ["model", "run"],
                                                ["resnet8", "9ca662"]]
    assert table_cells(out.format(s="1").replace("9ca662", "9ca663")) != \
        table_cells(out.format(s="1"))
