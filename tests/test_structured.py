"""Structured pruning (2SSP, ShortGPT, FFN width): exact parameter counts, identity at 0, surgery, stock reload."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import ARCHS, VOCAB, tiny_model

import llmsparse
from llmsparse.cli import main
from llmsparse.errors import LlmsparseError, ModelError, SparsityError
from llmsparse.structured import STRUCTURED, prune_structured
from llmsparse.structured.anatomy import blocks
from llmsparse.structured.base import Shape
from llmsparse.structured.methods.twossp import keep_top
from llmsparse.structured.signals import PerplexityProbe
from llmsparse.structured.surgery import narrow_ffn, remove_attention, remove_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(3))


def logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


def decoder_params(model) -> int:
    return sum(p.numel() for p in llmsparse.find_layers(model).layers.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["2ssp", "width", "shortgpt"])
def test_exact_counts_and_stock_reload(arch, method, ids, tmp_path, tokenizer):
    """The report's counts are the edited model's; the saved output, loaded by plain transformers, computes the same logits."""
    model = tiny_model(arch)
    before = decoder_params(model)
    shape = Shape.of(blocks(model)[1])
    report = prune_structured(model, tokenizer, method=method, sparsity=0.4, calib=ids, device="cpu")
    found = blocks(model)[1]
    zeroed = sum(found[i].attention_params() for i in report.removed_attention)
    assert report.decoder_before == before
    assert report.decoder_after == decoder_params(model) - zeroed
    assert before - report.decoder_after == report.budget["attention"] * shape.attention + report.budget["blocks"] * shape.block + report.budget[
        "neurons"
    ] * shape.neuron * (shape.blocks - report.budget["blocks"])
    assert abs(report.achieved - 0.4) < 0.6 * shape.block / before  # nearest whole unit of the budget
    for i in report.removed_attention:
        assert all(float(p.detach().abs().max()) == 0 for p in found[i].attention.parameters())
    x = ids[:2]
    expected = logits(model, x)
    llmsparse.save_structured(model, tokenizer, tmp_path / "out", report)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(stock, x), expected, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in stock.parameters()) == sum(p.numel() for p in model.parameters())
    ours, _ = llmsparse.load_model(tmp_path / "out")  # skips the removed attention modules
    torch.testing.assert_close(logits(ours, x), expected, rtol=0, atol=1e-5)
    saved = json.loads((tmp_path / "out" / "structured_report.json").read_text())
    assert saved["decoder_after"] == report.decoder_after


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3", "gpt2", "opt"])
@pytest.mark.parametrize("method", sorted(STRUCTURED))
def test_zero_sparsity_is_identity(arch, method, ids):
    model = tiny_model(arch)
    x = ids[:2]
    expected = logits(model, x)
    report = prune_structured(model, None, method=method, sparsity=0.0, calib=ids, device="cpu")
    assert report.decoder_after == report.decoder_before and report.removed_attention == [] and report.removed_blocks == []
    assert torch.equal(logits(model, x), expected)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2", "opt"])
def test_narrow_ffn_matches_zeroed_neurons(arch, ids):
    """Dropping neurons equals zeroing their rows in the input projections and columns in the output one (float64)."""
    model = tiny_model(arch, dtype=torch.float64)
    reference = tiny_model(arch, dtype=torch.float64)
    found = blocks(reference)[1]
    keep = [torch.randperm(found[0].width, generator=torch.Generator().manual_seed(i))[:40].sort().values for i in range(len(found))]
    for block, k in zip(found, keep):
        drop = torch.ones(block.width, dtype=torch.bool)
        drop[k] = False
        out = llmsparse.core.layout.get_weight(block.ffn_out)
        out[:, drop] = 0
    narrow_ffn(model, keep)
    assert blocks(model)[1][0].width == 40
    torch.testing.assert_close(logits(model, ids[:2]), logits(reference, ids[:2]), rtol=0, atol=1e-10)


def test_keep_top_keeps_largest_norms():
    norms = [torch.tensor([0.5, 3.0, 1.0, 2.0]), torch.tensor([4.0, 1.0, 1.0, 0.0])]
    assert [k.tolist() for k in keep_top(norms, 2)] == [[1, 3], [0, 1]]  # the tie keeps the lower index


def test_gemma3_layer_pattern_after_block_removal(tmp_path, ids):
    """Removed blocks take their layer type with them; the survivors keep theirs and the KV slots are renumbered."""
    config = llmsparse_tiny_gemma3(6)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    pattern = list(config.layer_types)
    remove_blocks(model, [0, 2])
    assert model.config.num_hidden_layers == 4
    assert model.config.layer_types == [pattern[1], pattern[3], pattern[4], pattern[5]]
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2, 3]
    assert model.config.llmsparse_structured["removed_blocks"] == [0, 2]
    model.save_pretrained(tmp_path / "m")
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert stock.config.layer_types == model.config.layer_types
    torch.testing.assert_close(logits(stock, ids[:2]), logits(model, ids[:2]), rtol=0, atol=1e-5)
    with torch.no_grad():  # generation with the KV cache sees the same pattern
        a = model.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
        b = stock.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def llmsparse_tiny_gemma3(layers: int):
    types = ["sliding_attention", "sliding_attention", "full_attention"] * (layers // 3)
    return transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=layers,
        num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=types,
    )


def test_removed_attention_contributes_nothing_and_probe_is_exact(ids):
    """The probe's replayed prefix gives the perplexity of a full forward with that attention removed."""
    model = tiny_model("llama", dtype=torch.float64)
    found = blocks(model)[1]
    probe = PerplexityProbe(model, found, ids[:2])
    probe.reset()
    fast = probe.without_attention(1)
    remove_attention(model, [1])
    slow = PerplexityProbe(model, found, ids[:2]).reset()
    assert fast == pytest.approx(slow, rel=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_probe_is_close_to_the_float32_one_and_leaves_the_model_alone(arch, ids):
    """``probe_dtype="bfloat16"``: the probe computes in bf16 (its perplexity moves, a little), the model stays float32 and unchanged."""
    model = tiny_model(arch)
    found = blocks(model)[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exact = PerplexityProbe(model, found, ids[:2])
    low = PerplexityProbe(model, found, ids[:2], torch.bfloat16)
    assert low.head.dtype == torch.bfloat16 and exact.head is None
    for probe_ppl in ((exact.reset(), low.reset()), (exact.without_attention(1), low.without_attention(1))):
        assert probe_ppl[1] != probe_ppl[0] and probe_ppl[1] == pytest.approx(probe_ppl[0], rel=0.02)
    assert all(torch.equal(v, model.state_dict()[k]) and v.dtype == torch.float32 for k, v in before.items() if v.is_floating_point())
    report = prune_structured(model, None, method="2ssp", sparsity=0.3, calib=ids, device="cpu", method_options={"probe_dtype": "bfloat16", "n_attention": 1})
    assert next(model.parameters()).dtype == torch.float32 and report.removed_attention


def test_2ssp_balance_follows_the_paper():
    """N_attn = round(L * s^((P_ffn/P_attn)/alpha)); the FFNs give the rest."""
    shape = Shape(blocks=18, decoder=18 * 5_600_000, block=5_600_000, attention=1_638_400, ffn=3_932_160, neuron=1920, width=2048)
    method = STRUCTURED.create("2ssp")
    budget = method.budget(shape, 0.375)
    assert budget.attention == round(18 * 0.375 ** ((3_932_160 / 1_638_400) / 1.5))
    assert budget.neurons == round((0.375 * shape.decoder - budget.attention * shape.attention) / (18 * 1920))
    with pytest.raises(SparsityError, match="attention modules"):
        STRUCTURED.create("2ssp", n_attention=10).budget(shape, 0.1)
    with pytest.raises(SparsityError, match="FFN neurons"):
        STRUCTURED.create("width").budget(shape, 0.9)


def test_unsupported_and_bad_inputs(ids):
    with pytest.raises(LlmsparseError, match="structured method"):
        prune_structured(tiny_model("llama"), None, method="2sp", sparsity=0.3, calib=ids)
    with pytest.raises(LlmsparseError, match="sparsity"):
        prune_structured(tiny_model("llama"), None, method="2ssp", sparsity=1.0, calib=ids)
    with pytest.raises(LlmsparseError, match="calibration"):
        prune_structured(tiny_model("llama"), None, method="2ssp", sparsity=0.3)
    model = torch.nn.Sequential(torch.nn.Embedding(4, 4))
    model.config = transformers.LlamaConfig()
    with pytest.raises(ModelError):
        prune_structured(model, None, method="width", sparsity=0.3, calib=ids)


def test_cli_prune_structured_and_second_run(model_dir, tmp_path, capsys):
    """``llmsparse prune --method 2ssp`` writes a stock-loadable smaller model; Wanda then runs on the output."""
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    out = tmp_path / "out"
    common = ["--calib", str(calib), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"]
    assert main(["prune", str(model_dir), "--method", "2ssp", "--sparsity", "0.4", *common, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "decoder-block parameters" in text
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] < 128 and config["llmsparse_structured"]["method"] == "2ssp"
    assert "FFN width 128 ->" in (out / "README.md").read_text() or "FFN width: 128 ->" in (out / "README.md").read_text()
    assert main(["prune", str(out), "--method", "wanda", "--sparsity", "0.5", *common, "--output", str(tmp_path / "then")]) == 0
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "then")
    assert stock.config.intermediate_size == config["intermediate_size"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.5"], "sparsity"),
        (["--sparsity", "0.99", "--2ssp-n-attention", "0"], "FFN neurons"),
        (["--sparsity", "0.3", "--pattern", "2:4"], "--pattern"),
        (["--sparsity", "0.3", "--2ssp-alpha", "-1"], "alpha"),
        (["--sparsity", "0.3", "--shortgpt-last-token"], "shortgpt"),
        (["--sparsity", "0.3", "--width-multiple", "0"], "width-multiple"),
    ],
)
def test_cli_bad_input_one_line_nothing_written(model_dir, tmp_path, capsys, extra, message):
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the quick brown fox"] * 200))
    out = tmp_path / "out"
    try:
        code = main(["prune", str(model_dir), "--method", "2ssp", *extra, "--calib", str(calib), "--nsamples", "2", "--seqlen", "16", "--output", str(out)])
    except SystemExit as exit_:  # argparse refuses flag values itself
        code = exit_.code
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # progress bars aside
    assert code == 2 and len(errors) == 1 and errors[0].startswith("llmsparse: error:") and message in errors[0]
    assert not out.exists()


def test_structured_flag_refused_for_unstructured(model_dir, tmp_path, capsys):
    code = main(["prune", str(model_dir), "--method", "wanda", "--sparsity", "0.5", "--width-multiple", "8", "--output", str(tmp_path / "o")])
    assert code == 2 and "applies to structured methods" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_structured_recipe(model_dir, tmp_path):
    """A structured recipe runs through ``llmsparse prune --recipe``; the saved recipe.yaml repeats the run."""
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: shortgpt\nsparsity: 0.5\ncalib: {calib}\nnsamples: 4\nseqlen: 32\n")
    assert main(["prune", str(model_dir), "--recipe", str(recipe), "--output", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["num_hidden_layers"] == 1
    assert main(["prune", str(model_dir), "--recipe", str(tmp_path / "a" / "recipe.yaml"), "--output", str(tmp_path / "b")]) == 0
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: 2ssp\nsparsity: 0.3\npattern: 2:4\n")
    assert main(["prune", str(model_dir), "--recipe", str(bad), "--output", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


def test_shipped_structured_recipes_are_valid():
    from pathlib import Path

    import yaml

    from llmsparse.settings import check_values
    from llmsparse.structured import StructuredSettings

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "structured").glob("*.yaml"))
    assert recipes
    for path in recipes:
        data = yaml.safe_load(path.read_text())
        check_values(StructuredSettings, data)
        assert data["method"] in STRUCTURED and set(data) <= set(StructuredSettings.recipe_keys())


@pytest.mark.parametrize("then", [["--method", "sparsegpt", "--sparsity", "0.5", "--quantize", "int4", "--group-size", "16", "--format", "bitmask"], ["--method", "wanda", "--pattern", "2:4", "--format", "2:4"]])
def test_then_quantize_or_nm_and_reload(model_dir, tmp_path, then, ids):
    """Quantization and N:M after 2SSP, compact formats included: llmsparse reloads them and the perplexity runs."""
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    common = ["--calib", str(calib), "--nsamples", "4", "--seqlen", "32", "--device", "cpu"]
    first = ["prune", str(model_dir), "--method", "2ssp", "--sparsity", "0.4", "--width-multiple", "16", *common, "--output", str(tmp_path / "s")]
    assert main(first) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["intermediate_size"] % 16 == 0
    assert main(["prune", str(tmp_path / "s"), *then, *common, "--output", str(tmp_path / "t")]) == 0
    model, tok = llmsparse.load_model(tmp_path / "t")
    assert model.config.intermediate_size < 128 and model.config.llmsparse_structured["removed_attention"]
    assert torch.isfinite(logits(model, ids[:1])).all()
    assert llmsparse.perplexity(model, tok, str(calib), seqlen=32, windows=2).ppl > 1


def test_second_structured_run_refused_and_failed_run_leaves_config(ids):
    model = tiny_model("llama")
    with pytest.raises(SparsityError):
        prune_structured(model, None, method="width", sparsity=0.99, calib=ids, device="cpu")
    assert not hasattr(model.config, "llmsparse_structured")
    prune_structured(model, None, method="width", sparsity=0.2, calib=ids, device="cpu")
    with pytest.raises(ModelError, match="already pruned"):
        prune_structured(model, None, method="2ssp", sparsity=0.2, calib=ids, device="cpu")
