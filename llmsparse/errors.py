"""Every error llmsparse raises on purpose, under one base: :class:`LlmsparseError`.

The command line catches that one type, prints its message on one line and exits with code 2;
anything else is a bug. Each subclass also derives from the builtin it used to be
(``ValueError`` for bad input, ``RuntimeError`` for numerical failures), so ``except ValueError``
in older user code keeps working. This module imports nothing of the package (the ground floor).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlmsparseError(Exception):
    """Base of every error llmsparse raises on purpose: bad input, bad data, or a failed computation it can explain."""


class UnknownNameError(LlmsparseError, ValueError):
    """A name that is not registered or not one of the allowed choices (a method, format, option value, task...)."""


class SettingsError(LlmsparseError, ValueError):
    """A run setting of the wrong type or out of range, or settings that contradict each other."""


class ModelError(LlmsparseError, ValueError):
    """A model cannot be loaded or its structure is not one llmsparse can prune."""


class SparsityError(LlmsparseError, ValueError):
    """An impossible sparsity target or pattern."""


class CalibrationDataError(LlmsparseError, ValueError):
    """Calibration data is missing, unreadable or too short."""


class CalibrationError(LlmsparseError, RuntimeError):
    """The calibration forward passes did not give a matrix the inputs it needs."""


class HessianError(LlmsparseError, RuntimeError):
    """The Hessian could not be factored even with the largest dampening tried."""


class CheckpointError(LlmsparseError, ValueError):
    """A sparse checkpoint or format request that cannot be honoured (corrupt, truncated, not N:M, ...)."""


class OutputDirError(LlmsparseError, ValueError):
    """The output directory cannot be used: a file, not empty, not writable, or one that holds the run's inputs."""


class OutputBusyError(OutputDirError):
    """Another run is writing the same output directory right now."""


class NonFiniteError(LlmsparseError, ValueError):
    """Weights or calibration statistics hold NaN or infinity, which would give wrong masks without a word."""


class MemoryLimitError(LlmsparseError, MemoryError):
    """A model that will not fit in the available memory (the message suggests ``--stream``)."""


class ResumeError(LlmsparseError, ValueError):
    """An interrupted streamed run that cannot be resumed as asked (other arguments, no ``--resume``, a damaged state)."""


class RecipeError(LlmsparseError, ValueError):
    """A recipe file that cannot be read, has unknown keys, or values of the wrong type."""


class PushError(LlmsparseError, ValueError):
    """The directory is not a saved model, or the upload failed (network, endpoint, permissions)."""


class EvaluationError(LlmsparseError, ValueError):
    """Evaluation data is missing or too short, or there is nothing to evaluate."""


class UnknownTaskError(UnknownNameError):
    """A task name lm-eval does not know (with the include paths given)."""


class TaskBuildError(LlmsparseError, ValueError):
    """The text cannot give the requested offline tasks (missing, too short, bad name); the message says what the text lacks and what to change."""


class SweepDirError(LlmsparseError, ValueError):
    """The sweep output directory holds something other than this sweep."""


class KernelBuildError(LlmsparseError, RuntimeError):
    """The C++ sparse decode kernel could not be compiled or loaded."""


def unknown_name(kind: str, name: object, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """The error for an unknown ``name`` of ``kind``: lists the known names and suggests close ones."""
    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), known, n=3)
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{suggestion}; available: {', '.join(known) or 'none'}{hint}")


def check_choice(kind: str, value: object, choices: Iterable[str]) -> None:
    """Raise :func:`unknown_name`'s error when ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise unknown_name(kind, value, choices)


def check_resume(directory: object, saved_args: dict | None, args: dict, resume: bool, what: str = "run") -> None:
    """Refuse to take over an interrupted ``what`` in ``directory`` (its arguments ``saved_args``) with other ``args``, or without ``resume``."""
    if saved_args != args:
        theirs = saved_args or {}
        differ = sorted(k for k in set(args) | set(theirs) if args.get(k) != theirs.get(k))
        raise ResumeError(
            f"{directory} holds an interrupted {what} with other arguments (differs in: {', '.join(differ)}); "
            "rerun it with its own arguments and --resume, or remove that directory to start over"
        )
    if not resume:
        raise ResumeError(f"{directory} holds an interrupted {what} of this command: add --resume to continue it, or remove that directory to start over")
