"""Why TEAL's greedy search minimises a per-token relative error: where the block-output error sits.

For every decoder layer of Gemma 3 270M, TEAL uniform at ``--sparsity`` (thresholds from 16 x 512
calibration tokens of WikiText-2 valid, seed 0) is applied to that layer alone, fed the dense
inputs of the first calibration sequence. The table prints the share of the layer's output error
carried by its top 1% of tokens, once under the plain squared error (``mse``) and once with each
token's error divided by its dense norm (``relative``, the default of ``--greedy-error``), plus
the dense output norm of the median token and of the largest one.

    python bench/greedy_error_gemma.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header  # noqa: E402


def top_share(per_token: torch.Tensor, fraction: float = 0.01) -> float:
    """Share of the total carried by the largest ``fraction`` of entries."""
    k = max(1, round(per_token.numel() * fraction))
    return (per_token.topk(k).values.sum() / per_token.sum()).item()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()

    import llmsparse
    from llmsparse.activation import find_blocks, get_activation_method
    from llmsparse.activation.calibrate import capture
    from llmsparse.activation.hooks import patched
    from llmsparse.core import engine
    from llmsparse.core.layout import find_layers
    from llmsparse.data.calibration import calibration_batch

    model, tok = llmsparse.load_model("gemma-3-270m")
    ids, _ = calibration_batch(model, tok, str(DATA / "wiki.valid.tokens"), 16, 512, 0, "text", "bench")
    blocks, teal, cpu = find_blocks(model), get_activation_method("teal"), torch.device("cpu")
    rows = []

    with engine.LayerWalk(engine.Run(find_layers(model), cpu, torch.float32), ids, key="greedy-error", desc="layers") as walk:
        for visit in walk:
            block = blocks[visit.index]
            prepared = teal.prepare(block, capture(visit.layer, block, visit.hidden, visit.call, cpu, False))
            dense = visit.forward(visit.hidden[0])[0].float()
            with patched(model, teal.sites(block, prepared, {role: args.sparsity for role in teal.roles(block)})):
                out = visit.forward(visit.hidden[0])[0].float()
            sq = (out - dense).pow(2).sum(-1)
            norm2 = dense.pow(2).sum(-1)
            rows.append((visit.index, top_share(sq), top_share(sq / norm2), norm2.sqrt().median().item(), norm2.sqrt().max().item()))
    print(machine_header())
    print(f"TEAL uniform {args.sparsity:.0%}, one layer at a time; {ids.shape[1]} tokens of the first calibration sequence\n")
    print("| layer | top 1% tokens' share: mse | relative | median token norm | largest token norm |")
    print("|---|---|---|---|---|")
    for i, mse, rel, med, big in rows:
        print(f"| {i} | {mse:.0%} | {rel:.0%} | {med:.3g} | {big:.3g} |")


if __name__ == "__main__":
    main()
