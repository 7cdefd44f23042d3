"""RobustBench adapter: a real RobustBench architecture (Ding2020MMA, a WRN-28-4) with a state
dict saved by the test in RobustBench's directory layout, loaded offline."""

import pytest
import torch

from harness.errors import HarnessError
from harness.resolve import resolve_model

NAME = "Ding2020MMA"   # 5.8M parameters: the smallest single-checkpoint CIFAR-10 Linf entry


@pytest.fixture(scope="module")
def rb_dir(tmp_path_factory):
    """A weights folder holding a seeded Ding2020MMA checkpoint, saved the way RobustBench's
    checkpoints are (a 'state_dict' entry with DataParallel's 'module.' prefix)."""
    from models.robustbench import import_robustbench

    models, threat = import_robustbench()
    torch.manual_seed(0)
    net = models[threat("Linf")][NAME]["model"]().eval()
    root = tmp_path_factory.mktemp("rb")
    (root / "cifar10" / "Linf").mkdir(parents=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, root / "cifar10" / "Linf" / f"{NAME}.pt")
    return root, net


def test_loads_the_architecture_and_weights_offline(rb_dir):
    from harness.data import load_sample

    root, net = rb_dir
    loaded = resolve_model(f"robustbench:{NAME}", weights_dir=str(root))
    assert loaded.name == f"robustbench:Linf/{NAME}"
    assert type(loaded.module) is type(net) and not loaded.module.training
    x = torch.from_numpy(load_sample().images[:4]).float() / 255
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))
    assert len(loaded.identity["weights_sha256"]) == 64
    again = resolve_model(f"robustbench:Linf/{NAME}", weights_dir=str(root))
    assert again.fingerprint == loaded.fingerprint


def test_cli_run_on_a_robustbench_model(rb_dir, tmp_path):
    from conftest import run_cli

    root, _ = rb_dir
    store = tmp_path / "s.sqlite"
    proc = run_cli("run", "--suite", "clean", "--model", f"robustbench:{NAME}", "--weights-dir",
                   str(root), "--n", "8", "--store", str(store), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"robustbench:Linf/{NAME}" in proc.stdout
    listing = run_cli("ls", "runs", "--store", str(store))
    assert f"robustbench:Linf/{NAME}" in listing.stdout


def test_errors_are_one_line_and_say_what_to_do(rb_dir, tmp_path, monkeypatch):
    from conftest import run_cli

    root, _ = rb_dir
    monkeypatch.delenv("HARNESS_ROBUSTBENCH_DIR", raising=False)
    with pytest.raises(HarnessError, match="--weights-dir"):
        resolve_model(f"robustbench:{NAME}")
    with pytest.raises(HarnessError, match=r"cifar10/Linf/Standard\.pt' not found; the harness "
                                           r"never downloads"):
        resolve_model("robustbench:Standard", weights_dir=str(root))
    with pytest.raises(HarnessError, match="did you mean 'Ding2020MMA'"):
        resolve_model("robustbench:Ding2020MAA", weights_dir=str(root))
    with pytest.raises(HarnessError, match="unknown threat model 'Linf2'"):
        resolve_model(f"robustbench:Linf2/{NAME}", weights_dir=str(root))
    with pytest.raises(HarnessError, match="weights do not apply"):
        resolve_model(f"robustbench:{NAME}", weights="x.pt", weights_dir=str(root))
    # a checkpoint of another architecture, and one that is not a plain state dict
    other = tmp_path / "cifar10" / "L2"
    other.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(3)}, other / "Standard.pt")
    with pytest.raises(HarnessError, match="does not fit 'Standard'"):
        resolve_model("robustbench:Standard", weights_dir=str(tmp_path))  # only L2 exists
    torch.save({"state_dict": {"w": torch.zeros(1)}, "fn": print}, other / "Standard.pt")
    with pytest.raises(HarnessError, match="cannot be read safely"):
        resolve_model("robustbench:L2/Standard", weights_dir=str(tmp_path))
    proc = run_cli("run", "--suite", "clean", "--model", "robustbench:Standard", "--weights-dir",
                   str(root), "--n", "4", "--store", str(tmp_path / "s.sqlite"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and "Standard.pt" in proc.stderr
    assert not (tmp_path / "s.sqlite").exists()   # every check runs before the store opens
