"""The results store: SQLite in WAL mode, schema-versioned, append-only, resumable.

Only this module touches SQLite. Layout (``SCHEMA_VERSION`` in ``PRAGMA user_version``):

* ``runs``        -- one row per :class:`RunSpec` (``run_id`` = content hash of the spec);
* ``executions``  -- one row per attempt at a run (``--force`` starts a new one);
* ``sessions``    -- one row per process that worked on an execution (a resume adds one), with
  its provenance (versions, device, git hash, UTC time);
* ``shards``      -- one row per finished shard of an execution (condition as canonical JSON),
  naming the session that computed it;
* ``examples``    -- per-example outcomes of each shard (label, pred, correct, loss);
* ``example_values`` -- the per-example values of the fields a suite declares beyond those
  (one row per example and field; SQLite keeps each value's own type: INTEGER, REAL, TEXT);
  the shard row's ``fields_json`` records the declared types;
* ``metrics``     -- records that are not per example: (name, scope, index, value), e.g. a
  run-level bound, a per-layer zero fraction, a per-iteration energy;
* ``completions`` -- marks an execution finished.

Schema history: version 1 had no ``example_values``, ``metrics`` or ``shards.fields_json``;
opening a version-1 store for writing migrates it in place in one transaction (the new tables
and column are added, nothing else changes); read-only, it is read as it is.

Nothing is ever updated or deleted. A shard and its examples are written in one transaction,
so a process killed mid-run leaves only whole shards; re-running the same spec continues the
latest execution and skips every shard it already holds (a shard written twice by concurrent
processes keeps the first copy). Readers use, for each run, its latest execution. The file is
marked with ``PRAGMA application_id`` so a foreign SQLite database is never written to.

Example::

    store = Store("harness-results.sqlite")
    df = store.to_frame()          # one row per (run, condition, example), fields as columns
    m = store.metrics_frame()      # one row per metric record
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.records import NO_PREDICTION, SCHEMA_VERSION, RunSpec, ShardResult, canonical_json

DEFAULT_PATH = "harness-results.sqlite"
APPLICATION_ID = 0x48524E53  # "HRNS": marks the file as a harness store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    suite TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    exec_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    started_utc TEXT NOT NULL,
    forced INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id INTEGER PRIMARY KEY AUTOINCREMENT,
    exec_id INTEGER NOT NULL REFERENCES executions(exec_id),
    started_utc TEXT NOT NULL,
    provenance_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    exec_id INTEGER NOT NULL REFERENCES executions(exec_id),
    shard_key TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions(session_id),
    condition_json TEXT NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    n INTEGER NOT NULL,
    n_correct INTEGER NOT NULL,
    wall_s REAL NOT NULL,
    finished_utc TEXT NOT NULL,
    fields_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (exec_id, shard_key)
);
CREATE TABLE IF NOT EXISTS examples (
    exec_id INTEGER NOT NULL,
    shard_key TEXT NOT NULL,
    example INTEGER NOT NULL,
    label INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    loss REAL,                -- NULL when not finite (SQLite stores NaN as NULL)
    PRIMARY KEY (exec_id, shard_key, example)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS example_values (
    exec_id INTEGER NOT NULL,
    shard_key TEXT NOT NULL,
    example INTEGER NOT NULL,
    field TEXT NOT NULL,
    value,                    -- typed by the suite's declaration (NULL: a float that is not finite)
    PRIMARY KEY (exec_id, shard_key, field, example)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
    exec_id INTEGER NOT NULL,
    shard_key TEXT NOT NULL,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    idx NOT NULL,             -- '' for run-level records, a layer name, an iteration number...
    value REAL,               -- NULL when not finite
    PRIMARY KEY (exec_id, shard_key, name, scope, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS completions (
    exec_id INTEGER PRIMARY KEY REFERENCES executions(exec_id),
    finished_utc TEXT NOT NULL,
    n_shards INTEGER NOT NULL
);
"""


