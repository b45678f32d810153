"""Offline lm-eval tasks built from any plain-text file.

:func:`build_local_tasks` writes, into one directory that lm-eval reads through ``include_path``:

- ``NAME_ppl``: rolling log-likelihood over the text (one document: the file's non-empty lines
  joined by blank lines, as :func:`llmsparse.perplexity` joins them), reporting word/byte
  perplexity and bits per byte; :func:`llmsparse.evaluate` adds token perplexity.
- ``NAME_cloze``: last-word prediction in the LAMBADA style. A passage is a paragraph cut after a
  sentence end; the target is the sentence's last word, the context everything before it. Metrics:
  ``acc`` (the greedy continuation is exactly the word) and ``perplexity`` of the word.
- ``NAME_cloze_mc``: the same passages with the word among ``choices`` candidates (the true one and
  targets of other passages), so chance is ``1/choices``. Metrics: ``acc`` and ``acc_norm``.

The three are tagged ``NAME``, so ``--tasks NAME`` runs them all. Data files are written beside the
YAMLs and named in them by absolute path.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

SENTENCE_END = (".", "!", "?")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TaskBuildError(ValueError):
    """The text cannot give the requested tasks (missing, too short, bad name)."""


@dataclass
class ClozeConfig:
    """How cloze passages are cut from paragraphs."""

    examples: int = 500  # passages to keep (sampled over the whole text with ``seed``)
    min_words: int = 30  # words of context before the target, at least
    max_words: int = 150  # and at most (the passage ends at the last sentence end within this)
    choices: int = 4  # candidates per passage in the multiple-choice variant
    seed: int = 0


def paragraphs(text: str) -> list[str]:
    """Non-empty lines that are not WikiText-style headings (``= Title =``)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not (line.startswith("=") and line.endswith("=")):
            out.append(line)
    return out


def cloze_passage(paragraph: str, min_words: int, max_words: int) -> tuple[str, str] | None:
    """``(context, target)``: the last sentence end within ``max_words`` words whose final word is
    alphabetic; ``None`` when the paragraph has none past ``min_words``."""
    words = paragraph.split()
    for end in range(min(len(words), max_words + 1) - 1, min_words - 1, -1):
        word = words[end]
        if word in SENTENCE_END:  # tokenised text ("the city .")
            target, before = words[end - 1], words[: end - 1]
        elif word.endswith(SENTENCE_END):  # ordinary text ("the city.")
            target, before = word[:-1], words[:end]
        else:
            continue
        if target.isalpha() and len(before) >= min_words:
            return " ".join(before), target
    return None


def make_cloze(text: str, config: ClozeConfig = ClozeConfig()) -> list[dict]:
    """Cloze examples ``{context, target, choices, label}`` from plain text (deterministic in ``seed``)."""
    passages = [p for p in (cloze_passage(par, config.min_words, config.max_words) for par in paragraphs(text)) if p]
    rng = random.Random(config.seed)
    if len(passages) > config.examples:
        passages = [passages[i] for i in sorted(rng.sample(range(len(passages)), config.examples))]
    targets = sorted({t for _, t in passages})
    if len({t.lower() for t in targets}) < config.choices:
        raise TaskBuildError(f"only {len(targets)} distinct target words; {config.choices} choices need at least that many")
    examples = []
    for context, target in passages:
        others = set()
        while len(others) < config.choices - 1:
            word = rng.choice(targets)
            if word.lower() != target.lower():
                others.add(word)
        choices = sorted(others) + [target]
        rng.shuffle(choices)
        examples.append({"context": context, "target": target, "choices": choices, "label": choices.index(target)})
    return examples


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _task(name: str, tag: str, data: Path, **spec) -> dict:
    return {
        "tag": [tag],
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        **spec,
        "metadata": {"version": 1.0, "source": "llmsparse.evaluation.tasks"},
    }


def build_local_tasks(
    text_file: str | Path, name: str, out_dir: str | Path, cloze: ClozeConfig = ClozeConfig(), ppl_chars: int | None = None
) -> list[str]:
    """Write ``NAME_ppl``, ``NAME_cloze`` and ``NAME_cloze_mc`` for ``text_file`` into ``out_dir``.

    ``ppl_chars`` keeps only the first paragraphs up to that many characters for the perplexity
    document (rolling perplexity over a whole corpus is slow on CPU). Returns the task names.
    """
    path = Path(text_file)
    if not NAME_RE.match(name):
        raise TaskBuildError(f"task name {name!r} must start with a letter and hold only letters, digits and _")
    if not path.is_file():
        raise TaskBuildError(f"text file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if ppl_chars is not None:
        kept, size = [], 0
        for line in lines:
            if kept and size + len(line) > ppl_chars:
                break
            kept.append(line)
            size += len(line) + 2
        lines = kept
    if not lines:
        raise TaskBuildError(f"{path} holds no text")
    examples = make_cloze(text, cloze)
    if not examples:
        raise TaskBuildError(f"{path}: no paragraph has a sentence end after {cloze.min_words} words, so no cloze passage")

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ppl_data, cloze_data = out / f"{name}_ppl.jsonl", out / f"{name}_cloze.jsonl"
    _write_jsonl(ppl_data, [{"text": "\n\n".join(lines)}])
    _write_jsonl(cloze_data, examples)
    metric = lambda m, agg=None, hib=True: {"metric": m, **({"aggregation": agg} if agg else {}), "higher_is_better": hib}  # noqa: E731
    specs = {
        f"{name}_ppl": _task(
            f"{name}_ppl",
            name,
            ppl_data,
            output_type="loglikelihood_rolling",
            doc_to_text="",
            doc_to_target="{{text}}",
            metric_list=[
                metric("word_perplexity", "weighted_perplexity", False),
                metric("byte_perplexity", "weighted_perplexity", False),
                metric("bits_per_byte", "bits_per_byte", False),
            ],
        ),
        f"{name}_cloze": _task(
            f"{name}_cloze",
            name,
            cloze_data,
            output_type="loglikelihood",
            doc_to_text="{{context}}",
            doc_to_target="{{' ' + target}}",
            metric_list=[metric("perplexity", "perplexity", False), metric("acc", "mean")],
        ),
        f"{name}_cloze_mc": _task(
            f"{name}_cloze_mc",
            name,
            cloze_data,
            output_type="multiple_choice",
            doc_to_text="{{context}}",
            doc_to_choice="choices",
            doc_to_target="label",
            target_delimiter=" ",
            metric_list=[metric("acc", "mean"), metric("acc_norm", "mean")],
        ),
    }
    for task, spec in specs.items():
        (out / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return list(specs)
