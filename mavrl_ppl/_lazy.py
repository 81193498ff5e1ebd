"""Public names of a package that import their module on first use (PEP 562), so that importing the package stays
light: the command line parses its flags without starting torch, JAX, gymnasium or NumPyro."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names in ``exports`` load on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it, absolute or relative to ``package`` (``".data"``).

    Returns:
        ``(__getattr__, __dir__)``, to be assigned to those names in the package's ``__init__``. A loaded name is
        kept in the package's namespace, so each is imported once.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
