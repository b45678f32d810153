"""Model card and Hub upload (a recording fake HfApi; no network), through the API and the CLI."""

import json

import pytest
import torch
import yaml
from test_cli import prune_args

import llmsparse
from llmsparse.checkpoint.card import hub_id, model_card
from llmsparse.checkpoint.hub import push
from llmsparse.cli import main
from llmsparse.errors import PushError


class FakeApi:
    """Records the calls ``push`` makes, the way ``huggingface_hub.HfApi`` would receive them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---", 2)[1])


def test_cli_writes_card_sizes_and_compact_weights(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(prune_args(model_dir, out, "--method", "wanda", "--pattern", "2:4", "--format", "2:4")) == 0
    printed = capsys.readouterr().out
    assert "bytes dense ->" in printed and "2:4" in printed
    readme = (out / "README.md").read_text()
    front = front_matter(readme)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert {"sparsity", "wanda", "2:4"} <= set(front["tags"])
    assert "base_model" not in front  # a local directory is not a Hub id
    assert "## Recipe" in readme and "method: wanda" in readme and "| 1 | 0.5000 |" in readme
    model, _ = llmsparse.load_model(out)
    assert (model.model.layers[0].mlp.up_proj.weight == 0).sum() == 64 * 128 // 2


def test_card_front_matter_for_a_hub_base_with_evaluation():
    report = llmsparse.PruneReport(method="sparsegpt", options={}, pattern="unstructured", sparsity=0.5, matrices=[])
    result = {"ppl": 40.0, "source": "/x/wiki.test.raw", "seqlen": 1024, "windows": 8, "tokens": 8184}
    report.evaluation["perplexity"] = {"dense": result, "sparse": dict(result, ppl=80.5)}
    card = model_card(report, {"method": "sparsegpt", "sparsity": 0.5}, "gemma-3-270m", "bitmask")
    front = front_matter(card)
    assert front["base_model"] == "google/gemma-3-270m" and front["base_model_relation"] == "quantized"
    assert front["license"] == "gemma"
    assert "| dense (base) | 40.00 |" in card and "| sparse (this) | 80.50 |" in card and "`wiki.test.raw`" in card
    assert hub_id("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B" and hub_id("./local/dir") is None


def test_push_creates_repo_then_uploads(model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.5")) == 0
    api = FakeApi()
    url = push(out, "me/tiny-sparse", private=True, revision="v1", api=api)
    assert url.startswith("https://huggingface.co/me/tiny-sparse")
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/tiny-sparse", "repo_type": "model", "private": True, "exist_ok": True}
    assert api.calls[2][1]["folder_path"] == str(out) and api.calls[2][1]["revision"] == "v1"


def test_cli_push_uses_hfapi_and_never_prints_the_token(model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    api = FakeApi()
    made = []

    def fake_hfapi(token=None):
        made.append(token)
        return api

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setattr("huggingface_hub.HfApi", fake_hfapi)
    assert main(prune_args(model_dir, out, "--method", "magnitude", "--sparsity", "0.5", "--push-to-hub", "me/repo")) == 0
    assert main(["push", str(out), "me/repo", "--private"]) == 0
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder", "create_repo", "upload_folder"]
    assert api.calls[2][1]["private"] is True
    captured = capsys.readouterr()
    assert "hf_secret_value" not in captured.out + captured.err
    assert "pushed: https://huggingface.co/me/repo" in captured.out


def test_pushing_a_non_model_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(PushError, match="not a model saved by llmsparse"):
        push(tmp_path, "me/repo", api=FakeApi())
    assert main(["push", str(tmp_path), "me/repo"]) == 2
    assert "missing config.json" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "nope"), "me/repo"]) == 2


def test_storage_is_in_the_saved_report(tokenizer, tmp_path, calib_ids):
    from conftest import tiny_model

    model = tiny_model("llama", dtype=torch.float16)
    report = llmsparse.prune(model, method="magnitude", sparsity=0.5, device="cpu")
    llmsparse.save_pruned(model, tokenizer, tmp_path / "o", report=report, format="bitmask")
    saved = json.loads((tmp_path / "o" / "sparsity_report.json").read_text())
    assert saved["storage"]["format"] == "bitmask" and saved["storage"]["bytes_compressed"] < saved["storage"]["bytes_dense"]
