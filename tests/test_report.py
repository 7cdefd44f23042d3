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
