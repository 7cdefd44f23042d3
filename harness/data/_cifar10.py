"""CIFAR-10 from the official ``cifar-10-batches-py`` pickles, and the bundled test sample.

The loader reads the pickles itself (no torchvision checksum), accepts ``str`` or ``bytes``
keys (the release was pickled under Python 2), and validates every array before it is used,
so a truncated or foreign file fails with one line naming it.

Data directory resolution (first that applies):
1. ``data_dir`` argument (CLI ``--data-dir``),
2. ``$HARNESS_DATA``,
3. the bundled sample (test split only: 1,000 class-balanced images shipped in the package).

A data directory may be the ``cifar-10-batches-py`` folder itself or its parent.

Example::

    images, labels = load_cifar10("test", data_dir="~/data")   # uint8 (N,3,32,32), int64 (N,)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
BATCH_DIR = "cifar-10-batches-py"
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
SAMPLE_PATH = Path(__file__).with_name("cifar10_test_sample.npz")
SAMPLE_NAME = "bundled-sample"


@dataclass(frozen=True)
class ImageSet:
    """An evaluation set: uint8 images (N,3,32,32), int64 labels and where they came from.

    ``indices`` are the positions of the images in the source split (so per-example results of
    the bundled sample map back to the official test split); ``fingerprint`` is the sha256 of
    images + labels and keys every stored run.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    source: str
    split: str
    fingerprint: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def name(self) -> str:
        """Short data name for records: ``bundled-sample`` or ``cifar10-<split>``."""
        return SAMPLE_NAME if self.source == SAMPLE_NAME else f"cifar10-{self.split}"

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise HarnessError(f"n must be at least 1, got {n}")
        return ImageSet(
            self.images[:n], self.labels[:n], self.indices[:n], self.source, self.split,
            self.fingerprint,
        )


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the raw image bytes followed by the int64 labels."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The CIFAR-10 directory to use, or None for the bundled sample.

    Raises:
        HarnessError: an explicitly given directory (argument or $HARNESS_DATA) does not exist
            or holds no ``cifar-10-batches-py`` folder.
    """
    origin = "data dir"
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get("HARNESS_DATA", "")
        if not env:
            return None
        data_dir, origin = env, "$HARNESS_DATA"
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise HarnessError(f"{origin} {str(path)!r} is not a directory")
    for candidate in (path, path / BATCH_DIR):
        try:
            if (candidate / "batches.meta").exists() or (candidate / "test_batch").exists():
                return candidate
        except OSError as exc:  # e.g. a directory the user may not search
            raise HarnessError(f"{origin} {str(path)!r}: {exc.strerror}") from None
    raise HarnessError(
        f"{origin} {str(path)!r} holds no CIFAR-10 data: expected {BATCH_DIR}/test_batch "
        "(the official python pickles) inside it"
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise HarnessError(f"missing CIFAR-10 file {str(path)!r}")
    try:
        with open(path, "rb") as f:
            # The official pickles are plain dicts of numpy arrays and lists; 'latin1' decodes
            # the Python 2 byte strings. Only what they contain may be rebuilt: a pickle that
            # names any other callable is refused before it can run.
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated, not a pickle, wrong protocol...
        raise HarnessError(
            f"cannot read CIFAR-10 file {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(batch, dict):
        raise HarnessError(f"CIFAR-10 file {str(path)!r} is not a batch dict")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise HarnessError(f"CIFAR-10 file {str(path)!r} lacks 'data' or 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise HarnessError(
            f"CIFAR-10 file {str(path)!r}: 'data' must be uint8 of shape (N, 3072), "
            f"got {data.dtype} {tuple(data.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise HarnessError(
            f"CIFAR-10 file {str(path)!r}: {labels.shape[0] if labels.ndim else 0} labels "
            f"for {data.shape[0]} images"
        )
    if labels.size == 0:
        raise HarnessError(f"CIFAR-10 file {str(path)!r} holds no images")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise HarnessError(f"CIFAR-10 file {str(path)!r}: labels must be integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# What the official batches (and faithful copies written by numpy/pickle) reference: numpy's
# array reconstruction and dtypes, and the codec Python 3 uses for protocol-2 bytes.
_PICKLE_GLOBALS = frozenset({
    (mod, name)
    for core in ("numpy.core", "numpy._core")
    for mod, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                      (f"{core}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only dicts, lists, str/bytes and numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch "
                                     "(only dicts, lists, strings and numpy arrays are)")


def load_cifar10_arrays(split: str = "test", *, data_dir=None) -> ImageSet:
    """Load a CIFAR-10 split as numpy arrays wrapped in an :class:`ImageSet`.

    Args:
        split: "test" or "train".
        data_dir: directory holding ``cifar-10-batches-py`` (or that folder itself); None
            falls back to ``$HARNESS_DATA`` and then to the bundled sample (test only).

    Raises:
        HarnessError: unknown split, missing/truncated/malformed files, or the train split
            requested without a data directory.
    """
    if split not in SPLIT_FILES:
        raise HarnessError(f"unknown split {split!r}; expected 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    if root is None:
        if split != "test":
            raise HarnessError(
                "the bundled sample has only test images; give a data dir (--data-dir, data_dir= or "
                "$HARNESS_DATA) to a folder with cifar-10-batches-py for the train split"
            )
        return load_sample()
    parts = [_read_batch(root / name) for name in SPLIT_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSet(
        images=images,
        labels=labels,
        indices=np.arange(len(labels), dtype=np.int64),
        source=str(root),
        split=split,
        fingerprint=fingerprint(images, labels),
    )


def load_sample() -> ImageSet:
    """The bundled 1,000-image class-balanced subset of the CIFAR-10 test split."""
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as z:
            images, labels, indices = z["images"], z["labels"], z["indices"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HarnessError(f"bundled sample {str(SAMPLE_PATH)!r} is unreadable: "
                           f"{type(exc).__name__}: {exc}") from None
    n = len(labels)
    if (images.dtype != np.uint8 or images.shape != (n, 3, 32, 32) or indices.shape != (n,)
            or n == 0 or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0 or labels.max() > 9):
        raise HarnessError(f"bundled sample {str(SAMPLE_PATH)!r} is corrupt: expected uint8 "
                           f"images (N, 3, 32, 32), N labels in 0..9 and N indices; got "
                           f"{images.dtype} {images.shape}, {labels.dtype} {labels.shape}, "
                           f"indices {indices.shape}")
    labels = labels.astype(np.int64)
    return ImageSet(
        images=images,
        labels=labels,
        indices=indices.astype(np.int64),
        source=SAMPLE_NAME,
        split="test",
        fingerprint=fingerprint(images, labels),
    )


def load_cifar10(split: str = "test", *, data_dir=None):
    """Load a CIFAR-10 split as torch tensors (the public API of DESIGN.md).

    Returns:
        (images, labels): uint8 tensor (N, 3, 32, 32) and int64 tensor (N,).
    """
    import torch

    ds = load_cifar10_arrays(split, data_dir=data_dir)
    return torch.from_numpy(ds.images), torch.from_numpy(ds.labels)
