"""The class registry: stored class names to Python classes, with aliases for renames.

The object layer stores a DBObject or MutableObject under its class's
registered name (default ``module.QualName``). The storage layer never sees
class names; this module is the object layer's, apart from atom framing
(`protobase.atoms`), which every backend uses.
"""

from __future__ import annotations

import importlib
import warnings


class ClassRegistry:
    """Maps stored class names to Python classes, with aliases for renames.

    Invariant: `name_of(cls)` is the name a class is stored under, and
    `lookup(name_of(cls))` returns `cls`. A name that is neither registered nor
    importable resolves to None; the object layer then loads a generic object
    and warns.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, type] = {}
        self._names: dict[type, str] = {}
        self._missing: set[str] = set()
        self.generation = 0
        """Goes up whenever a stored name may resolve differently: objects decoded
        before (kept by the space's shared node cache) are then decoded again."""

    def register(self, cls: type, name: str | None = None, aliases: tuple[str, ...] = ()) -> None:
        """Register `cls` under `name` (default ``module.QualName``) and aliases."""
        stored = name or default_class_name(cls)
        previous = self._names.get(cls)
        if previous is not None and previous != stored:
            self._by_name.pop(previous, None)
        self.generation += 1
        self._names[cls] = stored
        self._by_name[stored] = cls
        self._missing.discard(stored)
        for alias in aliases:
            self._by_name[alias] = cls
            self._missing.discard(alias)

    def name_of(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is None:
            name = default_class_name(cls)
            self._names[cls] = name
            if name not in self._by_name:
                self._by_name[name] = cls
                self.generation += 1
        return name

    def lookup(self, name: str) -> type | None:
        cls = self._by_name.get(name)
        if cls is not None or name in self._missing:
            return cls
        cls = _import_class(name)
        if cls is None:
            self._missing.add(name)
        else:
            self._by_name[name] = cls
        return cls


def default_class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(name: str) -> type | None:
    """Import ``module.QualName``, trying each split point; None when absent."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception as exc:  # an importable module that fails to run
            warnings.warn(
                f"importing {module_name!r} for stored class {name!r} failed: {exc!r}",
                stacklevel=3,
            )
            return None
        target: object = module
        for attr in parts[cut:]:
            target = getattr(target, attr, None)
            if target is None:
                break
        if isinstance(target, type):
            return target
        return None
    return None


registry = ClassRegistry()
"""The process-wide registry used by the object layer."""
