"""lm-eval integration, local tasks, comparisons and sweeps, on tiny random models (no network)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TEST, tiny_model

import llmsparse
from llmsparse.checkpoint.card import COMPARISON_START
from llmsparse.cli import main
from llmsparse.errors import SweepDirError
from llmsparse.evaluation import ClozeConfig, TaskBuildError, UnknownTaskError, build_local_tasks, evaluate, make_cloze
from llmsparse.evaluation.compare import recovery
from llmsparse.evaluation.tasks import cloze_passage

WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    """The first 120 lines of WikiText-2 test (headings included, which the builder skips)."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text("\n".join(TEST.read_text(encoding="utf-8").splitlines()[:120]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tasks_dir(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    build_local_tasks(small_text, "wt", out, ClozeConfig(examples=12, min_words=20, max_words=60), ppl_chars=1500)
    return out


def test_cloze_passage_ends_at_a_sentence_and_keeps_the_context():
    # tokenised text: the period is its own word; the target is the word before it
    assert cloze_passage(f"{WORDS} the city . More words follow", 10, 100) == (f"{WORDS} the", "city")
    # ordinary text: the period is attached
    assert cloze_passage(f"{WORDS} in the town. Tail", 10, 100) == (f"{WORDS} in the", "town")
    # the last sentence end within max_words wins; non-alphabetic finals are skipped
    assert cloze_passage(f"{WORDS} a cat . b dog . c 1999 .", 10, 100) == (f"{WORDS} a cat . b", "dog")
    assert cloze_passage("too short .", 10, 100) is None
    assert cloze_passage(f"{WORDS} no end", 10, 100) is None


def test_make_cloze_examples_are_consistent_and_deterministic(small_text):
    text = small_text.read_text(encoding="utf-8")
    config = ClozeConfig(examples=10, min_words=20, max_words=60, choices=4, seed=3)
    examples = make_cloze(text, config)
    assert len(examples) == 10
    for ex in examples:
        assert ex["choices"][ex["label"]] == ex["target"]
        assert len(ex["choices"]) == 4 and len({c.lower() for c in ex["choices"]}) == 4
        assert ex["target"].isalpha() and 20 <= len(ex["context"].split()) <= 60
        assert (ex["context"] + " " + ex["target"]) in " ".join(text.split())
    assert make_cloze(text, config) == examples
    assert make_cloze(text, ClozeConfig(examples=10, min_words=20, max_words=60, seed=4)) != examples


def test_build_local_tasks_writes_yamls_and_refuses_bad_input(tasks_dir, tmp_path):
    assert sorted(p.name for p in tasks_dir.iterdir()) == [
        "wt_cloze.jsonl",
        "wt_cloze.yaml",
        "wt_cloze_mc.yaml",
        "wt_ppl.jsonl",
        "wt_ppl.yaml",
    ]
    doc = json.loads((tasks_dir / "wt_ppl.jsonl").read_text())["text"]
    assert 0 < len(doc) <= 1600
    with pytest.raises(TaskBuildError, match="does not exist"):
        build_local_tasks(tmp_path / "nope.txt", "x", tmp_path / "o")
    with pytest.raises(TaskBuildError, match="task name"):
        build_local_tasks(TEST, "1-bad", tmp_path / "o")
    short = tmp_path / "short.txt"
    short.write_text("a b c .\n")
    with pytest.raises(TaskBuildError, match="no cloze passage|distinct target"):
        build_local_tasks(short, "x", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def _lm_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1, by one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


def test_rolling_token_perplexity_matches_a_direct_computation(tasks_dir, tokenizer):
    """One window (the document is shorter than max_length): lm-eval scores every token after the
    prefix (BOS) token, so token perplexity = exp(-mean log p) computed by hand."""
    model = tiny_model("llama")
    doc = json.loads((tasks_dir / "wt_ppl.jsonl").read_text())["text"]
    ids = tokenizer(doc).input_ids
    assert len(ids) < 1000
    r = evaluate(model, tokenizer, ["wt_ppl"], include_path=tasks_dir, max_length=1024)
    expected = math.exp(-_lm_logprobs(model, [tokenizer.bos_token_id] + ids).mean().item())
    assert r.metrics["wt_ppl"]["token_perplexity"] == pytest.approx(expected, rel=1e-4)
    assert r.higher_is_better["wt_ppl"]["token_perplexity"] is False
    assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(r.metrics["wt_ppl"])


def test_cloze_metrics_match_brute_force(tasks_dir, tokenizer):
    """acc of the multiple-choice task = argmax of summed log-likelihoods; the cloze task's acc =
    greedy decoding reproduces the target. Checked against direct forwards on a random model."""
    model = tiny_model("qwen2", seed=2)
    examples = [json.loads(line) for line in (tasks_dir / "wt_cloze.jsonl").read_text().splitlines()]
    r = evaluate(model, tokenizer, ["wt_cloze", "wt_cloze_mc"], include_path=tasks_dir, max_length=1024)
    mc_hits, greedy_hits = 0, 0
    for ex in examples:
        ctx = tokenizer(ex["context"]).input_ids
        scores = []
        for choice in ex["choices"]:
            cont = tokenizer(" " + choice).input_ids
            scores.append(_lm_logprobs(model, ctx + cont)[-len(cont) :].sum().item())
        mc_hits += int(max(range(len(scores)), key=scores.__getitem__) == ex["label"])
        cont = tokenizer(" " + ex["target"]).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]
        greedy_hits += int(logits.argmax(-1).tolist() == cont)
    assert r.samples["wt_cloze_mc"] == len(examples) == 12
    assert r.metrics["wt_cloze_mc"]["acc"] == pytest.approx(mc_hits / len(examples))
    assert r.metrics["wt_cloze"]["acc"] == pytest.approx(greedy_hits / len(examples))


