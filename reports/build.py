"""``harness report``: the static site, one self-contained HTML file per page.

Pages: ``index.html`` (the leaderboard of every model in the store), one ``model-KEY.html``
per model, ``findings.html`` (the seed papers' claims against the stored numbers) and
``compare.html`` (every model against a reference, paired tests), plus one page per
``--compare A B`` pair. CSS, the sorting script and the figures (PNG data URIs) are inline, so
a page opens from ``file://`` and can be mailed or uploaded alone. Every number comes from the
store through the suites' own summaries (:mod:`reports.collect`); nothing is recomputed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from harness.errors import HarnessError
from harness.store import Store
from harness.suites import SUITES, Table
from harness.version import __version__
from reports import figures
from reports.collect import ModelEntry, RunView, collect, slug

ATTACK_SUITES = ("pgd", "autoattack")


# -- formatting ---------------------------------------------------------------------------------
def fmt(value: Any, kind: str = "num") -> str:
    """A number as the pages print it: ``pct`` (fraction as %), ``count``, ``sci``, ``num``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if kind == "pct":
        return f"{100 * float(value):.1f}"
    if kind == "count":
        return f"{int(round(float(value)))}"
    x = float(value)
    if kind == "sci" or (x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3)):
        return f"{x:.3g}"
    return f"{x:.4g}"


