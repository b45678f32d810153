"""Reading user text: calibration files (plain text, ``.jsonl``, ``.parquet``) and evaluation documents.

A path that is a directory, a file that is not UTF-8 text, a malformed ``.jsonl``/``.parquet`` file
or a file with no text gets an error that names the file, of the kind the caller reads it for
(:class:`CalibrationDataError` or :class:`EvaluationError`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CalibrationDataError, EvaluationError, LlmsparseError


def _file(path: Path, what: str, error: type[LlmsparseError]) -> None:
    if path.is_dir():
        raise error(f"{what} {str(path)!r} is a directory, not a text file")
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")


def _jsonl(path: Path, text_field: str, what: str, error: type[LlmsparseError]) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
                raise error(f"{what} {path}:{number}: not a JSON object with a {text_field!r} field") from err
            if not isinstance(doc, str):
                raise error(f"{what} {path}:{number}: field {text_field!r} holds {type(doc).__name__}, not text")
            docs.append(doc)
    return docs


def _parquet(path: Path, text_field: str, what: str, error: type[LlmsparseError]) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise error(f"{what} {path} is not a readable parquet file: {err}") from err
    if text_field not in table.column_names:
        raise error(f"{what} {path} has no column {text_field!r} (columns: {', '.join(table.column_names)})")
    return [str(t) for t in table.column(text_field).to_pylist() if t]


def read_text(
    path: str | Path, text_field: str = "text", what: str = "calibration file", error: type[LlmsparseError] = CalibrationDataError
) -> str:
    """The text of a local file; documents of ``.jsonl`` / ``.parquet`` files are joined with blank lines.

    ``what`` names the file in messages and ``error`` is the error raised for a file that gives no text.
    """
    path = Path(path)
    _file(path, what, error)
    try:
        if path.suffix == ".jsonl":
            text = "\n\n".join(_jsonl(path, text_field, what, error))
        elif path.suffix == ".parquet":
            text = "\n\n".join(_parquet(path, text_field, what, error))
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); is it a binary file?") from err
    except OSError as err:
        raise error(f"cannot read {what} {str(path)!r}: {err.strerror or err}") from err
    if not any(c.isprintable() and not c.isspace() for c in text):  # stops at the first visible character
        control = " (only control characters such as NUL bytes)" if text.strip() else ""
        raise error(f"{what} {str(path)!r} holds no text{control}")
    return text


def eval_text(source: str) -> str:
    """Evaluation text: ``wikitext2`` (Hub test split) or a local file whose non-empty lines are documents."""
    path = Path(source)
    if source == "wikitext2" and not path.exists():
        try:
            from datasets import load_dataset

            return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
        except Exception as err:
            raise EvaluationError(f"could not load the wikitext2 test split from the Hub: {err}") from err
    if not path.exists():
        raise EvaluationError(f"evaluation text {source!r} does not exist (and is not 'wikitext2')")
    text = read_text(path, what="evaluation text", error=EvaluationError)
    if path.suffix in (".jsonl", ".parquet"):
        return text
    return "\n\n".join(line for line in text.splitlines() if line.strip())


def check_eval_source(source: str) -> None:
    """Fail fast (before a slow model load) on an evaluation text that is not readable text; ``wikitext2`` is read later."""
    if source != "wikitext2" or Path(source).exists():
        eval_text(source)
