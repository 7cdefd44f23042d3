"""CLI: the paths a user types, in subprocesses (what the shell sees) and in-process."""

import json
import subprocess
import sys

import pytest
import torch

import models
from conftest import REPO, run_cli
from harness.cli import main
from harness.data import load_sample
from models import create_model
from models.checkpoints import save_checkpoint
from models.zoo import weights_path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    stem = tmp_path_factory.mktemp("ck") / "r8"
    save_checkpoint(create_model("resnet8"), stem, factory="resnet8")
    return stem


def one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("harness: error: ")
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_help_does_not_import_torch():
    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'pandas' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: harness" in out.stdout


def test_help_exit_code():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "run" in proc.stdout


def test_unknown_model_suggests(tmp_path):
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "clean", "--model", "resnet2", "--store", str(store))
    one_line_error(proc, r"unknown model 'resnet2'; did you mean 'resnet20'")
    assert not store.exists()


def test_unknown_suite_suggests(tmp_path):
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "claen", "--store", str(store))
    one_line_error(proc, r"unknown suite 'claen'; did you mean 'clean'")
    assert not store.exists()


def test_missing_data_dir(tmp_path):
    proc = run_cli("run", "--suite", "clean", "--model", "resnet8", "--data-dir",
                   str(tmp_path / "nowhere"), "--store", str(tmp_path / "s.sqlite"))
    one_line_error(proc, r"data dir .*nowhere' is not a directory")
    assert not (tmp_path / "s.sqlite").exists()


@pytest.mark.slow
def test_bad_argument_values(tmp_path):
    one_line_error(run_cli("run", "--suite", "clean", "--n", "0"), r"--n: expected a positive")
    one_line_error(run_cli("run", "--suite", "clean", "--n", "5000"),
                   r"n=5000 is outside 1..1000 for bundled-sample")
    one_line_error(run_cli("run", "--suite", "clean", "--model", "resnet8",
                           "--weights", str(tmp_path / "x.pt")), r"x.pt' not found")
    one_line_error(run_cli("run"), r"the following arguments are required: --suite")
    one_line_error(run_cli("run", "--suite", "clean", "--device", "cuda:99"),
                   r"CUDA is not available|only \d+ CUDA")
    one_line_error(run_cli("ls", "runs", "--store", str(tmp_path / "none.sqlite")),
                   r"does not exist")
    one_line_error(run_cli("show", "abc", "--store", str(tmp_path / "none.sqlite")),
                   r"does not exist")


def test_no_weights_for_unbundled_model(tmp_path):
    one_line_error(run_cli("run", "--suite", "clean", "--model", "resnet20", "--store",
                           str(tmp_path / "s.sqlite")), r"'resnet20' has no bundled weights")


@pytest.mark.slow
def test_corrupt_checkpoint_exit_2_and_store_untouched(tmp_path, ckpt):
    store = tmp_path / "s.sqlite"
    ok = run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights",
                 f"{ckpt}.json", "--n", "100", "--store", str(store), "--quiet")
    assert ok.returncode == 0, ok.stderr
    before = store.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(ckpt.with_suffix(".safetensors").read_bytes()[:500])
    proc = run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights", str(bad),
                   "--store", str(store))
    one_line_error(proc, r"not a valid safetensors file")
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    one_line_error(run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights",
                           str(wrong), "--store", str(store)), r"do not fit the model")
    pickled = tmp_path / "code.pt"
    torch.save({"x": object()}, pickled)
    one_line_error(run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights",
                           str(pickled), "--store", str(store)), r"cannot load weights")
    assert store.read_bytes() == before


def test_not_a_store_is_left_alone(tmp_path, ckpt):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("hello")
    proc = run_cli("run", "--suite", "clean", "--model", "resnet8", "--weights",
                   f"{ckpt}.json", "--store", str(junk))
    one_line_error(proc, r"not a harness results database")
    assert junk.read_text() == "hello"


