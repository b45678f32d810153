"""Passages from the common shapes of plain text, for the cloze tasks and the perplexity document.

A text is read in one of three shapes (``\\r\\n`` and ``\\r`` line ends and a UTF-8 BOM are taken
care of first; WikiText ``= Heading =`` lines never enter a passage):

- ``lines``: one paragraph per line (WikiText). Each non-empty line is a passage.
- ``blocks``: paragraphs separated by blank lines and hard-wrapped inside (books wrapped at ~70
  characters). The lines of a block are joined by spaces into one passage.
- ``window``: short lines that are no paragraphs (a play's speaker lines and speeches, verse, one
  sentence per line), with or without blank lines. The words of the whole text, as one stream, are
  cut into consecutive windows of ``window_words`` words (the cloze's ``max_words + 1``), so a
  passage runs across lines and speeches.

``auto`` takes the first shape that fits, from word counts alone (headings aside):

1. ``lines`` if the median non-empty line has at least ``PARAGRAPH_WORDS`` (30) words;
2. ``blocks`` if blank lines split the text into at least two blocks and the median block has at
   least ``PARAGRAPH_WORDS`` words;
3. ``window`` otherwise.

30 words is the default cloze context, so a shape is taken when a typical passage of it can hold a
cloze; hard-wrapped lines (~12 words) never pass rule 1, and speeches of a few words never pass rule 2.

The perplexity document is the text joined by blank lines, in units that depend on the shape:
``lines``: the non-empty lines as they are, headings included (what :func:`llmsparse.perplexity`
reads from a file); ``blocks``: the paragraphs, each joined into one line; ``window``: the blank-line
blocks with their line breaks kept (there the lines are speeches or verse, not wrapping).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MODES = ("lines", "blocks", "window")
PARAGRAPH_WORDS = 30


@dataclass
class Passages:
    """A text cut into passages, and the shape it was read as."""

    mode: str  # lines, blocks or window
    reason: str  # why: what auto saw, or that the mode was requested
    lines: list[str]  # the text's lines (no BOM, no line ends)
    texts: list[str]  # the passages, in text order


def text_lines(text: str) -> list[str]:
    """The lines of ``text`` without a leading BOM (``splitlines`` ends lines at ``\\r\\n`` and ``\\r`` too)."""
    return text.removeprefix("\ufeff").splitlines()


def is_heading(line: str) -> bool:
    """A WikiText heading (``= Title =``, ``= = Section = =``)."""
    line = line.strip()
    return line.startswith("=") and line.endswith("=")


def blocks(lines: list[str]) -> list[list[str]]:
    """Runs of non-empty lines (stripped) between blank lines."""
    out: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            out[-1].append(line.strip())
        elif out[-1]:
            out.append([])
    return [b for b in out if b]


def _body(lines: list[str]) -> list[str]:
    """The lines with headings blanked: a heading ends a block and joins no passage."""
    return ["" if is_heading(line) else line for line in lines]


def _median_words(units: list[str]) -> int:
    return statistics.median_low(len(u.split()) for u in units) if units else 0


def detect(lines: list[str]) -> tuple[str, str]:
    """``(mode, reason)`` by the rule in the module docstring."""
    body = _body(lines)
    line_words = _median_words([line for line in body if line.strip()])
    if line_words >= PARAGRAPH_WORDS:
        return "lines", f"the median line has {line_words} words: one paragraph per line"
    paragraphs = [" ".join(b) for b in blocks(body)]
    block_words = _median_words(paragraphs)
    short = f"lines are short (median {line_words} words)"
    if len(paragraphs) >= 2 and block_words >= PARAGRAPH_WORDS:
        return "blocks", f"{short}, blank lines split {len(paragraphs)} blocks of median {block_words} words: wrapped paragraphs"
    if len(paragraphs) < 2:
        return "window", f"{short} and there are no blank lines: windows of words across lines"
    return "window", f"{short}, blank lines split {len(paragraphs)} blocks of median {block_words} words: windows across them"


def split_passages(text: str, mode: str, window_words: int) -> Passages:
    """``text`` cut into passages in ``mode`` (``auto`` or one of :data:`MODES`); deterministic."""
    lines = text_lines(text)
    detected, why = detect(lines)
    reason = f"auto: {why}" if mode == "auto" else f"requested; auto would take {detected}: {why}"
    mode = detected if mode == "auto" else mode
    body = _body(lines)
    if mode == "lines":
        texts = [line.strip() for line in body if line.strip()]
    elif mode == "blocks":
        texts = [" ".join(b) for b in blocks(body)]
    else:
        words = " ".join(body).split()
        texts = [" ".join(words[i : i + window_words]) for i in range(0, len(words), window_words)]
    return Passages(mode, reason, lines, texts)


def ppl_document(passages: Passages, max_chars: int | None = None) -> str:
    """The perplexity document (see the module docstring); with ``max_chars``, its longest start that
    ends at a line end within that many characters (the first line whole if it is longer)."""
    if passages.mode == "lines":
        units = [line for line in passages.lines if line.strip()]
    else:
        units = [(" " if passages.mode == "blocks" else "\n").join(b) for b in blocks(passages.lines)]
    doc = "\n\n".join(units)
    if max_chars is None or len(doc) <= max_chars:
        return doc
    cut = doc.rfind("\n", 0, max_chars + 1)
    if cut < 0:
        cut = (doc + "\n").find("\n")
    return doc[:cut].rstrip("\n")
