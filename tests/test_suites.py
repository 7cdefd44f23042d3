"""The clean suite on the bundled model: per-example records equal a direct forward pass."""

import pytest
import torch

from conftest import run_suite
from harness.data import load_sample
from harness.errors import HarnessError
from harness.resolve import resolve_model
from harness.store import Store
from harness.suites import SUITES


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def test_clean_records_match_a_direct_forward(sample, tmp_path):
    lm = resolve_model("resnet8")
    x = torch.from_numpy(sample.images).float().div(255)
    with torch.inference_mode():
        logits = lm.module(x)
    with Store(tmp_path / "s.sqlite") as st:
        out = run_suite(model=lm, suite="clean", data=sample, store=st, batch_size=128,
                        shard_size=300)
        df = st.to_frame([out.run_id])
    assert df["pred"].tolist() == logits.argmax(1).tolist()
    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(sample.labels), reduction="none")
    assert torch.allclose(torch.tensor(df["loss"].to_numpy(), dtype=torch.float32), ce, atol=1e-4)
    assert out.summary["accuracy"].iloc[0] == pytest.approx(df["correct"].mean())
    assert out.summary["accuracy"].iloc[0] >= 0.70
    assert df["shard_key"].nunique() == 4  # 300, 300, 300, 100


def test_bfloat16_is_close_to_float32(sample):
    accs = {}
    for dtype in ("float32", "bfloat16"):
        with Store(":memory:") as st:
            out = run_suite(model=resolve_model("resnet8"), suite="clean", data=sample, store=st,
                            dtype=dtype)
        accs[dtype] = out.summary["accuracy"].iloc[0]
        assert out.spec.dtype == dtype
    assert abs(accs["float32"] - accs["bfloat16"]) <= 0.02


def test_single_example_and_bad_options(sample):
    with Store(":memory:") as st:
        out = run_suite(model=resolve_model("resnet8"), suite="clean", data=sample, store=st, n=1)
        assert out.summary["n"].iloc[0] == 1
        with pytest.raises(HarnessError, match="dtype 'int8'"):
            run_suite(model=resolve_model("resnet8"), suite="clean", data=sample, store=st,
                      dtype="int8")
        with pytest.raises(HarnessError, match="did you mean 'clean'"):
            run_suite(model=resolve_model("resnet8"), suite="clena", data=sample, store=st)


def test_suite_registry():
    assert "clean" in SUITES.names()
    assert SUITES.meta("clean")["description"]