def jsnum(value: Any) -> str:
    """A number as the sorting script parses it (``parseFloat``): "" for missing, Infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    x = float(value)
    return "Infinity" if x == math.inf else "-Infinity" if x == -math.inf else repr(x)


@dataclass
class Cell:
    value: float | None
    text: str
    source: str = ""          # where the number comes from: data, n, run
    bad: bool = False         # drawn in red (a raised flag, a bound below a lower bound)


def _source(view: RunView, n: int | None = None) -> str:
    return f"{view.source}, n={n if n is not None else view.n}, {view.suite} run {view.run_id[:8]}"


@dataclass
class Column:
    key: str
    label: str
    group: str
    kind: str                                   # pct, count, sci, num
    get: Callable[[ModelEntry], Cell | None]
    higher_is_better: bool = True


def _head_cell(suite: str, key: str, kind: str) -> Callable[[ModelEntry], Cell | None]:
    def get(entry: ModelEntry) -> Cell | None:
        view = entry.runs.get(suite)
        if view is None or key not in view.headline:
            return None
        value = view.headline[key]
        return Cell(value, fmt(value, kind), _source(view))
    return get


def _clean_cell(entry: ModelEntry) -> Cell | None:
    """Clean accuracy from the run with the most clean examples (clean suite first on ties)."""
    best = None
    for suite, key in (("clean", "accuracy"), ("cifar10c", "clean"), ("pgd", "clean"),
                       ("autoattack", "clean"), ("sparsity", "accuracy"), ("lipschitz", "accuracy")):
        view = entry.runs.get(suite)
        if view is not None and key in view.headline and (best is None or view.n > best[0].n):
            best = (view, key)
    if best is None:
        return None
    view, key = best
    return Cell(view.headline[key], fmt(view.headline[key], "pct"), _source(view))


def _worst_cell(entry: ModelEntry) -> Cell | None:
    """Worst case at the largest Linf eps stored (else the largest l2 eps): per example, robust
    under every stored attack run of the model at that threat (the suites' ``worst_case``);
    the lower of pgd's and autoattack's where both ran that threat. The threat is in the
    tooltip: models with different budgets stored are not comparable in this column."""
    from harness.suites.adversarial import eps_label, headline_threat

    rows = []
    for suite in ATTACK_SUITES:
        view = entry.runs.get(suite)
        if view is None or view.summary is None or "worst_case" not in view.summary:
            continue
        s = view.summary
        rows += [(norm, float(eps), worst, view)
                 for norm, eps, worst in zip(s["norm"], s["eps"], s["worst_case"])]
    threat = headline_threat((norm, eps) for norm, eps, _, _ in rows)
    if threat is None:
        return None
    value, view = min(((w, v) for norm, eps, w, v in rows
                       if norm == threat[0] and abs(eps - threat[1]) < 1e-9), key=lambda r: r[0])
    return Cell(value, fmt(value, "pct"), f"{threat[0]} {eps_label(*threat)}; {_source(view)}")


def _lipschitz_upper(entry: ModelEntry) -> Cell | None:
    view = entry.runs.get("lipschitz")
    if view is None or "upper" not in view.headline:
        return None
    upper, lower = view.headline["upper"], view.headline.get("lower", float("nan"))
    if upper != upper:  # no certified bound: say why
        reason = getattr(view.summary, "attrs", {}).get("reason") or "no certified bound"
        return Cell(None, "none", f"{reason}; {_source(view)}")
    text = f"{upper:.6g}" if upper < 100 else fmt(upper, "sci")  # 0.99998 is not 1
    return Cell(upper, text, _source(view), bad=bool(lower > upper * (1 + 1e-6)))


def _dead_cell(entry: ModelEntry) -> Cell | None:
    view = entry.runs.get("sparsity")
    if view is None or "dead_units" not in view.headline:
        return None
    dead = view.headline["dead_units"]
    units = int(view.summary["units"].iloc[0]) if "units" in view.summary else None
    return Cell(dead, f"{fmt(dead, 'count')}" + (f" / {units}" if units else ""), _source(view))


def _threat_keys(entries: Sequence[ModelEntry], suite: str) -> list[str]:
    """Every attack threat stored for ``suite`` (headline keys like ``Linf 8/255``), by norm
    then eps."""
    keys: dict[str, tuple] = {}
    for e in entries:
        view = e.runs.get(suite)
        if view is None or view.summary is None:
            continue
        rows = view.summary[view.summary["norm"] != "none"]
        for key, (norm, eps) in zip([k for k in view.headline if k not in ("clean", "worst")],
                                    zip(rows["norm"], rows["eps"])):
            keys.setdefault(key, (norm, eps))
    return sorted(keys, key=lambda k: (keys[k][0] != "Linf", keys[k]))  # Linf first, then l2


def leaderboard_columns(entries: Sequence[ModelEntry]) -> list[Column]:
    """The leaderboard's columns: only those some stored model has a number for."""
    cols = [Column("clean", "clean %", "accuracy", "pct", _clean_cell)]
    cols.append(Column("c10c", "C-10-C mean %", "CIFAR-10-C", "pct", _head_cell("cifar10c", "mean", "pct")))
    cols += [Column(f"c10c_s{s}", f"s{s}", "CIFAR-10-C", "pct", _head_cell("cifar10c", f"s{s}", "pct"))
             for s in range(1, 6)]
    for suite, group in (("pgd", "PGD"), ("autoattack", "AutoAttack")):
        cols += [Column(f"{suite}_{slug(k)}", k, group, "pct", _head_cell(suite, k, "pct"))
                 for k in _threat_keys(entries, suite)]
    cols.append(Column("worst", "worst case % (largest eps)", "attacks", "pct", _worst_cell))
    cols.append(Column("lip_lower", "lower", "Lipschitz (l2)", "sci",
                       _head_cell("lipschitz", "lower", "sci"), higher_is_better=False))
    cols.append(Column("lip_upper", "certified upper", "Lipschitz (l2)", "sci", _lipschitz_upper,
                       higher_is_better=False))
    cols.append(Column("energy", "energy / LCA-ref", "sparse coding", "num",
                       _head_cell("coding", "energy_ratio", "num"), higher_is_better=False))
    cols.append(Column("iters", "iterations to target", "sparse coding", "num",
                       _head_cell("coding", "iterations", "num"), higher_is_better=False))
    cols.append(Column("cold_iters", "cold iterations", "sparse coding", "num",
                       _head_cell("coding", "cold_iterations", "num"), higher_is_better=False))
    cols.append(Column("zeros", "zeros %", "sparsity", "pct", _head_cell("sparsity", "zero_fraction", "pct")))
    cols.append(Column("dead", "dead units", "sparsity", "count", _dead_cell, higher_is_better=False))
    cols.append(Column("code_l0", "code l0 %", "sparsity", "pct",
                       _head_cell("sparsity", "code_l0_fraction", "pct"), higher_is_better=False))
    return [c for c in cols if any(_has(c.get(e)) for e in entries)]


def _has(cell: Cell | None) -> bool:
    return cell is not None and (cell.value is None or cell.value == cell.value or cell.text != "–")


# -- tables from frames -------------------------------------------------------------------------
@dataclass
class HtmlTable:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)


def frame_table(frame: pd.DataFrame, title: str = "", *, percent: Iterable[str] = (),
                caption: str = "", drop: Iterable[str] = ()) -> HtmlTable:
    """A summary frame as printable strings (fractions in ``percent`` as %)."""
    percent, drop = set(percent), set(drop)
    cols = [c for c in frame.columns if c not in drop]
    rows = []
    for rec in frame[cols].itertuples(index=False):
        rows.append([fmt(v, "pct") if c in percent and isinstance(v, (int, float)) else
                     (fmt(v) if isinstance(v, float) else str(v)) for c, v in zip(cols, rec)])
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in cols]
    return HtmlTable(title, [f"{c} %" if c in percent else str(c) for c in cols], rows, caption,
                     numeric)


