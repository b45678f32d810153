"""Offline tasks from the common shapes of plain text (issue 20): generated files, no network."""

from __future__ import annotations

import importlib.util
import json
import random
import string
import textwrap
from pathlib import Path

import pytest

from llmsparse.errors import UnknownNameError
from llmsparse.evaluation import ClozeConfig, build_local_tasks
from llmsparse.evaluation.passages import detect, text_lines

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random(20)
VOCAB = sorted({"".join(RNG.choices(string.ascii_lowercase, k=RNG.randint(3, 9))) for _ in range(400)})
SPEAKERS = ["HAMLET", "OPHELIA", "HORATIO", "POLONIUS", "GERTRUDE"]


def _build_tasks_main():
    """``main`` of eval/build_tasks.py (a script, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("build_tasks", ROOT / "eval" / "build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(VOCAB, k=rng.randint(low, high))
    return " ".join([words[0].capitalize(), *words[1:]]) + rng.choice(".!?")


def _paragraphs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(_sentence(rng, 6, 14) for _ in range(rng.randint(5, 9))) for _ in range(n)]


def wrapped_prose(n: int = 40) -> str:
    """A book: paragraphs hard-wrapped at 70 characters, blank lines between them."""
    return "\n\n".join(textwrap.fill(p, 70) for p in _paragraphs(n)) + "\n"


def line_paragraphs(n: int = 40) -> str:
    """WikiText's shape: a heading, then one paragraph per line."""
    return " = A Heading = \n" + "\n".join(_paragraphs(n)) + "\n"


def dialogue(speeches: int = 400, blank_lines: bool = True) -> str:
    """A play: a speaker line and one to three short lines per speech."""
    rng = random.Random(1)
    out = [[f"{rng.choice(SPEAKERS)}.", *(_sentence(rng, 2, 7) for _ in range(rng.randint(1, 3)))] for _ in range(speeches)]
    return ("\n\n" if blank_lines else "\n").join("\n".join(s) for s in out) + "\n"


SHAPES = {
    "wrapped prose": (lambda: wrapped_prose(), "blocks"),
    "dialogue with blank lines": (lambda: dialogue(), "window"),
    "dialogue without blank lines": (lambda: dialogue(blank_lines=False), "window"),
    "one paragraph per line": (lambda: line_paragraphs(), "lines"),
    "CRLF wrapped prose": (lambda: wrapped_prose().replace("\n", "\r\n"), "blocks"),
    "BOM paragraph per line": (lambda: "\ufeff" + line_paragraphs(), "lines"),
    "BOM and CRLF dialogue": (lambda: "\ufeff" + dialogue().replace("\n", "\r\n"), "window"),
}


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))  # bytes: CRLF and the BOM reach the file as they are
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_builds_all_tasks_deterministically(shape, tmp_path):
    make, mode = SHAPES[shape]
    text = make()
    source = _write(tmp_path / "text.txt", text)
    config = ClozeConfig(examples=20)
    built = build_local_tasks(source, "t", tmp_path / "a", config)
    assert built.mode == mode and built.names == ["t_ppl", "t_cloze", "t_cloze_mc"]
    assert built.examples == 20 and built.usable >= 20 and built.passages >= built.usable
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "t_cloze.jsonl",
        "t_cloze.yaml",
        "t_cloze_mc.yaml",
        "t_ppl.jsonl",
        "t_ppl.yaml",
    ]

    words = " ".join(text.removeprefix("\ufeff").split())
    (doc,) = _rows(tmp_path / "a" / "t_ppl.jsonl")
    assert " ".join(doc["text"].split()) == words  # the whole text, every word in order
    examples = _rows(tmp_path / "a" / "t_cloze.jsonl")
    assert len(examples) == 20
    for ex in examples:
        assert ex["choices"][ex["label"]] == ex["target"] and len({c.lower() for c in ex["choices"]}) == 4
        assert ex["target"].isalpha() and 30 <= len(ex["context"].split()) <= 150
        assert f"{ex['context']} {ex['target']}" in words and "Heading" not in ex["context"]
    assert "\r" not in doc["text"] + str(examples) and "\ufeff" not in doc["text"] + str(examples)

    build_local_tasks(source, "t", tmp_path / "b", config)
    build_local_tasks(source, "t", tmp_path / "c", ClozeConfig(examples=20, seed=1))
    for data in ["t_ppl.jsonl", "t_cloze.jsonl"]:
        assert (tmp_path / "a" / data).read_bytes() == (tmp_path / "b" / data).read_bytes()
    assert (tmp_path / "a" / "t_cloze.jsonl").read_bytes() != (tmp_path / "c" / "t_cloze.jsonl").read_bytes()


