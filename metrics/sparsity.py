"""Activation sparsity of any classifier: exact zeros at its activations and sparse codes,
per layer, per unit and per example, counted by forward hooks while images stream through.

Example::

    res = activation_sparsity(net, images_u8, batch_size=250, device="cpu")
    res.layers        # one row per hooked site: zero_fraction, dead_units, ...
    res.examples      # one row per image: zero_fraction, code_l0, ...

    # shard by shard (a suite), then merged: dead units over the whole set
    parts = []
    for start in range(0, len(images_u8), 500):
        acc = SparsityAccumulator(net, start=start)
        for xb in images_u8[start:start + 500].split(250):
            logits = acc.observe(xb)      # also returns the model's output
        parts.append(acc.counts())
    whole = merge_counts(*parts).result()

**Sites** (:func:`find_sites`, in ``model.named_modules()`` order):

* ``"activation"``: every instance of :data:`ACTIVATION_TYPES` (ReLU and its variants,
  GELU, SiLU, ELU, Mish, Softplus, Hardswish, Tanh, Sigmoid, the shrink functions, ...), and any
  module whose ``sparsity_site`` attribute is ``"activation"`` (SUGAR and deep-spline
  activations declare it: duck-typed, so ``metrics`` never imports ``models``);
* ``"codes"``: a module whose ``sparsity_site`` is ``"codes"`` (LCA, WARP-LCA): its output
  is a sparse code tensor, and its per-image l0 is reported;
* ``sparsity_site = None`` (or ``"none"``) opts a module out, also an nn activation subclass;
  any other value is a ``ValueError``.

**Outermost site wins**: a module nested inside a site is never hooked separately. A WARP-LCA
wraps an LCA and a predictor with ReLUs: only the WARP-LCA, whose output is the code the
classifier sees, is a site; an activation built from inner activations is one site.

**Names**: a site's layer name is its qualified module name (``"<model>"`` for the model
itself). A module instance called k > 0 times before in the same forward (a shared
``self.relu`` used twice, as in torchvision's ResNets) is a separate layer ``name#k`` per call:
the calls can have different shapes.

**Outputs**: a tensor output is counted as is; a tuple / list output by its first tensor
element, a dict by its first tensor value (searched recursively). A call whose output holds no
tensor, is 0-dimensional, or whose first dimension is not the batch size is not counted and
listed in ``skipped`` (layer name -> reason).

**Counts**: dimension 1 of an output holds the units (channels of (N, C, H, W), features of
(N, F)); every further dimension is a position (H x W). An entry is active when it is != 0
(exactly; NaN counts as active). Per call, one ``count_nonzero`` over the positions gives
(example, unit) counts, reduced on the device into per-unit totals and per-example totals;
no activation is kept. Counts are exact integers, so streaming and shard merges reproduce a
single pass exactly.

**Frames** (:class:`SparsityResult`):

* ``layers``: ``layer, role, module`` (class name), ``shape`` (one example's output,
  ``"16x32x32"``), ``units, positions, examples, elements`` (examples x units x positions),
  ``zeros, zero_fraction``, ``dead_units`` (units exactly zero at every position of every
  evaluated example), ``dead_fraction``, ``always_active_units`` (never zero),
  ``mean_frequency`` and ``median_frequency`` of the per-unit activation frequencies. Every
  unit has the same number of entries, so ``mean_frequency == 1 - zero_fraction``.
* ``units``: ``layer, role, unit, nonzero, entries`` (examples x positions), ``frequency``
  (nonzero / entries), ``dead``.
* ``histogram``: per layer, the units per frequency bin (``FREQUENCY_BINS`` = 10): bin 0 is
  exactly 0 (dead), bins 1..10 are ((b - 1)/10, b/10] except that bin 10 excludes 1, and bin 11
  is exactly 1 (always active); columns ``layer, role, bin, label, lower, upper, units``. Bins
  are assigned from the integer counts, so a frequency of exactly 0.3 lands in bin 3. Every
  layer has all 12 rows (empty bins 0), ready for a stacked bar chart.
* ``examples``: one row per example id: ``example``; over the activation sites ``zeros,
  elements, zero_fraction``; over the codes sites ``code_l0`` (nonzero code entries),
  ``code_elements``, ``code_l0_fraction``. Fractions are NaN where there are no elements
  (e.g. a model without codes sites).
* ``example_layers``: the same per (example, layer): ``example, layer, role, nonzero,
  elements, zero_fraction``.

The raw counts (:class:`SparsityCounts`, numpy on the CPU) merge with :func:`merge_counts`
across shards of disjoint examples: per-unit counts add, per-example counts concatenate.

The model is run as given: eval mode and its device and dtype are the caller's (as for
:func:`harness.predict.predict`); images are converted per batch like there (uint8 / 255,
``dtype``, ``device``, channels_last) and run under ``torch.inference_mode``. Hooks are
attached for each :meth:`SparsityAccumulator.observe` call only; a forward that raises
leaves that batch's counts partly added (start a new accumulator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.predict import prepare_batch

ROLES = ("activation", "codes")

# Element-wise nonlinearities of torch.nn (ReLU6 is a Hardtanh subclass; softmax-like
# normalisations are not element-wise and not listed).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh,
    nn.Sigmoid, nn.LogSigmoid, nn.Softsign, nn.Threshold, nn.Softshrink, nn.Hardshrink,
    nn.Tanhshrink,
)

FREQUENCY_BINS = 10
ROOT_NAME = "<model>"

_MISSING = object()


class Site(NamedTuple):
    """A hooked module: qualified name, role (``"activation"`` or ``"codes"``), the module."""

    name: str
    role: str
    module: nn.Module


def site_role(module: nn.Module) -> str | None:
    """The role of ``module`` as a site (see the module notes), None when it is not one."""
    declared = getattr(module, "sparsity_site", _MISSING)
    if declared is not _MISSING:
        if declared is None or declared == "none":
            return None
        if not isinstance(declared, str) or declared not in ROLES:
            raise ValueError(f"{type(module).__name__}.sparsity_site must be one of {ROLES} or "
                             f"None, got {declared!r}")
        return declared
    return "activation" if isinstance(module, ACTIVATION_TYPES) else None


def find_sites(model: nn.Module) -> list[Site]:
    """The sites of ``model`` in module order; modules nested inside a site are skipped."""
    sites: list[Site] = []
    for name, module in model.named_modules():
        if any(name.startswith(s.name + ".") or s.name == "" for s in sites):
            continue
        role = site_role(module)
        if role is not None:
            sites.append(Site(name, role, module))
    return [Site(s.name or ROOT_NAME, s.role, s.module) for s in sites]


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _shape_label(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


@dataclass
class LayerCounts:
    """Raw counts of one layer (one site, one call index) over the examples it saw.

    ``shape``: one example's output shape; ``order``: (site position, call index) for sorting;
    ``unit_nonzero`` (units,): nonzero entries per unit over all examples and positions;
    ``example_ids`` / ``example_nonzero`` (n,): the examples and their nonzero entries."""

    name: str
    role: str
    module: str
    order: tuple[int, int]
    shape: tuple[int, ...]
    unit_nonzero: np.ndarray
    example_ids: np.ndarray
    example_nonzero: np.ndarray

    @property
    def units(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def positions(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def examples(self) -> int:
        return len(self.example_ids)

    @property
    def entries_per_unit(self) -> int:
        """Examples x positions: the denominator of a unit's activation frequency."""
        return self.examples * self.positions

    @property
    def elements_per_example(self) -> int:
        return self.units * self.positions


