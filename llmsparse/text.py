"""Reading user text: calibration files (plain text, ``.jsonl``, ``.parquet``) and evaluation documents."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CalibrationDataError, EvaluationError


def read_text(path: str | Path, text_field: str = "text") -> str:
    """The text of a local file; documents of ``.jsonl`` / ``.parquet`` files are joined with blank lines."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"calibration file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)[text_field])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise CalibrationDataError(f"{path}:{number}: not a JSON object with a {text_field!r} field") from err
        return "\n\n".join(docs)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise CalibrationDataError(f"{path} has no column {text_field!r} (columns: {', '.join(table.column_names)})")
        return "\n\n".join(str(t) for t in table.column(text_field).to_pylist() if t)
    return path.read_text(encoding="utf-8")


def eval_text(source: str) -> str:
    """Evaluation text: ``wikitext2`` (Hub test split) or a local file whose non-empty lines are documents."""
    path = Path(source)
    if path.is_file():
        if path.suffix in (".jsonl", ".parquet"):
            return read_text(path)
        return "\n\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if source == "wikitext2":
        try:
            from datasets import load_dataset

            return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
        except Exception as err:
            raise EvaluationError(f"could not load the wikitext2 test split from the Hub: {err}") from err
    raise EvaluationError(f"evaluation text {source!r} is neither a file nor 'wikitext2'")
