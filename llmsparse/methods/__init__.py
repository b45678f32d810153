"""Registry of pruning methods: the CLI, YAML recipes and the Python API all look methods up here by name."""

from __future__ import annotations

import dataclasses

from .base import Method, PruneResult

METHODS: dict[str, type[Method]] = {}


class UnknownMethodError(ValueError):
    """A method name or option that is not registered."""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a :class:`Method` available under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options) -> Method:
    """Instantiate the method ``name`` with config ``options`` (unknown names and options raise)."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UnknownMethodError(
            f"method {name!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(cls.Config(**options))


from . import dsnot, magnitude, sparsegpt, wanda  # noqa: E402,F401  (registration side effect)

__all__ = ["METHODS", "Method", "PruneResult", "UnknownMethodError", "get_method", "register"]