@dataclass
class SparsityCounts:
    """Everything the frames are computed from, mergeable across shards
    (:func:`merge_counts`): the layers' counts, every observed example id, skipped calls."""

    layers: list[LayerCounts]
    example_ids: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    def layer(self, name: str) -> LayerCounts:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def merge(self, *others: SparsityCounts) -> SparsityCounts:
        return merge_counts(self, *others)

    def result(self) -> SparsityResult:
        return _result(self)


def merge_counts(*parts: SparsityCounts) -> SparsityCounts:
    """Counts of the union of disjoint example sets (e.g. the shards of a suite): per-unit
    counts add, per-example counts concatenate. Raises ``ValueError`` when an example id is in
    two parts or a layer's role, module or shape differs between parts."""
    if not parts:
        raise ValueError("merge_counts needs at least one SparsityCounts")
    ids = np.concatenate([p.example_ids for p in parts]).astype(np.int64)
    unique, seen = np.unique(ids, return_counts=True)
    if (seen > 1).any():
        raise ValueError(f"examples counted in more than one part, e.g. id {unique[seen > 1][0]}")
    merged: dict[str, LayerCounts] = {}
    skipped: dict[str, str] = {}
    for part in parts:
        skipped.update(part.skipped)
        for layer in part.layers:
            have = merged.get(layer.name)
            if have is None:
                merged[layer.name] = LayerCounts(
                    layer.name, layer.role, layer.module, layer.order, layer.shape,
                    layer.unit_nonzero.copy(), layer.example_ids.copy(),
                    layer.example_nonzero.copy())
                continue
            if (have.role, have.module, have.shape) != (layer.role, layer.module, layer.shape):
                raise ValueError(f"layer {layer.name!r} differs between parts: "
                                 f"{(have.role, have.module, have.shape)} vs "
                                 f"{(layer.role, layer.module, layer.shape)}")
            have.unit_nonzero = have.unit_nonzero + layer.unit_nonzero
            have.example_ids = np.concatenate([have.example_ids, layer.example_ids])
            have.example_nonzero = np.concatenate([have.example_nonzero, layer.example_nonzero])
    layers = sorted(merged.values(), key=lambda c: c.order)
    return SparsityCounts(layers, ids, skipped)


