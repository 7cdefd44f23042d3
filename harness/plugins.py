"""Import user code: ``pkg.module`` or ``path/to/file.py``, with one-line errors.

Used for ``--model pkg.module:factory`` / ``file.py:factory`` and for ``HARNESS_PLUGINS``, a
comma-separated list of modules or files imported before the command line is read, so that
suites (or models) they register are available to ``harness run`` without editing the harness::

    HARNESS_PLUGINS=my_suites.py harness run --suite my-suite --help
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from harness.errors import HarnessError

PLUGINS_ENV = "HARNESS_PLUGINS"


def import_target(target: str, *, what: str) -> tuple[ModuleType, bytes]:
    """Import ``target`` (dotted module name, or a ``.py`` path) -> (module, source bytes).

    ``what`` prefixes error messages (e.g. ``"model 'x.py:build'"``).
    """
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise HarnessError(f"{what}: file {str(path)!r} not found")
        name = f"_harness_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        if name in sys.modules:  # the same file imported twice (plugin and model) is one module
            return sys.modules[name], path.read_bytes()
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise HarnessError(f"{what}: importing {str(path)!r} failed: "
                               f"{type(exc).__name__}: {exc}") from None
        return module, path.read_bytes()
    try:
        module = importlib.import_module(target)
    except Exception as exc:  # ImportError, SyntaxError, errors raised at import time
        raise HarnessError(f"{what}: cannot import module {target!r}: "
                           f"{type(exc).__name__}: {exc}") from None
    file = getattr(module, "__file__", None)
    return module, Path(file).read_bytes() if file else b""


def load_plugins(value: str | None = None) -> list[ModuleType]:
    """Import every entry of ``value`` (default ``$HARNESS_PLUGINS``), comma-separated."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    return [import_target(t.strip(), what=f"${PLUGINS_ENV} entry {t.strip()!r}")[0]
            for t in value.split(",") if t.strip()]
