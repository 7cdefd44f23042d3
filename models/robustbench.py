"""RobustBench model-zoo adapter: ``--model robustbench:<name>`` evaluates a RobustBench CIFAR-10
model from a local checkpoint, strictly offline.

The architecture comes from ``robustbench.model_zoo.model_dicts`` (RobustBench's own
constructors, inputs in [0, 1], normalisation inside); the weights from RobustBench's own
directory layout, ``<weights-dir>/cifar10/<threat>/<name>.pt`` (threat ``Linf``, ``L2`` or
``corruptions``), i.e. the folder ``robustbench.utils.load_model(name, model_dir=DIR)`` fills
on a machine with internet access. Nothing is downloaded: a missing file is an error that says
where to put it. The checkpoint is read with ``torch.load(weights_only=True)`` (no pickled
code), and prefixes are handled like RobustBench's loader (``module.``, ``model.``; the
``last`` entry of the two checkpoints that hold several).

Names: ``robustbench:Standard`` (the threat whose checkpoint exists; Linf first when several
do) or explicit ``robustbench:L2/Standard``. ``robustbench`` 1.1.1 needs two fixes to import,
applied here: ``setuptools<81`` (it imports ``pkg_resources``) and an ``autoattack`` alias for
PyPI's ``pyautoattack`` module (its ``eval.py`` imports ``autoattack``).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError

PREFIX = "robustbench:"
THREATS = ("Linf", "L2", "corruptions")
DATASET = "cifar10"
WEIGHTS_ENV = "HARNESS_ROBUSTBENCH_DIR"
# Checkpoints RobustBench itself unwraps from a dict of several (utils.load_model).
_TAKE_LAST = ("Kireev2021Effectiveness", "Andriushchenko2020Understanding")


def is_robustbench_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def import_robustbench():
    """``import robustbench`` with the two known fixes; a clear error if it is not installed.
    (Optional, heavy packages: imported here, on first use, never at module import.)"""
    if "autoattack" not in sys.modules:
        try:
            import pyautoattack
        except ImportError:
            pyautoattack = None
        if pyautoattack is not None:
            sys.modules["autoattack"] = pyautoattack
    try:
        with warnings.catch_warnings():  # its imports warn (pkg_resources, timm, torch.jit)
            warnings.simplefilter("ignore")
            import robustbench.model_zoo as zoo
            import robustbench.utils  # noqa: F401  (imported here, under the filter)
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        hint = ("pip install 'setuptools<81'" if "pkg_resources" in str(exc)
                else "pip install robustbench pyautoattack 'setuptools<81'")
        raise HarnessError(f"robustbench models need the robustbench package ({exc}); {hint}") \
            from None
    return zoo.model_dicts[BenchmarkDataset.cifar_10], ThreatModel


def list_robustbench(threat: str | None = None) -> dict[str, list[str]]:
    """RobustBench CIFAR-10 model names per threat model."""
    models, threat_enum = import_robustbench()
    return {t: sorted(models[threat_enum(t)]) for t in THREATS
            if threat is None or t == threat}


def weights_root(explicit: str | os.PathLike | None) -> Path:
    """``--weights-dir``, else ``$HARNESS_ROBUSTBENCH_DIR``; an error naming both otherwise."""
    value = explicit if explicit is not None else os.environ.get(WEIGHTS_ENV)
    if not value:
        raise HarnessError(f"robustbench models load their checkpoint from a local folder: pass "
                           f"a weights dir (--weights-dir DIR, weights_dir=, or ${WEIGHTS_ENV}); "
                           f"the file goes to DIR/{DATASET}/<threat>/<name>.pt")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise HarnessError(f"weights dir {str(path)!r} is not a directory")
    return path


def _resolve_name(ref: str, root: Path, models, threat_enum) -> tuple[str, str]:
    body = ref[len(PREFIX):]
    threat, _, name = body.rpartition("/")
    if threat and threat not in THREATS:
        raise HarnessError(f"model {ref!r}: unknown threat model {threat!r}; one of "
                           f"{', '.join(THREATS)}")
    candidates = [threat] if threat else [t for t in THREATS if name in models[threat_enum(t)]]
    candidates = [t for t in candidates if name in models[threat_enum(t)]]
    if not candidates:
        pool = sorted({n for t in ([threat] if threat else THREATS)
                       for n in models[threat_enum(t)]})
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        where = f"{threat} " if threat else ""
        raise HarnessError(f"model {ref!r}: no RobustBench CIFAR-10 {where}model named "
                           f"{name!r}{hint} (harness ls robustbench)")
    present = [t for t in candidates if (root / DATASET / t / f"{name}.pt").is_file()]
    chosen = (present or candidates)[0]
    if not present:
        expected = root / DATASET / chosen / f"{name}.pt"
        raise HarnessError(
            f"robustbench model {name!r}: checkpoint {str(expected)!r} not found; the harness "
            f"never downloads. On a machine with internet run: python -c \"from robustbench."
            f"utils import load_model; load_model('{name}', model_dir='DIR', "
            f"threat_model='{chosen}')\" and copy DIR/{DATASET}/{chosen}/{name}.pt there")
    return chosen, name


def _strip(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_robustbench(ref: str, *, weights_dir: str | os.PathLike | None = None,
                     device: str = "cpu") -> tuple[Any, dict[str, Any], str]:
    """Build ``robustbench:[threat/]name`` and load its local checkpoint.

    Returns (module in eval mode, identity for the store, canonical name
    ``robustbench:<threat>/<name>``).
    """
    models, threat_enum = import_robustbench()
    root = weights_root(weights_dir)
    threat, name = _resolve_name(ref, root, models, threat_enum)
    entry = models[threat_enum(threat)][name]
    if isinstance(entry.get("gdrive_id"), list):
        raise HarnessError(f"robustbench model {name!r} is an ensemble of several checkpoints; "
                           "the adapter loads single-checkpoint models only")
    path = root / DATASET / threat / f"{name}.pt"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickled code, not a torch file
        raise HarnessError(f"robustbench checkpoint {str(path)!r} cannot be read safely "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if any(name.startswith(p) for p in _TAKE_LAST) and isinstance(checkpoint, dict) \
            and "last" in checkpoint:
        checkpoint = checkpoint["last"]
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(f"robustbench checkpoint {str(path)!r} holds no state dict")
    try:
        module = entry["model"]()
    except Exception as exc:
        raise HarnessError(f"robustbench model {name!r}: building the architecture failed: "
                           f"{type(exc).__name__}: {exc}") from None
    own = module.state_dict()
    state = _strip(state, "module.")
    if not any(k.startswith("model.") for k in own):
        state = _strip(state, "model.")
    # optional package, imported (with its fixes) by import_robustbench above
    from robustbench.utils import _safe_load_state_dict  # RobustBench's known exceptions

    try:
        _safe_load_state_dict(module, name, state, _dataset())
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:300]
        raise HarnessError(f"robustbench checkpoint {str(path)!r} does not fit {name!r}: "
                           f"{first}") from None
    canonical = f"{PREFIX}{threat}/{name}"
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    identity = {"factory": canonical, "weights_sha256": digest,
                "robustbench": _version()}
    return module.to(device).eval(), identity, canonical


def _dataset():
    from robustbench.model_zoo.enums import BenchmarkDataset  # optional package: lazy

    return BenchmarkDataset.cifar_10


def _version() -> str:
    try:
        return version("robustbench")
    except PackageNotFoundError:
        return "unknown"
