"""Recovery after pruning (PERP, llmsparse.recovery): masked LoRA keeps every zero, merge = training-time model, resume, refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import VALID, tiny_model

import llmsparse
from llmsparse.errors import CalibrationDataError, ResumeError, SettingsError

pytest.importorskip("peft")
from llmsparse.recovery import masklora, params  # noqa: E402  (needs peft)

FAST = dict(data=str(VALID), steps=6, batch_size=2, seqlen=32, val_every=3, val_windows=2, warmup=1, lr=1e-2, lora_rank=4, device="cpu")


def pruned(arch: str = "llama", pattern: str | None = None, seed: int = 0):
    """A tiny model with half its decoder weights exactly zero (unstructured by magnitude, or N:M)."""
    model = tiny_model(arch, seed=seed)
    llmsparse.prune(model, None, method="magnitude", **({"pattern": pattern} if pattern else {"sparsity": 0.5}))
    return model


def zero_masks(model) -> dict[str, torch.Tensor]:
    """Where the decoder matrices are exactly zero, by parameter name."""
    return {n: (p == 0).clone() for n, p in model.named_parameters() if "layers" in n and p.dim() == 2}


def randomize_adapters(wrapped) -> None:
    """Adapters start as B = 0 (no change); give B values so the update is not trivially zero."""
    g = torch.Generator().manual_seed(1)
    for m in wrapped.values():
        w = m.lora_B[masklora.ADAPTER].weight
        w.data = torch.randn(w.shape, generator=g)


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_masked_update_gradients_equal_autograd_of_the_formula(batch):
    """MaskedUpdate recomputes the update in backward; its gradients are those of h @ (s (B @ A) * M)^T (float64)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 6, generator=g, dtype=torch.float64)
    weight[torch.rand(7, 6, generator=g) < 0.5] = 0
    h = torch.randn(*batch, 6, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h, a, b: masklora.MaskedUpdate.apply(h, a, b, weight, 0.5), (h, a, b))
    out = masklora.MaskedUpdate.apply(h, a, b, weight, 0.5)
    ref = h @ ((b @ a) * 0.5 * (weight != 0)).T
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(out, (h, a, b), grad)
    theirs = torch.autograd.grad(ref, (h, a, b), grad)
    assert torch.equal(out, ref.detach()) or torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_training_forward_keeps_no_update_matrix_for_backward():
    """What autograd keeps from a training forward: no out x in tensor besides the frozen weights themselves."""
    model = pruned()
    wrapped = masklora.attach(model, params.lora_names(model, None), rank=4, alpha=8)
    weights = {m.get_base_layer().weight.data_ptr(): m.get_base_layer().weight.shape for m in wrapped.values()}
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        model(torch.randint(0, 320, (1, 8))).logits.sum()
    shapes = set(weights.values())
    big = [t for t in kept if tuple(t.shape) in shapes and t.data_ptr() not in weights]
    assert kept and not big, [tuple(t.shape) for t in big]


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_masked_lora_keeps_zeros_and_merge_equals_training_model(pattern):
    model = pruned(pattern=pattern)
    before = zero_masks(model)
    names = params.lora_names(model, None)
    wrapped = masklora.attach(model, names, rank=4, alpha=8)
    randomize_adapters(wrapped)
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        training = model(x).logits
        for name, m in wrapped.items():  # the effective training-time weight is zero wherever W is
            effective = m.get_base_layer().weight + m.get_delta_weight(masklora.ADAPTER)
            assert torch.equal(effective == 0, before[f"{name}.weight"] | (effective == 0))
            assert (effective[before[f"{name}.weight"]] == 0).all()
    assert masklora.merge(model) == len(names)
    assert not any(isinstance(m, masklora.MaskedLoraLinear) for m in model.modules())
    after = zero_masks(model)
    for name, mask in before.items():
        assert (model.get_parameter(name)[mask] == 0).all(), name  # every pruned weight exactly zero
        assert torch.equal(after[name], mask), name  # and nothing else became zero
        if pattern:  # N:M: still exactly 2 zeros in each group of 4 inputs
            groups = (model.get_parameter(name) == 0).reshape(-1, 4).sum(1)
            assert (groups == 2).all(), name
    with torch.no_grad():
        merged = model(x).logits
    torch.testing.assert_close(merged, training, rtol=1e-4, atol=1e-4)
    # plain peft LoRA would refill the zeros: the mask is what keeps them
    assert any(not (m.get_base_layer().weight == 0).all() for m in wrapped.values())