def _file_modes_apply():
    """A ``preexec_fn`` under which file modes apply to a child process: as root (which
    otherwise writes read-only files) it drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
    CAP_FOWNER from the bounding set, so the child runs as root without them; None when
    not root."""
    import ctypes
    import os

    if os.geteuid() != 0:
        return None

    def drop():
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):                      # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def test_read_only_store_file_or_folder_exit_2_and_stay_intact(tmp_path):
    import hashlib
    import shutil
    import subprocess

    drop, root = _file_modes_apply(), tmp_path
    try:
        writable = root / "w"
        writable.mkdir()
        store = writable / "s.sqlite"
        from conftest import run_suite
        from harness.store import Store

        with Store(store) as st:
            run_suite(model="resnet8", store=st, suite="clean", n=50)
        frozen_file = root / "ro-file"
        frozen_dir = root / "ro-dir"
        for d in (frozen_file, frozen_dir):
            d.mkdir()
            shutil.copy(store, d / "s.sqlite")
        (frozen_file / "s.sqlite").chmod(0o444)
        frozen_file.chmod(0o777)      # the folder is writable, the file is not
        (frozen_dir / "s.sqlite").chmod(0o644)
        frozen_dir.chmod(0o555)       # nothing can be created in the folder
        digest = {p: hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in (frozen_file / "s.sqlite", frozen_dir / "s.sqlite")}

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                                  text=True, cwd=root, preexec_fn=drop, timeout=300)

        base = ("run", "--suite", "clean", "--n", "50", "--store")
        one_line_error(cli(*base, str(frozen_file / "s.sqlite")), r"is read-only")
        one_line_error(cli(*base, str(frozen_dir / "s.sqlite")), r"folder .* is not writable")
        one_line_error(cli(*base, str(frozen_dir / "new.sqlite")), r"folder .* is not writable")
        assert not (frozen_dir / "new.sqlite").exists()
        for path in digest:   # reading still works, and nothing changed
            listing = cli("ls", "runs", "--store", str(path))
            assert listing.returncode == 0, listing.stderr
            assert "clean" in listing.stdout and "complete" in listing.stdout
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest[path]
    finally:
        for d in root.glob("ro-*"):
            d.chmod(0o755)