_TABLES = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))
_V2_TABLES = {"example_values", "metrics"}
_V1_TABLES = _TABLES - _V2_TABLES
# Version 1 -> 2, run inside one transaction by Store._migrate.
_MIGRATE_V1 = (
    [stmt + ";" for stmt in _SCHEMA.split(";") if any(f" {t} (" in stmt for t in _V2_TABLES)]
    + ["ALTER TABLE shards ADD COLUMN fields_json TEXT NOT NULL DEFAULT '{}';"]
)


class StoreWriteError(HarnessError):
    """The store could not take a write (disk full, read-only, I/O error): the failed write is
    rolled back whole, everything committed before it is intact, and a rerun resumes."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Writer:
    """Where a process appends: the execution, its own session, and what is already stored."""

    exec_id: int
    session_id: int
    done: frozenset[str]
    complete: bool


def _file_writable(file: Path) -> bool:
    """False for a file this user cannot write, and for one nobody may write (no w bit: the
    owner made it read-only), which root could still write."""
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        return True
    return os.access(file, os.W_OK) and bool(mode & 0o222)


def _folder_writable(file: Path) -> bool:
    """SQLite creates the -wal and -shm files beside the store."""
    return os.access(file.parent, os.W_OK | os.X_OK)


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`HarnessError` when a store at ``path`` could not be written: a read-only
    file, or a folder where SQLite cannot create its -wal and -shm files (or that does not
    exist). Cheap; the CLI calls it before loading models, :class:`Store` on opening."""
    name = str(path)
    if not name or name == ":memory:":
        return
    file = Path(name).expanduser()
    if file.is_dir():
        raise HarnessError(f"store {name!r} is a directory; give a file path")
    if not file.parent.is_dir():
        raise HarnessError(f"--store: directory {str(file.parent)!r} does not exist")
    if not _file_writable(file):
        raise HarnessError(f"store {name!r} is read-only; give a writable --store "
                           f"(`harness ls` and `show` can still read it)")
    if not _folder_writable(file):
        raise HarnessError(f"store {name!r}: folder {str(file.parent)!r} is not writable (SQLite "
                           f"keeps its journal next to the store); give a writable --store")


def _connect(name: str, file: Path, *, readonly: bool, memory: bool) -> sqlite3.Connection:
    """Open the SQLite connection. Read-only opens use ``mode=ro``; a WAL-mode store whose file
    or folder we cannot write (SQLite could not create its -shm index there) is then opened as
    ``immutable``, which is exact only when no write-ahead log is pending, so a pending one is
    an error rather than a silently older view."""
    if memory or not readonly:
        return sqlite3.connect(name if memory else str(file), timeout=30, isolation_level=None)
    uri = file.resolve().as_uri()
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        wal = Path(str(file) + "-wal")
        if _file_writable(file) and _folder_writable(file):
            raise                       # not a permission problem
        if wal.exists() and wal.stat().st_size > 0:
            raise HarnessError(f"store {name!r} cannot be read: it has unmerged writes in "
                               f"{wal.name} and is not writable by this user ({exc})") from None
        return sqlite3.connect(uri + "?immutable=1", uri=True, timeout=30,
                               isolation_level=None)


