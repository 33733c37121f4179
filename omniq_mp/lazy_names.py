"""Module attributes imported on first use (PEP 562).

A package lists its public names with the module defining each, and importing the
package loads none of those modules until one of their names is read: the top package
so that a worker process does not load the client and the supervisor, ``results`` so
that its server backends need their extras only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(namespace: dict[str, Any], where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the module whose globals are ``namespace``: it imports
    ``where[name]`` (a module's dotted path) when ``name`` is first read and keeps the
    value in ``namespace``, so later reads are plain lookups; any other name is an
    ``AttributeError`` naming the module."""
    module_name = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
