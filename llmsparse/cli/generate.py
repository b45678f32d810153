"""``llmsparse generate``: greedy decoding at batch size 1, with tokens/s."""

from __future__ import annotations

import argparse
import sys

from ..activation import enable_sparse_decode, settings_of
from ..activation.decode import GenerateSettings, timed_generate
from ..core.layout import resolve_device
from ..errors import SettingsError
from . import flags, preflight

HELP = "greedy generation at batch size 1, with tokens/s"
DESCRIPTION = "Greedy decoding with timing; --sparse-decode uses the sparse kernel of activation-sparse models."


def add(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = set()
    flags.add_model_flags(parser, seen)
    flags.add_settings(parser, GenerateSettings, seen, "generation")


def run(args: argparse.Namespace) -> int:
    settings = GenerateSettings(**flags.given(GenerateSettings, args))
    directory = preflight.model_dir(args.model, bool(args.trust_remote_code), getattr(args, "runtime", None))
    if directory is not None:
        preflight.check_length(directory, settings.max_new_tokens, bool(args.trust_remote_code), "max_new_tokens", SettingsError)
    model, tokenizer = flags.load(args)
    model.to(resolve_device(args.device))
    if settings.sparse_decode:
        if settings_of(model) is None:
            raise SettingsError("--sparse-decode needs an activation-sparse model (made by llmsparse sparsify)")
        enable_sparse_decode(model)
    t = timed_generate(model, tokenizer, settings.prompt, settings.max_new_tokens)
    print(t.text)
    speed = f"{t.decode_steps} decode steps in {t.decode_s:.2f} s, {t.tokens_per_s:.2f} tokens/s" if t.decode_steps else "no decode steps"
    print(f"{t.new_tokens} new tokens ({speed}; prompt: {t.prompt_tokens} tokens and the first new token in {t.prefill_s:.2f} s)", file=sys.stderr)
    return 0