@pytest.mark.slow
def test_run_resume_ls_show(tmp_path, ckpt):
    store = str(tmp_path / "s.sqlite")
    args = ["run", "--suite", "clean", "--model", "resnet8", "--weights", f"{ckpt}.json",
            "--n", "300", "--shard-size", "100", "--store", store, "--quiet"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "n = 300 examples" in first.stdout and "3/3" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0 and "0/3" in second.stdout  # resumed: nothing recomputed
    ls = run_cli("ls", "runs", "--store", store)
    from harness.store import Store

    with Store(store, readonly=True) as st:
        (run,) = st.runs()
    assert run["run_id"][:12] in ls.stdout
    csv = run_cli("show", run["run_id"][:8], "--store", store, "--format", "csv", "--examples")
    lines = csv.stdout.strip().splitlines()
    assert len(lines) == 301 and lines[0].startswith("run_id,model,suite,data,seed")
    js = json.loads(run_cli("show", run["run_id"][:8], "--store", store, "--format",
                            "json").stdout)
    correct = [line.split(",")[-2] for line in lines[1:]]   # ...,pred,correct,loss
    assert js["rows"][0]["n"] == 300
    assert js["rows"][0]["accuracy"] == pytest.approx(correct.count("True") / 300)
    # the same weights, evaluated here directly on the same 300 images
    import numpy as np

    from harness.data import load_sample
    from models.zoo import load_model

    s = load_sample()
    with torch.inference_mode():
        logits = load_model(f"{ckpt}.json")(torch.from_numpy(s.images[:300]).float() / 255)
    direct = float(np.mean(logits.argmax(1).numpy() == s.labels[:300]))
    assert js["rows"][0]["accuracy"] == pytest.approx(direct, abs=1 / 300)
    (session,) = js["run"]["sessions"][:1]
    assert session["torch"] == torch.__version__ and session["device"] == "cpu"
    assert len(js["run"]["sessions"]) == 2  # the resumed second process is recorded too
    table = run_cli("show", run["run_id"][:8], "--store", store)
    assert table.returncode == 0 and "clean" in table.stdout


def test_ls_models_and_suites():
    out = run_cli("ls", "models", "resnet8*").stdout
    assert "resnet8-gelu" in out and "vgg16" not in out
    assert "clean" in run_cli("ls", "suites").stdout


def test_in_process_main_returns_codes(capsys):
    assert main(["ls", "suites"]) == 0
    assert main(["run", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


USER_FILE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)
    def forward(self, x):
        return self.fc(x.flatten(1))

def build():
    torch.manual_seed(0)
    return Tiny()

def not_a_module():
    return 42
"""


@pytest.mark.slow
def test_user_file_factory_with_pt_weights(tmp_path):
    (tmp_path / "user_models.py").write_text(USER_FILE)
    exec(USER_FILE, ns := {})
    net = ns["build"]()
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.arange(10.0))  # always predicts class 9
    torch.save(net.state_dict(), tmp_path / "w.pt")
    store = str(tmp_path / "s.sqlite")
    ref = f"{tmp_path / 'user_models.py'}:build"
    proc = run_cli("run", "--suite", "clean", "--model", ref, "--weights",
                   str(tmp_path / "w.pt"), "--store", store, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "10.00" in proc.stdout  # class 9 is exactly 100 of the 1,000 balanced images
    # the same factory as pkg.module:factory, imported from the working directory
    proc = run_cli("run", "--suite", "clean", "--model", "user_models:build", "--n", "50",
                   "--store", store, "--quiet", cwd=tmp_path,
                   env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert proc.returncode == 0, proc.stderr
    one_line_error(run_cli("run", "--suite", "clean", "--model",
                           f"{tmp_path / 'user_models.py'}:not_a_module"), r"not a torch.nn.Module")
    one_line_error(run_cli("run", "--suite", "clean", "--model",
                           f"{tmp_path / 'user_models.py'}:missing"), r"has no callable 'missing'")
    one_line_error(run_cli("run", "--suite", "clean", "--model", "no_such_pkg_xyz:build"),
                   r"cannot import module 'no_such_pkg_xyz'")


@pytest.mark.skipif(weights_path("resnet8") is None or
                    not weights_path("resnet8").with_suffix(".json").exists(),
                    reason="bundled weights not present")
def test_main_job_default_models(tmp_path):
    proc = run_cli("run", "--suite", "clean", "--store", str(tmp_path / "s.sqlite"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resnet8" in proc.stdout and "n = 1000 examples" in proc.stdout
    from harness.store import Store

    with Store(tmp_path / "s.sqlite", readonly=True) as st:
        runs = st.runs()
    assert sorted(r["model"] for r in runs) == models.list_models(default=True, pretrained=True)
    sample = load_sample()
    x = torch.from_numpy(sample.images).float() / 255
    for run in runs:   # each printed accuracy equals a direct forward pass of the bundled model
        with torch.no_grad():
            pred = create_model(run["model"], pretrained=True)(x).argmax(1).numpy()
        direct = 100 * float((pred == sample.labels).mean())
        acc = 100 * run["n_correct"] / run["n"]
        assert abs(acc - direct) <= 0.1 and f"{acc:.2f}" in proc.stdout, run["model"]


BROKEN_FILE = """
import torch
from torch import nn

def wrong_input():
    return nn.Linear(5, 10)           # cannot take images


def too_few_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 3))


class Pair(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10], x.mean()


def returns_a_tuple():
    return Pair()


