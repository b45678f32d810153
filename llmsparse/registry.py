"""One registry shape for every extension point: pruning methods, activation methods, checkpoint formats.

An extension is a class with a ``name`` and a ``Config`` dataclass (a :class:`~llmsparse.settings.Settings`
whose options are :func:`~llmsparse.settings.setting` fields: default, help, choices, range check); decorating it with ``REGISTRY.register`` makes it known to the Python API, the CLI
(a ``--<name>-<option>`` flag per option), recipes, ``llmsparse methods``, model cards and
loaders. Lookups of unknown names raise :class:`~llmsparse.errors.UnknownNameError` with close
matches suggested. The modules of an extension package register themselves on import;
:func:`import_submodules` imports them all, so adding one is adding one file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Generic, TypeVar

from .errors import LlmsparseError, unknown_name

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Classes by name (a dict), plus registration and checked lookup. ``kind`` names them in messages."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: make ``cls`` available under ``cls.name`` (replacing one of the same name)."""
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> type[T]:
        """The class registered as ``name``; :class:`UnknownNameError` with suggestions otherwise."""
        if name not in self:
            raise unknown_name(self.kind, name, self)
        return self[name]

    def create(self, name: str, **options: Any) -> T:
        """An instance of ``name`` configured with ``options`` (each must be a field of its ``Config``)."""
        cls = self.lookup(name)
        return cls(make_config(cls, name, options))


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The options of an extension class (the fields of its ``Config`` dataclass)."""
    return list(dataclasses.fields(cls.Config))


def make_config(cls: type, name: str, options: dict[str, Any]):
    """``cls.Config(**options)``: unknown options are refused with the list of known ones; the Config (a
    :class:`~llmsparse.settings.Settings`) checks each value's type and range, and errors name the extension."""
    fields = {f.name: f for f in config_fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise unknown_name(f"{name} option", unknown[0], fields)
    try:
        return cls.Config(**options)
    except LlmsparseError as err:
        raise type(err)(f"{name} option {err}") from None


def describe(cls: type) -> str:
    """``option=default, ...`` of an extension class, for listings."""
    return ", ".join(f"{f.name}={f.default!r}" for f in config_fields(cls)) or "no options"


def import_submodules(package: str, path: list[str]) -> None:
    """Import every public module of ``package`` (its ``__path__``), so their decorators register them.

    Modules whose name starts with ``_`` are skipped (work in progress, private helpers).
    """
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
