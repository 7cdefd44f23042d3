"""Resolve models, build run specs and drive suites shard by shard into the store.

Two layers (as in lm-evaluation-harness): :func:`run_suite` resolves the spec, resumes from the
store and writes every shard as soon as it is done; the suite's ``evaluate_shard`` does the
numerics and no I/O. Jobs are (model, suite, shard); this local executor runs them in-process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.records import RunSpec, canonical_json

DTYPES = ("float32", "bfloat16", "float16")


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


@dataclass
class RunOutcome:
    """What :func:`run_suite` returns: the spec, its id, the per-condition summary and counts."""

    spec: RunSpec
    run_id: str
    summary: Any                     # pandas DataFrame
    shards_total: int
    shards_computed: int
    wall_s: float                    # this model's evaluation time (shared input preparation excluded)
    suite: Any = None                # the Suite object (headline numbers, layout)
    extra: dict[str, Any] = field(default_factory=dict)


def state_fingerprint(module) -> str:
    """sha256 over every state-dict entry's name, dtype, shape and bytes."""
    import torch

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


# -- model resolution -----------------------------------------------------------------------------
def _load_user_factory(ref: str) -> tuple[Callable, dict[str, Any]]:
    """``pkg.module:factory`` or ``path/to/file.py:factory`` -> (callable, identity)."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        raise HarnessError(f"--model {ref!r}: expected NAME, pkg.module:factory or file.py:factory")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise HarnessError(f"--model {ref!r}: file {str(path)!r} not found")
        mod_name = f"_harness_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise HarnessError(f"--model {ref!r}: importing {str(path)!r} failed: "
                               f"{type(exc).__name__}: {exc}") from None
        source = path.read_bytes()
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError, SyntaxError, errors raised at import time
            raise HarnessError(f"--model {ref!r}: cannot import module {target!r}: "
                               f"{type(exc).__name__}: {exc}") from None
        file = getattr(module, "__file__", None)
        source = Path(file).read_bytes() if file else b""
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise HarnessError(f"--model {ref!r}: {target!r} has no callable {attr!r}")
    identity = {"factory": ref, "source_sha256": hashlib.sha256(source).hexdigest()}
    return factory, identity


def resolve_model(ref: str, *, weights: str | None = None, device: str = "cpu",
                  weights_dir: str | None = None) -> LoadedModel:
    """Resolve a ``--model`` argument into a :class:`LoadedModel` in eval mode.

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
    from torch import nn

    from models.checkpoints import load_state_into, read_checkpoint, read_state_dict, sha256_file
    from models.robustbench import is_robustbench_ref, load_robustbench
    from models.zoo import MODELS, create_model

    if is_robustbench_ref(ref):
        if weights is not None:
            raise HarnessError("--weights does not apply to robustbench models; their checkpoint "
                               "is read from --weights-dir in RobustBench's layout")
        module, identity, name = load_robustbench(ref, weights_dir=weights_dir, device=device)
        return LoadedModel(name=name, module=module, identity=identity)
    is_user = ":" in ref and ref not in MODELS
    if is_user:
        factory, identity = _load_user_factory(ref)
        try:
            module = factory()
        except Exception as exc:
            raise HarnessError(f"--model {ref!r}: factory raised {type(exc).__name__}: {exc}") from None
        if not isinstance(module, nn.Module):
            raise HarnessError(f"--model {ref!r}: factory returned {type(module).__name__}, "
                               "not a torch.nn.Module")
        name = ref
    else:
        name = MODELS.resolve(ref)
        has_bundled = MODELS.meta(name).get("weights") is not None
        if weights is None and not has_bundled:
            raise HarnessError(
                f"model {name!r} has no bundled weights; pass --weights FILE (or train it with "
                f"'harness train --model {name}')"
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


def default_models() -> list[str]:
    """The registry's default set: bundled models flagged ``default``."""
    from models.zoo import list_models

    return list_models(default=True, pretrained=True)


# -- provenance -------------------------------------------------------------------------------------
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
    import torch

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
    """Validate ``--device`` (cpu, cuda, cuda:N, mps) against what this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HarnessError(f"--device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HarnessError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarnessError(f"--device {device!r}: MPS is not available on this machine")
    return str(dev)


def prepare_model(model: LoadedModel, data, *, device: str, dtype: str):
    """Put the model on ``device`` in ``dtype``, channels_last and eval mode, and probe it on
    the first examples of ``data``; returns the module. Idempotent, so the CLI can call it
    before opening the store and :func:`run_suite` again without cost.

    Raises:
        HarnessError: unknown dtype, or the model cannot classify the probe batch.
    """
    import torch

    if dtype not in DTYPES:
        raise HarnessError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    module = model.module.to(device=device, dtype=torch_dtype, memory_format=torch.channels_last)
    module.eval()
    _probe(module, model.name, data, device=device, dtype=torch_dtype)
    return module


def _probe(module, name: str, data, *, device: str, dtype) -> None:
    """Fail before touching the store when the model cannot classify two examples."""
    import torch

    k = min(2, len(data))
    x = torch.from_numpy(data.images[:k]).to(device=device, dtype=dtype).div_(255)
    try:
        with torch.inference_mode():
            out = module(x.contiguous(memory_format=torch.channels_last))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HarnessError(f"model {name!r} failed on a {tuple(x.shape)} batch in [0, 1]: "
                           f"{type(exc).__name__}: {first}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != k or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise HarnessError(f"model {name!r} must return logits of shape (N, classes); got {shape}")
    if int(data.labels.max()) >= out.shape[1]:
        raise HarnessError(f"model {name!r} has {out.shape[1]} outputs but the labels go up to "
                           f"{int(data.labels.max())}")


# -- running ----------------------------------------------------------------------------------------
def run_suite(*, model: LoadedModel, **kwargs) -> RunOutcome:
    """Evaluate one model; see :func:`run_suites` for the arguments."""
    on_plan, on_progress = kwargs.pop("on_plan", None), kwargs.pop("on_progress", None)
    return run_suites(
        models=[model], **kwargs,
        on_plan=(lambda name, todo, stored: on_plan(todo, stored)) if on_plan else None,
        on_progress=(lambda name, k: on_progress(k)) if on_progress else None,
    )[0]


def run_suites(
    *,
    models: list[LoadedModel],
    suite: str,
    data,
    store,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 250,
    shard_size: int | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
    on_plan: Callable[[str, int, int], None] | None = None,
) -> list[RunOutcome]:
    """Evaluate ``models`` on ``suite`` over ``data``, resuming each from ``store``.

    Each model is its own run (own spec and run id). Shards are visited once, in order: a
    shard's inputs (e.g. a generated corrupted set) are prepared once and fed to every model
    that has not stored it yet.

    Args:
        data: what the suite's ``load_data`` returns (an ImageSet for ``clean``).
        n: number of examples per condition (default: the suite's, else all of ``data``).
        options: suite-specific options (e.g. corruptions, severities for cifar10c).
        on_plan: called per model with (model name, examples to compute, already stored).
        on_progress: called with (model name, examples) after each stored shard.

    Returns:
        One :class:`RunOutcome` per model; the per-example records are in the store.
    """
    import torch

    import harness
    from harness.suites import SUITES

    if batch_size < 1:
        raise HarnessError(f"--batch-size must be at least 1, got {batch_size}")
    suite_name = SUITES.resolve(suite)
    suite_obj = SUITES.get(suite_name)()
    options = suite_obj.check_options(options or {})
    data = data.head(n if n is not None else suite_obj.default_n(data))
    params = suite_obj.params(n=len(data), shard_size=shard_size, data=data, device=device,
                              **options)
    data_name, data_fp = suite_obj.data_identity(data, params)
    shards = suite_obj.shards(data, params)
    runs = []
    for model in models:
        spec = RunSpec(
            model=model.name, model_fingerprint=model.fingerprint, suite=suite_name,
            params=params, data=data_name, data_fingerprint=data_fp, seed=seed, dtype=dtype,
            harness_version=harness.__version__,
        )
        module = prepare_model(model, data, device=device, dtype=dtype)
        torch_dtype = getattr(torch, dtype)
        writer = store.begin(
            spec, force=force,
            provenance={**provenance(device=device, dtype=dtype, batch_size=batch_size),
                        "model_identity": model.identity},
        )
        todo = {s.key for s in shards if s.key not in writer.done}
        if on_plan is not None:
            todo_n = sum(s.n for s in shards if s.key in todo)
            on_plan(model.name, todo_n, sum(s.n for s in shards) - todo_n)
        runs.append((model, spec, module, writer, todo))
    start = time.perf_counter()
    wall = {model.name: 0.0 for model, *_ in runs}
    prep = 0.0
    for shard in shards:
        need = [r for r in runs if shard.key in r[4]]
        if not need:
            continue
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        inputs = suite_obj.inputs(data, shard, params=params, seed=seed, device=device)
        prep += time.perf_counter() - t0
        for model, _spec, module, writer, _todo in need:
            t0 = time.perf_counter()
            result = suite_obj.evaluate(module, inputs, shard, device=device, dtype=torch_dtype,
                                        batch_size=batch_size)
            store.write_shard(writer, result)
            wall[model.name] += time.perf_counter() - t0
            if on_progress is not None:
                on_progress(model.name, shard.n)
    total = time.perf_counter() - start
    outcomes = []
    for model, spec, _module, writer, todo in runs:
        if not writer.complete:
            store.complete(writer, len(shards))
        outcomes.append(RunOutcome(
            spec=spec, run_id=spec.run_id, summary=suite_obj.summarize(store, spec.run_id),
            shards_total=len(shards), shards_computed=len(todo), wall_s=wall[model.name],
            suite=suite_obj, extra={"inputs_s": prep, "total_s": total}))
    return outcomes
