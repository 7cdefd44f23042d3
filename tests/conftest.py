"""Shared fixtures.

``cifar_dir`` is the full CIFAR-10 copy in the official layout: ``$HARNESS_DATA`` when set
(``.ci/run`` builds it from ``../shared`` with ``make_cifar10.py``); tests that need it skip
otherwise. ``$HARNESS_DATA`` is removed from the environment for the whole session so that every
test states its data source explicitly (the bundled sample unless ``data_dir`` is passed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_DATA = os.environ.pop("HARNESS_DATA", None)
os.environ.pop("HARNESS_STORE", None)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if not _DATA or not (Path(_DATA) / "cifar-10-batches-py" / "test_batch").exists():
        pytest.skip("needs $HARNESS_DATA with cifar-10-batches-py (see .ci/run)")
    return Path(_DATA)


@pytest.fixture(scope="session")
def trained_resnet8():
    """The bundled ResNet-8 with its weights (skips if the checkpoint is not bundled yet)."""
    import models

    return models.create_model("resnet8", pretrained=True)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` in a subprocess (what a user types)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=timeout)
