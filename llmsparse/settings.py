"""Run settings: dataclasses whose fields are the one source of API defaults, recipe keys and CLI flags.

Each run API (``prune``, ``sparsify_activations``, evaluation, saving) describes its settings as a
:class:`Settings` dataclass next to it, one :func:`setting` per field: default, help text, and
how it appears elsewhere (``recipe=False``: not a recipe key; ``cli=False``: no flag; ``flag``:
another flag name; ``choices``: allowed values, or a registry). From those fields
:func:`api` builds the Python signature, :mod:`llmsparse.checkpoint.recipe` the recipe keys, and
:mod:`llmsparse.cli.flags` the command-line flags with "(default ...)" in their help.
Values are type-checked when a settings object is made, so ``nsamples=4.7`` fails at once; a
field's ``check`` (:func:`finite`, :func:`at_least`, :func:`greater_than`, :func:`in_range`, :func:`regex`, :func:`nonempty`,
:func:`known_device`) also refuses values of the right type outside its range, in Python, in
recipes and (through :mod:`llmsparse.cli.flags`) on the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import SettingsError, UnknownNameError, check_choice

_MISSING = dataclasses.MISSING

#: A field's value check: what is wrong with one value (a phrase such as "must be at least 1"), or None.
Check = Callable[[Any], "str | None"]


def finite(value: float) -> str | None:
    """A number that is not NaN or infinite."""
    return None if math.isfinite(value) else "must be a finite number"


def at_least(low: float) -> Check:
    """Finite numbers ``>= low``."""
    return lambda value: finite(value) or (None if value >= low else f"must be at least {low}")


def greater_than(low: float) -> Check:
    """Finite numbers ``> low``."""
    return lambda value: finite(value) or (None if value > low else f"must be greater than {low}")


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    """Numbers between ``low`` and ``high`` (each end closed unless ``*_open``); NaN is outside."""
    text = f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value: float) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else text

    return check


def regex(value: str) -> str | None:
    """A valid regular expression."""
    try:
        re.compile(value)
    except re.error as err:
        return f"is not a valid regex ({err})"
    return None


def nonempty(value: str) -> str | None:
    """A string with something besides white space."""
    return None if value.strip() else "must not be empty"


def known_device(value: Any) -> str | None:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``...)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        return "is not a device (e.g. cpu, cuda, cuda:1, mps)"
    if device.type == "cpu":
        return None
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        return f"is not available on this machine (no {device.type} support in this torch build or no such hardware)"
    count = getattr(getattr(torch, device.type, None), "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        return f"names device {device.index}, but this machine has {count()} {device.type} device(s)"
    return None


def check_of(f: dataclasses.Field, value: Any) -> str | None:
    """What ``f``'s check says about ``value`` (each element of a list; None is fine)."""
    check = f.metadata.get("check")
    if check is None or value is None:
        return None
    for item in value if isinstance(value, (list, tuple)) else [value]:
        complaint = check(item)
        if complaint:
            return complaint
    return None


def setting(
    default: Any,
    help: str,
    *,
    recipe: bool = True,
    cli: bool = True,
    flag: str | None = None,
    choices: Iterable[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    action: str | None = None,
    positional: bool = False,
    check: Check | None = None,
    off_flag: str | None = None,
    alias: str | None = None,
) -> Any:
    """A settings field: ``default`` (``dataclasses.MISSING``: required) plus the metadata the recipe and CLI builders read.

    ``off_flag`` gives a boolean a second flag that sets it to False (``--asymmetric`` for ``symmetric``);
    ``alias`` gives a method option a second flag (``--init`` for ``--dsnot-init``).

    ``check(value)`` returns what is wrong with a value of the right type (``"must be at least 1"``)
    or None; it sees each element of a list and is skipped for None.
    """
    meta = {
        "help": help,
        "recipe": recipe,
        "cli": cli,
        "flag": flag,
        "choices": choices,
        "parse": parse,
        "metavar": metavar,
        "nargs": nargs,
        "action": action,
        "positional": positional,
        "check": check,
        "off_flag": off_flag,
        "alias": alias,
    }
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (built fresh for list/dict defaults); ``MISSING`` when it has none."""
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def choices_of(f: dataclasses.Field) -> tuple[str, tuple[str, ...]] | None:
    """``(kind, allowed values)`` of a field, or None. A registry's names are read when asked (late
    registrations count) and its ``kind`` names it in messages; otherwise the field name does."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return getattr(choices, "kind", f.name.replace("_", " ")), tuple(sorted(choices))