class Store:
    """An append-only SQLite results store.

    Args:
        path: database file (created on first write), or ":memory:".
        readonly: open an existing store without creating or migrating it.

    Raises:
        HarnessError: the file is not a harness store, or has a newer schema.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_PATH, *, readonly: bool = False) -> None:
        self.path = str(path)
        if not self.path:
            raise HarnessError("--store is empty")
        memory = self.path == ":memory:"
        file = Path(self.path).expanduser()
        if not memory and not readonly:
            check_writable(self.path)     # also refuses a directory or a missing folder
        elif not memory and file.is_dir():
            raise HarnessError(f"store {self.path!r} is a directory; give a file path")
        elif not memory and not file.is_file():
            raise HarnessError(f"store {self.path!r} does not exist")
        try:
            self._conn = _connect(self.path, file, readonly=readonly, memory=memory)
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._check_and_init(readonly)
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):
                raise HarnessError(f"store {self.path!r} is read-only ({exc}); give a writable "
                                   f"--store") from None
            raise HarnessError(f"store {self.path!r} is not a harness results database: "
                               f"{exc}") from None

    def _check_and_init(self, readonly: bool) -> None:
        # One read transaction: another process may be initialising the file right now, and
        # three separate reads could see the version before and the tables after its commit.
        self._conn.execute("BEGIN")
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            self._conn.execute("COMMIT")
        fresh = version == 0 and app_id == 0 and not tables
        needed = _V1_TABLES if version == 1 else _TABLES
        if not fresh and (app_id != APPLICATION_ID or not needed <= tables):
            raise HarnessError(f"store {self.path!r} is an SQLite file but not a harness store")
        if version > SCHEMA_VERSION:
            raise HarnessError(
                f"store {self.path!r} has schema version {version}, newer than this harness "
                f"({SCHEMA_VERSION}); upgrade the harness"
            )
        self.version = SCHEMA_VERSION if fresh else version
        if readonly:
            if fresh:
                raise HarnessError(f"store {self.path!r} is empty, not a harness store")
            return
        if version == 1:
            self._migrate_v1()
        if fresh:
            # One script, one transaction: a store is either fully initialised or untouched.
            self._conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};"
                f"PRAGMA application_id={APPLICATION_ID};COMMIT;"
            )
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def _migrate_v1(self) -> None:
        """Add what version 2 has and version 1 lacks, in one transaction: either the store is
        migrated or it is left exactly as it was."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._conn.execute("PRAGMA user_version").fetchone()[0] == 1:  # not raced
                for stmt in _MIGRATE_V1:
                    self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self.version = SCHEMA_VERSION

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        """One write transaction. A write that fails (disk full, read-only file, I/O error, a
        lock held past the timeout: SQLite's OperationalError) is rolled back whole and raised as
        :class:`StoreWriteError`; what was committed before it stays as it was."""
        conn, store = self._conn, self

        class _Tx:
            def __enter__(self_inner):
                store._check_still_writable()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise store._write_error(exc) from None

            def __exit__(self_inner, exc_type, exc, tb):
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                        return False
                    except sqlite3.OperationalError as failed:
                        exc = failed
                if conn.in_transaction:      # SQLite may already have rolled back (SQLITE_FULL)
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.DatabaseError:
                        pass
                if isinstance(exc, sqlite3.OperationalError):   # full, I/O, read-only, busy
                    raise store._write_error(exc) from None
                return False                  # anything else (a bug) propagates as it is

        return _Tx()

    def _check_still_writable(self) -> None:
        """A store made read-only while a run writes to it stops the run (SQLite itself would
        go on writing through the file it has open)."""
        if self.path != ":memory:" and not _file_writable(Path(self.path).expanduser()):
            raise self._write_error("the file was made read-only")

    def _write_error(self, cause) -> StoreWriteError:
        reason = " ".join(str(cause).split()) or type(cause).__name__
        return StoreWriteError(f"cannot write to store {self.path!r} ({reason}); everything it "
                               f"held before is intact: fix this and rerun the same command to "
                               f"resume")

    # -- writing -----------------------------------------------------------------------------
    def begin(self, spec: RunSpec, *, force: bool = False, provenance: dict | None = None
              ) -> Writer:
        """Register ``spec``, pick the execution to write into and open a session on it.

        Without ``force`` the latest execution of the run is continued (resume); with ``force``,
        or when the run is new, a fresh execution is started. Every call records a session with
        ``provenance``, so shards computed by a resumed process name the process that made them.
        """
        run_id = spec.run_id
        with self._tx():
            self._conn.execute(
                "INSERT OR IGNORE INTO runs(run_id, model, suite, spec_json, created_utc) "
                "VALUES (?,?,?,?,?)",
                (run_id, spec.model, spec.suite, canonical_json(spec.to_dict()), utc_now()),
            )
            row = self._conn.execute(
                "SELECT exec_id FROM executions WHERE run_id=? ORDER BY exec_id DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            if row is not None and not force:
                exec_id = row[0]
            else:
                exec_id = self._conn.execute(
                    "INSERT INTO executions(run_id, started_utc, forced) VALUES (?,?,?)",
                    (run_id, utc_now(), int(force)),
                ).lastrowid
            session_id = self._conn.execute(
                "INSERT INTO sessions(exec_id, started_utc, provenance_json) VALUES (?,?,?)",
                (exec_id, utc_now(), canonical_json(provenance or {})),
            ).lastrowid
        done = frozenset(r[0] for r in self._conn.execute(
            "SELECT shard_key FROM shards WHERE exec_id=?", (exec_id,)))
        complete = self._conn.execute(
            "SELECT 1 FROM completions WHERE exec_id=?", (exec_id,)).fetchone() is not None
        return Writer(exec_id=exec_id, session_id=session_id, done=done, complete=complete)

    def write_shard(self, writer: Writer, result: ShardResult, *,
                    fields: Mapping[str, str] | None = None) -> bool:
        """Append one finished shard, its examples, field values and metrics in a single
        transaction. ``fields``: the suite's declared field types (name -> int/float/str/bool);
        default: inferred from the result's arrays.

        Returns False (and writes nothing) when another process stored the shard first.
        """
        s = result.shard
        n = result.n
        types = dict(fields) if fields is not None else {
            k: _infer_type(v) for k, v in result.fields.items()}
        rows = zip([writer.exec_id] * n, [s.key] * n, result.example.tolist(),
                   result.label.tolist(), result.pred.tolist(),
                   result.correct.astype(np.int64).tolist(), result.loss.tolist())
        examples = result.example.tolist()
        values = [(writer.exec_id, s.key, ex, name, v)
                  for name, col in result.fields.items()
                  for ex, v in zip(examples, _sql_values(col, types[name]))]
        metrics = [(writer.exec_id, s.key, m.name, m.scope, m.index, _finite(m.value))
                   for m in result.metrics]
        with self._tx():
            inserted = self._conn.execute(
                "INSERT OR IGNORE INTO shards(exec_id, shard_key, session_id, condition_json, "
                "start, stop, n, n_correct, wall_s, finished_utc, fields_json) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (writer.exec_id, s.key, writer.session_id, canonical_json(dict(s.condition)),
                 s.start, s.stop, n, result.n_correct, result.wall_s,
                 utc_now(), canonical_json(types)),
            ).rowcount
            if inserted:
                self._conn.executemany("INSERT INTO examples VALUES (?,?,?,?,?,?,?)", rows)
                self._conn.executemany("INSERT INTO example_values VALUES (?,?,?,?,?)", values)
                self._conn.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)", metrics)
        return bool(inserted)

    def complete(self, writer: Writer, n_shards: int) -> None:
        """Mark an execution finished (idempotent)."""
        with self._tx():
            self._conn.execute(
                "INSERT OR IGNORE INTO completions(exec_id, finished_utc, n_shards) VALUES (?,?,?)",
                (writer.exec_id, utc_now(), n_shards),
            )

    # -- reading -----------------------------------------------------------------------------
    _LATEST = ("SELECT run_id, MAX(exec_id) AS exec_id FROM executions GROUP BY run_id")

    def runs(self) -> list[dict[str, Any]]:
        """One dict per run (its latest execution): ids, model, suite, spec, counts, status."""
        q = f"""
            SELECT r.run_id, r.model, r.suite, r.spec_json, r.created_utc, e.exec_id,
                   e.started_utc, e.forced, c.finished_utc,
                   COALESCE(SUM(s.n), 0), COALESCE(SUM(s.n_correct), 0), COUNT(s.shard_key),
                   COALESCE(SUM(s.wall_s), 0)
            FROM runs r JOIN ({self._LATEST}) l ON l.run_id = r.run_id
            JOIN executions e ON e.exec_id = l.exec_id
            LEFT JOIN completions c ON c.exec_id = e.exec_id
            LEFT JOIN shards s ON s.exec_id = e.exec_id
            GROUP BY r.run_id ORDER BY e.started_utc, r.run_id
        """
        out = []
        for row in self._conn.execute(q):
            out.append({
                "run_id": row[0], "model": row[1], "suite": row[2],
                "spec": json.loads(row[3]), "created_utc": row[4], "exec_id": row[5],
                "started_utc": row[6], "forced": bool(row[7]),
                "sessions": [json.loads(p) for (p,) in self._conn.execute(
                    "SELECT provenance_json FROM sessions WHERE exec_id=? ORDER BY session_id",
                    (row[5],))],
                "finished_utc": row[8], "complete": row[8] is not None,
                "n": row[9], "n_correct": row[10], "n_shards": row[11], "wall_s": row[12],
            })
        return out

    def find_run(self, prefix: str) -> dict[str, Any]:
        """The run whose id starts with ``prefix`` (unique), or a HarnessError."""
        matches = [r for r in self.runs() if r["run_id"].startswith(prefix)]
        if not matches:
            raise HarnessError(f"no run {prefix!r} in store {self.path!r} (see 'harness ls runs')")
        if len(matches) > 1:
            raise HarnessError(f"run id {prefix!r} is ambiguous ({len(matches)} runs); "
                               "give more characters")
        return matches[0]

    def condition_summary(self, run_id: str):
        """Per-condition counts of a run's latest execution (pandas).

        Columns: one per condition key (e.g. ``condition``), then n, n_correct, accuracy and
        n_nonfinite (examples whose logits were not finite: no prediction, counted wrong).
        """
        import pandas as pd  # lazy: `harness --help` loads this module (via the suites)

        rows = self._conn.execute(
            f"""SELECT s.condition_json, SUM(s.n), SUM(s.n_correct), MIN(s.start),
                       SUM((SELECT COUNT(*) FROM examples x WHERE x.exec_id = s.exec_id
                            AND x.shard_key = s.shard_key AND x.pred = ?))
                FROM ({self._LATEST}) l JOIN shards s ON s.exec_id = l.exec_id
                WHERE l.run_id = ? GROUP BY s.condition_json ORDER BY MIN(s.start), s.condition_json
            """, (NO_PREDICTION, run_id)).fetchall()
        conds = [json.loads(r[0]) for r in rows]
        keys = sorted({k for c in conds for k in c})
        df = pd.DataFrame([{**{k: c.get(k) for k in keys}, "n": r[1], "n_correct": r[2],
                            "n_nonfinite": r[4]} for c, r in zip(conds, rows)],
                          columns=[*keys, "n", "n_correct", "n_nonfinite"])
        df["accuracy"] = df["n_correct"] / df["n"]
        return df[[*keys, "n", "n_correct", "accuracy", "n_nonfinite"]]

    def _where_runs(self, run_ids: Iterable[str] | None) -> tuple[str, list[Any]]:
        if run_ids is None:
            return "", []
        ids = list(run_ids)
        return f" WHERE r.run_id IN ({','.join('?' * len(ids))})", ids

    def to_frame(self, run_ids: Iterable[str] | None = None):
        """Per-example results of the latest execution of each run as a pandas DataFrame.

        Columns: run_id, model, suite, data, seed, shard_key, the condition's keys (one column
        each, e.g. ``condition``), example, label, pred, correct (bool), loss, then one column
        per declared field of the runs' suites (typed as declared; missing where a run's suite
        does not have the field).
        """
        import pandas as pd  # lazy: `harness --help` loads this module (via the suites)

        where, args = self._where_runs(run_ids)
        q = f"""
            SELECT r.run_id, r.model, r.suite, r.spec_json, s.shard_key, s.condition_json,
                   x.example, x.label, x.pred, x.correct, x.loss
            FROM runs r JOIN ({self._LATEST}) l ON l.run_id = r.run_id
            JOIN shards s ON s.exec_id = l.exec_id
            JOIN examples x ON x.exec_id = s.exec_id AND x.shard_key = s.shard_key
            {where} ORDER BY r.run_id, s.shard_key, x.example
        """
        rows = self._conn.execute(q, args).fetchall()
        cols = ["run_id", "model", "suite", "spec_json", "shard_key", "condition_json",
                "example", "label", "pred", "correct", "loss"]
        df = pd.DataFrame(rows, columns=cols)
        specs = {k: json.loads(k) for k in df["spec_json"].unique()}
        conds = {k: json.loads(k) for k in df["condition_json"].unique()}
        df.insert(3, "data", df["spec_json"].map(lambda k: specs[k]["data"]))
        df.insert(4, "seed", df["spec_json"].map(lambda k: specs[k]["seed"]).astype("int64"))
        cond_keys = sorted({k for c in conds.values() for k in c})
        for i, key in enumerate(cond_keys):
            df.insert(6 + i, key, df["condition_json"].map(lambda c, key=key: conds[c].get(key)))
        df = df.drop(columns=["spec_json", "condition_json"])
        df["correct"] = df["correct"].astype(bool)
        return self._join_fields(df, where, args)

    def _join_fields(self, df, where: str, args: list[Any]):
        """``df`` with one column per stored field (pivoted from ``example_values``)."""
        import pandas as pd  # lazy: `harness --help` loads this module (via the suites)

        if self.version < 2:
            return df
        types: dict[str, str] = {}
        for (fj,) in self._conn.execute(f"""
                SELECT DISTINCT s.fields_json FROM runs r
                JOIN ({self._LATEST}) l ON l.run_id = r.run_id
                JOIN shards s ON s.exec_id = l.exec_id {where}""", args):
            types.update(json.loads(fj))
        if not types:
            return df
        vals = pd.DataFrame(self._conn.execute(f"""
            SELECT r.run_id, v.shard_key, v.example, v.field, v.value
            FROM runs r JOIN ({self._LATEST}) l ON l.run_id = r.run_id
            JOIN example_values v ON v.exec_id = l.exec_id {where}""", args).fetchall(),
            columns=["run_id", "shard_key", "example", "field", "value"])
        key = ["run_id", "shard_key", "example"]
        wide = vals.pivot(index=key, columns="field", values="value")
        df = df.merge(wide, how="left", left_on=key, right_index=True)
        for name, kind in types.items():
            if name not in df:
                df[name] = None
            df[name] = _typed_column(df[name], kind)
        return df

    def metrics_frame(self, run_ids: Iterable[str] | None = None):
        """Metric records (not per example) of the latest execution of each run (pandas).

        Columns: run_id, model, suite, shard_key, the condition's keys, name, scope, index,
        value (float, NaN where not finite).
        """
        import pandas as pd  # lazy: `harness --help` loads this module (via the suites)

        cols = ["run_id", "model", "suite", "shard_key", "name", "scope", "index", "value"]
        if self.version < 2:
            return pd.DataFrame(columns=cols)
        where, args = self._where_runs(run_ids)
        rows = self._conn.execute(f"""
            SELECT r.run_id, r.model, r.suite, m.shard_key, s.condition_json, m.name, m.scope,
                   m.idx, m.value
            FROM runs r JOIN ({self._LATEST}) l ON l.run_id = r.run_id
            JOIN metrics m ON m.exec_id = l.exec_id
            JOIN shards s ON s.exec_id = m.exec_id AND s.shard_key = m.shard_key
            {where} ORDER BY r.run_id, m.shard_key, m.name, m.scope, m.idx""", args).fetchall()
        df = pd.DataFrame(rows, columns=[*cols[:4], "condition_json", *cols[4:]])
        conds = {k: json.loads(k) for k in df["condition_json"].unique()}
        for i, key in enumerate(sorted({k for c in conds.values() for k in c})):
            df.insert(4 + i, key, df["condition_json"].map(lambda c, key=key: conds[c].get(key)))
        df = df.drop(columns=["condition_json"])
        df["value"] = df["value"].astype("float64")
        return df


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _infer_type(col: np.ndarray) -> str:
    if col.dtype == bool:
        return "bool"
    if np.issubdtype(col.dtype, np.integer):
        return "int"
    if np.issubdtype(col.dtype, np.floating):
        return "float"
    return "str"


def _sql_values(col, kind: str) -> list:
    """A field's column as Python values SQLite stores with their own type."""
    arr = np.asarray(col)
    if kind == "float":
        return [v if math.isfinite(v) else None for v in arr.astype(np.float64).tolist()]
    if kind in ("int", "bool"):
        return arr.astype(np.int64).tolist()
    return [str(v) for v in arr.tolist()]


def _typed_column(col, kind: str):
    if kind == "float":
        return col.astype("float64")
    if kind == "int":
        return col.astype("Int64")       # nullable: runs without the field have <NA>
    if kind == "bool":
        return col.astype("boolean")
    return col.astype("object")