def test_activation_sparsity_is_evaluated_as_it_runs(tasks_dir, tokenizer, calib_ids):
    """lm-eval sees the in-memory model with its TEAL hooks: the score changes, and detaching restores it."""
    from llmsparse.activation import detach

    model = tiny_model("gemma3")
    dense = evaluate(model, tokenizer, ["wt_ppl"], include_path=tasks_dir, max_length=1024).metrics["wt_ppl"]["token_perplexity"]
    llmsparse.sparsify_activations(model, None, "teal", 0.7, calib=calib_ids)
    sparse = evaluate(model, tokenizer, ["wt_ppl"], include_path=tasks_dir, max_length=1024).metrics["wt_ppl"]["token_perplexity"]
    detach(model)
    again = evaluate(model, tokenizer, ["wt_ppl"], include_path=tasks_dir, max_length=1024).metrics["wt_ppl"]["token_perplexity"]
    assert sparse != pytest.approx(dense, rel=1e-3)
    assert again == pytest.approx(dense, rel=1e-6)


def test_unknown_tasks_and_include_paths_are_refused(tokenizer, tmp_path, tasks_dir):
    model = tiny_model("llama")
    with pytest.raises(UnknownTaskError, match="wt_cloze_mc"):
        evaluate(model, tokenizer, ["wt_cloze_mcq"], include_path=tasks_dir)
    with pytest.raises(UnknownTaskError, match="not a directory"):
        evaluate(model, tokenizer, ["wt_cloze"], include_path=tmp_path / "missing")
    with pytest.raises(UnknownTaskError, match="include-path"):
        evaluate(model, tokenizer, ["wt_cloze"])


def test_recovery_is_relative_in_the_right_direction():
    assert recovery(0.5, 0.4, True) == pytest.approx(80.0)
    assert recovery(20.0, 25.0, False) == pytest.approx(80.0)
    assert recovery(0.0, 0.3, True) is None


def _pruned_dir(model_dir, tmp_path, sparsity="0.7"):
    out = tmp_path / "pruned"
    assert main(["-q", "prune", str(model_dir), "--method", "magnitude", "--sparsity", sparsity, "--output", str(out)]) == 0
    return out


def test_compare_writes_json_markdown_and_updates_the_card(model_dir, tmp_path, small_text, tasks_dir, capsys):
    pruned = _pruned_dir(model_dir, tmp_path)
    out = tmp_path / "cmp"
    flags = ["--ppl", str(small_text), "--ppl-seqlen", "64", "--ppl-windows", "2", "--tasks", "wt_cloze_mc", "--include-path", str(tasks_dir)]
    argv = ["-q", "compare", str(model_dir), str(pruned), "--labels", "dense,magnitude70", *flags, "--output", str(out), "--update-card"]
    assert main(argv) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["dense", "magnitude70"]
    assert data["rows"][0]["weight_sparsity"] == 0.0 and data["rows"][1]["weight_sparsity"] == pytest.approx(0.7, abs=0.01)
    md = (out / "comparison.md").read_text()
    assert "| wt_cloze_mc | acc ↑ |" in md and "recovery" in md and "perplexity ↓" in md
    dense_ppl, sparse_ppl = (r["ppl"]["ppl"] for r in data["rows"])
    assert f"{100 * dense_ppl / sparse_ppl:.1f}%" in md
    assert main(argv) == 0  # a second comparison replaces the card's table instead of adding one
    card = (pruned / "README.md").read_text()
    assert card.count(COMPARISON_START) == 1 and "magnitude70" in card
    assert not (model_dir / "README.md").exists()  # not an llmsparse directory: left alone