def test_recover_trains_keeps_zeros_and_freezes_the_rest(tokenizer):
    model = pruned()
    before = zero_masks(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" not in n and not n.endswith("bias")}
    report = llmsparse.recover(model, tokenizer, **FAST)
    assert report.val_loss[-1][1] < report.val_loss[0][1] or report.best_step > 0
    assert min(v for _, v in report.val_loss) < report.val_loss[0][1]  # the loss went down
    assert report.zeros_after == report.zeros_before
    assert 0 < report.share < 0.2  # a tiny model: adapters are a large share of it
    for name, mask in before.items():
        assert torch.equal(model.get_parameter(name) == 0, mask), name
    changed = 0
    for name, value in frozen.items():
        p = model.get_parameter(name)
        if name in before:  # adapters merged: only the kept weights may move
            assert torch.equal(p[before[name]], value[before[name]])
            changed += int(not torch.equal(p, value))
        else:  # embeddings and everything else: bit for bit
            assert torch.equal(p, value), name
    assert changed > 0


def test_frozen_when_only_norms(tokenizer):
    model = pruned()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" not in n}
    report = llmsparse.recover(model, tokenizer, **(FAST | {"train": ["norms"]}))
    assert report.trainable == sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    for name, value in frozen.items():
        assert torch.equal(model.get_parameter(name), value), name
    assert all(p.requires_grad for p in model.parameters())  # as the model came in


def test_gradient_checkpointing_and_half_precision(tokenizer):
    plain, checkpointed = pruned(), pruned()
    llmsparse.recover(plain, tokenizer, **FAST)
    llmsparse.recover(checkpointed, tokenizer, **FAST, gradient_checkpointing=True)
    for (n, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
    half = pruned().to(torch.bfloat16)
    before = zero_masks(half)
    report = llmsparse.recover(half, tokenizer, **FAST)
    assert report.zeros_after == report.zeros_before and all(p.dtype == torch.bfloat16 for p in half.parameters())
    for name, mask in before.items():
        assert torch.equal(half.get_parameter(name) == 0, mask), name


def test_resume_equals_uninterrupted(tokenizer, tmp_path, monkeypatch):
    whole = pruned()
    llmsparse.recover(whole, tokenizer, **FAST)
    from llmsparse.recovery import train

    interrupted = pruned()
    real_save = train.RunState.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["fit"]["steps"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        llmsparse.recover(interrupted, tokenizer, **FAST, state_dir=str(tmp_path / "state"))
    monkeypatch.setattr(train.RunState, "save", real_save)
    with pytest.raises(ResumeError, match="add --resume"):
        llmsparse.recover(pruned(), tokenizer, **FAST, state_dir=str(tmp_path / "state"))
    with pytest.raises(ResumeError, match="differs in: lr"):
        llmsparse.recover(pruned(), tokenizer, **(FAST | {"lr": 0.5}), state_dir=str(tmp_path / "state"), resume=True)
    resumed = pruned()
    report = llmsparse.recover(resumed, tokenizer, **FAST, state_dir=str(tmp_path / "state"), resume=True)
    assert report.steps == 6 and not (tmp_path / "state").exists()
    for (n, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_refusals(tokenizer, tmp_path):
    model = pruned()
    with pytest.raises(SettingsError, match="larger than"):
        llmsparse.recover(model, tokenizer, **(FAST | {"lora_rank": 65}))
    with pytest.raises(SettingsError, match="selects no parameter"):
        llmsparse.recover(model, tokenizer, **(FAST | {"train": ["biases"]}))  # llama has no biases
    with pytest.raises(SettingsError, match="must be one of"):
        llmsparse.recover(model, tokenizer, **(FAST | {"train": ["everything"]}))
    with pytest.raises(CalibrationDataError, match="needs training text"):
        llmsparse.recover(model, tokenizer, **(FAST | {"data": None}))
    with pytest.raises(ResumeError, match="no interrupted recovery"):
        llmsparse.recover(model, tokenizer, **FAST, state_dir=str(tmp_path / "none"), resume=True)
    assert all(not isinstance(m, masklora.MaskedLoraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- command line


def recover_args(model, out, *extra):
    return ["-q", "recover", str(model), "--data", str(VALID), "--steps", "4", "--batch-size", "2", "--seqlen", "32",
            "--val-every", "2", "--val-windows", "2", "--lora-rank", "4", "--lr", "0.01", "--output", str(out), *extra]


@pytest.fixture
def pruned_dir(model_dir, tmp_path):
    from llmsparse.cli import main

    out = tmp_path / "pruned-24"
    assert main(["-q", "prune", str(model_dir), "--method", "magnitude", "--pattern", "2:4", "--output", str(out)]) == 0
    return out


def test_cli_recover_saves_a_normal_output(pruned_dir, tmp_path, capsys):
    import json

    import yaml

    from llmsparse.cli import main

    out = tmp_path / "recovered"
    assert main(recover_args(pruned_dir, out, "--format", "2:4", "--train", "norms,lora")) == 0
    printed = capsys.readouterr().out
    assert "recovery: trained norms,lora" in printed and "peak resident memory" in printed
    before, _ = llmsparse.load_model(str(pruned_dir))
    after, _ = llmsparse.load_model(str(out))  # the compact 2:4 output reloads like any other
    for (name, a), b in zip(before.named_parameters(), after.parameters()):
        if "layers" in name and a.dim() == 2:
            assert torch.equal(a == 0, b == 0), name
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["train"] == ["norms", "lora"] and recipe["lora_rank"] == 4 and recipe["data"] == str(VALID)
    assert llmsparse.load_recipe(out / "recipe.yaml", "recover")["steps"] == 4
    report = json.loads((out / "recovery_report.json").read_text())
    assert report["zeros_after"] == report["zeros_before"] and report["steps"] == 4
    assert "Recovery (PERP)" in (out / "README.md").read_text()
    assert not (tmp_path / ".recovered.partial").exists()


def test_prune_then_recover_in_one_run(model_dir, tmp_path, capsys):
    """``llmsparse prune ... --recover RECIPE``: pruned, retrained and saved once; its recipe repeats both steps."""
    import json

    import yaml

    from llmsparse.cli import main

    recipe = tmp_path / "perp.yaml"
    recipe.write_text(yaml.safe_dump({"data": str(VALID), "train": ["norms", "lora"], "steps": 4, "batch_size": 2, "seqlen": 32,
                                      "val_every": 2, "val_windows": 2, "lora_rank": 4, "lr": 0.01}))
    out = tmp_path / "pruned-recovered"
    assert main(["-q", "prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--recover", str(recipe), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recovery: trained norms,lora" in printed
    report = json.loads((out / "recovery_report.json").read_text())
    assert report["zeros_after"] == report["zeros_before"] > 0 and report["steps"] == 4
    assert json.loads((out / "sparsity_report.json").read_text())["global_sparsity"] == pytest.approx(0.5, abs=0.01)
    saved = llmsparse.load_recipe(out / "recipe.yaml")
    assert saved["recover"] == str(recipe) and saved["method"] == "magnitude"
    card = (out / "README.md").read_text()
    assert "Recovery (PERP)" in card and "magnitude" in card
    model, _ = llmsparse.load_model(str(out))
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if "layers" in n and p.dim() == 2)
    assert zeros == report["zeros_after"]


@pytest.mark.parametrize("extra, message", [(["--stream"], "--recover trains the whole model"), (["--eval-ppl", str(VALID)], "same file")])
def test_prune_then_recover_refusals_write_nothing(model_dir, tmp_path, capsys, extra, message):
    import yaml

    from llmsparse.cli import main

    recipe = tmp_path / "perp.yaml"
    recipe.write_text(yaml.safe_dump({"data": str(VALID), "steps": 4}))
    out = tmp_path / "refused"
    try:
        code = main(["-q", "prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--recover", str(recipe), "--output", str(out), *extra])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval-ppl", str(VALID)], "same file"),
        (["--lora-rank", "65"], "larger than"),
        (["--train", "biases"], "selects no parameter"),
        (["--train", "all"], "must be one of"),
        (["--resume"], "no interrupted recovery"),
    ],
)
def test_cli_refusals_write_nothing(pruned_dir, tmp_path, capsys, extra, message):
    from llmsparse.cli import main

    out = tmp_path / "refused"
    try:
        code = main(recover_args(pruned_dir, out, *extra))
    except SystemExit as exit:  # argparse refuses a bad flag value itself
        code = exit.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llmsparse")]  # (progress bars aside)
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists() and not (tmp_path / ".refused.partial").exists()


def test_cli_help_lists_every_setting(capsys):
    from llmsparse.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["recover", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--train", "--lora-rank", "--lora-targets", "--steps", "--tokens", "--warmup", "--val-every", "--resume", "--format", "--eval-ppl"):
        assert flag in text, flag


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "phi3", "gpt2", "opt"])
def test_chunked_loss_equals_the_models_own_loss_and_gradient(arch, monkeypatch):
    """Head + cross-entropy over token chunks: the model's own loss and the same gradient in every parameter.

    A float64 model: both losses take float32 logits (transformers upcasts, or here downcasts, them), so they agree to float32 rounding."""
    from llmsparse.recovery import loss

    model = tiny_model(arch).double()
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * 320 * 7)  # 7 tokens per chunk: several chunks, a ragged last one
    x = torch.randint(2, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    own = model(input_ids=x, labels=x, use_cache=False).loss
    assert loss.mean_loss(model, x) == pytest.approx(own.item(), rel=1e-6)
    own.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert loss.backward(model, x, scale=0.5) == pytest.approx(0.5 * own.item(), rel=1e-6)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for n in expected:
        torch.testing.assert_close(got[n], 0.5 * expected[n], rtol=1e-5, atol=1e-7)
    if arch == "gemma2":
        assert model.config.final_logit_softcapping  # the soft-capped head is covered


def test_shipped_recover_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "recover").glob("*.yaml"))
    assert recipes
    for path in recipes:
        settings = llmsparse.RecoverSettings(**llmsparse.load_recipe(path, "recover"))
        assert settings.data and settings.train
