"""Suite cifar10c: released files (a small folder in the release's layout, built here),
generated corruptions, resume, one generation for many models, summaries, CLI errors."""

import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import one_line_error

import harness.corruptions
import models
from conftest import run_cli, run_suites
from harness.corruptions import corrupt
from harness.data import load_cifar10_arrays, load_cifar10c, load_sample
from harness.errors import HarnessError
from harness.plan import prepare_model
from harness.predict import predict
from harness.resolve import LoadedModel, resolve_model
from harness.store import Store
from harness.suites.cifar10c import headline, mce, parse_corruptions, parse_severities
from models import create_model

N = 120  # examples per severity written into the small released folder


def _write_released(root, clean, names, *, n=N):
    """CIFAR-10-C/<name>.npy (50000, 32, 32, 3) uint8 sparse files with the first ``n`` rows
    of every severity filled with distinct data, and labels.npy."""
    c = root / "CIFAR-10-C"
    c.mkdir(parents=True)
    np.save(c / "labels.npy", np.tile(clean.labels.astype(np.uint8), 5))
    for name in names:
        arr = np.lib.format.open_memmap(c / f"{name}.npy", mode="w+", dtype=np.uint8,
                                        shape=(50000, 32, 32, 3))
        for s in range(1, 6):
            images = corrupt(torch.from_numpy(clean.images[:n]), name, s, seed=99).numpy()
            arr[(s - 1) * 10000:(s - 1) * 10000 + n] = images.transpose(0, 2, 3, 1)
        arr.flush()
        del arr
    return c


@pytest.fixture(scope="module")
def released_root(tmp_path_factory, cifar_dir):
    root = tmp_path_factory.mktemp("data")
    os.symlink(cifar_dir / "cifar-10-batches-py", root / "cifar-10-batches-py")
    _write_released(root, load_cifar10_arrays("test", data_dir=cifar_dir), ["fog", "contrast"])
    return root


@pytest.fixture(scope="module")
def resnet8():
    lm = resolve_model("resnet8")
    return lm, prepare_model(lm, load_sample(), device="cpu", dtype="float32")


def test_released_files_are_read_at_the_right_rows(released_root, resnet8, tmp_path):
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "cifar10c", "--data-dir", str(released_root), "--n", str(N),
                   "--corruptions", "fog,contrast", "--store", str(store), "--quiet",
                   "--model", "resnet8")
    assert proc.returncode == 0, proc.stderr
    assert "source released" in proc.stdout and "cifar10c-released" in proc.stdout
    with Store(store, readonly=True) as st:
        (run,) = st.runs()
        frame = st.to_frame([run["run_id"]])
    assert set(frame["source"]) == {"released", "clean"}  # clean: CIFAR-10 sits next to it
    assert len(frame) == N * (1 + 2 * 5)
    _, module = resnet8
    arr = np.load(released_root / "CIFAR-10-C" / "fog.npy", mmap_mode="r")
    labels = np.load(released_root / "CIFAR-10-C" / "labels.npy")[20000:20000 + N].astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(arr[20000:20000 + N].transpose(0, 3, 1, 2)))
    pred, _ = predict(module, x, torch.from_numpy(labels), device="cpu", dtype=torch.float32,
                      batch_size=64)
    rows = frame[(frame["corruption"] == "fog") & (frame["severity"] == 3)].sort_values("example")
    assert rows["pred"].tolist() == pred.tolist()
    assert rows["label"].tolist() == labels.tolist()


def test_missing_and_truncated_files_are_one_line_errors(released_root, tmp_path):
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "cifar10c", "--data-dir", str(released_root), "--n", "10",
                   "--corruptions", "fog,snow", "--store", str(store))
    one_line_error(proc, r"snow\.npy is missing \(present in .*: contrast, fog, labels\)")
    assert not store.exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.npy").symlink_to(released_root / "CIFAR-10-C" / "labels.npy")
    with open(released_root / "CIFAR-10-C" / "fog.npy", "rb") as src:
        (broken / "fog.npy").write_bytes(src.read(4_000_000))
    proc = run_cli("run", "--suite", "cifar10c", "--data-dir", str(broken), "--corruptions", "fog",
                   "--store", str(store))
    one_line_error(proc, r"fog\.npy is unreadable or truncated \(4,000,000 bytes\)")
    assert not store.exists()

    bad = tmp_path / "badlabels" / "CIFAR-10-C"
    bad.mkdir(parents=True)
    np.save(bad / "labels.npy", np.zeros(49999, np.uint8))
    proc = run_cli("run", "--suite", "cifar10c", "--data-dir", str(bad.parent), "--store", str(store))
    one_line_error(proc, r"labels\.npy has shape \(49999,\)")
    assert not store.exists()