def wrong_rank():
    return nn.Conv2d(3, 10, 3)        # (N, 10, 30, 30): not (N, classes)
"""


NONFINITE_FILE = """
import torch
from torch import nn


class SometimesNaN(nn.Module):
    # A real (fixed random linear) classifier on channel means whose logits are all NaN where
    # the top-left red pixel is >= 128 and +Inf at class 3 where the top-left green pixel is
    # <= 25 (a plain argmax would call these class 0 and class 3).

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3, 10, generator=g))

    def forward(self, x):
        logits = x.mean((2, 3)) @ self.w
        nan = (x[:, 0, 0, 0] > 0.5)[:, None]
        logits = torch.where(nan, torch.full_like(logits, float("nan")), logits)
        inf = (x[:, 1, 0, 0] < 0.1)[:, None] & (torch.arange(10, device=x.device) == 3)
        return torch.where(inf, torch.full_like(logits, float("inf")), logits)


def model():
    return SometimesNaN()
"""


def test_non_finite_logits_are_flagged_not_counted_and_the_run_goes_on(tmp_path):
    from harness.data import load_cifar10_arrays
    from harness.store import Store

    (tmp_path / "nan.py").write_text(NONFINITE_FILE)
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "clean", "--n", "600", "--shard-size", "200", "--store",
                   str(store), "--model", f"{tmp_path / 'nan.py'}:model")
    assert proc.returncode == 0, proc.stderr
    # expected from the pixels alone (the data the run read: $HARNESS_DATA or the sample)
    data = load_cifar10_arrays("test")
    images, labels = data.images[:600], data.labels[:600]
    nan, inf = images[:, 0, 0, 0] >= 128, images[:, 1, 0, 0] <= 25
    bad = nan | inf
    assert 0 < bad.sum() < 600
    # a plain argmax would have counted some of these correct (class 0 for an all-NaN row,
    # class 3 for the +Inf rows)
    assert (nan & (labels == 0)).any() and (inf & ~nan & (labels == 3)).any()
    with Store(store, readonly=True) as st:
        frame = st.to_frame()
        (run,) = st.runs()
        summary = st.condition_summary(run["run_id"])
    assert len(frame) == 600 and frame["example"].tolist() == list(range(600))
    flagged = frame["pred"].to_numpy() == -1
    assert (flagged == bad).all()
    assert not frame["correct"][flagged].any() and frame["loss"][flagged].isna().all()
    assert frame["loss"][~flagged].notna().all()
    assert int(summary["n_nonfinite"].sum()) == int(bad.sum())
    assert int(summary["n_correct"].sum()) == int(frame["correct"].sum())
    assert f"non-finite logits (NaN/Inf) on {int(bad.sum())} of 600 evaluations" in proc.stdout
    shown = run_cli("show", run["run_id"][:12], "--store", str(store), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["rows"]
    assert sum(r["n_nonfinite"] for r in rows) == int(bad.sum())


def test_broken_user_models_exit_2_before_the_store(tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN_FILE)
    store = tmp_path / "s.sqlite"
    base = ["run", "--suite", "clean", "--store", str(store), "--model"]
    one_line_error(run_cli(*base, f"{tmp_path / 'broken.py'}:wrong_input"),
                   r"failed on a \(2, 3, 32, 32\) batch in \[0, 1\]: RuntimeError")
    one_line_error(run_cli(*base, f"{tmp_path / 'broken.py'}:too_few_classes"),
                   r"has 3 outputs but the labels go up to 9")
    one_line_error(run_cli(*base, f"{tmp_path / 'broken.py'}:returns_a_tuple"),
                   r"must return logits of shape \(N, classes\); got tuple")
    one_line_error(run_cli(*base, f"{tmp_path / 'broken.py'}:wrong_rank"),
                   r"must return logits of shape \(N, classes\); got \(2, 10, 30, 30\)")
    assert not store.exists()
