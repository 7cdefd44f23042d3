"""Checkpoints: safetensors weights + a JSON sidecar of metadata. Loading never unpickles code.

A checkpoint ``STEM`` is two files:

* ``STEM.safetensors`` -- the state dict (tensors only);
* ``STEM.json`` -- ``format_version``, the registry ``factory`` name and its ``factory_kwargs``,
  normalisation, training recipe, data fingerprint, measured metrics and the ``sha256`` of the
  weights file, verified on every load.

The model is rebuilt from the registry factory and kwargs, then loaded with ``strict=True``,
so a checkpoint cannot be paired with a different architecture silently.

Example::

    save_checkpoint(model, "runs/resnet8", factory="resnet8", extra={"recipe": {...}})
    model = load_model("runs/resnet8.json")
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

FORMAT_VERSION = 1


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
    model, stem: str | os.PathLike, *, factory: str, factory_kwargs: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Write ``stem.safetensors`` and ``stem.json`` atomically; returns the metadata written.

    Args:
        model: the unwrapped module (not compiled, not DataParallel).
        stem: path without suffix.
        factory: registry name that rebuilds the architecture.
        factory_kwargs: keyword arguments for the factory.
        extra: more JSON-serialisable metadata (recipe, metrics, data fingerprint, ...).
    """
    from safetensors.torch import save

    stem = _stem(stem)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    _atomic_write_bytes(checkpoint_file(stem, ".safetensors"), blob)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "factory_kwargs": dict(factory_kwargs or {}),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "weights_file": checkpoint_file(stem, ".safetensors").name,
    }
    model_meta = getattr(model, "meta", None)
    if model_meta is not None and hasattr(model_meta, "to_dict"):
        meta["model"] = model_meta.to_dict()
    meta.update(extra or {})
    _atomic_write_bytes(checkpoint_file(stem, ".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (``.json`` or ``.safetensors`` path, or stem)."""
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
    for key in ("factory", "sha256", "weights_file"):
        if not isinstance(meta.get(key), str):
            raise HarnessError(f"checkpoint metadata {str(meta_path)!r} lacks {key!r}")
    if Path(meta["weights_file"]).name != meta["weights_file"]:
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r}: weights_file must be a "
                           "file name next to the metadata")
    if not isinstance(meta.get("factory_kwargs", {}), dict):
        raise HarnessError(f"checkpoint metadata {str(meta_path)!r}: factory_kwargs must be "
                           "an object")
    return meta


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, Path]:
    """(metadata, sha256-verified state dict, weights path) of a checkpoint."""
    meta = read_meta(path)
    weights = checkpoint_file(path, ".json").with_name(meta["weights_file"])
    return meta, read_safetensors(weights, sha256=meta["sha256"]), weights


def read_safetensors(path: str | os.PathLike, *, sha256: str | None = None) -> dict:
    """Load a safetensors state dict on CPU, verifying ``sha256`` when given."""
    from safetensors.torch import load

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
    import torch

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


def load_model(path: str | os.PathLike, *, device: str = "cpu"):
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Returns:
        The model in eval mode on ``device``, with ``model.checkpoint`` set to the metadata.
    """
    from models.zoo import MODELS

    meta, state, weights = read_checkpoint(path)
    factory = MODELS.get(meta["factory"])
    try:
        model = factory(**meta.get("factory_kwargs", {}))
    except TypeError as exc:
        raise HarnessError(f"checkpoint {str(_stem(path))!r}: bad factory_kwargs: {exc}") from None
    load_state_into(model, state, source=str(weights))
    model.checkpoint = meta
    return model.to(device).eval()