def test_source_selection(released_root, cifar_dir, tmp_path):
    assert load_cifar10c(data_dir=released_root).source == "released"
    assert load_cifar10c(data_dir=released_root, source="generated").source == "generated"
    assert load_cifar10c(data_dir=cifar_dir).source == "generated"
    assert load_cifar10c().clean.source == "bundled-sample"
    with pytest.raises(HarnessError, match="no CIFAR-10-C/labels.npy found"):
        load_cifar10c(data_dir=cifar_dir, source="released")
    with pytest.raises(HarnessError, match="holds no CIFAR-10 data"):
        load_cifar10c(data_dir=released_root / "CIFAR-10-C", source="generated")
    with pytest.raises(HarnessError, match="source 'fake': expected"):
        load_cifar10c(source="fake")


def test_generated_runs_resume_and_do_not_depend_on_shard_size(resnet8):
    lm, _ = resnet8
    data = load_cifar10c()
    opts = {"corruptions": "shot_noise,glass_blur", "severities": "2,5"}
    with Store(":memory:") as st:
        (first,) = run_suites(models=[lm], suite="cifar10c", data=data, store=st, n=60,
                              shard_size=25, options=opts)
        (again,) = run_suites(models=[lm], suite="cifar10c", data=data, store=st, n=60,
                              shard_size=25, options=opts)
        (other,) = run_suites(models=[lm], suite="cifar10c", data=data, store=st, n=60,
                              shard_size=60, options=opts)
        assert first.shards_computed == first.shards_total == 3 * 5
        assert again.shards_computed == 0 and again.run_id == first.run_id
        assert other.run_id != first.run_id

        def preds(run_id):
            f = st.to_frame([run_id])
            return f.sort_values(["corruption", "severity", "example"])[["corruption", "severity",
                                                                          "example", "pred"]]
        pd.testing.assert_frame_equal(preds(first.run_id).reset_index(drop=True),
                                      preds(other.run_id).reset_index(drop=True))


def test_each_set_is_generated_once_for_all_models(resnet8, monkeypatch):
    calls = []
    real = harness.corruptions.corrupt

    def counting(images, name, severity, **kw):
        calls.append((name, severity, len(images)))
        return real(images, name, severity, **kw)

    monkeypatch.setattr(harness.corruptions, "corrupt", counting)
    torch.manual_seed(1)
    other = LoadedModel(name="resnet8-gelu-untrained", module=create_model("resnet8-gelu"),
                        identity={"factory": "resnet8-gelu", "weights": "random seed 1"})
    with Store(":memory:") as st:
        outs = run_suites(models=[resnet8[0], other], suite="cifar10c", data=load_cifar10c(),
                          store=st, n=40, options={"corruptions": "fog,pixelate"})
        assert len({o.run_id for o in outs}) == 2
        assert sorted(calls) == [(c, s, 40) for c in ("fog", "pixelate") for s in range(1, 6)]
        accs = [o.suite.headline(o.summary)["mean"] for o in outs]
        assert accs[0] > 0.5 and accs[1] < 0.3  # trained vs untrained: both really evaluated


def st_summary(path, run_id):
    from harness.suites.cifar10c import Cifar10CSuite

    with Store(path, readonly=True) as st:
        return Cifar10CSuite().summarize(st, run_id)


def _summary(rows):
    df = pd.DataFrame(rows, columns=["corruption", "severity", "source", "n", "n_correct"])
    df["accuracy"] = df["n_correct"] / df["n"]
    return df


def test_headline_and_mce_arithmetic():
    from harness.corruptions import list_corruptions

    rows = [("none", 0, "clean", 100, 90)]
    for i, c in enumerate(list_corruptions()):
        for s in range(1, 6):
            rows.append((c, s, "generated", 100, 80 - 5 * s + (i % 3)))
    rows.append(("saturate", 3, "generated", 100, 10))
    hl = headline(_summary(rows))
    assert hl["clean"] == pytest.approx(0.90)
    assert hl["s1"] == pytest.approx(np.mean([75 + i % 3 for i in range(15)]) / 100)
    assert hl["mean"] == pytest.approx(np.mean([80 - 5 * s + i % 3 for i in range(15)
                                                for s in range(1, 6)]) / 100)
    assert hl["extras"] == pytest.approx(0.10)  # extras never enter the mean
    base = [("none", 0, "clean", 100, 80)] + [(c, s, "generated", 100, 40)
                                              for c in list_corruptions() for s in range(1, 6)]
    m = mce(_summary(rows), _summary(base))
    ce = [sum(100 - (80 - 5 * s + i % 3) for s in range(1, 6)) / (5 * 60) for i in range(15)]
    assert m["mce"] == pytest.approx(100 * np.mean(ce))
    rel = [sum((100 - (80 - 5 * s + i % 3)) - 10 for s in range(1, 6)) / (5 * (60 - 20))
           for i in range(15)]
    assert m["relative_mce"] == pytest.approx(100 * np.mean(rel))


