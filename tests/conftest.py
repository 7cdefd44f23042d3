"""Shared fixtures.

``cifar_dir`` is the full CIFAR-10 copy in the official layout: ``$HARNESS_DATA`` when set,
else ``.cache/cifar10`` in the repo, built once from ``../shared/data/cifar10-jpeg.tar.gz`` with
``../shared/tools/make_cifar10.py`` when those exist; tests that need it skip otherwise.
``$HARNESS_DATA`` is removed from the environment for the whole session so that every test
states its data source explicitly (the bundled sample unless ``data_dir`` is passed).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

_DATA = os.environ.pop("HARNESS_DATA", None)
# Under CI a missing oracle library or data set is a failure, never a skip: a green CI run
# must have run every check.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
os.environ.pop("HARNESS_STORE", None)
REPO = Path(__file__).resolve().parents[1]


CACHE = REPO / ".cache" / "cifar10"
MAKE_CIFAR10 = REPO.parent / "shared" / "tools" / "make_cifar10.py"


def _has_cifar(path: Path) -> bool:
    return (path / "cifar-10-batches-py" / "test_batch").exists()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if _DATA:
        if not _has_cifar(Path(_DATA)):
            pytest.fail(f"$HARNESS_DATA={_DATA} holds no cifar-10-batches-py/test_batch")
        return Path(_DATA)
    if not _has_cifar(CACHE) and MAKE_CIFAR10.exists():
        subprocess.run([sys.executable, str(MAKE_CIFAR10), str(CACHE)], check=True,
                       capture_output=True, timeout=600)
    if not _has_cifar(CACHE):
        message = "needs CIFAR-10: set $HARNESS_DATA or provide ../shared (see README)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return CACHE


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): their tensors are small (2-256 images), and
    with the two cores shared by other processes OpenMP's spinning threads made such files
    20-30x slower (measured: tests/test_gradient_modes.py 10 s with one thread, 3.5-6.5 min
    with two under load). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require(module: str):
    """Import an oracle library: skipped when missing on a developer's machine, an import
    error (a failing test) under CI."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module)


def make_small_cifar(root: Path) -> Path:
    """``root/cifar-10-batches-py`` in the official layout from the bundled sample: 5 train
    batches of 160 images and a test batch of the last 200. Returns ``root``."""
    from harness.data import load_sample

    s = load_sample()
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = s.images.reshape(1000, -1)
    for b in range(5):
        sl = slice(b * 160, (b + 1) * 160)
        write_batch(folder / f"data_batch_{b + 1}", flat[sl], s.labels[sl], bytes_keys=True)
    write_batch(folder / "test_batch", flat[800:], s.labels[800:], bytes_keys=True)
    return root


def write_batch(path: Path, data, labels, *, bytes_keys: bool = False) -> None:
    """One batch file in the official pickle layout (bytes keys like the Python 2 release)."""
    d = {"data": data, "labels": list(labels), "batch_label": "test"}
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a subprocess (what a user types)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout)


def store_records(store):
    """A store's per-example records and metric records (pandas), in a fixed order: what two
    stores of the same spec must agree on, bit for bit, whoever computed them."""
    df = store.to_frame().sort_values(["run_id", "shard_key", "example"])
    m = store.metrics_frame().sort_values(["run_id", "shard_key", "name", "scope", "index"],
                                          key=lambda c: c.astype(str))
    return df.reset_index(drop=True), m.reset_index(drop=True)


def run_suites(*, models, store, force: bool = False, **plan_kwargs):
    """Plan and execute a run into ``store``, as the CLI does (``harness.plan.plan_run`` +
    ``harness.executor.execute``); returns the outcomes."""
    from harness.executor import execute
    from harness.plan import plan_run

    return execute(plan_run(models=models, **plan_kwargs), store, force=force)


def run_suite(*, model, **kwargs):
    """:func:`run_suites` for one model; returns its outcome."""
    return run_suites(models=[model], **kwargs)[0]


# Small real stores for the report tests, filled through the CLI on bundled models and the
# bundled sample (the pages read them; nothing is recomputed). The quick one (seconds) holds
# what the default tier needs; the full one adds the attack and Lipschitz suites (slow tier).
REPORT_RUNS = (
    ("cifar10c", ["resnet8", "resnet8-sugar-bsilu"],
     ["--corruptions", "gaussian_noise,fog", "--severities", "1,3", "--n", "100"]),
    ("sparsity", ["resnet8", "resnet8-sugar-bsilu"], ["--n", "100"]),
)
REPORT_RUNS_FULL = (
    ("pgd", ["resnet8"], ["--n", "40", "--linf", "2/255,8/255", "--l2", "0.5", "--steps", "3",
                          "--check-n", "20"]),
    ("lipschitz", ["resnet8"], ["--n", "6", "--power-iters", "3", "--clever-n", "1",
                                "--clever-batches", "3", "--clever-samples", "8",
                                "--pair-steps", "2"]),
)


def _fill_store(store: Path, runs) -> Path:
    from harness.cli import main

    for suite, models, extra in runs:
        status = main(["run", "--suite", suite, "--model", *models, "--store", str(store),
                       "--quiet", *extra])
        assert status == 0, f"{suite} run failed"
    return store


@pytest.fixture(scope="session")
def report_store(tmp_path_factory) -> Path:
    """A store with the :data:`REPORT_RUNS` (CIFAR-10-C with its clean set, sparsity): seconds."""
    return _fill_store(tmp_path_factory.mktemp("report") / "store.sqlite", REPORT_RUNS)


@pytest.fixture(scope="session")
def full_report_store(tmp_path_factory) -> Path:
    """:func:`report_store`'s runs plus PGD (with its masking checks) and Lipschitz."""
    return _fill_store(tmp_path_factory.mktemp("report-full") / "store.sqlite",
                       REPORT_RUNS + REPORT_RUNS_FULL)
