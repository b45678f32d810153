"""The layer-sequential engine on tiny random models of several architectures."""

import pytest
import torch
from conftest import ARCHS, tiny_model

import llmsparse
from llmsparse.core import forward
from llmsparse.core.layout import find_layers, get_weight, matrix_modules
from llmsparse.core.stats import InputNorms
from llmsparse.errors import ModelError


def pruned_weights(model):
    layout = find_layers(model)
    out = {}
    for i, layer in enumerate(layout.layers):
        out.update({n: get_weight(m) for n, m in matrix_modules(layer, layout.layer_name(i)).items()})
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
@pytest.mark.parametrize("pattern", [None, "2:4", "4:8"])
def test_every_method_and_pattern_runs_exactly(arch, method, pattern, calib_ids):
    model = tiny_model(arch)
    outside = {k: v.clone() for k, v in model.state_dict().items() if "layers" not in k and ".h." not in k}
    report = llmsparse.prune(
        model, method=method, sparsity=None if pattern else 0.5, pattern=pattern, calib=calib_ids, device="cpu"
    )
    weights = pruned_weights(model)
    assert len(report.matrices) == len(weights) > 0
    for name, w in weights.items():
        zeros = w == 0
        if pattern:
            n, m = map(int, pattern.split(":"))
            assert (zeros.view(w.shape[0], -1, m).sum(-1) == n).all(), name
        elif method in ("wanda", "dsnot"):
            assert (zeros.sum(1) == w.shape[1] // 2).all(), name
        elif method == "magnitude":
            assert zeros.sum() == w.numel() // 2, name
        else:  # SparseGPT: exact per block of 128 columns over all rows
            assert zeros.sum() == w.numel() // 2, name
    assert report.global_sparsity == pytest.approx(0.5)
    for k, v in model.state_dict().items():  # embeddings, final norm and lm_head untouched
        if k in outside:
            assert torch.equal(v, outside[k]), k
    logits = model(calib_ids[:1]).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_sparsity_zero_is_identity(method, calib_ids):
    model = tiny_model("gemma3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    llmsparse.prune(model, method=method, sparsity=0.0, calib=calib_ids, device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "gpt2", "opt"])
def test_captured_layer_inputs_reproduce_the_model(arch, calib_ids):
    """Every layer run with its own recorded arguments gives the model's hidden states (sliding + global layers)."""
    model = tiny_model(arch)
    layout = find_layers(model)
    hidden, calls = forward.capture_inputs(layout, calib_ids[:2], torch.device("cpu"), torch.float32)
    with torch.no_grad():
        reference = model(calib_ids[:2], output_hidden_states=True).hidden_states
    for i, layer in enumerate(layout.layers[:-1]):
        hidden = [forward.forward_layer(layer, h, calls[i], torch.device("cpu")) for h in hidden]
        torch.testing.assert_close(torch.cat(hidden), reference[i + 1], rtol=1e-5, atol=1e-5)


def test_wanda_in_the_engine_uses_the_layer_inputs(calib_ids):
    """First layer's q_proj mask equals a brute-force Wanda mask from the model's own activations."""
    model = tiny_model("llama")
    layer0 = model.model.layers[0]
    with torch.no_grad():
        h0 = model(calib_ids, output_hidden_states=True).hidden_states[0]
        x = layer0.input_layernorm(h0)
    W = layer0.self_attn.q_proj.weight.detach().clone()
    norm2 = (x**2).sum(1).mean(0)
    scores = W.abs() * norm2.sqrt()
    expected = torch.zeros_like(W, dtype=torch.bool)
    for r in range(W.shape[0]):
        expected[r, torch.argsort(scores[r])[: W.shape[1] // 2]] = True
    llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    assert torch.equal(layer0.self_attn.q_proj.weight == 0, expected)


def test_shared_inputs_share_statistics(calib_ids):
    model = tiny_model("llama")
    layout = find_layers(model)
    hidden, calls = forward.capture_inputs(layout, calib_ids, torch.device("cpu"), torch.float32)
    layer = layout.layers[0]
    matrices = matrix_modules(layer, "l0")
    stats = forward.collect_stats(layer, matrices, hidden, calls[0], torch.device("cpu"), lambda c, d: InputNorms(c, d))
    assert stats["l0.self_attn.q_proj"] is stats["l0.self_attn.k_proj"] is stats["l0.self_attn.v_proj"]
    assert stats["l0.mlp.gate_proj"] is stats["l0.mlp.up_proj"]
    assert stats["l0.self_attn.q_proj"] is not stats["l0.mlp.gate_proj"]
    assert stats["l0.mlp.down_proj"].sequences == len(calib_ids)
    groups = forward.input_groups(layer, matrices, hidden[0], calls[0], torch.device("cpu"))
    assert [len(g) for g in groups] == [3, 1, 2, 1]


def test_true_sequential_changes_later_groups_only(calib_ids):
    a, b = tiny_model("qwen2"), tiny_model("qwen2")
    llmsparse.prune(a, method="sparsegpt", sparsity=0.5, calib=calib_ids, device="cpu")
    report = llmsparse.prune(b, method="sparsegpt", sparsity=0.5, calib=calib_ids, device="cpu", true_sequential=True)
    wa, wb = pruned_weights(a), pruned_weights(b)
    assert torch.equal(wa["model.layers.0.self_attn.q_proj"], wb["model.layers.0.self_attn.q_proj"])
    assert not torch.equal(wa["model.layers.0.mlp.down_proj"], wb["model.layers.0.mlp.down_proj"])
    assert report.options["true_sequential"] is True


def test_targets_and_ignore(calib_ids):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, ignore=[r"mlp\."], device="cpu")
    assert report.matrices and all("self_attn" in m.name for m in report.matrices)
    assert (model.model.layers[0].mlp.up_proj.weight != 0).all()
    report = llmsparse.prune(tiny_model("llama"), method="magnitude", sparsity=0.5, targets=[r"\.0\.mlp\.down"])
    assert [m.name for m in report.matrices] == ["model.layers.0.mlp.down_proj"]
    with pytest.raises(ModelError, match="no matrices"):
        llmsparse.prune(tiny_model("llama"), method="magnitude", sparsity=0.5, targets=["nothing-matches"])


def test_float16_model_keeps_dtype_and_zeros(calib_ids):
    model = tiny_model("llama").half()
    llmsparse.prune(model, method="sparsegpt", sparsity=0.5, calib=calib_ids, device="cpu")
    w = model.model.layers[1].mlp.down_proj.weight
    assert w.dtype == torch.float16 and (w == 0).sum() == w.numel() // 2


def test_bfloat16_compute_prunes_float32_masters(calib_ids):
    model = tiny_model("gemma3")
    report = llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", compute_dtype="bfloat16")
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float32 and report.global_sparsity == pytest.approx(0.5)
    assert (w.to(torch.bfloat16).float() != w).any()  # masters were not rounded to the compute dtype


def test_width_not_divisible_is_refused_before_pruning(calib_ids):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(llmsparse.SparsityError, match="not divisible"):
        llmsparse.prune(model, method="wanda", pattern="3:7", calib=calib_ids)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unsupported_architecture_is_named():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ModelError, match="unsupported architecture Flat"):
        llmsparse.prune(Flat(), method="magnitude", sparsity=0.5)


def test_calibration_required(calib_ids):
    with pytest.raises(llmsparse.CalibrationDataError, match="needs calibration data"):
        llmsparse.prune(tiny_model("llama"), method="wanda", sparsity=0.5)
    with pytest.raises(llmsparse.CalibrationDataError, match="exceeds"):
        llmsparse.prune(tiny_model("gpt2"), method="wanda", sparsity=0.5, calib=torch.zeros(2, 512, dtype=torch.long))


def test_meta_weights_without_an_offload_hook_are_refused():
    model = tiny_model("llama")
    model.model.layers[1].mlp.up_proj.to("meta")
    with pytest.raises(ModelError, match="no accelerate offload hook"):
        llmsparse.prune(model, method="magnitude", sparsity=0.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_forwards_and_kept_activations_match_one_sequence_at_a_time(arch, calib_ids):
    """The GPU path's knobs (several sequences per forward, activations kept on the compute device) change
    rounding only: the same hidden states within float tolerance, Wanda's masks equal, sparsity exact."""
    from llmsparse.core.engine import LayerWalk, Run
    from llmsparse.methods import get_method
    from llmsparse.pruning.layerwise import PruneContext, prune_layers

    cpu = torch.device("cpu")
    hidden, weights = {}, {}
    for batch in (1, 3):  # 3 does not divide the 8 sequences: the last forward is shorter
        model = tiny_model(arch)
        run = Run(find_layers(model), cpu, torch.float32, batch=batch, activations=cpu)
        with LayerWalk(run, calib_ids, key="look", desc="look") as walk:
            hidden[batch] = [torch.cat(visit.forward_all(visit.hidden)) for visit in walk]
        targets = llmsparse.select_targets(model, None, None)
        ctx = PruneContext(run, get_method("wanda"), targets, [0.5] * len(run.layout.layers), llmsparse.Pattern())
        prune_layers(ctx, calib_ids)
        weights[batch] = {name: w.clone() for name, w in pruned_weights(model).items()}
    for one, three in zip(hidden[1], hidden[3]):
        torch.testing.assert_close(one, three, rtol=1e-4, atol=1e-5)
    for name, w in weights[1].items():
        other = weights[3][name]
        assert (other == 0).sum() == (w == 0).sum(), name
        assert ((w == 0) == (other == 0)).float().mean() >= 0.999, name


def test_placement_keeps_activations_on_the_gpu_only_when_they_fit(monkeypatch):
    from llmsparse.core.engine import placement

    model = tiny_model("llama")  # hidden size 64
    cuda = torch.device("cuda")
    assert placement(torch.device("cpu"), model, 8 * 32, torch.float32) == {}  # CPU runs are the reference path
    need = 2 * 8 * 32 * 64 * 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * need, 10 * need))
    assert placement(cuda, model, 8 * 32, torch.float32) == {"activations": cuda, "batch": 8}
    assert placement(cuda, model, 8 * 32, torch.float32, streams=2)["activations"] == torch.device("cpu")  # twice as much: pinned host