def test_option_parsing():
    assert parse_corruptions("fog, jpeg") == ["fog", "jpeg_compression"]  # release order
    assert parse_corruptions("extra") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert len(parse_corruptions("all")) == 19 and len(parse_corruptions(None)) == 15
    assert parse_severities("1,3-5") == [1, 3, 4, 5]
    with pytest.raises(HarnessError, match="did you mean 'snow'"):
        parse_corruptions("snwo")
    with pytest.raises(HarnessError, match="from 1 to 5, got 6"):
        parse_severities("4-6")
    with pytest.raises(HarnessError, match="'x' is not a severity"):
        parse_severities("x")


@pytest.mark.parametrize("args, pattern", [
    (["--corruptions", "fgo"], r"unknown corruption 'fgo'; did you mean 'fog'"),
    (["--severities", "0"], r"severity must be an integer from 1 to 5, got 0"),
    (["--source", "released"], r"source released: no CIFAR-10-C/labels.npy found"),
    (["--baseline", "resnet8"], r"store .* does not exist"),
    (["--n", "1001"], r"n=1001 is outside 1..1000 for bundled-sample"),
])
def test_cli_bad_input_exits_2_without_a_store(tmp_path, args, pattern):
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "cifar10c", "--store", str(store), *args, cwd=tmp_path)
    one_line_error(proc, pattern)
    assert not store.exists()


def test_suite_options_are_rejected_elsewhere(tmp_path):
    proc = run_cli("run", "--suite", "clean", "--corruptions", "fog", "--store",
                   str(tmp_path / "s.sqlite"))
    one_line_error(proc, r"option 'corruptions' does not apply to suite 'clean'")


def _mce_from_examples(frame, run, base) -> tuple[float, float]:
    """mCE and relative mCE (%) of two stored runs, recomputed here from their per-example
    rows with pandas (Hendrycks & Dietterich's definition), independently of harness code."""
    err = (~frame["correct"]).groupby([frame["run_id"], frame["corruption"],
                                       frame["severity"]]).mean()
    e, b = err[run], err[base]
    ce, rel = [], []
    for c in e.loc[e.index.get_level_values(0) != "none"].index.get_level_values(0).unique():
        ce.append(e[c].sum() / b[c].sum())
        den = (b[c] - b[("none", 0)]).sum()
        if den > 0:   # undefined where the baseline lost nothing to the corruption
            rel.append((e[c] - e[("none", 0)]).sum() / den)
    return 100 * float(np.mean(ce)), 100 * float(np.mean(rel))


