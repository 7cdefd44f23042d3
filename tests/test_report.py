"""``harness report``: the site is complete, self-contained and shows the store's numbers.

The numbers on the pages are checked against aggregates this test computes itself from the
per-example rows (``Store.to_frame``), not against the suites' summaries the pages use.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from harness.cli import main
from harness.store import Store


class Page(HTMLParser):
    """The parts of a page the tests read: links, images, leaderboard cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts_src: list[str] = []
        self.stylesheets: list[str] = []
        self.rows: list[dict] = []
        self._row: dict | None = None
        self._cell: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "script" and a.get("src"):
            self.scripts_src.append(a["src"])
        elif tag == "link":
            self.stylesheets.append(a.get("href", ""))
        elif tag == "tr" and "data-model" in a:
            self._row = {"model": a["data-model"], "cells": []}
        elif tag == "td" and self._row is not None:
            self._row["cells"].append(a)

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


@pytest.fixture(scope="module")
def site(report_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert main(["report", "--store", str(report_store), "--out", str(out)]) == 0
    return out


def test_site_has_every_page_and_is_self_contained(site, report_store):
    with Store(report_store, readonly=True) as store:
        models = {r["model"] for r in store.runs()}
    names = {p.name for p in site.iterdir()}
    assert {"index.html", "findings.html", "compare.html"} <= names
    assert {f"model-{m}.html" for m in models} <= names
    for path in site.glob("*.html"):
        page = Page(path.read_text())
        assert not page.scripts_src and not page.stylesheets, path.name
        for src in page.images:  # every figure inline, and a real PNG
            assert src.startswith("data:image/png;base64,"), (path.name, src[:40])
            img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            img.verify()
            assert img.size[0] > 10 and img.size[1] > 10
        for href in page.links:  # links stay inside the site
            assert not re.match(r"^[a-z]+://", href), (path.name, href)
            target = href.split("#")[0]
            assert not target or (site / target).is_file(), (path.name, href)


def test_leaderboard_numbers_match_the_per_example_rows(site, report_store):
    with Store(report_store, readonly=True) as store:
        df = store.to_frame()
    page = Page((site / "index.html").read_text())
    assert {r["model"] for r in page.rows} == set(df["model"])
    header = (site / "index.html").read_text()
    labels = re.findall(r'data-col="(\d+)"[^>]*>([^<]+)</th>', header)
    col = {label: int(i) for i, label in labels}
    c10 = df[(df["suite"] == "cifar10c") & (df["severity"] > 0)]
    for row in page.rows:
        rows = c10[c10["model"] == row["model"]]
        # CIFAR-10-C mean: equal weight per corruption and severity = mean over all rows here
        want = rows.groupby(["corruption", "severity"])["correct"].mean().mean()
        cell = row["cells"][col["C-10-C mean %"]]
        assert float(cell["data-v"]) == pytest.approx(want, abs=1e-12)
        assert "n=100" in cell["title"] and "generated" in cell["title"]
        zeros = df[(df["suite"] == "sparsity") & (df["model"] == row["model"])]["zero_fraction"]
        # the suite weighs layers by entries; the per-example field is the same ratio per example
        assert float(row["cells"][col["zeros %"]]["data-v"]) == pytest.approx(zeros.mean(), abs=2e-3)


def test_model_page_draws_every_stored_suite(site, report_store):
    text = (site / "model-resnet8.html").read_text()
    for heading in ("CIFAR-10-C", "Activation sparsity", "Run metadata"):
        assert f"<h2>{heading}</h2>" in text
    with Store(report_store, readonly=True) as store:
        runs = [r for r in store.runs() if r["model"] == "resnet8"]
    for run in runs:  # run ids, checkpoint and data fingerprints are on the page
        assert run["run_id"][:12] in text
        assert run["spec"]["data_fingerprint"][:12] in text
    ident = runs[0]["sessions"][-1]["model_identity"]["checkpoint_sha256"]
    assert ident in text
    assert Page(text).images, "the heatmap, the corruption examples and the sparsity bars"


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, report_store):
    assert main(["report", "--store", str(tmp_path / "missing.sqlite"), "--out",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no store" in err
    assert not (tmp_path / "s").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["report", "--store", str(report_store), "--out", str(blocker / "x")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["report", "--store", str(report_store), "--out", str(tmp_path / "r"),
                 "--reference", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_corruption_examples_are_the_generators_pixels():
    """The example grid holds the bundled image and the generator's output, pixel for pixel."""
    import numpy as np
    import torch

    from harness.corruptions import corrupt
    from harness.data import load_sample
    from reports.figures import corruption_examples

    uri, names = corruption_examples()
    grid = np.array(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))[..., :3]
    image = load_sample().images[7:8]
    fog3 = corrupt(torch.from_numpy(image), "fog", 3, seed=0, indices=np.array([7]))[0]

    def tile(row, col):  # make_grid: 2-pixel padding around 32x32 tiles
        return grid[2 + 34 * row:34 + 34 * row, 2 + 34 * col:34 + 34 * col].transpose(2, 0, 1)

    assert np.array_equal(tile(0, 0), image[0])
    assert np.array_equal(tile(names.index("fog"), 3), fog3.numpy())


def test_a_model_from_the_api_with_nothing_in_common_gets_its_pages(report_store, tmp_path):
    """A module evaluated with ``harness.evaluate`` (no factory, no checkpoint) and no suite in
    common with the reference: its model page is written (the template crashed on its
    identity) and the compare page says there is nothing to pair (the build aborted)."""
    import shutil

    import torch
    from torch import nn

    import harness

    store = tmp_path / "s.sqlite"
    shutil.copy(report_store, store)
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    harness.evaluate(mine, suite="clean", n=50, store=store, name="<mine>")
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "model-mine.html").read_text()
    assert "&lt;mine&gt;" in page and "<mine>" not in page          # escaped, not markup
    assert "python class" in page and "torch.nn.modules.container.Sequential" in page
    compare = (tmp_path / "site" / "compare.html").read_text()
    assert "&lt;mine&gt;" in compare and "No suite in common" in compare


def test_the_headline_run_is_the_one_at_the_suites_defaults():
    """A later run with a non-default option (coding --threshold hard) does not replace the
    model's default run on the leaderboard; among default runs, more examples win."""
    from reports.collect import _rank

    def run(threshold, n, started):
        params = {"n": n, "shard_size": 50, "reference_iterations": 1000,
                  "max_iterations": 200, "tolerance": 0.05, "threshold": threshold}
        return {"suite": "coding", "complete": True, "n": n, "started_utc": started,
                "run_id": started, "spec": {"params": params}}

    soft, hard, small = run("model", 100, "1"), run("hard", 100, "2"), run("model", 50, "3")
    assert max([soft, hard, small], key=_rank) is soft
    pgd = {"suite": "pgd", "complete": True, "n": 1400, "started_utc": "1", "run_id": "a",
           "spec": {"params": {"n": 200, "linf": [1 / 255, 2 / 255, 4 / 255, 8 / 255],
                               "l2": [0.25, 0.5], "attacks": ["pgd"], "steps": 10,
                               "restarts": 1, "step_size": None, "loss": "ce",
                               "gradients": "all", "eot": 1, "checks": True, "check_n": 100,
                               "early_stop": True}}}
    assert _rank(pgd)[1] is True   # lists in the store equal the tuple defaults


def test_findings_page_judges_what_the_store_measured(site):
    """SUGAR B-SiLU and ReLU have CIFAR-10-C and sparsity runs in the store: their claims are
    judged (not "not measured"); claims about models the store lacks are not measured."""
    text = (site / "findings.html").read_text()
    verdicts = re.findall(r'<div class="claim" data-verdict="([^"]+)">\s*<p><span[^>]*>[^<]*</span> ([^<]*)',
                          text)
    assert verdicts
    sugar = [v for v, claim in verdicts if "resnet8-sugar-bsilu" in claim]
    lca = [v for v, claim in verdicts if "warp-lca-resnet8" in claim]
    assert sugar and all(v in ("supported", "not supported") for v in sugar)
    assert lca and all(v == "not measured" for v in lca)


def test_paired_metrics_are_computed_once_per_pair_while_building(report_store, monkeypatch):
    import reports.compare as compare
    from reports.collect import collect

    calls = []
    real = compare._paired_metrics
    monkeypatch.setattr(compare, "_paired_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    with Store(report_store, readonly=True) as st:
        a, b = (e.runs["cifar10c"] for e in collect(st))
        plain = compare.paired_metrics(st, a, st, b)
        with compare.memoized():
            first = compare.paired_metrics(st, a, st, b)
            first.attrs["notes"].append("changed by the caller")
            second = compare.paired_metrics(st, a, st, b)
        again = compare.paired_metrics(st, a, st, b)
    assert len(calls) == 3            # plain, once inside the block, once after it
    assert plain.equals(second) and again.equals(second)
    assert "changed by the caller" not in second.attrs["notes"]
