"""Faults: nothing lost, duplicated or corrupted when drivers die, two drivers share a store, or
the store's disk fills up or its file is made read-only mid-run; and a rerun always resumes.

Each test runs the real CLI in subprocesses on one small cifar10c spec (96 shards) and checks
the store against an uninterrupted run of the same spec in a store of its own (the oracle):
the per-example records and metric records must be identical, bit for bit. "No finished shard
recomputed" is read from the store's own bookkeeping: every shard row names the session (the
process) that computed it, and a rerun's session may only hold the shards the first one lacked.
The Ray executor's own tests (a worker killed mid-shard, records equal to the local executor's)
are in test_ray.py.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import store_records
from harness.store import Store

pytestmark = pytest.mark.slow

SPEC = ["--suite", "cifar10c", "--model", "resnet8", "--n", "60", "--shard-size", "10",
        "--corruptions", "gaussian_noise,fog,contrast", "--severities", "1-5", "--quiet"]
TOTAL_SHARDS = 96          # (clean + 3 corruptions x 5 severities) x 60 / 10


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA", "HARNESS_STORE")}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def harness(store: Path, *extra: str, **kwargs) -> subprocess.Popen:
    """``python -m harness run SPEC --store store`` in a new session (so that a test can kill
    the driver and, with Ray, the local cluster it started)."""
    return subprocess.Popen([sys.executable, "-m", "harness", "run", *SPEC, "--store", str(store),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def query(store: Path, sql: str, *args) -> list[tuple]:
    """Read the store's tables directly (read-only; the store may be mid-write)."""
    conn = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_shards(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        return query(store, "SELECT COUNT(*) FROM shards")[0][0]
    except sqlite3.OperationalError:       # not initialised yet
        return 0


def wait_for_shards(store: Path, proc: subprocess.Popen, k: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while stored_shards(store) < k:
        assert proc.poll() is None, f"the run ended before storing {k} shards: {finish(proc)}"
        assert time.monotonic() < deadline, f"no {k} shards after {timeout} s"
        time.sleep(0.01)


def shard_rows(store: Path) -> dict[str, tuple]:
    """shard key -> (session that computed it, finished time, n, examples stored for it)."""
    rows = query(store, """
        SELECT s.shard_key, s.session_id, s.finished_utc, s.n,
               (SELECT COUNT(*) FROM examples x WHERE x.exec_id = s.exec_id
                AND x.shard_key = s.shard_key)
        FROM shards s""")
    return {r[0]: tuple(r[1:]) for r in rows}


def records(store: Path):
    with Store(store, readonly=True) as st:
        return store_records(st)


def assert_same_records(store: Path, reference: Path) -> None:
    got, got_m = records(store)
    want, want_m = records(reference)
    assert len(got) == len(want) == TOTAL_SHARDS * 10
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(got_m, want_m, check_exact=True)


def assert_intact(store: Path) -> dict[str, tuple]:
    """The store passes SQLite's integrity check and every shard holds all its examples."""
    assert query(store, "PRAGMA integrity_check") == [("ok",)]
    rows = shard_rows(store)
    assert all(n == stored for _, _, n, stored in rows.values()), rows
    return rows


def assert_resumed(before: dict[str, tuple], after: dict[str, tuple]) -> None:
    """The rerun kept every shard stored before as it was and computed only the others, all in
    one new session."""
    assert len(after) == TOTAL_SHARDS
    for key, row in before.items():
        assert after[key] == row, f"shard {key} was recomputed or changed"
    new_sessions = {row[0] for key, row in after.items() if key not in before}
    old_sessions = {row[0] for row in before.values()}
    assert len(new_sessions) == 1 and not new_sessions & old_sessions


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (the oracle of every test here)."""
    store = tmp_path_factory.mktemp("reference") / "reference.sqlite"
    rc, _, err = finish(harness(store))
    assert rc == 0, err
    assert stored_shards(store) == TOTAL_SHARDS
    return store


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_driver_killed_mid_run_then_rerun_recomputes_nothing_finished(tmp_path, reference, seed):
    store = tmp_path / "s.sqlite"
    k = random.Random(seed).randrange(1, TOTAL_SHARDS // 2)    # where the driver dies
    proc = harness(store)
    wait_for_shards(store, proc, k)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = assert_intact(store)
    assert k <= len(before) < TOTAL_SHARDS, "the driver was not killed mid-run"
    rc, out, err = finish(harness(store))
    assert rc == 0, err
    assert_resumed(before, assert_intact(store))
    assert_same_records(store, reference)


def test_ray_driver_killed_mid_run_then_rerun_recomputes_nothing_finished(tmp_path, reference):
    """The driver of a Ray run dies with its local cluster (the whole process group); the rerun
    (here through the local executor: a store does not care who computed a shard) computes only
    what is missing."""
    store = tmp_path / "s.sqlite"
    proc = harness(store, "--executor", "ray")
    try:
        wait_for_shards(store, proc, 5, timeout=180)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)        # the cluster the driver had started
        except ProcessLookupError:
            pass
    before = assert_intact(store)
    assert 5 <= len(before) < TOTAL_SHARDS, "the driver was not killed mid-run"
    rc, _, err = finish(harness(store))
    assert rc == 0, err
    assert_resumed(before, assert_intact(store))
    assert_same_records(store, reference)


def test_two_drivers_on_one_store_both_finish_without_lost_or_duplicated_records(tmp_path,
                                                                                 reference):
    store = tmp_path / "s.sqlite"
    first, second = harness(store), harness(store)
    # Overlap, not taken for granted: both drivers had opened their session (each does so
    # before computing anything) while the shards were not all stored yet.
    deadline = time.monotonic() + 120
    while not store.exists() or _sessions(store) < 2:
        assert time.monotonic() < deadline and (first.poll() is None or second.poll() is None)
        time.sleep(0.005)
    assert stored_shards(store) < TOTAL_SHARDS, "the second driver began after the first ended"
    (rc1, out1, err1), (rc2, out2, err2) = finish(first), finish(second)
    assert (rc1, rc2) == (0, 0), (err1, err2)
    rows = assert_intact(store)
    assert len(rows) == TOTAL_SHARDS                     # the primary key forbids duplicates
    assert query(store, "SELECT COUNT(*) FROM executions") == [(1,)]
    assert query(store, "SELECT COUNT(*) FROM sessions") == [(2,)]
    assert query(store, "SELECT COUNT(*) FROM completions") == [(1,)]
    assert_same_records(store, reference)
    # both print the same accuracies (the table's numbers come from the store)
    numbers = [line.split("│")[1:4] for out in (out1, out2) for line in out.splitlines()
               if line.startswith("│ resnet8")]
    assert numbers[0] == numbers[1]


def _sessions(store: Path) -> int:
    try:
        return query(store, "SELECT COUNT(*) FROM sessions")[0][0]
    except sqlite3.OperationalError:       # not initialised yet
        return 0


def _one_line_store_error(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("harness: error: cannot write to store"), err
    assert "rerun" in lines[0] and "Traceback" not in err


def test_store_made_read_only_mid_run_stops_with_one_line_and_rerun_resumes(tmp_path, reference):
    store = tmp_path / "s.sqlite"
    proc = harness(store)
    wait_for_shards(store, proc, 3)
    store.chmod(0o444)
    rc, _, err = finish(proc)
    assert rc == 2
    _one_line_store_error(err)
    assert "read-only" in err
    before = assert_intact(store)
    assert 3 <= len(before) < TOTAL_SHARDS
    # still read-only: refused before any work, nothing changes
    rc, _, err = finish(harness(store))
    assert rc == 2 and "read-only" in err and shard_rows(store) == before
    store.chmod(0o644)
    rc, _, err = finish(harness(store))
    assert rc == 0, err
    assert_resumed(before, assert_intact(store))
    assert_same_records(store, reference)


def _set_file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_file_size_limit_mid_run_stops_with_one_line_and_rerun_resumes(tmp_path, reference):
    """The operating system refuses to grow the store's files (RLIMIT_FSIZE: every write past
    the limit fails with EFBIG, as on a full quota); works without root."""
    store = tmp_path / "s.sqlite"
    rc, _, err = finish(harness(store, preexec_fn=_set_file_size_limit(160_000)))
    assert rc == 2, err
    _one_line_store_error(err)
    before = assert_intact(store)
    assert 1 <= len(before) < TOTAL_SHARDS
    rc, _, err = finish(harness(store))
    assert rc == 0, err
    assert_resumed(before, assert_intact(store))
    assert_same_records(store, reference)


def _mount_namespace() -> list[str] | None:
    """A command prefix that runs a script in a private mount namespace where it may mount a
    tmpfs (root: ``unshare -m``; otherwise an unprivileged user namespace), or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "-m"], [unshare, "-Urm"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt "
                                "2>/dev/null || mount -t tmpfs -o size=64k tmpfs /tmp"],
                               capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def test_disk_full_mid_run_stops_with_one_line_and_rerun_resumes(tmp_path, reference):
    """A real full disk: the store lives on a 256 kB tmpfs (in a private mount namespace) that
    fills up mid-run; then the tmpfs is enlarged and the same command resumes."""
    prefix = _mount_namespace()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs root or user namespaces); "
                    "test_file_size_limit_mid_run covers a failing write without them")
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    saved.mkdir()
    cmd = " ".join([sys.executable, "-m", "harness", "run", *SPEC, "--store", f"{disk}/s.sqlite"])
    script = f"""
        mount -t tmpfs -o size=256k tmpfs {disk} || exit 90
        {cmd} > {saved}/out1 2> {saved}/err1; echo $? > {saved}/rc1
        df -k {disk} | tail -1 > {saved}/df1
        mkdir {saved}/after-failure && cp {disk}/s.sqlite* {saved}/after-failure/
        mount -o remount,size=64m {disk} || exit 91
        {cmd} > {saved}/out2 2> {saved}/err2; echo $? > {saved}/rc2
        cp {disk}/s.sqlite* {saved}/
    """
    done = subprocess.run([*prefix, "sh", "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (saved / "rc1").read_text().strip() == "2", (saved / "err1").read_text()
    err = (saved / "err1").read_text()
    _one_line_store_error(err)
    assert "full" in err, err
    assert int((saved / "df1").read_text().split()[3]) < 16   # kB left: the disk filled up
    before = assert_intact(saved / "after-failure" / "s.sqlite")
    assert 1 <= len(before) < TOTAL_SHARDS
    assert (saved / "rc2").read_text().strip() == "0", (saved / "err2").read_text()
    assert_resumed(before, assert_intact(saved / "s.sqlite"))
    assert_same_records(saved / "s.sqlite", reference)


def test_same_spec_twice_gives_bit_identical_records(tmp_path, reference):
    """Two fresh stores, the same spec: identical per-example and metric records (losses bit
    for bit), and the same run ids."""
    store = tmp_path / "again.sqlite"
    rc, _, err = finish(harness(store))
    assert rc == 0, err
    assert_same_records(store, reference)
    ids = [query(s, "SELECT run_id FROM runs") for s in (store, reference)]
    assert ids[0] == ids[1]
