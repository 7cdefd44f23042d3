"""Model resolution: a ``--model`` reference (registry name, ``robustbench:NAME``,
``pkg.module:factory`` or ``file.py:factory``) plus optional weights -> a :class:`LoadedModel`
with the identity and fingerprint that enter the run spec.

Example::

    lm = resolve_model("resnet8")                       # bundled weights, eval mode
    lm = resolve_model("my_nets.py:build", weights="net.safetensors")
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.plugins import import_target
from harness.records import canonical_json
from models.checkpoints import load_state_into, read_checkpoint, read_state_dict, sha256_file
from models.robustbench import is_robustbench_ref, load_robustbench
from models.zoo import MODELS, create_model, list_models


@dataclass
class LoadedModel:
    """A model ready for evaluation plus what identifies it in the store."""

    name: str
    module: Any                      # torch.nn.Module
    identity: dict[str, Any]         # factory / source / weights description
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = model_fingerprint(self.module, self.identity)


def state_fingerprint(module) -> str:
    """sha256 over every state-dict entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(module, identity: dict[str, Any]) -> str:
    """Hash of the model's identity (factory, kwargs, checkpoint) and its exact weights."""
    payload = canonical_json({"identity": identity, "class": type(module).__qualname__,
                              "state": state_fingerprint(module)})
    return hashlib.sha256(payload.encode()).hexdigest()


def _load_user_factory(ref: str) -> tuple[Callable, dict[str, Any]]:
    """``pkg.module:factory`` or ``path/to/file.py:factory`` -> (callable, identity)."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        raise HarnessError(f"model {ref!r}: expected NAME, pkg.module:factory or file.py:factory")
    module, source = import_target(target, what=f"model {ref!r}")
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise HarnessError(f"model {ref!r}: {target!r} has no callable {attr!r}")
    return factory, {"factory": ref, "source_sha256": hashlib.sha256(source).hexdigest()}


def resolve_model(ref: str, *, weights: str | None = None, device: str = "cpu",
                  weights_dir: str | None = None) -> LoadedModel:
    """Resolve a model reference into a :class:`LoadedModel` in eval mode.

    Args:
        ref: a registry name (bundled weights are loaded), ``pkg.module:factory`` or
            ``path/to/file.py:factory`` (a callable returning an ``nn.Module`` on [0, 1] inputs).
        weights: optional ``.safetensors``/``.pt`` state dict (``weights_only=True``), or a
            checkpoint ``.json`` written by ``harness train``.
        device: where to put the model.
        weights_dir: for ``robustbench:[threat/]name`` references, the folder in RobustBench's
            layout (``<dir>/cifar10/<threat>/<name>.pt``); default ``$HARNESS_ROBUSTBENCH_DIR``.

    Raises:
        HarnessError: unknown name (with suggestions), missing weights, bad factory or file.
    """
    if is_robustbench_ref(ref):
        if weights is not None:
            raise HarnessError("weights do not apply to robustbench models; their checkpoint "
                               "is read from the weights dir in RobustBench's layout")
        module, identity, name = load_robustbench(ref, weights_dir=weights_dir, device=device)
        return LoadedModel(name=name, module=module, identity=identity)
    if ":" in ref and ref not in MODELS:
        factory, identity = _load_user_factory(ref)
        try:
            module = factory()
        except Exception as exc:
            raise HarnessError(f"model {ref!r}: factory raised {type(exc).__name__}: {exc}") from None
        if not isinstance(module, nn.Module):
            raise HarnessError(f"model {ref!r}: factory returned {type(module).__name__}, "
                               "not a torch.nn.Module")
        name = ref
    else:
        name = MODELS.resolve(ref)
        if weights is None and MODELS.meta(name).get("weights") is None:
            raise HarnessError(
                f"model {name!r} has no bundled weights; pass weights (--weights FILE) or train "
                f"it with 'harness train --model {name}'"
            )
        module = create_model(name, pretrained=weights is None)
        identity = {"factory": name}
        if weights is None:
            identity["checkpoint_sha256"] = module.checkpoint["sha256"]
    if weights is not None:
        wpath = Path(weights).expanduser()
        if wpath.suffix == ".json":
            meta, state, wpath = read_checkpoint(wpath)  # sha256-verified against its metadata
            identity["weights_sha256"] = meta["sha256"]
        else:
            state = read_state_dict(wpath)
            identity["weights_sha256"] = sha256_file(wpath)
        load_state_into(module, state, source=str(wpath))
    return LoadedModel(name=name, module=module.to(device).eval(), identity=identity)


def wrap_module(module, *, name: str | None = None) -> LoadedModel:
    """Any ``nn.Module`` (``harness.evaluate``) as a :class:`LoadedModel` named ``name`` (default
    its class name), identified by its class and exact weights."""
    if not isinstance(module, nn.Module):
        raise HarnessError(f"evaluate() needs a torch.nn.Module, got {type(module).__name__}")
    cls = type(module)
    return LoadedModel(name=name or cls.__name__, module=module,
                       identity={"python_class": f"{cls.__module__}.{cls.__qualname__}"})


def default_models() -> list[str]:
    """The registry's default set: bundled models flagged ``default``."""
    return list_models(default=True, pretrained=True)
