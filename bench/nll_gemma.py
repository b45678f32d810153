"""The head's next-token loss on Gemma 3 270M: whole float32 logits + cross_entropy against the head streamed over the vocabulary.

    python bench/nll_gemma.py          # one 512-token window of wiki.valid.tokens, 2 threads

Prints the seconds of each (best of 3) for the head and loss alone (the body's hidden states are computed
once), and each one's relative error against cross_entropy of the same float32 logits in float64.
This is the cost of one 2SSP stage-2 evaluation beyond the decoder blocks (docs/STRUCTURED.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header  # noqa: E402


def best_of(fn, repeats: int = 3) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


@torch.no_grad()
def main() -> None:
    import llmsparse
    from llmsparse.core import nll

    torch.set_num_threads(2)
    model, tok = llmsparse.load_model("gemma-3-270m")
    ids = tok((DATA / "wiki.valid.tokens").read_text()[:20000], return_tensors="pt").input_ids[:, :512]
    h, targets = nll.body_hidden(model, ids)[0, :-1], ids[0, 1:]
    whole_s, whole = best_of(lambda: F.cross_entropy(model.get_output_embeddings()(h).float(), targets, reduction="sum").item())
    streamed_s, streamed = best_of(lambda: nll.nll_sum(model, h, targets))
    reference = F.cross_entropy(model.get_output_embeddings()(h).double(), targets, reduction="sum").item()
    print(machine_header())
    print(f"{targets.numel()} tokens x {model.get_output_embeddings().weight.shape[0]:,} vocabulary entries")
    print("| head + loss | seconds | relative error vs float64 |\n|---|---|---|")
    print(f"| whole logits + cross_entropy | {whole_s:.3f} | {abs(whole - reference) / reference:.1e} |")
    print(f"| streamed over the vocabulary (core.nll) | {streamed_s:.3f} | {abs(streamed - reference) / reference:.1e} |")


if __name__ == "__main__":
    main()
