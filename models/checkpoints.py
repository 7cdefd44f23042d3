"""Checkpoints: safetensors weights + a JSON sidecar of metadata. Loading never unpickles code.

A checkpoint ``STEM`` is two files:

* ``STEM.safetensors`` -- the tensors (a model's state dict, or named tensors such as the LCA
  dictionary's atoms and whitening filter);
* ``STEM.json`` -- ``format_version``, the ``kind`` of checkpoint (absent for models), for
  models the registry ``factory`` name, its ``factory_kwargs`` and ``num_params``, then
  whatever the writer records (normalisation, training recipe, data fingerprint, measured
  metrics), and the ``sha256`` of the weights file, verified on every load.

:func:`save_checkpoint` is the one writer and :func:`read_meta` / :func:`read_checkpoint` the
one reader of both kinds; :func:`models.zoo.load_model` rebuilds a model from the registry
factory and kwargs and loads it with ``strict=True``, so a checkpoint cannot be paired with a
different architecture silently.

Example::

    save_checkpoint(model, "runs/resnet8", factory="resnet8", extra={"recipe": {...}})
    meta, state, weights = read_checkpoint("runs/resnet8.json")
    save_checkpoint({"dictionary": atoms}, "runs/dict", kind="lca-dictionary")
    meta, tensors, _ = read_checkpoint("runs/dict", kind="lca-dictionary")
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch import nn

from harness.errors import HarnessError

FORMAT_VERSION = 1
MODEL = "model"   # the kind of a model checkpoint (the default; not written to its metadata)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p.with_suffix("") if p.suffix in (".json", ".safetensors", ".md") else p


def checkpoint_file(stem: str | os.PathLike, ext: str) -> Path:
    """``stem`` + ``ext`` without eating a dotted last component (``r8.v2`` -> ``r8.v2.json``)."""
    stem = _stem(stem)
    return stem.with_name(stem.name + ext)


def save_checkpoint(
    obj: nn.Module | Mapping[str, torch.Tensor], stem: str | os.PathLike, *,
    factory: str | None = None, factory_kwargs: dict | None = None, kind: str = MODEL,
    extra: dict | None = None,
) -> dict:
    """Write ``stem.safetensors`` and ``stem.json`` atomically; returns the metadata written.

    Args:
        obj: for a model checkpoint the unwrapped module (not compiled, not DataParallel);
            for other kinds a module or a mapping of names to tensors.
        stem: path without suffix.
        factory: registry name that rebuilds the architecture (required for models).
        factory_kwargs: keyword arguments for the factory.
        kind: ``"model"`` or the name of another kind (``"lca-dictionary"``), which
            :func:`read_meta` checks.
        extra: more JSON-serialisable metadata (recipe, metrics, data fingerprint, ...).
    """
    if kind == MODEL and (factory is None or not isinstance(obj, nn.Module)):
        raise ValueError("a model checkpoint needs the module and its registry factory")
    stem = _stem(stem)
    tensors = obj.state_dict() if isinstance(obj, nn.Module) else obj
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    blob = save(state)
    _atomic_write_bytes(checkpoint_file(stem, ".safetensors"), blob)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION}
    if kind != MODEL:
        meta["kind"] = kind
    if factory is not None:
        meta.update(factory=factory, factory_kwargs=dict(factory_kwargs or {}))
    if isinstance(obj, nn.Module):
        meta["num_params"] = int(sum(p.numel() for p in obj.parameters()))
    meta.update(sha256=hashlib.sha256(blob).hexdigest(),
                weights_file=checkpoint_file(stem, ".safetensors").name)
    model_meta = getattr(obj, "meta", None)
    if model_meta is not None and hasattr(model_meta, "to_dict"):
        meta["model"] = model_meta.to_dict()
    meta.update(extra or {})
    _atomic_write_bytes(checkpoint_file(stem, ".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def read_meta(path: str | os.PathLike, *, kind: str = MODEL) -> dict:
    """The JSON metadata of a checkpoint of ``kind`` (``.json`` or ``.safetensors`` path, or
    stem), checked: format version, kind, weights file and sha256, and for models the factory."""
    meta_path = checkpoint_file(path, ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r} not found") from None
    except (OSError, ValueError) as exc:  # unreadable, a directory, not JSON, not UTF-8
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r} is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise HarnessError(
            f"checkpoint metadata {str(meta_path)!r} has no supported format_version "
            f"(expected {FORMAT_VERSION})"
        )
    found = meta.get("kind", MODEL)
    if found != kind:
        raise HarnessError(f"checkpoint {str(meta_path)!r} is a {found!r} checkpoint, not a "
                           f"{kind!r} one")
    for key in (("factory",) if kind == MODEL else ()) + ("sha256", "weights_file"):
        if not isinstance(meta.get(key), str):
            raise HarnessError(f"checkpoint metadata {str(meta_path)!r} lacks {key!r}")
    if Path(meta["weights_file"]).name != meta["weights_file"]:
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r}: weights_file must be a "
                           "file name next to the metadata")
    if not isinstance(meta.get("factory_kwargs", {}), dict):
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r}: factory_kwargs must be "
                           "an object")
    return meta


def read_checkpoint(path: str | os.PathLike, *, kind: str = MODEL) -> tuple[dict, dict, Path]:
    """(metadata, sha256-verified tensors, weights path) of a checkpoint of ``kind``."""
    meta = read_meta(path, kind=kind)
    weights = checkpoint_file(path, ".json").with_name(meta["weights_file"])
    return meta, read_safetensors(weights, sha256=meta["sha256"]), weights


def read_safetensors(path: str | os.PathLike, *, sha256: str | None = None) -> dict:
    """Load a safetensors state dict on CPU, verifying ``sha256`` when given."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"cannot read weights {str(path)!r}: {exc.strerror}") from None
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise HarnessError(
            f"weights {str(path)!r} do not match the sha256 in their metadata (corrupt or "
            "replaced file)"
        )
    try:
        return load(blob)
    except Exception as exc:  # the parser's error type differs across safetensors releases
        raise HarnessError(f"weights {str(path)!r} are not a valid safetensors file: {exc}") from None


def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise HarnessError(f"weights file {str(path)!r}: expected .safetensors, .pt or .pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, disallowed globals
        raise HarnessError(f"cannot load weights {str(path)!r}: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise HarnessError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return obj


def load_state_into(model, state: dict, *, source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error on mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise HarnessError(f"weights {source!r} do not fit the model: {detail}") from None
