"""CIFAR-10-C data: the released ``.npy`` files, or corruptions generated from CIFAR-10.

Released layout (Hendrycks & Dietterich 2019): ``CIFAR-10-C/<corruption>.npy`` of shape
(50000, 32, 32, 3) uint8 -- the 10,000 test images at severity 1, then 2, ... 5 -- and
``labels.npy`` (50000,). Files are memory-mapped; only the rows a shard needs are read.

``--data-dir`` may point at the folder holding ``CIFAR-10-C/`` (and, optionally,
``cifar-10-batches-py/``) or at the ``CIFAR-10-C`` folder itself. ``source="auto"`` uses the
released files when they are there and generates corruptions from the clean test images
otherwise (the bundled sample when no directory is given).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from harness.data._cifar10 import ImageSet, load_cifar10_arrays, resolve_data_dir
from harness.errors import HarnessError

RELEASED_DIR = "CIFAR-10-C"
SOURCES = ("auto", "released", "generated")
PER_SEVERITY = 10_000
ROWS = 5 * PER_SEVERITY


def _given_dir(data_dir) -> tuple[Path | None, str]:
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "data dir"
    env = os.environ.get("HARNESS_DATA", "")
    return (Path(env).expanduser(), "$HARNESS_DATA") if env else (None, "")


def find_released(path: Path | None) -> Path | None:
    """The released CIFAR-10-C folder under (or at) ``path``, if any."""
    if path is None:
        return None
    for candidate in (path / RELEASED_DIR, path):
        if (candidate / "labels.npy").is_file():
            return candidate
    return None


class ReleasedC:
    """Reader of a released CIFAR-10-C folder with validation and one-line errors."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._arrays: dict[str, np.ndarray] = {}
        labels = self._open("labels", shape=(ROWS,))
        if labels.dtype.kind not in "ui" or int(labels.min()) < 0 or int(labels.max()) > 9:
            raise HarnessError(f"{self.root / 'labels.npy'}: labels must be integers 0..9")
        blocks = np.asarray(labels).reshape(5, PER_SEVERITY)
        if not (blocks == blocks[0]).all():
            raise HarnessError(f"{self.root / 'labels.npy'}: the five severity blocks differ "
                               "(expected the test labels repeated 5 times)")
        self.labels = blocks[0].astype(np.int64)

    def __getstate__(self) -> dict:
        # The opened files are memory maps; pickled, each would become a 150 MB copy. A copy
        # of this reader (e.g. in a Ray worker) reopens them from ``root`` when it needs them.
        return {**self.__dict__, "_arrays": {}}

    def present(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npy"))

    def _open(self, name: str, *, shape: tuple[int, ...], dtype=None) -> np.ndarray:
        if name in self._arrays:
            return self._arrays[name]
        path = self.root / f"{name}.npy"
        if not path.is_file():
            have = ", ".join(self.present()) or "no .npy files"
            raise HarnessError(f"CIFAR-10-C file {path} is missing (present in {self.root}: {have})")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:  # truncated data, bad header
            size = path.stat().st_size
            raise HarnessError(f"CIFAR-10-C file {path} is unreadable or truncated ({size:,} bytes):"
                               f" {str(exc).splitlines()[0]}") from None
        if tuple(arr.shape) != shape or (dtype is not None and arr.dtype != dtype):
            raise HarnessError(f"CIFAR-10-C file {path} has shape {tuple(arr.shape)} {arr.dtype}; "
                               f"expected {shape} {np.dtype(dtype) if dtype else 'integer'}")
        self._arrays[name] = arr
        return arr

    def check(self, names) -> None:
        """Open (and so validate) the files of ``names``."""
        for name in names:
            self.array(name)

    def array(self, name: str) -> np.ndarray:
        return self._open(name, shape=(ROWS, 32, 32, 3), dtype=np.uint8)

    def images(self, name: str, severity: int, start: int, stop: int) -> np.ndarray:
        """uint8 (N, 3, 32, 32) of test examples start:stop at ``severity``."""
        base = (severity - 1) * PER_SEVERITY
        rows = np.asarray(self.array(name)[base + start:base + stop])
        return np.ascontiguousarray(rows.transpose(0, 3, 1, 2))

    def fingerprint(self, names) -> str:
        """sha256 over each used file's name, size, first and last MiB (the full files are
        150 MB each; this catches a different or re-encoded release without reading them)."""
        h = hashlib.sha256()
        for name in ["labels", *sorted(names)]:
            path = self.root / f"{name}.npy"
            size = path.stat().st_size
            h.update(f"{name}:{size}:".encode())
            with open(path, "rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
        return h.hexdigest()


@dataclass(frozen=True)
class CorruptionData:
    """What a cifar10c run reads: released files or a clean set to corrupt, and ``n``.

    ``clean`` is the clean test set (None for released files without CIFAR-10 next to them);
    ``images``/``labels`` serve the model probe before any store is opened.
    """

    source: str
    clean: ImageSet | None
    released: ReleasedC | None
    n: int

    def __len__(self) -> int:
        return self.n

    @property
    def labels(self) -> np.ndarray:
        if self.released is not None:
            return self.released.labels[:self.n]
        return self.clean.labels[:self.n]

    @property
    def images(self) -> np.ndarray:
        if self.clean is not None:
            return self.clean.images[:self.n]
        first = next(name for name in self.released.present() if name != "labels")
        return self.released.images(first, 1, 0, min(self.n, 8))

    @property
    def name(self) -> str:
        return "cifar10c-released" if self.source == "released" else f"{self.clean.name}+generated"

    def head(self, n: int | None) -> CorruptionData:
        if n is None or n >= self.n:
            return self
        if n < 1:
            raise HarnessError(f"n must be at least 1, got {n}")
        return replace(self, n=n, clean=self.clean.head(n) if self.clean is not None else None)


def load_cifar10c(*, data_dir=None, source: str = "auto") -> CorruptionData:
    """Resolve ``source`` (auto | released | generated) against ``data_dir`` / $HARNESS_DATA.

    Raises:
        HarnessError: unknown source, released files requested but absent, a given directory
            that does not exist, or CIFAR-10 missing for generation.
    """
    if source not in SOURCES:
        raise HarnessError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    path, origin = _given_dir(data_dir)
    if path is not None and not path.is_dir():
        raise HarnessError(f"{origin} {str(path)!r} is not a directory")
    root = find_released(path)
    if source == "released" and root is None:
        where = f"{origin} {str(path)!r}" if path is not None else "no data dir given"
        raise HarnessError(f"source released: no {RELEASED_DIR}/labels.npy found ({where}); "
                           "download CIFAR-10-C and pass the folder holding it")
    if source == "released" or (source == "auto" and root is not None):
        released = ReleasedC(root)
        clean = None
        try:
            if resolve_data_dir(path) is not None:
                clean = load_cifar10_arrays("test", data_dir=path)
        except HarnessError:
            clean = None
        if clean is not None and (len(clean) != PER_SEVERITY
                                  or not np.array_equal(clean.labels, released.labels)):
            clean = None  # a different test order: no clean reference condition
        return CorruptionData("released", clean, released, PER_SEVERITY)
    clean = load_cifar10_arrays("test", data_dir=path)
    return CorruptionData("generated", clean, None, len(clean))