class _Running:
    """One layer's counts while batches stream (tensors on the model's device)."""

    def __init__(self, name: str, role: str, module: str, order: tuple[int, int],
                 shape: tuple[int, ...], device: torch.device) -> None:
        self.name, self.role, self.module, self.order, self.shape = name, role, module, order, shape
        units = shape[0] if shape else 1
        self.unit_nonzero = torch.zeros(units, dtype=torch.int64, device=device)
        self.ids: list[np.ndarray] = []
        self.example_nonzero: list[torch.Tensor] = []

    def freeze(self) -> LayerCounts:
        if self.example_nonzero:
            per_example = torch.cat(self.example_nonzero).cpu().numpy().astype(np.int64)
        else:
            per_example = np.zeros(0, np.int64)
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        return LayerCounts(self.name, self.role, self.module, self.order, self.shape,
                           self.unit_nonzero.cpu().numpy().astype(np.int64), ids, per_example)


class SparsityAccumulator:
    """Streams batches through ``model`` and counts zeros at its sites (:func:`find_sites`).

    Args:
        model: any ``nn.Module``, run as given (eval mode, on ``device``, in ``dtype``).
        device, dtype: where and in what precision images are fed (:meth:`observe`).
        start: the id of the first example when :meth:`observe` is not given ids; later
            batches continue from there (a suite's shard starting at example 500: ``start=500``).
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, start: int = 0) -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.sites = find_sites(model)
        self._next = int(start)
        self._seen: set[int] = set()
        self._ids: list[np.ndarray] = []
        self._layers: dict[tuple[int, int], _Running] = {}
        self._skipped: dict[str, str] = {}
        self._calls: list[int] = []
        self._batch_ids: np.ndarray | None = None

    def _prepare(self, images) -> torch.Tensor:
        return prepare_batch(torch.as_tensor(images), device=self.device, dtype=self.dtype)

    def _hook(self, pos: int):
        site = self.sites[pos]

        def hook(module, args, output):
            k = self._calls[pos]
            self._calls[pos] += 1
            name = site.name if k == 0 else f"{site.name}#{k}"
            self._count((pos, k), name, site, output)

        return hook

    def _count(self, key: tuple[int, int], name: str, site: Site, output) -> None:
        ids = self._batch_ids
        t = _first_tensor(output)
        if t is None:
            self._skipped[name] = f"output of type {type(output).__name__} holds no tensor"
            return
        if t.dim() == 0 or t.shape[0] != len(ids):
            self._skipped[name] = (f"output shape {tuple(t.shape)} does not start with the batch "
                                   f"size {len(ids)}")
            return
        shape = tuple(t.shape[1:])
        running = self._layers.get(key)
        if running is None:
            running = _Running(name, site.role, type(site.module).__name__, key, shape, t.device)
            self._layers[key] = running
        elif running.shape != shape:
            raise ValueError(f"sparsity site {name!r} produced per-example shape {shape} after "
                             f"{running.shape}")
        if t.dim() == 1:
            per = (t != 0).to(torch.int64).unsqueeze(1)
        elif t.dim() == 2:
            per = (t != 0).to(torch.int64)
        else:   # (N, units): nonzero entries over the positions; any memory format
            per = torch.count_nonzero(t, dim=tuple(range(2, t.dim())))
        running.unit_nonzero += per.sum(0).to(running.unit_nonzero.device)
        running.example_nonzero.append(per.sum(1))
        running.ids.append(ids)

    def observe(self, images, *, ids: Sequence[int] | np.ndarray | None = None):
        """Run one batch (uint8 images, or floats in [0, 1]; tensor or numpy) through the model
        with the hooks attached and add its counts. ``ids``: the examples' ids (default: the
        next ``len(images)`` ids from ``start``); an id seen before is a ``ValueError``.
        Returns the model's output."""
        x = self._prepare(images)
        n = x.shape[0]
        if ids is None:
            batch_ids = np.arange(self._next, self._next + n, dtype=np.int64)
            self._next += n
        else:
            batch_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(batch_ids) != n:
                raise ValueError(f"{len(batch_ids)} ids for {n} images")
        repeated = self._seen.intersection(batch_ids.tolist())
        if repeated or len(np.unique(batch_ids)) != n:
            raise ValueError(f"example ids observed twice, e.g. "
                             f"{min(repeated) if repeated else batch_ids[0]}")
        self._seen.update(batch_ids.tolist())
        self._batch_ids = batch_ids
        self._calls = [0] * len(self.sites)
        handles = [s.module.register_forward_hook(self._hook(i)) for i, s in enumerate(self.sites)]
        try:
            with torch.inference_mode():
                out = self.model(x)
        finally:
            for h in handles:
                h.remove()
            self._batch_ids = None
        self._ids.append(batch_ids)
        return out

    def counts(self) -> SparsityCounts:
        """The counts so far, copied to the CPU (one host sync)."""
        layers = sorted((r.freeze() for r in self._layers.values()), key=lambda c: c.order)
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        return SparsityCounts(layers, ids, dict(self._skipped))