def suite_tables(view: RunView) -> list[HtmlTable | str]:
    """The run's summary and the suite's details (what ``harness show`` prints)."""
    if view.summary is None:
        return [f"suite {view.suite!r} is not registered here; its run is listed but not drawn"]
    suite = SUITES.get(view.suite)()
    percent = [c for c in view.summary.columns  # fractions: what the suite labels with a %
               if c in ("accuracy", "worst_case") or suite.labels.get(c, "").endswith("%")]
    out: list[HtmlTable | str] = [frame_table(view.summary, "summary", percent=percent)]
    for item in suite.details(view.summary):
        if isinstance(item, Table):
            out.append(frame_table(item.frame, item.title, percent=item.percent,
                                   caption=item.caption))
        else:
            out.append(str(item))
    return out


def attack_points(entry: ModelEntry) -> pd.DataFrame:
    """Accuracy per (suite, norm, eps) of the attack suites, plus the worst case as a series."""
    frames = []
    for suite in ATTACK_SUITES:
        view = entry.runs.get(suite)
        if view is None or view.summary is None:
            continue
        s = view.summary
        frames.append(pd.DataFrame({"suite": suite, "norm": s["norm"], "eps": s["eps"],
                                    "accuracy": s["accuracy"]}))
        if "worst_case" in s:
            frames.append(pd.DataFrame({"suite": "worst case (all attacks)", "norm": s["norm"],
                                        "eps": s["eps"], "accuracy": s["worst_case"]}))
    if not frames:
        return pd.DataFrame(columns=["suite", "norm", "eps", "accuracy"])
    out = pd.concat(frames, ignore_index=True)
    return out.groupby(["suite", "norm", "eps"], sort=False, as_index=False)["accuracy"].min()


def run_metadata(entry: ModelEntry) -> HtmlTable:
    """Per stored run: ids, data identity, versions, seed and where it ran."""
    rows = []
    for suite, view in entry.runs.items():
        prov, spec = view.provenance, view.spec
        rows.append([suite, view.run_id[:12], "complete" if view.run["complete"] else "partial",
                     str(view.run["n"]), view.source, spec.get("data_fingerprint", "")[:12],
                     str(spec.get("seed")), spec.get("dtype", ""), spec.get("harness_version", ""),
                     str(prov.get("torch", "")), str(prov.get("device", "")),
                     str(prov.get("git_hash", ""))[:10] + (" (dirty)" if prov.get("git_dirty") else ""),
                     view.run.get("started_utc") or ""])
    return HtmlTable("runs", ["suite", "run", "status", "records", "data", "data sha256",
                              "seed", "dtype", "harness", "torch", "device", "git", "started (UTC)"],
                     rows)


