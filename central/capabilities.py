"""Discovery of capability folders: each `central/<cap>/` may offer routes, service, store, cli and demo
modules; app, store, CLI and demo all find them the same way."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import central


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(central.__path__) if m.ispkg and m.name != "store")


def optional_module(name: str) -> ModuleType | None:
    """Import `name`, or None when that module itself does not exist (an error inside it still raises)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def modules(kind: str) -> list[tuple[str, ModuleType]]:
    """(capability, module) for every capability that has `central/<cap>/<kind>.py`, A-Z."""
    found = []
    for cap in names():
        mod = optional_module(f"central.{cap}.{kind}")
        if mod is not None:
            found.append((cap, mod))
    return found