@dataclass
class SparsityResult:
    """The frames (see the module notes) and the counts they come from."""

    layers: pd.DataFrame
    units: pd.DataFrame
    histogram: pd.DataFrame
    examples: pd.DataFrame
    example_layers: pd.DataFrame
    counts: SparsityCounts

    @property
    def skipped(self) -> dict[str, str]:
        return self.counts.skipped


def frequency_bins(nonzero: np.ndarray, entries: int, bins: int = FREQUENCY_BINS) -> np.ndarray:
    """Histogram bin of each unit from its integer counts: 0 for frequency 0, ``bins + 1``
    for frequency 1, else ceil(frequency * bins) (exact integer arithmetic)."""
    nonzero = np.asarray(nonzero, dtype=np.int64)
    if entries <= 0:
        raise ValueError("a unit's frequency needs entries > 0")
    inner = (nonzero * bins + entries - 1) // entries
    return np.where(nonzero == 0, 0, np.where(nonzero == entries, bins + 1, inner))


def histogram_labels(bins: int = FREQUENCY_BINS) -> list[tuple[str, float, float]]:
    """(label, lower, upper) of every bin of :func:`frequency_bins`."""
    out = [("0", 0.0, 0.0)]
    for b in range(1, bins + 1):
        lo, hi = (b - 1) / bins, b / bins
        out.append((f"({lo:g}, {hi:g}{')' if b == bins else ']'}", lo, hi))
    out.append(("1", 1.0, 1.0))
    return out


