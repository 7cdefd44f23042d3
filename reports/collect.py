"""What the store holds, grouped the way pages and comparisons read it.

A *model* here is one exact set of weights: runs are grouped by the spec's model fingerprint
(factory + kwargs + checkpoint sha256, or the weights' hash), not by name, so two checkpoints
of ``resnet8`` evaluated with ``--weights`` are two models. Each model keeps, per suite, the
run that says the most: complete before partial, then more examples, then the latest.

Nothing here recomputes a model output: summaries come from the suites' own ``summarize``,
which aggregates the stored per-example rows and metric records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store import Store
from harness.suites import SUITES, raised_flags


@dataclass
class RunView:
    """One stored run with its suite's summary and headline (read from the store)."""

    run: dict[str, Any]
    summary: Any = None            # the suite's summary frame (None: suite not registered)
    headline: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def suite(self) -> str:
        return self.run["suite"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.run["spec"]

    @property
    def params(self) -> dict[str, Any]:
        return self.run["spec"].get("params", {})

    @property
    def n(self) -> int:
        """Examples per condition (the run's ``n`` parameter, else the stored count)."""
        return int(self.params.get("n") or self.run["n"])

    @property
    def source(self) -> str:
        """Where the inputs came from: the data name, plus released/generated for CIFAR-10-C."""
        data = self.spec.get("data", "?")
        src = self.params.get("source")
        return f"{data} ({src})" if src and src not in data else data

    @property
    def provenance(self) -> dict[str, Any]:
        """The last session's provenance (torch, device, git hash, model identity)."""
        sessions = self.run.get("sessions") or [{}]
        return sessions[-1] or {}


@dataclass
class ModelEntry:
    """One exact model (fingerprint) and its chosen run per suite."""

    key: str                    # unique, filename-safe: the name, or name-<fingerprint[:8]>
    name: str
    fingerprint: str
    runs: dict[str, RunView] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, Any]:
        return model_identity(self.runs.values())

    @property
    def checkpoint_sha256(self) -> str | None:
        return checkpoint_sha256(self.identity)

    def head(self, suite: str, key: str) -> float | None:
        view = self.runs.get(suite)
        if view is None or key not in view.headline:
            return None
        return view.headline[key]


def model_identity(views) -> dict[str, Any]:
    """The model identity (factory, checkpoint or weights sha256, Python class) the first of
    ``views`` that recorded one holds in its provenance; {} when none did."""
    for view in views:
        ident = view.provenance.get("model_identity")
        if ident:
            return ident
    return {}


def checkpoint_sha256(identity: dict[str, Any]) -> str | None:
    """The sha256 of the weights a model identity names (``--weights`` or bundled)."""
    return identity.get("weights_sha256") or identity.get("checkpoint_sha256")


def _defaults(suite: str) -> dict[str, Any]:
    """The suite's option defaults (what ``harness run --suite S`` measures)."""
    if suite not in SUITES:
        return {}
    try:
        return SUITES.get(suite)().check_options({})
    except HarnessError:  # an option without a usable default
        return {}


def _rank(run: dict[str, Any]) -> tuple:
    """Complete runs first, then runs at the suite's default options (a --threshold hard
    coding run is not the model's headline), then more examples, then the latest."""
    params = run["spec"].get("params", {})
    defaults = _defaults(run["suite"])
    at_defaults = all(params.get(k, v) == json.loads(json.dumps(v))  # tuples are stored as lists
                      for k, v in defaults.items())
    return (run["complete"], at_defaults, int(params.get("n") or run["n"]),
            run["started_utc"], run["run_id"])


def slug(text: str) -> str:
    """A filename-safe form of a model name (``file.py:factory`` included)."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return out or "model"


def view_run(store: Store, run: dict[str, Any]) -> RunView:
    """The run with its suite's summary, headline and raised flags, all read from the store."""
    view = RunView(run)
    if run["suite"] in SUITES and run["n"]:
        suite = SUITES.get(run["suite"])()
        view.summary = suite.summarize(store, run["run_id"])
        view.headline = suite.headline(view.summary)
    view.flags = raised_flags(store.metrics_frame([run["run_id"]]))
    return view


def collect(store: Store) -> list[ModelEntry]:
    """Every model in the store, in order of first appearance, with its best run per suite."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in store.runs():
        groups.setdefault(run["spec"]["model_fingerprint"], []).append(run)
    names: dict[str, int] = {}
    for runs in groups.values():
        names[runs[0]["model"]] = names.get(runs[0]["model"], 0) + 1
    entries, used = [], set()
    for fp, runs in groups.items():
        name = runs[0]["model"]
        key = slug(name) if names[name] == 1 else f"{slug(name)}-{fp[:8]}"
        while key in used:
            key += "_"
        used.add(key)
        entry = ModelEntry(key=key, name=name, fingerprint=fp)
        best: dict[str, dict[str, Any]] = {}
        for run in runs:
            if run["suite"] not in best or _rank(run) > _rank(best[run["suite"]]):
                best[run["suite"]] = run
        entry.runs = {suite: view_run(store, run) for suite, run in best.items()}
        entries.append(entry)
    return entries


def file_sha256(path: str | Path) -> str:
    """The sha256 a checkpoint path is stored under: a ``harness train`` checkpoint ``.json``
    names its weights' hash; any other file is hashed."""
    path = Path(path).expanduser()
    if path.suffix == ".json":
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise HarnessError(f"checkpoint {str(path)!r}: cannot read it ({exc})") from None
        if "sha256" not in meta:
            raise HarnessError(f"checkpoint {str(path)!r} has no sha256 (not written by "
                               "'harness train')")
        return meta["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_models(entries: list[ModelEntry], ref: str) -> list[ModelEntry]:
    """The models a reference names: a model key or name, or a checkpoint path (matched by its
    sha256 against the weights each run recorded). Run ids are resolved by the caller."""
    by_key = [e for e in entries if e.key == ref]
    if by_key:
        return by_key
    by_name = [e for e in entries if e.name == ref]
    if by_name:
        return by_name
    path = Path(ref).expanduser()
    if path.is_file():
        sha = file_sha256(path)
        return [e for e in entries if e.checkpoint_sha256 == sha]
    return []
