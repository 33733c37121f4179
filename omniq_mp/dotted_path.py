"""Dotted paths that name a function: ``package.module.function`` or
``package.module:function`` (after the colon, an attribute path such as
``Class.method``). One grammar for everything that takes one (enqueue, the CLI,
``worker_init``) and for the worker that imports it."""

from __future__ import annotations

__all__ = ["is_dotted_path", "split_dotted_path"]


def split_dotted_path(path: str) -> tuple[str, str]:
    """(module, attribute path); either is empty when ``path`` lacks it."""
    module, colon, attr = path.partition(":")
    if not colon:
        module, _, attr = path.rpartition(".")
    return module, attr


def is_dotted_path(path: str) -> bool:
    """Whether ``path`` names a module and an attribute in it, every part an identifier."""
    module, attr = split_dotted_path(path)
    return all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))
