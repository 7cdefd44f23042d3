import pickle

import numpy as np
import pytest
import torch

from conftest import write_batch
from harness.data import CLASSES, fingerprint, load_cifar10, load_cifar10_arrays, load_sample
from harness.errors import HarnessError


@pytest.fixture
def tiny_dir(tmp_path):
    """A 20-image test split in the official layout (bytes keys, as the Python 2 release)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    labels = np.arange(20) % 10
    write_batch(root / "test_batch", data, labels, bytes_keys=True)
    return tmp_path, data, labels


def test_bundled_sample_is_balanced_and_small():
    ds = load_sample()
    assert ds.images.shape == (1000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels, minlength=10).tolist() == [100] * 10
    assert np.all(np.diff(ds.indices) > 0) and ds.indices.max() < 10000
    assert ds.source == "bundled-sample" and len(ds.fingerprint) == 64
    from harness.data._cifar10 import SAMPLE_PATH

    assert SAMPLE_PATH.stat().st_size < 4 * 1024 * 1024


def test_default_is_bundled_sample():
    images, labels = load_cifar10("test")
    assert images.dtype == torch.uint8 and images.shape == (1000, 3, 32, 32)
    assert labels.dtype == torch.int64


def test_bytes_keys_and_parent_or_batch_dir(tiny_dir):
    root, data, labels = tiny_dir
    for d in (root, root / "cifar-10-batches-py"):
        ds = load_cifar10_arrays("test", data_dir=d)
        assert np.array_equal(ds.images.reshape(20, -1), data)
        assert ds.labels.tolist() == labels.tolist()
        assert ds.fingerprint == fingerprint(data.reshape(-1, 3, 32, 32), labels)


def test_str_keys(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.zeros((3, 3072), np.uint8)
    write_batch(root / "test_batch", data, [1, 2, 3])
    assert load_cifar10_arrays("test", data_dir=tmp_path).labels.tolist() == [1, 2, 3]


def test_env_var_resolution(tiny_dir, monkeypatch):
    root, _, _ = tiny_dir
    monkeypatch.setenv("HARNESS_DATA", str(root))
    assert len(load_cifar10_arrays("test")) == 20
    assert len(load_cifar10_arrays("test", data_dir=None)) == 20
    monkeypatch.setenv("HARNESS_DATA", str(root / "nope"))
    with pytest.raises(HarnessError, match=r"^\$HARNESS_DATA .*nope' is not a directory"):
        load_cifar10_arrays("test")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "cannot read CIFAR-10 file"),
        (lambda p: p.write_bytes(b"not a pickle"), "cannot read CIFAR-10 file"),
        (lambda p: write_batch(p, np.zeros((2, 100), np.uint8), [0, 1]), r"shape \(N, 3072\)"),
        (lambda p: write_batch(p, np.zeros((2, 3072), np.float32), [0, 1]), "must be uint8"),
        (lambda p: write_batch(p, np.zeros((2, 3072), np.uint8), [0, 10]), "labels must be"),
        (lambda p: write_batch(p, np.zeros((2, 3072), np.uint8), [0]), "1 labels for 2 images"),
        (lambda p: pickle.dump([1, 2], open(p, "wb")), "is not a batch dict"),
        (lambda p: p.unlink(), "missing CIFAR-10 file"),
    ],
)
def test_malformed_files_name_the_file(tiny_dir, corrupt, message):
    root, _, _ = tiny_dir
    path = root / "cifar-10-batches-py" / "test_batch"
    corrupt(path)
    if message == "missing CIFAR-10 file":
        (root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    with pytest.raises(HarnessError, match=message) as exc:
        load_cifar10_arrays("test", data_dir=root)
    assert "test_batch" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_dir_and_bad_split(tmp_path):
    with pytest.raises(HarnessError, match="is not a directory"):
        load_cifar10_arrays("test", data_dir=tmp_path / "absent")
    with pytest.raises(HarnessError, match="holds no CIFAR-10 data"):
        load_cifar10_arrays("test", data_dir=tmp_path)
    with pytest.raises(HarnessError, match="unknown split"):
        load_cifar10_arrays("val")
    with pytest.raises(HarnessError, match="only test images"):
        load_cifar10_arrays("train")


def test_head():
    ds = load_sample()
    assert len(ds.head(10)) == 10 and len(ds.head(None)) == 1000 and len(ds.head(5000)) == 1000
    with pytest.raises(HarnessError):
        ds.head(0)


@pytest.mark.data
def test_full_copy_from_shared(cifar_dir):
    train = load_cifar10_arrays("train", data_dir=cifar_dir)
    test = load_cifar10_arrays("test", data_dir=cifar_dir)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert len(CLASSES) == 10


@pytest.mark.data
def test_bundled_sample_is_a_subset_of_the_test_split(cifar_dir):
    """The committed sample was built by scripts/make_sample.py from this copy."""
    test = load_cifar10_arrays("test", data_dir=cifar_dir)
    sample = load_sample()
    assert np.array_equal(test.images[sample.indices], sample.images)
    assert np.array_equal(test.labels[sample.indices], sample.labels)


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: code that runs on a plain pickle.load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_batch_pickle_that_carries_code_is_refused_unrun(tmp_path):
    import pickle

    import numpy as np

    from harness.data import load_cifar10_arrays

    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(marker)}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(evil, f, protocol=2)
    with open(tmp_path / "control", "wb") as f:   # the same pickle really runs it when loaded
        pickle.dump({"x": _Payload(tmp_path / "control-ran")}, f, protocol=2)
    with open(tmp_path / "control", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "control-ran").exists()
    with pytest.raises(HarnessError, match=r"io\.open is not allowed in a CIFAR-10 batch"):
        load_cifar10_arrays("test", data_dir=tmp_path)
    assert not marker.exists()
    # a faithful batch in the official layout (protocol 2, bytes keys) still loads
    from conftest import write_batch

    write_batch(folder / "test_batch", np.full((3, 3072), 7, np.uint8), [1, 2, 3],
                bytes_keys=True)
    data = load_cifar10_arrays("test", data_dir=tmp_path)
    assert data.labels.tolist() == [1, 2, 3] and int(data.images.max()) == 7


def test_a_corrupt_bundled_sample_is_a_one_line_error(tmp_path, monkeypatch):
    import numpy as np

    import harness.data._cifar10 as c10
    from harness.data import load_sample

    original = c10.SAMPLE_PATH
    good = original.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(c10, "SAMPLE_PATH", truncated)
    with pytest.raises(HarnessError, match="is unreadable: BadZipFile"):
        load_sample()
    s = np.load(original)
    for name, kw in (("float", {"images": s["images"].astype(np.float32)}),
                     ("labels", {"labels": s["labels"] + 10}),
                     ("shape", {"images": s["images"][:, :, :16]})):
        bad = tmp_path / f"{name}.npz"
        np.savez(bad, **{**{k: s[k] for k in ("images", "labels", "indices")}, **kw})
        monkeypatch.setattr(c10, "SAMPLE_PATH", bad)
        with pytest.raises(HarnessError, match="is corrupt: expected uint8 images"):
            load_sample()
    monkeypatch.setattr(c10, "SAMPLE_PATH", tmp_path / "absent.npz")
    with pytest.raises(HarnessError, match="is unreadable"):
        load_sample()


def test_harness_store_env_chooses_the_store(tmp_path):
    from conftest import run_cli

    store = tmp_path / "env.sqlite"
    proc = run_cli("run", "--suite", "clean", "--model", "resnet8", "--n", "20", "--quiet",
                   cwd=tmp_path, env={"HARNESS_STORE": str(store)})
    assert proc.returncode == 0, proc.stderr
    assert store.is_file() and not (tmp_path / "harness-results.sqlite").exists()
    listing = run_cli("ls", "runs", cwd=tmp_path, env={"HARNESS_STORE": str(store)})
    assert "resnet8" in listing.stdout and str(store.name) in listing.stdout