def _matches(value: Any, hint: Any) -> bool:
    """True when ``value`` fits the annotation ``hint`` (unions, optionals, sequences, dicts, plain types)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence, Iterable) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is os.PathLike:
        return isinstance(value, os.PathLike)
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "").replace("NoneType", "None")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_values(cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`SettingsError` naming the key for values of the wrong type, outside their range, or outside their choices."""
    hints, fields = _hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            continue
        if not _matches(value, hints[key]):
            raise SettingsError(f"{where}{key} must be {_describe(hints[key])}, got {type(value).__name__} {value!r}")
        complaint = check_of(fields[key], value)
        if complaint:
            raise SettingsError(f"{where}{key} {complaint}, got {value!r}")
        choices = choices_of(fields[key])
        if choices is not None and isinstance(value, str):
            kind, allowed = choices
            try:
                check_choice(kind, value, allowed)
            except UnknownNameError as err:
                raise UnknownNameError(f"{where}{err}") from None


class Settings:
    """Base of settings dataclasses: values are type-checked when the object is made."""

    def __post_init__(self) -> None:
        check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def recipe_keys(cls) -> tuple[str, ...]:
        """The field names a recipe of these settings may hold."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("recipe", True))

    @classmethod
    def of(cls, values: Mapping[str, Any]):
        """Settings from a mapping that holds every field (an :func:`api` function's ``locals()``); other keys are ignored.

        None for a field with a list/dict default (what the function's parameter shows) means that default."""
        fields = dataclasses.fields(cls)
        return cls(**{f.name: default_of(f) if values[f.name] is None and f.default_factory is not _MISSING else values[f.name] for f in fields})

    def recipe(self) -> dict[str, Any]:
        """The recipe keys and their values (for ``recipe.yaml``)."""
        return {key: getattr(self, key) for key in self.recipe_keys()}


def settings_doc(cls: type) -> str:
    """One line per field: ``name (default): help`` (appended to the docstring of an :func:`api` function)."""
    lines = []
    for f in dataclasses.fields(cls):
        default = default_of(f)
        lines.append(f"    {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def signature_default(f: dataclasses.Field) -> Any:
    """The default a function parameter shows for field ``f``: its default, or None for a list/dict default (built fresh by the settings)."""
    return None if f.default is _MISSING and f.default_factory is not _MISSING else f.default


def signature_annotation(f: dataclasses.Field) -> str:
    """The annotation a function parameter shows for field ``f`` (``| None`` added where the parameter defaults to None)."""
    optional = signature_default(f) is None and "None" not in str(f.type)
    return f"{f.type} | None" if optional else str(f.type)


def signature_source(cls: type) -> str:
    """The parameter lines of an :func:`api` function for ``cls``, as source (to paste after the function's own parameters;
    a ``*,`` among them makes the rest keyword-only)."""
    def shown(value: Any) -> str:
        return f'"{value}"' if isinstance(value, str) else repr(value)

    return "\n".join(f"    {f.name}: {signature_annotation(f)} = {shown(signature_default(f))}," for f in dataclasses.fields(cls))


def signature_drift(fn: Callable, cls: type) -> list[str]:
    """How the last parameters of ``fn`` differ from the fields of ``cls`` (names and order, defaults, annotations);
    empty when they match. Parameters before them are the function's own (the model, paths)."""
    fields = dataclasses.fields(cls)
    params = list(inspect.signature(fn).parameters.values())[-len(fields) :]
    if [p.name for p in params] != [f.name for f in fields]:
        return [f"parameters {[p.name for p in params]} are not the fields {[f.name for f in fields]}"]
    drift = []
    for p, f in zip(params, fields):
        if p.default != signature_default(f):
            drift.append(f"{p.name}: default {p.default!r}, the settings say {signature_default(f)!r}")
        if str(p.annotation) != signature_annotation(f):
            drift.append(f"{p.name}: annotation {p.annotation}, the settings say {signature_annotation(f)}")
    return drift


def api(cls: type[Settings]) -> Callable:
    """Tie a function whose last parameters are the fields of ``cls`` to those settings.

    The function spells its options out (``def prune(model, tokenizer=None, method: str = "wanda", sparsity=None, *, ...)``)
    so IDEs and type checkers see them; it builds its settings with ``cls.of(locals())``. This decorator
    refuses, at import, a parameter list that drifted from ``cls`` (names, order, defaults; the test
    suite also compares annotations: :func:`signature_drift`, and :func:`signature_source` prints the
    lines to paste), turns a call's wrong or missing arguments into :class:`SettingsError`, and appends
    each field's help to the docstring, so ``help()`` explains every option.
    """

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        drift = [d for d in signature_drift(fn, cls) if "annotation" not in d]
        if drift:
            raise TypeError(f"{fn.__qualname__} does not match {cls.__name__}: {'; '.join(drift)}")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                signature.bind(*args, **kwargs)
            except TypeError as err:
                raise SettingsError(f"{fn.__name__}(): {err}") from None
            return fn(*args, **kwargs)

        wrapper.__doc__ = f"{fn.__doc__ or ''}\n\n    Settings ({cls.__name__}):\n\n{settings_doc(cls)}\n"
        wrapper.settings_class = cls
        return wrapper

    return decorate


def device_setting() -> Any:
    """The compute device field, shared by every run that computes."""
    return setting(None, "compute device, e.g. cpu or cuda (default: cuda if available)", recipe=False, check=known_device)
