"""Command-line flags generated from settings dataclasses and extension registries: one source for names, defaults and help.

:func:`add_settings` turns the fields of a :class:`~llmsparse.settings.Settings` dataclass into
flags (``--nsamples``; ``--true-sequential`` for booleans; help ending in "(default ...)"), with
``default=None`` so that :func:`settings_from` can tell given flags from absent ones and merge
dataclass defaults < recipe < flags. :func:`add_option_flags` gives every option of every
registered extension a ``--<name>-<option>`` flag. Every error goes out as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..checkpoint.load import MODEL_HELP, LoadSettings, load_model
from ..core.bnb import REPORT_ATTR as BNB_REPORT
from ..errors import LlmsparseError, SettingsError, UnknownNameError, check_choice
from ..registry import Registry, config_fields
from ..settings import Settings, check_of, choices_of, default_of, device_setting, setting

MISSING = dataclasses.MISSING


class Parser(argparse.ArgumentParser):
    """argparse with llmsparse's error convention: one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"llmsparse: error: {message}\n")


@dataclasses.dataclass
class Compute(Settings):
    """The compute device of commands that run a model."""

    device: str | None = device_setting()


def _element(hint: Any) -> type:
    """The scalar type a flag parses for a field annotated ``hint`` (``int | None`` -> int, ``list[str]`` -> str)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    scalars = []
    for arg in args:
        inner = typing.get_args(arg)
        scalars.append(inner[0] if typing.get_origin(arg) in (list, tuple) and inner else arg)
    return next((t for t in (bool, int, float, str) if t in scalars), str)


def _chooser(kind: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            check_choice(kind, text, allowed)
        except UnknownNameError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    return parse


def _checked(parse: Callable[[str], Any], f: dataclasses.Field) -> Callable[[str], Any]:
    """``parse`` followed by the field's value check, so a bad value is an argparse error (one line, exit 2)."""
    if not f.metadata.get("check"):
        return parse

    def parse_and_check(text: str) -> Any:
        value = parse(text)
        complaint = check_of(f, value)
        if complaint:
            raise argparse.ArgumentTypeError(f"{complaint}, got {text!r}")
        return value

    parse_and_check.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in "invalid int value"
    return parse_and_check


def _shown(default: Any) -> str | None:
    if default is MISSING or default is None or default is False or default == [] or default == {}:
        return None
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type[Settings],
    seen: set[str],
    title: str | None = None,
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, list[str]] | None = None,
    more_choices: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Add a flag per CLI field of ``cls`` not in ``seen`` or ``skip`` (and record them in ``seen``).

    ``more_choices``: names a choice flag accepts besides its field's own (``prune --method`` also takes the structured methods)."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in seen or f.name in skip:
            continue
        seen.add(f.name)
        default = default_of(f)
        shown = _shown(default)
        text = meta.get("help", "") + (f" (default {shown})" if shown is not None else "")
        if meta.get("positional"):
            group.add_argument(f.name, help=text)
            continue
        names = [meta.get("flag") or "--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, [])]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if default is MISSING:
            kwargs["required"] = True
        kind = _element(hints[f.name])
        if kind is bool:
            kwargs.update(action="store_const", const=True)
        else:
            choices = choices_of(f)
            if choices and more_choices and f.name in more_choices:
                choices = (choices[0], tuple(sorted({*choices[1], *more_choices[f.name]})))
            kwargs["type"] = _checked(_chooser(*choices) if choices else meta.get("parse") or kind, f)
            kwargs["metavar"] = meta.get("metavar") or names[0].lstrip("-").replace("-", "_").upper()
            for key in ("nargs", "action"):
                if meta.get(key):
                    kwargs[key] = meta[key]
        group.add_argument(*names, **kwargs)
        if kind is bool and meta.get("off_flag"):
            group.add_argument(meta["off_flag"], dest=f.name, default=None, action="store_const", const=False, help=f"turn {names[0]} off")


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The command-line fields of ``cls`` given on the command line (a flag shared by several settings fills each)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None
    }


def settings_from(cls: type[Settings], args: argparse.Namespace, recipe: dict | None = None, options: Registry | None = None):
    """``cls`` from dataclass defaults < ``recipe`` < given flags; ``options`` adds the generated option flags."""
    values = {**(recipe or {}), **given(cls, args)}
    if options is not None:
        chosen = values.get("method") or next(default_of(f) for f in dataclasses.fields(cls) if f.name == "method")
        values["method_options"] = dict(values.get("method_options") or {}) | option_values(args, chosen)
    return cls(**values)


def add_option_flags(parser: argparse.ArgumentParser, registry: Registry, title: str) -> None:
    """One flag per option of every registered class: ``--<name>-<option>`` (dest ``opt:<name>:<option>``)."""
    group = parser.add_argument_group(title)
    for name, cls in sorted(registry.items()):
        for f in config_fields(cls):
            default = default_of(f)
            flags = [f"--{name}-{f.name.replace('_', '-')}", *([f.metadata["alias"]] if f.metadata.get("alias") else [])]
            dest, text = f"opt:{name}:{f.name}", f"{name}: {f.metadata.get('help', '')}"
            if isinstance(default, bool):
                group.add_argument(*flags, dest=dest, action="store_const", const=True, default=None, help=text)
            else:
                kind = type(default) if default is not None else str
                group.add_argument(*flags, dest=dest, type=kind, default=None, metavar=f.name.upper(), help=f"{text} (default {default})")


def option_values(args: argparse.Namespace, chosen: str) -> dict[str, Any]:
    """The given option flags of the ``chosen`` class; an option of another class is refused."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith("opt:") and value is not None:
            _, name, option = dest.split(":")
            if name != chosen:
                raise SettingsError(f"--{name}-{option.replace('_', '-')} is an option of {name}, not of {chosen}")
            out[option] = value
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (staging directory, lock, partial state)."""


def _terminator(pid: int) -> Callable:
    """The SIGTERM handler of process ``pid``: raise :class:`Terminated` there. A forked child (lm-eval's bootstrap
    pool, whose ``terminate()`` sends SIGTERM to its workers) inherits the handler and must die as SIGTERM means."""

    def handler(signum, frame) -> None:
        if os.getpid() != pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise Terminated()

    return handler


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command``; an :class:`~llmsparse.errors.LlmsparseError` becomes one line on stderr and exit code 2,
    Ctrl-C one line and exit code 130, SIGTERM one line and exit code 143 (the run's temporary files are removed
    on the way out in both cases)."""
    previous = signal.signal(signal.SIGTERM, _terminator(os.getpid())) if threading.current_thread() is threading.main_thread() else None
    try:
        return command(args)
    except LlmsparseError as err:
        print(f"llmsparse: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except Terminated:
        print("llmsparse: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("llmsparse: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class Model(Settings):
    """The model a command runs on."""

    model: str = setting(MISSING, MODEL_HELP, positional=True)


def add_model_flags(parser: argparse.ArgumentParser, seen: set[str]) -> None:
    """The model argument, how it loads (:class:`~llmsparse.checkpoint.load.LoadSettings`) and the compute device."""
    add_settings(parser, Model, seen)
    add_settings(parser, LoadSettings, seen, "model loading")
    add_settings(parser, Compute, seen)


def load(args: argparse.Namespace):
    """``(model, tokenizer)`` as the model flags ask (with ``--load-in``, what bitsandbytes did to the zeros is printed)."""
    model, tokenizer = load_model(args.model, **given(LoadSettings, args))
    quantized = getattr(model, BNB_REPORT, None)
    if quantized is not None:
        print(quantized.summary())
    return model, tokenizer