# -- the site ---------------------------------------------------------------------------------
@dataclass
class Site:
    out: Path
    pages: list[Path]
    bytes: int
    seconds: float


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("reports", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["jsnum"] = jsnum
    return env


def _reference(entries: Sequence[ModelEntry], reference: str | None) -> ModelEntry | None:
    if not entries:
        return None
    if reference is None:
        return next((e for e in entries if e.name == "resnet8"), entries[0])
    from reports.collect import find_models

    found = find_models(list(entries), reference)
    if len(found) != 1:
        names = ", ".join(e.key for e in entries)
        raise HarnessError(f"--reference {reference!r} names {len(found)} models in the store "
                           f"(models: {names})")
    return found[0]


def build_site(store_path: str | Path, out: str | Path, *, reference: str | None = None,
               pairs: Sequence[Sequence[str]] = (), alpha: float = 0.05) -> Site:
    """Write the site for ``store_path`` into ``out`` (created; pages are overwritten)."""
    from reports.compare import compare_entries, compare_refs, memoized
    from reports.findings import SECTIONS, findings

    start = time.perf_counter()
    if not Path(store_path).is_file():
        raise HarnessError(f"no store at {str(store_path)!r} (run 'harness run' first, or "
                           "pass --store)")
    out = Path(out)
    env = _env()
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with Store(store_path, readonly=True) as store, memoized():
        entries = collect(store)
        if not entries:
            raise HarnessError(f"store {str(store_path)!r} holds no runs; nothing to report")
        ref = _reference(entries, reference)
        common = {"version": __version__, "built": built, "store": str(store_path),
                  "n_models": len(entries)}
        columns = leaderboard_columns(entries)
        grid = {e.key: {c.key: c.get(e) for c in columns} for e in entries}
        pages: dict[str, str] = {}
        pages["index.html"] = env.get_template("index.html.j2").render(
            page="index", title="Leaderboard", entries=entries, columns=columns, grid=grid,
            groups=_groups(columns), **common)
        examples = None
        for entry in entries:
            cifar = entry.runs.get("cifar10c")
            if cifar is not None and examples is None:
                examples = figures.corruption_examples()
            sparsity = entry.runs.get("sparsity")
            layers = (sparsity.summary.attrs.get("layers") if sparsity is not None
                      and sparsity.summary is not None else None)
            pages[f"model-{entry.key}.html"] = env.get_template("model.html.j2").render(
                page="model", title=entry.name, entry=entry, columns=columns, cells=grid[entry.key],
                flags=[(s, f) for s, v in entry.runs.items() for f in v.flags],
                heatmap=(figures.corruption_heatmap(cifar.summary)
                         if cifar is not None and cifar.summary is not None else None),
                examples=examples if cifar is not None else None,
                curves=figures.eps_curves(attack_points(entry)),
                bars=figures.sparsity_bars(layers),
                energy=_energy_figure(entry.runs.get("coding")),
                tables={s: suite_tables(v) for s, v in entry.runs.items()},
                meta=run_metadata(entry), **common)
        claims = findings(store, entries, alpha=alpha)
        pages["findings.html"] = env.get_template("findings.html.j2").render(
            page="findings", title="Findings", claims=claims, alpha=alpha,
            sections=list(dict.fromkeys([*SECTIONS, *(c.section for c in claims)])), **common)
        comparisons = [_comparison_view(compare_entries(store, ref, store, e, alpha=alpha), e.key)
                       for e in entries if e is not ref]
        pages["compare.html"] = env.get_template("compare.html.j2").render(
            page="compare", title=f"Compared with {ref.name}", reference=ref,
            comparisons=comparisons, alpha=alpha, **common)
        for a, b in pairs:
            comp = compare_refs(store, a, store, b, alpha=alpha)
            pages[f"compare-{slug(a)}-vs-{slug(b)}.html"] = env.get_template(
                "compare.html.j2").render(page="compare", title=f"{a} vs {b}", reference=None,
                                          comparisons=[_comparison_view(comp, slug(f"{a}-vs-{b}"))],
                                          alpha=alpha,
                                          **common)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create output folder {str(out)!r}: {exc.strerror}") from None
    for stale in [*out.glob("model-*.html"), *out.glob("compare-*.html")]:
        if stale.name not in pages:  # pages of models no longer in the store
            stale.unlink()
    written = []
    for name, html in pages.items():
        path = out / name
        try:
            path.write_text(html, encoding="utf-8")
        except OSError as exc:
            raise HarnessError(f"cannot write {str(path)!r}: {exc.strerror}") from None
        written.append(path)
    return Site(out=out, pages=written, bytes=sum(p.stat().st_size for p in written),
                seconds=time.perf_counter() - start)


def _energy_figure(view: RunView | None) -> str | None:
    if view is None or view.summary is None:
        return None
    return figures.energy_curves(view.summary.attrs.get("curves"),
                                 int(view.summary["model_iterations"].iloc[0]))


def _comparison_view(comp, key: str) -> dict[str, Any]:
    """A :class:`reports.compare.Comparison` as the compare page prints it."""
    from reports.compare import label_text

    rows = []
    for r in comp.rows.itertuples(index=False):
        metric, n, a, b, delta, ci, p, test, discordant = comp.cells(r, mark_significant=False)
        tone = ("good" if r.delta > 0 else "bad") if r.significant else ""
        if r.significant and r.kind == "value":
            tone = ""  # a larger Jacobian or zero fraction is neither good nor bad in itself
        rows.append({"metric": metric, "n": n, "a": a, "b": b, "delta": delta, "ci": ci, "p": p,
                     "test": test, "discordant": discordant, "tone": tone})
    return {"key": key, "a": label_text(comp.a),
            "b": label_text(comp.b), "rows": rows, "notes": list(comp.notes)}


def _groups(columns: Sequence[Column]) -> list[tuple[str, int]]:
    """(group label, column span) for the leaderboard's two-row header."""
    out: list[list] = []
    for c in columns:
        if out and out[-1][0] == c.group:
            out[-1][1] += 1
        else:
            out.append([c.group, 1])
    return [(g, n) for g, n in out]
