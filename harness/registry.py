"""One generic name -> object registry, instantiated once per kind (models, suites, ...).

Every model, suite, activation (and later attack and corruption) is reached through a string
name. A registry maps canonical names (lowercase, dash-separated) and aliases to entries that
carry the object plus free-form metadata. Unknown names raise :class:`HarnessError` with up to
three close matches, so a typo on the command line ends in a helpful one-line message.

Example::

    SUITES: Registry[type] = Registry("suite")

    @SUITES.register("clean", aliases=("clean-accuracy",), description="clean accuracy")
    class CleanSuite: ...

    SUITES.get("clen")  # HarnessError: unknown suite 'clen'; did you mean 'clean'? (1 available)
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]*$")


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A registered object with its canonical name, aliases and metadata."""

    name: str
    obj: T
    aliases: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A name -> object mapping with aliases, metadata, suggestions and glob listing.

    Args:
        kind: what the entries are ("model", "suite", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._frozen = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str, *, aliases: Iterable[str] = (), **meta: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``) with metadata ``meta``.

        Raises:
            ValueError: the name is malformed, already taken by a different object, or the
                registry is frozen. These are programming errors, not user errors.
        """

        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: Iterable[str] = (), **meta: Any) -> Entry[T]:
        """Register ``obj`` directly (the non-decorator form of :meth:`register`)."""
        if self._frozen:
            raise ValueError(f"{self.kind} registry is frozen; cannot register {name!r}")
        aliases = tuple(aliases)
        for key in (name, *aliases):
            if not _NAME_RE.match(key):
                raise ValueError(f"invalid {self.kind} name {key!r}: use lowercase, digits and dashes")
        existing = self._entries.get(name)
        if existing is not None:
            if existing.obj is obj:
                return existing
            raise ValueError(f"{self.kind} {name!r} is already registered")
        for alias in aliases:
            if alias in self._entries or alias in self._aliases:
                raise ValueError(f"{self.kind} alias {alias!r} is already taken")
        entry = Entry(name=name, obj=obj, aliases=aliases, meta=MappingProxyType(dict(meta)))
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def freeze(self) -> None:
        """Forbid further registration (call once all built-in entries are imported)."""
        self._frozen = True

    # -- lookup --------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` (a name or an alias); raises with suggestions."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise HarnessError(self._unknown_message(name))

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` for a name or alias."""
        return self._entries[self.resolve(name)]

    def get(self, name: str) -> T:
        """The registered object for a name or alias."""
        return self.entry(name).obj

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata registered with ``name``."""
        return self.entry(name).meta

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(sorted(self._entries))

    def names(
        self,
        include: str | Iterable[str] = "*",
        *,
        exclude: str | Iterable[str] = (),
        where: Callable[[Entry[T]], bool] | None = None,
    ) -> list[str]:
        """Sorted canonical names matching any ``include`` glob and no ``exclude`` glob.

        Args:
            include: fnmatch pattern(s), e.g. ``"resnet8*"``.
            exclude: fnmatch pattern(s) to drop.
            where: optional predicate on the entry (e.g. on its metadata).
        """
        inc = [include] if isinstance(include, str) else list(include)
        exc = [exclude] if isinstance(exclude, str) else list(exclude)
        out = []
        for name, entry in self._entries.items():
            if not any(fnmatch.fnmatchcase(name, p) for p in inc):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in exc):
                continue
            if where is not None and not where(entry):
                continue
            out.append(name)
        return sorted(out)

    def _unknown_message(self, name: str) -> str:
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        # Map aliases back to their canonical name, keeping order and dropping duplicates.
        close = list(dict.fromkeys(self._aliases.get(c, c) for c in close))
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += f" ({len(self._entries)} available; see 'harness ls {self.kind}s')"
        return msg
