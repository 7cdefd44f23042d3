"""Where and how a run was computed: device checks, versions, git state.

Stored with every session of a run (``Store.begin(provenance=...)``), never part of the run id.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError

DTYPES = ("float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=1)
def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    if rev.returncode != 0:
        return {}
    return {"git_hash": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def provenance(*, device: str, dtype: str, batch_size: int) -> dict[str, Any]:
    """Versions, hardware and settings of the process running a run."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": (torch.cuda.get_device_name(torch.device(device))
                        if device.startswith("cuda") else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "batch_size": batch_size,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "pid": os.getpid(),
    }
    info.update(_git_state())  # cached: one pair of git calls per process
    return info


def check_device(device: str) -> str:
    """Validate a device string (cpu, cuda, cuda:N, mps) against what this machine has."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HarnessError(f"device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HarnessError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"device {device!r}: MPS is not available on this machine")
    return str(dev)


def check_dtype(dtype: str) -> str:
    """Validate an evaluation dtype name."""
    if dtype not in DTYPES:
        raise HarnessError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype
