"""Activation sparsity (TEAL, WINA, CHESS) on tiny models: calibration math, allocation, runtime, save/reload."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from transformers import AutoModelForCausalLM

import llmsparse
from llmsparse.activation import (
    detach,
    disable_sparse_decode,
    enable_sparse_decode,
    find_blocks,
    measure_activation_sparsity,
    set_prefill,
    sites_of,
    sparsify_activations,
)
from llmsparse.activation.base import quantile_threshold, sorted_abs, weighted_sparsity
from llmsparse.activation.greedy import block_error, greedy_allocation, replay
from llmsparse.activation.hooks import counting
from llmsparse.activation.io import STATE_FILE
from llmsparse.activation.methods.chess import channel_thresholds, sorted_importance
from llmsparse.activation.report import common_sparsity, skipped_fractions
from llmsparse.cli import main
from llmsparse.core.masks import SparsityError
from llmsparse.errors import CheckpointError, ModelError

ARCHS = ["llama", "qwen2", "gemma3"]


def dense_inputs(model, ids):
    """Inputs of every block Linear and the MLP activation outputs / up outputs, from the dense model."""
    store, handles = {}, []
    for block in find_blocks(model):
        for role, m in block.linears.items():
            handles.append(m.register_forward_pre_hook(lambda mod, inp, n=block.names[role]: store.setdefault(n, []).append(inp[0].reshape(-1, inp[0].shape[-1]))))
        if block.act is not None:
            handles.append(block.act.register_forward_hook(lambda mod, i, out, n=block.act_name: store.setdefault(n, []).append(out.reshape(-1, out.shape[-1]))))
            handles.append(block.linears["up"].register_forward_hook(lambda mod, i, out, n=block.names["up"]: store.setdefault(n + ":out", []).append(out.reshape(-1, out.shape[-1]))))
    with torch.no_grad():
        for row in ids:
            model(row.unsqueeze(0))
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in store.items()}


# --------------------------------------------------------------------------- pure math


def test_quantile_threshold_is_exact():
    x = torch.randn(1000)
    for s in (0.1, 0.25, 0.5, 0.9):
        t = quantile_threshold(sorted_abs(x), s)
        assert int((x.abs() <= t).sum()) == round(s * 1000)
    assert quantile_threshold(sorted_abs(x), 0.0) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(SparsityError):
            quantile_threshold(sorted_abs(x), bad)


def test_chess_channel_thresholds_drop_the_least_important_entries():
    g = torch.Generator().manual_seed(0)
    act, m = torch.randn(500, 16, generator=g), torch.rand(16, generator=g) + 0.1
    t = channel_thresholds(sorted_importance(act, m), m, 0.4)
    dropped = act.abs() <= t
    importance = act.abs() * m
    assert dropped.float().mean().item() == pytest.approx(0.4, abs=1e-3)
    assert importance[dropped].max() <= importance[~dropped].min() * (1 + 1e-6)  # one global cut on |a| * m
    assert torch.isinf(channel_thresholds(sorted_importance(act, m), torch.cat([m[:15], torch.zeros(1)]), 0.4)[-1])


def test_greedy_allocation_matches_brute_force_on_a_separable_convex_error():
    """Every step adds the same skipped weight, so with a separable convex error greedy is optimal on the step grid."""
    weights = {"a": 1.0, "b": 0.5, "c": 2.0}
    cost = {"a": 3.0, "b": 1.0, "c": 0.7}
    step = 0.05

    def error(s):
        return sum(cost[r] * s[r] ** 2 for r in s)

    steps = 12  # the target is a whole number of steps: 12 * 0.05 / 3.5
    target = steps * step / sum(weights.values())
    got = greedy_allocation(weights, target, error, step)
    best = min(
        (error({r: n * step / weights[r] for r, n in zip(weights, counts)}), counts)
        for counts in itertools.product(range(steps + 1), repeat=3)
        if sum(counts) == steps and all(n * step / weights[r] <= 0.99 for r, n in zip(weights, counts))
    )
    assert error(got) == pytest.approx(best[0], rel=1e-9)
    assert sum(weights[r] * got[r] for r in got) / sum(weights.values()) == pytest.approx(target, abs=1e-12)


def test_greedy_allocation_lands_exactly_on_targets_between_steps():
    weights = {"q": 1.0, "k": 0.25, "v": 0.25, "down": 3.2}
    for target in (0.0, 0.123, 0.5, 0.77):
        got = greedy_allocation(weights, target, lambda s: sum(s.values()), 0.05)
        assert sum(weights[r] * got[r] for r in got) / sum(weights.values()) == pytest.approx(target, abs=1e-12)
        assert all(0 <= v <= 0.99 for v in got.values())
    with pytest.raises(SparsityError):
        greedy_allocation(weights, 1.0, lambda s: 0.0)


def test_replaying_a_greedy_path_equals_searching_for_the_lower_target():
    weights = {"q": 1.0, "k": 0.25, "v": 0.25, "o": 1.0, "gate": 3.2, "up": 3.2, "down": 3.2}
    g = torch.Generator().manual_seed(0)
    curve = {r: float(c) for r, c in zip(weights, torch.rand(7, generator=g) + 0.2)}

    def error(s):  # not separable: cross terms between roles
        return sum(curve[r] * s[r] ** 3 for r in s) + s["q"] * s["o"] + 0.5 * s["gate"] * s["down"]

    path = []
    greedy_allocation(weights, 0.5, error, 0.05, path=path)
    for target in (0.1, 0.25, 0.4, 0.5):
        assert replay(path, weights, target) == pytest.approx(greedy_allocation(weights, target, error, 0.05), abs=1e-12)
    with pytest.raises(SparsityError, match="stops at"):
        replay(path, weights, 0.6)


def test_block_error_counts_each_token_relative_to_its_norm():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 6, 8, generator=g)
    dense[0, 3] *= 1000  # a token with massive activations
    out = dense + 0.1 * torch.randn(2, 6, 8, generator=g)
    diff = out - dense
    assert block_error(out, dense, "mse") == pytest.approx(diff.pow(2).sum().item(), rel=1e-6)
    brute = sum((diff[b, t].norm() / dense[b, t].norm()).item() ** 2 for b in range(2) for t in range(6))
    assert block_error(out, dense, "relative") == pytest.approx(brute, rel=1e-5)
    # the same absolute error on the massive token: huge under mse, negligible relative to that token
    hit = dense.clone()
    hit[0, 3] += 5.0
    assert block_error(hit, dense, "mse") > block_error(out, dense, "mse")
    assert block_error(hit, dense, "relative") < 1e-3 * block_error(out, dense, "relative")
    assert block_error(dense, dense, "relative") == 0.0
    with pytest.raises(ValueError, match="greedy error"):
        block_error(out, dense, "l1")


def test_reference_block_error_is_the_channel_norm_over_the_last_quarter():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(2, 8, 5, generator=g)
    out = dense + torch.randn(2, 8, 5, generator=g)
    # the TEAL reference: norm over positions 6 and 7 per (sequence, channel), mean over channels
    brute = sum(
        sum(sum((out[b, t, c] - dense[b, t, c]).item() ** 2 for t in (6, 7)) ** 0.5 for c in range(5)) / 5 for b in range(2)
    )
    assert block_error(out, dense, "reference") == pytest.approx(brute, rel=1e-5)
    early = dense.clone()
    early[:, :6] += 100.0  # errors on the first three quarters of the positions are not counted
    assert block_error(early, dense, "reference") == 0.0


def test_common_figure_counts_weights_not_channels():
    model = tiny_model("llama")
    block = find_blocks(model)[0]
    frac = skipped_fractions(block, {"q": 0.5, "o": 0.5, "act": 0.5, "down": 0.5})
    assert frac == {"q": 0.5, "k": 0.0, "v": 0.0, "o": 0.5, "gate": 0.0, "up": 0.5, "down": 0.5}
    sizes = block.sizes  # q 64x64, k/v 32x64, o 64x64, gate/up/down 128x64
    expected = 0.5 * (sizes["q"] + sizes["o"] + sizes["up"] + sizes["down"]) / sum(sizes.values())
    assert common_sparsity([block], [frac]) == pytest.approx(expected)


def test_teal_weights_follow_gqa():
    block = find_blocks(tiny_model("gemma3"))[0]  # 4 heads, 1 kv head, head_dim 16, hidden 64, intermediate 128
    w = block.weights()
    assert w["q"] == 1 and w["k"] == w["v"] == pytest.approx(1 / 4) and w["o"] == 1
    assert w["gate"] == w["up"] == w["down"] == pytest.approx(128 * 64 / (64 * 64))


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("s", [0.25, 0.5, 0.7])
def test_teal_thresholds_give_the_requested_sparsity_on_calibration_data(arch, s, calib_ids):
    model = tiny_model(arch)
    inputs = dense_inputs(model, calib_ids)
    sparsify_activations(model, None, "teal", s, calib=calib_ids)
    sites = sites_of(model)
    assert len(sites) == sum(len(b.linears) for b in find_blocks(model))
    for name, site in sites.items():
        assert (inputs[name].abs() <= site.threshold).float().mean().item() == pytest.approx(s, abs=0.01)


def test_wina_and_chess_thresholds_give_the_requested_sparsity(calib_ids):
    model = tiny_model("llama")
    inputs = dense_inputs(model, calib_ids)
    sparsify_activations(model, None, "wina", 0.6, calib=calib_ids, method_options={"mode": "threshold"})
    for name, site in sites_of(model).items():
        w = model.get_submodule(name).weight
        assert torch.allclose(site.scale, w.norm(dim=0))
        assert (inputs[name].abs() * site.scale <= site.threshold).float().mean().item() == pytest.approx(0.6, abs=0.01)
    sparsify_activations(model, None, "chess", 0.6, calib=calib_ids)
    sites = sites_of(model)
    assert {s.role for s in sites.values()} == {"q", "o", "act", "down"}
    for name, site in sites.items():
        if site.role == "act":
            m = inputs[name.replace("act_fn", "up_proj") + ":out"].abs().mean(0)
            assert torch.allclose(site.threshold * m, site.threshold[0] * m[0] * torch.ones_like(m), rtol=1e-4)  # t_i * m_i = T
            assert (inputs[name].abs() <= site.threshold).float().mean().item() == pytest.approx(0.6, abs=0.01)
        elif site.role in ("q", "o"):
            assert (inputs[name].abs() <= site.threshold).float().mean().item() == pytest.approx(0.6, abs=0.01)
        else:
            assert site.threshold == 0  # down: only skips the zeros the activation left


def test_wina_topk_keeps_exactly_k_per_token_without_calibration():
    model = tiny_model("qwen2")
    report = sparsify_activations(model, None, "wina", 0.5)
    assert report.calibration is None
    for site in sites_of(model).values():
        width = site.scale.numel()
        x = torch.randn(3, 5, width)
        keep = site.keep(x)
        assert (keep.sum(-1) == width // 2).all()
        score = x.abs() * site.scale
        kth = score.topk(width // 2, dim=-1).values[..., -1:]
        assert torch.equal(keep, score >= kth)  # exactly the top half of every token's scores


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_greedy_allocation_reaches_the_block_target(arch, calib_ids):
    model = tiny_model(arch)
    report = sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation="greedy", greedy_step=0.2, greedy_samples=2)
    blocks = find_blocks(model)
    for block, layer in zip(blocks, report.layers):
        assert weighted_sparsity([block], [layer]) == pytest.approx(0.5, abs=1e-9)
        assert len(set(round(v, 6) for v in layer.values())) > 1  # not uniform
    assert report.paper_sparsity == pytest.approx(0.5, abs=1e-9)
    assert report.greedy_error == "relative"


def test_explicit_allocation_reproduces_a_greedy_run(calib_ids):
    model = tiny_model("llama")
    report = sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation="greedy", greedy_step=0.2, greedy_samples=2)
    assert len(report.greedy_paths) == 2 and all(report.greedy_paths)
    with torch.no_grad():
        greedy = model(calib_ids[:2]).logits
    again = sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation=report.layers)
    assert again.allocation == "explicit" and again.layers == report.layers
    with torch.no_grad():
        assert torch.equal(model(calib_ids[:2]).logits, greedy)
    lower = [replay(path, find_blocks(model)[0].weights(), 0.3) for path in report.greedy_paths]
    assert sparsify_activations(model, None, "teal", 0.3, calib=calib_ids, allocation=lower).paper_sparsity == pytest.approx(0.3)
    with pytest.raises(ValueError, match="layers"):
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation=report.layers[:1])
    with pytest.raises(ValueError, match="names act"):
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation=[{"act": 0.5}] * 2)
    with pytest.raises(SparsityError, match="layer 1"):
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation=[{"q": 0.5}, {"q": 1.0}])
    with pytest.raises(ValueError, match="per-projection"):
        sparsify_activations(model, None, "chess", 0.5, calib=calib_ids, allocation=report.layers)


def test_identity_at_sparsity_zero(calib_ids):
    model = tiny_model("llama")
    x = calib_ids[:2]
    with torch.no_grad():
        dense = model(x).logits
        for method, options in (("teal", {}), ("wina", {}), ("wina", {"mode": "threshold"}), ("chess", {})):
            sparsify_activations(model, None, method, 0.0, calib=calib_ids, method_options=options)
            assert torch.equal(model(x).logits, dense), method
        detach(model)
        assert torch.equal(model(x).logits, dense)


# --------------------------------------------------------------------------- runtime


def test_prefill_conventions(calib_ids):
    model = tiny_model("llama")
    x = calib_ids[:1, :16]
    with torch.no_grad():
        dense = model(x).logits
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids)
        full = model(x).logits
        assert not torch.allclose(full, dense)
        set_prefill(model, "none")
        assert torch.equal(model(x).logits, dense)
        set_prefill(model, "last-half")
        half = model(x).logits
        assert torch.equal(half[:, :8], dense[:, :8])  # causal: the first half only sees dense tokens
        assert not torch.allclose(half[:, 8:], dense[:, 8:])
        # one-token calls (decoding) are sparsified whatever the convention
        assert not torch.allclose(model(x[:, :1]).logits, dense[:, :1])


@pytest.mark.parametrize("method,options", [("teal", {}), ("wina", {}), ("wina", {"mode": "threshold"}), ("chess", {})])
@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("kernel", ["torch", "cpp"])
def test_sparse_decode_matches_masked_dense(arch, method, options, kernel, calib_ids):
    if arch == "opt" and method == "chess":
        pytest.skip("CHESS needs a gated MLP")
    model = tiny_model(arch)
    sparsify_activations(model, None, method, 0.5, calib=calib_ids, method_options=options)
    for name, site in sites_of(model).items():
        module = model.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            continue
        x = torch.randn(1, 1, module.in_features)
        expected = F.linear(site.apply(x), module.weight, module.bias)
        site.wt = module.weight.data.t().contiguous()
        for kernel in ("torch", "cpp"):
            site.kernel = kernel
            assert torch.allclose(site.decode(module, x), expected, atol=1e-5, rtol=1e-5), (name, kernel)
        site.wt = None
    with torch.no_grad():
        out = model(calib_ids[:1, :8], use_cache=True)
        step = calib_ids[:1, 8:9]
        ref = model(step, past_key_values=out.past_key_values).logits
        out = model(calib_ids[:1, :8], use_cache=True)
        assert enable_sparse_decode(model, kernel) == sum(isinstance(model.get_submodule(n), torch.nn.Linear) for n in sites_of(model))
        fast = model(step, past_key_values=out.past_key_values).logits
        assert torch.allclose(fast, ref, atol=1e-5)
        assert all(not model.get_submodule(n).weight.is_contiguous() for n, s in sites_of(model).items() if s.wt is not None)
        disable_sparse_decode(model)
        assert all(s.wt is None for s in sites_of(model).values())
        assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_measured_common_figure(calib_ids, tmp_path):
    model = tiny_model("llama")
    text = tmp_path / "eval.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="no activation sparsity"):
        measure_activation_sparsity(model, None, str(text))
    sparsify_activations(model, None, "teal", 0.5, calib=calib_ids)
    with counting(model) as counts, torch.no_grad():
        model(calib_ids)
    zeros = {n: c[0] / c[1] for n, c in counts.items()}
    first = find_blocks(model)[0]
    assert all(zeros[first.names[r]] == pytest.approx(0.5, abs=0.01) for r in ("q", "k", "v"))  # exactly the calibration inputs
    assert all(zeros[n] == pytest.approx(0.5, abs=0.1) for n in zeros)  # later inputs drift: earlier sites changed them

    class Tok:  # whitespace "tokenizer" over the calibration ids
        def __call__(self, text, return_tensors):
            return type("T", (), {"input_ids": calib_ids.reshape(1, -1)})

    m = measure_activation_sparsity(model, Tok(), str(text), seqlen=32, windows=8)
    assert m["windows"] == 8 and m["tokens"] == 256
    assert m["overall"] == pytest.approx(0.5, abs=0.05)
    assert set(m["by_role"]) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_activation_sparsity_on_a_weight_pruned_model(calib_ids):
    model = tiny_model("qwen2")
    llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify_activations(model, None, "teal", 0.4, calib=calib_ids)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # activation sparsity leaves weights alone
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids[:1]).logits).all()


# --------------------------------------------------------------------------- save and reload


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,options,allocation", [("teal", {}, "uniform"), ("teal", {}, "greedy"), ("wina", {}, "uniform"), ("wina", {"mode": "threshold"}, "uniform"), ("chess", {}, "uniform")])
def test_saved_then_loaded_models_give_identical_logits(arch, method, options, allocation, calib_ids, tokenizer, tmp_path):
    model = tiny_model(arch)
    with torch.no_grad():
        dense = model(calib_ids[:2]).logits
    report = sparsify_activations(model, None, method, 0.5, calib=calib_ids, allocation=allocation, method_options=options, greedy_step=0.25, greedy_samples=2)
    enable_sparse_decode(model)  # saving must not depend on the decode layout
    with torch.no_grad():
        sparse = model(calib_ids[:2]).logits
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "m", activation=report)
    assert (out / STATE_FILE).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["llmsparse_activation"]["method"] == method
    loaded, _ = llmsparse.load_model(out)
    assert loaded.config.to_dict().get("llmsparse_activation") is None
    with torch.no_grad():
        assert torch.equal(loaded(calib_ids[:2]).logits, sparse)
    assert {n: s.role for n, s in sites_of(loaded).items()} == {n: s.role for n, s in sites_of(model).items()}
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers: dense behaviour
    with torch.no_grad():
        assert torch.equal(plain(calib_ids[:2]).logits, dense)
    card = (out / "README.md").read_text()
    assert "## Activation sparsity" in card and "activation-sparsity" in card


def test_threshold_file_that_does_not_match_the_model(calib_ids, tokenizer, tmp_path):
    model = tiny_model("llama")
    report = sparsify_activations(model, None, "teal", 0.5, calib=calib_ids)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "m", activation=report)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = load_file(out / STATE_FILE)
    with safe_open(out / STATE_FILE, "pt") as f:
        meta = f.metadata()
    # a per-channel tensor of the wrong width
    sites = json.loads(meta["sites"])
    name = next(iter(sites))
    bad = dict(good, **{f"{name}.threshold": torch.zeros(7)})
    save_file(bad, out / STATE_FILE, metadata=meta)
    with pytest.raises(CheckpointError, match="does not match the model"):
        llmsparse.load_model(out)
    # a site the model does not have
    sites["model.layers.9.mlp.down_proj"] = sites.pop(name)
    good["model.layers.9.mlp.down_proj.threshold"] = good.pop(f"{name}.threshold")
    save_file(good, out / STATE_FILE, metadata=dict(meta, sites=json.dumps(sites)))
    with pytest.raises(CheckpointError, match="does not match the model"):
        llmsparse.load_model(out)
    (out / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        llmsparse.load_model(out)
    (out / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        llmsparse.load_model(out)


# --------------------------------------------------------------------------- bad input


def test_bad_requests_fail_before_any_work(calib_ids):
    model = tiny_model("llama")
    for s in (-0.1, 1.0, 2.0):
        with pytest.raises(SparsityError):
            sparsify_activations(model, None, "teal", s, calib=calib_ids)
    with pytest.raises(ValueError, match="unknown activation sparsity method"):
        sparsify_activations(model, None, "nope", 0.5, calib=calib_ids)
    with pytest.raises(ValueError, match="uniform only"):
        sparsify_activations(model, None, "chess", 0.5, calib=calib_ids, allocation="greedy")
    with pytest.raises(ValueError, match="prefill"):
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, prefill="first-half")
    with pytest.raises(ValueError, match="greedy error"):
        sparsify_activations(model, None, "teal", 0.5, calib=calib_ids, allocation="greedy", greedy_error="l1")
    with pytest.raises(ValueError, match="mode"):
        sparsify_activations(model, None, "wina", 0.5, method_options={"mode": "best"})
    with pytest.raises(llmsparse.CalibrationDataError):
        sparsify_activations(model, None, "teal", 0.5)
    assert not sites_of(model)
    with pytest.raises(ModelError, match="MLP of transformer.h.0 was not found"):
        sparsify_activations(tiny_model("gpt2"), None, "teal", 0.5, calib=calib_ids)
    renamed = tiny_model("llama")
    for layer in renamed.model.layers:
        layer.mlp.w_out = layer.mlp.down_proj
        del layer.mlp.down_proj
    with pytest.raises(ModelError, match="MLP of model.layers.0 was not found"):
        sparsify_activations(renamed, None, "teal", 0.5, calib=calib_ids)
    with pytest.raises(ModelError, match="gated MLP"):
        sparsify_activations(tiny_model("opt"), None, "chess", 0.5, calib=calib_ids)


def test_cli_sparsify_eval_generate(model_dir, tmp_path, capsys):
    from conftest import VALID

    out = tmp_path / "act"
    assert main(["sparsify", str(model_dir), "--method", "teal", "--sparsity", "0.5", "--calib", str(VALID), "--nsamples", "4", "--seqlen", "32", "--output", str(out), "--eval-ppl", str(VALID), "--ppl-seqlen", "64", "--ppl-windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "paper figure" in text and "measured common figure" in text and "sparse ppl" in text and (out / STATE_FILE).is_file()
    report = json.loads((out / "activation_report.json").read_text())
    assert report["measured"]["overall"] > 0.3 and report["evaluation"]["perplexity"]["sparse"]["ppl"] > 0
    assert main(["eval", str(out), "--ppl", str(VALID), "--seqlen", "64", "--windows", "2"]) == 0
    assert "activation sparsity (teal)" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "The game", "--max-new-tokens", "5", "--sparse-decode"]) == 0
    assert "tokens/s" in capsys.readouterr().err
    assert main(["generate", str(model_dir), "--prompt", "The game", "--max-new-tokens", "2", "--sparse-decode"]) == 2
    assert "needs an activation-sparse model" in capsys.readouterr().err


def test_cli_sparsify_recipe_repeats_the_run(model_dir, tmp_path, capsys):
    import yaml
    from conftest import VALID
    from safetensors.torch import load_file

    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    argv = ["--method", "teal", "--sparsity", "0.4", "--allocation", "greedy", "--greedy-step", "0.2", "--greedy-samples", "1"]
    common = ["--calib", str(VALID), "--nsamples", "2", "--seqlen", "32"]
    assert main(["-q", "sparsify", str(model_dir), *argv, *common, "--seed", "3", "--output", str(first)]) == 0
    recipe = yaml.safe_load((first / "recipe.yaml").read_text())
    assert recipe["allocation"] == "greedy" and recipe["greedy_step"] == 0.2 and recipe["seed"] == 3 and recipe["prefill"] == "all"
    assert recipe["calib"] == str(VALID) and recipe["greedy_error"] == "relative"
    assert "llmsparse sparsify BASE_MODEL --recipe recipe.yaml" in (first / "README.md").read_text()
    assert json.loads((first / "llmsparse.json").read_text())["recipe_kind"] == "sparsify"
    assert main(["-q", "sparsify", str(model_dir), "--recipe", str(first / "recipe.yaml"), "--output", str(second)]) == 0
    a, b = load_file(first / STATE_FILE), load_file(second / STATE_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a flag overrides the recipe
    assert main(["-q", "sparsify", str(model_dir), "--recipe", str(first / "recipe.yaml"), "--seed", "4", "--output", str(third)]) == 0
    assert yaml.safe_load((third / "recipe.yaml").read_text())["seed"] == 4
    assert not all(torch.equal(a[k], v) for k, v in load_file(third / STATE_FILE).items())
    # a recipe of the other kind is refused with a pointer to the right command
    assert main(["-q", "prune", str(model_dir), "--recipe", str(first / "recipe.yaml")]) == 2
    assert "looks like a sparsify recipe" in capsys.readouterr().err


def test_shipped_activation_recipes_load():
    from pathlib import Path

    from llmsparse import load_recipe
    from llmsparse.activation.calibrate import SparsifySettings, check_request
    from llmsparse.errors import RecipeError

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "activation").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        r = load_recipe(path, "sparsify")
        check_request(SparsifySettings(**r))
        with pytest.raises(RecipeError, match="looks like a sparsify recipe"):
            load_recipe(path)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--calib", "x"], "--sparsity or in the recipe"),
        (["--sparsity", "1.2", "--calib", "x"], "[0, 1)"),
        (["--sparsity", "0.5"], "needs --calib"),
        (["--sparsity", "0.5", "--calib", "/no/such/file"], "does not exist"),
        (["--sparsity", "0.5", "--method", "chess", "--allocation", "greedy", "--calib", "x"], "uniform only"),
        (["--sparsity", "0.5", "--wina-mode", "topk"], "option of wina"),
    ],
)
def test_cli_sparsify_bad_input(model_dir, argv, message, capsys):
    assert main(["sparsify", str(model_dir), *argv]) == 2
    assert message in capsys.readouterr().err
