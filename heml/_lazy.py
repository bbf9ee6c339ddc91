"""Package attributes imported on first use (PEP 562), so that light imports stay fast."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable


def lazy_attributes(
    package: str, table: dict[str, str], names: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps an attribute to the
    relative module that defines it; a loaded attribute is kept in the package's namespace."""
    listed = sorted(names)

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return listed

    return __getattr__, __dir__
