"""PEP 562 lazy package attributes: a package's names imported from their modules on first use.

Used by the packages whose command-line tools must answer ``--help`` without torch, MONAI or SciPy
(``omnifm.data``, ``omnifm.bench``)::

    _LAZY = {"split_cases": "omnifm.data.loading"}
    __all__ = sorted(_LAZY)
    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``table`` (name -> module defining it)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
