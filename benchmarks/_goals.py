"""One machine-readable line per benchmark goal, shared by the ``bench_*.py`` scripts and
``run_all.py``.

A benchmark keeps its human-readable output and, for each goal it prints, also calls
:func:`goal`, which prints one tab-separated line::

    GOAL<TAB>name<TAB>value<TAB>op<TAB>target<TAB>unit<TAB>pass|short|info<TAB>note

``op`` is ``>=``, ``<=`` or ``==`` (a goal: ``pass`` or ``short``) or ``info`` (a number printed
for the sceptic, e.g. a ratio without the most flattering case: no verdict, target ``-``).
A value of ``None`` (nothing measured, e.g. a target never reached) is printed as ``none`` and
is ``short``. :func:`parse` reads the lines back (``run_all.py`` builds RESULTS.md from them).
"""

from __future__ import annotations

import math
import operator

PREFIX = "GOAL"
FIELDS = ("name", "value", "op", "target", "unit", "status", "note")
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


def _text(x) -> str:
    if x is None:
        return "none"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return " ".join(str(x).split())  # no tabs or newlines inside a field


def goal(name: str, value, op: str, target=None, *, unit: str = "x", note: str = "") -> bool | None:
    """Print the GOAL line of one measurement; return whether it passed (None for ``info``)."""
    if op == "info":
        passed, status = None, "info"
    elif op in _OPS:
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        passed = bool(ok and _OPS[op](value, target))
        status = "pass" if passed else "short"
    else:
        raise ValueError(f"op must be one of {[*_OPS, 'info']}, not {op!r}")
    fields = (name, value, op, "-" if target is None else target, unit, status, note)
    print("\t".join([PREFIX, *(_text(f) for f in fields)]), flush=True)
    return passed


def parse(text: str) -> list[dict[str, str]]:
    """The GOAL lines of a benchmark's output, as dicts keyed by :data:`FIELDS`."""
    rows = []
    for line in text.splitlines():
        parts = line.rstrip("\r\n").split("\t")
        if parts[0] == PREFIX and len(parts) >= len(FIELDS) + 1:
            rows.append(dict(zip(FIELDS, parts[1:len(FIELDS) + 1])))
    return rows
