"""Build offline lm-eval tasks from a plain-text file: NAME_ppl, NAME_cloze, NAME_cloze_mc (tag NAME).

    python eval/build_tasks.py ../shared/data/wikitext2/wiki.test.raw --name wt2 --out eval/local
    llmsparse eval gemma-3-270m --tasks wt2 --include-path eval/local --max-length 1024

See eval/README.md for what each task measures; the builder is llmsparse.build_local_tasks.
The text may hold one paragraph per line (WikiText), blank-line paragraphs hard-wrapped inside
(books), or short lines such as a play's speeches (read as windows of words); the shape is detected
(llmsparse.evaluation.passages says how) and printed with the passage counts, or set by --passages.
On an error nothing is written, one line says what the text lacks, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys

from llmsparse.errors import LlmsparseError
from llmsparse.evaluation import ClozeConfig, build_local_tasks
from llmsparse.evaluation.passages import MODES


def main(argv: list[str] | None = None) -> int:
    defaults = ClozeConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help="plain-text file (UTF-8; WikiText '= Heading =' lines are skipped)")
    p.add_argument("--name", required=True, help="task name prefix (letters, digits, _)")
    p.add_argument("--out", default="eval/local", help="directory for the YAMLs and data (default eval/local, git-ignored)")
    p.add_argument("--examples", type=int, default=defaults.examples, help=f"cloze passages (default {defaults.examples})")
    p.add_argument("--min-words", type=int, default=defaults.min_words, help=f"context words before the target, at least (default {defaults.min_words})")
    p.add_argument("--max-words", type=int, default=defaults.max_words, help=f"context words, at most (default {defaults.max_words})")
    p.add_argument("--choices", type=int, default=defaults.choices, help=f"candidates in the multiple-choice variant (default {defaults.choices})")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed for sampling passages and distractors (default 0)")
    p.add_argument(
        "--passages",
        choices=("auto", *MODES),
        default="auto",
        help="how the text is cut: lines (a paragraph per line), blocks (blank-line paragraphs, wrapped), "
        "window (words across short lines); default auto, from line and block lengths",
    )
    p.add_argument("--ppl-chars", type=int, help="characters of text for the perplexity document (default: the whole file)")
    args = p.parse_args(argv)
    config = ClozeConfig(args.examples, args.min_words, args.max_words, args.choices, args.seed)
    try:
        built = build_local_tasks(args.text, args.name, args.out, config, args.ppl_chars, args.passages)
    except LlmsparseError as err:
        print(f"build_tasks: error: {err}", file=sys.stderr)
        return 2
    print(built)
    print(f"wrote {', '.join(built.names)} (tag {args.name}) to {args.out}; use --include-path {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