@pytest.mark.slow
def test_main_job_wiring_and_baseline_mce(tmp_path):
    """The main job's command on a small n: the default models, all 15 x 5 generated sets, the
    same printed tables (the full-size job runs in .ci/run as its own step, timed)."""
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "cifar10c", "--n", "40", "--store", str(store),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "n = 40 per set | 15 corruptions x 5 severities | source generated" in out
    assert "C-10-C mean %" in out and "frost ~" in out and "accuracy % by corruption" in out
    defaults = models.list_models(default=True, pretrained=True)
    assert len(defaults) == 7   # the six bundled resnet8 front ends and warp-lca-resnet8
    assert "warp-lca-resnet8" in defaults and "lca-resnet8" not in defaults
    with Store(store, readonly=True) as st:
        runs = st.runs()
        frame = st.to_frame()
        assert sorted(r["model"] for r in runs) == defaults
        assert all(r["complete"] and r["n_shards"] == 76 and r["n"] == 40 * 76 for r in runs)
    ids = {r["model"]: r["run_id"] for r in runs}
    for name, run_id in ids.items():   # each row's C-10-C mean, recomputed from the examples
        rows = frame[(frame["run_id"] == run_id) & (frame["severity"] > 0)]
        mean = 100 * rows.groupby(["corruption", "severity"])["correct"].mean().mean()
        assert re.search(rf"{re.escape(name)} +│ +[0-9.]+ │ +{mean:.2f} │", out), name
    proc = run_cli("run", "--suite", "cifar10c", "--n", "40", "--store", str(store),
                   "--baseline", "resnet8", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0/76" in proc.stdout and "76/76" not in proc.stdout   # all read from the store
    for name in ("resnet8-gelu", "warp-lca-resnet8"):
        m, rel = _mce_from_examples(frame, ids[name], ids["resnet8"])
        assert f"{name}: mCE {m:.1f} %, relative mCE {rel:.1f} %" in proc.stdout
    listing = run_cli("ls", "runs", "--store", str(store))
    mean = 100 * headline(st_summary(store, ids["resnet8"]))["mean"]
    assert f"{mean:.2f} (C-10-C mean)" in listing.stdout


def test_baseline_must_cover_the_run(resnet8):
    from harness.suites.cifar10c import Cifar10CSuite, find_baseline

    lm, _ = resnet8
    data = load_cifar10c()
    with Store(":memory:") as st:
        (fog,) = run_suites(models=[lm], suite="cifar10c", data=data, store=st, n=30,
                            options={"corruptions": "fog"})
        run_suites(models=[lm], suite="cifar10c", data=data, store=st, n=30,
                   options={"corruptions": "snow"})  # later, but covers other sets
        suite = Cifar10CSuite()
        head = data.head(30)

        def spec(**opts):
            params = suite.params(n=30, data=head, **opts)
            return {"data_fingerprint": suite.data_identity(head, params)[1], "params": params,
                    "seed": 0}

        assert find_baseline(st, "resnet8", spec(corruptions="fog", severities="1-4")) == fog.run_id
        with pytest.raises(HarnessError, match="covers these corruption sets"):
            find_baseline(st, "resnet8", spec(corruptions="fog,snow"))
        with pytest.raises(HarnessError, match="covers these corruption sets"):
            find_baseline(st, "resnet8", {**spec(corruptions="fog"), "seed": 1})


def test_generated_runs_record_their_generator_and_refuse_float64_less_devices():
    from harness.suites.cifar10c import Cifar10CSuite

    suite, data = Cifar10CSuite(), load_cifar10c().head(10)
    gen = suite.params(n=10, data=data, device="cpu")["generator"]
    assert gen["device"] == "cpu" and gen["torch"] == torch.__version__.split("+")[0]
    assert len(gen["code"]) == 16
    with pytest.raises(HarnessError, match="float64, which mps lacks"):
        suite.params(n=10, data=data, device="mps")


def test_relative_mce_lists_corruptions_it_cannot_normalise():
    from harness.corruptions import list_corruptions

    run = [("none", 0, "clean", 100, 90)] + [(c, 1, "generated", 100, 70)
                                             for c in list_corruptions()]
    base = [("none", 0, "clean", 100, 80)] + [(c, 1, "generated", 100, 80 if c == "brightness"
                                               else 60) for c in list_corruptions()]
    m = mce(_summary(run), _summary(base))
    assert m["relative_excluded"] == ["brightness"]
    assert m["relative_mce"] == pytest.approx(100 * (30 - 10) / (40 - 20))


def _labels(dtype=np.uint8):
    return np.tile(np.arange(10), 5 * 1000).astype(dtype)   # 10,000 test labels x 5 severities


@pytest.mark.parametrize("labels, message", [
    (np.where(_labels() == 9, 10, _labels()).astype(np.uint8), r"labels must be integers 0\.\.9"),
    (np.where(_labels() == 0, -1, _labels()).astype(np.int64), r"labels must be integers 0\.\.9"),
    (_labels(np.float32), r"labels must be integers 0\.\.9"),
    (_labels()[:, None], r"labels\.npy has shape \(50000, 1\)"),
    (np.concatenate([_labels()[:10000], np.roll(_labels()[10000:], 1)]), r"severity blocks differ"),
])
def test_bad_released_labels_are_refused(tmp_path, labels, message):
    from harness.data._cifar10c import ReleasedC
    from harness.errors import HarnessError

    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(HarnessError, match=message):
        ReleasedC(tmp_path)


@pytest.mark.parametrize("dtype, shape", [(np.float32, (50000, 32, 32, 3)),
                                          (np.uint8, (50000, 3, 32, 32)),
                                          (np.uint8, (10000, 32, 32, 3))])
def test_released_images_of_the_wrong_dtype_or_shape_are_refused(tmp_path, dtype, shape):
    from harness.data._cifar10c import ReleasedC
    from harness.errors import HarnessError

    np.save(tmp_path / "labels.npy", _labels())
    # sparse files: the header is what is checked, no 600 MB written
    np.lib.format.open_memmap(tmp_path / "fog.npy", mode="w+", dtype=dtype, shape=shape).flush()
    data = ReleasedC(tmp_path)
    with pytest.raises(HarnessError, match=r"fog\.npy has shape .* expected \(50000, 32, 32, 3\) uint8"):
        data.check(["fog"])


def test_wrong_released_images_exit_2_before_the_store(tmp_path):
    root = tmp_path / "data" / "CIFAR-10-C"
    root.mkdir(parents=True)
    np.save(root / "labels.npy", _labels())
    np.lib.format.open_memmap(root / "fog.npy", mode="w+", dtype=np.float32,
                              shape=(50000, 32, 32, 3)).flush()
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "cifar10c", "--data-dir", str(root.parent), "--source",
                   "released", "--corruptions", "fog", "--model", "resnet8", "--store", str(store))
    one_line_error(proc, r"fog\.npy has shape \(50000, 32, 32, 3\) float32; expected .* uint8")
    assert not store.exists()