def test_ppl_document_per_shape(tmp_path):
    """lines: the non-empty lines joined by blank lines (as before); blocks: one line per paragraph;
    window: the text's own line breaks; ``ppl_chars`` cuts at a line end."""
    text = line_paragraphs(5)
    build_local_tasks(_write(tmp_path / "l.txt", "\ufeff" + text.replace("\n", "\r\n")), "l", tmp_path / "o", ClozeConfig(examples=4))
    assert _rows(tmp_path / "o" / "l_ppl.jsonl")[0]["text"] == "\n\n".join(text.splitlines())

    build_local_tasks(_write(tmp_path / "b.txt", wrapped_prose(10)), "b", tmp_path / "o", ClozeConfig(examples=4))
    assert _rows(tmp_path / "o" / "b_ppl.jsonl")[0]["text"] == "\n\n".join(_paragraphs(10))

    play = dialogue(blank_lines=False)
    build_local_tasks(_write(tmp_path / "d.txt", play), "d", tmp_path / "o", ClozeConfig(examples=8), ppl_chars=500)
    doc = _rows(tmp_path / "o" / "d_ppl.jsonl")[0]["text"]
    assert 400 < len(doc) <= 500 and play.startswith(doc + "\n")


def test_auto_rule_and_override(tmp_path, capsys):
    assert detect(text_lines(wrapped_prose()))[0] == "blocks"
    assert detect(text_lines(line_paragraphs()))[0] == "lines"
    # a one-sentence-per-line file is no paragraph-per-line file: too short for a cloze context
    assert detect(text_lines("\n".join(_sentence(random.Random(i), 8, 14) for i in range(50))))[0] == "window"
    # speeches as long as paragraphs are paragraphs
    long_speeches = "\n\n".join(f"HAMLET.\n{textwrap.fill(p, 70)}" for p in _paragraphs(10))
    assert detect(text_lines(long_speeches))[0] == "blocks"

    main = _build_tasks_main()
    source = _write(tmp_path / "book.txt", wrapped_prose())
    out = tmp_path / "o"
    assert main([str(source), "--name", "bk", "--out", str(out), "--examples", "10"]) == 0
    printed = capsys.readouterr().out
    assert (
        "passages: blocks (auto: lines are short (median" in printed
        and "40 passages, 40 usable for cloze, 10 examples written (10 asked)" in printed
    )
    assert main([str(source), "--name", "bk", "--out", str(out), "--examples", "10", "--passages", "window"]) == 0
    assert "passages: window (requested; auto would take blocks" in capsys.readouterr().out
    assert len(_rows(out / "bk_cloze.jsonl")) == 10
    with pytest.raises(UnknownNameError, match="unknown passages 'paragraphs'"):
        build_local_tasks(source, "bk", out, passages="paragraphs")


@pytest.mark.parametrize(
    "text, flags, lacking, remedy",
    [
        # the case: three speeches (29 words) give one window, without 30 words before a sentence end
        (
            dialogue(3),
            [],
            "no cloze passage: 0 of 1 passages (window) have a sentence end after >= 30 context words",
            "use a longer text or lower --min-words",
        ),
        (
            line_paragraphs(2),
            [],
            "only 2 distinct target words for 4 choices: 2 of 2 passages (lines)",
            "lower --min-words or use --passages window, or lower --choices",
        ),
        (
            dialogue(),
            ["--examples", "3"],
            "only 3 distinct target words for 4 choices: among 3 sampled passages",
            "raise --examples or lower --choices",
        ),
        (wrapped_prose(12), ["--passages", "lines"], "no cloze passage: 0 of", "lower --min-words or use --passages window"),
        (
            wrapped_prose(12),
            ["--min-words", "120"],
            "no cloze passage: 0 of 12 passages (blocks) have a sentence end after >= 120 context words",
            "--passages window",
        ),
    ],
    ids=["few speeches", "two paragraphs", "few examples", "prose as lines", "min words too high"],
)
def test_a_text_too_small_says_what_it_lacks_and_writes_nothing(text, flags, lacking, remedy, tmp_path, capsys):
    source = _write(tmp_path / "small.txt", text)
    out = tmp_path / "out"
    assert _build_tasks_main()([str(source), "--name", "s", "--out", str(out), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"build_tasks: error: {source}: ") and lacking in captured.err and remedy in captured.err
    assert not out.exists()
