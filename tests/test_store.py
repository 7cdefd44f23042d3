"""Store: round trips, resume, force, schema checks, and a SIGKILL mid-run."""

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_suite
from harness.data import load_sample
from harness.errors import HarnessError
from harness.records import SCHEMA_VERSION, ExampleResult, RunSpec, Shard, ShardResult
from harness.resolve import LoadedModel, resolve_model
from harness.store import Store
from models import create_model


def spec(**kw):
    base = dict(model="m", model_fingerprint="f" * 64, suite="clean", params={"n": 4},
                data="bundled-sample", data_fingerprint="d" * 64, seed=0, dtype="float32",
                harness_version="0.1.0")
    base.update(kw)
    return RunSpec(**base)


def shard_result(key, start, stop):
    ex = [ExampleResult(example=i, label=i % 10, pred=(i * 7) % 10, correct=i % 3 == 0,
                        loss=0.5 * i) for i in range(start, stop)]
    result = ShardResult.from_rows(Shard(key, {"condition": "clean"}, start, stop), ex, wall_s=0.1)
    assert result.rows() == ex
    return result


def test_run_id_is_a_content_hash():
    assert spec().run_id == spec().run_id
    assert spec(seed=1).run_id != spec().run_id
    assert spec(params={"n": 5}).run_id != spec().run_id
    assert spec(data_fingerprint="e" * 64).run_id != spec().run_id


