"""Offline lm-eval tasks built from any plain-text file.

:func:`build_local_tasks` writes, into one directory that lm-eval reads through ``include_path``:

- ``NAME_ppl``: rolling log-likelihood over the text (one document: for a file with one paragraph
  per line, its non-empty lines joined by blank lines, as :func:`llmsparse.perplexity` joins them;
  for other shapes, the joined paragraphs, see :mod:`.passages`), reporting word/byte perplexity and
  bits per byte; :func:`llmsparse.evaluate` adds token perplexity.
- ``NAME_cloze``: last-word prediction in the LAMBADA style. A passage (a paragraph, or a window of
  words for text of short lines; :mod:`.passages` says how the shape is told) is cut after a
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

from ..errors import TaskBuildError, check_choice
from .passages import MODES, Passages, ppl_document, split_passages

SENTENCE_END = (".", "!", "?")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class ClozeConfig:
    """How cloze passages are cut from paragraphs."""

    examples: int = 500  # passages to keep (sampled over the whole text with ``seed``)
    min_words: int = 30  # words of context before the target, at least
    max_words: int = 150  # and at most (the passage ends at the last sentence end within this)
    choices: int = 4  # candidates per passage in the multiple-choice variant
    seed: int = 0


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


def _split(text: str, passages: str, config: ClozeConfig) -> Passages:
    """The text's passages; a window holds one cloze of at most ``max_words`` context words."""
    check_choice("passages", passages, ("auto", *MODES))
    return split_passages(text, passages, config.max_words + 1)


def _remedy(split: Passages) -> str:
    """What to change when too few passages hold a cloze (windows run across paragraph ends, so
    short paragraphs do not limit them; only the text's length and sentence ends do)."""
    if split.mode == "window":
        return "use a longer text or lower --min-words"
    return "lower --min-words or use --passages window"


def cloze_examples(split: Passages, config: ClozeConfig) -> tuple[list[dict], int]:
    """``(examples, usable)``: cloze examples ``{context, target, choices, label}`` sampled with
    ``seed`` from the passages that hold one, and how many do."""
    passages = [p for p in (cloze_passage(text, config.min_words, config.max_words) for text in split.texts) if p]
    found = f"{len(passages)} of {len(split.texts)} passages ({split.mode}) have a sentence end after >= {config.min_words} context words"
    if not passages:
        raise TaskBuildError(f"no cloze passage: {found}; {_remedy(split)}")
    usable = len(passages)
    rng = random.Random(config.seed)
    if len(passages) > config.examples:
        passages = [passages[i] for i in sorted(rng.sample(range(len(passages)), config.examples))]
    targets = sorted({t for _, t in passages})
    distinct = len({t.lower() for t in targets})
    if distinct < config.choices:  # distractors are the other kept passages' targets
        lack = f"among {len(passages)} sampled passages; raise --examples" if usable > len(passages) else f"{found}; {_remedy(split)},"
        raise TaskBuildError(f"only {distinct} distinct target words for {config.choices} choices: {lack} or lower --choices")
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
    return examples, usable


def make_cloze(text: str, config: ClozeConfig | None = None, passages: str = "auto") -> list[dict]:
    """Cloze examples from plain text read as ``passages`` (see :mod:`.passages`); deterministic in ``seed``."""
    config = config or ClozeConfig()
    return cloze_examples(_split(text, passages, config), config)[0]


@dataclass
class LocalTasks:
    """What :func:`build_local_tasks` wrote, and how it read the text; ``str()`` is a summary."""

    names: list[str]
    mode: str  # the passage shape: lines, blocks or window
    reason: str  # why that shape
    passages: int  # passages the text gave
    usable: int  # those that hold a cloze (a sentence end after min_words context words)
    examples: int  # cloze examples written: all usable passages up to ``asked``
    asked: int  # ClozeConfig.examples
    document_chars: int  # characters of the perplexity document

    def __str__(self) -> str:
        return (
            f"passages: {self.mode} ({self.reason})\n"
            f"{self.passages} passages, {self.usable} usable for cloze, {self.examples} examples written ({self.asked} asked); "
            f"perplexity document of {self.document_chars} characters"
        )


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
    text_file: str | Path,
    name: str,
    out_dir: str | Path,
    cloze: ClozeConfig | None = None,
    ppl_chars: int | None = None,
    passages: str = "auto",
) -> LocalTasks:
    """Write ``NAME_ppl``, ``NAME_cloze`` and ``NAME_cloze_mc`` for ``text_file`` into ``out_dir``.

    ``passages`` is the text's shape (``auto``, ``lines``, ``blocks`` or ``window``, see
    :mod:`.passages`). ``ppl_chars`` keeps only the start of the perplexity document, up to that many
    characters at a line end (rolling perplexity over a whole corpus is slow on CPU). Returns the
    task names with the shape and passage counts; nothing is written when the text cannot give the
    tasks (:class:`TaskBuildError`).
    """
    path, cloze = Path(text_file), cloze or ClozeConfig()
    if not NAME_RE.match(name):
        raise TaskBuildError(f"task name {name!r} must start with a letter and hold only letters, digits and _")
    if not path.is_file():
        raise TaskBuildError(f"text file {str(path)!r} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskBuildError(f"text file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); is it a binary file?") from err
    split = _split(raw, passages, cloze)
    if not any(line.strip() for line in split.lines):
        raise TaskBuildError(f"{path} holds no text")
    try:
        examples, usable = cloze_examples(split, cloze)
    except TaskBuildError as err:
        raise TaskBuildError(f"{path}: {err}") from None
    document = ppl_document(split, ppl_chars)

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ppl_data, cloze_data = out / f"{name}_ppl.jsonl", out / f"{name}_cloze.jsonl"
    _write_jsonl(ppl_data, [{"text": document}])
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
    return LocalTasks(list(specs), split.mode, split.reason, len(split.texts), usable, len(examples), cloze.examples, len(document))
