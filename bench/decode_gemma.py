"""Decode speed of TEAL activation sparsity on Gemma 3 270M: CPU, batch 1, greedy, float32.

For each sparsity: tokens/s of the dense model, of the sparsified model with ordinary matmuls
(masking only, no gain expected) and with the sparse decode path (``enable_sparse_decode``:
weights stored [in, out], only the rows of kept inputs are read); then the time of every
sparsified matmul of one decode step, dense ``F.linear`` vs the sparse path, on the activations
that step really produced. Dense and sparse are timed in the same run, alternating.

f is the share of per-token weight bytes in the sparsified Linears (lm_head included in the
total, embedding lookups not); 1 / (1 - s * f) is the memory-bound ceiling of the end-to-end gain.

    python bench/decode_gemma.py [--sparsities 0,0.25,0.4,0.5,0.65] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _gemma import DATA, machine_header  # noqa: E402

PROMPT = "The history of the city begins in the Roman period, when a small settlement grew up around the river crossing and"


def weight_share(model) -> float:
    """f: bytes of the block Linears that activation sparsity covers / bytes of every Linear read per token."""
    from llmsparse.activation import find_blocks

    covered = sum(m.weight.numel() * m.weight.element_size() for b in find_blocks(model) for m in b.linears.values())
    total = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return covered / total


def decode_inputs(model, tok) -> dict[str, torch.Tensor]:
    """The input of every sparsified Linear during one real decode step (after a prompt)."""
    from llmsparse.activation import sites_of

    captured, handles = {}, []
    with torch.no_grad():
        out = model(tok(PROMPT, return_tensors="pt").input_ids, use_cache=True)
        for name in sites_of(model):
            module = model.get_submodule(name)
            if isinstance(module, torch.nn.Linear):
                handles.append(module.register_forward_pre_hook(lambda m, inp, n=name: captured.__setitem__(n, inp[0].clone())))
        model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
    for h in handles:
        h.remove()
    return captured


def matmul_times(model, inputs: dict[str, torch.Tensor], passes: int) -> dict[str, tuple[float, float]]:
    """Per role: (dense, sparse) microseconds per matmul, median over ``passes`` sweeps of the whole decoder."""
    from llmsparse.activation import sites_of

    sites = sites_of(model)
    modules = {n: model.get_submodule(n) for n in inputs}
    dense_w = {n: m.weight.data.contiguous() for n, m in modules.items()}
    per_role: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for _ in range(passes):
            for kind in ("dense", "sparse"):
                sums: dict[str, float] = {}
                for name, x in inputs.items():
                    site, module = sites[name], modules[name]
                    start = time.perf_counter()
                    if kind == "dense":
                        F.linear(x, dense_w[name], module.bias)
                    else:
                        site.decode(module, x)
                    sums[site.role] = sums.get(site.role, 0.0) + time.perf_counter() - start
                for role, t in sums.items():
                    per_role.setdefault(role, {}).setdefault(kind, []).append(t)
    layers = len({n.rsplit(".", 2)[0] for n in inputs})
    return {role: (statistics.median(v["dense"]) / layers * 1e6, statistics.median(v["sparse"]) / layers * 1e6) for role, v in per_role.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0,0.25,0.4,0.5,0.65")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="generations per setting (median)")
    parser.add_argument("--passes", type=int, default=30, help="decoder sweeps for the per-matmul times (median)")
    args = parser.parse_args()

    import llmsparse
    from llmsparse.activation import detach, disable_sparse_decode, enable_sparse_decode
    from llmsparse.activation import gemv_kernel as kernel
    from llmsparse.activation.decode import timed_generate

    torch.manual_seed(0)
    model, tok = llmsparse.load_model("gemma-3-270m")
    f = weight_share(model)
    print(machine_header())
    print(f"Gemma 3 270M, {next(model.parameters()).dtype}, {torch.get_num_threads()} threads; f = {f:.3f}; sparse decode kernel: {kernel.isa() + ' C++' if kernel.available() else 'torch (no C++ kernel)'}")

    def speed() -> tuple[float, str]:
        runs = [timed_generate(model, tok, PROMPT, args.tokens) for _ in range(args.repeats)]
        return statistics.median(r.tokens_per_s for r in runs), runs[0].text

    rows, matmuls = [], {}
    for s in [float(v) for v in args.sparsities.split(",")]:
        llmsparse.sparsify_activations(model, tok, "teal", s, calib=str(DATA / "wiki.valid.tokens"), nsamples=8, seqlen=512, device="cpu")
        settings = llmsparse.activation.settings_of(model)
        sites = llmsparse.activation.sites_of(model)
        detach(model)
        dense, dense_text = speed()
        llmsparse.activation.attach(model, sites, settings)
        masked, masked_text = speed()
        enable_sparse_decode(model)
        sparse, sparse_text = speed()
        matmuls[s] = matmul_times(model, decode_inputs(model, tok), args.passes)
        disable_sparse_decode(model)
        detach(model)
        ceiling = 1 / (1 - s * f)
        rows.append((s, dense, masked, sparse, sparse / dense, ceiling, (sparse / dense) / ceiling, sparse_text == masked_text))
        print(f"done {s:g}: dense {dense:.2f} tok/s, sparse {sparse:.2f} tok/s", flush=True)

    print(f"\nEnd to end ({args.tokens} new tokens, greedy, median of {args.repeats}; f = {f:.3f}):\n")
    print("| sparsity | dense tok/s | masked tok/s | sparse path tok/s | speedup | ceiling 1/(1-s*f) | of ceiling | same text as masked |")
    print("|---|---|---|---|---|---|---|---|")
    for s, d, m, sp, gain, ceil, frac, same in rows:
        print(f"| {s:.0%} | {d:.2f} | {m:.2f} | {sp:.2f} | {gain:.3f}x | {ceil:.3f}x | {frac:.0%} | {'yes' if same else 'no'} |")
    roles = list(next(iter(matmuls.values())))
    print(f"\nPer matmul, one decode step (dense F.linear / sparse path, microseconds per layer, median of {args.passes} sweeps):\n")
    print("| sparsity | " + " | ".join(roles) + " |")
    print("|---|" + "---|" * len(roles))
    for s, times in matmuls.items():
        print(f"| {s:.0%} | " + " | ".join(f"{times[r][0]:.0f}/{times[r][1]:.0f} = {times[r][0] / times[r][1]:.2f}x" for r in roles) + " |")


if __name__ == "__main__":
    main()