def _divide(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _result(counts: SparsityCounts) -> SparsityResult:
    layer_rows, unit_frames, hist_rows, ex_frames = [], [], [], []
    labels = histogram_labels()
    for c in counts.layers:
        entries = c.entries_per_unit
        freq = _divide(c.unit_nonzero, np.full(c.units, entries))
        elements = c.examples * c.elements_per_example
        nonzero = int(c.unit_nonzero.sum())
        dead = c.unit_nonzero == 0
        layer_rows.append({
            "layer": c.name, "role": c.role, "module": c.module, "shape": _shape_label(c.shape),
            "units": c.units, "positions": c.positions, "examples": c.examples,
            "elements": elements, "zeros": elements - nonzero,
            "zero_fraction": float(_divide(elements - nonzero, elements)),
            "dead_units": int(dead.sum()), "dead_fraction": float(dead.mean()),
            "always_active_units": int((c.unit_nonzero == entries).sum()),
            "mean_frequency": float(freq.mean()), "median_frequency": float(np.median(freq)),
        })
        unit_frames.append(pd.DataFrame({
            "layer": c.name, "role": c.role, "unit": np.arange(c.units),
            "nonzero": c.unit_nonzero, "entries": entries, "frequency": freq, "dead": dead}))
        binned = np.bincount(frequency_bins(c.unit_nonzero, entries), minlength=len(labels))
        for b, (label, lo, hi) in enumerate(labels):
            hist_rows.append({"layer": c.name, "role": c.role, "bin": b, "label": label,
                              "lower": lo, "upper": hi, "units": int(binned[b])})
        ex_frames.append(pd.DataFrame({
            "example": c.example_ids, "layer": c.name, "role": c.role, "order0": c.order[0],
            "order1": c.order[1], "nonzero": c.example_nonzero,
            "elements": c.elements_per_example}))

    layers = pd.DataFrame(layer_rows, columns=[
        "layer", "role", "module", "shape", "units", "positions", "examples", "elements",
        "zeros", "zero_fraction", "dead_units", "dead_fraction", "always_active_units",
        "mean_frequency", "median_frequency"])
    unit_columns = ["layer", "role", "unit", "nonzero", "entries", "frequency", "dead"]
    units = (pd.concat(unit_frames, ignore_index=True) if unit_frames
             else pd.DataFrame(columns=unit_columns))
    histogram = pd.DataFrame(hist_rows, columns=["layer", "role", "bin", "label", "lower",
                                                 "upper", "units"])

    ex_columns = ["example", "layer", "role", "nonzero", "elements", "zero_fraction"]
    if ex_frames:
        example_layers = (pd.concat(ex_frames, ignore_index=True)
                          .sort_values(["example", "order0", "order1"], kind="stable")
                          .drop(columns=["order0", "order1"]).reset_index(drop=True))
        example_layers["nonzero"] = example_layers["nonzero"].astype(np.int64)
        example_layers["elements"] = example_layers["elements"].astype(np.int64)
        example_layers["zero_fraction"] = _divide(
            example_layers["elements"] - example_layers["nonzero"], example_layers["elements"])
    else:
        example_layers = pd.DataFrame(columns=ex_columns)

    ids = np.sort(counts.example_ids.astype(np.int64))
    examples = pd.DataFrame({"example": ids})
    for role, prefix in (("activation", ""), ("codes", "code_")):
        part = example_layers[example_layers["role"] == role]
        sums = part.groupby("example")[["nonzero", "elements"]].sum()
        sums = sums.reindex(ids, fill_value=0)
        nz = sums["nonzero"].to_numpy(np.int64)
        el = sums["elements"].to_numpy(np.int64)
        if role == "activation":
            examples["zeros"] = el - nz
            examples["elements"] = el
            examples["zero_fraction"] = _divide(el - nz, el)
        else:
            examples[f"{prefix}l0"] = nz
            examples[f"{prefix}elements"] = el
            examples[f"{prefix}l0_fraction"] = _divide(nz, el)
    return SparsityResult(layers, units, histogram, examples, example_layers, counts)


def activation_sparsity(model: nn.Module, images, *, batch_size: int = 250,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        start: int = 0) -> SparsityResult:
    """Sparsity of ``model`` on ``images`` (uint8 (N, 3, 32, 32) or floats in [0, 1], tensor
    or numpy), in batches of ``batch_size``; examples are numbered from ``start``. The model
    must already be on ``device`` in ``dtype``. See the module notes for the frames."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    acc = SparsityAccumulator(model, device=device, dtype=dtype, start=start)
    x = torch.as_tensor(images)
    for xb in x.split(batch_size):
        acc.observe(xb)
    return acc.counts().result()


__all__ = [
    "ACTIVATION_TYPES", "FREQUENCY_BINS", "LayerCounts", "ROLES", "Site", "SparsityAccumulator",
    "SparsityCounts", "SparsityResult", "activation_sparsity", "find_sites", "frequency_bins",
    "histogram_labels", "merge_counts", "site_role",
]