def test_eval_with_tasks_and_compare_flag(model_dir, tmp_path, tasks_dir, capsys):
    pruned = _pruned_dir(model_dir, tmp_path, "0.5")
    assert main(["-q", "eval", str(pruned), "--tasks", "wt_cloze", "--include-path", str(tasks_dir), "--limit", "4", "--output", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "wt_cloze" in out and "acc" in out
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["tasks"]["samples"]["wt_cloze"] == 4
    assert main(["-q", "eval", str(pruned), "--compare", str(model_dir), "--tasks", "wt_cloze", "--include-path", str(tasks_dir), "--limit", "4"]) == 0
    assert "| wt_cloze | acc ↑ |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "/no/such/model", "--ppl", "x.txt"], "does not exist"),
        (["eval", "MODEL", "--tasks", "no_such_task_xyz"], "unknown lm-eval task"),
        (["eval", "MODEL"], "nothing to evaluate"),
        (["compare", "MODEL", "./missing-model", "--tasks", "wt_cloze"], "does not exist"),
        (["compare", "MODEL", "--tasks", "wt_cloze"], "baseline and at least one"),
        (["sweep", "MODEL", "--methods", "nope", "--sparsities", "0.5", "--ppl", "T", "--output", "OUT"], "unknown"),
        (["sweep", "MODEL", "--methods", "wanda", "--sparsities", "0.5", "--ppl", "T", "--output", "OUT"], "needs --calib"),
        (["sweep", "MODEL", "--methods", "magnitude", "--sparsities", "1.5", "--ppl", "T", "--output", "OUT"], "sparsity"),
    ],
)
def test_bad_evaluation_input_gets_a_clear_error(model_dir, tmp_path, small_text, tasks_dir, capsys, argv, message):
    subs = {"MODEL": str(model_dir), "T": str(small_text), "OUT": str(tmp_path / "sweep")}
    argv = [subs.get(a, a) for a in argv] + ["--include-path", str(tasks_dir)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_sweep_writes_table_and_plot_resumes_and_refuses_another_run(model_dir, tmp_path, small_text, tasks_dir, capsys):
    out = tmp_path / "sweep"
    base = ["-q", "sweep", str(model_dir), "--methods", "magnitude", "--ppl", str(small_text), "--ppl-seqlen", "64", "--ppl-windows", "2"]
    base += ["--tasks", "wt_cloze_mc", "--include-path", str(tasks_dir), "--output", str(out)]
    assert main([*base, "--sparsities", "0.3,0.6", "--pattern", "2:4"]) == 0
    run = json.loads((out / "sweep.json").read_text())
    assert sorted(run["points"]) == ["magnitude|0.3", "magnitude|0.6", "magnitude|2:4"]
    zeros = {k: p["eval"]["weight_sparsity"] for k, p in run["points"].items()}
    assert zeros == pytest.approx({"magnitude|0.3": 0.3, "magnitude|0.6": 0.6, "magnitude|2:4": 0.5}, abs=1e-3)
    assert run["dense"]["eval"]["weight_sparsity"] == 0.0
    assert len(run["commands"]) == 1 and run["commands"][0].startswith("llmsparse -q sweep")
    md = (out / "sweep.md").read_text()
    assert "| magnitude | 2:4 | 0.5 |" in md and "    llmsparse -q sweep" in md
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # resume: finished points are kept as they are, a new sparsity is added
    assert main([*base, "--sparsities", "0.3,0.6,0.8", "--pattern", "2:4"]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert sorted(again["points"]) == ["magnitude|0.3", "magnitude|0.6", "magnitude|0.8", "magnitude|2:4"]
    assert again["points"]["magnitude|0.3"] == run["points"]["magnitude|0.3"]
    assert again["dense"] == run["dense"]
    assert len(again["commands"]) == 2

    # other settings in the same directory: refused, nothing changed
    assert main([*base[:-2], "--ppl-windows", "1", "--output", str(out), "--sparsities", "0.3"]) == 2
    assert "holds another sweep (different evaluation)" in capsys.readouterr().err
    assert json.loads((out / "sweep.json").read_text()) == again
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SweepDirError, match="not a sweep directory"):
        llmsparse.sweep(llmsparse.SweepSpec(str(model_dir), evaluation=llmsparse.EvalSettings(ppl=str(small_text))), ["magnitude"], [0.5], other)