def test_round_trip_and_resume(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        w1 = st.begin(spec(), provenance={"pid": 1})
        assert w1.done == set() and not w1.complete
        st.write_shard(w1, shard_result("a", 0, 2))
    with Store(path) as st:  # a new process resumes the same execution in a new session
        w2 = st.begin(spec(), provenance={"pid": 2})
        assert w2.exec_id == w1.exec_id and w2.session_id != w1.session_id
        assert w2.done == {"a"} and not w2.complete
        st.write_shard(w2, shard_result("b", 2, 4))
        st.complete(w2, 2)
        df = st.to_frame()
        sessions = dict(st._conn.execute("SELECT shard_key, session_id FROM shards"))
        assert sessions == {"a": w1.session_id, "b": w2.session_id}
    assert df["example"].tolist() == [0, 1, 2, 3]
    assert df["correct"].tolist() == [True, False, False, True]
    assert df["pred"].tolist() == [0, 7, 4, 1] and df["loss"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert set(df["condition"]) == {"clean"} and set(df["model"]) == {"m"}
    with Store(path, readonly=True) as st:
        (run,) = st.runs()
        assert run["complete"] and run["n"] == 4 and run["n_correct"] == 2
        assert run["sessions"] == [{"pid": 1}, {"pid": 2}]
        summary = st.condition_summary(run["run_id"])
        assert summary.to_dict("records") == [
            {"condition": "clean", "n": 4, "n_correct": 2, "accuracy": 0.5, "n_nonfinite": 0}]
        assert st.find_run(run["run_id"][:6])["run_id"] == run["run_id"]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_force_appends_a_new_execution(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        w1 = st.begin(spec())
        st.write_shard(w1, shard_result("a", 0, 2))
        w2 = st.begin(spec(), force=True)
        assert w2.exec_id != w1.exec_id and w2.done == set()
        assert st.to_frame().empty  # readers see the latest execution only
        st.write_shard(w2, shard_result("a", 0, 2))
        assert len(st.to_frame()) == 2
        n_rows = st._conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
        assert n_rows == 4  # nothing was deleted


def test_duplicate_shard_keeps_the_first_copy(tmp_path):
    """Two processes on the same spec: the second copy of a shard is dropped, not merged."""
    with Store(tmp_path / "s.sqlite") as st:
        w = st.begin(spec())
        assert st.write_shard(w, shard_result("a", 0, 2))
        other = ShardResult.from_rows(Shard("a", {"condition": "clean"}, 0, 2),
                                      [ExampleResult(0, 0, 9, False, 9.0)], wall_s=0.1)
        assert not st.write_shard(w, other)
        df = st.to_frame()
        assert df["pred"].tolist() == [0, 7] and len(df) == 2


def test_non_finite_loss_is_stored_as_missing(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        w = st.begin(spec())
        ex = (ExampleResult(0, 1, 1, True, float("nan")), ExampleResult(1, 2, 3, False, 2.0))
        st.write_shard(w, ShardResult.from_rows(Shard("a", {"condition": "clean"}, 0, 2), ex,
                                                wall_s=0.1))
        df = st.to_frame()
    assert df["loss"].isna().tolist() == [True, False] and df["correct"].tolist() == [True, False]


def test_bad_store_files(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        Store(tmp_path / "absent.sqlite", readonly=True)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HarnessError, match="not a harness results database"):
        Store(junk)
    assert junk.read_bytes() == b"this is not sqlite" * 100
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(HarnessError, match="not a harness store"):
        Store(other)
    versioned = tmp_path / "versioned.sqlite"  # foreign file that happens to set user_version
    con = sqlite3.connect(versioned)
    con.execute("CREATE TABLE runs(x)")
    con.execute("PRAGMA user_version=1")
    con.close()
    before = versioned.read_bytes()
    with pytest.raises(HarnessError, match="not a harness store"):
        Store(versioned)
    assert versioned.read_bytes() == before
    newer = tmp_path / "newer.sqlite"
    Store(newer).close()
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(HarnessError, match="newer than this harness"):
        Store(newer)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(HarnessError, match="empty, not a harness store"):
        Store(empty, readonly=True)
    with pytest.raises(HarnessError, match="is a directory"):
        Store(tmp_path)
    odd = tmp_path / "we?ird #dir%"
    odd.mkdir()
    Store(odd / "s.sqlite").close()
    with Store(odd / "s.sqlite", readonly=True) as st:  # the read-only URI is escaped
        assert st.runs() == []
    with pytest.raises(HarnessError, match="directory .* does not exist"):
        Store(tmp_path / "no" / "s.sqlite")


def test_run_suite_resumes_without_recomputing(tmp_path):
    model = LoadedModel(name="resnet8-random", module=create_model("resnet8"),
                        identity={"factory": "resnet8"})
    data = load_sample()
    with Store(tmp_path / "s.sqlite") as st:
        first = run_suite(model=model, suite="clean", data=data, store=st, n=300, shard_size=100)
        assert (first.shards_computed, first.shards_total) == (3, 3)
        again = run_suite(model=model, suite="clean", data=data, store=st, n=300, shard_size=100)
        assert again.shards_computed == 0 and again.run_id == first.run_id
        forced = run_suite(model=model, suite="clean", data=data, store=st, n=300,
                           shard_size=100, force=True)
        assert forced.shards_computed == 3
        assert forced.summary["accuracy"].tolist() == first.summary["accuracy"].tolist()
        # the same architecture and name with other weights (changed before the model is
        # fingerprinted, as a new checkpoint would be)
        module = create_model("resnet8")
        module.load_state_dict(model.module.state_dict())
        with torch.no_grad():
            module.fc.bias += 1.0
        other_weights = LoadedModel(name="resnet8-random", module=module,
                                    identity={"factory": "resnet8"})
        assert run_suite(model=other_weights, suite="clean", data=data, store=st, n=300,
                         shard_size=100).run_id != first.run_id


_KILL_SCRIPT = """
import sys, time
from harness.data import load_cifar10_arrays
from harness.executor import execute
from harness.plan import plan_run
from harness.resolve import LoadedModel
from harness.store import Store
from harness.suites import clean
from models import create_model
import torch

torch.manual_seed(0)
slow = float(sys.argv[3])
orig = clean.CleanSuite.evaluate
def evaluate(self, *a, **k):          # slow each shard down so the kill lands mid-run
    time.sleep(slow)
    return orig(self, *a, **k)
clean.CleanSuite.evaluate = evaluate
model = LoadedModel(name="resnet8-seed0", module=create_model("resnet8"), identity={"seed": 0})
plan = plan_run(models=[model], suite="clean", data=load_cifar10_arrays("test", data_dir=sys.argv[2]),
                n=4000, shard_size=250)
with Store(sys.argv[1]) as st:
    (out,) = execute(plan, st)
print("computed", out.shards_computed, "of", out.shards_total)
"""


def _shard_rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT shard_key, finished_utc, exec_id FROM shards").fetchall()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.data
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, cifar_dir):
    killed, clean_path = tmp_path / "killed.sqlite", tmp_path / "clean.sqlite"
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), str(cifar_dir), "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    rows = []
    while time.time() < deadline:
        if killed.exists():
            try:
                rows = _shard_rows(killed)
            except sqlite3.OperationalError:
                rows = []
        if len(rows) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _shard_rows(killed)
    assert 4 <= len(before) < 16, "the kill must land mid-run"
    with Store(killed, readonly=True) as st:  # `harness ls runs` after a crash
        (partial,) = st.runs()
        assert not partial["complete"] and partial["n_shards"] == len(before)

    out = subprocess.run([sys.executable, str(script), str(killed), str(cifar_dir), "0"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["computed", str(16 - len(before)), "of", "16"]
    after = _shard_rows(killed)
    assert set(before) <= set(after) and len(after) == 16  # finished shards kept, not redone

    subprocess.run([sys.executable, str(script), str(clean_path), str(cifar_dir), "0"],
                   capture_output=True, text=True, check=True)
    cols = ["model", "suite", "data", "seed", "shard_key", "condition", "example", "label",
            "pred", "correct", "loss"]
    with Store(killed, readonly=True) as a, Store(clean_path, readonly=True) as b:
        fa, fb = a.to_frame()[cols], b.to_frame()[cols]
        assert a.runs()[0]["run_id"] == b.runs()[0]["run_id"]
        assert a.runs()[0]["complete"]
    assert len(fa) == 4000
    assert fa.equals(fb)


FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store-v1.sqlite"
V1_TABLES = {  # every column version 1 had, per table
    "runs": "run_id, model, suite, spec_json, created_utc",
    "executions": "exec_id, run_id, started_utc, forced",
    "sessions": "session_id, exec_id, started_utc, provenance_json",
    "shards": "exec_id, shard_key, session_id, condition_json, start, stop, n, n_correct, "
              "wall_s, finished_utc",
    "examples": "exec_id, shard_key, example, label, pred, correct, loss",
    "completions": "exec_id, finished_utc, n_shards",
}


def _dump(path) -> dict[str, list]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT {cols} FROM {t} ORDER BY {cols}").fetchall()
                for t, cols in V1_TABLES.items()}
    finally:
        con.close()


def test_v1_store_is_read_then_migrated_in_place_losing_nothing(tmp_path):
    """The fixture was written by the harness as of commit 03558ba (schema 1): two clean runs
    of resnet8 (n=20, shard 10; the second with --force) and a cifar10c run of two models."""
    path = tmp_path / "v1.sqlite"
    shutil.copy(FIXTURE_V1, path)
    before = _dump(path)
    assert len(before["examples"]) == 140 and len(before["runs"]) == 3
    with Store(path, readonly=True) as st:         # read-only: read as it is
        assert st.version == 1
        frame, runs = st.to_frame(), st.runs()
        assert st.metrics_frame().empty
    assert _dump(path) == before and sqlite3.connect(path).execute(
        "PRAGMA user_version").fetchone()[0] == 1
    with Store(path) as st:                        # writable: migrated
        assert st.version == SCHEMA_VERSION == 2
        pd.testing.assert_frame_equal(st.to_frame(), frame)
        assert st.runs() == runs
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert {r[0] for r in con.execute("SELECT DISTINCT fields_json FROM shards")} == {"{}"}
    con.close()
    assert _dump(path) == before                   # every v1 row, byte for byte
    # the same spec resumes from the migrated store: nothing is recomputed
    (clean,) = [r for r in runs if r["suite"] == "clean"]
    with Store(path) as st:
        out = run_suite(model=resolve_model("resnet8"), suite="clean", store=st, n=20,
                        shard_size=10)
        assert out.run_id == clean["run_id"] and out.shards_computed == 0
        assert out.summary["n"].sum() == 20


def test_failed_migration_leaves_the_v1_store_untouched(tmp_path):
    path = tmp_path / "v1.sqlite"
    shutil.copy(FIXTURE_V1, path)
    con = sqlite3.connect(path)   # a hand-edited store on which the last migration step fails
    con.execute("ALTER TABLE shards ADD COLUMN fields_json TEXT")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(HarnessError, match="duplicate column name: fields_json"):
        Store(path)
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()
    assert "example_values" not in tables and "metrics" not in tables  # rolled back
    assert path.read_bytes() == before


def test_fields_and_metrics_round_trip(tmp_path):
    import numpy as np

    from harness.records import MetricRecord

    with Store(tmp_path / "s.sqlite") as st:
        w = st.begin(spec(suite="toy"))
        base = shard_result("a", 0, 3)
        result = dataclasses.replace(base, fields={
            "norm": np.array([0.5, float("inf"), 2.0]), "steps": np.array([3, 0, 10]),
            "found_by": np.array(["pgd", "", "fab"]), "fooled": np.array([True, False, True])},
            metrics=(MetricRecord("upper", "run", "", 4.5),
                     MetricRecord("zeros", "layer", "layer1.0.act", 0.25),
                     MetricRecord("energy", "iteration", 7, float("nan"))))
        types = {"norm": "float", "steps": "int", "found_by": "str", "fooled": "bool"}
        assert st.write_shard(w, result, fields=types)
        assert not st.write_shard(w, result, fields=types)   # a second copy is ignored
        df, m = st.to_frame(), st.metrics_frame()
    assert df["norm"].tolist()[0] == 0.5 and np.isnan(df["norm"].tolist()[1])
    assert df["steps"].tolist() == [3, 0, 10] and str(df["steps"].dtype) == "Int64"
    assert df["found_by"].tolist() == ["pgd", "", "fab"]
    assert df["fooled"].tolist() == [True, False, True] and str(df["fooled"].dtype) == "boolean"
    assert df["pred"].tolist() == base.pred.tolist()
    assert m[["name", "scope"]].values.tolist() == [["energy", "iteration"], ["upper", "run"],
                                                    ["zeros", "layer"]]
    assert m["index"].tolist() == [7, "", "layer1.0.act"] and np.isnan(m["value"].iloc[0])
    assert m["value"].iloc[1:].tolist() == [4.5, 0.25] and set(m["condition"]) == {"clean"}


_KILL_IN_WRITE = """
import os, signal, sys
from harness.executor import execute
from harness.plan import plan_run
from harness.store import Store

kill_at = int(sys.argv[2])          # the transaction to die in, between its inserts and COMMIT
count = 0
orig_tx = Store._tx


def _tx(self):
    inner = orig_tx(self)

    class Tx:
        def __enter__(self_):
            return inner.__enter__()

        def __exit__(self_, *exc):
            global count
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return inner.__exit__(*exc)

    return Tx()


Store._tx = _tx
plan = plan_run(suite="clean", models=["resnet8"], n=120, shard_size=10)
with Store(sys.argv[1]) as st:
    (out,) = execute(plan, st)
print("computed", out.shards_computed, "of", out.shards_total)
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_between_a_shards_inserts_and_its_commit(tmp_path, seed):
    """SIGKILL inside the write transaction of a random shard: the shard is absent (not
    half-written), earlier shards are intact, and the rerun equals an uninterrupted run."""
    import random

    script = tmp_path / "job.py"
    script.write_text(_KILL_IN_WRITE)
    killed, whole = tmp_path / "killed.sqlite", tmp_path / "whole.sqlite"
    kill_at = random.Random(seed).randint(2, 12)   # transaction 1 opens the run
    proc = subprocess.run([sys.executable, str(script), str(killed), str(kill_at)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    con = sqlite3.connect(killed)
    shards, examples = (con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                        for t in ("shards", "examples"))
    con.close()
    assert shards == kill_at - 2 and examples == 10 * shards   # the dying shard left nothing
    rerun = subprocess.run([sys.executable, str(script), str(killed), "0"], capture_output=True,
                           text=True, timeout=300)
    assert rerun.stdout.split() == ["computed", str(12 - shards), "of", "12"], rerun.stderr
    subprocess.run([sys.executable, str(script), str(whole), "0"], capture_output=True,
                   text=True, timeout=300, check=True)
    cols = ["run_id", "shard_key", "example", "label", "pred", "correct", "loss"]
    with Store(killed, readonly=True) as a, Store(whole, readonly=True) as b:
        pd.testing.assert_frame_equal(a.to_frame()[cols], b.to_frame()[cols])
        assert a.runs()[0]["complete"]
